/* The ring: format checks, producer and consumer.  See ring.h and
 * docs/ring-format.md.
 *
 * Publication protocol (all positions are byte counts that only grow; the
 * index in the data area is pos & mask):
 *   producer: write record bytes, store-release write_pos;
 *   consumer: load-acquire write_pos, read records, store-release read_pos;
 *   producer: load-acquire read_pos before reusing space.
 * Sleeping uses the Dekker pattern on (x_waiting, position): the sleeper
 * stores waiting=1 (seq_cst) and re-checks the position; the waker stores the
 * position, issues a seq_cst fence and only then reads waiting.  Either the
 * sleeper sees the new position or the waker sees waiting=1 and bumps the
 * event word, which makes the futex wait return.  Every sleep is bounded, so
 * a lost wake-up can only cost one slice, never a hang.
 *
 * The transaction (docs/ring-format.md): a ring carries one dump, framed by a
 * BEGIN record (its id) and an END record (what the consumer must have
 * received).  The producer's success means the consumer committed:
 *   producer: BEGIN, DATA..., END, state FINISHED, wait for COMMITTED;
 *   consumer: verify END, make its output durable, FINISHED -> COMMITTING,
 *             publish the output under its final name, -> COMMITTED.
 * Either side may abort instead; the producer then records its outcome
 * (spilled or failed) so a consumer that failed knows when its partial output
 * is no longer needed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/ring.h"
#include "mdstream/atomics.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

#define WAIT_SLICE_NS 20000000ull  /* 20 ms: how often sleepers re-check the world */
#define NO_RECORD UINT64_MAX
#ifndef SPIN_NS
#define SPIN_NS 30000ull               /* poll this long before sleeping */
#endif
#define LIVENESS_INTERVAL_NS 100000000ull /* check the peer's pid at most every 100 ms */

_Static_assert(sizeof(mds_record_header) == MDS_RING_RECORD_HEADER, "record header is 16 bytes");
_Static_assert(offsetof(mds_ring_header, write_pos) == 128, "producer line at 128");
_Static_assert(offsetof(mds_ring_header, read_pos) == 256, "consumer line at 256");
_Static_assert(offsetof(mds_ring_header, state) == 384, "state line at 384");
_Static_assert(offsetof(mds_ring_header, abort_reason) == 400, "reason at 400");
_Static_assert(offsetof(mds_ring_header, consumer_output) == 1024, "consumer output at 1024");
_Static_assert(sizeof(mds_ring_header) <= MDS_RING_HEADER_SIZE, "header fits its page");
_Static_assert(offsetof(mds_ring_header, data_event) == 140, "data_event at 140");
_Static_assert(offsetof(mds_ring_header, space_event) == 268, "space_event at 268");
_Static_assert(offsetof(mds_ring_header, outcome) == 156, "outcome at 156");
_Static_assert(offsetof(mds_ring_header, dump_id) == 176, "dump_id at 176");
_Static_assert(offsetof(mds_ring_header, output_dump_id) == 296, "output_dump_id at 296");
_Static_assert(offsetof(mds_ring_header, output_inode) == 312, "output_inode at 312");
_Static_assert(sizeof(mds_begin_payload) == MDS_BEGIN_PAYLOAD, "BEGIN payload");
_Static_assert(sizeof(mds_end_payload) == MDS_END_PAYLOAD, "END payload");

static inline uint64_t align_up(uint64_t value, uint64_t alignment) {
    return (value + alignment - 1) & ~(alignment - 1);
}

static inline uint64_t record_total(uint64_t payload) {
    return MDS_RING_RECORD_HEADER + align_up(payload, MDS_RING_RECORD_ALIGN);
}

static uint64_t max_payload_for(uint64_t capacity) {
    /* A record plus the padding that may precede it must fit an empty ring:
     * records of at most capacity/2 guarantee that. */
    uint64_t limit = capacity / 2 - MDS_RING_RECORD_HEADER;
    if (limit > 0xFFFFFFF0ull) limit = 0xFFFFFFF0ull;
    return limit & ~(uint64_t)(MDS_RING_RECORD_ALIGN - 1);
}

const char *mds_status_name(int status) {
    switch (status) {
    case MDS_OK: return "ok";
    case MDS_EMPTY: return "empty";
    case MDS_END: return "end";
    case MDS_ERR_ARG: return "invalid argument";
    case MDS_ERR_SYS: return "system error";
    case MDS_ERR_FORMAT: return "not a valid ring";
    case MDS_ERR_CORRUPT: return "ring corrupt";
    case MDS_ERR_TIMEOUT: return "timed out";
    case MDS_ERR_ABORTED: return "ring aborted";
    case MDS_ERR_FINISHED: return "ring finished";
    case MDS_ERR_BUSY: return "role already taken";
    case MDS_ERR_PEER_GONE: return "peer gone";
    case MDS_ERR_PERMISSION: return "permission";
    case MDS_ERR_EXISTS: return "exists";
    case MDS_ERR_NOT_FOUND: return "not found";
    case MDS_ERR_CLOSED: return "handle closed";
    case MDS_ERR_USED: return "ring already used";
    default: return "unknown status";
    }
}

static int abort_status(mds_ring *ring, mds_error *err);

static void init_handle(mds_ring *ring) {
    memset(ring, 0, sizeof *ring);
    ring->fd = -1;
    ring->prod.open_record = NO_RECORD;
    ring->prod.coalesce = 0;
    ring->prod.publish_bytes = 0;
    ring->token = mds_platform_random64();
    ring->pid = mds_platform_pid();
}

static void bind_mapping(mds_ring *ring, uint64_t capacity) {
    ring->header = (mds_ring_header *)ring->map_base;
    ring->data = (uint8_t *)ring->map_base + MDS_RING_HEADER_SIZE;
    ring->capacity = capacity;
    ring->mask = capacity - 1;
    ring->max_payload = max_payload_for(capacity);
}

int mds_ring_create(mds_ring *ring, const char *name, uint64_t capacity, mds_error *err) {
    return mds_ring_create_ex(ring, name, capacity, 0, err);
}

int mds_ring_create_ex(mds_ring *ring, const char *name, uint64_t capacity, int replace_stale, mds_error *err) {
    uint64_t cap = MDS_RING_MIN_CAPACITY;
    mds_ring_header *h;
    int rc;
    init_handle(ring);
    if (capacity > MDS_RING_MAX_CAPACITY)
        return mds_set_error(err, MDS_ERR_ARG, 0, "capacity %llu exceeds the maximum %llu (16 GiB)",
                             (unsigned long long)capacity, (unsigned long long)MDS_RING_MAX_CAPACITY);
    while (cap < capacity) cap <<= 1;
    rc = mds_platform_map_create(ring, name, (size_t)(MDS_RING_HEADER_SIZE + cap), replace_stale, err);
    if (rc != MDS_OK) return rc;
    bind_mapping(ring, cap);
    ring->is_owner = 1;
    h = ring->header;
    /* A fresh mapping is zero-filled; set the immutable fields, then the
     * magic last.  A named ring gets its name only after that. */
    h->version = MDS_RING_VERSION;
    h->header_size = MDS_RING_HEADER_SIZE;
    h->capacity = cap;
    h->data_offset = MDS_RING_HEADER_SIZE;
    h->record_align = MDS_RING_RECORD_ALIGN;
    h->record_header = MDS_RING_RECORD_HEADER;
    h->max_payload = ring->max_payload;
    h->creator_pid = ring->pid;
    h->created_ns = mds_now_ns();
    h->created_unix_ns = mds_platform_realtime_ns();
    {
        int locked = 0;
        rc = mds_platform_role_lock(ring, MDS_LOCK_CREATOR, &locked, err);
        if (locked) h->flags |= MDS_FLAG_CREATOR_LOCKED;
    }
    if (rc == MDS_OK) {
        mds_fence_release();
        memcpy(h->magic, MDS_RING_MAGIC, 8);
        rc = mds_platform_map_publish(ring, err);
    }
    if (rc != MDS_OK) {
        mds_platform_unmap(ring);
        ring->header = NULL;
        ring->data = NULL;
    }
    return rc;
}

static int validate_header(const mds_ring_header *h, uint64_t file_size, const char *path, mds_error *err) {
    uint64_t cap = h->capacity;
    if (memcmp(h->magic, MDS_RING_MAGIC, 8) != 0)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is not an mdstream ring (bad magic)", path);
    if (h->version != MDS_RING_VERSION)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s has ring format version %u; this build reads version %u",
                             path, h->version, MDS_RING_VERSION);
    if (h->header_size != MDS_RING_HEADER_SIZE || h->data_offset != MDS_RING_HEADER_SIZE)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: header size %u / data offset %llu, expected %u",
                             path, h->header_size, (unsigned long long)h->data_offset, MDS_RING_HEADER_SIZE);
    if (h->record_align != MDS_RING_RECORD_ALIGN || h->record_header != MDS_RING_RECORD_HEADER)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: record alignment %u / header %u not supported", path,
                             h->record_align, h->record_header);
    if (cap < MDS_RING_MIN_CAPACITY || cap > MDS_RING_MAX_CAPACITY || (cap & (cap - 1)) != 0)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: absurd capacity %llu (must be a power of two in [%llu, %llu])",
                             path, (unsigned long long)cap, (unsigned long long)MDS_RING_MIN_CAPACITY,
                             (unsigned long long)MDS_RING_MAX_CAPACITY);
    if (file_size < MDS_RING_HEADER_SIZE + cap)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is truncated: %llu bytes, its header promises %llu", path,
                             (unsigned long long)file_size, (unsigned long long)(MDS_RING_HEADER_SIZE + cap));
    if (h->max_payload != max_payload_for(cap))
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: max payload %llu does not match capacity", path,
                             (unsigned long long)h->max_payload);
    if (h->write_pos < h->read_pos || h->write_pos - h->read_pos > cap ||
        (h->read_pos % MDS_RING_RECORD_ALIGN) != 0 || (h->write_pos % MDS_RING_RECORD_ALIGN) != 0)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: inconsistent positions (read %llu, write %llu)", path,
                             (unsigned long long)h->read_pos, (unsigned long long)h->write_pos);
    if (h->state > MDS_STATE_COMMITTED)
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: unknown state %u", path, h->state);
    return MDS_OK;
}

int mds_ring_attach(mds_ring *ring, const char *name, mds_error *err) {
    mds_ring_header copy;
    uint64_t file_size = 0;
    int rc;
    init_handle(ring);
    rc = mds_platform_map_attach(ring, name, &copy, &file_size, err);
    if (rc != MDS_OK) return rc;
    rc = validate_header(&copy, file_size, ring->path, err);
    if (rc != MDS_OK) {
        mds_platform_unmap(ring);
        return rc;
    }
    rc = mds_platform_map_attach_finish(ring, (size_t)(MDS_RING_HEADER_SIZE + copy.capacity), err);
    if (rc != MDS_OK) return rc;
    /* Use the capacity we validated, never a value re-read from shared memory. */
    bind_mapping(ring, copy.capacity);
    ring->cons.cursor = ring->cons.released = mds_load_acquire_u64(&ring->header->read_pos);
    ring->prod.wpos = ring->prod.published = ring->prod.read_cached = mds_load_acquire_u64(&ring->header->write_pos);
    if (ring->cons.cursor > ring->prod.wpos || ring->prod.wpos - ring->cons.cursor > ring->capacity) {
        mds_platform_unmap(ring);
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s: positions changed to an inconsistent state", ring->path);
    }
    return MDS_OK;
}

int mds_ring_owned_by_this_process(const mds_ring *ring) {
    return ring->generation == mds_platform_fork_generation();
}

static int inherited_error(const mds_ring *ring, mds_error *err) {
    return mds_set_error(err, MDS_ERR_CLOSED, 0,
                         "this handle of ring %s was inherited across fork(): roles belong to the process that made "
                         "the handle; attach the ring again in this process",
                         ring->path[0] ? ring->path : "(anonymous)");
}

static void wake_everyone(mds_ring_header *h) {
    mds_fetch_add_u32(&h->data_event, 1);
    mds_platform_wake_u32(&h->data_event);
    mds_fetch_add_u32(&h->space_event, 1);
    mds_platform_wake_u32(&h->space_event);
}

int mds_ring_begin_use(mds_ring *ring, mds_error *err) {
    if (ring->header == NULL) return mds_set_error(err, MDS_ERR_CLOSED, 0, "the ring is closed");
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    mds_fetch_add_u32(&ring->active_users, 1);
    /* Dekker with shutdown: our increment (seq_cst) before its flag is read
     * there, its flag (seq_cst) before our read here. */
    if (mds_load_acquire_u32(&ring->closing)) {
        mds_fetch_add_u32(&ring->active_users, (uint32_t)-1);
        return mds_set_error(err, MDS_ERR_CLOSED, 0, "the ring is being closed");
    }
    return MDS_OK;
}

void mds_ring_end_use(mds_ring *ring) { mds_fetch_add_u32(&ring->active_users, (uint32_t)-1); }

int mds_ring_shutdown(mds_ring *ring, uint64_t timeout_ns, mds_error *err) {
    uint64_t deadline;
    if (ring->header == NULL) return MDS_OK;
    mds_store_seqcst_u32(&ring->closing, 1);
    if (!mds_ring_owned_by_this_process(ring)) return MDS_OK;
    deadline = mds_now_ns() + timeout_ns;
    for (;;) {
        uint32_t users = mds_load_acquire_u32(&ring->active_users);
        if (users == 0) return MDS_OK;
        wake_everyone(ring->header);
        if (mds_now_ns() >= deadline)
            return mds_set_error(err, MDS_ERR_BUSY, 0,
                                 "ring %s is still in use by %u operation(s) in other threads (a dump in progress?)",
                                 ring->path[0] ? ring->path : "(anonymous)", users);
        mds_platform_wait_u32(&ring->active_users, users, 1000000ull);
    }
}

void mds_ring_close(mds_ring *ring) {
    if (ring->map_base == NULL) return;
    if (!mds_ring_owned_by_this_process(ring)) {
        /* A forked child's copy: the roles and the name are the parent's. */
        mds_platform_unmap(ring);
        ring->header = NULL;
        ring->data = NULL;
        return;
    }
    if (ring->prod.claimed) {
        uint32_t state;
        mds_ring_flush(ring);
        state = mds_load_acquire_u32(&ring->header->state);
        if (state == MDS_STATE_OPEN) mds_fetch_or_u32(&ring->header->flags, MDS_FLAG_PRODUCER_DETACHED);
        mds_store_release_u64(&ring->header->producer_token, 0);
        mds_platform_role_unlock(ring, MDS_LOCK_PRODUCER);
        mds_fetch_add_u32(&ring->header->data_event, 1);
        mds_platform_wake_u32(&ring->header->data_event);
        ring->prod.claimed = 0;
    }
    if (ring->cons.claimed) {
        mds_fetch_or_u32(&ring->header->flags, MDS_FLAG_CONSUMER_DETACHED);
        mds_store_release_u64(&ring->header->consumer_token, 0);
        mds_platform_role_unlock(ring, MDS_LOCK_CONSUMER);
        mds_fetch_add_u32(&ring->header->space_event, 1);
        mds_platform_wake_u32(&ring->header->space_event);
        ring->cons.claimed = 0;
    }
    mds_platform_unmap(ring);
    ring->header = NULL;
    ring->data = NULL;
}

int mds_ring_unlink(const char *name, mds_error *err) { return mds_platform_unlink(name, err); }

uint32_t mds_ring_state(const mds_ring *ring) { return mds_load_acquire_u32(&ring->header->state); }

void mds_ring_abort_info(const mds_ring *ring, int32_t *code, char *reason, size_t reason_size) {
    uint32_t state = mds_load_acquire_u32(&ring->header->state);
    int spins = 0;
    /* An abort in progress writes its reason (a few hundred bytes) before
     * publishing ABORTED: a short spin covers that.  An aborter that died in
     * between leaves ABORTING for good, so then sleep a little instead of
     * burning the CPU, and report what is there. */
    while (state == MDS_STATE_ABORTING && spins < 1010) {
        if (spins++ < 1000) mds_cpu_relax();
        else mds_platform_wait_u32((uint32_t *)&ring->header->state, MDS_STATE_ABORTING, 100000ull);
        state = mds_load_acquire_u32(&ring->header->state);
    }
    if (code) *code = (int32_t)mds_load_relaxed_u32((uint32_t *)&ring->header->abort_code);
    if (reason && reason_size) {
        size_t n = reason_size - 1 < MDS_RING_REASON_SIZE - 1 ? reason_size - 1 : MDS_RING_REASON_SIZE - 1;
        memcpy(reason, ring->header->abort_reason, n);
        reason[n] = '\0';
        reason[strnlen(reason, n)] = '\0';
    }
}

static int role_pid(const mds_ring_header *h, int role) {
    if (role == MDS_ROLE_PRODUCER) return (int)mds_load_acquire_u32(&h->producer_pid);
    if (role == MDS_ROLE_CONSUMER) return (int)mds_load_acquire_u32(&h->consumer_pid);
    return (int)h->creator_pid;
}

static unsigned role_lock_byte(int role) {
    return role == MDS_ROLE_PRODUCER ? MDS_LOCK_PRODUCER : role == MDS_ROLE_CONSUMER ? MDS_LOCK_CONSUMER : MDS_LOCK_CREATOR;
}

static uint32_t role_locked_flag(int role) {
    return role == MDS_ROLE_PRODUCER ? MDS_FLAG_PRODUCER_LOCKED
           : role == MDS_ROLE_CONSUMER ? MDS_FLAG_CONSUMER_LOCKED : MDS_FLAG_CREATOR_LOCKED;
}

int mds_ring_role_alive(mds_ring *ring, int role) {
    uint32_t pid;
    int answer;
    if (ring->header == NULL) return MDS_UNKNOWN;
    /* Held by this very handle (another thread of ours may hold the other
     * role): the token says so without touching that side's local state. */
    if ((role == MDS_ROLE_PRODUCER && mds_load_acquire_u64(&ring->header->producer_token) == ring->token) ||
        (role == MDS_ROLE_CONSUMER && mds_load_acquire_u64(&ring->header->consumer_token) == ring->token) ||
        (role == MDS_ROLE_CREATOR && ring->is_owner && mds_ring_owned_by_this_process(ring)))
        return MDS_ALIVE;
    /* The lock answers only when its holder took one (a Windows or Wine peer
     * takes none): else the pid. */
    if (mds_load_acquire_u32(&ring->header->flags) & role_locked_flag(role)) {
        answer = mds_platform_role_alive(ring, role_lock_byte(role));
        if (answer != MDS_UNKNOWN) return answer;
    }
    pid = (uint32_t)role_pid(ring->header, role);
    if (pid == 0) return MDS_UNKNOWN;
    return mds_pid_alive(pid) ? MDS_ALIVE : MDS_GONE;
}

int mds_ring_probe_stale(const char *name, int *stale, uint32_t *creator_pid, mds_error *err) {
    return mds_platform_probe_stale(name, stale, creator_pid, err);
}

int mds_ring_remove_stale(const char *name, int *removed, mds_error *err) {
    return mds_platform_remove_stale(name, removed, err);
}

static int claim(uint64_t *token_field, uint32_t *pid_field, int role, mds_ring *ring, const char *role_name,
                 mds_error *err) {
    uint64_t expected = 0;
    int rc, locked = 0;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    if (mds_load_acquire_u32(&ring->closing)) return mds_set_error(err, MDS_ERR_CLOSED, 0, "the ring is being closed");
    /* The lock first: a token is never visible without a live holder's lock,
     * so "token set, lock free" always means the holder died. */
    rc = mds_platform_role_lock(ring, role_lock_byte(role), &locked, err);
    if (rc == MDS_ERR_BUSY)
        return mds_set_error(err, MDS_ERR_BUSY, 0, "ring %s already has a %s (pid %u)",
                             ring->path[0] ? ring->path : "(anonymous)", role_name, mds_load_acquire_u32(pid_field));
    if (rc != MDS_OK) return rc;
    if (mds_cas_u64(token_field, &expected, ring->token) || expected == ring->token) {
        mds_store_release_u32(pid_field, ring->pid);
        if (locked) mds_fetch_or_u32(&ring->header->flags, role_locked_flag(role));
        return MDS_OK;
    }
    mds_platform_role_unlock(ring, role_lock_byte(role));
    if (mds_ring_role_alive(ring, role) == MDS_GONE)
        return mds_set_error(err, MDS_ERR_USED, 0,
                             "ring %s had a %s (pid %u) that is gone: a ring carries one dump, use a new ring",
                             ring->path[0] ? ring->path : "(anonymous)", role_name, mds_load_acquire_u32(pid_field));
    return mds_set_error(err, MDS_ERR_BUSY, 0, "ring %s already has a %s (pid %u)",
                         ring->path[0] ? ring->path : "(anonymous)", role_name, mds_load_acquire_u32(pid_field));
}

static void release_claim(uint64_t *token_field, int role, mds_ring *ring) {
    mds_store_release_u64(token_field, 0);
    mds_platform_role_unlock(ring, role_lock_byte(role));
}

static void write_begin(mds_ring *ring) {
    mds_record_header *rec = (mds_record_header *)ring->data;
    mds_begin_payload begin;
    uint64_t id;
    do id = mds_platform_random64();
    while (id == 0);
    memset(&begin, 0, sizeof begin);
    begin.dump_id = id;
    begin.begun_unix_ns = mds_platform_realtime_ns();
    begin.producer_pid = ring->pid;
    mds_store_release_u64(&ring->header->dump_id, id);
    rec->offset = 0;
    rec->length = MDS_BEGIN_PAYLOAD;
    rec->kind = MDS_RECORD_BEGIN;
    memcpy((uint8_t *)rec + MDS_RING_RECORD_HEADER, &begin, sizeof begin);
    ring->prod.dump_id = id;
    ring->prod.records = ring->prod.bytes = ring->prod.highest_end = 0;
    ring->prod.checksum = mds_stream_seed(id);
    ring->prod.wpos = MDS_RING_RECORD_HEADER + MDS_BEGIN_PAYLOAD;
    ring->prod.records_pending = 1;
    ring->prod.open_record = NO_RECORD;
    mds_ring_flush(ring);
}

int mds_ring_claim_producer(mds_ring *ring, mds_error *err) {
    int rc;
    if (ring->prod.claimed) {
        /* This handle began the ring's dump: going on is fine while it is open,
         * a second dump after it ended or failed is not (one dump per ring). */
        uint32_t state = mds_load_acquire_u32(&ring->header->state);
        if (!ring->prod.ended && state == MDS_STATE_OPEN) return MDS_OK;
        return mds_set_error(err, MDS_ERR_USED, 0,
                             "ring %s already carried a dump (state %u): a ring carries one dump, use a new ring",
                             ring->path[0] ? ring->path : "(anonymous)", state);
    }
    rc = claim(&ring->header->producer_token, &ring->header->producer_pid, MDS_ROLE_PRODUCER, ring, "producer", err);
    if (rc != MDS_OK) return rc;
    {
        /* One dump per ring: only a ring nobody produced into can begin one.
         * The positions are re-read here, never trusted from attach. */
        uint64_t write_pos = mds_load_acquire_u64(&ring->header->write_pos);
        uint64_t read_pos = mds_load_acquire_u64(&ring->header->read_pos);
        uint32_t state = mds_load_acquire_u32(&ring->header->state);
        if (write_pos != 0 || read_pos != 0 || state != MDS_STATE_OPEN ||
            mds_load_acquire_u64(&ring->header->dump_id) != 0) {
            release_claim(&ring->header->producer_token, MDS_ROLE_PRODUCER, ring);
            if (state >= MDS_STATE_ABORTING && state <= MDS_STATE_ABORTED) return abort_status(ring, err);
            return mds_set_error(err, MDS_ERR_USED, 0,
                                 "ring %s already carries a dump (state %u, %llu bytes written): a ring carries one dump, "
                                 "use a new ring", ring->path[0] ? ring->path : "(anonymous)", state,
                                 (unsigned long long)write_pos);
        }
        ring->prod.published = 0;
        ring->prod.read_cached = 0;
    }
    ring->prod.claimed = 1;
    ring->prod.ended = 0;
    mds_store_relaxed_u64(&ring->header->producer_heartbeat_ns, mds_now_ns());
    /* A producer that cannot spill never reads the consumer's output: a
     * consumer that fails may remove it at once. */
    if (!ring->prod.may_spill) mds_fetch_or_u32(&ring->header->flags, MDS_FLAG_OUTPUT_RELEASED);
    write_begin(ring);
    return MDS_OK;
}

int mds_ring_claim_consumer(mds_ring *ring, mds_error *err) {
    int rc;
    if (ring->cons.claimed) return MDS_OK;
    rc = claim(&ring->header->consumer_token, &ring->header->consumer_pid, MDS_ROLE_CONSUMER, ring, "consumer", err);
    if (rc != MDS_OK) return rc;
    ring->cons.claimed = 1;
    ring->cons.cursor = ring->cons.released = mds_load_acquire_u64(&ring->header->read_pos);
    ring->cons.seen_begin = ring->cons.seen_end = 0;
    mds_store_relaxed_u64(&ring->header->consumer_heartbeat_ns, mds_now_ns());
    return MDS_OK;
}

void mds_ring_set_producer_options(mds_ring *ring, int coalesce, uint64_t publish_bytes) {
    ring->prod.coalesce = coalesce;
    if (publish_bytes > ring->capacity / 4) publish_bytes = ring->capacity / 4;
    ring->prod.publish_bytes = publish_bytes;
}

/* Fold the open record (now final) into the dump's totals for END. */
static inline void close_open_record(mds_ring *ring) {
    if (ring->prod.open_record != NO_RECORD) {
        uint64_t length = ring->prod.open_length;
        uint64_t start = ring->prod.open_end_offset - length;
        ring->prod.records++;
        ring->prod.bytes += length;
        if (ring->prod.open_end_offset > ring->prod.highest_end) ring->prod.highest_end = ring->prod.open_end_offset;
        ring->prod.checksum = mds_stream_fold(ring->prod.checksum, start, length);
        ring->prod.open_record = NO_RECORD;
    }
}

void mds_ring_flush(mds_ring *ring) {
    mds_ring_header *h = ring->header;
    close_open_record(ring);
    if (ring->prod.wpos == ring->prod.published) return;
    mds_store_release_u64(&h->write_pos, ring->prod.wpos);
    ring->prod.published = ring->prod.wpos;
    mds_store_relaxed_u64(&h->records_written, mds_load_relaxed_u64(&h->records_written) + ring->prod.records_pending);
    ring->prod.records_pending = 0;
    mds_fence_seqcst();
    if (mds_load_relaxed_u32(&h->consumer_waiting)) {
        mds_fetch_add_u32(&h->data_event, 1);
        mds_platform_wake_u32(&h->data_event);
    }
}

static int faulted_status(const mds_ring *ring, const char *side, mds_error *err) {
    return mds_set_error(err, MDS_ERR_CORRUPT, 0,
                         "ring file %s was truncated under the %s: its contents since are lost", ring->path, side);
}

/* The SIGBUS guard (platform_posix.c) raises the flag; Windows cannot shrink a
 * mapped file and leaves fault_flag NULL.  One load on the write path. */
static inline int mapping_faulted(const mds_ring *ring) {
    return ring->fault_flag != NULL && mds_load_acquire_u32(ring->fault_flag) != 0;
}

int mds_ring_faulted(const mds_ring *ring) { return ring->header != NULL && mapping_faulted(ring); }

static int abort_status(mds_ring *ring, mds_error *err) {
    int32_t code;
    char reason[MDS_RING_REASON_SIZE];
    mds_ring_abort_info(ring, &code, reason, sizeof reason);
    mds_set_error(err, MDS_ERR_ABORTED, 0, "%s", reason);
    if (err) err->abort_code = code;
    return MDS_ERR_ABORTED;
}

static int closed_status(mds_error *err) {
    return mds_set_error(err, MDS_ERR_CLOSED, 0, "the ring is being closed by another thread");
}

/* Is the consumer gone?  Its role lock (or pid) says so; a consumer that
 * never came is not gone, only late. */
static int consumer_gone(mds_ring *ring, mds_error *err) {
    mds_ring_header *h = ring->header;
    if (mds_load_acquire_u32(&h->flags) & MDS_FLAG_CONSUMER_DETACHED)
        return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the consumer closed the ring");
    if (mds_load_acquire_u64(&h->consumer_token) != 0 && mds_ring_role_alive(ring, MDS_ROLE_CONSUMER) == MDS_GONE)
        return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the consumer process %u is gone",
                             mds_load_acquire_u32(&h->consumer_pid));
    return MDS_OK;
}

/* Wait until [pos, pos+need) is free.  Publishes pending records first: the
 * consumer cannot free space it cannot see.  The wait ends at the earlier of
 * *deadline and (first wait + timeout_ns). */
static int wait_for_space(mds_ring *ring, uint64_t pos, uint64_t need, uint64_t *deadline, uint64_t timeout_ns,
                          mds_error *err) {
    uint64_t deadline_ns = *deadline;
    mds_ring_header *h = ring->header;
    uint64_t next_liveness_check = 0, spin_until = 0, waited_from = 0;
    int spins = 0, rc = MDS_OK;
    for (;;) {
        uint64_t read_pos = mds_load_acquire_u64(&h->read_pos);
        uint32_t state, seq;
        uint64_t now;
        if (mapping_faulted(ring)) {
            rc = faulted_status(ring, "producer", err);
            break;
        }
        if (read_pos > pos || pos - read_pos > ring->capacity) {
            rc = mds_set_error(err, MDS_ERR_CORRUPT, 0, "read position %llu is outside [write-%llu, write %llu]",
                               (unsigned long long)read_pos, (unsigned long long)ring->capacity, (unsigned long long)pos);
            break;
        }
        ring->prod.read_cached = read_pos;
        if (pos + need - read_pos <= ring->capacity) break;
        mds_ring_flush(ring);
        if (mds_load_acquire_u32(&ring->closing)) {
            rc = closed_status(err);
            break;
        }
        state = mds_load_acquire_u32(&h->state);
        if (state != MDS_STATE_OPEN) {
            rc = state == MDS_STATE_ABORTING || state == MDS_STATE_ABORTED
                     ? abort_status(ring, err)
                     : mds_set_error(err, MDS_ERR_CORRUPT, 0, "the ring left the open state (%u) while the producer wrote", state);
            break;
        }
        now = mds_now_ns();
        if (waited_from == 0) waited_from = now;
        /* A short spin catches a consumer that is about to release. */
        if (spins == 0) spin_until = now + SPIN_NS;
        if (++spins < 1000000 && now < spin_until) {
            int i;
            for (i = 0; i < 64; i++) mds_cpu_relax();
            continue;
        }
        /* A relative timeout starts at the first real wait: the fast path
         * never reads the clock. */
        if (timeout_ns != 0 && (deadline_ns == 0 || now + timeout_ns < deadline_ns)) deadline_ns = *deadline = now + timeout_ns;
        timeout_ns = 0;
        if (deadline_ns && now >= deadline_ns) {
            rc = mds_set_error(err, MDS_ERR_TIMEOUT, 0, "no space in the ring before the deadline (%llu bytes pending)",
                               (unsigned long long)(pos - read_pos));
            break;
        }
        if (now >= next_liveness_check) {
            if ((rc = consumer_gone(ring, err)) != MDS_OK) break;
            mds_store_relaxed_u64(&h->producer_heartbeat_ns, now);
            next_liveness_check = now + LIVENESS_INTERVAL_NS;
        }
        seq = mds_load_acquire_u32(&h->space_event);
        mds_store_seqcst_u32(&h->producer_waiting, 1);
        if (pos + need - mds_load_acquire_u64(&h->read_pos) > ring->capacity &&
            mds_load_acquire_u32(&h->state) == MDS_STATE_OPEN && !mds_load_acquire_u32(&ring->closing)) {
            uint64_t slice = WAIT_SLICE_NS;
            if (deadline_ns && deadline_ns - now < slice) slice = deadline_ns - now;
            mds_platform_wait_u32(&h->space_event, seq, slice);
        }
        mds_store_relaxed_u32(&h->producer_waiting, 0);
    }
    if (waited_from) ring->prod.waited_ns += mds_now_ns() - waited_from;
    return rc;
}

/* Room for one record of total bytes at the producer's position (with the
 * padding that may precede it): returns the record's position. */
static int reserve(mds_ring *ring, uint64_t total, uint64_t *deadline_ns, uint64_t timeout_ns, uint64_t *at,
                   mds_error *err) {
    uint64_t pos = ring->prod.wpos;
    uint64_t to_end = ring->capacity - (pos & ring->mask);
    uint64_t need = total > to_end ? to_end + total : total;
    if (pos + need - ring->prod.read_cached > ring->capacity) {
        int rc = wait_for_space(ring, pos, need, deadline_ns, timeout_ns, err);
        if (rc != MDS_OK) return rc;
    }
    if (total > to_end) {
        mds_record_header *pad = (mds_record_header *)(ring->data + (pos & ring->mask));
        pad->offset = 0;
        pad->length = (uint32_t)(to_end - MDS_RING_RECORD_HEADER);
        pad->kind = MDS_RECORD_PAD;
        pos += to_end;
    }
    *at = pos;
    return MDS_OK;
}

/* Extend the open (unpublished) record when this write continues it and it
 * still fits without crossing the wrap or the free space. */
static int try_coalesce(mds_ring *ring, uint64_t offset, const void *data, uint64_t length) {
    uint64_t rec_pos = ring->prod.open_record;
    mds_record_header *rec;
    uint64_t new_len, new_end, wrap;
    if (rec_pos == NO_RECORD || ring->prod.open_end_offset != offset) return 0;
    rec = (mds_record_header *)(ring->data + (rec_pos & ring->mask));
    new_len = ring->prod.open_length + length;
    if (new_len > ring->max_payload) return 0;
    new_end = rec_pos + record_total(new_len);
    wrap = (rec_pos | ring->mask) + 1;
    if (new_end > wrap) return 0;
    if (new_end - ring->prod.read_cached > ring->capacity) {
        ring->prod.read_cached = mds_load_acquire_u64(&ring->header->read_pos);
        if (new_end - ring->prod.read_cached > ring->capacity) return 0;
    }
    /* The length comes from our own state, never read back from the shared
     * mapping, where a peer could have rewritten it. */
    memcpy((uint8_t *)rec + MDS_RING_RECORD_HEADER + ring->prod.open_length, data, (size_t)length);
    rec->length = (uint32_t)new_len;
    ring->prod.open_length = new_len;
    ring->prod.wpos = new_end;
    ring->prod.open_end_offset = offset + length;
    return 1;
}

static int write_records(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                         uint64_t deadline_ns, uint64_t timeout_ns, mds_error *err) {
    mds_ring_header *h = ring->header;
    const uint8_t *src = (const uint8_t *)data;
    int first = 1;
    uint32_t state;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    if (!ring->prod.claimed) {
        int rc = mds_ring_claim_producer(ring, err);
        if (rc != MDS_OK) return rc;
    }
    if (length > 0 && data == NULL) return mds_set_error(err, MDS_ERR_ARG, 0, "NULL buffer with %llu bytes", (unsigned long long)length);
    if (offset > UINT64_MAX - length)
        return mds_set_error(err, MDS_ERR_ARG, 0, "offset %llu + length %llu overflows 64 bits",
                             (unsigned long long)offset, (unsigned long long)length);
    if (mds_load_relaxed_u32(&ring->closing)) return closed_status(err);
    state = mds_load_acquire_u32(&h->state);
    if (state != MDS_STATE_OPEN || ring->prod.ended) {
        if (state == MDS_STATE_ABORTING || state == MDS_STATE_ABORTED) return abort_status(ring, err);
        return mds_set_error(err, MDS_ERR_FINISHED, 0, "write after the ring was finished");
    }
    if (ring->prod.coalesce && length > 0 && try_coalesce(ring, offset, data, length)) goto written;

    while (first || length > 0) {
        uint64_t chunk = length < ring->max_payload ? length : ring->max_payload;
        uint64_t total = record_total(chunk);
        uint64_t pos;
        mds_record_header *rec;
        int rc;
        first = 0;
        if ((rc = reserve(ring, total, &deadline_ns, timeout_ns, &pos, err)) != MDS_OK) return rc;
        close_open_record(ring);
        rec = (mds_record_header *)(ring->data + (pos & ring->mask));
        rec->offset = offset;
        rec->length = (uint32_t)chunk;
        rec->kind = MDS_RECORD_DATA;
        if (chunk) memcpy((uint8_t *)rec + MDS_RING_RECORD_HEADER, src, (size_t)chunk);
        ring->prod.wpos = pos + total;
        ring->prod.records_pending++;
        ring->prod.open_record = pos;
        ring->prod.open_length = chunk;
        ring->prod.open_end_offset = offset + chunk;
        offset += chunk;
        src += chunk;
        length -= chunk;
        if (length > 0) mds_ring_flush(ring);
    }
written:
    /* One load: the SIGBUS guard absorbed a store into a shrunk file. */
    if (mapping_faulted(ring)) return faulted_status(ring, "producer", err);
    if (ring->prod.wpos - ring->prod.published >= ring->prod.publish_bytes) mds_ring_flush(ring);
    return MDS_OK;
}

int mds_ring_write(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                   uint64_t deadline_ns, mds_error *err) {
    return write_records(ring, offset, data, length, deadline_ns, 0, err);
}

int mds_ring_write_timeout(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                           uint64_t timeout_ns, mds_error *err) {
    return write_records(ring, offset, data, length, 0, timeout_ns, err);
}

int mds_ring_write_bounded(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                           uint64_t deadline_ns, uint64_t timeout_ns, mds_error *err) {
    return write_records(ring, offset, data, length, deadline_ns, timeout_ns, err);
}

int mds_ring_end(mds_ring *ring, uint64_t timeout_ns, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint32_t expected = MDS_STATE_OPEN;
    uint64_t deadline = 0, pos;
    mds_record_header *rec;
    mds_end_payload end;
    int rc;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    if (!ring->prod.claimed) {
        rc = mds_ring_claim_producer(ring, err);
        if (rc != MDS_OK) return rc;
    }
    if (ring->prod.ended) return MDS_OK;
    expected = mds_load_acquire_u32(&h->state);
    if (expected != MDS_STATE_OPEN) {
        if (expected == MDS_STATE_ABORTING || expected == MDS_STATE_ABORTED) return abort_status(ring, err);
        return mds_set_error(err, MDS_ERR_CORRUPT, 0, "the ring left the open state (%u) before the producer ended it",
                             expected);
    }
    mds_ring_flush(ring); /* folds the last record */
    if ((rc = reserve(ring, record_total(MDS_END_PAYLOAD), &deadline, timeout_ns, &pos, err)) != MDS_OK) return rc;
    memset(&end, 0, sizeof end);
    end.dump_id = ring->prod.dump_id;
    end.records = ring->prod.records;
    end.bytes = ring->prod.bytes;
    end.highest_end = ring->prod.highest_end;
    end.checksum = ring->prod.checksum;
    rec = (mds_record_header *)(ring->data + (pos & ring->mask));
    rec->offset = 0;
    rec->length = MDS_END_PAYLOAD;
    rec->kind = MDS_RECORD_END;
    memcpy((uint8_t *)rec + MDS_RING_RECORD_HEADER, &end, sizeof end);
    ring->prod.wpos = pos + record_total(MDS_END_PAYLOAD);
    ring->prod.records_pending++;
    mds_ring_flush(ring);
    if (mapping_faulted(ring)) return faulted_status(ring, "producer", err);
    expected = MDS_STATE_OPEN;
    if (!mds_cas_u32(&h->state, &expected, MDS_STATE_FINISHED)) return abort_status(ring, err);
    ring->prod.ended = 1;
    mds_fence_seqcst();
    mds_fetch_add_u32(&h->data_event, 1);
    mds_platform_wake_u32(&h->data_event);
    return MDS_OK;
}

int mds_ring_wait_committed(mds_ring *ring, uint64_t deadline_ns, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint64_t next_liveness_check = 0;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    for (;;) {
        uint32_t state = mds_load_acquire_u32(&h->state), seq;
        uint64_t now;
        int rc;
        if (state == MDS_STATE_COMMITTED) {
            mds_ring_set_outcome(ring, MDS_OUTCOME_COMMITTED);
            return MDS_OK;
        }
        if (state == MDS_STATE_ABORTING || state == MDS_STATE_ABORTED) return abort_status(ring, err);
        if (state == MDS_STATE_OPEN) return mds_set_error(err, MDS_ERR_ARG, 0, "the dump was not ended (mds_ring_end)");
        if (mds_load_acquire_u32(&ring->closing)) return closed_status(err);
        if (mapping_faulted(ring)) return faulted_status(ring, "producer", err);
        now = mds_now_ns();
        if (deadline_ns && now >= deadline_ns)
            return mds_set_error(err, MDS_ERR_TIMEOUT, 0, "the consumer did not commit the dump before the deadline%s",
                                 state == MDS_STATE_COMMITTING ? " (it was publishing it)" : "");
        if (now >= next_liveness_check) {
            /* A consumer that committed may detach right after: re-read the state first. */
            rc = consumer_gone(ring, err);
            if (rc != MDS_OK && mds_load_acquire_u32(&h->state) != MDS_STATE_COMMITTED) return rc;
            mds_store_relaxed_u64(&h->producer_heartbeat_ns, now);
            next_liveness_check = now + LIVENESS_INTERVAL_NS;
        }
        seq = mds_load_acquire_u32(&h->space_event);
        mds_store_seqcst_u32(&h->producer_waiting, 1);
        state = mds_load_acquire_u32(&h->state);
        if ((state == MDS_STATE_FINISHED || state == MDS_STATE_COMMITTING) && !mds_load_acquire_u32(&ring->closing)) {
            uint64_t slice = WAIT_SLICE_NS;
            if (deadline_ns && deadline_ns - now < slice) slice = deadline_ns - now;
            mds_platform_wait_u32(&h->space_event, seq, slice);
        }
        mds_store_relaxed_u32(&h->producer_waiting, 0);
    }
}

int mds_ring_finish(mds_ring *ring, uint64_t timeout_ns, mds_error *err) {
    uint64_t deadline = timeout_ns ? mds_now_ns() + timeout_ns : 0;
    int rc = mds_ring_end(ring, timeout_ns, err);
    if (rc != MDS_OK) return rc;
    return mds_ring_wait_committed(ring, deadline, err);
}

int mds_ring_abort(mds_ring *ring, int32_t code, const char *reason) {
    mds_ring_header *h = ring->header;
    uint32_t state = mds_load_acquire_u32(&h->state);
    if (!mds_ring_owned_by_this_process(ring)) return MDS_ERR_CLOSED; /* roles belong to a process */
    for (;;) {
        if (state == MDS_STATE_ABORTING || state == MDS_STATE_ABORTED) return MDS_ERR_ABORTED; /* first abort wins */
        if (state == MDS_STATE_COMMITTED) return MDS_ERR_FINISHED;                             /* too late: it is safe */
        if (mds_cas_u32(&h->state, &state, MDS_STATE_ABORTING)) break;
    }
    h->abort_code = code;
    memset(h->abort_reason, 0, sizeof h->abort_reason);
    if (reason) {
        size_t n = strlen(reason);
        if (n > MDS_RING_REASON_SIZE - 1) n = MDS_RING_REASON_SIZE - 1;
        memcpy(h->abort_reason, reason, n);
    }
    mds_store_seqcst_u32(&h->state, MDS_STATE_ABORTED);
    wake_everyone(h);
    return MDS_OK;
}

void mds_ring_set_outcome(mds_ring *ring, uint32_t outcome) {
    mds_ring_header *h = ring->header;
    if (h == NULL || !mds_ring_owned_by_this_process(ring)) return;
    mds_store_seqcst_u32(&h->outcome, outcome);
    mds_fetch_add_u32(&h->data_event, 1);
    mds_platform_wake_u32(&h->data_event);
}

/* ---- consumer ----------------------------------------------------------- */

static int ended_state(uint32_t state) {
    return state == MDS_STATE_FINISHED || state == MDS_STATE_COMMITTING || state == MDS_STATE_COMMITTED;
}

int mds_ring_poll(mds_ring *ring, uint64_t *start, uint64_t *end, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint64_t cursor = ring->cons.cursor;
    uint64_t write_pos, wrap;
    uint32_t state;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    /* A file shrunk under us would turn the next access into SIGBUS. */
    if (mds_platform_check_mapping(ring, err) != MDS_OK) return err->status;
    if (mapping_faulted(ring)) return faulted_status(ring, "consumer", err);
    write_pos = mds_load_acquire_u64(&h->write_pos);
    if (write_pos == cursor) {
        state = mds_load_acquire_u32(&h->state);
        if (state == MDS_STATE_ABORTING || state == MDS_STATE_ABORTED) return abort_status(ring, err);
        if (!ended_state(state)) return MDS_EMPTY;
        /* FINISHED is stored after the END record was published: re-read. */
        write_pos = mds_load_acquire_u64(&h->write_pos);
        if (write_pos == cursor) {
            if (ring->cons.seen_end) return MDS_END;
            return mds_set_error(err, MDS_ERR_CORRUPT, 0,
                                 "the ring says the dump finished but no END record arrived (%llu records, %llu bytes "
                                 "taken): truncated or forged; not published",
                                 (unsigned long long)ring->cons.records, (unsigned long long)ring->cons.bytes);
        }
    } else {
        state = mds_load_relaxed_u32(&h->state);
        if (state == MDS_STATE_ABORTING || state == MDS_STATE_ABORTED) return abort_status(ring, err);
    }
    if (write_pos < cursor || write_pos - ring->cons.released > ring->capacity || (write_pos & (MDS_RING_RECORD_ALIGN - 1)))
        return mds_set_error(err, MDS_ERR_CORRUPT, 0, "write position %llu is outside [%llu, %llu]",
                             (unsigned long long)write_pos, (unsigned long long)cursor,
                             (unsigned long long)(ring->cons.released + ring->capacity));
    wrap = (cursor | ring->mask) + 1;
    *start = cursor;
    *end = write_pos < wrap ? write_pos : wrap;
    return MDS_OK;
}

static void publish_output(mds_ring *ring) {
    mds_ring_header *h = ring->header;
    size_t n = strnlen(ring->cons.output, sizeof ring->cons.output);
    /* The dump id last (release): a spilling producer reads it first
     * (acquire) and only then trusts the path and identity. */
    mds_store_release_u64(&h->output_dump_id, 0);
    memset(h->consumer_output, 0, sizeof h->consumer_output);
    if (n == 0) return;
    memcpy(h->consumer_output, ring->cons.output, n);
    mds_store_relaxed_u64(&h->output_device, ring->cons.output_device);
    mds_store_relaxed_u64(&h->output_inode, ring->cons.output_inode);
    mds_store_release_u64(&h->output_dump_id, ring->cons.dump_id);
}

static int take_error(uint64_t at, mds_error *err, const char *what) {
    return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record at ring position %llu: %s", (unsigned long long)at, what);
}

int mds_ring_take(mds_ring *ring, uint64_t start, uint64_t end, uint64_t *data_records, uint64_t *data_bytes,
                  uint64_t *highest_end, mds_error *err) {
    const uint8_t *span = mds_ring_at(ring, start);
    uint64_t span_len = end - start, pos = 0, records = 0, bytes = 0, high = 0;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    *data_records = *data_bytes = *highest_end = 0;
    if (end < start || span_len > ring->capacity || start != ring->cons.cursor)
        return mds_set_error(err, MDS_ERR_ARG, 0, "take: [%llu, %llu) is not the span at the cursor",
                             (unsigned long long)start, (unsigned long long)end);
    while (pos < span_len) {
        mds_record_header hdr;
        uint64_t total, at = start + pos;
        if (span_len - pos < MDS_RING_RECORD_HEADER)
            return take_error(at, err, "header runs past the published end");
        memcpy(&hdr, span + pos, sizeof hdr); /* copied, then checked: the mapping is shared */
        total = record_total(hdr.length);
        if (hdr.kind == MDS_RECORD_PAD) {
            if (total != span_len - pos) return take_error(at, err, "padding does not end at the wrap");
            break;
        }
        if (total > span_len - pos) return take_error(at, err, "payload runs past the published end");
        if (hdr.kind == MDS_RECORD_DATA) {
            if (!ring->cons.seen_begin)
                return take_error(at, err,
                                  at == 0 ? "data before the BEGIN record"
                                          : "the consumer joined the dump after it began (an earlier consumer "
                                            "released its start); a ring carries one dump for one consumer");
            if (ring->cons.seen_end) return take_error(at, err, "data after the END record");
            if (hdr.offset > UINT64_MAX - hdr.length) return take_error(at, err, "offset + length overflows");
            ring->cons.checksum = mds_stream_fold(ring->cons.checksum, hdr.offset, hdr.length);
            records++;
            bytes += hdr.length;
            if (hdr.offset + hdr.length > high) high = hdr.offset + hdr.length;
        } else if (hdr.kind == MDS_RECORD_BEGIN) {
            mds_begin_payload begin;
            if (ring->cons.seen_begin) return take_error(at, err, "a second dump began in the same ring");
            if (at != 0) return take_error(at, err, "BEGIN is not the ring's first record");
            if (hdr.length != MDS_BEGIN_PAYLOAD) return take_error(at, err, "BEGIN has the wrong size");
            memcpy(&begin, span + pos + MDS_RING_RECORD_HEADER, sizeof begin);
            if (begin.dump_id == 0 || begin.dump_id != mds_load_acquire_u64(&ring->header->dump_id))
                return take_error(at, err, "BEGIN's dump id does not match the ring's");
            ring->cons.seen_begin = 1;
            ring->cons.dump_id = begin.dump_id;
            ring->cons.checksum = mds_stream_seed(begin.dump_id);
            ring->cons.records = ring->cons.bytes = ring->cons.highest_end = 0;
            if (ring->cons.output_pending) publish_output(ring); /* before anything of the dump is released */
        } else if (hdr.kind == MDS_RECORD_END) {
            mds_end_payload e;
            if (!ring->cons.seen_begin) return take_error(at, err, "END before BEGIN");
            if (ring->cons.seen_end) return take_error(at, err, "a second END record");
            if (hdr.length != MDS_END_PAYLOAD) return take_error(at, err, "END has the wrong size");
            memcpy(&e, span + pos + MDS_RING_RECORD_HEADER, sizeof e);
            {
                uint64_t got_records = ring->cons.records + records, got_bytes = ring->cons.bytes + bytes;
                uint64_t got_high = high > ring->cons.highest_end ? high : ring->cons.highest_end;
                if (e.dump_id != ring->cons.dump_id || e.records != got_records || e.bytes != got_bytes ||
                    e.highest_end != got_high || e.checksum != ring->cons.checksum)
                    return mds_set_error(err, MDS_ERR_CORRUPT, 0,
                                         "the END record does not match what arrived (END: %llu records, %llu bytes, "
                                         "end %llu; received: %llu records, %llu bytes, end %llu%s); not published",
                                         (unsigned long long)e.records, (unsigned long long)e.bytes,
                                         (unsigned long long)e.highest_end, (unsigned long long)got_records,
                                         (unsigned long long)got_bytes, (unsigned long long)got_high,
                                         e.checksum != ring->cons.checksum ? ", checksums differ" : "");
            }
            ring->cons.seen_end = 1;
        } else {
            char what[64];
            snprintf(what, sizeof what, "unknown record kind 0x%08x", hdr.kind);
            return take_error(at, err, what);
        }
        pos += total;
    }
    ring->cons.records += records;
    ring->cons.bytes += bytes;
    if (high > ring->cons.highest_end) ring->cons.highest_end = high;
    ring->cons.cursor = end;
    *data_records = records;
    *data_bytes = bytes;
    *highest_end = high;
    return MDS_OK;
}

void mds_ring_advance(mds_ring *ring, uint64_t new_cursor) { ring->cons.cursor = new_cursor; }

/* Is the producer gone?  Before any producer claimed the ring, its creator
 * stands for it: nobody else would produce. */
static int producer_gone(mds_ring *ring, mds_error *err) {
    mds_ring_header *h = ring->header;
    if (mds_load_acquire_u32(&h->flags) & MDS_FLAG_PRODUCER_DETACHED)
        return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the producer closed the ring without finishing it");
    if (mds_load_acquire_u64(&h->producer_token) != 0) {
        if (mds_ring_role_alive(ring, MDS_ROLE_PRODUCER) == MDS_GONE)
            return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the producer process %u is gone",
                                 mds_load_acquire_u32(&h->producer_pid));
    } else if (mds_load_acquire_u64(&h->dump_id) == 0 && mds_ring_role_alive(ring, MDS_ROLE_CREATOR) == MDS_GONE) {
        return mds_set_error(err, MDS_ERR_PEER_GONE, 0,
                             "the producer is gone: the ring's creator (pid %u) exited before any producer attached",
                             h->creator_pid);
    } else if (mds_load_acquire_u64(&h->dump_id) != 0) {
        return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the producer left the ring without finishing the dump");
    }
    return MDS_OK;
}

int mds_ring_wait_data(mds_ring *ring, uint64_t timeout_ns, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint32_t seq;
    uint64_t now = mds_now_ns();
    uint64_t spin_until = now + SPIN_NS;
    /* A producer in full flight publishes again within microseconds: poll
     * that long before paying for a futex round trip on both sides. */
    while (mds_load_acquire_u64(&h->write_pos) == ring->cons.cursor &&
           mds_load_relaxed_u32(&h->state) == MDS_STATE_OPEN && !mds_load_relaxed_u32(&ring->closing)) {
        int i;
        for (i = 0; i < 64; i++) mds_cpu_relax();
        if (mds_now_ns() >= spin_until) break;
    }
    seq = mds_load_acquire_u32(&h->data_event);
    mds_store_seqcst_u32(&h->consumer_waiting, 1);
    if (mds_load_acquire_u64(&h->write_pos) == ring->cons.cursor &&
        mds_load_acquire_u32(&h->state) == MDS_STATE_OPEN) {
        if (mds_load_acquire_u32(&ring->closing)) {
            mds_store_relaxed_u32(&h->consumer_waiting, 0);
            return closed_status(err);
        }
        now = mds_now_ns();
        if (now >= ring->cons.next_liveness_ns) {
            int rc = producer_gone(ring, err);
            ring->cons.next_liveness_ns = now + LIVENESS_INTERVAL_NS;
            mds_store_relaxed_u64(&h->consumer_heartbeat_ns, now);
            if (rc != MDS_OK) {
                mds_store_relaxed_u32(&h->consumer_waiting, 0);
                return rc;
            }
        }
        mds_platform_wait_u32(&h->data_event, seq, timeout_ns < WAIT_SLICE_NS * 5 ? timeout_ns : WAIT_SLICE_NS * 5);
    }
    mds_store_relaxed_u32(&h->consumer_waiting, 0);
    return MDS_OK;
}

void mds_ring_release(mds_ring *ring, uint64_t new_read_pos) {
    mds_ring_header *h = ring->header;
    if (!mds_ring_owned_by_this_process(ring)) return;
    if (new_read_pos <= ring->cons.released) return;
    ring->cons.released = new_read_pos;
    mds_store_release_u64(&h->read_pos, new_read_pos);
    mds_fence_seqcst();
    if (mds_load_relaxed_u32(&h->producer_waiting)) {
        mds_fetch_add_u32(&h->space_event, 1);
        mds_platform_wake_u32(&h->space_event);
    }
}

int mds_ring_set_consumer_output(mds_ring *ring, const char *path, mds_error *err) {
    size_t n = path ? strlen(path) : 0;
    uint64_t device = 0, inode = 0;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    if (n >= MDS_RING_PATH_SIZE)
        return mds_set_error(err, MDS_ERR_ARG, 0, "consumer output path is %llu bytes (limit %u)",
                             (unsigned long long)n, MDS_RING_PATH_SIZE - 1);
    if (n && !mds_platform_path_is_absolute(path))
        return mds_set_error(err, MDS_ERR_ARG, 0, "consumer output %s is not an absolute path", path);
    if (n) {
        int rc = mds_platform_file_identity(path, &device, &inode, err);
        if (rc != MDS_OK) return rc;
    }
    if (ring->cons.released > 0 && ring->cons.seen_begin && ring->cons.records > 0)
        return mds_set_error(err, MDS_ERR_ARG, 0, "the consumer output must be named before anything is released");
    memset(ring->cons.output, 0, sizeof ring->cons.output);
    if (n) memcpy(ring->cons.output, path, n);
    ring->cons.output_device = device;
    ring->cons.output_inode = inode;
    ring->cons.output_pending = 1;
    if (ring->cons.seen_begin) publish_output(ring);
    return MDS_OK;
}

int mds_ring_commit_begin(mds_ring *ring, mds_error *err) {
    uint32_t expected = MDS_STATE_FINISHED;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    if (!ring->cons.claimed || !ring->cons.seen_end || ring->cons.cursor != mds_load_acquire_u64(&ring->header->write_pos))
        return mds_set_error(err, MDS_ERR_ARG, 0, "commit before the whole dump (up to its END record) was taken");
    if (mds_cas_u32(&ring->header->state, &expected, MDS_STATE_COMMITTING)) return MDS_OK;
    if (expected == MDS_STATE_COMMITTING) return MDS_OK;
    if (expected == MDS_STATE_ABORTING || expected == MDS_STATE_ABORTED) return abort_status(ring, err);
    return mds_set_error(err, MDS_ERR_CORRUPT, 0, "cannot commit a ring in state %u", expected);
}

int mds_ring_commit(mds_ring *ring, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint32_t expected = MDS_STATE_COMMITTING;
    int rc;
    if (!mds_ring_owned_by_this_process(ring)) return inherited_error(ring, err);
    if (!mds_cas_u32(&h->state, &expected, MDS_STATE_COMMITTED)) {
        if (expected == MDS_STATE_COMMITTED) return MDS_OK;
        if (expected != MDS_STATE_FINISHED) {
            if (expected == MDS_STATE_ABORTING || expected == MDS_STATE_ABORTED) return abort_status(ring, err);
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "cannot commit a ring in state %u", expected);
        }
        if ((rc = mds_ring_commit_begin(ring, err)) != MDS_OK) return rc;
        expected = MDS_STATE_COMMITTING;
        if (!mds_cas_u32(&h->state, &expected, MDS_STATE_COMMITTED)) return abort_status(ring, err);
    }
    mds_fence_seqcst();
    mds_fetch_add_u32(&h->space_event, 1);
    mds_platform_wake_u32(&h->space_event);
    return MDS_OK;
}

void mds_ring_release_output(mds_ring *ring) {
    if (!mds_ring_owned_by_this_process(ring)) return;
    mds_fetch_or_u32(&ring->header->flags, MDS_FLAG_OUTPUT_RELEASED);
    mds_fetch_add_u32(&ring->header->data_event, 1);
    mds_platform_wake_u32(&ring->header->data_event);
}

int mds_ring_wait_output_released(mds_ring *ring, uint64_t timeout_ns) {
    mds_ring_header *h = ring->header;
    uint64_t deadline = mds_now_ns() + timeout_ns, next_liveness_check = 0;
    if (!mds_ring_owned_by_this_process(ring)) return 0;
    for (;;) {
        uint32_t seq;
        uint64_t now;
        if ((mds_load_acquire_u32(&h->flags) & MDS_FLAG_OUTPUT_RELEASED) ||
            mds_load_acquire_u32(&h->outcome) != MDS_OUTCOME_PENDING)
            return 1;
        now = mds_now_ns();
        if (now >= deadline || mds_load_acquire_u32(&ring->closing)) return 0;
        if (now >= next_liveness_check) {
            /* A producer that left (or died) will never read it. */
            if (mds_load_acquire_u64(&h->producer_token) == 0 || mds_ring_role_alive(ring, MDS_ROLE_PRODUCER) == MDS_GONE)
                return 1;
            next_liveness_check = now + LIVENESS_INTERVAL_NS;
        }
        seq = mds_load_acquire_u32(&h->data_event);
        mds_store_seqcst_u32(&h->consumer_waiting, 1);
        if (!(mds_load_acquire_u32(&h->flags) & MDS_FLAG_OUTPUT_RELEASED) &&
            mds_load_acquire_u32(&h->outcome) == MDS_OUTCOME_PENDING)
            mds_platform_wait_u32(&h->data_event, seq, deadline - now < WAIT_SLICE_NS ? deadline - now : WAIT_SLICE_NS);
        mds_store_relaxed_u32(&h->consumer_waiting, 0);
    }
}

int mds_span_next(const uint8_t *span, uint64_t span_len, uint64_t *pos, mds_record *rec, mds_error *err) {
    for (;;) {
        uint64_t p = *pos;
        mds_record_header hdr;
        uint64_t total;
        if (p == span_len) return 0;
        if (p > span_len || span_len - p < MDS_RING_RECORD_HEADER)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record header at span byte %llu runs past the published end",
                                 (unsigned long long)p);
        memcpy(&hdr, span + p, sizeof hdr);
        total = record_total(hdr.length);
        if (hdr.kind == MDS_RECORD_PAD) {
            if (total != span_len - p)
                return mds_set_error(err, MDS_ERR_CORRUPT, 0, "padding record at span byte %llu does not end at the wrap",
                                     (unsigned long long)p);
            *pos = span_len;
            return 0;
        }
        if (total > span_len - p)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record at span byte %llu claims %u bytes, past the published end",
                                 (unsigned long long)p, hdr.length);
        if (hdr.kind == MDS_RECORD_BEGIN || hdr.kind == MDS_RECORD_END) {
            /* Framing, checked by mds_ring_take; no bytes of the dump. */
            *pos = p + total;
            continue;
        }
        if (hdr.kind != MDS_RECORD_DATA)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "unknown record kind 0x%08x at span byte %llu", hdr.kind,
                                 (unsigned long long)p);
        if (hdr.offset > UINT64_MAX - hdr.length)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record at span byte %llu: offset %llu + length overflows",
                                 (unsigned long long)p, (unsigned long long)hdr.offset);
        rec->offset = hdr.offset;
        rec->length = hdr.length;
        rec->payload_pos = p + MDS_RING_RECORD_HEADER;
        *pos = p + total;
        return 1;
    }
}
