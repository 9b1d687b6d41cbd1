/* Programs that crash, for mdstream's crash capture tests.
 *
 *   crashers MODE [ARG]
 *
 * Built twice: as a program (MODE from the command line) and as a shared
 * library whose crash_* functions a Python program calls through ctypes (the
 * in-process handler's tests).  Every function that faults is noinline with a
 * known name, so a symbolicated stack shows it.
 *
 *   segv          crash_outer -> crash_middle -> crash_leaf writes to address 0x10
 *   abort         abort_outer -> abort_leaf calls abort()
 *   overflow      unbounded recursion in overflow_recurse (each frame 4 KiB)
 *   thread-segv   three busy threads run; a fourth faults in thread_crash_leaf (address 0x18)
 *   handled       a SIGSEGV handler recovers with siglongjmp; prints "recovered", exits 0
 *   exit N        exits with status N
 *   raise N       raises signal N
 *   wait          prints "WAITING", then waits for a signal (SIGUSR1 exits 42, SIGTERM default)
 *   fork-segv     a forked child faults (crash_leaf); the parent exits with the child's status
 *   exec-segv     execs itself as "segv"
 *   threads N     starts and joins N threads one after another, prints the seconds it took on stderr, exits 0
 *   forks N       forks and reaps N children one after another, the same (overhead benchmarks)
 */
#define _GNU_SOURCE 1
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, visibility("default")))

static volatile int sink_value;

NOINLINE void crash_leaf(int value) {
    *(volatile int *)(uintptr_t)0x10 = value;
    __asm__ volatile("" ::: "memory");
}

NOINLINE void crash_middle(int value) {
    crash_leaf(value + 1);
    __asm__ volatile("" ::: "memory");
}

NOINLINE void crash_outer(void) {
    crash_middle(1);
    __asm__ volatile("" ::: "memory");
}

NOINLINE void abort_leaf(void) {
    abort();
}

NOINLINE void abort_outer(void) {
    abort_leaf();
    __asm__ volatile("" ::: "memory");
}

NOINLINE int overflow_recurse(int depth) {
    volatile char frame[4096];
    frame[0] = (char)depth;
    frame[sizeof frame - 1] = (char)depth;
    return overflow_recurse(depth + 1) + frame[depth % 4096];
}

NOINLINE void crash_overflow(void) {
    sink_value = overflow_recurse(0);
}

static volatile int stop_spinning;
static volatile unsigned long spins[3];

static void *spinner(void *arg) {
    int index = (int)(intptr_t)arg;
    while (!stop_spinning) spins[index]++;
    return NULL;
}

NOINLINE void thread_crash_leaf(void) {
    *(volatile int *)(uintptr_t)0x18 = 2;
    __asm__ volatile("" ::: "memory");
}

static void *crasher(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "crasher");
    while (spins[0] < 1000 || spins[1] < 1000 || spins[2] < 1000) usleep(100); /* the others run */
    thread_crash_leaf();
    return NULL;
}

NOINLINE void crash_in_thread(void) {
    pthread_t t[4];
    int i;
    for (i = 0; i < 3; i++) pthread_create(&t[i], NULL, spinner, (void *)(intptr_t)i);
    pthread_create(&t[3], NULL, crasher, NULL);
    for (i = 0; i < 4; i++) pthread_join(t[i], NULL);
}

static sigjmp_buf recover_point;

static void recover(int sig) {
    (void)sig;
    siglongjmp(recover_point, 1);
}

NOINLINE int handle_and_carry_on(void) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = recover;
    sigaction(SIGSEGV, &sa, &old);
    if (sigsetjmp(recover_point, 1) == 0) crash_leaf(7);
    sigaction(SIGSEGV, &old, NULL);
    return 1;
}

static void on_usr1(int sig) {
    (void)sig;
    _exit(42);
}

static void *empty_thread(void *arg) { return arg; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(mode, "segv") == 0) {
        crash_outer();
    } else if (strcmp(mode, "abort") == 0) {
        abort_outer();
    } else if (strcmp(mode, "overflow") == 0) {
        crash_overflow();
    } else if (strcmp(mode, "thread-segv") == 0) {
        crash_in_thread();
    } else if (strcmp(mode, "handled") == 0) {
        if (handle_and_carry_on()) printf("recovered\n");
        return 0;
    } else if (strcmp(mode, "exit") == 0 && argc > 2) {
        return atoi(argv[2]);
    } else if (strcmp(mode, "raise") == 0 && argc > 2) {
        raise(atoi(argv[2]));
        return 99;
    } else if (strcmp(mode, "wait") == 0) {
        signal(SIGUSR1, on_usr1);
        printf("WAITING %d\n", (int)getpid());
        for (;;) pause();
    } else if (strcmp(mode, "fork-segv") == 0) {
        int status = 0;
        pid_t child = fork();
        if (child == 0) crash_outer();
        waitpid(child, &status, 0);
        return WIFSIGNALED(status) ? 100 + WTERMSIG(status) : 1;
    } else if (strcmp(mode, "exec-segv") == 0) {
        execl("/proc/self/exe", argv[0], "segv", (char *)NULL);
        return 98;
    } else if (strcmp(mode, "threads") == 0 && argc > 2) {
        int i, n = atoi(argv[2]);
        double start = now_s();
        for (i = 0; i < n; i++) {
            pthread_t t;
            pthread_create(&t, NULL, empty_thread, NULL);
            pthread_join(t, NULL);
        }
        fprintf(stderr, "%.6f\n", now_s() - start);
        return 0;
    } else if (strcmp(mode, "forks") == 0 && argc > 2) {
        int i, n = atoi(argv[2]);
        double start = now_s();
        for (i = 0; i < n; i++) {
            pid_t child = fork();
            if (child == 0) _exit(0);
            waitpid(child, NULL, 0);
        }
        fprintf(stderr, "%.6f\n", now_s() - start);
        return 0;
    }
    fprintf(stderr, "usage: crashers MODE [ARG]\n");
    return 2;
}
