/* The ptrace supervisor of `mdstream run` (see supervise.h).
 *
 * Why the exit stop: a signal-delivery-stop cannot tell whether the program
 * will handle the signal and carry on (a JVM, a Python faulthandler that
 * prints and re-raises); PTRACE_EVENT_EXIT says the process is dying and of
 * what, while its memory and registers are intact.  The registers a thread
 * had at its *first* fatal-class signal are kept, so a faulthandler's
 * re-raise (a SIGSEGV sent by raise(), si_code <= 0) does not replace the
 * context of the original fault; a new fault the kernel raised (si_code > 0)
 * or a different signal does. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "supervise.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot_internal.h"

#if MDL_SUPPORTED
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#endif

MDL_PRINTF(4, 5) static int sup_error(mdl_error *err, int status, int sys_errno, const char *fmt, ...);
static int sup_error(mdl_error *err, int status, int sys_errno, const char *fmt, ...) {
    if (err != NULL) {
        va_list ap;
        err->status = status;
        err->sys_errno = sys_errno;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

#if !MDL_SUPPORTED

int mdl_sup_start(const mdl_sup_options *options, mdl_supervisor **out, uint32_t *child, mdl_error *err) {
    (void)options;
    *out = NULL;
    *child = 0;
    return sup_error(err, MDL_ERR_UNSUPPORTED, 0, "the ptrace supervisor needs Linux on x86-64");
}
int mdl_sup_next(mdl_supervisor *sup, mdl_sup_event *event, mdl_error *err) {
    (void)sup;
    memset(event, 0, sizeof *event);
    return sup_error(err, MDL_ERR_UNSUPPORTED, 0, "the ptrace supervisor needs Linux on x86-64");
}
void mdl_sup_release(mdl_supervisor *sup, uint32_t pid) {
    (void)sup;
    (void)pid;
}
void mdl_sup_counts(const mdl_supervisor *sup, uint64_t *a, uint64_t *b, uint64_t *c) {
    (void)sup;
    *a = *b = *c = 0;
}
void mdl_sup_free(mdl_supervisor *sup) { (void)sup; }

#else

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

/* Signals whose default action kills with a core dump and that a fault or an
 * abort raises: the ones a crash report is written for. */
static int fatal_class(int sig) {
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGABRT || sig == SIGTRAP ||
           sig == SIGSYS;
}

/* Signals sent to the supervisor that are forwarded to the child. */
static const int forwarded[] = {SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH};
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])

typedef struct sup_thread {
    pid_t tid;                  /* 0: free slot; -1: deleted */
    pid_t tgid;
    int held;                   /* at its exit stop, not resumed */
    int detach;                 /* a process we do not follow: detach at its first stop */
    uint64_t fatal_seq;         /* order of its last fatal-class signal delivery */
    int fatal_sig;
    mdl_sup_fault *fault;       /* first recorded fault (see the top of this file) */
} sup_thread;

typedef struct sup_process {
    pid_t tgid;
    int dying;                  /* an exit stop said: killed by a fatal-class signal */
    int reported;               /* the CRASH event was returned */
    int death_signal;
    uint64_t deadline_ns;
    mdl_sup_fault *orphan;      /* the crashing thread's fault if its entry went first */
    pid_t orphan_tid;
} sup_process;

struct mdl_supervisor {
    pid_t child;
    int child_done;
    int child_status;
    int follow_forks;
    uint64_t exit_stop_timeout_ns;
    sup_thread *threads;        /* open addressing, power-of-two capacity */
    size_t cap, count, used;
    sup_process *procs;
    size_t nprocs, cprocs;
    uint64_t seq;
    uint64_t signal_stops, threads_seen, processes_seen;
    sigset_t blocked, old_mask;
    struct sigaction old_int, old_quit, old_chld;
    int restored;
};

/* ---- tables ---------------------------------------------------------------- */

static size_t slot_of(pid_t tid, size_t cap) { return ((size_t)tid * 2654435761u) & (cap - 1); }

static sup_thread *find_thread(mdl_supervisor *s, pid_t tid) {
    size_t i, n;
    if (s->cap == 0) return NULL;
    for (i = slot_of(tid, s->cap), n = 0; n < s->cap; i = (i + 1) & (s->cap - 1), n++) {
        if (s->threads[i].tid == tid) return &s->threads[i];
        if (s->threads[i].tid == 0) return NULL;
    }
    return NULL;
}

static int grow_threads(mdl_supervisor *s) {
    size_t cap = s->cap ? s->cap * 2 : 256, i;
    sup_thread *old = s->threads, *table;
    size_t old_cap = s->cap;
    if (s->count * 2 < s->cap) cap = s->cap; /* only tombstones: rehash in place size */
    table = (sup_thread *)calloc(cap, sizeof *table);
    if (table == NULL) return -1;
    s->threads = table;
    s->cap = cap;
    s->used = s->count;
    for (i = 0; i < old_cap; i++) {
        if (old[i].tid > 0) {
            size_t j = slot_of(old[i].tid, cap);
            while (table[j].tid != 0) j = (j + 1) & (cap - 1);
            table[j] = old[i];
        }
    }
    free(old);
    return 0;
}

static sup_thread *add_thread(mdl_supervisor *s, pid_t tid, pid_t tgid) {
    sup_thread *t = find_thread(s, tid);
    size_t i;
    if (t != NULL) {
        if (tgid) t->tgid = tgid;
        return t;
    }
    if ((s->used + 1) * 4 >= s->cap * 3 && grow_threads(s) != 0) return NULL;
    for (i = slot_of(tid, s->cap);; i = (i + 1) & (s->cap - 1))
        if (s->threads[i].tid <= 0) break;
    if (s->threads[i].tid == 0) s->used++;
    memset(&s->threads[i], 0, sizeof s->threads[i]);
    s->threads[i].tid = tid;
    s->threads[i].tgid = tgid;
    s->count++;
    s->threads_seen++;
    return &s->threads[i];
}

static sup_process *find_process(mdl_supervisor *s, pid_t tgid) {
    size_t i;
    for (i = 0; i < s->nprocs; i++)
        if (s->procs[i].tgid == tgid) return &s->procs[i];
    return NULL;
}

static sup_process *add_process(mdl_supervisor *s, pid_t tgid) {
    sup_process *p = find_process(s, tgid);
    if (p != NULL) return p;
    if (s->nprocs == s->cprocs) {
        size_t cap = s->cprocs ? s->cprocs * 2 : 8;
        sup_process *bigger = (sup_process *)realloc(s->procs, cap * sizeof *bigger);
        if (bigger == NULL) return NULL;
        s->procs = bigger;
        s->cprocs = cap;
    }
    p = &s->procs[s->nprocs++];
    memset(p, 0, sizeof *p);
    p->tgid = tgid;
    s->processes_seen++;
    return p;
}

static void remove_process(mdl_supervisor *s, pid_t tgid) {
    size_t i;
    for (i = 0; i < s->nprocs; i++)
        if (s->procs[i].tgid == tgid) {
            free(s->procs[i].orphan);
            s->procs[i] = s->procs[s->nprocs - 1];
            s->nprocs--;
            return;
        }
}

static void remove_thread(mdl_supervisor *s, sup_thread *t) {
    sup_process *p = find_process(s, t->tgid);
    if (t->fault != NULL && p != NULL && p->dying) {
        /* the crashing thread may go before the report: keep its fault */
        free(p->orphan);
        p->orphan = t->fault;
        p->orphan_tid = t->tid;
        t->fault = NULL;
    }
    free(t->fault);
    memset(t, 0, sizeof *t);
    t->tid = -1;
    s->count--;
}

/* The thread group of a task, from /proc (0 when it is gone). */
static pid_t read_tgid(pid_t tid) {
    char path[64], buf[1024];
    ssize_t n;
    int fd;
    char *at;
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    at = strstr(buf, "\nTgid:");
    return at ? (pid_t)strtol(at + 6, NULL, 10) : 0;
}

static uint64_t now_ns(void) { return mdl_now_ns(); }

/* ---- start ----------------------------------------------------------------- */

static void restore_signals(mdl_supervisor *s) {
    if (s->restored) return;
    s->restored = 1;
    sigaction(SIGINT, &s->old_int, NULL);
    sigaction(SIGQUIT, &s->old_quit, NULL);
    sigaction(SIGCHLD, &s->old_chld, NULL);
    pthread_sigmask(SIG_SETMASK, &s->old_mask, NULL);
}

int mdl_sup_start(const mdl_sup_options *o, mdl_supervisor **out, uint32_t *child, mdl_error *err) {
    mdl_supervisor *s;
    struct sigaction ign, dfl;
    int go[2] = {-1, -1}, report[2] = {-1, -1}, exec_errno = 0;
    long options = PTRACE_O_TRACEEXIT | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC;
    pid_t pid;
    size_t i;
    *out = NULL;
    *child = 0;
    if (o == NULL || o->path == NULL || o->argv == NULL || o->argv[0] == NULL)
        return sup_error(err, MDL_ERR_ARG, EINVAL, "no command to run");
    if (o->follow_forks) options |= PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK;
    s = (mdl_supervisor *)calloc(1, sizeof *s);
    if (s == NULL) return sup_error(err, MDL_ERR_SYS, ENOMEM, "out of memory");
    s->follow_forks = o->follow_forks;
    s->exit_stop_timeout_ns = o->exit_stop_timeout_ns ? o->exit_stop_timeout_ns : 2000000000ull;
    s->restored = 1;
    if (pipe2(go, O_CLOEXEC) != 0 || pipe2(report, O_CLOEXEC) != 0) {
        int e = errno;
        if (go[0] >= 0) {
            close(go[0]);
            close(go[1]);
        }
        free(s);
        return sup_error(err, MDL_ERR_SYS, e, "pipe: %s", strerror(e));
    }

    /* Ctrl-C and Ctrl-\ go to the whole foreground process group: the child
     * gets them from the terminal, the supervisor ignores them.  The signals
     * the supervisor forwards and SIGCHLD are blocked and taken with
     * sigtimedwait, so none is lost between two waits. */
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&s->blocked);
    sigaddset(&s->blocked, SIGCHLD);
    for (i = 0; i < NFORWARDED; i++) sigaddset(&s->blocked, forwarded[i]);
    pthread_sigmask(SIG_BLOCK, &s->blocked, &s->old_mask);
    sigaction(SIGINT, &ign, &s->old_int);
    sigaction(SIGQUIT, &ign, &s->old_quit);
    sigaction(SIGCHLD, &dfl, &s->old_chld); /* SIG_IGN would reap children behind our back */
    s->restored = 0;

    pid = fork();
    if (pid < 0) {
        int e = errno;
        restore_signals(s);
        close(go[0]);
        close(go[1]);
        close(report[0]);
        close(report[1]);
        free(s);
        return sup_error(err, MDL_ERR_SYS, e, "fork: %s", strerror(e));
    }
    if (pid == 0) {
        /* the child: async-signal-safe calls only */
        char byte;
        int n;
        ssize_t r;
        close(go[1]);
        close(report[0]);
        for (n = 1; n < 65; n++)
            if (o->reset_signals & (1ull << (n - 1))) sigaction(n, &dfl, NULL);
        /* SIGINT and SIGQUIT as they were before the supervisor ignored them
         * (a handler does not survive exec: the default) */
        sigaction(SIGINT, s->old_int.sa_handler == SIG_IGN ? &ign : &dfl, NULL);
        sigaction(SIGQUIT, s->old_quit.sa_handler == SIG_IGN ? &ign : &dfl, NULL);
        sigaction(SIGCHLD, &dfl, NULL);
        sigprocmask(SIG_SETMASK, &s->old_mask, NULL);
        do {
            r = read(go[0], &byte, 1); /* until the supervisor traces us */
        } while (r < 0 && errno == EINTR);
        if (r == 1) {
            extern char **environ;
            execve(o->path, o->argv, environ);
        }
        n = r == 1 ? errno : ECHILD;
        while (write(report[1], &n, sizeof n) < 0 && errno == EINTR) {
        }
        _exit(127);
    }
    close(go[0]);
    close(report[1]);
    if (ptrace(PTRACE_SEIZE, pid, NULL, (void *)options) != 0) {
        int e = errno;
        close(go[1]);
        close(report[0]);
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        restore_signals(s);
        free(s);
        return sup_error(err, MDL_ERR_PERMISSION, e,
                         "cannot trace the child with ptrace: %s (is mdstream itself being traced, or ptrace "
                         "forbidden by seccomp or Yama ptrace_scope 3?)",
                         strerror(e));
    }
    s->child = pid;
    if (add_thread(s, pid, pid) == NULL || add_process(s, pid) == NULL) {
        close(go[1]);
        close(report[0]);
        kill(pid, SIGKILL);
        restore_signals(s);
        mdl_sup_free(s);
        return sup_error(err, MDL_ERR_SYS, ENOMEM, "out of memory");
    }
    /* let it exec; the report pipe closes on a successful exec (before the
     * exec stop), or carries execve's errno */
    {
        char byte = 1;
        ssize_t r;
        while (write(go[1], &byte, 1) < 0 && errno == EINTR) {
        }
        close(go[1]);
        do {
            r = read(report[0], &exec_errno, sizeof exec_errno);
        } while (r < 0 && errno == EINTR);
        close(report[0]);
        if (r != (ssize_t)sizeof exec_errno) exec_errno = 0;
    }
    if (exec_errno != 0) {
        /* reap it (it is traced: let its exit stop go) */
        for (;;) {
            int st;
            pid_t r = waitpid(pid, &st, __WALL);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 || WIFEXITED(st) || WIFSIGNALED(st)) break;
            ptrace(PTRACE_CONT, pid, NULL, NULL);
        }
        restore_signals(s);
        free(s->threads);
        free(s->procs);
        free(s);
        return sup_error(err, MDL_ERR_SYS, exec_errno, "cannot execute %s: %s", o->path, strerror(exec_errno));
    }
    *out = s;
    *child = (uint32_t)pid;
    return MDL_OK;
}

/* ---- events ---------------------------------------------------------------- */

static void record_fault(mdl_supervisor *s, sup_thread *t, int sig) {
    siginfo_t si;
    mdl_sup_fault *f;
    int keep_first;
    memset(&si, 0, sizeof si);
    if (ptrace(PTRACE_GETSIGINFO, t->tid, NULL, &si) != 0) return;
    /* a re-raise of the same signal from user space keeps the first fault */
    keep_first = t->fault != NULL && t->fault->signo == sig && si.si_code <= 0;
    t->fatal_seq = ++s->seq;
    t->fatal_sig = sig;
    if (keep_first) return;
    f = t->fault != NULL ? t->fault : (mdl_sup_fault *)malloc(sizeof *f);
    if (f == NULL) return;
    memset(f, 0, sizeof *f);
    f->tid = (uint32_t)t->tid;
    f->signo = sig;
    f->code = si.si_code;
    f->address = (uint64_t)(uintptr_t)si.si_addr;
    if (si.si_code <= 0) {
        f->sender_pid = si.si_pid;
        f->sender_uid = si.si_uid;
    }
    memcpy(f->siginfo, &si, sizeof f->siginfo < sizeof si ? sizeof f->siginfo : sizeof si);
    if (ptrace(PTRACE_GETREGS, t->tid, NULL, f->regs) == 0) f->have_regs = 1;
    if (ptrace(PTRACE_GETFPREGS, t->tid, NULL, f->fpregs) == 0) f->have_fpregs = 1;
    t->fault = f;
}

/* Is every thread of p held at its exit stop? */
static int all_held(mdl_supervisor *s, pid_t tgid, uint32_t *held, uint32_t *missing) {
    size_t i;
    *held = *missing = 0;
    for (i = 0; i < s->cap; i++) {
        sup_thread *t = &s->threads[i];
        if (t->tid <= 0 || t->tgid != tgid) continue;
        if (t->held)
            (*held)++;
        else
            (*missing)++;
    }
    return *missing == 0;
}

static void fill_crash(mdl_supervisor *s, sup_process *p, mdl_sup_event *ev) {
    sup_thread *best = NULL;
    size_t i;
    memset(ev, 0, sizeof *ev);
    ev->kind = MDL_SUP_CRASH;
    ev->pid = (uint32_t)p->tgid;
    ev->death_signal = p->death_signal;
    all_held(s, p->tgid, &ev->held, &ev->missing);
    for (i = 0; i < s->cap; i++) {
        sup_thread *t = &s->threads[i];
        if (t->tid <= 0 || t->tgid != p->tgid || t->fatal_sig != p->death_signal || t->fault == NULL) continue;
        if (best == NULL || t->fatal_seq > best->fatal_seq) best = t;
    }
    if (best != NULL) {
        ev->fault = *best->fault;
        ev->have_fault = 1;
    } else if (p->orphan != NULL && p->orphan->signo == p->death_signal) {
        ev->fault = *p->orphan;
        ev->have_fault = 1;
    }
    p->reported = 1;
}

static void resume(pid_t tid, int sig) {
    if (ptrace(PTRACE_CONT, tid, NULL, (void *)(uintptr_t)sig) != 0 && errno != ESRCH) {
        /* not in a stop we can resume: nothing else to do */
    }
}

/* A new task reported by a clone/fork event or by its own first stop. */
static sup_thread *new_task(mdl_supervisor *s, pid_t tid, pid_t tgid_hint) {
    sup_thread *t = find_thread(s, tid);
    pid_t tgid = tgid_hint ? tgid_hint : read_tgid(tid);
    if (t == NULL) t = add_thread(s, tid, tgid);
    if (t == NULL) return NULL;
    if (!t->tgid) t->tgid = tgid;
    if (t->tgid == tid && find_process(s, tid) == NULL) {
        if (!s->follow_forks) {
            t->detach = 1; /* a clone() that made a process, not a thread */
        } else if (add_process(s, tid) == NULL) {
            return NULL;
        }
    }
    return t;
}

/* At a clone event: 1 if the parent's clone()/clone3() asked for CLONE_THREAD,
 * 0 if not, -1 if that cannot be told (then /proc says).  Cheaper than
 * reading /proc for every thread a thread-heavy program starts. */
static int clone_makes_thread(pid_t parent) {
    struct user_regs_struct regs;
    uint64_t flags = 0;
    if (ptrace(PTRACE_GETREGS, parent, NULL, &regs) != 0) return -1;
    if (regs.orig_rax == SYS_clone) {
        flags = regs.rdi;
    } else if (regs.orig_rax == 435 /* SYS_clone3 */) {
        struct iovec local = {&flags, sizeof flags};
        struct iovec remote = {(void *)(uintptr_t)regs.rdi, sizeof flags}; /* clone_args.flags comes first */
        if (process_vm_readv(parent, &local, 1, &remote, 1, 0) != (ssize_t)sizeof flags) return -1;
    } else {
        return -1;
    }
    return (flags & CLONE_THREAD) ? 1 : 0;
}

static void handle_stop(mdl_supervisor *s, pid_t tid, int status) {
    sup_thread *t = find_thread(s, tid);
    int sig = WSTOPSIG(status), event = (status >> 16) & 0xFF;
    unsigned long msg = 0;
    if (t == NULL) {
        /* a new tracee whose first stop came before its parent's event */
        t = new_task(s, tid, 0);
        if (t == NULL) {
            resume(tid, 0);
            return;
        }
    }
    switch (event) {
    case PTRACE_EVENT_CLONE:
    case PTRACE_EVENT_FORK:
    case PTRACE_EVENT_VFORK:
        if (ptrace(PTRACE_GETEVENTMSG, tid, NULL, &msg) == 0 && msg > 0) {
            pid_t child = (pid_t)msg;
            if (event == PTRACE_EVENT_CLONE) {
                int thread = clone_makes_thread(tid);
                new_task(s, child, thread == 1 ? t->tgid : thread == 0 ? child : 0);
            } else {
                new_task(s, child, child);
            }
        }
        resume(tid, 0);
        return;
    case PTRACE_EVENT_EXEC: {
        /* every other thread of the process is gone; the execing thread now
         * has the leader's id; faults of the old program are forgotten */
        size_t i;
        pid_t tgid = t->tgid;
        if (ptrace(PTRACE_GETEVENTMSG, tid, NULL, &msg) == 0 && (pid_t)msg != tid) {
            sup_thread *former = find_thread(s, (pid_t)msg);
            if (former != NULL) remove_thread(s, former);
        }
        for (i = 0; i < s->cap; i++) {
            sup_thread *o = &s->threads[i];
            if (o->tid > 0 && o->tgid == tgid && o->tid != tid) remove_thread(s, o);
        }
        t = find_thread(s, tid);
        if (t != NULL) {
            free(t->fault);
            t->fault = NULL;
            t->fatal_seq = 0;
            t->fatal_sig = 0;
        }
        resume(tid, 0);
        return;
    }
    case PTRACE_EVENT_EXIT: {
        sup_process *p = find_process(s, t->tgid);
        int code = 0;
        if (ptrace(PTRACE_GETEVENTMSG, tid, NULL, &msg) == 0) code = (int)msg;
        if (p != NULL && p->dying && !p->reported) {
            t->held = 1;
            return;
        }
        if (p != NULL && !p->dying && WIFSIGNALED(code) && fatal_class(WTERMSIG(code))) {
            p->dying = 1;
            p->death_signal = WTERMSIG(code);
            p->deadline_ns = now_ns() + s->exit_stop_timeout_ns;
            t->held = 1;
            return;
        }
        resume(tid, 0);
        return;
    }
    case PTRACE_EVENT_STOP:
        if (t->detach) {
            ptrace(PTRACE_DETACH, tid, NULL, NULL);
            remove_thread(s, t);
            return;
        }
        if (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU) {
            /* group-stop (Ctrl-Z, SIGSTOP): stay stopped, but keep reporting */
            ptrace(PTRACE_LISTEN, tid, NULL, NULL);
            return;
        }
        resume(tid, 0);
        return;
    default:
        break;
    }
    /* a signal-delivery-stop: record fatal-class ones, deliver every signal */
    s->signal_stops++;
    if (t->detach) {
        ptrace(PTRACE_DETACH, tid, NULL, (void *)(uintptr_t)sig);
        remove_thread(s, t);
        return;
    }
    if (fatal_class(sig)) record_fault(s, t, sig);
    resume(tid, sig);
}

static void handle_exit(mdl_supervisor *s, pid_t tid, int status) {
    sup_thread *t = find_thread(s, tid);
    pid_t tgid = t != NULL ? t->tgid : 0;
    if (tid == s->child) {
        s->child_done = 1;
        s->child_status = status;
    }
    if (t != NULL) remove_thread(s, t);
    if (tgid == tid && tgid != 0) {
        /* the leader is reported last: the process is gone */
        remove_process(s, tgid);
    }
}

static int forwardable(int sig) {
    size_t i;
    for (i = 0; i < NFORWARDED; i++)
        if (forwarded[i] == sig) return 1;
    return 0;
}

int mdl_sup_next(mdl_supervisor *s, mdl_sup_event *ev, mdl_error *err) {
    memset(ev, 0, sizeof *ev);
    for (;;) {
        size_t i;
        uint64_t now = now_ns(), wake = now + 1000000000ull;
        /* a dying process whose threads are all held (or whose time is up) */
        for (i = 0; i < s->nprocs; i++) {
            sup_process *p = &s->procs[i];
            uint32_t held, missing;
            if (!p->dying || p->reported) continue;
            if (all_held(s, p->tgid, &held, &missing) || now >= p->deadline_ns) {
                fill_crash(s, p, ev);
                return MDL_OK;
            }
            if (p->deadline_ns < wake) wake = p->deadline_ns;
        }
        if (s->child_done && s->count == 0) {
            ev->kind = MDL_SUP_DONE;
            ev->status = s->child_status;
            restore_signals(s);
            return MDL_OK;
        }
        {
            int status = 0;
            pid_t r = waitpid(-1, &status, __WALL | WNOHANG);
            if (r > 0) {
                if (WIFSTOPPED(status))
                    handle_stop(s, r, status);
                else if (WIFEXITED(status) || WIFSIGNALED(status))
                    handle_exit(s, r, status);
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == ECHILD) {
                /* no tracee and no child left (tracees we lost track of) */
                if (!s->child_done) {
                    s->child_done = 1;
                    s->child_status = 0;
                }
                ev->kind = MDL_SUP_DONE;
                ev->status = s->child_status;
                restore_signals(s);
                return MDL_OK;
            }
            if (r < 0) return sup_error(err, MDL_ERR_SYS, errno, "waitpid: %s", strerror(errno));
        }
        {
            siginfo_t info;
            struct timespec ts;
            uint64_t left = wake > now ? wake - now : 0;
            int sig;
            ts.tv_sec = (time_t)(left / 1000000000ull);
            ts.tv_nsec = (long)(left % 1000000000ull);
            sig = sigtimedwait(&s->blocked, &info, &ts);
            if (sig > 0 && forwardable(sig) && !s->child_done) kill(s->child, sig);
        }
    }
}

void mdl_sup_release(mdl_supervisor *s, uint32_t pid) {
    size_t i;
    for (i = 0; i < s->cap; i++) {
        sup_thread *t = &s->threads[i];
        if (t->tid > 0 && t->tgid == (pid_t)pid && t->held) {
            t->held = 0;
            resume(t->tid, 0);
        }
    }
}

void mdl_sup_counts(const mdl_supervisor *s, uint64_t *signal_stops, uint64_t *threads, uint64_t *processes) {
    *signal_stops = s->signal_stops;
    *threads = s->threads_seen;
    *processes = s->processes_seen;
}

void mdl_sup_free(mdl_supervisor *s) {
    size_t i;
    if (s == NULL) return;
    restore_signals(s);
    for (i = 0; i < s->cap; i++)
        if (s->threads[i].tid > 0) free(s->threads[i].fault);
    for (i = 0; i < s->nprocs; i++) free(s->procs[i].orphan);
    free(s->threads);
    free(s->procs);
    free(s);
}

#endif
