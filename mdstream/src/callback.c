/* The streaming callback.  The I/O path copies into the ring and returns; it
 * never allocates, never takes a lock that a suspended thread could hold, and
 * never waits past the deadline in the options. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/callback.h"
#include "mdstream/atomics.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

void mds_callback_options_init(mds_callback_options *options) {
    memset(options, 0, sizeof *options);
    options->deadline_ns = 30ull * 1000000000ull;
    options->include_modules = 1;
    options->include_threads = 1;
    options->module_write_flags_mask = 0xFFFFFFFFu;
    options->thread_write_flags_mask = 0xFFFFFFFFu;
    options->read_memory_failure_status = S_OK;
    options->is_process_snapshot_status = S_FALSE;
    options->coalesce = 1;
    options->publish_bytes = 64 * 1024;
}

void mds_callback_context_release(mds_callback_context *ctx) { mds_spill_close(ctx); }

void mds_callback_context_reset(mds_callback_context *ctx) {
    mds_spill_close(ctx);
    if (ctx->in_use) {
        mds_ring_end_use(ctx->ring);
        ctx->in_use = 0;
    }
    memset(&ctx->spill, 0, sizeof ctx->spill);
    ctx->spill.file = ctx->spill.manifest = ctx->spill.base_source = ctx->spill.base_copy = -1;
    ctx->dump_deadline_abs = 0;
    ctx->stalled_ns = 0;
    ctx->begun_unix_ns = 0;
    memset(ctx->calls, 0, sizeof ctx->calls);
    ctx->writes = ctx->bytes = ctx->highest_end = 0;
    ctx->extra_memory_next = 0;
    ctx->io_started = ctx->finished = 0;
    ctx->failed = 0;
    ctx->failure_status = S_OK;
    ctx->failure_ring_status = MDS_OK;
    ctx->failure_reason[0] = '\0';
}

void mds_callback_context_init(mds_callback_context *ctx, mds_ring *ring, const mds_callback_options *options) {
    memset(ctx, 0, sizeof *ctx);
    ctx->ring = ring;
    if (options) ctx->options = *options;
    else mds_callback_options_init(&ctx->options);
    if (ctx->options.extra_memory_count > MDS_MAX_EXTRA_MEMORY) ctx->options.extra_memory_count = MDS_MAX_EXTRA_MEMORY;
    ctx->options.spill_path[sizeof ctx->options.spill_path - 1] = '\0';
    ctx->spill.file = ctx->spill.manifest = ctx->spill.base_source = ctx->spill.base_copy = -1;
    mds_callback_context_reset(ctx);
}

static HRESULT hresult_for(int ring_status) {
    switch (ring_status) {
    case MDS_ERR_TIMEOUT: return MDS_HRESULT_TIMEOUT;
    case MDS_ERR_PEER_GONE: return MDS_HRESULT_BROKEN_PIPE;
    case MDS_ERR_ABORTED: return MDS_HRESULT_ABORTED;
    case MDS_ERR_USED: return MDS_HRESULT_RING_USED;
    case MDS_ERR_FINISHED:
    case MDS_ERR_BUSY: return MDS_HRESULT_UNEXPECTED;
    default: return MDS_HRESULT_FAIL;
    }
}

static int spill_configured(const mds_callback_context *ctx) { return ctx->options.spill_path[0] != '\0'; }

/* Failures after which the ring cannot take the dump but a file can. */
static int spillable(int ring_status) {
    return ring_status == MDS_ERR_TIMEOUT || ring_status == MDS_ERR_PEER_GONE || ring_status == MDS_ERR_ABORTED ||
           ring_status == MDS_ERR_CORRUPT || ring_status == MDS_ERR_SYS || ring_status == MDS_ERR_CLOSED;
}

static uint32_t spill_trigger(int ring_status) {
    if (ring_status == MDS_ERR_PEER_GONE) return MDS_SPILL_TRIGGER_CONSUMER_GONE;
    if (ring_status == MDS_ERR_TIMEOUT) return MDS_SPILL_TRIGGER_STALLED;
    return MDS_SPILL_TRIGGER_RING_UNUSABLE;
}

/* With a spill file the dump waits for its consumer at most spill_after_ns
 * in total (a consumer that trickles just under a per-write deadline spills
 * too), leaving the rest of the deadline to the spill itself. */
static uint64_t stall_budget(const mds_callback_context *ctx) {
    uint64_t deadline = ctx->options.deadline_ns, after;
    if (!spill_configured(ctx)) return deadline;
    after = ctx->options.spill_after_ns ? ctx->options.spill_after_ns : (deadline ? deadline / 2 : 0);
    if (after == 0) return deadline;
    if (ctx->stalled_ns >= after) return 1; /* spent: the next wait ends at once */
    after -= ctx->stalled_ns;
    return deadline == 0 || after < deadline ? after : deadline;
}

/* The wait for the consumer's commit, with a spill configured: spill_after
 * (half the deadline by default), whatever the writes' stalls spent. */
static uint64_t commit_budget(const mds_callback_context *ctx) {
    uint64_t deadline = ctx->options.deadline_ns;
    uint64_t after = ctx->options.spill_after_ns ? ctx->options.spill_after_ns : (deadline ? deadline / 2 : 0);
    return after == 0 ? deadline : (deadline == 0 || after < deadline ? after : deadline);
}

static uint64_t earlier(uint64_t a, uint64_t b) { return a == 0 ? b : b == 0 ? a : a < b ? a : b; }

/* The dump is over (committed, spilled or failed): let a closing ring go. */
static void end_dump(mds_callback_context *ctx) {
    if (ctx->in_use) {
        mds_ring_end_use(ctx->ring);
        ctx->in_use = 0;
    }
}

static BOOL fail(mds_callback_context *ctx, PMINIDUMP_CALLBACK_OUTPUT output, HRESULT status, int ring_status,
                 const char *reason) {
    if (!ctx->failed) {
        size_t n = strnlen(reason, sizeof ctx->failure_reason - 1);
        ctx->failure_status = status;
        ctx->failure_ring_status = ring_status;
        memcpy(ctx->failure_reason, reason, n);
        ctx->failure_reason[n] = '\0';
        mds_store_release_u32((uint32_t *)&ctx->failed, 1u);
        /* A failed dump ends as aborted: no consumer may publish what it got,
         * and the ring never carries a second dump after it. */
        if (ctx->io_started && ctx->ring->header != NULL && mds_ring_owned_by_this_process(ctx->ring)) {
            char why[MDS_RING_REASON_SIZE];
            snprintf(why, sizeof why, "the dump failed: %s", reason);
            (void)mds_ring_abort(ctx->ring, (int32_t)status, why);
            if (ctx->ring->prod.claimed) mds_ring_set_outcome(ctx->ring, MDS_OUTCOME_FAILED);
        }
        end_dump(ctx);
    }
    output->Status = status;
    return FALSE;
}

/* The ring could not take a write (or the commit did not come): fall back to
 * the spill when one is configured. */
static int try_spill(mds_callback_context *ctx, int rc, mds_error *err, uint64_t offset, const void *data,
                     uint64_t length, int has_write, char *reason, size_t reason_size) {
    mds_error spill_err;
    int spill_rc;
    if (!spill_configured(ctx) || !spillable(rc)) return rc;
    spill_rc = mds_spill_begin(ctx, spill_trigger(rc), err->message, &spill_err);
    if (spill_rc == MDS_OK && has_write) spill_rc = mds_spill_write(ctx, offset, data, length, &spill_err);
    if (spill_rc == MDS_OK) return MDS_OK;
    snprintf(reason, reason_size, "%s; the spill to %s failed: %s", err->message, ctx->options.spill_path,
             spill_err.message);
    *err = spill_err;
    return spill_rc;
}

static BOOL finish_spill(mds_callback_context *ctx, PMINIDUMP_CALLBACK_OUTPUT output, uint64_t deadline) {
    mds_error err;
    int rc = mds_spill_finish(ctx, deadline, &err);
    if (rc != MDS_OK)
        return fail(ctx, output, rc == MDS_ERR_TIMEOUT || rc == MDS_ERR_PERMISSION ? MDS_HRESULT_INCOMPLETE
                                                                                 : MDS_HRESULT_SPILL_FAILED,
                    rc, err.message);
    ctx->finished = 1;
    mds_ring_set_outcome(ctx->ring, MDS_OUTCOME_SPILLED);
    end_dump(ctx);
    output->Status = S_OK;
    return TRUE;
}

static BOOL on_io(mds_callback_context *ctx, ULONG type, PMINIDUMP_CALLBACK_INPUT input,
                  PMINIDUMP_CALLBACK_OUTPUT output) {
    mds_error err;
    int rc;
    char reason[1600]; /* both messages and the path; fail() keeps what fits */
    if (ctx->failed) return fail(ctx, output, ctx->failure_status, ctx->failure_ring_status, ctx->failure_reason);
    switch (type) {
    case IoStartCallback:
        if (ctx->io_started) { /* asked again: the same answer */
            output->Status = S_FALSE;
            return TRUE;
        }
        rc = mds_ring_begin_use(ctx->ring, &err);
        if (rc != MDS_OK) return fail(ctx, output, hresult_for(rc), rc, err.message);
        ctx->in_use = 1;
        ctx->ring->prod.may_spill = spill_configured(ctx);
        rc = mds_ring_claim_producer(ctx->ring, &err);
        if (rc != MDS_OK) return fail(ctx, output, hresult_for(rc), rc, err.message);
        ctx->io_started = 1;
        mds_ring_set_producer_options(ctx->ring, ctx->options.coalesce, ctx->options.publish_bytes);
        ctx->spill.dump_id = ctx->ring->prod.dump_id;
        ctx->begun_unix_ns = mds_platform_realtime_ns();
        ctx->dump_deadline_abs = ctx->options.dump_deadline_ns ? mds_now_ns() + ctx->options.dump_deadline_ns : 0;
        output->Status = S_FALSE; /* take over every write, whatever was preset */
        return TRUE;
    case IoWriteAllCallback: {
        uint64_t offset = input->Io.Offset;
        uint32_t length = input->Io.BufferBytes;
        if (!ctx->io_started) return fail(ctx, output, MDS_HRESULT_UNEXPECTED, MDS_ERR_ARG, "IoWriteAllCallback before IoStartCallback");
        if (length && input->Io.Buffer == NULL)
            return fail(ctx, output, E_INVALIDARG, MDS_ERR_ARG, "IoWriteAllCallback with a NULL buffer");
        if (ctx->spill.active) {
            rc = mds_spill_write(ctx, offset, input->Io.Buffer, length, &err);
            if (rc == MDS_OK) rc = mds_spill_copy_step(ctx, mds_now_ns() + MDS_SPILL_COPY_SLICE_NS, &err);
            if (rc != MDS_OK) return fail(ctx, output, MDS_HRESULT_SPILL_FAILED, rc, err.message);
        } else {
            uint64_t waited = ctx->ring->prod.waited_ns;
            rc = mds_ring_write_bounded(ctx->ring, offset, input->Io.Buffer, length, ctx->dump_deadline_abs,
                                        stall_budget(ctx), &err);
            ctx->stalled_ns += ctx->ring->prod.waited_ns - waited;
            if (rc != MDS_OK) {
                int ring_rc = rc;
                snprintf(reason, sizeof reason, "%s", err.message);
                rc = try_spill(ctx, rc, &err, offset, input->Io.Buffer, length, 1, reason, sizeof reason);
                if (rc != MDS_OK)
                    return fail(ctx, output, spill_configured(ctx) && spillable(ring_rc) ? MDS_HRESULT_SPILL_FAILED
                                                                                         : hresult_for(ring_rc),
                                rc, reason);
            }
        }
        mds_store_relaxed_u64(&ctx->writes, ctx->writes + 1);
        mds_store_relaxed_u64(&ctx->bytes, ctx->bytes + length);
        if (offset + length > ctx->highest_end) mds_store_relaxed_u64(&ctx->highest_end, offset + length);
        output->Status = S_OK;
        return TRUE;
    }
    default: { /* IoFinishCallback: success only once the dump is safe */
        uint64_t deadline = earlier(ctx->options.deadline_ns ? mds_now_ns() + ctx->options.deadline_ns : 0,
                                    ctx->dump_deadline_abs);
        if (!ctx->io_started) return fail(ctx, output, MDS_HRESULT_UNEXPECTED, MDS_ERR_ARG, "IoFinishCallback before IoStartCallback");
        if (ctx->spill.active) return finish_spill(ctx, output, deadline);
        rc = mds_ring_end(ctx->ring, stall_budget(ctx), &err);
        if (rc == MDS_OK) {
            /* Committing is work (verify, fsync, rename), not a stall: with a
             * spill it gets a fresh spill_after (a dead consumer is noticed
             * at once by its lock), and the spill keeps the rest of the deadline. */
            uint64_t commit_deadline = deadline;
            if (spill_configured(ctx) && commit_budget(ctx))
                commit_deadline = earlier(deadline, mds_now_ns() + commit_budget(ctx));
            rc = mds_ring_wait_committed(ctx->ring, commit_deadline, &err);
        }
        if (rc == MDS_OK) {
            ctx->finished = 1;
            end_dump(ctx);
            output->Status = S_OK;
            return TRUE;
        }
        {
            int ring_rc = rc;
            snprintf(reason, sizeof reason, "%s", err.message);
            rc = try_spill(ctx, rc, &err, 0, NULL, 0, 0, reason, sizeof reason);
            if (rc == MDS_OK) return finish_spill(ctx, output, deadline);
            return fail(ctx, output, spill_configured(ctx) && spillable(ring_rc) ? MDS_HRESULT_SPILL_FAILED
                                                                                : hresult_for(ring_rc),
                        rc, reason);
        }
    }
    }
}

static BOOL default_answer(mds_callback_context *ctx, ULONG type, PMINIDUMP_CALLBACK_INPUT input,
                           PMINIDUMP_CALLBACK_OUTPUT output) {
    const mds_callback_options *o = &ctx->options;
    (void)input;
    switch (type) {
    case IncludeModuleCallback: return o->include_modules ? TRUE : FALSE;
    case IncludeThreadCallback: return o->include_threads ? TRUE : FALSE;
    case ModuleCallback:
        output->ModuleWriteFlags &= o->module_write_flags_mask;
        return TRUE;
    case ThreadCallback:
    case ThreadExCallback:
        output->ThreadWriteFlags &= o->thread_write_flags_mask;
        return TRUE;
    case MemoryCallback:
        /* One extra range per call; FALSE ends the list. */
        if (ctx->extra_memory_next < o->extra_memory_count) {
            output->MemoryBase = o->extra_memory[ctx->extra_memory_next].base;
            output->MemorySize = o->extra_memory[ctx->extra_memory_next].size;
            ctx->extra_memory_next++;
            return TRUE;
        }
        return FALSE;
    case CancelCallback:
        output->CheckCancel = FALSE;
        output->Cancel = FALSE;
        return TRUE;
    case ReadMemoryFailureCallback:
        output->Status = o->read_memory_failure_status;
        return TRUE;
    case IsProcessSnapshotCallback:
        output->Status = o->is_process_snapshot_status;
        return TRUE;
    case SecondaryFlagsCallback: /* keep DbgHelp's secondary flags */
        return TRUE;
    case VmStartCallback:        /* no virtual-memory callbacks */
        output->Status = S_FALSE;
        return TRUE;
    case IncludeVmRegionCallback:
    case RemoveMemoryCallback:
    case WriteKernelMinidumpCallback:
    case KernelMinidumpStatusCallback:
    case VmQueryCallback:
    case VmPreReadCallback:
    case VmPostReadCallback:
    default:
        return FALSE;
    }
}

BOOL WINAPI mds_dump_callback(PVOID callback_param, PMINIDUMP_CALLBACK_INPUT input,
                              PMINIDUMP_CALLBACK_OUTPUT output) {
    mds_callback_context *ctx = (mds_callback_context *)callback_param;
    ULONG type;
    if (ctx == NULL || input == NULL || output == NULL) return FALSE;
    type = input->CallbackType;
    mds_fetch_add_relaxed_u64(&ctx->calls[type < MDS_CALLBACK_TYPES ? type : MDS_CALLBACK_TYPES], 1);
    if (type == IoStartCallback || type == IoWriteAllCallback || type == IoFinishCallback)
        return on_io(ctx, type, input, output);
    if (ctx->hook) {
        int answer = ctx->hook(ctx->hook_param, input, output);
        if (answer >= 0) return answer ? TRUE : FALSE;
    }
    return default_answer(ctx, type, input, output);
}

void mds_callback_read_counters(const mds_callback_context *ctx, mds_callback_counters *out) {
    int i;
    out->writes = mds_load_relaxed_u64(&ctx->writes);
    out->bytes = mds_load_relaxed_u64(&ctx->bytes);
    out->highest_end = mds_load_relaxed_u64(&ctx->highest_end);
    for (i = 0; i <= MDS_CALLBACK_TYPES; i++) out->calls[i] = mds_load_relaxed_u64(&ctx->calls[i]);
    out->failed = (int)mds_load_acquire_u32((const uint32_t *)&ctx->failed);
}
