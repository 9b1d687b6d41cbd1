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
 * Build: cc -std=gnu11 -O2 -I"$INC" examples/native_consumer.c $SRC -pthread -o native_consumer
 * Usage: native_consumer [--create CAPACITY] [--timeout S] RING OUT_FILE
 *   --create   create RING (and remove it at the end) instead of attaching to it
 * Exit status: 0 the dump is complete in OUT_FILE, 1 the stream failed, 2 usage/setup. */
#include "mdstream/ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <io.h>
#define fseeko _fseeki64
#define fsync _commit
typedef long long off_type;
#else
#include <unistd.h>
typedef off_t off_type;
#endif

static int apply(FILE *out, const uint8_t *data, uint32_t length, uint64_t offset, uint64_t *size) {
    if (length == 0) return 0;
    if (fseeko(out, (off_type)offset, SEEK_SET) != 0 || fwrite(data, 1, length, out) != length) return -1;
    if (offset + length > *size) *size = offset + length;
    return 0;
}

int main(int argc, char **argv) {
    const char *ring_name = NULL, *out_path = NULL;
    uint64_t capacity = 0, size = 0, bytes = 0, records = 0;
    double timeout_s = 60.0;
    uint64_t idle_since;
    mds_ring ring;
    mds_error err;
    FILE *out;
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
    out = fopen(out_path, "wb");
    if (out == NULL || mds_ring_claim_consumer(&ring, &err) != MDS_OK) {
        fprintf(stderr, "native_consumer: cannot start: %s\n", out ? err.message : "cannot open the output");
        mds_ring_close(&ring);
        return 2;
    }

    idle_since = mds_now_ns();
    for (;;) {
        uint64_t start, end, pos = 0;
        const uint8_t *span;
        mds_record rec;
        rc = mds_ring_poll(&ring, &start, &end, &err);
        if (rc == MDS_END) {
            /* Durable first, then the commit the producer waits for. */
            if (fflush(out) != 0 || fsync(fileno(out)) != 0) {
                mds_ring_abort(&ring, (int32_t)0x80070070L, "native consumer: cannot flush the output");
                snprintf(err.message, sizeof err.message, "cannot flush %s", out_path);
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
            if (apply(out, span + rec.payload_pos, rec.length, rec.offset, &size) != 0) {
                mds_ring_abort(&ring, (int32_t)0x80070070L /* HRESULT_FROM_WIN32(ERROR_DISK_FULL) */,
                               "native consumer: cannot write the output");
                snprintf(err.message, sizeof err.message, "cannot write %s", out_path);
                rc = -1;
                break;
            }
            bytes += rec.length;
            records++;
        }
        if (rc < 0) break;
        mds_ring_release(&ring, end); /* stored: the producer may reuse the space now */
    }
    if (fclose(out) != 0 && status == 0) status = 1;
    if (status == 0)
        printf("native_consumer: %llu bytes in %llu records, dump size %llu\n", (unsigned long long)bytes,
               (unsigned long long)records, (unsigned long long)size);
    else
        fprintf(stderr, "native_consumer: stream failed: %s\n", err.message);
    mds_ring_close(&ring);
    if (capacity) mds_ring_unlink(ring_name, NULL);
    return status;
}
