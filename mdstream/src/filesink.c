/* FileSink's storage; see filesink.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/filesink.h"
#include "platform.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#ifndef _WIN32
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#endif

#define SEGMENT_SIZE ((uint64_t)1 << MDS_FILESINK_SEGMENT_SHIFT)
#define RUN_IOV 256

#if defined(__linux__)
#define HAVE_MAPPING 1
#endif

void mds_filesink_init(mds_filesink *fs, int fd, int use_mapping) {
    memset(fs, 0, sizeof *fs);
    fs->fd = fd;
#ifdef HAVE_MAPPING
    fs->mapped = use_mapping ? 1 : 0;
#else
    (void)use_mapping;
    fs->mapped = 0;
#endif
}

#ifndef _WIN32
static int write_run(mds_filesink *fs, struct iovec *iov, int iovcnt, uint64_t offset, mds_error *err) {
    while (iovcnt > 0) {
        ssize_t n = pwritev(fs->fd, iov, iovcnt, (off_t)offset);
        if (n < 0) {
            int e = errno;
            if (e == EINTR) continue;
            return mds_set_error(err, MDS_ERR_SYS, e, "write at offset %llu failed: %s", (unsigned long long)offset,
                                 strerror(e));
        }
        if (n == 0) /* pwritev made no progress: never spin */
            return mds_set_error(err, MDS_ERR_SYS, ENOSPC, "write at offset %llu wrote nothing",
                                 (unsigned long long)offset);
        fs->direct_writes++;
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
#endif

#ifdef HAVE_MAPPING
static void unmap_slot(mds_filesink_slot *slot) {
    if (slot->base) munmap(slot->base, (size_t)SEGMENT_SIZE);
    slot->base = NULL;
}

/* The slot mapping `segment`, mapping it (blocks allocated first) into the
 * least recently used slot if needed.  Returns NULL with err set on failure;
 * *unsupported = 1 when the file cannot be mapped this way at all. */
static mds_filesink_slot *segment_slot(mds_filesink *fs, uint64_t segment, int *unsupported, mds_error *err) {
    mds_filesink_slot *slot, *victim = &fs->slots[0];
    uint64_t start;
    void *p;
    int i, rc;
    for (i = 0; i < MDS_FILESINK_SLOTS; i++) {
        slot = &fs->slots[i];
        if (slot->base && slot->segment == segment) {
            slot->last_use = ++fs->use_clock;
            return slot;
        }
        if (!slot->base || (victim->base && slot->last_use < victim->last_use)) victim = slot;
    }
    start = segment << MDS_FILESINK_SEGMENT_SHIFT;
    /* Allocate before mapping: a store into a page the file system cannot
     * back would be SIGBUS; fallocate says ENOSPC instead.  Mode 0 also
     * extends the size over the segment, so no store lands past the end. */
    do {
        rc = fallocate(fs->fd, 0, (off_t)start, (off_t)SEGMENT_SIZE);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        int e = errno;
        /* A nearly full file system may still take the dump's own bytes
         * (one pwrite at a time reports the real ENOSPC), just not a whole
         * segment: like a file system without fallocate, fall back. */
        if (e == EOPNOTSUPP || e == ENOSYS || e == EINVAL || e == ENODEV || e == ENOSPC || e == EDQUOT || e == EFBIG) {
            *unsupported = 1;
            return NULL;
        }
        mds_set_error(err, MDS_ERR_SYS, e, "cannot allocate [%llu, %llu) of the output: %s",
                      (unsigned long long)start, (unsigned long long)(start + SEGMENT_SIZE), strerror(e));
        return NULL;
    }
    p = mmap(NULL, (size_t)SEGMENT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fs->fd, (off_t)start);
    if (p == MAP_FAILED) {
        int e = errno;
        if (e == ENODEV || e == EACCES || e == EINVAL) {
            *unsupported = 1;
            return NULL;
        }
        mds_set_error(err, MDS_ERR_SYS, e, "cannot map [%llu, %llu) of the output: %s",
                      (unsigned long long)start, (unsigned long long)(start + SEGMENT_SIZE), strerror(e));
        return NULL;
    }
#ifdef MADV_POPULATE_WRITE
    /* One call instead of a fault per page; advisory (EINVAL before 5.14). */
    (void)madvise(p, (size_t)SEGMENT_SIZE, MADV_POPULATE_WRITE);
#endif
    unmap_slot(victim);
    victim->base = (uint8_t *)p;
    victim->segment = segment;
    victim->last_use = ++fs->use_clock;
    fs->maps++;
    return victim;
}

/* Copy a short run into the mapping.  Returns MDS_OK, an error, or 1 when the
 * file cannot be mapped (the caller falls back to pwritev). */
static int copy_mapped(mds_filesink *fs, uint64_t offset, const uint8_t *data, uint64_t length, mds_error *err) {
    while (length > 0) {
        uint64_t segment = offset >> MDS_FILESINK_SEGMENT_SHIFT;
        uint64_t within = offset & (SEGMENT_SIZE - 1);
        uint64_t n = SEGMENT_SIZE - within;
        mds_filesink_slot *slot = fs->last;
        if (n > length) n = length;
        if (slot == NULL || slot->base == NULL || slot->segment != segment) {
            int unsupported = 0;
            slot = segment_slot(fs, segment, &unsupported, err);
            if (slot == NULL) return unsupported ? 1 : err->status;
            fs->last = slot;
        }
        memcpy(slot->base + within, data, (size_t)n);
        fs->mapped_bytes += n;
        offset += n;
        data += n;
        length -= n;
    }
    return MDS_OK;
}
#endif

void mds_filesink_unmap(mds_filesink *fs) {
#ifdef HAVE_MAPPING
    int i;
    for (i = 0; i < MDS_FILESINK_SLOTS; i++) unmap_slot(&fs->slots[i]);
#endif
    fs->last = NULL;
}

#ifndef _WIN32
/* A run of contiguous records [start, start + total) held as iovecs into the ring. */
typedef struct pending_run {
    struct iovec iov[RUN_IOV];
    int iovcnt;
    uint64_t start;
    uint64_t end;
} pending_run;

static int flush_run(mds_filesink *fs, pending_run *run, mds_error *err) {
    int rc;
    if (run->iovcnt == 0) return MDS_OK;
#ifdef HAVE_MAPPING
    if (fs->mapped && run->end - run->start < MDS_FILESINK_DIRECT) {
        uint64_t at = run->start;
        int i;
        for (i = 0; i < run->iovcnt; i++) {
            rc = copy_mapped(fs, at, (const uint8_t *)run->iov[i].iov_base, run->iov[i].iov_len, err);
            if (rc == 1) {
                /* Not mappable: this run and everything after go through
                 * pwritev.  What was copied already is in the file. */
                fs->mapped = 0;
                mds_filesink_unmap(fs);
                break;
            }
            if (rc != MDS_OK) return rc;
            at += run->iov[i].iov_len;
        }
        if (i == run->iovcnt) {
            run->iovcnt = 0;
            return MDS_OK;
        }
        /* Write the rest of the run directly (at is where it resumes). */
        rc = write_run(fs, run->iov + i, run->iovcnt - i, at, err);
        run->iovcnt = 0;
        return rc;
    }
#endif
    rc = write_run(fs, run->iov, run->iovcnt, run->start, err);
    run->iovcnt = 0;
    return rc;
}

static int add_record(mds_filesink *fs, pending_run *run, uint64_t offset, const uint8_t *data, uint64_t length,
                      mds_error *err) {
    if (offset > (uint64_t)INT64_MAX || length > (uint64_t)INT64_MAX - offset)
        return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record offset %llu is beyond what a file can hold",
                             (unsigned long long)offset);
    if (length == 0) return MDS_OK;
    if (run->iovcnt > 0 && (offset != run->end || run->iovcnt == RUN_IOV)) {
        int rc = flush_run(fs, run, err);
        if (rc != MDS_OK) return rc;
    }
    if (run->iovcnt == 0) run->start = run->end = offset;
    run->iov[run->iovcnt].iov_base = (void *)data;
    run->iov[run->iovcnt].iov_len = (size_t)length;
    run->iovcnt++;
    run->end += length;
    if (offset + length > fs->highest_end) fs->highest_end = offset + length;
    return MDS_OK;
}

int mds_filesink_apply(mds_filesink *fs, const uint8_t *span, uint64_t span_len, mds_error *err) {
    pending_run run;
    uint64_t pos = 0;
    mds_record rec;
    int rc;
    run.iovcnt = 0;
    run.start = run.end = 0;
    while ((rc = mds_span_next(span, span_len, &pos, &rec, err)) == 1) {
        if (add_record(fs, &run, rec.offset, span + rec.payload_pos, rec.length, err) != MDS_OK) return err->status;
    }
    if (rc != 0) return rc;
    /* Everything of this span is in the file when this returns: the ring
     * releases it next, and a spill copies released bytes from the file. */
    return flush_run(fs, &run, err);
}

int mds_filesink_write(mds_filesink *fs, uint64_t offset, const uint8_t *data, uint64_t length, mds_error *err) {
    pending_run run;
    run.iovcnt = 0;
    run.start = run.end = 0;
    if (length > (uint64_t)SSIZE_MAX)
        return mds_set_error(err, MDS_ERR_ARG, 0, "write of %llu bytes is too long", (unsigned long long)length);
    if (add_record(fs, &run, offset, data, length, err) != MDS_OK) return err->status;
    return flush_run(fs, &run, err);
}

int mds_filesink_finish(mds_filesink *fs, int durable, mds_error *err) {
    struct stat st;
    mds_filesink_unmap(fs);
    if (fstat(fs->fd, &st) != 0)
        return mds_set_error(err, MDS_ERR_SYS, errno, "cannot stat the output: %s", strerror(errno));
    if ((uint64_t)st.st_size != fs->highest_end) {
        int rc;
        do {
            rc = ftruncate(fs->fd, (off_t)fs->highest_end);
        } while (rc != 0 && errno == EINTR);
        if (rc != 0)
            return mds_set_error(err, MDS_ERR_SYS, errno, "cannot set the output's size to %llu: %s",
                                 (unsigned long long)fs->highest_end, strerror(errno));
    }
    if (durable && fsync(fs->fd) != 0)
        return mds_set_error(err, MDS_ERR_SYS, errno, "cannot fsync the output: %s", strerror(errno));
    return MDS_OK;
}
#else
int mds_filesink_apply(mds_filesink *fs, const uint8_t *span, uint64_t span_len, mds_error *err) {
    (void)fs; (void)span; (void)span_len;
    return mds_set_error(err, MDS_ERR_ARG, 0, "FileSink's C storage is POSIX-only");
}
int mds_filesink_write(mds_filesink *fs, uint64_t offset, const uint8_t *data, uint64_t length, mds_error *err) {
    (void)fs; (void)offset; (void)data; (void)length;
    return mds_set_error(err, MDS_ERR_ARG, 0, "FileSink's C storage is POSIX-only");
}
int mds_filesink_finish(mds_filesink *fs, int durable, mds_error *err) {
    (void)fs; (void)durable;
    return mds_set_error(err, MDS_ERR_ARG, 0, "FileSink's C storage is POSIX-only");
}
#endif
