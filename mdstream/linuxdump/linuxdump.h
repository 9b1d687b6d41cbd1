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

/* A crashing thread's registers at the faulting instruction.  The snapshot
 * writes them, not the registers ptrace reads at snapshot time (which show a
 * signal handler or an exit), into the thread's CONTEXT in the ThreadList and
 * the Exception stream; the stack is captured from this context's RSP. */
#define MDL_FAULT_REGS 1u       /* regs: a whole struct user_regs_struct (ptrace's layout) */
#define MDL_FAULT_MCONTEXT 2u   /* regs: only what a signal handler's mcontext holds (general registers, RIP,
                                   RSP, EFLAGS, CS); the rest (fs_base, gs_base, orig_rax, segments) from ptrace */
#define MDL_FAULT_FPREGS 4u     /* fpregs: the FXSAVE image */
#define MDL_USER_REGS_WORDS 27  /* sizeof(struct user_regs_struct) / 8 on x86-64 */
#define MDL_MCONTEXT_GREGS 23   /* NGREG of an x86-64 mcontext_t */

typedef struct mdl_fault_context {
    uint32_t tid;               /* the crashing thread; 0 = no context */
    uint32_t flags;             /* MDL_FAULT_* */
    uint64_t regs[MDL_USER_REGS_WORDS];  /* struct user_regs_struct order: r15, r14, ..., gs */
    uint8_t fpregs[512];        /* FXSAVE (struct user_fpregs_struct / struct _libc_fpstate) */
} mdl_fault_context;

/* Fills ctx from a signal handler's ucontext: gregs are the 23 greg_t of
 * uc_mcontext (REG_R8 .. REG_CR2), fxsave the 512 bytes uc_mcontext.fpregs
 * points to (NULL when absent). */
void mdl_fault_from_mcontext(mdl_fault_context *ctx, uint32_t tid, const uint64_t gregs[MDL_MCONTEXT_GREGS],
                             const uint8_t *fxsave);

/* An extra stream written as is (a user stream type, above 0xFFFF). */
typedef struct mdl_user_stream {
    uint32_t type;
    uint32_t size;
    const uint8_t *data;
} mdl_user_stream;

#define MDL_MAX_USER_STREAMS 8

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
    mdl_fault_context crash;    /* tid != 0: that thread's context at the fault (see above) */
    int attached;               /* 1: the calling thread already traces every thread of the process and each
                                   is in a ptrace-stop (a supervisor); nothing is seized, interrupted or
                                   detached, and the snapshot runs on the calling thread */
    const mdl_user_stream *user_streams;  /* copied while the layout is built */
    uint32_t nuser_streams;     /* at most MDL_MAX_USER_STREAMS */
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

/* One captured thread, for callers that map thread identities (a pthread_t is
 * the thread's fs_base on x86-64 glibc). */
typedef struct mdl_thread_info {
    uint32_t tid;
    uint64_t fs_base, rip, rsp;
    int crashed;                /* its context is the fault context */
    char name[32];
} mdl_thread_info;

/* 0 and *out filled for i < threads, -1 otherwise. */
int mdl_snapshot_thread(const mdl_snapshot *snap, size_t i, mdl_thread_info *out);
void mdl_snapshot_free(mdl_snapshot *snap);

/* The benchmark's reference for a full dump: one process_vm_readv pass over
 * the given ranges of `pid` (not stopped) into one reused 4 MiB buffer.
 * *bytes: what could be read; *elapsed_ns: the pass alone. */
int mdl_read_pass(uint32_t pid, const uint64_t *starts, const uint64_t *sizes, size_t n, uint64_t *bytes,
                  uint64_t *elapsed_ns, mdl_error *err);

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
