/* Loops over the records of a span taken from the ring, for consumers written
 * in C: the Python extension's built-in sinks run these without the GIL, and a
 * native consumer can use them directly.  Every record header is re-checked
 * as it is read, so a span rewritten under the consumer cannot make a loop
 * read or write outside its bounds. */
#ifndef MDSTREAM_SPAN_H
#define MDSTREAM_SPAN_H

#include <stddef.h>
#include <stdint.h>
#include "mdstream/ring.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mds_span_summary {
    uint64_t records;
    uint64_t bytes;        /* payload bytes */
    uint64_t highest_end;  /* max(offset + length), 0 if no record */
} mds_span_summary;

/* Validate every record and summarise. */
int mds_span_scan(const uint8_t *span, uint64_t span_len, mds_span_summary *summary, mds_error *err);
/* Fill up to capacity entries; *count receives the number of records. */
int mds_span_index(const uint8_t *span, uint64_t span_len, uint64_t *offsets, uint32_t *lengths,
                   uint64_t *positions, uint64_t capacity, uint64_t *count, mds_error *err);
/* Apply every record to dest[0:dest_size] (last write wins). */
int mds_span_apply_memory(const uint8_t *span, uint64_t span_len, uint8_t *dest, uint64_t dest_size,
                          mds_error *err);
/* pwrite every record at its offset into fd, merging records whose offsets
 * continue each other into one pwritev. */
int mds_span_pwrite(const uint8_t *span, uint64_t span_len, int fd, mds_error *err);

/* Buffered MDTRACE1 encoder. */
typedef struct mds_trace_writer {
    int fd;
    uint8_t *buffer;
    size_t size;
    size_t fill;
    uint64_t records;
    uint64_t bytes_written;
} mds_trace_writer;
int mds_trace_writer_init(mds_trace_writer *w, int fd, size_t buffer_size, mds_error *err);
int mds_trace_writer_append(mds_trace_writer *w, uint64_t offset, const uint8_t *data, uint32_t length, mds_error *err);
int mds_trace_writer_span(mds_trace_writer *w, const uint8_t *span, uint64_t span_len, mds_error *err);
int mds_trace_writer_flush(mds_trace_writer *w, mds_error *err);
void mds_trace_writer_free(mds_trace_writer *w);

/* A zero-filled byte buffer that grows without copying: on Linux a large
 * address-space reservation that grows in place (mremap beyond it), realloc
 * elsewhere. */
typedef struct mds_growbuf {
    uint8_t *data;
    uint64_t size;       /* bytes the user sees */
    uint64_t reserved;   /* bytes mapped/allocated (address space, not memory, on Linux) */
    uint64_t requested;  /* the largest size ever asked of reserve() */
    uint64_t populated;  /* bytes from the start known to be faulted in */
    struct mds_growbuf_helper *helper; /* the prefault thread, or NULL */
    int helper_failed;
} mds_growbuf;
int mds_growbuf_reserve(mds_growbuf *buf, uint64_t size, mds_error *err);
/* Fault in the pages up to `upto` now, in one call (MADV_POPULATE_WRITE), so
 * that filling them costs no page faults: a consumer does this just ahead of
 * where it writes. */
int mds_growbuf_populate(mds_growbuf *buf, uint64_t upto, mds_error *err);
/* Ask a helper thread (started on first use, for buffers past 16 MiB, on
 * more than one CPU) to fault pages in up to `upto` while the caller copies;
 * never blocks on it.  Stopped by mds_growbuf_free. */
void mds_growbuf_populate_ahead(mds_growbuf *buf, uint64_t upto);
/* Fault in every page up to the largest size reserved: a crash agent pays
 * this at start-up, not while the dumped process is suspended. */
int mds_growbuf_prefault(mds_growbuf *buf, mds_error *err);
void mds_growbuf_free(mds_growbuf *buf);

#ifdef __cplusplus
}
#endif
#endif
