/* mdstream's in-process crash handler and its wire protocol with the watcher
 * (`mdstream watch`).  See docs/crash-reporting.md.
 *
 * The process connects to the watcher over a SOCK_SEQPACKET Unix socket and
 * registers with a hello (plus a memfd for the Python tracebacks, passed with
 * SCM_RIGHTS).  When a fatal signal arrives, the handler -- on an alternate
 * signal stack, with no allocation, no lock and no Python (apart from
 * CPython's _Py_DumpTracebackThreads, what faulthandler calls from its own
 * handler) -- records siginfo, ucontext and tid in a preallocated message,
 * writes the tracebacks into the memfd, sends the message, and waits for the
 * watcher's answer with a deadline.  The watcher snapshots the process with
 * ptrace using that context and writes the report.  Then the handler restores
 * the previous handlers and lets the signal take its course (the previous
 * handler, or the default action: the process dies as it would have).
 *
 * Windows (the second half of this header, docs/windows.md "Crash capture"):
 * the same mds_crash_install / mds_crash_uninstall over mds_crash_config's
 * Windows fields, and the mds_watch_* API with which another process (the
 * watcher) waits for the crash and calls MiniDumpWriteDump on it.
 *
 * Linux on x86-64 and Windows; elsewhere mds_crash_install fails with
 * MDS_CRASH_ERR_UNSUPPORTED. */
#ifndef MDSTREAM_CRASH_H
#define MDSTREAM_CRASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MDS_CRASH_VERSION 1u
#define MDS_CRASH_HELLO_MAGIC 0x4843444Du  /* "MDCH": process -> watcher, registration */
#define MDS_CRASH_READY_MAGIC 0x5952444Du  /* "MDRY": watcher -> process, registration accepted */
#define MDS_CRASH_REPORT_MAGIC 0x5243444Du /* "MDCR": process -> watcher, a crash */
#define MDS_CRASH_ACK_MAGIC 0x4B41444Du    /* "MDAK": watcher -> process, the report's outcome */

#define MDS_CRASH_HELLO_TRACEBACKS 1u      /* hello: a memfd for the tracebacks rides along */
#define MDS_CRASH_MAX_ANNOTATIONS (64u << 10)

/* Registration: this header, then annotations_size bytes of UTF-8 JSON. */
typedef struct mds_crash_hello {
    uint32_t magic;
    uint32_t version;
    uint32_t pid;               /* getpid(); the watcher checks it against SO_PEERCRED */
    uint32_t flags;
    uint32_t annotations_size;
    uint32_t reserved;
} mds_crash_hello;

enum mds_crash_traceback_state {
    MDS_TB_NONE = 0,            /* not a Python process, or no memfd */
    MDS_TB_COMPLETE = 1,        /* traceback_bytes bytes at offset 0 of the memfd */
    MDS_TB_FAILED = 2,          /* the traceback dumper faulted; what it wrote is kept */
    MDS_TB_UNAVAILABLE = 3      /* _Py_DumpTracebackThreads was not found */
};

#define MDS_CRASH_FPREGS 1u       /* fpregs holds the FXSAVE image */
#define MDS_CRASH_LATE_HELLO 2u   /* the hello was sent by the handler itself (a fork nobody registered) */

/* A crash: sent by the handler, in one SEQPACKET message. */
typedef struct mds_crash_message {
    uint32_t magic;
    uint32_t version;
    uint32_t pid;               /* getpid() */
    uint32_t tid;               /* the crashing thread */
    int32_t signo;
    int32_t code;               /* si_code */
    uint64_t address;           /* si_addr */
    uint8_t siginfo[128];
    uint64_t gregs[23];         /* uc_mcontext.gregs (REG_R8 .. REG_CR2) */
    uint8_t fpregs[512];        /* *uc_mcontext.fpregs (FXSAVE) */
    uint32_t flags;
    uint32_t traceback_bytes;
    uint32_t traceback_state;
    uint32_t reserved;
} mds_crash_message;

/* The watcher's answer: a READY to a hello, an ACK to a crash. */
typedef struct mds_crash_ack {
    uint32_t magic;
    uint32_t version;
    uint32_t status;            /* ACK: 0 the report was written, else it failed (reason) */
    uint32_t watcher_pid;
    char report_id[64];         /* NUL-terminated */
    char reason[192];           /* NUL-terminated, one line */
} mds_crash_ack;

enum mds_crash_status {
    MDS_CRASH_OK = 0,
    MDS_CRASH_ERR_ARG = 1,
    MDS_CRASH_ERR_SYS = 2,
    MDS_CRASH_ERR_UNSUPPORTED = 3
};

typedef struct mds_crash_config {
    int sock;                   /* connected and registered with the watcher; -1: connect at the crash */
    int memfd;                  /* the tracebacks file registered with it; -1: none */
    uint32_t watcher_pid;       /* allowed to ptrace this process (Yama's PR_SET_PTRACER) */
    uint32_t peer_pid;          /* SO_PEERCRED pid of the watcher's listening socket (whoever created it: the
                                   watcher, the installer, a service manager); a connection made at the crash
                                   must show the same, and this uid or root */
    uint64_t timeout_ns;        /* how long the handler waits for the watcher's answer */
    uint64_t hard_timeout_ns;   /* a kernel timer SIGKILLs the process after this (a watcher stopped while
                                   it holds the process stopped); 0: timeout_ns + 5 s */
    const char *address;        /* the watcher's sockaddr_un path (abstract: leading NUL) */
    uint32_t address_len;
    const uint8_t *annotations; /* UTF-8 JSON for a hello sent at the crash (copied) */
    uint32_t annotations_size;
    int python_tracebacks;      /* call _Py_DumpTracebackThreads into memfd */
    int quiet;                  /* no line on stderr when the report was written */
    /* Windows only (the fields above are Linux only, except timeout_ns and quiet). */
    const char *rendezvous;     /* ASCII [A-Za-z0-9._-], at most 64: names the objects a watcher opens
                                   (Local\\mdstream-crash.NAME.*); NULL: the decimal process id */
    uint32_t windows_flags;     /* MDS_CRASH_WIN_*; 0: MDS_CRASH_WIN_DEFAULT */
    uint32_t reserved_windows;
} mds_crash_config;

/* Installs the handlers (SA_SIGINFO | SA_ONSTACK | SA_NODEFER) for SIGSEGV,
 * SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP and SIGSYS, keeping the previous
 * ones; takes ownership of sock and memfd.  Not async-signal-safe. */
int mds_crash_install(const mds_crash_config *config, char *error, size_t error_size);
/* Restores the previous handlers (where ours are still installed) and closes
 * the connection.  Returns how many signals still had our handler. */
int mds_crash_uninstall(void);
int mds_crash_is_installed(void);
/* After fork, in the child: the new connection and memfd (the inherited ones
 * are closed), registered by the caller; sock -1 connects at the crash. */
void mds_crash_set_connection(int sock, int memfd);

/* Gives the calling thread an alternate signal stack if it has none;
 * *stack and *size describe the mapping to pass to mds_crash_altstack_leave (NULL
 * when the thread already had one). */
int mds_crash_altstack_enter(void **stack, size_t *size);
void mds_crash_altstack_leave(void *stack, size_t size);
/* Gives every existing thread of the process an alternate signal stack (a
 * real-time signal each thread handles).  *covered: threads that have one
 * now; *total: threads seen.  Threads that block the signal are not covered. */
int mds_crash_altstack_all_threads(uint32_t timeout_ms, uint32_t *covered, uint32_t *total);
/* Releases the stacks of mds_crash_altstack_all_threads whose threads gave
 * them up (or are gone); returns how many stay mapped. */
uint32_t mds_crash_altstack_release_all(uint32_t timeout_ms);
/* Stacks handed out by mds_crash_altstack_all_threads and still mapped. */
uint32_t mds_crash_altstack_count(void);

#define MDS_CRASH_ALTSTACK_SIZE (64u << 10)

/* ---- Windows ------------------------------------------------------------------
 *
 * In the crashing process (mds_crash_install): an unhandled-exception filter,
 * the CRT's invalid-parameter and pure-call handlers and a SIGABRT handler
 * (what Breakpad and Crashpad install), and a vectored handler that only
 * takes the codes that never reach the filter (heap corruption, a /GS
 * failure raised as an exception), filtered as CPython's faulthandler does.
 * The faulting thread claims the crash, stores its EXCEPTION_POINTERS and
 * thread id in the shared block, wakes the handler thread started at install,
 * and waits for it with a deadline.  The handler thread signals the watcher
 * and waits for its answer, for the watcher process to end, or for the
 * deadline.  Nothing on that path allocates, takes a lock or calls Python;
 * the dump is written by the watcher, never by the crashed process.
 *
 * Objects (created by the process at install, opened by the watcher; the
 * process's default DACL: the user, SYSTEM, Administrators):
 *   Local\mdstream-crash.NAME.block    section holding one mds_crash_win_block
 *   Local\mdstream-crash.NAME.crash    event, process -> watcher: a crash is in the block
 *   Local\mdstream-crash.NAME.done     event, watcher -> process: the dump is written (or failed)
 *   Local\mdstream-crash.NAME.attach   event, watcher -> process: watcher_pid is set
 */
#define MDS_CRASH_WIN_MAGIC 0x5743444Du   /* "MDCW" */
#define MDS_CRASH_WIN_VERSION 1u
#define MDS_CRASH_RENDEZVOUS_MAX 64u

/* windows_flags */
#define MDS_CRASH_WIN_FILTER 0x1u         /* SetUnhandledExceptionFilter */
#define MDS_CRASH_WIN_VECTORED 0x2u       /* the vectored handler for codes that bypass the filter */
#define MDS_CRASH_WIN_CRT 0x4u            /* _set_invalid_parameter_handler, _set_purecall_handler */
#define MDS_CRASH_WIN_ABORT 0x8u          /* signal(SIGABRT): abort() reports before the CRT exits */
#define MDS_CRASH_WIN_DEFAULT 0xFu

/* What caught the crash (mds_crash_win_block.kind). */
enum mds_crash_win_kind {
    MDS_CRASH_KIND_NONE = 0,
    MDS_CRASH_KIND_FILTER = 1,
    MDS_CRASH_KIND_VECTORED = 2,
    MDS_CRASH_KIND_ABORT = 3,
    MDS_CRASH_KIND_INVALID_PARAMETER = 4,
    MDS_CRASH_KIND_PURECALL = 5
};

/* The exception codes of the crashes that are not exceptions (as Crashpad and
 * Breakpad report them): abort(), a CRT invalid parameter, a pure call. */
#define MDS_CRASH_CODE_ABORT 0x40000015u             /* STATUS_FATAL_APP_EXIT */
#define MDS_CRASH_CODE_INVALID_PARAMETER 0xC000000Du /* STATUS_INVALID_PARAMETER */
#define MDS_CRASH_CODE_PURECALL 0xC0000025u          /* STATUS_NONCONTINUABLE_EXCEPTION */

/* mds_crash_win_block.state */
enum mds_crash_win_state {
    MDS_CRASH_WIN_IDLE = 0,
    MDS_CRASH_WIN_CRASHED = 1,    /* the process filled the crash fields and signalled .crash */
    MDS_CRASH_WIN_DUMPING = 2,    /* a watcher took the crash */
    MDS_CRASH_WIN_DONE = 3        /* the watcher answered (status, report_id, reason) */
};

/* The block both sides map.  The process writes the crash fields before it
 * stores state CRASHED (release); the watcher reads them after it loaded
 * CRASHED (acquire).  A watcher trusts nothing in it: it checks magic,
 * version, size and pid, reads the exception through ReadProcessMemory and
 * checks the thread belongs to the process. */
typedef struct mds_crash_win_block {
    uint32_t magic;
    uint32_t version;
    uint32_t size;                /* sizeof(mds_crash_win_block) */
    uint32_t pid;                 /* the process that created it */
    uint32_t pointer_size;        /* sizeof(void *) in the process: its EXCEPTION_POINTERS layout */
    uint32_t state;               /* mds_crash_win_state */
    uint32_t watcher_pid;         /* written by the watcher before it sets .attach */
    uint32_t thread_id;           /* the crashing thread */
    uint32_t exception_code;
    uint32_t kind;                /* mds_crash_win_kind */
    uint64_t exception_pointers;  /* address of the EXCEPTION_POINTERS in the process */
    uint64_t exception_address;
    uint64_t timeout_ns;          /* how long the process waits for the watcher */
    uint32_t status;              /* the watcher's answer: 0 written, else it failed */
    uint32_t outcome;             /* the process's side, after the wait: mds_crash_win_outcome */
    char report_id[64];           /* NUL-terminated */
    char reason[192];             /* NUL-terminated, one line */
} mds_crash_win_block;

/* How the process's wait ended (mds_crash_win_block.outcome). */
enum mds_crash_win_outcome {
    MDS_CRASH_OUTCOME_NONE = 0,
    MDS_CRASH_OUTCOME_ANSWERED = 1,   /* the watcher set .done */
    MDS_CRASH_OUTCOME_NO_WATCHER = 2, /* no watcher had attached: nobody to wait for */
    MDS_CRASH_OUTCOME_WATCHER_GONE = 3, /* the watcher process ended first */
    MDS_CRASH_OUTCOME_DEADLINE = 4    /* timeout_ns passed */
};

#ifdef _WIN32
#include "mdstream/dbghelp.h"

/* Statistics of the process's side, for tests and diagnostics. */
int mds_crash_win_block_copy(mds_crash_win_block *out);

/* The watcher side.  Everything it reads from the process is checked. */
typedef struct mds_watch {
    HANDLE process;               /* PROCESS_QUERY_INFORMATION|VM_READ|DUP_HANDLE|SYNCHRONIZE (+ what DbgHelp needs) */
    HANDLE section, crash_event, done_event, attach_event;
    volatile mds_crash_win_block *block;
    uint32_t pid;
} mds_watch;

/* One crash, as the watcher verified it. */
typedef struct mds_watch_crash {
    uint32_t pid;
    uint32_t thread_id;
    uint32_t exception_code;      /* read from the process's EXCEPTION_RECORD */
    uint32_t kind;
    uint64_t exception_pointers;  /* for MINIDUMP_EXCEPTION_INFORMATION (ClientPointers TRUE) */
    uint64_t exception_address;   /* read from the process's EXCEPTION_RECORD */
} mds_watch_crash;

enum mds_watch_status {
    MDS_WATCH_OK = 0,
    MDS_WATCH_TIMEOUT = 1,        /* mds_watch_wait: nothing happened within the timeout */
    MDS_WATCH_EXITED = 2,         /* mds_watch_wait: the process ended without a crash */
    MDS_WATCH_ERR_ARG = 3,
    MDS_WATCH_ERR_SYS = 4,        /* a Windows call failed (the message has GetLastError) */
    MDS_WATCH_ERR_PROTOCOL = 5,   /* the block or the exception did not check out */
    MDS_WATCH_ERR_DUMP = 6        /* MiniDumpWriteDump failed */
};

/* A MiniDumpWriteDump-compatible function (NULL: dbghelp.dll's own). */
typedef BOOL(WINAPI *mds_minidump_write_fn)(HANDLE process, DWORD pid, HANDLE file, MINIDUMP_TYPE type,
                                            PMINIDUMP_EXCEPTION_INFORMATION exception,
                                            PMINIDUMP_USER_STREAM_INFORMATION user_streams,
                                            PMINIDUMP_CALLBACK_INFORMATION callback);

/* Opens process `pid` and the objects of its rendezvous (NULL: the pid),
 * checks the block, and tells the process a watcher is there. */
int mds_watch_attach(mds_watch *w, uint32_t pid, const char *rendezvous, char *error, size_t error_size);
/* Waits up to timeout_ms (0xFFFFFFFF: no limit) for a crash; on MDS_WATCH_OK
 * *crash is filled, verified, and the block is DUMPING. */
int mds_watch_wait(mds_watch *w, uint32_t timeout_ms, mds_watch_crash *crash, char *error, size_t error_size);
/* MiniDumpWriteDump(process, pid, NULL, type, {thread_id, exception_pointers,
 * ClientPointers TRUE}, user_streams, callback): the dump goes through
 * `callback` (mds_dump_callback and its context: the ring). */
int mds_watch_write_dump(mds_watch *w, const mds_watch_crash *crash, uint32_t dump_type,
                         PMINIDUMP_USER_STREAM_INFORMATION user_streams, PMINIDUMP_CALLBACK_INFORMATION callback,
                         mds_minidump_write_fn write_fn, char *error, size_t error_size);
/* Answers the process (status 0: the report was written), which stops waiting. */
int mds_watch_release(mds_watch *w, uint32_t status, const char *report_id, const char *reason);
void mds_watch_close(mds_watch *w);
#endif /* _WIN32 */

#ifdef __cplusplus
}
#endif
#endif
