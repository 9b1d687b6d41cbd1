/* mdstream ring: a single-producer, single-consumer ring of offset-addressed
 * records in a shared mapping.  This header is the binary format (see
 * docs/ring-format.md, which explains it field by field) and the C API that the
 * Python extension, native crash agents, the Wine harness and the Linux writer
 * all compile.  No Python.h here or in the implementation. */
#ifndef MDSTREAM_RING_H
#define MDSTREAM_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Binary format, version 2 ------------------------------------------ */

#define MDS_RING_MAGIC "MDSRING1"       /* 8 bytes, no terminator in the file */
#define MDS_RING_VERSION 2u             /* 2: one dump per ring, as a transaction */
#define MDS_RING_HEADER_SIZE 4096u      /* data area starts here, page aligned */
#define MDS_RING_RECORD_ALIGN 16u       /* every record starts 16-byte aligned */
#define MDS_RING_RECORD_HEADER 16u
#define MDS_RING_MIN_CAPACITY 4096ull
#define MDS_RING_MAX_CAPACITY (1ull << 34) /* 16 GiB: sanity bound for attach */
#define MDS_RING_REASON_SIZE 256u
#define MDS_RING_PATH_SIZE 1024u        /* consumer_output, NUL-terminated */

/* Record kinds.  Values with a recognisable pattern so that garbage is
 * unlikely to pass as a record. */
#define MDS_RECORD_DATA 0x52444d01u    /* offset + payload */
#define MDS_RECORD_PAD 0x52444d02u     /* fills the data area up to the wrap */
#define MDS_RECORD_BEGIN 0x52444d03u   /* first record of the dump: mds_begin_payload */
#define MDS_RECORD_END 0x52444d04u     /* last record of the dump: mds_end_payload */

/* Ring states.  A ring carries exactly one dump: OPEN while it streams,
 * FINISHED once the producer wrote the END record, COMMITTING/COMMITTED as
 * the consumer makes its output durable and publishes it, ABORTED if either
 * side gave up (docs/ring-format.md, "The transaction"). */
#define MDS_STATE_OPEN 0u
#define MDS_STATE_FINISHED 1u           /* END written; the consumer drains and commits */
#define MDS_STATE_ABORTING 2u           /* an abort is writing its reason */
#define MDS_STATE_ABORTED 3u            /* code + reason are valid */
#define MDS_STATE_COMMITTING 4u         /* the consumer's output is durable; publishing it */
#define MDS_STATE_COMMITTED 5u          /* the dump is safe under its final name */

/* Header flags. */
#define MDS_FLAG_CONSUMER_DETACHED 0x1u /* the consumer closed its handle */
#define MDS_FLAG_PRODUCER_DETACHED 0x2u /* the producer closed its handle */
#define MDS_FLAG_CREATOR_LOCKED 0x8u    /* the holder of a role took its OFD lock: liveness by lock, */
#define MDS_FLAG_PRODUCER_LOCKED 0x10u  /* not by pid (a Windows/Wine peer takes none) */
#define MDS_FLAG_CONSUMER_LOCKED 0x20u
#define MDS_FLAG_OUTPUT_RELEASED 0x4u   /* the producer no longer needs consumer_output (it holds its own
                                         * descriptor of it, or decided not to use it) */

/* The producer's last word on the dump (header field outcome), so a consumer
 * that failed knows when its partial output is no longer needed by a spill. */
#define MDS_OUTCOME_PENDING 0u
#define MDS_OUTCOME_COMMITTED 1u        /* the producer saw the consumer's commit */
#define MDS_OUTCOME_SPILLED 2u          /* the spill holds the whole dump */
#define MDS_OUTCOME_FAILED 3u           /* the dump is lost; the producer said so */

/* Role locks (POSIX file-backed rings): OFD locks on these bytes of the ring
 * file, held for as long as the role is.  The kernel drops them when the
 * holder dies, in any PID namespace. */
#define MDS_LOCK_CREATOR 3840u
#define MDS_LOCK_PRODUCER 3841u
#define MDS_LOCK_CONSUMER 3842u

/* One record header; the payload follows immediately. */
typedef struct mds_record_header {
    uint64_t offset;  /* destination offset in the dump (0 for BEGIN/END) */
    uint32_t length;  /* payload bytes (for PAD: bytes up to the wrap) */
    uint32_t kind;    /* MDS_RECORD_* */
} mds_record_header;

/* BEGIN's payload: who produces which dump. */
typedef struct mds_begin_payload {
    uint64_t dump_id;           /* random, nonzero */
    uint64_t begun_unix_ns;     /* CLOCK_REALTIME at the claim */
    uint32_t producer_pid;
    uint32_t reserved0;
    uint64_t reserved1;
} mds_begin_payload;

/* END's payload: what the consumer must have received. */
typedef struct mds_end_payload {
    uint64_t dump_id;
    uint64_t records;           /* DATA records */
    uint64_t bytes;             /* their payload bytes */
    uint64_t highest_end;       /* max(offset + length) */
    uint64_t checksum;          /* mds_stream_fold over the DATA records, in order */
    uint64_t reserved;
} mds_end_payload;

#define MDS_BEGIN_PAYLOAD 32u
#define MDS_END_PAYLOAD 48u

/* The shared header, MDS_RING_HEADER_SIZE bytes.  Groups written by different
 * sides live on separate 128-byte lines (two 64-byte lines: adjacent-line
 * prefetch would otherwise make them share). */
typedef struct mds_ring_header {
    /* line 0: immutable after creation */
    char magic[8];              /* 0   "MDSRING1" */
    uint32_t version;           /* 8   MDS_RING_VERSION */
    uint32_t header_size;       /* 12  MDS_RING_HEADER_SIZE */
    uint64_t capacity;          /* 16  data bytes, power of two */
    uint64_t data_offset;       /* 24  == header_size */
    uint32_t record_align;      /* 32  MDS_RING_RECORD_ALIGN */
    uint32_t record_header;     /* 36  MDS_RING_RECORD_HEADER */
    uint64_t max_payload;       /* 40  largest payload of one record */
    uint32_t creator_pid;       /* 48 */
    uint32_t reserved0;         /* 52 */
    uint64_t created_ns;        /* 56  CLOCK_MONOTONIC at creation */
    uint64_t created_unix_ns;   /* 64  CLOCK_REALTIME at creation */
    uint8_t pad0[56];

    /* line 1 (128): written by the producer */
    uint64_t write_pos;         /* 128 published end of records (release) */
    uint32_t producer_waiting;  /* 136 producer sleeps on space_event */
    uint32_t data_event;        /* 140 futex word the consumer sleeps on */
    uint64_t producer_token;    /* 144 claim of the producer role, 0 = free */
    uint32_t producer_pid;      /* 152 */
    uint32_t outcome;           /* 156 MDS_OUTCOME_*: the producer's last word */
    uint64_t producer_heartbeat_ns; /* 160 CLOCK_MONOTONIC */
    uint64_t records_written;   /* 168 records published (statistics) */
    uint64_t dump_id;           /* 176 the dump this ring carries (also in BEGIN) */
    uint8_t pad1[72];

    /* line 2 (256): written by the consumer */
    uint64_t read_pos;          /* 256 released position (release) */
    uint32_t consumer_waiting;  /* 264 consumer sleeps on data_event */
    uint32_t space_event;       /* 268 futex word the producer sleeps on */
    uint64_t consumer_token;    /* 272 claim of the consumer role, 0 = free */
    uint32_t consumer_pid;      /* 280 */
    uint32_t reserved2;         /* 284 */
    uint64_t consumer_heartbeat_ns; /* 288 */
    uint64_t output_dump_id;    /* 296 consumer_output belongs to this dump (0 = none) */
    uint64_t output_device;     /* 304 st_dev of consumer_output */
    uint64_t output_inode;      /* 312 st_ino of consumer_output */
    uint8_t pad2[64];

    /* line 3 (384): state, written by whoever moves it */
    uint32_t state;             /* 384 MDS_STATE_* */
    int32_t abort_code;         /* 388 HRESULT-like code */
    uint32_t flags;             /* 392 MDS_FLAG_* */
    uint32_t reserved3;         /* 396 */
    char abort_reason[MDS_RING_REASON_SIZE]; /* 400 UTF-8, NUL-terminated */
    uint8_t pad3[368];          /* 656 */

    /* line 8 (1024): written by the consumer when it learns the dump id,
     * before it releases anything of that dump */
    char consumer_output[MDS_RING_PATH_SIZE]; /* 1024 absolute path of the file its sink
                                 * writes released bytes into ("" = none): a spilling
                                 * producer copies it (docs/spill-format.md) */
} mds_ring_header;

/* ---- Status codes -------------------------------------------------------- */

typedef enum mds_status {
    MDS_OK = 0,
    MDS_EMPTY = 1,          /* consumer: nothing published yet */
    MDS_END = 2,            /* consumer: finished and fully drained */
    MDS_ERR_ARG = -1,       /* bad argument from the caller */
    MDS_ERR_SYS = -2,       /* system call failed: see sys_errno */
    MDS_ERR_FORMAT = -3,    /* attach: not a valid ring */
    MDS_ERR_CORRUPT = -4,   /* a position or record violates the format */
    MDS_ERR_TIMEOUT = -5,   /* deadline passed waiting for space/data */
    MDS_ERR_ABORTED = -6,   /* ring aborted: see abort_code / reason */
    MDS_ERR_FINISHED = -7,  /* producing into a finished ring */
    MDS_ERR_BUSY = -8,      /* the role is held by another handle */
    MDS_ERR_PEER_GONE = -9, /* the other side's process is gone or detached */
    MDS_ERR_PERMISSION = -10, /* attach: file not private to this user */
    MDS_ERR_EXISTS = -11,   /* create: name already exists */
    MDS_ERR_NOT_FOUND = -12, /* attach: no such ring */
    MDS_ERR_CLOSED = -13,   /* the handle is closing or was inherited across fork() */
    MDS_ERR_USED = -14      /* the ring already carries a dump (one dump per ring) */
} mds_status;

typedef struct mds_error {
    int status;
    int sys_errno;
    int32_t abort_code;     /* MDS_ERR_ABORTED: the ring's code; message holds its reason */
    char message[256];
} mds_error;

/* ---- Handles -------------------------------------------------------------- */

/* Per-handle state.  Producer-local and consumer-local fields are touched only
 * by their own side (one thread each) and are kept on separate lines. */
typedef struct mds_ring {
    mds_ring_header *header;
    uint8_t *data;
    uint64_t capacity;
    uint64_t mask;
    uint64_t max_payload;
    void *map_base;
    size_t map_size;
    intptr_t fd;            /* -1 for anonymous */
    uint64_t token;         /* this handle's role claims */
    uint32_t pid;
    int is_owner;           /* created (not attached) */
    char path[512];         /* file path or "" (anonymous); shm names as /dev/shm path */
    char name[256];         /* as given by the user */
    const uint32_t *fault_flag; /* set (by a SIGBUS guard) when the mapped file was shrunk under us; NULL = unguarded */
    uint64_t generation;    /* the process's fork generation when this handle was made */
    uint32_t closing;       /* set by mds_ring_shutdown: every wait ends with MDS_ERR_CLOSED */
    uint32_t active_users;  /* long operations in flight (a dump callback between IoStart and its end) */
    void *registry_node;    /* platform bookkeeping (SIGBUS guard, fork) */
    char pending_name[640]; /* creation: the hidden name the file has until published ("" = none) */
    uint8_t pad_a[64];

    /* producer side */
    struct mds_ring_producer_state {
        uint64_t wpos;          /* end of written records, maybe unpublished */
        uint64_t published;     /* last value stored to header->write_pos */
        uint64_t read_cached;   /* last read_pos seen */
        uint64_t open_record;   /* position of an unpublished record that may grow, or UINT64_MAX */
        uint64_t open_end_offset; /* dump offset right after that record's payload */
        uint64_t open_length;   /* that record's payload length (kept here, not re-read from shared memory) */
        uint64_t publish_bytes; /* publish once this many bytes are pending; 0 = every write */
        uint64_t records_pending;
        uint64_t waited_ns;     /* total time spent waiting for space (statistics, stall budgets) */
        uint64_t dump_id;
        uint64_t records, bytes, highest_end, checksum; /* folded DATA records (for END) */
        int coalesce;           /* merge a write into the open record when adjacent */
        int claimed;
        int ended;              /* END written */
        int may_spill;          /* set before the claim by a producer that may copy consumer_output */
    } prod;
    uint8_t pad_b[64];

    /* consumer side */
    struct mds_ring_consumer_state {
        uint64_t cursor;        /* next unread position */
        uint64_t released;      /* last value stored to header->read_pos */
        uint64_t next_liveness_ns; /* when to check the peers again */
        uint64_t dump_id;       /* from BEGIN */
        uint64_t records, bytes, highest_end, checksum; /* DATA records taken so far */
        int claimed;
        int seen_begin;
        int seen_end;           /* END taken and verified */
        int output_pending;     /* an output registration waits for BEGIN */
        char output[MDS_RING_PATH_SIZE];
        uint64_t output_device, output_inode;
    } cons;
} mds_ring;

/* Decoded view of one record inside a span. */
typedef struct mds_record {
    uint64_t offset;
    uint32_t length;
    uint64_t payload_pos;   /* position of the payload inside the span */
} mds_record;

/* ---- Lifecycle ------------------------------------------------------------ */

/* name: NULL for an anonymous shared mapping (same process and its forks);
 * a name without '/' for a POSIX shared-memory object; otherwise a file path.
 * The object is created exclusively with mode 0600, never through a symlink,
 * and appears under its name only once its header is complete.  capacity is
 * rounded up to a power of two >= 4096. */
int mds_ring_create(mds_ring *ring, const char *name, uint64_t capacity, mds_error *err);
/* As mds_ring_create; with replace_stale, a ring left under the name by
 * processes that are all gone (no role lock held) is removed first. */
int mds_ring_create_ex(mds_ring *ring, const char *name, uint64_t capacity, int replace_stale, mds_error *err);
/* Attach to a ring another handle created; validates every header field. */
int mds_ring_attach(mds_ring *ring, const char *name, mds_error *err);
/* Make every wait of this handle end (MDS_ERR_CLOSED) and wait up to
 * timeout_ns for long operations (mds_ring_begin_use .. end_use) to leave.
 * MDS_OK when none is left, MDS_ERR_BUSY otherwise (the handle stays mapped). */
int mds_ring_shutdown(mds_ring *ring, uint64_t timeout_ns, mds_error *err);
/* Unmap; releases this handle's roles.  A producer that never finished marks
 * the ring PRODUCER_DETACHED, a consumer marks CONSUMER_DETACHED, so the other
 * side stops waiting.  A handle inherited across fork() only unmaps.  Does not
 * unlink.  The caller guarantees no other thread uses the handle (see
 * mds_ring_shutdown). */
void mds_ring_close(mds_ring *ring);
/* Remove a named ring's file / shm object. */
int mds_ring_unlink(const char *name, mds_error *err);
/* 1 if this handle was made by this process, 0 if it was inherited across fork(). */
int mds_ring_owned_by_this_process(const mds_ring *ring);
/* Long operations that may wait (a dump callback from IoStart to its end):
 * mds_ring_shutdown waits for them.  begin_use fails with MDS_ERR_CLOSED on a
 * closing or inherited handle. */
int mds_ring_begin_use(mds_ring *ring, mds_error *err);
void mds_ring_end_use(mds_ring *ring);

/* ---- Liveness and stale rings ----------------------------------------------- */

#define MDS_ROLE_CREATOR 0
#define MDS_ROLE_PRODUCER 1
#define MDS_ROLE_CONSUMER 2
#define MDS_ALIVE 1
#define MDS_GONE 0
#define MDS_UNKNOWN (-1)
/* Is the process holding role still there?  File-backed rings answer from the
 * role's OFD lock (works across PID namespaces, released by the kernel at
 * death); anonymous rings and other systems from the recorded pid. */
int mds_ring_role_alive(mds_ring *ring, int role);
/* Inspect the ring file at name without attaching: *stale = 1 when it is an
 * mdstream ring of this user that no live process holds. */
int mds_ring_probe_stale(const char *name, int *stale, uint32_t *creator_pid, mds_error *err);
/* Remove the ring file at name if it is stale (as mds_ring_probe_stale says), and only the very file
 * inspected: a ring someone created or reclaimed meanwhile is left alone.  *removed says whether it went. */
int mds_ring_remove_stale(const char *name, int *removed, mds_error *err);

/* ---- Producer (any thread, no Python, no allocation) ---------------------- */

/* Claim the producer role (done implicitly by the first write): takes the
 * role lock, draws the dump id and writes the BEGIN record.  A ring carries
 * one dump: a ring that already began one refuses with MDS_ERR_USED. */
int mds_ring_claim_producer(mds_ring *ring, mds_error *err);
/* Producer tuning: coalesce adjacent writes into one record and publish
 * lazily once publish_bytes are pending (0 = publish every write). */
void mds_ring_set_producer_options(mds_ring *ring, int coalesce, uint64_t publish_bytes);
/* Append one write.  Splits writes larger than max_payload into several
 * records.  Waits for space until deadline_ns (CLOCK_MONOTONIC, 0 = no
 * deadline).  Never drops data: returns a status instead. */
int mds_ring_write(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                   uint64_t deadline_ns, mds_error *err);
/* Same, with a timeout (ns, 0 = none) that starts only if the write has to
 * wait: the fast path never reads the clock. */
int mds_ring_write_timeout(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                           uint64_t timeout_ns, mds_error *err);
/* Both: a wait ends at the earlier of deadline_ns and (first wait + timeout_ns). */
int mds_ring_write_bounded(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                           uint64_t deadline_ns, uint64_t timeout_ns, mds_error *err);
/* Make every written record visible to the consumer. */
void mds_ring_flush(mds_ring *ring);
/* The producer is done: write the END record (records, bytes, highest end,
 * checksum), publish, state FINISHED.  Does not wait for the consumer. */
int mds_ring_end(mds_ring *ring, uint64_t timeout_ns, mds_error *err);
/* Wait (up to deadline_ns absolute, 0 = forever) until the consumer committed:
 * MDS_OK once COMMITTED; MDS_ERR_ABORTED, MDS_ERR_PEER_GONE (consumer died or
 * detached), MDS_ERR_TIMEOUT or MDS_ERR_CLOSED otherwise. */
int mds_ring_wait_committed(mds_ring *ring, uint64_t deadline_ns, mds_error *err);
/* mds_ring_end, then mds_ring_wait_committed with timeout_ns (0 = forever):
 * MDS_OK means the consumer committed the dump. */
int mds_ring_finish(mds_ring *ring, uint64_t timeout_ns, mds_error *err);
/* Either side: state ABORTED with code and reason (first abort wins; also
 * from FINISHED and COMMITTING, never from COMMITTED). */
int mds_ring_abort(mds_ring *ring, int32_t code, const char *reason);
/* Producer: record its last word on the dump (MDS_OUTCOME_*). */
void mds_ring_set_outcome(mds_ring *ring, uint32_t outcome);

/* ---- Consumer ------------------------------------------------------------- */

int mds_ring_claim_consumer(mds_ring *ring, mds_error *err);
/* Contiguous published range starting at the cursor that does not cross the
 * wrap: [*start, *end).  Returns MDS_OK, MDS_EMPTY, MDS_END or an error
 * (aborted, corrupt positions).  Does not advance the cursor.  MDS_END only
 * once the END record was taken and verified (mds_ring_take). */
int mds_ring_poll(mds_ring *ring, uint64_t *start, uint64_t *end, mds_error *err);
/* Take the span [start, end) that poll returned: walk every record once,
 * check BEGIN/END and fold DATA records into the dump's running totals,
 * advance the cursor.  *data_records: DATA records in it (0: give the span
 * back at once).  A second BEGIN, DATA before BEGIN or after END, or an END
 * that does not match what arrived are MDS_ERR_CORRUPT. */
int mds_ring_take(mds_ring *ring, uint64_t start, uint64_t end, uint64_t *data_records, uint64_t *data_bytes,
                  uint64_t *highest_end, mds_error *err);
/* Move the cursor (after a batch has been handed out). */
void mds_ring_advance(mds_ring *ring, uint64_t new_cursor);
/* Sleep until data is published, the state changes or timeout_ns passes.
 * Returns MDS_OK (something may have changed) or MDS_ERR_PEER_GONE. */
int mds_ring_wait_data(mds_ring *ring, uint64_t timeout_ns, mds_error *err);
/* Publish the released position (everything before it may be reused). */
void mds_ring_release(mds_ring *ring, uint64_t new_read_pos);
/* Name the file the consumer's sink applies released records to (absolute
 * path of a regular file this process created, or NULL/"" for none), so a
 * producer that has to spill can start from it.  Published with the dump id
 * as soon as BEGIN was taken, before anything of the dump is released. */
int mds_ring_set_consumer_output(mds_ring *ring, const char *path, mds_error *err);
/* The consumer's output is durable: FINISHED -> COMMITTING (it is about to
 * publish it under its final name).  MDS_ERR_ABORTED if the producer gave up. */
int mds_ring_commit_begin(mds_ring *ring, mds_error *err);
/* The dump is safe: -> COMMITTED (from COMMITTING, or FINISHED for a consumer
 * with nothing to publish), waking the producer. */
int mds_ring_commit(mds_ring *ring, mds_error *err);
/* After a failure, before removing its partial output: wait up to timeout_ns
 * until the producer no longer needs it (MDS_FLAG_OUTPUT_RELEASED, an outcome,
 * or the producer gone).  1 when released, 0 when it may still be needed. */
int mds_ring_wait_output_released(mds_ring *ring, uint64_t timeout_ns);
/* Producer: it holds what it needs of consumer_output (or will not use it). */
void mds_ring_release_output(mds_ring *ring);

/* The dump checksum: folded over each DATA record's (offset, length) in ring
 * order, starting from mds_stream_seed(dump_id). */
static inline uint64_t mds_stream_seed(uint64_t dump_id) { return dump_id ^ 0x9E3779B97F4A7C15ull; }
static inline uint64_t mds_stream_fold(uint64_t h, uint64_t offset, uint64_t length) {
    h ^= offset + 0x632BE59BD9B4E019ull;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= (h >> 31) ^ length;
    h *= 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

/* Pointer to position pos in the data area. */
static inline const uint8_t *mds_ring_at(const mds_ring *ring, uint64_t pos) {
    return ring->data + (pos & ring->mask);
}

/* Walk the DATA records of a span [span, span+span_len) taken from the ring.
 * The header is copied before it is checked, so a hostile producer rewriting
 * the span cannot make the walk leave it.  Returns 1 with *rec filled (and
 * *pos advanced), 0 at the end of the span, MDS_ERR_CORRUPT on a bad record
 * (message in err).  PAD, BEGIN and END records are skipped. */
int mds_span_next(const uint8_t *span, uint64_t span_len, uint64_t *pos, mds_record *rec,
                  mds_error *err);

/* ---- Helpers -------------------------------------------------------------- */

uint64_t mds_now_ns(void);            /* CLOCK_MONOTONIC */
const char *mds_status_name(int status);
/* Read the abort code and reason (reason_size bytes incl. NUL). */
void mds_ring_abort_info(const mds_ring *ring, int32_t *code, char *reason, size_t reason_size);
uint32_t mds_ring_state(const mds_ring *ring);
/* 1 if the ring's file was shrunk under this handle: some of the mapping now
 * reads zeros and takes writes nowhere (POSIX, file-backed rings; see
 * docs/reliability.md).  Everything read or written since is untrustworthy. */
int mds_ring_faulted(const mds_ring *ring);
int mds_pid_alive(uint32_t pid);

#ifdef __cplusplus
}
#endif
#endif /* MDSTREAM_RING_H */
