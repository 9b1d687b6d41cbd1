/* Record loops for C consumers; see span.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/span.h"
#include "platform.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
#include <pthread.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#endif

int mds_span_scan(const uint8_t *span, uint64_t span_len, mds_span_summary *summary, mds_error *err) {
    uint64_t pos = 0;
    mds_record rec;
    int rc;
    summary->records = summary->bytes = summary->highest_end = 0;
    while ((rc = mds_span_next(span, span_len, &pos, &rec, err)) == 1) {
        summary->records++;
        summary->bytes += rec.length;
        if (rec.offset + rec.length > summary->highest_end) summary->highest_end = rec.offset + rec.length;
    }
    return rc == 0 ? MDS_OK : rc;
}

int mds_span_index(const uint8_t *span, uint64_t span_len, uint64_t *offsets, uint32_t *lengths,
                   uint64_t *positions, uint64_t capacity, uint64_t *count, mds_error *err) {
    uint64_t pos = 0, n = 0;
    mds_record rec;
    int rc;
    while ((rc = mds_span_next(span, span_len, &pos, &rec, err)) == 1) {
        if (n == capacity)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "span changed while it was indexed (more than %llu records)",
                                 (unsigned long long)capacity);
        offsets[n] = rec.offset;
        lengths[n] = rec.length;
        positions[n] = rec.payload_pos;
        n++;
    }
    *count = n;
    return rc == 0 ? MDS_OK : rc;
}

int mds_span_apply_memory(const uint8_t *span, uint64_t span_len, uint8_t *dest, uint64_t dest_size,
                          mds_error *err) {
    uint64_t pos = 0;
    mds_record rec;
    int rc;
    while ((rc = mds_span_next(span, span_len, &pos, &rec, err)) == 1) {
        if (rec.offset > dest_size || rec.length > dest_size - rec.offset)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record for [%llu, %llu) changed after it was checked",
                                 (unsigned long long)rec.offset, (unsigned long long)(rec.offset + rec.length));
        if (rec.length) memcpy(dest + rec.offset, span + rec.payload_pos, rec.length); /* dest may be NULL when empty */
    }
    return rc == 0 ? MDS_OK : rc;
}

#ifndef _WIN32
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define PWRITE_IOV 256

static int pwrite_all(int fd, struct iovec *iov, int iovcnt, uint64_t offset, mds_error *err) {
    while (iovcnt > 0) {
        ssize_t n = pwritev(fd, iov, iovcnt, (off_t)offset);
        if (n < 0) {
            int e = errno;
            if (e == EINTR) continue;
            return mds_set_error(err, MDS_ERR_SYS, e, "write at offset %llu failed: %s", (unsigned long long)offset,
                                 strerror(e));
        }
        offset += (uint64_t)n;
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return MDS_OK;
}

int mds_span_pwrite(const uint8_t *span, uint64_t span_len, int fd, mds_error *err) {
    struct iovec iov[PWRITE_IOV];
    int iovcnt = 0;
    uint64_t run_start = 0, run_end = 0, pos = 0;
    mds_record rec;
    int rc;
    while ((rc = mds_span_next(span, span_len, &pos, &rec, err)) == 1) {
        if (rec.offset > (uint64_t)INT64_MAX - rec.length)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record offset %llu is beyond what a file can hold",
                                 (unsigned long long)rec.offset);
        if (rec.length == 0) continue;
        if (iovcnt > 0 && (rec.offset != run_end || iovcnt == PWRITE_IOV)) {
            if (pwrite_all(fd, iov, iovcnt, run_start, err) != MDS_OK) return err->status;
            iovcnt = 0;
        }
        if (iovcnt == 0) run_start = run_end = rec.offset;
        iov[iovcnt].iov_base = (void *)(span + rec.payload_pos);
        iov[iovcnt].iov_len = rec.length;
        iovcnt++;
        run_end += rec.length;
    }
    if (rc != 0) return rc;
    if (iovcnt > 0) return pwrite_all(fd, iov, iovcnt, run_start, err);
    return MDS_OK;
}

static int write_all(int fd, const uint8_t *data, size_t length, mds_error *err) {
    while (length > 0) {
        ssize_t n = write(fd, data, length);
        if (n < 0) {
            int e = errno;
            if (e == EINTR) continue;
            return mds_set_error(err, MDS_ERR_SYS, e, "trace write failed: %s", strerror(e));
        }
        data += n;
        length -= (size_t)n;
    }
    return MDS_OK;
}
#else
int mds_span_pwrite(const uint8_t *span, uint64_t span_len, int fd, mds_error *err) {
    (void)span; (void)span_len; (void)fd;
    return mds_set_error(err, MDS_ERR_ARG, 0, "mds_span_pwrite is POSIX-only");
}
static int write_all(int fd, const uint8_t *data, size_t length, mds_error *err) {
    (void)fd; (void)data; (void)length;
    return mds_set_error(err, MDS_ERR_ARG, 0, "trace writing is POSIX-only in the C core");
}
#endif

int mds_trace_writer_init(mds_trace_writer *w, int fd, size_t buffer_size, mds_error *err) {
    memset(w, 0, sizeof *w);
    w->fd = fd;
    if (buffer_size < 4096) buffer_size = 4096;
    w->buffer = (uint8_t *)malloc(buffer_size);
    if (w->buffer == NULL) return mds_set_error(err, MDS_ERR_SYS, ENOMEM, "out of memory for the trace buffer");
    w->size = buffer_size;
    return MDS_OK;
}

int mds_trace_writer_flush(mds_trace_writer *w, mds_error *err) {
    if (w->fill) {
        int rc = write_all(w->fd, w->buffer, w->fill, err);
        if (rc != MDS_OK) return rc;
        w->bytes_written += w->fill;
        w->fill = 0;
    }
    return MDS_OK;
}

static void put_le64(uint8_t *p, uint64_t v) {
    int i;
    for (i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le32(uint8_t *p, uint32_t v) {
    int i;
    for (i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int mds_trace_writer_append(mds_trace_writer *w, uint64_t offset, const uint8_t *data, uint32_t length, mds_error *err) {
    uint8_t header[16];
    put_le64(header, offset);
    put_le32(header + 8, length);
    put_le32(header + 12, 0);
    if (w->size - w->fill < sizeof header && mds_trace_writer_flush(w, err) != MDS_OK) return err->status;
    memcpy(w->buffer + w->fill, header, sizeof header);
    w->fill += sizeof header;
    if (length > w->size - w->fill) {
        /* Large payloads go straight to the file. */
        if (mds_trace_writer_flush(w, err) != MDS_OK) return err->status;
        if (length >= w->size) {
            int rc = write_all(w->fd, data, length, err);
            if (rc != MDS_OK) return rc;
            w->bytes_written += length;
            w->records++;
            return MDS_OK;
        }
    }
    memcpy(w->buffer + w->fill, data, length);
    w->fill += length;
    w->records++;
    return MDS_OK;
}

int mds_trace_writer_span(mds_trace_writer *w, const uint8_t *span, uint64_t span_len, mds_error *err) {
    uint64_t pos = 0;
    mds_record rec;
    int rc;
    while ((rc = mds_span_next(span, span_len, &pos, &rec, err)) == 1) {
        if (mds_trace_writer_append(w, rec.offset, span + rec.payload_pos, rec.length, err) != MDS_OK)
            return err->status;
    }
    return rc == 0 ? MDS_OK : rc;
}

void mds_trace_writer_free(mds_trace_writer *w) {
    free(w->buffer);
    w->buffer = NULL;
}

#if defined(__linux__)
#define GROWBUF_ALIGN ((uint64_t)2 << 20)
/* Address space reserved at the first growth: the buffer then grows in place
 * (no mremap moving, and splitting, its huge pages) up to this size.  Only
 * touched pages cost memory (MAP_NORESERVE). */
#define GROWBUF_VIRTUAL ((uint64_t)64 << 30)

static uint64_t round_up(uint64_t v, uint64_t a) { return v > UINT64_MAX - (a - 1) ? UINT64_MAX : (v + a - 1) & ~(a - 1); }

/* A 2 MiB-aligned anonymous mapping of `size` bytes (huge pages only map at
 * aligned addresses), or NULL. */
static uint8_t *map_aligned(uint64_t size, int noreserve) {
    uint64_t span = size + GROWBUF_ALIGN;
    uintptr_t base, aligned;
    void *p;
    if (size > (uint64_t)SIZE_MAX - GROWBUF_ALIGN) return NULL;
    p = mmap(NULL, (size_t)span, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | (noreserve ? MAP_NORESERVE : 0), -1, 0);
    if (p == MAP_FAILED) return NULL;
    base = (uintptr_t)p;
    aligned = (base + (uintptr_t)(GROWBUF_ALIGN - 1)) & ~(uintptr_t)(GROWBUF_ALIGN - 1);
    if (aligned > base) munmap(p, aligned - base);
    if (base + span > aligned + size) munmap((void *)(aligned + size), (size_t)(base + span - (aligned + size)));
#ifdef MADV_HUGEPAGE
    /* Fresh pages cost a fault and a zeroing each; 2 MiB pages cut the
     * faults 512-fold on a dump that is written once, front to back. */
    madvise((void *)aligned, (size_t)size, MADV_HUGEPAGE);
#endif
    return (uint8_t *)aligned;
}
#endif

#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
#define HAVE_HELPER 1

/* The prefault helper: a thread that faults pages in (MADV_POPULATE_WRITE)
 * up to a target the consumer moves ahead of where it writes, so the kernel's
 * page zeroing runs on another CPU, beside the copy, instead of before it.
 * Only an optimisation: pages it has not reached yet fault as usual. */
struct mds_growbuf_helper {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    uint8_t *data;          /* fixed while the thread runs (stopped around mremap) */
    uint64_t limit;
    uint64_t target;        /* under lock */
    uint64_t done;          /* atomic: bytes from the start faulted in */
    int stop;               /* under lock */
    uint64_t generation;    /* fork generation that started the thread */
};

#define HELPER_STEP ((uint64_t)4 << 20)

static void *helper_main(void *arg) {
    struct mds_growbuf_helper *h = (struct mds_growbuf_helper *)arg;
    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        uint64_t start = __atomic_load_n(&h->done, __ATOMIC_RELAXED);
        if (start < h->target) {
            uint64_t end = h->target - start > HELPER_STEP ? start + HELPER_STEP : h->target;
            int rc;
            if (end > h->limit) end = h->limit;
            pthread_mutex_unlock(&h->lock);
            rc = madvise(h->data + start, (size_t)(end - start), MADV_POPULATE_WRITE);
            pthread_mutex_lock(&h->lock);
            if (rc != 0 && errno != EINTR) break; /* out of memory: the consumer's faults say so */
            if (rc == 0) __atomic_store_n(&h->done, end, __ATOMIC_RELEASE);
        } else {
            pthread_cond_wait(&h->wake, &h->lock);
        }
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static void helper_stop(mds_growbuf *buf) {
    struct mds_growbuf_helper *h = buf->helper;
    if (h == NULL) return;
    buf->helper = NULL;
    if (h->generation != mds_platform_fork_generation()) {
        /* A forked child: the thread was never copied; its lock may be
         * mid-use in the parent's image.  Leave it all. */
        return;
    }
    pthread_mutex_lock(&h->lock);
    h->stop = 1;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    {
        uint64_t done = __atomic_load_n(&h->done, __ATOMIC_ACQUIRE);
        if (done > buf->populated) buf->populated = done;
    }
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

static void helper_start(mds_growbuf *buf) {
    struct mds_growbuf_helper *h;
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2) return;  /* it would only take turns with the copy */
    h = (struct mds_growbuf_helper *)calloc(1, sizeof *h);
    if (h == NULL) return;
    h->data = buf->data;
    h->limit = buf->reserved;
    h->done = buf->populated;
    h->target = buf->populated;
    h->generation = mds_platform_fork_generation();
    if (pthread_mutex_init(&h->lock, NULL) != 0) {
        free(h);
        return;
    }
    if (pthread_cond_init(&h->wake, NULL) != 0) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        return;
    }
    if (pthread_create(&h->thread, NULL, helper_main, h) != 0) {
        pthread_cond_destroy(&h->wake);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return;
    }
    buf->helper = h;
}
#endif

/* Below this, a dump is faulted in by its writer alone: no thread for a small dump. */
#define HELPER_FROM ((uint64_t)16 << 20)

void mds_growbuf_populate_ahead(mds_growbuf *buf, uint64_t upto) {
#ifdef HAVE_HELPER
    struct mds_growbuf_helper *h = buf->helper;
    if (buf->data == NULL || upto <= buf->populated) return;
    if (h == NULL) {
        if (upto < HELPER_FROM || buf->helper_failed) return;
        helper_start(buf);
        h = buf->helper;
        if (h == NULL) {
            buf->helper_failed = 1;
            return;
        }
    }
    if (upto > h->limit) upto = h->limit;
    {
        uint64_t done = __atomic_load_n(&h->done, __ATOMIC_ACQUIRE);
        if (done > buf->populated) buf->populated = done;
    }
    pthread_mutex_lock(&h->lock);
    if (upto > h->target) {
        h->target = upto;
        pthread_cond_signal(&h->wake);
    }
    pthread_mutex_unlock(&h->lock);
#else
    (void)buf;
    (void)upto;
#endif
}

int mds_growbuf_reserve(mds_growbuf *buf, uint64_t size, mds_error *err) {
    uint64_t want;
    if (size > buf->requested) buf->requested = size;
    if (size <= buf->reserved) {
        if (size > buf->size) buf->size = size;
        return MDS_OK;
    }
#if defined(__linux__)
    {
        uint8_t *p = NULL;
        if (buf->data == NULL) {
            want = round_up(size, GROWBUF_ALIGN);
            if (want < GROWBUF_VIRTUAL && (uint64_t)SIZE_MAX > GROWBUF_VIRTUAL) {
                p = map_aligned(GROWBUF_VIRTUAL, 1);
                if (p != NULL) want = GROWBUF_VIRTUAL;
            }
            /* Refused (overcommit disabled, address space limit): exactly what is needed. */
            if (p == NULL) p = map_aligned(want, 0);
            if (p == NULL)
                return mds_set_error(err, MDS_ERR_SYS, errno, "cannot map %llu bytes for the memory sink: %s",
                                     (unsigned long long)want, strerror(errno));
        } else {
            /* Beyond the reservation: move the pages (no byte copied). */
            void *q;
#ifdef HAVE_HELPER
            helper_stop(buf); /* it works on the old addresses; the next populate_ahead restarts it */
#endif
            want = buf->reserved;
            while (want < size) {
                if (want > UINT64_MAX / 2)
                    return mds_set_error(err, MDS_ERR_ARG, 0, "buffer size %llu too large", (unsigned long long)size);
                want *= 2;
            }
            if (want > (uint64_t)SIZE_MAX)
                return mds_set_error(err, MDS_ERR_ARG, 0, "buffer size %llu too large", (unsigned long long)size);
            q = mremap(buf->data, (size_t)buf->reserved, (size_t)want, MREMAP_MAYMOVE);
            if (q == MAP_FAILED)
                return mds_set_error(err, MDS_ERR_SYS, errno, "cannot grow the memory sink to %llu bytes: %s",
                                     (unsigned long long)want, strerror(errno));
            p = (uint8_t *)q;
#ifdef MADV_HUGEPAGE
            madvise(p, (size_t)want, MADV_HUGEPAGE);
#endif
        }
        buf->data = p;
    }
#else
    want = buf->reserved ? buf->reserved : 2u << 20;
    while (want < size) {
        if (want > UINT64_MAX / 2) return mds_set_error(err, MDS_ERR_ARG, 0, "buffer size %llu too large", (unsigned long long)size);
        want *= 2;
    }
    if (want > (uint64_t)SIZE_MAX) return mds_set_error(err, MDS_ERR_ARG, 0, "buffer size %llu too large", (unsigned long long)size);
    {
        uint8_t *p = (uint8_t *)realloc(buf->data, (size_t)want);
        if (p == NULL)
            return mds_set_error(err, MDS_ERR_SYS, ENOMEM, "cannot grow the memory sink to %llu bytes",
                                 (unsigned long long)want);
        memset(p + buf->reserved, 0, (size_t)(want - buf->reserved));
        buf->data = p;
    }
#endif
    buf->reserved = want;
    buf->size = size;
    return MDS_OK;
}

int mds_growbuf_populate(mds_growbuf *buf, uint64_t upto, mds_error *err) {
    uint64_t start = buf->populated;
    if (upto > buf->reserved) upto = buf->reserved;
    if (buf->data == NULL || upto <= start) return MDS_OK;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    {
        uint64_t end = round_up(upto, GROWBUF_ALIGN);
        if (end > buf->reserved) end = buf->reserved;
        /* One call per stretch instead of a fault per page, and the kernel
         * keeps the huge pages MADV_HUGEPAGE asked for. */
        int rc;
        do {
            rc = madvise(buf->data + start, (size_t)(end - start), MADV_POPULATE_WRITE);
        } while (rc != 0 && errno == EINTR);
        if (rc == 0) {
            buf->populated = end;
            return MDS_OK;
        }
        if (errno != EINVAL)
            return mds_set_error(err, MDS_ERR_SYS, errno, "cannot fault in %llu bytes for the memory sink: %s",
                                 (unsigned long long)(end - start), strerror(errno));
        /* EINVAL on kernels before 5.14: touch the pages instead. */
        upto = end;
    }
#endif
    {
        volatile uint8_t *p = (volatile uint8_t *)buf->data;
        uint64_t i;
        (void)err;
        /* A write per page faults it in; the byte is already zero. */
        for (i = start & ~(uint64_t)4095; i < upto; i += 4096) p[i] = 0;
    }
    buf->populated = upto;
    return MDS_OK;
}

int mds_growbuf_prefault(mds_growbuf *buf, mds_error *err) {
    return mds_growbuf_populate(buf, buf->requested, err);
}

void mds_growbuf_free(mds_growbuf *buf) {
#ifdef HAVE_HELPER
    helper_stop(buf);
#endif
#if defined(__linux__)
    if (buf->data) munmap(buf->data, (size_t)buf->reserved);
#else
    free(buf->data);
#endif
    buf->data = NULL;
    buf->size = buf->reserved = buf->requested = buf->populated = 0;
    buf->helper_failed = 0;
}
