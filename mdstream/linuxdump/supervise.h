/* The ptrace supervisor behind `mdstream run -- CMD`: runs CMD as a traced
 * child (PTRACE_SEIZE with PTRACE_O_TRACEEXIT | TRACECLONE | TRACEEXEC, and
 * TRACEFORK | TRACEVFORK when following forks; no syscall tracing), records
 * each thread's siginfo and registers at the signal-delivery-stop of a
 * fatal-class signal, re-injects every signal, and when a process dies of
 * such a signal holds all its threads at their PTRACE_EVENT_EXIT stops
 * (memory and registers intact) and reports the crash to the caller, which
 * snapshots it (an attached snapshot, on the same thread) before releasing it.
 *
 * Every call must come from the one thread that called mdl_sup_start: ptrace
 * requests are only accepted from the tracing thread. */
#ifndef MDSTREAM_LINUXDUMP_SUPERVISE_H
#define MDSTREAM_LINUXDUMP_SUPERVISE_H

#include <stdint.h>

#include "linuxdump.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mdl_supervisor mdl_supervisor;

typedef struct mdl_sup_options {
    const char *path;           /* the program to execute (resolved by the caller) */
    char *const *argv;          /* NULL-terminated */
    int follow_forks;           /* also trace forked children (and their crashes) */
    uint64_t reset_signals;     /* bit n-1: signal n back to SIG_DFL in the child before exec */
    uint64_t exit_stop_timeout_ns;  /* wait for a dying process's other threads (default 2 s) */
} mdl_sup_options;

/* The first fault a thread recorded (see mdl_sup_next). */
typedef struct mdl_sup_fault {
    uint32_t tid;
    int32_t signo;
    int32_t code;               /* si_code */
    int32_t sender_pid;         /* si_pid for signals sent by a process (si_code <= 0) */
    uint32_t sender_uid;
    uint64_t address;           /* si_addr */
    uint8_t siginfo[128];
    int have_regs, have_fpregs;
    uint64_t regs[MDL_USER_REGS_WORDS];   /* struct user_regs_struct at the signal-delivery-stop */
    uint8_t fpregs[512];
} mdl_sup_fault;

enum mdl_sup_event_kind {
    MDL_SUP_CRASH = 1,          /* a process is dying of a fatal signal; its threads are held */
    MDL_SUP_DONE = 2            /* the child and every followed process are gone */
};

typedef struct mdl_sup_event {
    int kind;
    uint32_t pid;               /* CRASH: the dying process (its threads are held until mdl_sup_release) */
    int32_t death_signal;       /* CRASH: the signal it dies of */
    int have_fault;             /* CRASH: a recorded fault of the crashing thread */
    mdl_sup_fault fault;
    uint32_t held;              /* CRASH: threads held at their exit stop */
    uint32_t missing;           /* CRASH: threads that did not reach their exit stop in time */
    int status;                 /* DONE: the child's wait status */
} mdl_sup_event;

/* Forks and execs the program traced; *child is its pid.  MDL_ERR_SYS with
 * sys_errno from execve (ENOENT, EACCES, ...) when it could not be executed,
 * MDL_ERR_PERMISSION when it could not be traced. */
int mdl_sup_start(const mdl_sup_options *options, mdl_supervisor **out, uint32_t *child, mdl_error *err);

/* Runs the supervision until a crash or the end.  Signals sent to the
 * supervisor (SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH) are forwarded to
 * the child; SIGINT and SIGQUIT are ignored (the terminal sends them to the
 * child too). */
int mdl_sup_next(mdl_supervisor *sup, mdl_sup_event *event, mdl_error *err);

/* Lets a process reported by MDL_SUP_CRASH die. */
void mdl_sup_release(mdl_supervisor *sup, uint32_t pid);

/* Figures: signal-delivery-stops seen, threads and processes traced so far. */
void mdl_sup_counts(const mdl_supervisor *sup, uint64_t *signal_stops, uint64_t *threads, uint64_t *processes);

/* Restores the caller's signal dispositions and mask; tracees still running
 * (only after an error) are detached by the kernel when this thread exits. */
void mdl_sup_free(mdl_supervisor *sup);

#ifdef __cplusplus
}
#endif
#endif
