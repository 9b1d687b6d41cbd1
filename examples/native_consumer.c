/* native_consumer.c - drain an mdstream ring into a file, in C (no Python).
 *
 * The consumer half of docs/embedding.md: claim the consumer role, poll for
 * published records, take each span (mds_ring_take checks the BEGIN and END
 * records and folds every record into the dump's totals), walk it with
 * mds_span_next (which re-checks every header, so a broken producer cannot
 * make it read out of bounds), apply each record at its offset, release the
 * space.  At the end (MDS_END: the END record matched what arrived) make the
 * output durable, then commit: only now does the producer hear success.
 *
 * The output follows the transaction (docs/ring-format.md): records go into a
 * private temporary file beside OUT_FILE (created exclusively, 0600), named in
 * the ring (mds_ring_set_consumer_output) so that a producer that has to spill
 * can copy the part already released; a record is released only once it is in
 * that file (pwrite, no stdio buffer).  At the end: fsync, commit_begin, link
 * to the final name (never replacing an existing file), commit, then remove the
 * temporary name.  After a
 * failure the temporary file is kept until the producer no longer needs it.
 *
 * Build: cc -std=gnu11 -O2 -I"$INC" examples/native_consumer.c $SRC -pthread -o native_consumer
 * Usage: native_consumer [--create CAPACITY] [--timeout S] RING OUT_FILE
 *   --create   create RING (and remove it at the end) instead of attaching to it
 * Exit status: 0 the dump is complete in OUT_FILE, 1 the stream failed, 2 usage/setup. */
#include "mdstream/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <io.h>
#include <sys/stat.h>
#include <windows.h>
#define getpid() ((int)GetCurrentProcessId())
#else
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#define OUT_PATH_SIZE 1024

typedef struct {
    int fd;
    char temp[OUT_PATH_SIZE];  /* absolute: the ring names it to the producer */
    char final[OUT_PATH_SIZE];
} output;

static int output_open(output *out, const char *path) {
    char absolute[OUT_PATH_SIZE];
#ifdef _WIN32
    if (_fullpath(absolute, path, sizeof absolute) == NULL) return -1;
#else
    char dir[OUT_PATH_SIZE], resolved[PATH_MAX];
    struct stat st;
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (!slash) {
        strcpy(dir, ".");
    } else if (n == 0) {
        strcpy(dir, "/");
    } else {
        if (n >= sizeof dir) return -1;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    if (realpath(dir, resolved) == NULL) return -1;
    if (snprintf(absolute, sizeof absolute, "%s/%s", strcmp(resolved, "/") ? resolved : "",
                 slash ? slash + 1 : path) >= (int)sizeof absolute) return -1;
#endif
    if (snprintf(out->final, sizeof out->final, "%s", absolute) >= (int)sizeof out->final) return -1;
#ifdef _WIN32
    if (GetFileAttributesA(out->final) != INVALID_FILE_ATTRIBUTES) {
#else
    if (lstat(out->final, &st) == 0 || errno != ENOENT) { /* a dangling symlink counts */
#endif
        errno = EEXIST; /* a dump you already had is worth more than this one */
        return -1;
    }
    if (snprintf(out->temp, sizeof out->temp, "%s.%d.partial", absolute, getpid()) >= (int)sizeof out->temp)
        return -1;
#ifdef _WIN32
    out->fd = _open(out->temp, _O_RDWR | _O_CREAT | _O_EXCL | _O_BINARY, _S_IREAD | _S_IWRITE);
#else
    /* Exclusive and not through a symlink: never someone else's file. */
    out->fd = open(out->temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
#endif
    return out->fd < 0 ? -1 : 0;
}

/* The record is in the file when this returns (the producer may then reuse its space). */
static int output_write(output *out, const uint8_t *data, uint32_t length, uint64_t offset) {
    while (length > 0) {
#ifdef _WIN32
        int done;
        if (_lseeki64(out->fd, (long long)offset, SEEK_SET) < 0) return -1;
        done = _write(out->fd, data, length);
#else
        ssize_t done = pwrite(out->fd, data, length, (off_t)offset);
        if (done < 0 && errno == EINTR) continue;
#endif
        if (done <= 0) return -1;
        data += done;
        offset += (uint64_t)done;
        length -= (uint32_t)done;
    }
    return 0;
}

static int output_sync(output *out, uint64_t size) {
#ifdef _WIN32
    return _chsize_s(out->fd, (long long)size) == 0 && _commit(out->fd) == 0 ? 0 : -1;
#else
    return ftruncate(out->fd, (off_t)size) == 0 && fsync(out->fd) == 0 ? 0 : -1;
#endif
}

/* Under the final name, never replacing a file that is there already. */
static int output_publish(output *out) {
#ifdef _WIN32
    _close(out->fd);
    out->fd = -1;
    return MoveFileExA(out->temp, out->final, MOVEFILE_WRITE_THROUGH) ? 0 : -1;
#else
    char dir[OUT_PATH_SIZE];
    char *slash;
    int dfd;
    /* The temporary name stays until the commit: a producer that spills because this
     * process died in between still finds the consumer's part there. */
    if (link(out->temp, out->final) != 0) return -1;
    snprintf(dir, sizeof dir, "%s", out->final);
    slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        if (dfd >= 0) close(dfd);
        return -1;
    }
    close(dfd);
    return 0;
#endif
}

static void output_close(output *out) {
    if (out->fd >= 0) {
#ifdef _WIN32
        _close(out->fd);
#else
        close(out->fd);
#endif
    }
    out->fd = -1;
}

int main(int argc, char **argv) {
    const char *ring_name = NULL, *out_path = NULL;
    uint64_t capacity = 0, size = 0, bytes = 0, records = 0;
    double timeout_s = 60.0;
    uint64_t idle_since;
    mds_ring ring;
    mds_error err;
    output out;
    int i, rc, status = 1;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--create") == 0 && i + 1 < argc) capacity = strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) timeout_s = atof(argv[++i]);
        else if (!ring_name) ring_name = argv[i];
        else if (!out_path) out_path = argv[i];
        else ring_name = NULL;
    }
    if (!ring_name || !out_path) {
        fprintf(stderr, "usage: native_consumer [--create CAPACITY] [--timeout S] RING OUT_FILE\n");
        return 2;
    }
    rc = capacity ? mds_ring_create(&ring, ring_name, capacity, &err) : mds_ring_attach(&ring, ring_name, &err);
    if (rc != MDS_OK) {
        fprintf(stderr, "native_consumer: %s: %s\n", ring_name, err.message);
        return 2;
    }
    memset(&out, 0, sizeof out);
    out.fd = -1;
    if (output_open(&out, out_path) != 0) {
        fprintf(stderr, "native_consumer: cannot create %s: %s\n", out_path, strerror(errno));
        mds_ring_close(&ring);
        if (capacity) mds_ring_unlink(ring_name, NULL);
        return 2;
    }
    if (mds_ring_claim_consumer(&ring, &err) != MDS_OK ||
        mds_ring_set_consumer_output(&ring, out.temp, &err) != MDS_OK) {
        fprintf(stderr, "native_consumer: cannot start: %s\n", err.message);
        output_close(&out);
        (void)remove(out.temp);
        mds_ring_close(&ring);
        if (capacity) mds_ring_unlink(ring_name, NULL);
        return 2;
    }

    idle_since = mds_now_ns();
    for (;;) {
        uint64_t start, end, pos = 0;
        const uint8_t *span;
        mds_record rec;
        rc = mds_ring_poll(&ring, &start, &end, &err);
        if (rc == MDS_END) {
            /* Durable first; then COMMITTING, the final name, and the commit the producer waits for. */
            if (output_sync(&out, size) != 0) {
                snprintf(err.message, sizeof err.message, "cannot make %.200s durable: %s", out.final, strerror(errno));
                mds_ring_abort(&ring, (int32_t)0x80070070L, "native consumer: cannot make the output durable");
                break;
            }
            if ((rc = mds_ring_commit_begin(&ring, &err)) != MDS_OK) break;
            if (output_publish(&out) != 0) {
                snprintf(err.message, sizeof err.message, "cannot publish %.200s: %s", out.final, strerror(errno));
                mds_ring_abort(&ring, (int32_t)0x80004005L, "native consumer: cannot publish the output");
                break;
            }
            rc = mds_ring_commit(&ring, &err);
            if (rc == MDS_OK) status = 0;
            break;
        }
        if (rc == MDS_EMPTY) {
            /* Sleeps at most a bounded slice; notices a producer that died. */
            rc = mds_ring_wait_data(&ring, 100000000ull, &err);
            if (rc != MDS_OK) break;
            if (mds_now_ns() - idle_since > (uint64_t)(timeout_s * 1e9)) {
                snprintf(err.message, sizeof err.message, "no data for %g s", timeout_s);
                mds_ring_abort(&ring, (int32_t)0x800705B4L, "native consumer: no data before its timeout");
                break;
            }
            continue;
        }
        if (rc != MDS_OK) break; /* aborted (err.abort_code, reason in err.message) or corrupt */
        idle_since = mds_now_ns();
        {
            uint64_t n, b, high;
            rc = mds_ring_take(&ring, start, end, &n, &b, &high, &err);
            if (rc != MDS_OK) break;
        }
        span = mds_ring_at(&ring, start); /* [start, end) never crosses the wrap */
        while ((rc = mds_span_next(span, end - start, &pos, &rec, &err)) == 1) {
            if (output_write(&out, span + rec.payload_pos, rec.length, rec.offset) != 0) {
                snprintf(err.message, sizeof err.message, "cannot write %.200s: %s", out.temp, strerror(errno));
                mds_ring_abort(&ring, (int32_t)0x80070070L /* HRESULT_FROM_WIN32(ERROR_DISK_FULL) */,
                               "native consumer: cannot write the output");
                rc = -1;
                break;
            }
            if (rec.length && rec.offset + rec.length > size) size = rec.offset + rec.length;
            bytes += rec.length;
            records++;
        }
        if (rc < 0) break; /* not released: a spilling producer still finds these records in the ring */
        mds_ring_release(&ring, end); /* stored: the producer may reuse the space now */
    }
    output_close(&out);
    /* After a failure a spilling producer may be copying the partial file: keep it until it no
     * longer needs it.  Published, the file is also the output: only its temporary name goes. */
    if (status != 0) (void)mds_ring_wait_output_released(&ring, 60ull * 1000000000ull);
    (void)remove(out.temp);
    if (status == 0)
        printf("native_consumer: %llu bytes in %llu records, dump size %llu\n", (unsigned long long)bytes,
               (unsigned long long)records, (unsigned long long)size);
    else
        fprintf(stderr, "native_consumer: stream failed: %s\n", err.message);
    mds_ring_close(&ring);
    if (capacity) mds_ring_unlink(ring_name, NULL);
    return status;
}
