# Declarations of the C core's headers (ring.h, span.h, filesink.h, callback.h); no code.
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, intptr_t

from mdstream._dbghelp cimport (
    BOOL, HANDLE, HRESULT, PVOID, ULONG, ULONG64,
    MINIDUMP_CALLBACK_ROUTINE, PMINIDUMP_CALLBACK_INPUT, PMINIDUMP_CALLBACK_OUTPUT,
)


cdef extern from "mdstream/ring.h" nogil:
    const char *MDS_RING_MAGIC
    unsigned int MDS_RING_VERSION
    unsigned int MDS_RING_HEADER_SIZE
    unsigned int MDS_RING_RECORD_ALIGN
    unsigned int MDS_RING_RECORD_HEADER
    unsigned long long MDS_RING_MIN_CAPACITY
    unsigned long long MDS_RING_MAX_CAPACITY
    unsigned int MDS_RING_REASON_SIZE
    unsigned int MDS_RECORD_DATA
    unsigned int MDS_RECORD_PAD
    unsigned int MDS_RECORD_BEGIN
    unsigned int MDS_RECORD_END
    unsigned int MDS_BEGIN_PAYLOAD
    unsigned int MDS_END_PAYLOAD
    unsigned int MDS_STATE_OPEN
    unsigned int MDS_STATE_FINISHED
    unsigned int MDS_STATE_ABORTING
    unsigned int MDS_STATE_ABORTED
    unsigned int MDS_STATE_COMMITTING
    unsigned int MDS_STATE_COMMITTED
    unsigned int MDS_FLAG_CONSUMER_DETACHED
    unsigned int MDS_FLAG_PRODUCER_DETACHED
    unsigned int MDS_FLAG_OUTPUT_RELEASED
    unsigned int MDS_OUTCOME_PENDING
    unsigned int MDS_OUTCOME_COMMITTED
    unsigned int MDS_OUTCOME_SPILLED
    unsigned int MDS_OUTCOME_FAILED
    int MDS_ROLE_CREATOR
    int MDS_ROLE_PRODUCER
    int MDS_ROLE_CONSUMER
    int MDS_ALIVE
    int MDS_GONE
    int MDS_UNKNOWN

    ctypedef struct mds_ring_header:
        char magic[8]
        uint32_t version
        uint64_t capacity
        uint32_t creator_pid
        uint64_t write_pos
        uint64_t read_pos
        uint32_t producer_pid
        uint32_t consumer_pid
        uint32_t outcome
        uint64_t dump_id
        uint64_t producer_token
        uint64_t consumer_token
        uint64_t producer_heartbeat_ns
        uint64_t consumer_heartbeat_ns
        uint64_t records_written
        uint32_t producer_waiting
        uint32_t consumer_waiting
        uint32_t state
        int32_t abort_code
        uint32_t flags
        char consumer_output[1024]

    enum mds_status:
        MDS_OK
        MDS_EMPTY
        MDS_END
        MDS_ERR_ARG
        MDS_ERR_SYS
        MDS_ERR_FORMAT
        MDS_ERR_CORRUPT
        MDS_ERR_TIMEOUT
        MDS_ERR_ABORTED
        MDS_ERR_FINISHED
        MDS_ERR_BUSY
        MDS_ERR_PEER_GONE
        MDS_ERR_PERMISSION
        MDS_ERR_EXISTS
        MDS_ERR_NOT_FOUND
        MDS_ERR_CLOSED
        MDS_ERR_USED

    ctypedef struct mds_error:
        int status
        int sys_errno
        int32_t abort_code
        char message[256]

    cdef struct mds_ring_producer_state:
        uint64_t wpos
        uint64_t published
        uint64_t waited_ns
        uint64_t dump_id
        int claimed
        int ended
        int may_spill

    cdef struct mds_ring_consumer_state:
        uint64_t cursor
        uint64_t released
        uint64_t dump_id
        uint64_t records
        uint64_t bytes
        uint64_t highest_end
        int claimed
        int seen_begin
        int seen_end

    ctypedef struct mds_ring:
        mds_ring_header *header
        uint8_t *data
        uint64_t capacity
        uint64_t mask
        uint64_t max_payload
        intptr_t fd
        uint32_t pid
        int is_owner
        char path[512]
        char name[256]
        uint32_t closing
        uint32_t active_users
        mds_ring_producer_state prod
        mds_ring_consumer_state cons

    ctypedef struct mds_record:
        uint64_t offset
        uint32_t length
        uint64_t payload_pos

    int mds_ring_create(mds_ring *ring, const char *name, uint64_t capacity, mds_error *err)
    int mds_ring_create_ex(mds_ring *ring, const char *name, uint64_t capacity, int replace_stale, mds_error *err)
    int mds_ring_attach(mds_ring *ring, const char *name, mds_error *err)
    int mds_ring_shutdown(mds_ring *ring, uint64_t timeout_ns, mds_error *err)
    void mds_ring_close(mds_ring *ring)
    int mds_ring_unlink(const char *name, mds_error *err)
    int mds_ring_owned_by_this_process(const mds_ring *ring)
    int mds_ring_begin_use(mds_ring *ring, mds_error *err)
    void mds_ring_end_use(mds_ring *ring)
    int mds_ring_role_alive(mds_ring *ring, int role)
    int mds_ring_probe_stale(const char *name, int *stale, uint32_t *creator_pid, mds_error *err)
    int mds_ring_remove_stale(const char *name, int *removed, mds_error *err)
    int mds_ring_claim_producer(mds_ring *ring, mds_error *err)
    void mds_ring_set_producer_options(mds_ring *ring, int coalesce, uint64_t publish_bytes)
    int mds_ring_write(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                       uint64_t deadline_ns, mds_error *err)
    int mds_ring_write_timeout(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                               uint64_t timeout_ns, mds_error *err)
    void mds_ring_flush(mds_ring *ring)
    int mds_ring_write_bounded(mds_ring *ring, uint64_t offset, const void *data, uint64_t length,
                               uint64_t deadline_ns, uint64_t timeout_ns, mds_error *err)
    int mds_ring_end(mds_ring *ring, uint64_t timeout_ns, mds_error *err)
    int mds_ring_wait_committed(mds_ring *ring, uint64_t deadline_ns, mds_error *err)
    int mds_ring_finish(mds_ring *ring, uint64_t timeout_ns, mds_error *err)
    int mds_ring_abort(mds_ring *ring, int32_t code, const char *reason)
    void mds_ring_set_outcome(mds_ring *ring, uint32_t outcome)
    int mds_ring_claim_consumer(mds_ring *ring, mds_error *err)
    int mds_ring_poll(mds_ring *ring, uint64_t *start, uint64_t *end, mds_error *err)
    int mds_ring_take(mds_ring *ring, uint64_t start, uint64_t end, uint64_t *data_records, uint64_t *data_bytes,
                      uint64_t *highest_end, mds_error *err)
    void mds_ring_advance(mds_ring *ring, uint64_t new_cursor)
    int mds_ring_wait_data(mds_ring *ring, uint64_t timeout_ns, mds_error *err)
    void mds_ring_release(mds_ring *ring, uint64_t new_read_pos)
    int mds_ring_set_consumer_output(mds_ring *ring, const char *path, mds_error *err)
    int mds_ring_commit_begin(mds_ring *ring, mds_error *err)
    int mds_ring_commit(mds_ring *ring, mds_error *err)
    int mds_ring_wait_output_released(mds_ring *ring, uint64_t timeout_ns)
    void mds_ring_release_output(mds_ring *ring)
    const uint8_t *mds_ring_at(const mds_ring *ring, uint64_t pos)
    int mds_span_next(const uint8_t *span, uint64_t span_len, uint64_t *pos, mds_record *rec, mds_error *err)
    uint64_t mds_now_ns()
    const char *mds_status_name(int status)
    void mds_ring_abort_info(const mds_ring *ring, int32_t *code, char *reason, size_t reason_size)
    uint32_t mds_ring_state(const mds_ring *ring)
    int mds_ring_faulted(const mds_ring *ring)
    int mds_pid_alive(uint32_t pid)


cdef extern from "mdstream/span.h" nogil:
    ctypedef struct mds_span_summary:
        uint64_t records
        uint64_t bytes
        uint64_t highest_end

    int mds_span_scan(const uint8_t *span, uint64_t span_len, mds_span_summary *summary, mds_error *err)
    int mds_span_index(const uint8_t *span, uint64_t span_len, uint64_t *offsets, uint32_t *lengths,
                       uint64_t *positions, uint64_t capacity, uint64_t *count, mds_error *err)
    int mds_span_apply_memory(const uint8_t *span, uint64_t span_len, uint8_t *dest, uint64_t dest_size,
                              mds_error *err)
    int mds_span_pwrite(const uint8_t *span, uint64_t span_len, int fd, mds_error *err)

    ctypedef struct mds_trace_writer:
        int fd
        uint64_t records
        uint64_t bytes_written
    int mds_trace_writer_init(mds_trace_writer *w, int fd, size_t buffer_size, mds_error *err)
    int mds_trace_writer_append(mds_trace_writer *w, uint64_t offset, const uint8_t *data, uint32_t length,
                                mds_error *err)
    int mds_trace_writer_span(mds_trace_writer *w, const uint8_t *span, uint64_t span_len, mds_error *err)
    int mds_trace_writer_flush(mds_trace_writer *w, mds_error *err)
    void mds_trace_writer_free(mds_trace_writer *w)

    ctypedef struct mds_growbuf:
        uint8_t *data
        uint64_t size
        uint64_t reserved
        uint64_t requested
        uint64_t populated
        void *helper
    int mds_growbuf_reserve(mds_growbuf *buf, uint64_t size, mds_error *err)
    int mds_growbuf_populate(mds_growbuf *buf, uint64_t upto, mds_error *err)
    void mds_growbuf_populate_ahead(mds_growbuf *buf, uint64_t upto)
    int mds_growbuf_prefault(mds_growbuf *buf, mds_error *err)
    void mds_growbuf_free(mds_growbuf *buf)


cdef extern from "mdstream/filesink.h" nogil:
    ctypedef struct mds_filesink:
        int fd
        int mapped
        uint64_t highest_end
        uint64_t direct_writes
        uint64_t mapped_bytes
        uint64_t maps
    void mds_filesink_init(mds_filesink *fs, int fd, int use_mapping)
    int mds_filesink_apply(mds_filesink *fs, const uint8_t *span, uint64_t span_len, mds_error *err)
    int mds_filesink_write(mds_filesink *fs, uint64_t offset, const uint8_t *data, uint64_t length, mds_error *err)
    void mds_filesink_unmap(mds_filesink *fs)
    int mds_filesink_finish(mds_filesink *fs, int durable, mds_error *err)


cdef extern from "mdstream/callback.h" nogil:
    int MDS_CALLBACK_TYPES
    int MDS_MAX_EXTRA_MEMORY

    ctypedef int (*mds_callback_hook)(void *hook_param, PMINIDUMP_CALLBACK_INPUT input,
                                      PMINIDUMP_CALLBACK_OUTPUT output) noexcept nogil

    ctypedef struct mds_extra_memory_range:
        ULONG64 base
        ULONG size

    ctypedef struct mds_callback_options:
        uint64_t deadline_ns
        int include_modules
        int include_threads
        ULONG module_write_flags_mask
        ULONG thread_write_flags_mask
        HRESULT read_memory_failure_status
        HRESULT is_process_snapshot_status
        int coalesce
        uint64_t publish_bytes
        uint32_t extra_memory_count
        mds_extra_memory_range extra_memory[64]
        char spill_path[1024]
        uint64_t spill_after_ns
        uint64_t dump_deadline_ns

    ctypedef struct mds_callback_context:
        mds_ring *ring
        mds_callback_options options
        mds_callback_hook hook
        void *hook_param
        uint64_t writes
        uint64_t bytes
        uint64_t highest_end
        uint64_t calls[22]
        int io_started
        int finished
        int in_use
        int failed
        HRESULT failure_status
        int failure_ring_status
        char failure_reason[256]

    void mds_callback_options_init(mds_callback_options *options)
    void mds_callback_context_init(mds_callback_context *ctx, mds_ring *ring, const mds_callback_options *options)
    void mds_callback_context_reset(mds_callback_context *ctx)
    void mds_callback_context_release(mds_callback_context *ctx)

    unsigned int MDS_SPILL_FINISHED
    unsigned int MDS_SPILL_BASE_COMPLETE
    unsigned int MDS_SPILL_FAILED
    unsigned int MDS_SPILL_BASE_COPY
    ctypedef struct mds_spill_info:
        int spilled
        uint32_t flags
        uint32_t trigger
        uint64_t base_bytes
        uint64_t base_length
        uint64_t base_copied
        uint64_t resume_pos
        uint64_t ring_end_pos
        uint64_t replayed_records
        uint64_t replayed_bytes
        uint64_t direct_writes
        uint64_t direct_bytes
        uint64_t extent_count
        char reason[256]
    void mds_callback_spill_info(const mds_callback_context *ctx, mds_spill_info *out)
    BOOL mds_dump_callback(PVOID callback_param, PMINIDUMP_CALLBACK_INPUT input,
                           PMINIDUMP_CALLBACK_OUTPUT output) noexcept nogil

    ctypedef struct mds_simulation:
        MINIDUMP_CALLBACK_ROUTINE routine
        PVOID param
        HANDLE io_handle
        const uint8_t *buffer
        uint64_t buffer_size
        const uint64_t *offsets
        const uint32_t *lengths
        const uint64_t *sources
        uint64_t count
        int abandon
        int time_calls
        uint64_t completed
        uint32_t done
        int succeeded
        ULONG failed_callback_type
        uint64_t failed_index
        BOOL failed_return
        HRESULT failed_status
        uint64_t elapsed_ns
        uint64_t longest_call_ns
        ULONG longest_call_type
        int started

    ctypedef struct mds_callback_counters:
        uint64_t writes
        uint64_t bytes
        uint64_t highest_end
        uint64_t calls[22]
        int failed
    void mds_callback_read_counters(const mds_callback_context *ctx, mds_callback_counters *out)
    uint64_t mds_simulation_completed(const mds_simulation *sim)
    int mds_simulation_is_done(const mds_simulation *sim)

    int mds_simulation_start(mds_simulation *sim, mds_error *err)
    int mds_simulation_wait(mds_simulation *sim, uint64_t timeout_ns)
