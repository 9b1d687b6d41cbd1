/* The spill: when the ring cannot take the dump any more (consumer gone or
 * stalled, ring aborted or corrupt, or its commit did not come), the callback
 * writes the rest of it to a private file at the right offsets, starting with
 * every record the consumer has not released, and copies what the consumer
 * had released (its registered output, verified to be this dump's) into a
 * private base copy, a slice at a time so no callback waits past its
 * deadline.  The manifest beside them says what they hold
 * (docs/spill-format.md).  A file the spill did not create is never removed.
 *
 * Runs on DbgHelp's thread while the dumped process is suspended: no
 * allocation, only stack buffers and system calls, every size checked. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/callback.h"
#include "mdstream/atomics.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

/* Manifest header offsets (docs/spill-format.md). */
enum {
    M_MAGIC = 0,
    M_VERSION = 8,
    M_HEADER_SIZE = 12,
    M_FLAGS = 16,
    M_TRIGGER = 20,
    M_DUMP_SIZE = 24,
    M_BASE_BYTES = 32,
    M_RESUME_POS = 40,
    M_RING_END_POS = 48,
    M_REPLAYED_RECORDS = 56,
    M_REPLAYED_BYTES = 64,
    M_DIRECT_WRITES = 72,
    M_DIRECT_BYTES = 80,
    M_EXTENT_COUNT = 88,
    M_SPILLED_NS = 96,
    M_PID = 104,
    M_BASE_PATH = 112,
    M_REASON = 1136,
    M_BASE_LENGTH = 1392,
    M_BASE_COPIED = 1400,
    M_DUMP_ID = 1408,
    M_END = 1416
};

_Static_assert(M_END <= MDS_SPILL_HEADER_SIZE, "the manifest header fits its 4096 bytes");

static void put_u32(uint8_t *p, uint32_t v) {
    int i;
    for (i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v) {
    int i;
    for (i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Bounded concatenation: reasons are for people, a truncated one is fine. */
static void append_text(char *dst, size_t size, const char *text) {
    size_t used = strnlen(dst, size);
    size_t n;
    if (used + 1 >= size) return;
    n = strnlen(text, size - used - 1);
    memcpy(dst + used, text, n);
    dst[used + n] = '\0';
}

static int write_header(mds_callback_context *ctx, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    uint8_t h[MDS_SPILL_HEADER_SIZE]; /* whole: a reader of an early or failed spill finds every field */
    memset(h, 0, sizeof h);
    memcpy(h + M_MAGIC, MDS_SPILL_MAGIC, 8);
    put_u32(h + M_VERSION, MDS_SPILL_VERSION);
    put_u32(h + M_HEADER_SIZE, MDS_SPILL_HEADER_SIZE);
    put_u32(h + M_FLAGS, s->flags);
    put_u32(h + M_TRIGGER, s->trigger);
    put_u64(h + M_DUMP_SIZE, (s->flags & MDS_SPILL_FINISHED) ? ctx->highest_end : 0);
    put_u64(h + M_BASE_BYTES, s->base_copied);
    put_u64(h + M_RESUME_POS, s->resume_pos);
    put_u64(h + M_RING_END_POS, s->ring_end_pos);
    put_u64(h + M_REPLAYED_RECORDS, s->replayed_records);
    put_u64(h + M_REPLAYED_BYTES, s->replayed_bytes);
    put_u64(h + M_DIRECT_WRITES, s->direct_writes);
    put_u64(h + M_DIRECT_BYTES, s->direct_bytes);
    put_u64(h + M_EXTENT_COUNT, s->extent_count);
    put_u64(h + M_SPILLED_NS, s->started_unix_ns);
    put_u32(h + M_PID, mds_platform_pid());
    memcpy(h + M_BASE_PATH, s->base_path, strnlen(s->base_path, MDS_RING_PATH_SIZE - 1));
    memcpy(h + M_REASON, s->reason, strnlen(s->reason, sizeof s->reason - 1));
    put_u64(h + M_BASE_LENGTH, s->base_length);
    put_u64(h + M_BASE_COPIED, s->base_copied);
    put_u64(h + M_DUMP_ID, s->dump_id);
    return mds_platform_file_pwrite(s->manifest, h, sizeof h, 0, err);
}

/* Append the buffered extents, then publish their count in the header. */
static int flush_extents(mds_callback_context *ctx, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    uint8_t raw[MDS_SPILL_EXTENT_BUFFER * 16];
    uint8_t count[8];
    uint32_t i;
    int rc;
    if (s->buffered == 0) return MDS_OK;
    for (i = 0; i < s->buffered; i++) {
        put_u64(raw + 16 * i, s->buffer[i].offset);
        put_u64(raw + 16 * i + 8, s->buffer[i].length);
    }
    rc = mds_platform_file_pwrite(s->manifest, raw, 16ull * s->buffered, MDS_SPILL_HEADER_SIZE + 16 * s->extent_count,
                                  err);
    if (rc != MDS_OK) return rc;
    s->extent_count += s->buffered;
    s->buffered = 0;
    put_u64(count, s->extent_count);
    return mds_platform_file_pwrite(s->manifest, count, 8, M_EXTENT_COUNT, err);
}

/* Note that [offset, offset+length) of the spill file is authoritative.
 * Adjacent and nested writes (a normal dump's patches) extend one extent. */
static int add_extent(mds_callback_context *ctx, uint64_t offset, uint64_t length, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    mds_spill_extent *p = &s->pending;
    if (length == 0) return MDS_OK;
    if (p->length) {
        uint64_t end = p->offset + p->length;
        if (offset >= p->offset && offset <= end) {
            if (offset + length > end) p->length = offset + length - p->offset;
            return MDS_OK;
        }
        if (offset + length == p->offset) {
            p->offset = offset;
            p->length += length;
            return MDS_OK;
        }
        if (s->buffered == MDS_SPILL_EXTENT_BUFFER) {
            int rc = flush_extents(ctx, err);
            if (rc != MDS_OK) return rc;
        }
        s->buffer[s->buffered++] = *p;
    }
    p->offset = offset;
    p->length = length;
    return MDS_OK;
}

static int spill_bytes(mds_callback_context *ctx, uint64_t offset, const void *data, uint64_t length, mds_error *err) {
    int rc;
    if (length == 0) return MDS_OK;
    if (offset > UINT64_MAX - length)
        return mds_set_error(err, MDS_ERR_ARG, 0, "offset %llu + length %llu overflows 64 bits",
                             (unsigned long long)offset, (unsigned long long)length);
    rc = mds_platform_file_pwrite(ctx->spill.file, data, length, offset, err);
    if (rc != MDS_OK) return rc;
    return add_extent(ctx, offset, length, err);
}

/* Rewrite every record in [resume, end) of the ring into the spill file, as
 * one or two spans (the wrap splits them), walked with the consumer's own
 * checked walker: the mapping is shared. */
static int replay_ring(mds_callback_context *ctx, uint64_t resume, uint64_t end, mds_error *err) {
    mds_ring *ring = ctx->ring;
    mds_spill_state *s = &ctx->spill;
    while (resume < end) {
        uint64_t wrap = (resume | ring->mask) + 1;
        uint64_t span_end = end < wrap ? end : wrap;
        const uint8_t *span = mds_ring_at(ring, resume);
        uint64_t pos = 0;
        mds_record rec;
        int rc;
        while ((rc = mds_span_next(span, span_end - resume, &pos, &rec, err)) == 1) {
            rc = spill_bytes(ctx, rec.offset, span + rec.payload_pos, rec.length, err);
            if (rc != MDS_OK) return rc;
            s->replayed_records++;
            s->replayed_bytes += rec.length;
        }
        if (rc < 0) return rc;
        resume = span_end;
    }
    return MDS_OK;
}

static void close_files(mds_spill_state *s) {
    if (s->file != -1) mds_platform_file_close(s->file);
    if (s->manifest != -1) mds_platform_file_close(s->manifest);
    if (s->base_source != -1) mds_platform_file_close(s->base_source);
    if (s->base_copy != -1) mds_platform_file_close(s->base_copy);
    s->file = s->manifest = s->base_source = s->base_copy = -1;
    s->closed = 1;
}

/* A spill write failed: say so in the manifest (best effort) and close. */
static int give_up(mds_callback_context *ctx, int rc, const mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    mds_error ignored;
    s->flags = (s->flags & ~MDS_SPILL_FINISHED) | MDS_SPILL_FAILED;
    append_text(s->reason, sizeof s->reason, "; spill failed: ");
    append_text(s->reason, sizeof s->reason, err->message);
    if (s->manifest != -1) (void)write_header(ctx, &ignored);
    s->active = 0;
    close_files(s);
    return rc;
}

/* Open the consumer's registered output, if it is provably this dump's (the
 * consumer may be dead, stalled or hostile), and create the base copy beside
 * the spill.  Returns 1 when a copy was started; the copying itself goes in
 * slices (mds_spill_copy_step). */
static int open_base(mds_callback_context *ctx) {
    mds_spill_state *s = &ctx->spill;
    mds_ring_header *h = ctx->ring->header;
    char path[MDS_RING_PATH_SIZE], copy_path[MDS_RING_PATH_SIZE + sizeof MDS_SPILL_BASE_SUFFIX];
    uint64_t device, inode, size;
    size_t n;
    mds_error err;
    /* The dump id first (acquire): the consumer publishes it last. */
    if (s->dump_id == 0 || mds_load_acquire_u64(&h->output_dump_id) != s->dump_id) {
        append_text(s->reason, sizeof s->reason, "; the consumer registered no output for this dump");
        return 0;
    }
    /* Bounded copies out of the shared page before any check: the consumer
     * can rewrite it at any time. */
    memcpy(path, h->consumer_output, sizeof path);
    device = mds_load_relaxed_u64(&h->output_device);
    inode = mds_load_relaxed_u64(&h->output_inode);
    n = strnlen(path, sizeof path);
    if (n == 0 || n == sizeof path || !mds_platform_path_is_absolute(path)) return 0;
    memcpy(s->base_path, path, n + 1);
    if (mds_platform_file_open_registered(path, device, inode, ctx->begun_unix_ns, &s->base_source, &size, &err) !=
        MDS_OK) {
        append_text(s->reason, sizeof s->reason, "; consumer output not used: ");
        append_text(s->reason, sizeof s->reason, err.message);
        return 0;
    }
    /* Everything released lies below the dump's highest end so far; the rest
     * of the file is the consumer's preallocation or unreleased work. */
    s->base_length = size < ctx->highest_end ? size : ctx->highest_end;
    copy_path[0] = '\0';
    append_text(copy_path, sizeof copy_path, ctx->options.spill_path);
    append_text(copy_path, sizeof copy_path, MDS_SPILL_BASE_SUFFIX);
    if (mds_platform_file_create(copy_path, &s->base_copy, &err) != MDS_OK) {
        mds_platform_file_close(s->base_source);
        s->base_source = -1;
        append_text(s->reason, sizeof s->reason, "; base copy not created: ");
        append_text(s->reason, sizeof s->reason, err.message);
        return 0;
    }
    s->flags |= MDS_SPILL_BASE_COPY;
    return 1;
}

int mds_spill_copy_step(mds_callback_context *ctx, uint64_t deadline_ns, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    uint64_t copied = 0;
    int rc;
    if (s->base_source == -1 || s->base_copy == -1) return MDS_OK;
    if (s->base_copied < s->base_length) {
        rc = mds_platform_file_copy_range(s->base_source, s->base_copy, s->base_copied,
                                          s->base_length - s->base_copied, deadline_ns, &copied, err);
        s->base_copied += copied;
        if (rc != MDS_OK) return give_up(ctx, rc, err);
        if (s->base_copied < s->base_length && mds_now_ns() < deadline_ns)
            return give_up(ctx,
                           mds_set_error(err, MDS_ERR_SYS, 0, "the consumer's output %s shrank to %llu bytes while it was copied",
                                         s->base_path, (unsigned long long)s->base_copied),
                           err);
    }
    if (s->base_copied >= s->base_length) {
        s->flags |= MDS_SPILL_BASE_COMPLETE;
        mds_platform_file_close(s->base_source);
        s->base_source = -1;
    }
    return MDS_OK;
}

int mds_spill_begin(mds_callback_context *ctx, uint32_t trigger, const char *why, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    mds_ring *ring = ctx->ring;
    char manifest_path[MDS_RING_PATH_SIZE + sizeof MDS_SPILL_MANIFEST_SUFFIX];
    char reason[MDS_RING_REASON_SIZE];
    uint64_t end, resume;
    int rc;

    if (s->active || s->closed)
        return mds_set_error(err, MDS_ERR_ARG, 0, "this dump already spilled to %s", ctx->options.spill_path);
    s->started_unix_ns = mds_platform_realtime_ns();
    s->trigger = trigger;
    s->reason[0] = '\0';
    append_text(s->reason, sizeof s->reason, why);

    /* Everything before read_pos is in the consumer's sink; everything from
     * there to our own write position is still in the ring. */
    end = ring->prod.wpos;
    resume = mds_load_acquire_u64(&ring->header->read_pos);
    if ((resume % MDS_RING_RECORD_ALIGN) != 0 || resume > end || end - resume > ring->capacity)
        return mds_set_error(err, MDS_ERR_CORRUPT, 0,
                             "cannot spill: the ring's released position %llu is outside [%llu, %llu]",
                             (unsigned long long)resume, (unsigned long long)(end > ring->capacity ? end - ring->capacity : 0),
                             (unsigned long long)end);
    s->resume_pos = resume;
    s->ring_end_pos = end;

    manifest_path[0] = '\0';
    append_text(manifest_path, sizeof manifest_path, ctx->options.spill_path);
    append_text(manifest_path, sizeof manifest_path, MDS_SPILL_MANIFEST_SUFFIX);
    rc = mds_platform_file_create(ctx->options.spill_path, &s->file, err);
    if (rc != MDS_OK) return rc;
    rc = mds_platform_file_create(manifest_path, &s->manifest, err);
    if (rc != MDS_OK) {
        close_files(s);
        return rc;
    }
    if ((rc = write_header(ctx, err)) != MDS_OK) return give_up(ctx, rc, err);

    /* Only the BEGIN record released: nothing of the dump is outside the ring. */
    if (resume <= MDS_RING_RECORD_HEADER + MDS_BEGIN_PAYLOAD) s->flags |= MDS_SPILL_BASE_COMPLETE;
    else if (open_base(ctx) && (rc = mds_spill_copy_step(ctx, mds_now_ns() + MDS_SPILL_COPY_SLICE_NS, err)) != MDS_OK)
        return rc;
    /* The consumer's output is open here (or will not be used): it may go. */
    mds_ring_release_output(ring);
    if ((rc = replay_ring(ctx, resume, end, err)) != MDS_OK) return give_up(ctx, rc, err);
    if ((rc = write_header(ctx, err)) != MDS_OK) return give_up(ctx, rc, err);
    s->active = 1;

    /* Stop the consumer: its records are all in the spill file now. */
    reason[0] = '\0';
    append_text(reason, sizeof reason, MDS_SPILL_REASON_PREFIX);
    append_text(reason, sizeof reason, ctx->options.spill_path);
    mds_ring_abort(ring, MDS_ABORT_SPILLED, reason);
    return MDS_OK;
}

int mds_spill_write(mds_callback_context *ctx, uint64_t offset, const void *data, uint64_t length, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    int rc;
    if (!s->active) return mds_set_error(err, MDS_ERR_ARG, 0, "no spill in progress");
    rc = spill_bytes(ctx, offset, data, length, err);
    if (rc != MDS_OK) return give_up(ctx, rc, err);
    s->direct_writes++;
    s->direct_bytes += length;
    return MDS_OK;
}

int mds_spill_finish(mds_callback_context *ctx, uint64_t deadline_ns, mds_error *err) {
    mds_spill_state *s = &ctx->spill;
    mds_error ignored;
    int rc;
    if (!s->active) return mds_set_error(err, MDS_ERR_ARG, 0, "no spill in progress");
    if (s->pending.length) {
        if (s->buffered == MDS_SPILL_EXTENT_BUFFER && (rc = flush_extents(ctx, err)) != MDS_OK)
            return give_up(ctx, rc, err);
        s->buffer[s->buffered++] = s->pending;
        s->pending.length = 0;
    }
    if ((rc = mds_spill_copy_step(ctx, deadline_ns, err)) != MDS_OK) return rc;
    if ((rc = flush_extents(ctx, err)) != MDS_OK ||
        /* Exactly the dump's size: bytes past the last spilled write that
         * came from the consumer's part (or a gap DbgHelp never filled) read
         * as zeros, as in a file DbgHelp writes itself. */
        (rc = mds_platform_file_set_size(s->file, ctx->highest_end, err)) != MDS_OK ||
        (rc = mds_platform_file_sync(s->file, err)) != MDS_OK ||
        (s->base_copy != -1 && (rc = mds_platform_file_sync(s->base_copy, err)) != MDS_OK))
        return give_up(ctx, rc, err);
    s->flags |= MDS_SPILL_FINISHED;
    if (!(s->flags & MDS_SPILL_BASE_COMPLETE)) {
        /* Honest failure: without the consumer's part the spill is not the dump. */
        if (s->flags & MDS_SPILL_BASE_COPY)
            rc = mds_set_error(err, MDS_ERR_TIMEOUT, 0,
                               "the spill is incomplete: copying the consumer's part (%llu of %llu bytes) did not "
                               "finish before the deadline (the consumer's output %s held it: `mdstream spill finish --base` "
                               "can use it while it exists)",
                               (unsigned long long)s->base_copied, (unsigned long long)s->base_length, s->base_path);
        else
            rc = mds_set_error(err, MDS_ERR_PERMISSION, 0,
                               "the spill is incomplete: the consumer had released part of the dump and left no "
                               "usable output of it (%s)",
                               s->reason);
        append_text(s->reason, sizeof s->reason, "; incomplete");
        (void)write_header(ctx, &ignored);
        (void)mds_platform_file_sync(s->manifest, &ignored);
        s->active = 0;
        close_files(s);
        return rc;
    }
    if ((rc = write_header(ctx, err)) != MDS_OK || (rc = mds_platform_file_sync(s->manifest, err)) != MDS_OK)
        return give_up(ctx, rc, err);
    s->active = 0;
    close_files(s);
    return MDS_OK;
}

void mds_spill_close(mds_callback_context *ctx) {
    mds_spill_state *s = &ctx->spill;
    if (s->file != -1 || s->manifest != -1 || s->base_source != -1 || s->base_copy != -1) {
        mds_error ignored;
        if (s->manifest != -1 && s->buffered) (void)flush_extents(ctx, &ignored);
        close_files(s);
    }
    s->active = 0;
}

void mds_callback_spill_info(const mds_callback_context *ctx, mds_spill_info *out) {
    const mds_spill_state *s = &ctx->spill;
    memset(out, 0, sizeof *out);
    out->spilled = s->active || s->closed;
    out->flags = s->flags;
    out->trigger = s->trigger;
    out->resume_pos = s->resume_pos;
    out->ring_end_pos = s->ring_end_pos;
    out->replayed_records = s->replayed_records;
    out->replayed_bytes = s->replayed_bytes;
    out->direct_writes = s->direct_writes;
    out->direct_bytes = s->direct_bytes;
    out->extent_count = s->extent_count;
    out->base_length = s->base_length;
    out->base_copied = s->base_copied;
    out->base_bytes = s->base_copied;
    memcpy(out->reason, s->reason, sizeof out->reason);
}
