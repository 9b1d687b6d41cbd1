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
    memset(&ctx->spill, 0, sizeof ctx->spill);
    ctx->spill.file = ctx->spill.manifest = -1;
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
    ctx->spill.file = ctx->spill.manifest = -1;
    mds_callback_context_reset(ctx);
}

static HRESULT hresult_for(int ring_status) {
    switch (ring_status) {
    case MDS_ERR_TIMEOUT: return MDS_HRESULT_TIMEOUT;
    case MDS_ERR_PEER_GONE: return MDS_HRESULT_BROKEN_PIPE;
    case MDS_ERR_ABORTED: return MDS_HRESULT_ABORTED;
    case MDS_ERR_FINISHED:
    case MDS_ERR_BUSY: return MDS_HRESULT_UNEXPECTED;
    default: return MDS_HRESULT_FAIL;
    }
}

static int spill_configured(const mds_callback_context *ctx) { return ctx->options.spill_path[0] != '\0'; }

/* Failures after which the ring cannot take the dump but a file can. */
static int spillable(int ring_status) {
    return ring_status == MDS_ERR_TIMEOUT || ring_status == MDS_ERR_PEER_GONE || ring_status == MDS_ERR_ABORTED ||
           ring_status == MDS_ERR_CORRUPT || ring_status == MDS_ERR_SYS;
}

static uint32_t spill_trigger(int ring_status) {
    if (ring_status == MDS_ERR_PEER_GONE) return MDS_SPILL_TRIGGER_CONSUMER_GONE;
    if (ring_status == MDS_ERR_TIMEOUT) return MDS_SPILL_TRIGGER_STALLED;
    return MDS_SPILL_TRIGGER_RING_UNUSABLE;
}

/* With a spill file, a stall only lasts spill_after_ns: waiting longer would
 * hold the dumped process for nothing. */
static uint64_t write_timeout(const mds_callback_context *ctx) {
    uint64_t timeout = ctx->options.deadline_ns;
    if (spill_configured(ctx) && ctx->options.spill_after_ns && (timeout == 0 || ctx->options.spill_after_ns < timeout))
        timeout = ctx->options.spill_after_ns;
    return timeout;
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
    }
    output->Status = status;
    return FALSE;
}

static BOOL on_io(mds_callback_context *ctx, ULONG type, PMINIDUMP_CALLBACK_INPUT input,
                  PMINIDUMP_CALLBACK_OUTPUT output) {
    mds_error err;
    int rc;
    if (ctx->failed) return fail(ctx, output, ctx->failure_status, ctx->failure_ring_status, ctx->failure_reason);
    switch (type) {
    case IoStartCallback:
        rc = mds_ring_claim_producer(ctx->ring, &err);
        if (rc != MDS_OK) return fail(ctx, output, hresult_for(rc), rc, err.message);
        mds_ring_set_producer_options(ctx->ring, ctx->options.coalesce, ctx->options.publish_bytes);
        ctx->spill.ring_start_pos = ctx->ring->prod.wpos;
        ctx->io_started = 1;
        output->Status = S_FALSE; /* take over every write, whatever was preset */
        return TRUE;
    case IoWriteAllCallback: {
        uint64_t offset = input->Io.Offset;
        uint32_t length = input->Io.BufferBytes;
        if (length && input->Io.Buffer == NULL)
            return fail(ctx, output, E_INVALIDARG, MDS_ERR_ARG, "IoWriteAllCallback with a NULL buffer");
        if (ctx->spill.active) {
            rc = mds_spill_write(ctx, offset, input->Io.Buffer, length, &err);
            if (rc != MDS_OK) return fail(ctx, output, MDS_HRESULT_SPILL_FAILED, rc, err.message);
        } else {
            rc = mds_ring_write_timeout(ctx->ring, offset, input->Io.Buffer, length, write_timeout(ctx), &err);
            if (rc != MDS_OK && spill_configured(ctx) && spillable(rc)) {
                mds_error spill_err;
                int spill_rc = mds_spill_begin(ctx, spill_trigger(rc), err.message, &spill_err);
                if (spill_rc == MDS_OK) spill_rc = mds_spill_write(ctx, offset, input->Io.Buffer, length, &spill_err);
                if (spill_rc != MDS_OK) {
                    char reason[1600]; /* both messages and the path; fail() keeps what fits */
                    snprintf(reason, sizeof reason, "%s; the spill to %s failed: %s", err.message,
                             ctx->options.spill_path, spill_err.message);
                    return fail(ctx, output, MDS_HRESULT_SPILL_FAILED, spill_rc, reason);
                }
                rc = MDS_OK;
            }
            if (rc != MDS_OK) return fail(ctx, output, hresult_for(rc), rc, err.message);
        }
        mds_store_relaxed_u64(&ctx->writes, ctx->writes + 1);
        mds_store_relaxed_u64(&ctx->bytes, ctx->bytes + length);
        if (offset + length > ctx->highest_end) mds_store_relaxed_u64(&ctx->highest_end, offset + length);
        output->Status = S_OK;
        return TRUE;
    }
    default: /* IoFinishCallback */
        if (ctx->spill.active) {
            rc = mds_spill_finish(ctx, &err);
            if (rc != MDS_OK) return fail(ctx, output, MDS_HRESULT_SPILL_FAILED, rc, err.message);
            ctx->finished = 1;
            output->Status = S_OK;
            return TRUE;
        }
        rc = mds_ring_finish(ctx->ring, &err);
        if (rc != MDS_OK) return fail(ctx, output, hresult_for(rc), rc, err.message);
        ctx->finished = 1;
        output->Status = S_OK;
        return TRUE;
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
