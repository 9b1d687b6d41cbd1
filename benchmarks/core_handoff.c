/* How fast can this machine hand bytes from one CPU to another?  No mdstream:
 * one thread copies 64 KiB chunks into a 4 MiB ring, a thread on another CPU
 * copies them out into a 256 MiB buffer.  A sink that reads every byte the
 * producer wrote (MemorySink, FileSink) cannot stream faster than this; the
 * ring alone (NullSink) never reads the payload, so it does not depend on it.
 *
 *   cc -O2 -pthread -o core_handoff benchmarks/core_handoff.c
 *   ./core_handoff [PRODUCER_CPU CONSUMER_CPU ROUNDS]      (default 0 1 8)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RING ((uint64_t)4 << 20)
#define CHUNK ((uint64_t)64 << 10)
#define SOURCE ((uint64_t)64 << 20)
#define DEST ((uint64_t)256 << 20)
#define TOTAL ((uint64_t)1 << 30)

static uint8_t *ring, *dest, *source;
static _Atomic uint64_t head, tail;
static int producer_cpu, consumer_cpu;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *produce(void *unused) {
    uint64_t h = 0;
    (void)unused;
    pin(producer_cpu);
    while (h < TOTAL) {
        while (h - atomic_load_explicit(&tail, memory_order_acquire) >= RING) {
        }
        memcpy(ring + h % RING, source + h % SOURCE, CHUNK);
        h += CHUNK;
        atomic_store_explicit(&head, h, memory_order_release);
    }
    return NULL;
}

static void *consume(void *unused) {
    uint64_t t = 0;
    (void)unused;
    pin(consumer_cpu);
    while (t < TOTAL) {
        while (atomic_load_explicit(&head, memory_order_acquire) == t) {
        }
        memcpy(dest + t % DEST, ring + t % RING, CHUNK);
        t += CHUNK;
        atomic_store_explicit(&tail, t, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = 8;
    producer_cpu = 0;
    consumer_cpu = 1;
    if (argc == 4) {
        producer_cpu = atoi(argv[1]);
        consumer_cpu = atoi(argv[2]);
        rounds = atoi(argv[3]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: core_handoff [PRODUCER_CPU CONSUMER_CPU ROUNDS]\n");
        return 2;
    }
    if (producer_cpu == consumer_cpu) {
        fprintf(stderr, "core_handoff: the two threads spin; give two different CPUs\n");
        return 2;
    }
    ring = aligned_alloc(4096, RING);
    dest = aligned_alloc((size_t)2 << 20, DEST);
    source = aligned_alloc((size_t)2 << 20, SOURCE);
    if (!ring || !dest || !source) {
        fprintf(stderr, "core_handoff: out of memory\n");
        return 1;
    }
    memset(ring, 0, RING);
    memset(dest, 0, DEST); /* faulted in: this measures the handoff, not page faults */
    memset(source, 3, SOURCE);
    for (int i = 0; i < rounds; i++) {
        pthread_t p, c;
        double t0;
        atomic_store(&head, 0);
        atomic_store(&tail, 0);
        t0 = now();
        if (pthread_create(&p, NULL, produce, NULL) || pthread_create(&c, NULL, consume, NULL)) {
            fprintf(stderr, "core_handoff: cannot start threads\n");
            return 1;
        }
        pthread_join(p, NULL);
        pthread_join(c, NULL);
        printf("%.1f GB/s\n", (double)TOTAL / (now() - t0) / 1e9);
        fflush(stdout);
    }
    free(ring);
    free(dest);
    free(source);
    return 0;
}
