/* mdstream's in-process crash handler (see mdstream/crash.h).
 *
 * What runs in the crashing process is in this file and is async-signal-safe:
 * raw system calls, memcpy/memset into static memory, atomics -- no malloc,
 * no lock, no stdio, no Python (except CPython's _Py_DumpTracebackThreads,
 * which is what faulthandler itself calls from its signal handler: it writes
 * with write(2), allocates nothing and takes no lock).  Everything that may
 * allocate (installing, the alternate stacks, fork registration) runs in
 * normal context. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/crash.h"

#include <stdio.h>
#include <string.h>

#if defined(__linux__) && defined(__x86_64__)
#define MDS_CRASH_SUPPORTED 1
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#else
#define MDS_CRASH_SUPPORTED 0
#endif

#if defined(_WIN32)
/* Windows: the handler is mdstream/src/crash_win32.c, part of the C core
 * (native agents get it with mdstream.get_source_files()). */
#elif !MDS_CRASH_SUPPORTED

int mds_crash_install(const mds_crash_config *config, char *error, size_t error_size) {
    (void)config;
    if (error && error_size) snprintf(error, error_size, "the crash handler needs Linux on x86-64");
    return MDS_CRASH_ERR_UNSUPPORTED;
}
int mds_crash_uninstall(void) { return 0; }
int mds_crash_is_installed(void) { return 0; }
void mds_crash_set_connection(int sock, int memfd) {
    (void)sock;
    (void)memfd;
}
int mds_crash_altstack_enter(void **stack, size_t *size) {
    *stack = NULL;
    *size = 0;
    return MDS_CRASH_ERR_UNSUPPORTED;
}
void mds_crash_altstack_leave(void *stack, size_t size) {
    (void)stack;
    (void)size;
}
int mds_crash_altstack_all_threads(uint32_t timeout_ms, uint32_t *covered, uint32_t *total) {
    (void)timeout_ms;
    *covered = *total = 0;
    return MDS_CRASH_ERR_UNSUPPORTED;
}
uint32_t mds_crash_altstack_release_all(uint32_t timeout_ms) {
    (void)timeout_ms;
    return 0;
}
uint32_t mds_crash_altstack_count(void) { return 0; }

#else

_Static_assert(sizeof(mds_crash_message) == 872, "mds_crash_message layout");
_Static_assert(sizeof(mds_crash_hello) == 24, "mds_crash_hello layout");
_Static_assert(sizeof(mds_crash_ack) == 272, "mds_crash_ack layout");
_Static_assert(sizeof(((ucontext_t *)0)->uc_mcontext.gregs) == 23 * 8, "x86-64 gregs");

#define NFATAL 7
static const int fatal_signals[NFATAL] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS};
static const char *const fatal_names[NFATAL] = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGTRAP",
                                                "SIGSYS"};

typedef const char *(*traceback_dumper)(int fd, void *interp, void *tstate);

enum { PHASE_IDLE = 0, PHASE_TRACEBACKS = 1, PHASE_NOTIFY = 2, PHASE_DONE = 3 };

/* ---- state: written in normal context, read by the handler --------------- */

static struct sigaction previous[NFATAL];
static int installed;                 /* atomic */
static int g_sock = -1;
static int g_memfd = -1;
static pid_t g_pid;                   /* the process g_sock is registered for */
static uint32_t g_watcher_pid;
static uint32_t g_peer_pid;
static uint64_t g_timeout_ns, g_hard_ns;
static struct sockaddr_un g_addr;
static socklen_t g_addr_len;
static uint8_t g_annotations[MDS_CRASH_MAX_ANNOTATIONS];
static uint32_t g_annotations_size;
static int g_python_tracebacks, g_quiet;
static traceback_dumper g_dump;

/* ---- state of a crash in progress (only the owning thread writes) -------- */

static pid_t g_owner;                 /* atomic: tid handling the crash */
static int g_phase;                   /* atomic */
static mds_crash_message g_msg;
static mds_crash_ack g_ack;
static siginfo_t *g_first_info;
static void *g_first_uc;
static int g_timer = -1;
static pid_t g_timer_pid;

/* ---- async-signal-safe helpers ------------------------------------------- */

static pid_t raw_gettid(void) { return (pid_t)syscall(SYS_gettid); }
static pid_t raw_getpid(void) { return (pid_t)syscall(SYS_getpid); }

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct line {
    char buf[512];
    size_t n;
} line;

static void put_str(line *l, const char *s) {
    while (*s && l->n < sizeof l->buf - 1) l->buf[l->n++] = *s++;
}

static void put_u64(line *l, uint64_t v) {
    char digits[24];
    int k = 0;
    do {
        digits[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && k < 24);
    while (k && l->n < sizeof l->buf - 1) l->buf[l->n++] = digits[--k];
}

static void put_bounded(line *l, const char *s, size_t max) {
    size_t i;
    for (i = 0; i < max && s[i] && l->n < sizeof l->buf - 1; i++)
        l->buf[l->n++] = (s[i] == '\n' || s[i] == '\r') ? ' ' : s[i];
}

static void say(line *l) {
    size_t off = 0;
    if (l->n < sizeof l->buf) l->buf[l->n++] = '\n';
    while (off < l->n) {
        ssize_t w = write(2, l->buf + off, l->n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
}

static const char *signal_text(int sig) {
    int i;
    for (i = 0; i < NFATAL; i++)
        if (fatal_signals[i] == sig) return fatal_names[i];
    return "a signal";
}

static int fatal_index(int sig) {
    int i;
    for (i = 0; i < NFATAL; i++)
        if (fatal_signals[i] == sig) return i;
    return -1;
}

static void handler(int sig, siginfo_t *info, void *ucv);

/* Puts every handler back as it was before mdstream (where ours is still in place). */
static int restore_previous(void) {
    int i, restored = 0;
    for (i = 0; i < NFATAL; i++) {
        struct sigaction cur;
        if (sigaction(fatal_signals[i], NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
            cur.sa_sigaction == handler) {
            sigaction(fatal_signals[i], &previous[i], NULL);
            restored++;
        }
    }
    return restored;
}

/* Let the signal take its course, as if mdstream had not been there. */
static void chain(int sig, siginfo_t *info, void *uc) {
    int i = fatal_index(sig);
    struct sigaction *prev = i >= 0 ? &previous[i] : NULL;
    struct sigaction dfl;
    if (prev != NULL && (prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction != NULL &&
        prev->sa_sigaction != handler) {
        prev->sa_sigaction(sig, info, uc);
        return;
    }
    if (prev != NULL && !(prev->sa_flags & SA_SIGINFO) && prev->sa_handler != SIG_DFL &&
        prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    if (prev != NULL && !(prev->sa_flags & SA_SIGINFO) && prev->sa_handler == SIG_IGN &&
        (info == NULL || info->si_code <= 0)) {
        /* ignored before mdstream (restore_previous put SIG_IGN back): a
         * signal a process sent is ignored, as it would have been (abort()
         * then restores the default and raises again) */
        return;
    }
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    /* a fault the kernel raised re-executes the faulting instruction on
     * return and faults again, now with the default action (the core dump
     * then shows the fault); anything else is sent again */
    if ((sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL) && info != NULL && info->si_code > 0)
        return;
    syscall(SYS_tgkill, raw_getpid(), raw_gettid(), sig);
}

static void finish(int sig, siginfo_t *info, void *uc) {
    __atomic_store_n(&installed, 0, __ATOMIC_RELEASE);
    restore_previous();
    chain(sig, info, uc);
}

static void arm_kill_timer(uint64_t ns) {
    struct itimerspec its;
    pid_t me = raw_getpid();
    if (g_timer < 0 || g_timer_pid != me) {
        struct sigevent sev;
        int id = -1;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = SIGKILL;
        if (syscall(SYS_timer_create, CLOCK_MONOTONIC, &sev, &id) != 0) return;
        g_timer = id;
        g_timer_pid = me;
    }
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(ns / 1000000000ull);
    its.it_value.tv_nsec = (long)(ns % 1000000000ull);
    syscall(SYS_timer_settime, g_timer, 0, &its, NULL);
}

static void disarm_kill_timer(void) {
    struct itimerspec its;
    if (g_timer < 0 || g_timer_pid != raw_getpid()) return;
    memset(&its, 0, sizeof its);
    syscall(SYS_timer_settime, g_timer, 0, &its, NULL);
}

static int send_all(int sock, const struct msghdr *msg) {
    for (;;) {
        ssize_t n = sendmsg(sock, msg, MSG_NOSIGNAL);
        if (n >= 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* A connection to the watcher (the one whose pid we know), made in the
 * handler of a process that was forked without registering. */
static int connect_watcher(void) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    int s;
    if (g_addr_len == 0) return -1;
    s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    while (connect(s, (const struct sockaddr *)&g_addr, g_addr_len) != 0) {
        if (errno == EINTR) continue;
        close(s);
        return -1;
    }
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (g_peer_pid != 0 && (uint32_t)cred.pid != g_peer_pid) || (cred.uid != geteuid() && cred.uid != 0)) {
        close(s); /* someone else took the address */
        return -1;
    }
    return s;
}

static int send_hello(int sock, int memfd) {
    mds_crash_hello hello;
    struct iovec iov[2];
    struct msghdr msg;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&hello, 0, sizeof hello);
    hello.magic = MDS_CRASH_HELLO_MAGIC;
    hello.version = MDS_CRASH_VERSION;
    hello.pid = (uint32_t)raw_getpid();
    hello.flags = memfd >= 0 ? MDS_CRASH_HELLO_TRACEBACKS : 0;
    hello.annotations_size = g_annotations_size;
    iov[0].iov_base = &hello;
    iov[0].iov_len = sizeof hello;
    iov[1].iov_base = g_annotations;
    iov[1].iov_len = g_annotations_size;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = g_annotations_size ? 2 : 1;
    if (memfd >= 0) {
        struct cmsghdr *c;
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &memfd, sizeof(int));
    }
    return send_all(sock, &msg);
}

static void capture(int sig, siginfo_t *info, void *ucv, pid_t tid) {
    ucontext_t *uc = (ucontext_t *)ucv;
    memset(&g_msg, 0, sizeof g_msg);
    g_msg.magic = MDS_CRASH_REPORT_MAGIC;
    g_msg.version = MDS_CRASH_VERSION;
    g_msg.pid = (uint32_t)raw_getpid();
    g_msg.tid = (uint32_t)tid;
    g_msg.signo = sig;
    if (info != NULL) {
        g_msg.code = info->si_code;
        g_msg.address = (uint64_t)(uintptr_t)info->si_addr;
        memcpy(g_msg.siginfo, info, sizeof g_msg.siginfo < sizeof *info ? sizeof g_msg.siginfo : sizeof *info);
    }
    if (uc != NULL) {
        memcpy(g_msg.gregs, uc->uc_mcontext.gregs, sizeof g_msg.gregs);
        if (uc->uc_mcontext.fpregs != NULL) {
            memcpy(g_msg.fpregs, uc->uc_mcontext.fpregs, sizeof g_msg.fpregs);
            g_msg.flags |= MDS_CRASH_FPREGS;
        }
    }
    g_first_info = info;
    g_first_uc = ucv;
}

/* A process forked without registering (a fork() from C): its inherited
 * connection belongs to the parent; connect and register now. */
static void register_late(void) {
    if (g_sock >= 0) close(g_sock);
    if (g_memfd >= 0) close(g_memfd);
    g_sock = connect_watcher();
    g_memfd = g_python_tracebacks ? (int)syscall(SYS_memfd_create, "mdstream-tracebacks", MFD_CLOEXEC) : -1;
    if (g_sock >= 0 && send_hello(g_sock, g_memfd) != 0) {
        close(g_sock);
        g_sock = -1;
    }
    g_pid = raw_getpid();
    g_msg.flags |= MDS_CRASH_LATE_HELLO;
}

static void dump_tracebacks(void) {
    off_t end;
    if (!g_python_tracebacks || g_memfd < 0) return;
    if (g_dump == NULL) {
        g_msg.traceback_state = MDS_TB_UNAVAILABLE;
        return;
    }
    lseek(g_memfd, 0, SEEK_SET);
    if (ftruncate(g_memfd, 0) != 0) {
        /* the old text stays beyond what is written; traceback_bytes bounds it */
    }
    __atomic_store_n(&g_phase, PHASE_TRACEBACKS, __ATOMIC_SEQ_CST);
    g_dump(g_memfd, NULL, NULL);
    __atomic_store_n(&g_phase, PHASE_NOTIFY, __ATOMIC_SEQ_CST);
    end = lseek(g_memfd, 0, SEEK_CUR);
    g_msg.traceback_bytes = end > 0 ? (uint32_t)end : 0;
    g_msg.traceback_state = MDS_TB_COMPLETE;
}

static void notify_and_wait(void) {
    struct iovec iov;
    struct msghdr msg;
    uint64_t deadline;
    line l;
    l.n = 0;
    if (g_sock < 0) {
        put_str(&l, "mdstream: cannot reach the crash watcher");
        if (g_watcher_pid) {
            put_str(&l, " (pid ");
            put_u64(&l, g_watcher_pid);
            put_str(&l, ")");
        }
        put_str(&l, ": no crash report; the process dies as it would have");
        say(&l);
        return;
    }
    /* Yama: only the watcher may attach (it is not our ancestor) */
    prctl(PR_SET_PTRACER, (unsigned long)g_watcher_pid, 0, 0, 0);
    arm_kill_timer(g_hard_ns);
    iov.iov_base = &g_msg;
    iov.iov_len = sizeof g_msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    deadline = mono_ns() + g_timeout_ns;
    if (send_all(g_sock, &msg) != 0) {
        disarm_kill_timer();
        put_str(&l, "mdstream: the crash watcher (pid ");
        put_u64(&l, g_watcher_pid);
        put_str(&l, ") is gone: no crash report; the process dies as it would have");
        say(&l);
        return;
    }
    for (;;) {
        struct pollfd p;
        uint64_t now = mono_ns();
        int r, ms;
        if (now >= deadline) {
            disarm_kill_timer();
            put_str(&l, "mdstream: the crash watcher (pid ");
            put_u64(&l, g_watcher_pid);
            put_str(&l, ") did not answer within ");
            put_u64(&l, g_timeout_ns / 1000000000ull);
            put_str(&l, " s: no crash report; the process dies as it would have");
            say(&l);
            return;
        }
        ms = (int)((deadline - now + 999999ull) / 1000000ull);
        p.fd = g_sock;
        p.events = POLLIN;
        p.revents = 0;
        r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) break;
        if (r == 0) continue;
        if (p.revents & POLLIN) {
            ssize_t n = recv(g_sock, &g_ack, sizeof g_ack, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n == (ssize_t)sizeof g_ack && g_ack.magic == MDS_CRASH_ACK_MAGIC) {
                disarm_kill_timer();
                if (g_ack.status == 0) {
                    if (!g_quiet) {
                        put_str(&l, "mdstream: ");
                        put_str(&l, signal_text(g_msg.signo));
                        put_str(&l, " in thread ");
                        put_u64(&l, g_msg.tid);
                        put_str(&l, ": crash report ");
                        put_bounded(&l, g_ack.report_id, sizeof g_ack.report_id);
                        put_str(&l, " written");
                        say(&l);
                    }
                } else {
                    put_str(&l, "mdstream: the crash watcher could not write a report: ");
                    put_bounded(&l, g_ack.reason, sizeof g_ack.reason);
                    say(&l);
                }
                return;
            }
            if (n > 0) continue; /* not an answer: ignore */
        }
        break; /* closed, reset or error: the watcher is gone */
    }
    disarm_kill_timer();
    put_str(&l, "mdstream: the crash watcher (pid ");
    put_u64(&l, g_watcher_pid);
    put_str(&l, ") went away during the dump: no crash report; the process dies as it would have");
    say(&l);
}

/* Another thread is reporting a crash: wait for the process to die. */
static void wait_for_the_end(void) {
    uint64_t until = mono_ns() + g_hard_ns;
    while (mono_ns() < until) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}

static void handler(int sig, siginfo_t *info, void *ucv) {
    int saved_errno = errno;
    pid_t tid = raw_gettid();
    pid_t expected = 0;
    if (!__atomic_load_n(&installed, __ATOMIC_ACQUIRE)) {
        chain(sig, info, ucv); /* uninstalled, and someone still chains to us */
        errno = saved_errno;
        return;
    }
    if (info != NULL && info->si_code <= 0 && sig != SIGABRT) {
        /* a signal sent by a process that the program ignored before
         * mdstream: it would not have died of it, so it is no crash (SIGABRT
         * is not skipped: abort() kills even when SIGABRT is ignored) */
        int i = fatal_index(sig);
        if (i >= 0 && !(previous[i].sa_flags & SA_SIGINFO) && previous[i].sa_handler == SIG_IGN) {
            errno = saved_errno;
            return;
        }
    }
    if (__atomic_compare_exchange_n(&g_owner, &expected, tid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        capture(sig, info, ucv, tid);
        if (raw_getpid() != g_pid) register_late();
        dump_tracebacks();
        __atomic_store_n(&g_phase, PHASE_NOTIFY, __ATOMIC_SEQ_CST);
        notify_and_wait();
        __atomic_store_n(&g_phase, PHASE_DONE, __ATOMIC_SEQ_CST);
        finish(sig, info, ucv);
    } else if (expected == tid) {
        /* a fault during our own work: the traceback dumper met a corrupted
         * interpreter.  Report what we have, then die of the first signal. */
        if (__atomic_load_n(&g_phase, __ATOMIC_SEQ_CST) == PHASE_TRACEBACKS) {
            off_t end = g_memfd >= 0 ? lseek(g_memfd, 0, SEEK_CUR) : 0;
            g_msg.traceback_state = MDS_TB_FAILED;
            g_msg.traceback_bytes = end > 0 ? (uint32_t)end : 0;
            __atomic_store_n(&g_phase, PHASE_NOTIFY, __ATOMIC_SEQ_CST);
            notify_and_wait();
            __atomic_store_n(&g_phase, PHASE_DONE, __ATOMIC_SEQ_CST);
            finish(g_msg.signo, g_first_info, g_first_uc);
        }
        finish(sig, info, ucv);
    } else {
        wait_for_the_end();
        finish(sig, info, ucv);
    }
    errno = saved_errno;
}

/* ---- normal context ---------------------------------------------------------- */

int mds_crash_is_installed(void) { return __atomic_load_n(&installed, __ATOMIC_ACQUIRE); }

int mds_crash_install(const mds_crash_config *c, char *error, size_t error_size) {
    struct sigaction sa;
    int i;
    if (__atomic_load_n(&installed, __ATOMIC_ACQUIRE)) {
        if (error && error_size) snprintf(error, error_size, "the crash handler is already installed");
        return MDS_CRASH_ERR_ARG;
    }
    if (c == NULL || c->address_len > sizeof g_addr.sun_path || c->annotations_size > MDS_CRASH_MAX_ANNOTATIONS ||
        (c->annotations_size && c->annotations == NULL) || c->timeout_ns == 0) {
        if (error && error_size) snprintf(error, error_size, "bad crash handler configuration");
        return MDS_CRASH_ERR_ARG;
    }
    if (g_sock >= 0) close(g_sock);
    if (g_memfd >= 0) close(g_memfd);
    g_sock = c->sock;
    g_memfd = c->memfd;
    g_pid = getpid();
    g_watcher_pid = c->watcher_pid;
    g_peer_pid = c->peer_pid;
    g_timeout_ns = c->timeout_ns;
    g_hard_ns = c->hard_timeout_ns > c->timeout_ns ? c->hard_timeout_ns : c->timeout_ns + 5000000000ull;
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sun_family = AF_UNIX;
    memcpy(g_addr.sun_path, c->address, c->address_len);
    g_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + c->address_len);
    if (c->address_len == 0) g_addr_len = 0;
    memcpy(g_annotations, c->annotations, c->annotations_size);
    g_annotations_size = c->annotations_size;
    g_python_tracebacks = c->python_tracebacks;
    g_quiet = c->quiet;
    g_dump = NULL;
    if (c->python_tracebacks) {
        /* the running interpreter's: exported by the python executable or libpython */
        void *sym = dlsym(RTLD_DEFAULT, "_Py_DumpTracebackThreads");
        memcpy(&g_dump, &sym, sizeof g_dump);
    }
    g_owner = 0;
    g_phase = PHASE_IDLE;
    if (g_watcher_pid) prctl(PR_SET_PTRACER, (unsigned long)g_watcher_pid, 0, 0, 0);

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    /* asynchronous signals wait while the handler works; a fault inside it
     * (the traceback dumper) comes straight back (SA_NODEFER) */
    sigfillset(&sa.sa_mask);
    for (i = 0; i < NFATAL; i++) sigdelset(&sa.sa_mask, fatal_signals[i]);
    for (i = 0; i < NFATAL; i++) {
        if (sigaction(fatal_signals[i], &sa, &previous[i]) != 0) {
            int e = errno;
            while (--i >= 0) sigaction(fatal_signals[i], &previous[i], NULL);
            if (error && error_size) snprintf(error, error_size, "sigaction: %s", strerror(e));
            return MDS_CRASH_ERR_SYS;
        }
        if ((previous[i].sa_flags & SA_SIGINFO) && previous[i].sa_sigaction == handler) {
            /* ours already (installed twice by hand): never chain to ourselves */
            memset(&previous[i], 0, sizeof previous[i]);
            previous[i].sa_handler = SIG_DFL;
        }
    }
    __atomic_store_n(&installed, 1, __ATOMIC_RELEASE);
    return MDS_CRASH_OK;
}

int mds_crash_uninstall(void) {
    int restored;
    if (!__atomic_load_n(&installed, __ATOMIC_ACQUIRE)) return 0;
    __atomic_store_n(&installed, 0, __ATOMIC_RELEASE);
    restored = restore_previous();
    if (g_sock >= 0) close(g_sock);
    if (g_memfd >= 0) close(g_memfd);
    g_sock = g_memfd = -1;
    if (g_timer >= 0 && g_timer_pid == getpid()) syscall(SYS_timer_delete, g_timer);
    g_timer = -1;
    return restored;
}

void mds_crash_set_connection(int sock, int memfd) {
    if (g_sock >= 0 && g_sock != sock) close(g_sock);
    if (g_memfd >= 0 && g_memfd != memfd) close(g_memfd);
    g_sock = sock;
    g_memfd = memfd;
    g_pid = getpid();
    g_owner = 0;
    g_phase = PHASE_IDLE;
    g_timer = -1; /* timers are not inherited */
    if (g_watcher_pid) prctl(PR_SET_PTRACER, (unsigned long)g_watcher_pid, 0, 0, 0);
}

/* ---- alternate signal stacks ---------------------------------------------------- */

#define GUARD 4096u

static void *map_stack(size_t size) {
    uint8_t *base = (uint8_t *)mmap(NULL, size + GUARD, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    mprotect(base, GUARD, PROT_NONE); /* an overflow of the handler hits the guard */
    return base;
}

static int use_stack(void *base, size_t size) {
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = (uint8_t *)base + GUARD;
    ss.ss_size = size;
    return sigaltstack(&ss, NULL);
}

static int has_altstack(void) {
    stack_t old;
    return sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE);
}

int mds_crash_altstack_enter(void **stack, size_t *size) {
    void *base;
    *stack = NULL;
    *size = 0;
    if (has_altstack()) return MDS_CRASH_OK;
    base = map_stack(MDS_CRASH_ALTSTACK_SIZE);
    if (base == NULL) return MDS_CRASH_ERR_SYS;
    if (use_stack(base, MDS_CRASH_ALTSTACK_SIZE) != 0) {
        munmap(base, MDS_CRASH_ALTSTACK_SIZE + GUARD);
        return MDS_CRASH_ERR_SYS;
    }
    *stack = base;
    *size = MDS_CRASH_ALTSTACK_SIZE;
    return MDS_CRASH_OK;
}

void mds_crash_altstack_leave(void *stack, size_t size) {
    stack_t cur;
    if (stack == NULL) return;
    if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == (uint8_t *)stack + GUARD && !(cur.ss_flags & SS_ONSTACK)) {
        stack_t off;
        memset(&off, 0, sizeof off);
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, NULL);
        munmap(stack, size + GUARD);
    }
    /* otherwise another stack replaced ours: leave the mapping (it may be in use) */
}

/* Stacks handed to existing threads through a real-time signal. */
typedef struct pooled_stack {
    void *base;
    pid_t tid;                  /* the thread that took it; 0: unused */
    int released;               /* the thread gave it up (uninstall) */
} pooled_stack;

static pooled_stack *pool;
static size_t pool_size;        /* mapped stacks in pool */
static size_t pool_next;        /* atomic: next stack to hand out */
static uint32_t pool_acks;      /* atomic: threads that ran the handler */
static uint32_t pool_covered;   /* atomic */
static int pool_mode;           /* 1: hand out, 2: give back */

/* Runs on each thread.  The alternate stack is changed through the signal
 * frame's uc_stack: rt_sigreturn restores the thread's alternate stack from
 * it, so a sigaltstack() call made inside the handler would be undone. */
static void stack_handler(int sig, siginfo_t *info, void *ucv) {
    ucontext_t *uc = (ucontext_t *)ucv;
    int saved_errno = errno;
    (void)sig;
    (void)info;
    if (pool_mode == 1) {
        if (!(uc->uc_stack.ss_flags & SS_DISABLE)) {
            __atomic_add_fetch(&pool_covered, 1, __ATOMIC_ACQ_REL); /* it has one already */
        } else {
            size_t k = __atomic_fetch_add(&pool_next, 1, __ATOMIC_ACQ_REL);
            if (k < pool_size) {
                pool[k].tid = raw_gettid();
                uc->uc_stack.ss_sp = (uint8_t *)pool[k].base + GUARD;
                uc->uc_stack.ss_size = MDS_CRASH_ALTSTACK_SIZE;
                uc->uc_stack.ss_flags = 0;
                __atomic_add_fetch(&pool_covered, 1, __ATOMIC_ACQ_REL);
            }
        }
    } else if (pool_mode == 2) {
        size_t k;
        if (!(uc->uc_stack.ss_flags & SS_DISABLE)) {
            for (k = 0; k < pool_size; k++) {
                if (pool[k].tid != 0 && uc->uc_stack.ss_sp == (uint8_t *)pool[k].base + GUARD) {
                    uc->uc_stack.ss_sp = NULL;
                    uc->uc_stack.ss_size = 0;
                    uc->uc_stack.ss_flags = SS_DISABLE;
                    __atomic_store_n(&pool[k].released, 1, __ATOMIC_RELEASE);
                    break;
                }
            }
        }
    }
    __atomic_add_fetch(&pool_acks, 1, __ATOMIC_ACQ_REL);
    errno = saved_errno;
}

static size_t list_tasks(pid_t *out, size_t max) {
    DIR *dir = opendir("/proc/self/task");
    struct dirent *ent;
    size_t n = 0;
    if (dir == NULL) return 0;
    while ((ent = readdir(dir)) != NULL) {
        char *end;
        long tid = strtol(ent->d_name, &end, 10);
        if (*end == 0 && tid > 0) {
            if (n < max) out[n] = (pid_t)tid;
            n++;
        }
    }
    closedir(dir);
    return n;
}

/* A real-time signal nobody handles, from the top (0 if none). */
static int free_rt_signal(struct sigaction *old) {
    int sig;
    for (sig = SIGRTMAX; sig >= SIGRTMIN; sig--) {
        if (sigaction(sig, NULL, old) == 0 && !(old->sa_flags & SA_SIGINFO) && old->sa_handler == SIG_DFL)
            return sig;
    }
    return 0;
}

/* Sends sig to every thread but this one; waits for their acks. */
static uint32_t broadcast(int sig, pid_t *tids, size_t n, uint32_t timeout_ms) {
    pid_t me = raw_gettid(), pid = getpid();
    uint32_t sent = 0;
    uint64_t deadline;
    size_t i;
    pool_acks = 0;
    for (i = 0; i < n; i++) {
        if (tids[i] == me) continue;
        if (syscall(SYS_tgkill, pid, tids[i], sig) == 0) sent++;
    }
    deadline = mono_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (__atomic_load_n(&pool_acks, __ATOMIC_ACQUIRE) < sent && mono_ns() < deadline) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    return sent;
}

/* Runs fn on every other thread with a temporary real-time signal; the
 * signal's pending instances are discarded (SIG_IGN) before its disposition
 * is restored, so a thread that blocks it never gets it later with the
 * default action (which would kill the process). */
static int on_every_thread(int mode, uint32_t timeout_ms, pid_t *tids, size_t n) {
    struct sigaction sa, old, ign;
    int sig = free_rt_signal(&old);
    if (sig == 0) return -1;
    pool_mode = mode;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = stack_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    broadcast(sig, tids, n, timeout_ms);
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(sig, &ign, NULL);
    sigaction(sig, &old, NULL);
    pool_mode = 0;
    return 0;
}

int mds_crash_altstack_all_threads(uint32_t timeout_ms, uint32_t *covered, uint32_t *total) {
    pid_t tids[4096];
    size_t n = list_tasks(tids, sizeof tids / sizeof tids[0]), i, unused;
    pooled_stack *bigger;
    void *mine;
    size_t mine_size;
    *covered = *total = 0;
    if (n > sizeof tids / sizeof tids[0]) n = sizeof tids / sizeof tids[0];
    *total = (uint32_t)n;
    bigger = (pooled_stack *)realloc(pool, (pool_size + n + 1) * sizeof *pool);
    if (bigger == NULL) return MDS_CRASH_ERR_SYS;
    pool = bigger;
    /* this thread first, directly */
    if (mds_crash_altstack_enter(&mine, &mine_size) == MDS_CRASH_OK) {
        (*covered)++;
        if (mine != NULL) {
            pool[pool_size].base = mine;
            pool[pool_size].tid = raw_gettid();
            pool[pool_size].released = 0;
            pool_size++;
        }
    }
    /* a stack for every other thread, mapped before the signal goes out */
    {
        size_t first = pool_size;
        for (i = 0; i < n; i++) {
            void *base = map_stack(MDS_CRASH_ALTSTACK_SIZE);
            if (base == NULL) break;
            pool[pool_size].base = base;
            pool[pool_size].tid = 0;
            pool[pool_size].released = 0;
            pool_size++;
        }
        pool_next = first;
        pool_covered = 0;
        if (on_every_thread(1, timeout_ms, tids, n) != 0) {
            for (i = first; i < pool_size; i++) munmap(pool[i].base, MDS_CRASH_ALTSTACK_SIZE + GUARD);
            pool_size = first;
            return MDS_CRASH_ERR_SYS;
        }
        *covered += __atomic_load_n(&pool_covered, __ATOMIC_ACQUIRE);
        if (*covered > *total) *covered = *total;
        /* unmap what no thread took (compacting the pool) */
        unused = first;
        for (i = first; i < pool_size; i++) {
            if (pool[i].tid != 0)
                pool[unused++] = pool[i];
            else
                munmap(pool[i].base, MDS_CRASH_ALTSTACK_SIZE + GUARD);
        }
        pool_size = unused;
    }
    return MDS_CRASH_OK;
}

uint32_t mds_crash_altstack_release_all(uint32_t timeout_ms) {
    pid_t tids[4096];
    size_t n, i, kept = 0;
    if (pool_size == 0) return 0;
    n = list_tasks(tids, sizeof tids / sizeof tids[0]);
    if (n > sizeof tids / sizeof tids[0]) n = sizeof tids / sizeof tids[0];
    on_every_thread(2, timeout_ms, tids, n);
    for (i = 0; i < pool_size; i++) {
        int alive = 0;
        size_t k;
        if (pool[i].tid == raw_gettid()) {
            /* this thread's own (it was not signalled) */
            stack_t cur;
            if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == (uint8_t *)pool[i].base + GUARD &&
                !(cur.ss_flags & SS_ONSTACK)) {
                stack_t off;
                memset(&off, 0, sizeof off);
                off.ss_flags = SS_DISABLE;
                if (sigaltstack(&off, NULL) == 0) pool[i].released = 1;
            } else if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp != (uint8_t *)pool[i].base + GUARD) {
                pool[i].released = 1; /* replaced by someone else's */
            }
        }
        for (k = 0; k < n; k++)
            if (tids[k] == pool[i].tid) alive = 1;
        if (__atomic_load_n(&pool[i].released, __ATOMIC_ACQUIRE) || !alive)
            munmap(pool[i].base, MDS_CRASH_ALTSTACK_SIZE + GUARD);
        else
            pool[kept++] = pool[i]; /* still in use by a thread that did not answer */
    }
    pool_size = kept;
    if (pool_size == 0) {
        free(pool);
        pool = NULL;
    }
    return (uint32_t)kept;
}

uint32_t mds_crash_altstack_count(void) { return (uint32_t)pool_size; }

#endif
