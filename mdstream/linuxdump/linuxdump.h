/* mdstream's Linux minidump writer: snapshot a live process with ptrace, then
 * lay the minidump out and emit it through a MINIDUMP_CALLBACK_ROUTINE
 * (IoStart, IoWriteAll..., IoFinish) from a native thread, exactly as DbgHelp
 * drives the routine on Windows.  x86-64 Linux only; elsewhere every entry
 * point fails with MDL_ERR_UNSUPPORTED. */
#ifndef MDSTREAM_LINUXDUMP_H
#define MDSTREAM_LINUXDUMP_H

#include <stddef.h>
#include <stdint.h>

#include "mdstream/dbghelp.h"

#ifdef __cplusplus
extern "C" {
#endif

enum mdl_status {
    MDL_OK = 0,
    MDL_ERR_ARG = 1,
    MDL_ERR_SYS = 2,
    MDL_ERR_NO_PROCESS = 3,     /* no such process */
    MDL_ERR_PERMISSION = 4,     /* ptrace refused */
    MDL_ERR_EXITED = 5,         /* the process exited during the snapshot */
    MDL_ERR_ZOMBIE = 6,         /* the process is a zombie */
    MDL_ERR_TIMEOUT = 7,        /* threads did not stop before the deadline */
    MDL_ERR_UNSUPPORTED = 8,    /* not Linux x86-64 */
    MDL_ERR_SELF = 9,           /* cannot ptrace our own process */
    MDL_ERR_EMIT = 10           /* the callback refused a write */
};

typedef struct mdl_error {
    int status;
    int sys_errno;
    char message[512];
} mdl_error;

typedef struct mdl_options {
    int full_memory;            /* Memory64List of every readable private mapping */
    int include_environ;        /* LinuxEnviron stream (default 0: secrets) */
    int include_cmdline;        /* LinuxCmdLine stream (default 1) */
    int sanitize_stacks;        /* Breakpad-style: words that are not pointers become 0x0defaced */
    uint32_t max_stack;         /* bytes of stack per thread from the page-aligned SP (default 64 KiB) */
    uint32_t ip_context;        /* bytes each side of every RIP (default 256) */
    uint64_t stop_timeout_ns;   /* deadline for all threads to stop (default 5 s) */
    int exception_signal;       /* > 0: write an Exception stream */
    int exception_code;         /* si_code */
    uint64_t exception_address; /* si_addr */
    uint32_t exception_tid;     /* 0: the main thread */
    int fault;                  /* tests only: 1 = SIGKILL the target after stopping it */
} mdl_options;

void mdl_options_init(mdl_options *options);

typedef struct mdl_snapshot mdl_snapshot;

/* Figures of a snapshot, for the caller's report. */
typedef struct mdl_figures {
    uint32_t pid;
    uint32_t threads;
    uint32_t modules;
    uint32_t mappings;
    uint32_t memory_ranges;
    uint64_t memory_bytes;      /* bytes of target memory copied */
    uint64_t stopped_ns;        /* first PTRACE_INTERRUPT .. last detach */
    uint64_t snapshot_ns;       /* whole snapshot, including the unstopped parts */
    uint32_t vm_readv_failures; /* reads that fell back to /proc/PID/mem */
    uint32_t pending_signals;   /* signals re-delivered at detach */
} mdl_figures;

/* Stop the process, copy what the dump needs, resume it.  The ptrace work runs
 * on a dedicated thread that exits afterwards, so the kernel detaches whatever
 * an error path left attached: the target is never left stopped. */
int mdl_snapshot_take(uint32_t pid, const mdl_options *options, mdl_snapshot **out, mdl_error *err);
void mdl_snapshot_figures(const mdl_snapshot *snap, mdl_figures *out);
void mdl_snapshot_free(mdl_snapshot *snap);

/* The laid-out file: pieces in increasing, contiguous offsets. */
typedef struct mdl_piece {
    uint64_t offset;
    const uint8_t *data;
    uint64_t size;
} mdl_piece;

typedef struct mdl_layout {
    uint8_t *meta;              /* header, directory and every stream but memory contents */
    uint64_t meta_size;
    mdl_piece *pieces;
    size_t npieces;
    uint64_t total;             /* file size */
    uint32_t streams;
} mdl_layout;

/* Lay the file out (references the snapshot's buffers: free the layout first). */
int mdl_layout_build(const mdl_snapshot *snap, const mdl_options *options, mdl_layout *out, mdl_error *err);
void mdl_layout_free(mdl_layout *layout);

/* Emission through a callback routine, from a native thread. */
typedef struct mdl_emitter {
    MINIDUMP_CALLBACK_ROUTINE routine;
    PVOID param;
    const mdl_layout *layout;
    uint32_t max_write;         /* largest IoWriteAll (default 16 MiB) */
    /* outcome */
    uint64_t writes;            /* IoWriteAll calls answered TRUE + S_OK */
    uint64_t bytes;
    uint32_t done;
    int succeeded;
    ULONG failed_callback_type;
    BOOL failed_return;
    HRESULT failed_status;
    uint64_t elapsed_ns;
    void *thread;
    int started;
} mdl_emitter;

int mdl_emit_start(mdl_emitter *em, mdl_error *err);
/* 1 when the thread ended (and was joined), 0 on timeout. */
int mdl_emit_wait(mdl_emitter *em, uint64_t timeout_ns);
int mdl_emit_is_done(const mdl_emitter *em);
void mdl_emit_run(mdl_emitter *em);

uint64_t mdl_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif
