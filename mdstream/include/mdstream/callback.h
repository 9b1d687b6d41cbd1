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
} mds_callback_options;

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
    /* first failure: HRESULT and reason, valid once failed != 0 */
    int failed;
    HRESULT failure_status;
    int failure_ring_status;
    char failure_reason[256];
} mds_callback_context;

/* Defaults documented in docs/callback.md. */
void mds_callback_options_init(mds_callback_options *options);
void mds_callback_context_init(mds_callback_context *ctx, mds_ring *ring, const mds_callback_options *options);
/* Reset counters and failure between dumps. */
void mds_callback_context_reset(mds_callback_context *ctx);

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
    /* progress and outcome (atomics while running) */
    uint64_t completed;            /* IoWriteAll calls that returned TRUE + S_OK */
    uint32_t done;                 /* futex-able flag: 1 once the thread ended */
    int succeeded;
    ULONG failed_callback_type;    /* which call failed */
    uint64_t failed_index;         /* which write failed */
    BOOL failed_return;
    HRESULT failed_status;
    uint64_t elapsed_ns;
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
