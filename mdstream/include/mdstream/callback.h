/* The streaming MINIDUMP_CALLBACK_ROUTINE and its context, plus the DbgHelp
 * simulator that drives a routine from a native thread.  Pure C: a native crash
 * agent compiles this with ring.c and hands mds_dump_callback to
 * MiniDumpWriteDump; the Python extension wraps the same code. */
#ifndef MDSTREAM_CALLBACK_H
#define MDSTREAM_CALLBACK_H

#include "mdstream/dbghelp.h"
#include "mdstream/ring.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MDS_CALLBACK_TYPES 21          /* ModuleCallback .. VmPostReadCallback */
#define MDS_MAX_EXTRA_MEMORY 64        /* ranges offered through MemoryCallback */

/* HRESULTs the callback answers with when a write cannot be taken. */
#define MDS_HRESULT_TIMEOUT ((HRESULT)0x800705B4L)     /* HRESULT_FROM_WIN32(ERROR_TIMEOUT) */
#define MDS_HRESULT_BROKEN_PIPE ((HRESULT)0x8007006DL) /* HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE): consumer gone */
#define MDS_HRESULT_ABORTED ((HRESULT)0x80004004L)     /* E_ABORT: ring aborted */
#define MDS_HRESULT_UNEXPECTED ((HRESULT)0x8000FFFFL)  /* E_UNEXPECTED: protocol misuse */
#define MDS_HRESULT_FAIL ((HRESULT)0x80004005L)        /* E_FAIL */
#define MDS_HRESULT_SPILL_FAILED ((HRESULT)0x8007001DL) /* HRESULT_FROM_WIN32(ERROR_WRITE_FAULT): the spill file failed */
#define MDS_HRESULT_INCOMPLETE ((HRESULT)0x8007001EL)   /* HRESULT_FROM_WIN32(ERROR_READ_FAULT): the consumer's part of the
                                                          * dump could not be recovered into the spill */
#define MDS_HRESULT_RING_USED ((HRESULT)0x800700AAL)    /* HRESULT_FROM_WIN32(ERROR_BUSY): the ring already carried a dump */

/* The ring's abort code after a spill (customer bit, severity success: the
 * dump is not lost); the reason is MDS_SPILL_REASON_PREFIX + the spill path. */
#define MDS_ABORT_SPILLED ((int32_t)0x20D50001)
#define MDS_SPILL_REASON_PREFIX "dump spilled to "

/* Spill manifest (docs/spill-format.md). */
#define MDS_SPILL_MAGIC "MDSPILL1"
#define MDS_SPILL_VERSION 2u
#define MDS_SPILL_HEADER_SIZE 4096u
#define MDS_SPILL_MANIFEST_SUFFIX ".mdspill"
#define MDS_SPILL_BASE_SUFFIX ".mdspill-base"
#define MDS_SPILL_FINISHED 0x1u       /* IoFinish reached: every write is in the spill file */
#define MDS_SPILL_BASE_COMPLETE 0x2u  /* the spill (with its base copy, if any) holds the whole dump */
#define MDS_SPILL_FAILED 0x4u         /* a spill write failed: see the reason */
#define MDS_SPILL_BASE_COPY 0x8u      /* SPILL.mdspill-base holds a copy of the consumer's released part */
#define MDS_SPILL_COPY_SLICE_NS 5000000ull /* base copying per later write, so no callback waits long */
#define MDS_SPILL_TRIGGER_CONSUMER_GONE 1u
#define MDS_SPILL_TRIGGER_STALLED 2u
#define MDS_SPILL_TRIGGER_RING_UNUSABLE 3u
#define MDS_SPILL_EXTENT_BUFFER 256u

/* Optional hook for non-I/O callbacks (the Python trampoline uses it).
 * Returns -1 to keep the default answer, 0/1 for FALSE/TRUE. */
typedef int (*mds_callback_hook)(void *hook_param, PMINIDUMP_CALLBACK_INPUT input,
                                 PMINIDUMP_CALLBACK_OUTPUT output);

typedef struct mds_extra_memory_range {
    ULONG64 base;
    ULONG size;
} mds_extra_memory_range;

typedef struct mds_callback_options {
    uint64_t deadline_ns;          /* max wait for ring space per write (0 = forever) */
    int include_modules;           /* IncludeModuleCallback answer (default 1) */
    int include_threads;           /* IncludeThreadCallback answer (default 1) */
    ULONG module_write_flags_mask; /* ANDed into ModuleWriteFlags (default all ones) */
    ULONG thread_write_flags_mask; /* ANDed into ThreadWriteFlags (default all ones) */
    HRESULT read_memory_failure_status; /* default S_OK: skip unreadable memory */
    HRESULT is_process_snapshot_status; /* default S_FALSE */
    int coalesce;                  /* merge adjacent writes into one record (default 1) */
    uint64_t publish_bytes;        /* lazy publication threshold (default 64 KiB) */
    uint32_t extra_memory_count;
    mds_extra_memory_range extra_memory[MDS_MAX_EXTRA_MEMORY];
    /* Spill (docs/reliability.md): when a write cannot enter the ring (the
     * consumer is gone, the ring unusable, or no space for spill_after_ns),
     * write the rest of the dump to this file instead.  "" = never spill. */
    char spill_path[MDS_RING_PATH_SIZE];
    uint64_t spill_after_ns;       /* total time this dump may wait for its consumer before it spills
                                    * (0 = half of deadline_ns, so the spill keeps the other half) */
    uint64_t dump_deadline_ns;     /* whole-dump budget for waiting on the consumer, from IoStart (0 = none) */
} mds_callback_options;

typedef struct mds_spill_extent {
    uint64_t offset;
    uint64_t length;
} mds_spill_extent;

/* The callback's spill, all in the context: spilling allocates nothing. */
typedef struct mds_spill_state {
    int active;                    /* writes go to the spill file */
    int closed;                    /* finished or given up: files closed */
    intptr_t file;                 /* the spill file (-1 = none) */
    intptr_t manifest;             /* its .mdspill manifest */
    intptr_t base_source;          /* the consumer's output, opened once and verified (-1 = none) */
    intptr_t base_copy;            /* SPILL.mdspill-base (-1 = none) */
    uint64_t base_length;          /* bytes of the consumer's output to copy */
    uint64_t base_copied;
    uint64_t dump_id;
    uint32_t flags;                /* MDS_SPILL_* */
    uint32_t trigger;
    uint64_t resume_pos, ring_end_pos;
    uint64_t replayed_records, replayed_bytes, direct_writes, direct_bytes;
    uint64_t extent_count;         /* extents in the manifest file */
    uint64_t started_unix_ns;
    mds_spill_extent pending;      /* the extent being extended */
    uint32_t buffered;
    mds_spill_extent buffer[MDS_SPILL_EXTENT_BUFFER];
    char base_path[MDS_RING_PATH_SIZE];
    char reason[256];
} mds_spill_state;

typedef struct mds_callback_context {
    mds_ring *ring;
    mds_callback_options options;
    mds_callback_hook hook;
    void *hook_param;
    /* counters: written by the DbgHelp thread, read by others (relaxed atomics) */
    uint64_t writes;
    uint64_t bytes;
    uint64_t highest_end;          /* max(Offset + BufferBytes) */
    uint64_t calls[MDS_CALLBACK_TYPES + 1]; /* last slot: unknown types */
    uint32_t extra_memory_next;
    int io_started;
    int finished;
    int in_use;                    /* holds mds_ring_begin_use from IoStart to the dump's end */
    uint64_t dump_deadline_abs;    /* CLOCK_MONOTONIC end of the whole-dump budget (0 = none) */
    uint64_t stalled_ns;           /* time this dump waited for its consumer so far */
    uint64_t begun_unix_ns;
    /* first failure: HRESULT and reason, valid once failed != 0 */
    int failed;
    HRESULT failure_status;
    int failure_ring_status;
    char failure_reason[256];
    mds_spill_state spill;
} mds_callback_context;

/* Defaults documented in docs/callback.md. */
void mds_callback_options_init(mds_callback_options *options);
void mds_callback_context_init(mds_callback_context *ctx, mds_ring *ring, const mds_callback_options *options);
/* Reset counters and failure between dumps (closes an unfinished spill). */
void mds_callback_context_reset(mds_callback_context *ctx);
/* Close files a dump left open (an abandoned spill); call before freeing. */
void mds_callback_context_release(mds_callback_context *ctx);

/* Spill status, readable after the dump (not while it runs). */
typedef struct mds_spill_info {
    int spilled;                   /* the dump went (partly) to the spill file */
    uint32_t flags, trigger;
    uint64_t base_bytes, resume_pos, ring_end_pos, replayed_records, replayed_bytes, direct_writes, direct_bytes,
        extent_count, base_length, base_copied;
    char reason[256];
} mds_spill_info;
void mds_callback_spill_info(const mds_callback_context *ctx, mds_spill_info *out);

/* Spill internals, shared by callback.c and spill.c. */
int mds_spill_begin(mds_callback_context *ctx, uint32_t trigger, const char *why, mds_error *err);
int mds_spill_write(mds_callback_context *ctx, uint64_t offset, const void *data, uint64_t length, mds_error *err);
/* Copy more of the consumer's part into the base copy, until deadline_ns. */
int mds_spill_copy_step(mds_callback_context *ctx, uint64_t deadline_ns, mds_error *err);
/* At IoFinish: flush, finish the base copy by deadline_ns, size, fsync.
 * MDS_OK only when the spill holds the whole dump. */
int mds_spill_finish(mds_callback_context *ctx, uint64_t deadline_ns, mds_error *err);
void mds_spill_close(mds_callback_context *ctx);

/* Snapshot of the counters, safe to call while the routine runs elsewhere. */
typedef struct mds_callback_counters {
    uint64_t writes;
    uint64_t bytes;
    uint64_t highest_end;
    uint64_t calls[MDS_CALLBACK_TYPES + 1];
    int failed;
} mds_callback_counters;
void mds_callback_read_counters(const mds_callback_context *ctx, mds_callback_counters *out);

/* The routine to hand to MiniDumpWriteDump with CallbackParam = context. */
BOOL WINAPI mds_dump_callback(PVOID callback_param, PMINIDUMP_CALLBACK_INPUT input,
                              PMINIDUMP_CALLBACK_OUTPUT output);

/* ---- DbgHelp simulator ---------------------------------------------------- */

typedef struct mds_simulation {
    /* inputs */
    MINIDUMP_CALLBACK_ROUTINE routine;
    PVOID param;
    HANDLE io_handle;              /* Io.Handle passed to IoStart (DbgHelp passes hFile) */
    const uint8_t *buffer;         /* bytes the writes are taken from */
    uint64_t buffer_size;
    const uint64_t *offsets;
    const uint32_t *lengths;
    const uint64_t *sources;       /* position of each write's bytes in buffer */
    uint64_t count;
    int abandon;                   /* stop after the last write without IoFinish (a writer that failed) */
    int time_calls;                /* measure the longest callback (two clock reads per call) */
    /* progress and outcome (atomics while running) */
    uint64_t completed;            /* IoWriteAll calls that returned TRUE + S_OK */
    uint32_t done;                 /* futex-able flag: 1 once the thread ended */
    int succeeded;
    ULONG failed_callback_type;    /* which call failed */
    uint64_t failed_index;         /* which write failed */
    BOOL failed_return;
    HRESULT failed_status;
    uint64_t elapsed_ns;
    uint64_t longest_call_ns;      /* with time_calls */
    ULONG longest_call_type;
    /* thread */
    void *thread;                  /* platform thread handle */
    int started;
} mds_simulation;

/* Validate the plan (every source range inside buffer) and start a native
 * thread that calls the routine exactly as DbgHelp does: IoStart with Status
 * preset to E_NOTIMPL, one IoWriteAll per write with freshly filled
 * structures, IoFinish; stops at the first FALSE or unexpected Status. */
int mds_simulation_start(mds_simulation *sim, mds_error *err);
/* Wait up to timeout_ns for the thread; returns 1 when done (and joined). */
int mds_simulation_wait(mds_simulation *sim, uint64_t timeout_ns);
/* Progress readable while the thread runs. */
uint64_t mds_simulation_completed(const mds_simulation *sim);
int mds_simulation_is_done(const mds_simulation *sim);
/* Run on the calling thread instead (used by native tests and agents). */
void mds_simulation_run(mds_simulation *sim);

#ifdef __cplusplus
}
#endif
#endif
