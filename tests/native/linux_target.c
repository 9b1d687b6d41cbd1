/* Test target for mdstream's Linux minidump writer.
 *
 *   linux_target [THREADS]
 *
 * Starts THREADS worker threads (default 4) named "worker-N", each parked in
 * park_leaf() <- park_middle() <- park_outer() <- worker_main() with a copy of
 * the marker on its stack; the main thread parks in main_park().  The parked
 * functions sleep with a raw `pause` system call so every thread's instruction
 * pointer is inside this program.  Once all threads are parked it prints one
 * line:  READY <pid> <marker address> <marker length>  and waits until killed.
 * With the argument "traced-child" it forks a child that asks to be traced by
 * the parent (PTRACE_TRACEME) and prints READY <child pid> ... for it. */
#define _GNU_SOURCE 1
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MARKER "MDSTREAM-LINUX-MARKER-5f3c9a17e2b04d68"

/* in .data: a full-memory dump holds it */
char global_marker[64] = MARKER;
static volatile int parked = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static inline void raw_pause(void) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_pause) : "rcx", "r11", "memory");
    (void)ret;
}

__attribute__((noinline)) void park_leaf(int index) {
    volatile char stack_marker[64];
    memcpy((char *)stack_marker, MARKER, sizeof MARKER);
    stack_marker[sizeof MARKER] = (char)index;
    pthread_mutex_lock(&lock);
    parked++;
    pthread_mutex_unlock(&lock);
    for (;;) raw_pause();
}

__attribute__((noinline)) void park_middle(int index) {
    park_leaf(index);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void park_outer(int index) {
    park_middle(index);
    __asm__ volatile("" ::: "memory");
}

static void *worker_main(void *arg) {
    int index = (int)(long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", index);
    pthread_setname_np(pthread_self(), name);
    park_outer(index);
    return NULL;
}

__attribute__((noinline)) void main_park(int threads) {
    volatile char stack_marker[64];
    memcpy((char *)stack_marker, MARKER, sizeof MARKER);
    while (1) {
        pthread_mutex_lock(&lock);
        int n = parked;
        pthread_mutex_unlock(&lock);
        if (n == threads) break;
        usleep(1000);
    }
    usleep(20000); /* let the last worker reach its pause */
    printf("READY %d 0x%lx %zu\n", (int)getpid(), (unsigned long)global_marker, strlen(MARKER));
    fflush(stdout);
    for (;;) raw_pause();
}

int main(int argc, char **argv) {
    int threads = 4, i;
    if (argc > 1 && strcmp(argv[1], "traced-child") == 0) {
        pid_t child = fork();
        if (child == 0) {
            ptrace(PTRACE_TRACEME, 0, NULL, NULL);
            for (;;) raw_pause();
        }
        usleep(50000);
        printf("READY %d 0x%lx %zu\n", (int)child, (unsigned long)global_marker, strlen(MARKER));
        fflush(stdout);
        for (;;) raw_pause();
    }
    if (argc > 1) threads = atoi(argv[1]);
    for (i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, (void *)(long)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    main_park(threads);
    return 0;
}
