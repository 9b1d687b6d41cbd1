/* Two-thread stress test of the ring's C producer and consumer.
 *
 * A producer thread writes a deterministic pseudo-random stream of writes
 * (sizes 0 .. several times max_payload, sequential and random offsets, a few
 * writes that must be refused) and a consumer thread drains the ring with the
 * same calls a native consumer uses (poll / span_next / advance / release /
 * wait_data), regenerating the stream independently and checking every record
 * in order: its offset, its length rules and every payload byte (memcmp
 * against the regenerated payload, plus an FNV-1a checksum of the whole stream
 * that both threads compute and compare at the end).
 *
 * The records are spread over several configurations: small and large
 * capacities (so the wrap and its padding happen constantly), coalescing and
 * lazy publication on and off, short deadlines with retries, a consumer that
 * holds batches before releasing them, and rings shared through one handle
 * (an anonymous mapping: what ThreadSanitizer can see) or two handles on a
 * named ring (create + attach: two mappings of one file, as across
 * processes).  After the stream, each configuration's ending is exercised too:
 * finish, consumer abort while the producer waits, producer abort, consumer
 * detach.
 *
 * Build (see Makefile targets `tsan` / `native-asan`):
 *   gcc -std=gnu11 -O1 -g -fsanitize=thread -pthread -Imdstream/include -Imdstream/src \
 *       tests/native/ring_stress.c mdstream/src/ring.c mdstream/src/span.c \
 *       mdstream/src/platform_posix.c -o build/native/ring_stress_tsan
 * Run:
 *   build/native/ring_stress_tsan --records 10000000
 * Exit status 0 and "ring_stress: OK" on success; 1 on a verification failure
 * (with the record and the reason), 3 when no progress is made for --stall-s
 * seconds (a hang: positions and flags are printed).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/ring.h"
#include "mdstream/atomics.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- deterministic generator -------------------------------------------- */

static inline uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t mix(uint64_t x) { return splitmix64(&x); }

static inline uint64_t below(uint64_t *state, uint64_t n) { return n ? splitmix64(state) % n : 0; }

/* Payload of a write: a function of its seed only, generated 8 bytes at a time. */
static void fill_payload(uint8_t *out, uint64_t length, uint64_t seed) {
    uint64_t words = length / 8, i, tail = length % 8, st = seed;
    for (i = 0; i < words; i++) {
        uint64_t w = splitmix64(&st);
        memcpy(out + 8 * i, &w, 8);
    }
    if (tail) {
        uint64_t w = splitmix64(&st);
        memcpy(out + 8 * words, &w, tail);
    }
}

static inline uint64_t fnv1a(uint64_t h, const uint8_t *p, uint64_t n) {
    uint64_t i;
    for (i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

/* ---- configurations ------------------------------------------------------- */

enum { HANDLE_SHARED = 0, HANDLE_NAMED_PAIR = 1 };
enum { END_FINISH = 0, END_CONSUMER_ABORT, END_PRODUCER_ABORT, END_CONSUMER_DETACH };

typedef struct config {
    const char *name;
    uint64_t capacity;
    int coalesce;
    uint64_t publish_bytes;
    int handles;          /* HANDLE_* */
    int short_deadlines;  /* producer: deadlines of 0..2 ms, retried on timeout */
    int hold_batches;     /* consumer: keep up to this many batches before releasing */
    int ending;           /* END_* after the verified stream */
} config;

static const config CONFIGS[] = {
    {"4k-plain", 4096, 0, 0, HANDLE_SHARED, 0, 0, END_FINISH},
    {"4k-coalesce-lazy-shortdl", 4096, 1, 1024, HANDLE_SHARED, 1, 0, END_CONSUMER_ABORT},
    {"8k-coalesce-named", 8192, 1, 64 * 1024, HANDLE_NAMED_PAIR, 0, 0, END_CONSUMER_DETACH},
    {"16k-coalesce-hold-shortdl", 16384, 1, 4096, HANDLE_SHARED, 1, 3, END_PRODUCER_ABORT},
    {"64k-plain-hold", 65536, 0, 0, HANDLE_SHARED, 0, 4, END_FINISH},
    {"64k-coalesce-lazy", 65536, 1, 16384, HANDLE_SHARED, 0, 0, END_CONSUMER_ABORT},
    {"1m-callback-defaults", 1 << 20, 1, 64 * 1024, HANDLE_SHARED, 0, 0, END_FINISH},
    {"1m-plain-named", 1 << 20, 0, 0, HANDLE_NAMED_PAIR, 0, 2, END_FINISH},
};
#define NCONFIGS ((int)(sizeof CONFIGS / sizeof CONFIGS[0]))

/* One planned write. */
typedef struct write_plan {
    uint64_t offset;
    uint64_t length;
    uint64_t seed;
    int invalid;          /* offset + length overflows: the ring must refuse it */
} write_plan;

typedef struct planner {
    uint64_t state;
    uint64_t max_payload;
    uint64_t capacity;
    uint64_t prev_offset, prev_end;
    uint64_t index;
} planner;

static void planner_init(planner *p, uint64_t seed, uint64_t capacity, uint64_t max_payload) {
    memset(p, 0, sizeof *p);
    p->state = seed;
    p->capacity = capacity;
    p->max_payload = max_payload;
}

static uint64_t pick_length(planner *p) {
    uint64_t r = below(&p->state, 100000);
    uint64_t mp = p->max_payload;
    if (r < 3000) return 0;
    if (r < 70000) return 1 + below(&p->state, 64);
    if (r < 90000) return 65 + below(&p->state, 448);
    if (r < 98000) return 513 + below(&p->state, 3584);
    if (r < 99900) {
        uint64_t hi = mp < 16384 ? mp : 16384;
        return 1 + below(&p->state, hi);
    }
    /* 0.1%: the edges around max_payload and larger than a record. */
    switch (below(&p->state, 8)) {
    case 0: return mp - 1;
    case 1: return mp;
    case 2: return mp + 1;
    case 3: return 2 * mp;
    case 4: return 2 * mp + 17;
    case 5: return p->capacity / 2;
    case 6: return p->capacity + 5;
    default: {
        uint64_t hi = 3 * mp < (1536u << 10) ? 3 * mp : (1536u << 10);
        return mp + 1 + below(&p->state, hi - mp);
    }
    }
}

static void planner_next(planner *p, write_plan *w) {
    uint64_t r;
    w->length = pick_length(p);
    w->seed = mix(p->state ^ (p->index * 0x632BE59BD9B4E019ull));
    r = below(&p->state, 1000);
    if (r < 600 && p->prev_end <= UINT64_MAX - w->length) w->offset = p->prev_end; /* continues: coalescing */
    else if (r < 900) w->offset = below(&p->state, 1ull << 40);  /* anywhere */
    else if (r < 950) w->offset = p->prev_offset;                /* rewrite: breaks coalescing */
    else if (r < 998) w->offset = below(&p->state, 1ull << 20);  /* near the start */
    else if (r < 999) w->offset = UINT64_MAX - w->length;        /* the very end of the offset space */
    else w->offset = UINT64_MAX - w->length + 1 + below(&p->state, w->length ? w->length : 1); /* overflows */
    w->invalid = w->length > 0 && w->offset > UINT64_MAX - w->length;
    if (!w->invalid) {
        p->prev_offset = w->offset;
        p->prev_end = w->offset + w->length;
    }
    p->index++;
}

/* ---- shared run state ----------------------------------------------------- */

typedef struct run {
    const config *cfg;
    uint64_t writes;          /* planned writes in the stream */
    uint64_t valid_writes;    /* of which the ring must accept (the others overflow) */
    uint64_t seed;
    mds_ring ring_a;          /* the handle (shared mode) or the producer's (pair mode) */
    mds_ring ring_b;          /* the consumer's handle in pair mode */
    mds_ring *prod;
    mds_ring *cons;
    uint8_t *prod_buf;
    uint8_t *cons_buf;
    /* progress, read by the watchdog (relaxed atomics) */
    uint64_t prod_done;
    uint64_t cons_done;
    uint32_t prod_finished;
    uint32_t cons_finished;
    /* results */
    uint64_t prod_hash, cons_hash;
    uint64_t records, wraps, bytes, batches, empty_waits, timeouts, refused;
    uint64_t max_record;
    int failed;
    char failure[512];
    int ending_ok;
    char ending_note[256];
} run;

static int verbose = 1;
static uint64_t inject_at = UINT64_MAX; /* --inject N: spoil the expectation of record N (checks the checker) */
static uint64_t total_records, total_bytes;

static void fail(run *r, const char *fmt, ...) {
    va_list ap;
    if (r->failed) return;
    va_start(ap, fmt);
    vsnprintf(r->failure, sizeof r->failure, fmt, ap);
    va_end(ap);
    __atomic_store_n(&r->failed, 1, __ATOMIC_SEQ_CST);
}

static void tiny_pause(uint64_t *state, int producer) {
    /* Rare pauses on either side make the other one wait (futex paths). */
    uint64_t r = below(state, producer ? 4000 : 1500);
    if (r == 0) {
        struct timespec ts = {0, (long)(20000 + below(state, 300000))};
        nanosleep(&ts, NULL);
    } else if (r < 4) {
        sched_yield();
    }
}

static int write_one(run *r, mds_ring *ring, const write_plan *w, const uint8_t *data) {
    mds_error err;
    int rc;
    if (!r->cfg->short_deadlines) {
        rc = mds_ring_write(ring, w->offset, data, w->length, mds_now_ns() + 120ull * 1000000000ull, &err);
        if (rc != MDS_OK) {
            fail(r, "producer: write %" PRIu64 " of %" PRIu64 " bytes at %" PRIu64 " failed: %s (%s)",
                 r->prod_done, w->length, w->offset, mds_status_name(rc), err.message);
            return rc;
        }
        return MDS_OK;
    }
    /* Short deadlines: split into records ourselves so a timeout never leaves
     * part of a write behind (as Ring.write does), and retry. */
    {
        uint64_t done = 0, mp = ring->max_payload;
        uint64_t st = w->seed;
        do {
            uint64_t chunk = w->length - done < mp ? w->length - done : mp;
            for (;;) {
                uint64_t deadline = mds_now_ns() + below(&st, 2000000);
                rc = mds_ring_write(ring, w->offset + done, data + done, chunk, deadline, &err);
                if (rc == MDS_ERR_TIMEOUT) {
                    r->timeouts++;
                    continue;
                }
                break;
            }
            if (rc != MDS_OK) {
                fail(r, "producer: write %" PRIu64 " failed: %s (%s)", r->prod_done, mds_status_name(rc), err.message);
                return rc;
            }
            done += chunk;
        } while (done < w->length);
        return MDS_OK;
    }
}

static void *producer_main(void *arg) {
    run *r = (run *)arg;
    mds_ring *ring = r->prod;
    planner pl;
    write_plan w;
    mds_error err;
    uint64_t i, pause_state = r->seed ^ 0xABCDEF;
    int rc;
    uint64_t hash = 0xCBF29CE484222325ull;
    rc = mds_ring_claim_producer(ring, &err);
    if (rc != MDS_OK) {
        fail(r, "producer: claim failed: %s", err.message);
        goto out;
    }
    mds_ring_set_producer_options(ring, r->cfg->coalesce, r->cfg->publish_bytes);
    planner_init(&pl, r->seed, ring->capacity, ring->max_payload);
    for (i = 0; i < r->writes && !__atomic_load_n(&r->failed, __ATOMIC_RELAXED); i++) {
        planner_next(&pl, &w);
        fill_payload(r->prod_buf, w.length, w.seed);
        if (w.invalid) {
            uint64_t before = ring->prod.wpos;
            rc = mds_ring_write(ring, w.offset, r->prod_buf, w.length, 0, &err);
            if (rc != MDS_ERR_ARG || ring->prod.wpos != before) {
                fail(r, "producer: write %" PRIu64 " at %" PRIu64 " + %" PRIu64 " overflows but got %s", i, w.offset,
                     w.length, mds_status_name(rc));
                break;
            }
            r->refused++;
        } else {
            if (write_one(r, ring, &w, r->prod_buf) != MDS_OK) break;
            hash = fnv1a(hash, (const uint8_t *)&w.offset, 8);
            hash = fnv1a(hash, r->prod_buf, w.length);
        }
        mds_store_relaxed_u64(&r->prod_done, i + 1);
        tiny_pause(&pause_state, 1);
    }
    r->prod_hash = hash;
    if (r->failed) goto out;

    switch (r->cfg->ending) {
    case END_FINISH:
        /* Success means the consumer verified the END record and committed. */
        rc = mds_ring_finish(ring, 60ull * 1000000000ull, &err);
        if (rc != MDS_OK) fail(r, "producer: finish failed: %s", err.message);
        /* Writing into a finished ring is refused, never blocks. */
        rc = mds_ring_write(ring, 0, r->prod_buf, 1, 0, &err);
        if (rc != MDS_ERR_FINISHED) fail(r, "producer: write after finish gave %s", mds_status_name(rc));
        break;
    case END_CONSUMER_ABORT:
    case END_CONSUMER_DETACH: {
        /* Keep writing until the consumer's abort / close stops a write that
         * waits for space (the consumer stops reading once it verified the
         * stream).  Must end promptly with the right status. */
        uint64_t t0 = mds_now_ns(), n = 0;
        int want = r->cfg->ending == END_CONSUMER_ABORT ? MDS_ERR_ABORTED : MDS_ERR_PEER_GONE;
        for (;;) {
            rc = mds_ring_write(ring, (1ull << 62) + 1 + n * 100, r->prod_buf, 100,
                                mds_now_ns() + 30ull * 1000000000ull, &err);
            if (rc != MDS_OK) break;
            n++;
        }
        if (rc != want)
            fail(r, "producer: expected %s, got %s (%s)", mds_status_name(want), mds_status_name(rc), err.message);
        else if (want == MDS_ERR_ABORTED &&
                 (err.abort_code != (int32_t)0x80004004 || strcmp(err.message, "consumer gave up") != 0))
            fail(r, "producer: abort code 0x%08x reason '%s'", (unsigned)err.abort_code, err.message);
        else if (mds_now_ns() - t0 > 20ull * 1000000000ull)
            fail(r, "producer: the consumer's %s took %.1f s to stop the producer",
                 want == MDS_ERR_ABORTED ? "abort" : "close", (mds_now_ns() - t0) / 1e9);
        break;
    }
    case END_PRODUCER_ABORT:
        /* Let the consumer verify everything and go to sleep, then abort: the
         * abort must wake it with the code and reason. */
        mds_ring_flush(ring);
        while (mds_load_relaxed_u64(&r->cons_done) < r->valid_writes && !__atomic_load_n(&r->failed, __ATOMIC_RELAXED)) {
            struct timespec ts = {0, 1000000L};
            nanosleep(&ts, NULL);
        }
        {
            struct timespec ts = {0, 30 * 1000000L};
            nanosleep(&ts, NULL);
        }
        rc = mds_ring_abort(ring, (int32_t)0x80070070, "producer: disk full");
        if (rc != MDS_OK) fail(r, "producer: abort failed: %s", mds_status_name(rc));
        break;
    }
out:
    if (r->failed && r->cfg->handles == HANDLE_SHARED) mds_ring_abort(ring, (int32_t)0x80004005, "stress producer failed");
    __atomic_store_n(&r->prod_finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* ---- consumer ------------------------------------------------------------- */

typedef struct expect {
    planner pl;
    write_plan cur;
    uint64_t j;        /* bytes of cur already seen */
    int have;          /* cur is loaded and not complete */
    uint64_t loaded;   /* writes loaded so far (incl. refused ones) */
    uint64_t completed; /* valid writes fully seen */
    uint64_t hash;
} expect;

static int expect_load(run *r, expect *e) {
    while (e->loaded < r->writes) {
        planner_next(&e->pl, &e->cur);
        e->loaded++;
        if (e->cur.invalid) continue;
        fill_payload(r->cons_buf, e->cur.length, e->cur.seed);
        e->j = 0;
        e->have = 1;
        e->hash = fnv1a(e->hash, (const uint8_t *)&e->cur.offset, 8);
        return 1;
    }
    e->have = 0;
    return 0;
}

static void expect_complete(expect *e) {
    e->completed++;
    e->have = 0;
}

static int verify_record(run *r, expect *e, uint64_t off, uint64_t len, const uint8_t *p) {
    const config *c = r->cfg;
    uint64_t rem = len;
    if (len > r->cons->max_payload)
        return fail(r, "record %" PRIu64 ": %" PRIu64 " bytes > max_payload %" PRIu64, r->records, len,
                    r->cons->max_payload), -1;
    if (!e->have && !expect_load(r, e))
        return fail(r, "record %" PRIu64 " (offset %" PRIu64 ", %" PRIu64 " bytes) after the last write", r->records,
                    off, len), -1;
    if (e->cur.length == 0) {
        if (off != e->cur.offset)
            return fail(r, "record %" PRIu64 ": offset %" PRIu64 ", expected the empty write %" PRIu64 " at %" PRIu64,
                        r->records, off, e->completed, e->cur.offset), -1;
        expect_complete(e);
        if (len == 0) return 0;
        if (!c->coalesce)
            return fail(r, "record %" PRIu64 ": empty write grew to %" PRIu64 " bytes without coalescing",
                        r->records, len), -1;
        if (!expect_load(r, e) || e->cur.length == 0 || e->cur.offset != off)
            return fail(r, "record %" PRIu64 ": empty write at %" PRIu64 " coalesced with a write that does not continue it",
                        r->records, off), -1;
    } else if (off != e->cur.offset + e->j) {
        return fail(r, "record %" PRIu64 ": offset %" PRIu64 ", expected %" PRIu64 " (write %" PRIu64 " byte %" PRIu64 ")",
                    r->records, off, e->cur.offset + e->j, e->completed, e->j), -1;
    }
    while (rem > 0) {
        uint64_t n;
        if (e->j == e->cur.length) {
            uint64_t prev_end = e->cur.offset + e->cur.length;
            if (!c->coalesce)
                return fail(r, "record %" PRIu64 " runs past write %" PRIu64 " without coalescing", r->records,
                            e->completed), -1;
            expect_complete(e);
            if (!expect_load(r, e) || e->cur.length == 0 || e->cur.offset != prev_end)
                return fail(r, "record %" PRIu64 ": coalesced across writes that do not continue each other", r->records), -1;
        }
        n = rem < e->cur.length - e->j ? rem : e->cur.length - e->j;
        if (r->records == inject_at && n > 0) r->cons_buf[e->j] ^= 0x40;
        if (memcmp(p, r->cons_buf + e->j, n) != 0) {
            uint64_t k = 0;
            while (k < n && p[k] == r->cons_buf[e->j + k]) k++;
            return fail(r, "record %" PRIu64 ": payload differs at write %" PRIu64 " byte %" PRIu64 " (0x%02x, expected 0x%02x)",
                        r->records, e->completed, e->j + k, p[k], r->cons_buf[e->j + k]), -1;
        }
        e->hash = fnv1a(e->hash, p, n);
        p += n;
        e->j += n;
        rem -= n;
    }
    if (!c->coalesce && e->j != e->cur.length && len != r->cons->max_payload)
        return fail(r, "record %" PRIu64 ": a piece of a split write has %" PRIu64 " bytes, not max_payload", r->records,
                    len), -1;
    if (e->j == e->cur.length) expect_complete(e);
    return 0;
}

/* What the consumer does once it has verified every write of the stream.
 * Returns 1 when the consumer's part is over. */
static int consumer_ending(run *r, mds_ring *ring) {
    struct timespec ts = {0, 50 * 1000000L};
    int rc;
    switch (r->cfg->ending) {
    case END_CONSUMER_ABORT:
        nanosleep(&ts, NULL); /* the producer fills the ring and waits */
        rc = mds_ring_abort(ring, (int32_t)0x80004004, "consumer gave up");
        if (rc != MDS_OK) fail(r, "consumer: abort failed: %s", mds_status_name(rc));
        return 1;
    case END_CONSUMER_DETACH:
        nanosleep(&ts, NULL);
        mds_ring_close(ring); /* own handle (pair mode): the producer must notice */
        return 1;
    default:
        return 0; /* wait for the finish or the producer's abort */
    }
}

static void *consumer_main(void *arg) {
    run *r = (run *)arg;
    mds_ring *ring = r->cons;
    expect e;
    mds_error err;
    uint64_t start, end, held_end = 0, pause_state = r->seed ^ 0x5EED;
    int held = 0, rc, ended = 0;
    memset(&e, 0, sizeof e);
    e.hash = 0xCBF29CE484222325ull;
    planner_init(&e.pl, r->seed, ring->capacity, ring->max_payload);
    rc = mds_ring_claim_consumer(ring, &err);
    if (rc != MDS_OK) {
        fail(r, "consumer: claim failed: %s", err.message);
        goto out;
    }
    for (;;) {
        if (__atomic_load_n(&r->failed, __ATOMIC_RELAXED)) goto out;
        if (e.completed == r->valid_writes && !ended) {
            r->cons_hash = e.hash;
            if (held) {
                mds_ring_release(ring, held_end);
                held = 0;
            }
            ended = 1;
            if (consumer_ending(r, ring)) goto out;
        }
        rc = mds_ring_poll(ring, &start, &end, &err);
        if (rc == MDS_OK) {
            const uint8_t *span = mds_ring_at(ring, start);
            uint64_t span_len = end - start, pos = 0;
            mds_record rec;
            int k;
            if (end == (start | ring->mask) + 1) r->wraps++;
            while ((k = mds_span_next(span, span_len, &pos, &rec, &err)) == 1) {
                if (e.completed == r->valid_writes &&
                    (r->cfg->ending == END_CONSUMER_ABORT || r->cfg->ending == END_CONSUMER_DETACH))
                    break; /* the producer's filler after the stream */
                if (verify_record(r, &e, rec.offset, rec.length, span + rec.payload_pos) != 0) goto out;
                r->records++;
                r->bytes += rec.length;
                if (rec.length > r->max_record) r->max_record = rec.length;
            }
            if (k < 0) {
                fail(r, "consumer: span [%" PRIu64 ", %" PRIu64 "): %s", start, end, err.message);
                goto out;
            }
            {
                /* The transaction's accounting: BEGIN/END checked, DATA folded. */
                uint64_t n, b, h;
                if (mds_ring_take(ring, start, end, &n, &b, &h, &err) != MDS_OK) {
                    fail(r, "consumer: take [%" PRIu64 ", %" PRIu64 "): %s", start, end, err.message);
                    goto out;
                }
            }
            r->batches++;
            mds_store_relaxed_u64(&r->cons_done, e.completed);
            if (r->cfg->hold_batches && held < r->cfg->hold_batches && below(&pause_state, 2)) {
                held++;
                held_end = end; /* released later, all at once (a deferred release) */
            } else {
                mds_ring_release(ring, end);
                held = 0;
            }
            tiny_pause(&pause_state, 0);
            continue;
        }
        if (held) {
            mds_ring_release(ring, held_end);
            held = 0;
        }
        if (rc == MDS_END) {
            rc = mds_ring_commit(ring, &err);
            if (rc != MDS_OK) fail(r, "consumer: commit failed: %s", err.message);
            break;
        }
        if (rc == MDS_EMPTY) {
            r->empty_waits++;
            rc = mds_ring_wait_data(ring, 50ull * 1000000ull, &err);
            if (rc != MDS_OK && mds_ring_poll(ring, &start, &end, &err) != MDS_OK) {
                fail(r, "consumer: wait failed: %s", err.message);
                goto out;
            }
            continue;
        }
        if (rc == MDS_ERR_ABORTED && r->cfg->ending == END_PRODUCER_ABORT && ended) {
            if (err.abort_code != (int32_t)0x80070070 || strcmp(err.message, "producer: disk full") != 0)
                fail(r, "consumer: abort code 0x%08x reason '%s'", (unsigned)err.abort_code, err.message);
            break;
        }
        fail(r, "consumer: poll failed after %" PRIu64 " writes: %s (%s)", e.completed, mds_status_name(rc), err.message);
        goto out;
    }
    if (e.completed != r->valid_writes)
        fail(r, "consumer: stream ended after %" PRIu64 " of %" PRIu64 " writes (%" PRIu64 " of %" PRIu64
             " bytes of the next)", e.completed, r->valid_writes, e.j, e.cur.length);
out:
    if (r->failed && !ring->header) {
        /* closed already */
    } else if (r->failed) {
        /* Stop the producer at once instead of at its deadline. */
        mds_ring_abort(ring, (int32_t)0x80004005, "stress consumer failed");
    }
    __atomic_store_n(&r->cons_finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* ---- driver ---------------------------------------------------------------- */

static int run_config(const config *cfg, uint64_t writes, uint64_t seed, const char *dir, double stall_s) {
    run *r = (run *)calloc(1, sizeof *r);
    pthread_t pt, ct;
    mds_error err;
    char path[600];
    uint64_t t0 = mds_now_ns(), last_progress = t0, last_p = 0, last_c = 0;
    int rc, status = 0;
    size_t bufsize = (size_t)(4u << 20);
    if (!r) return 1;
    r->cfg = cfg;
    r->writes = writes;
    r->seed = seed;
    r->prod_buf = (uint8_t *)malloc(bufsize);
    r->cons_buf = (uint8_t *)malloc(bufsize);
    path[0] = '\0';
    if (cfg->handles == HANDLE_SHARED) {
        rc = mds_ring_create(&r->ring_a, NULL, cfg->capacity, &err);
        r->prod = r->cons = &r->ring_a;
    } else {
        snprintf(path, sizeof path, "%s/mds-stress-%d-%" PRIx64, dir, (int)getpid(), seed & 0xFFFFFFFF);
        rc = mds_ring_create(&r->ring_a, path, cfg->capacity, &err);
        if (rc == MDS_OK) {
            rc = mds_ring_attach(&r->ring_b, path, &err);
            if (rc != MDS_OK) mds_ring_close(&r->ring_a);
        }
        r->prod = &r->ring_a;
        r->cons = &r->ring_b;
    }
    if (rc != MDS_OK) {
        fprintf(stderr, "ring_stress: %s: cannot create the ring: %s\n", cfg->name, err.message);
        if (path[0]) mds_ring_unlink(path, NULL);
        return 1;
    }
    {
        /* Count the writes the ring must accept. */
        planner pl;
        write_plan w;
        uint64_t i;
        planner_init(&pl, seed, r->prod->capacity, r->prod->max_payload);
        for (i = 0; i < writes; i++) {
            planner_next(&pl, &w);
            if (!w.invalid) r->valid_writes++;
            if (w.length > bufsize) {
                fprintf(stderr, "ring_stress: write of %" PRIu64 " bytes exceeds the buffers\n", w.length);
                return 1;
            }
        }
    }
    pthread_create(&ct, NULL, consumer_main, r);
    pthread_create(&pt, NULL, producer_main, r);
    /* Watchdog: a stall (no progress on either side) is a hang. */
    for (;;) {
        struct timespec ts = {0, 100 * 1000000L};
        uint64_t now, p, c;
        if (__atomic_load_n(&r->prod_finished, __ATOMIC_ACQUIRE) && __atomic_load_n(&r->cons_finished, __ATOMIC_ACQUIRE))
            break;
        nanosleep(&ts, NULL);
        now = mds_now_ns();
        p = mds_load_relaxed_u64(&r->prod_done);
        c = mds_load_relaxed_u64(&r->cons_done);
        if (p != last_p || c != last_c) {
            last_p = p;
            last_c = c;
            last_progress = now;
        } else if ((now - last_progress) / 1e9 > stall_s) {
            mds_ring_header *h = r->prod->header;
            fprintf(stderr,
                    "ring_stress: %s: HANG: no progress for %.0f s (producer %" PRIu64 "/%" PRIu64 " writes, consumer %" PRIu64
                    " complete); write_pos %" PRIu64 " read_pos %" PRIu64 " producer_waiting %u consumer_waiting %u state %u flags %u\n",
                    cfg->name, stall_s, p, writes, c, mds_load_relaxed_u64(&h->write_pos),
                    mds_load_relaxed_u64(&h->read_pos), mds_load_relaxed_u32(&h->producer_waiting),
                    mds_load_relaxed_u32(&h->consumer_waiting), mds_load_relaxed_u32(&h->state),
                    mds_load_relaxed_u32(&h->flags));
            fflush(stderr);
            _exit(3);
        }
    }
    pthread_join(pt, NULL);
    pthread_join(ct, NULL);
    if (!r->failed && cfg->ending != END_CONSUMER_ABORT && cfg->ending != END_PRODUCER_ABORT &&
        r->prod_hash != r->cons_hash)
        fail(r, "stream checksum differs: producer %016" PRIx64 ", consumer %016" PRIx64, r->prod_hash, r->cons_hash);
    if (r->failed) {
        fprintf(stderr, "ring_stress: %s: FAILED: %s\n", cfg->name, r->failure);
        status = 1;
    } else if (verbose) {
        double secs = (mds_now_ns() - t0) / 1e9;
        printf("ring_stress: %-26s cap %8" PRIu64 " writes %9" PRIu64 " records %9" PRIu64 " (%" PRIu64
               " refused, max %" PRIu64 " B) %7.1f MiB batches %8" PRIu64 " wraps %6" PRIu64 " empty-waits %7" PRIu64
               " timeouts %6" PRIu64 " %6.2f s ok\n",
               cfg->name, cfg->capacity, writes, r->records, r->refused, r->max_record, r->bytes / 1048576.0, r->batches,
               r->wraps, r->empty_waits, r->timeouts, secs);
        fflush(stdout);
    }
    total_records += r->records;
    total_bytes += r->bytes;
    if (cfg->handles == HANDLE_SHARED) {
        mds_ring_close(&r->ring_a);
    } else {
        mds_ring_close(&r->ring_b); /* no-op if the consumer closed it */
        mds_ring_close(&r->ring_a);
        mds_ring_unlink(path, NULL);
    }
    free(r->prod_buf);
    free(r->cons_buf);
    free(r);
    return status;
}

static void usage(void) {
    fprintf(stderr,
            "usage: ring_stress [--records N] [--seed S] [--config NAME|INDEX] [--dir DIR] [--stall-s SECONDS] [--quiet]\n"
            "                   [--inject RECORD]\n"
            "  --records  total writes over all configurations (default 1000000); a write becomes one record,\n"
            "             several (larger than max_payload) or shares one (coalescing)\n"
            "  --inject   make the checker expect a wrong byte in that record of each configuration (must FAIL)\n"
            "  --dir      directory for the named rings (default /dev/shm)\n");
}

int main(int argc, char **argv) {
    uint64_t records = 1000000, seed = 0x6D647374726D31ull;
    const char *only = NULL, *dir = "/dev/shm";
    double stall_s = 60.0;
    int i, failures = 0, selected = 0;
    uint64_t t0 = mds_now_ns();
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--records") && i + 1 < argc) records = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--config") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--stall-s") && i + 1 < argc) stall_s = atof(argv[++i]);
        else if (!strcmp(argv[i], "--quiet")) verbose = 0;
        else if (!strcmp(argv[i], "--inject") && i + 1 < argc) inject_at = strtoull(argv[++i], NULL, 0);
        else {
            usage();
            return 2;
        }
    }
    if (access(dir, W_OK) != 0) dir = "/tmp";
    for (i = 0; i < NCONFIGS; i++) {
        if (only && strcmp(only, CONFIGS[i].name) != 0 && !(only[0] >= '0' && only[0] <= '9' && atoi(only) == i))
            continue;
        selected++;
    }
    if (!selected) {
        fprintf(stderr, "ring_stress: no configuration named %s\n", only);
        return 2;
    }
    for (i = 0; i < NCONFIGS; i++) {
        uint64_t n = records / (uint64_t)selected;
        if (only && strcmp(only, CONFIGS[i].name) != 0 && !(only[0] >= '0' && only[0] <= '9' && atoi(only) == i))
            continue;
        if (n == 0) n = 1;
        failures += run_config(&CONFIGS[i], n, mix(seed + (uint64_t)i), dir, stall_s);
    }
    if (failures) {
        fprintf(stderr, "ring_stress: FAILED (%d)\n", failures);
        return 1;
    }
    printf("ring_stress: OK: %" PRIu64 " writes, %" PRIu64 " records, %.1f MiB verified in %.1f s\n", records,
           total_records, total_bytes / 1048576.0, (mds_now_ns() - t0) / 1e9);
    return 0;
}
