/* The storage behind FileSink: applies ring spans to a file at their offsets.
 *
 * A dump's small writes (4-16 B structure fields, half of them patching bytes
 * written earlier) would cost one system call each.  Instead they are copied
 * into a shared mapping of the file, a few segments of it at a time: the
 * bytes are in the file's page cache as soon as they are copied, so anything
 * that reads the file (the producer's spill copies the consumer's output up to
 * what it released) sees them with no flush.  Runs of contiguous records of at
 * least MDS_FILESINK_DIRECT bytes are written with pwritev straight from the
 * ring instead (no page faults, no copy into a mapping).  Both paths act on
 * the same page cache in record order, so the last write wins as with one
 * pwrite per record.
 *
 * The blocks under a mapped segment are allocated (fallocate) before it is
 * mapped, so no store into the mapping can meet a full file system (SIGBUS).
 * Where a segment cannot be allocated (ENOSPC, quota) or mapped, or on a
 * file system or OS without fallocate, the sink falls back to pwritev for
 * every record from then on, and a full file system is the ENOSPC of a
 * write.  POSIX only: Windows has no FileSink in C. */
#ifndef MDSTREAM_FILESINK_H
#define MDSTREAM_FILESINK_H

#include <stddef.h>
#include <stdint.h>
#include "mdstream/ring.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MDS_FILESINK_SEGMENT_SHIFT 22u              /* 4 MiB per mapped segment */
#define MDS_FILESINK_SLOTS 8                        /* at most 32 MiB mapped at once */
#define MDS_FILESINK_DIRECT ((uint64_t)4 << 10)     /* runs this long go through pwritev */

typedef struct mds_filesink_slot {
    uint8_t *base;       /* NULL: free */
    uint64_t segment;    /* file offset >> MDS_FILESINK_SEGMENT_SHIFT */
    uint64_t last_use;
} mds_filesink_slot;

typedef struct mds_filesink {
    int fd;
    int mapped;              /* 1: small writes go through the mapping; 0: pwritev only */
    uint64_t highest_end;    /* max(offset + length) applied */
    uint64_t use_clock;
    uint64_t direct_writes;  /* pwritev calls (statistics for tests and the bench) */
    uint64_t mapped_bytes;   /* payload copied through the mapping */
    uint64_t maps;           /* segments mapped */
    mds_filesink_slot *last; /* the slot the previous small record used */
    mds_filesink_slot slots[MDS_FILESINK_SLOTS];
} mds_filesink;

/* fd: a regular file open for reading and writing.  use_mapping = 0 forces
 * the pwritev-only path. */
void mds_filesink_init(mds_filesink *fs, int fd, int use_mapping);
/* Apply every record of a span (validated as it is read). */
int mds_filesink_apply(mds_filesink *fs, const uint8_t *span, uint64_t span_len, mds_error *err);
/* Apply one write (tests and native callers). */
int mds_filesink_write(mds_filesink *fs, uint64_t offset, const uint8_t *data, uint64_t length, mds_error *err);
/* Unmap every segment (their bytes are already in the file's page cache). */
void mds_filesink_unmap(mds_filesink *fs);
/* Unmap, then set the file's size to highest_end (segments are allocated
 * whole) and, if durable, fsync it. */
int mds_filesink_finish(mds_filesink *fs, int durable, mds_error *err);

#ifdef __cplusplus
}
#endif
#endif
