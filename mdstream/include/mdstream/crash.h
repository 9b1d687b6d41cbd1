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
 * Linux only; elsewhere mds_crash_install fails with MDS_CRASH_ERR_UNSUPPORTED. */
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

#ifdef __cplusplus
}
#endif
#endif
