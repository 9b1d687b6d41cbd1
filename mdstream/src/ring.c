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
 * a lost wake-up can only cost one slice, never a hang. */
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
    default: return "unknown status";
    }
}

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
    uint64_t cap = MDS_RING_MIN_CAPACITY;
    mds_ring_header *h;
    int rc;
    init_handle(ring);
    if (capacity > MDS_RING_MAX_CAPACITY)
        return mds_set_error(err, MDS_ERR_ARG, 0, "capacity %llu exceeds the maximum %llu",
                             (unsigned long long)capacity, (unsigned long long)MDS_RING_MAX_CAPACITY);
    while (cap < capacity) cap <<= 1;
    rc = mds_platform_map_create(ring, name, (size_t)(MDS_RING_HEADER_SIZE + cap), err);
    if (rc != MDS_OK) return rc;
    bind_mapping(ring, cap);
    ring->is_owner = 1;
    h = ring->header;
    /* A fresh mapping is zero-filled; set the immutable fields, then the
     * magic last so a concurrent attacher never validates a half header. */
    h->version = MDS_RING_VERSION;
    h->header_size = MDS_RING_HEADER_SIZE;
    h->capacity = cap;
    h->data_offset = MDS_RING_HEADER_SIZE;
    h->record_align = MDS_RING_RECORD_ALIGN;
    h->record_header = MDS_RING_RECORD_HEADER;
    h->max_payload = ring->max_payload;
    h->creator_pid = ring->pid;
    h->created_ns = mds_now_ns();
    mds_fence_release();
    memcpy(h->magic, MDS_RING_MAGIC, 8);
    return MDS_OK;
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
    if (h->state > MDS_STATE_ABORTED)
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

void mds_ring_close(mds_ring *ring) {
    if (ring->map_base == NULL) return;
    if (ring->prod.claimed) {
        mds_ring_flush(ring);
        if (mds_load_acquire_u32(&ring->header->state) == MDS_STATE_OPEN)
            mds_fetch_or_u32(&ring->header->flags, MDS_FLAG_PRODUCER_DETACHED);
        mds_store_release_u64(&ring->header->producer_token, 0);
        mds_fetch_add_u32(&ring->header->data_event, 1);
        mds_platform_wake_u32(&ring->header->data_event);
    }
    if (ring->cons.claimed) {
        mds_fetch_or_u32(&ring->header->flags, MDS_FLAG_CONSUMER_DETACHED);
        mds_store_release_u64(&ring->header->consumer_token, 0);
        mds_fetch_add_u32(&ring->header->space_event, 1);
        mds_platform_wake_u32(&ring->header->space_event);
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

static int claim(uint64_t *token_field, uint32_t *pid_field, mds_ring *ring, const char *role, mds_error *err) {
    uint64_t expected = 0;
    if (mds_cas_u64(token_field, &expected, ring->token) || expected == ring->token) {
        mds_store_release_u32(pid_field, ring->pid);
        return MDS_OK;
    }
    return mds_set_error(err, MDS_ERR_BUSY, 0, "ring %s already has a %s (pid %u)",
                         ring->path[0] ? ring->path : "(anonymous)", role, mds_load_acquire_u32(pid_field));
}

int mds_ring_claim_producer(mds_ring *ring, mds_error *err) {
    int rc;
    if (ring->prod.claimed) return MDS_OK;
    rc = claim(&ring->header->producer_token, &ring->header->producer_pid, ring, "producer", err);
    if (rc != MDS_OK) return rc;
    {
        /* The positions may have changed since attach validated them: the
         * producer writes at write_pos, so check them again before trusting. */
        uint64_t write_pos = mds_load_acquire_u64(&ring->header->write_pos);
        uint64_t read_pos = mds_load_acquire_u64(&ring->header->read_pos);
        if ((write_pos % MDS_RING_RECORD_ALIGN) != 0 || (read_pos % MDS_RING_RECORD_ALIGN) != 0 ||
            read_pos > write_pos || write_pos - read_pos > ring->capacity) {
            mds_store_release_u64(&ring->header->producer_token, 0);
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "inconsistent positions (read %llu, write %llu)",
                                 (unsigned long long)read_pos, (unsigned long long)write_pos);
        }
        ring->prod.wpos = ring->prod.published = write_pos;
        ring->prod.read_cached = read_pos;
    }
    ring->prod.claimed = 1;
    ring->prod.open_record = NO_RECORD;
    mds_store_relaxed_u64(&ring->header->producer_heartbeat_ns, mds_now_ns());
    return MDS_OK;
}

int mds_ring_claim_consumer(mds_ring *ring, mds_error *err) {
    int rc;
    if (ring->cons.claimed) return MDS_OK;
    rc = claim(&ring->header->consumer_token, &ring->header->consumer_pid, ring, "consumer", err);
    if (rc != MDS_OK) return rc;
    ring->cons.claimed = 1;
    ring->cons.cursor = ring->cons.released = mds_load_acquire_u64(&ring->header->read_pos);
    mds_store_relaxed_u64(&ring->header->consumer_heartbeat_ns, mds_now_ns());
    return MDS_OK;
}

void mds_ring_set_producer_options(mds_ring *ring, int coalesce, uint64_t publish_bytes) {
    ring->prod.coalesce = coalesce;
    if (publish_bytes > ring->capacity / 4) publish_bytes = ring->capacity / 4;
    ring->prod.publish_bytes = publish_bytes;
}

void mds_ring_flush(mds_ring *ring) {
    mds_ring_header *h = ring->header;
    if (ring->prod.wpos == ring->prod.published) return;
    mds_store_release_u64(&h->write_pos, ring->prod.wpos);
    ring->prod.published = ring->prod.wpos;
    ring->prod.open_record = NO_RECORD;
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

/* Wait until [pos, pos+need) is free.  Publishes pending records first: the
 * consumer cannot free space it cannot see. */
static int wait_for_space(mds_ring *ring, uint64_t pos, uint64_t need, uint64_t *deadline, uint64_t timeout_ns,
                          mds_error *err) {
    uint64_t deadline_ns = *deadline;
    mds_ring_header *h = ring->header;
    uint64_t next_liveness_check = 0, spin_until = 0;
    int spins = 0;
    for (;;) {
        uint64_t read_pos = mds_load_acquire_u64(&h->read_pos);
        uint32_t state, flags, seq;
        uint64_t now;
        if (mapping_faulted(ring)) return faulted_status(ring, "producer", err);
        if (read_pos > pos || pos - read_pos > ring->capacity)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "read position %llu is outside [write-%llu, write %llu]",
                                 (unsigned long long)read_pos, (unsigned long long)ring->capacity,
                                 (unsigned long long)pos);
        ring->prod.read_cached = read_pos;
        if (pos + need - read_pos <= ring->capacity) return MDS_OK;
        mds_ring_flush(ring);
        state = mds_load_acquire_u32(&h->state);
        if (state >= MDS_STATE_ABORTING) return abort_status(ring, err);
        flags = mds_load_acquire_u32(&h->flags);
        if (flags & MDS_FLAG_CONSUMER_DETACHED)
            return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the consumer closed the ring");
        now = mds_now_ns();
        /* A short spin catches a consumer that is about to release. */
        if (spins == 0) spin_until = now + SPIN_NS;
        if (++spins < 1000000 && now < spin_until) {
            int i;
            for (i = 0; i < 64; i++) mds_cpu_relax();
            continue;
        }
        /* A relative timeout starts at the first real wait: the fast path
         * never reads the clock. */
        if (deadline_ns == 0 && timeout_ns != 0) deadline_ns = *deadline = now + timeout_ns;
        if (deadline_ns && now >= deadline_ns)
            return mds_set_error(err, MDS_ERR_TIMEOUT, 0, "no space in the ring before the deadline (%llu bytes pending)",
                                 (unsigned long long)(pos - read_pos));
        if (now >= next_liveness_check) {
            uint32_t pid = mds_load_acquire_u32(&h->consumer_pid);
            if (pid != 0 && mds_load_acquire_u64(&h->consumer_token) != 0 && !mds_pid_alive(pid))
                return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the consumer process %u is gone", pid);
            mds_store_relaxed_u64(&h->producer_heartbeat_ns, now);
            next_liveness_check = now + LIVENESS_INTERVAL_NS;
        }
        seq = mds_load_acquire_u32(&h->space_event);
        mds_store_seqcst_u32(&h->producer_waiting, 1);
        if (pos + need - mds_load_acquire_u64(&h->read_pos) > ring->capacity &&
            mds_load_acquire_u32(&h->state) == MDS_STATE_OPEN) {
            uint64_t slice = WAIT_SLICE_NS;
            if (deadline_ns && deadline_ns - now < slice) slice = deadline_ns - now;
            mds_platform_wait_u32(&h->space_event, seq, slice);
        }
        mds_store_relaxed_u32(&h->producer_waiting, 0);
    }
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
    if (!ring->prod.claimed) {
        int rc = mds_ring_claim_producer(ring, err);
        if (rc != MDS_OK) return rc;
    }
    if (length > 0 && data == NULL) return mds_set_error(err, MDS_ERR_ARG, 0, "NULL buffer with %llu bytes", (unsigned long long)length);
    if (offset > UINT64_MAX - length)
        return mds_set_error(err, MDS_ERR_ARG, 0, "offset %llu + length %llu overflows 64 bits",
                             (unsigned long long)offset, (unsigned long long)length);
    state = mds_load_acquire_u32(&h->state);
    if (state != MDS_STATE_OPEN) {
        if (state == MDS_STATE_FINISHED) return mds_set_error(err, MDS_ERR_FINISHED, 0, "write after the ring was finished");
        return abort_status(ring, err);
    }
    if (ring->prod.coalesce && length > 0 && try_coalesce(ring, offset, data, length)) goto written;

    while (first || length > 0) {
        uint64_t chunk = length < ring->max_payload ? length : ring->max_payload;
        uint64_t total = record_total(chunk);
        uint64_t pos = ring->prod.wpos;
        uint64_t to_end = ring->capacity - (pos & ring->mask);
        uint64_t need = total > to_end ? to_end + total : total;
        mds_record_header *rec;
        first = 0;
        if (pos + need - ring->prod.read_cached > ring->capacity) {
            int rc = wait_for_space(ring, pos, need, &deadline_ns, timeout_ns, err);
            if (rc != MDS_OK) return rc;
        }
        if (total > to_end) {
            mds_record_header *pad = (mds_record_header *)(ring->data + (pos & ring->mask));
            pad->offset = 0;
            pad->length = (uint32_t)(to_end - MDS_RING_RECORD_HEADER);
            pad->kind = MDS_RECORD_PAD;
            pos += to_end;
        }
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

int mds_ring_finish(mds_ring *ring, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint32_t expected = MDS_STATE_OPEN;
    if (!ring->prod.claimed) {
        int rc = mds_ring_claim_producer(ring, err);
        if (rc != MDS_OK) return rc;
    }
    mds_ring_flush(ring);
    if (!mds_cas_u32(&h->state, &expected, MDS_STATE_FINISHED)) {
        if (expected == MDS_STATE_FINISHED) return MDS_OK;
        return abort_status(ring, err);
    }
    mds_fence_seqcst();
    mds_fetch_add_u32(&h->data_event, 1);
    mds_platform_wake_u32(&h->data_event);
    return MDS_OK;
}

int mds_ring_abort(mds_ring *ring, int32_t code, const char *reason) {
    mds_ring_header *h = ring->header;
    uint32_t expected = MDS_STATE_OPEN;
    if (!mds_cas_u32(&h->state, &expected, MDS_STATE_ABORTING)) {
        if (expected != MDS_STATE_FINISHED) return MDS_ERR_ABORTED; /* first abort wins */
        if (!mds_cas_u32(&h->state, &expected, MDS_STATE_ABORTING)) return MDS_ERR_ABORTED;
    }
    h->abort_code = code;
    memset(h->abort_reason, 0, sizeof h->abort_reason);
    if (reason) {
        size_t n = strlen(reason);
        if (n > MDS_RING_REASON_SIZE - 1) n = MDS_RING_REASON_SIZE - 1;
        memcpy(h->abort_reason, reason, n);
    }
    mds_store_seqcst_u32(&h->state, MDS_STATE_ABORTED);
    mds_fetch_add_u32(&h->data_event, 1);
    mds_platform_wake_u32(&h->data_event);
    mds_fetch_add_u32(&h->space_event, 1);
    mds_platform_wake_u32(&h->space_event);
    return MDS_OK;
}

/* ---- consumer ----------------------------------------------------------- */

int mds_ring_poll(mds_ring *ring, uint64_t *start, uint64_t *end, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint64_t cursor = ring->cons.cursor;
    uint64_t write_pos;
    /* A file shrunk under us would turn the next access into SIGBUS. */
    if (mds_platform_check_mapping(ring, err) != MDS_OK) return err->status;
    if (mapping_faulted(ring)) return faulted_status(ring, "consumer", err);
    write_pos = mds_load_acquire_u64(&h->write_pos);
    uint64_t wrap;
    if (write_pos == cursor) {
        uint32_t state = mds_load_acquire_u32(&h->state);
        if (state >= MDS_STATE_ABORTING) return abort_status(ring, err);
        if (state == MDS_STATE_FINISHED) {
            /* FINISHED is stored after the last publication: re-read. */
            write_pos = mds_load_acquire_u64(&h->write_pos);
            if (write_pos == cursor) return MDS_END;
        } else {
            return MDS_EMPTY;
        }
    } else if (mds_load_relaxed_u32(&h->state) >= MDS_STATE_ABORTING) {
        return abort_status(ring, err);
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

void mds_ring_advance(mds_ring *ring, uint64_t new_cursor) { ring->cons.cursor = new_cursor; }

int mds_ring_wait_data(mds_ring *ring, uint64_t timeout_ns, mds_error *err) {
    mds_ring_header *h = ring->header;
    uint32_t seq, flags;
    uint64_t now = mds_now_ns();
    uint64_t spin_until = now + SPIN_NS;
    /* A producer in full flight publishes again within microseconds: poll
     * that long before paying for a futex round trip on both sides. */
    while (mds_load_acquire_u64(&h->write_pos) == ring->cons.cursor &&
           mds_load_relaxed_u32(&h->state) == MDS_STATE_OPEN) {
        int i;
        for (i = 0; i < 64; i++) mds_cpu_relax();
        if (mds_now_ns() >= spin_until) break;
    }
    seq = mds_load_acquire_u32(&h->data_event);
    mds_store_seqcst_u32(&h->consumer_waiting, 1);
    if (mds_load_acquire_u64(&h->write_pos) == ring->cons.cursor &&
        mds_load_acquire_u32(&h->state) == MDS_STATE_OPEN) {
        flags = mds_load_acquire_u32(&h->flags);
        if (flags & MDS_FLAG_PRODUCER_DETACHED) {
            mds_store_relaxed_u32(&h->consumer_waiting, 0);
            return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the producer closed the ring without finishing it");
        }
        now = mds_now_ns();
        if (now >= ring->cons.next_liveness_ns) {
            uint32_t pid = mds_load_acquire_u32(&h->producer_pid);
            ring->cons.next_liveness_ns = now + LIVENESS_INTERVAL_NS;
            mds_store_relaxed_u64(&h->consumer_heartbeat_ns, now);
            if (pid != 0 && mds_load_acquire_u64(&h->producer_token) != 0 && !mds_pid_alive(pid)) {
                mds_store_relaxed_u32(&h->consumer_waiting, 0);
                return mds_set_error(err, MDS_ERR_PEER_GONE, 0, "the producer process %u is gone", pid);
            }
        }
        mds_platform_wait_u32(&h->data_event, seq, timeout_ns < WAIT_SLICE_NS * 5 ? timeout_ns : WAIT_SLICE_NS * 5);
    }
    mds_store_relaxed_u32(&h->consumer_waiting, 0);
    return MDS_OK;
}

void mds_ring_release(mds_ring *ring, uint64_t new_read_pos) {
    mds_ring_header *h = ring->header;
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
    if (n >= MDS_RING_PATH_SIZE)
        return mds_set_error(err, MDS_ERR_ARG, 0, "consumer output path is %llu bytes (limit %u)",
                             (unsigned long long)n, MDS_RING_PATH_SIZE - 1);
    /* NUL first so a reader never sees a half-written path as complete; the
     * release of read_pos that follows publishes the whole string. */
    ring->header->consumer_output[0] = '\0';
    if (n) {
        memcpy(ring->header->consumer_output + 1, path + 1, n - 1);
        ring->header->consumer_output[n] = '\0';
        mds_fence_seqcst();
        ring->header->consumer_output[0] = path[0];
    }
    return MDS_OK;
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
        if (hdr.kind != MDS_RECORD_DATA)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "unknown record kind 0x%08x at span byte %llu", hdr.kind,
                                 (unsigned long long)p);
        if (total > span_len - p)
            return mds_set_error(err, MDS_ERR_CORRUPT, 0, "record at span byte %llu claims %u bytes, past the published end",
                                 (unsigned long long)p, hdr.length);
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
