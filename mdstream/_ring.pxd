# Layout of the Ring and Batch extension types, shared with _callback and _sinks.
from libc.stdint cimport uint8_t, uint64_t
from mdstream._core cimport mds_ring, mds_error, mds_span_summary


cdef class Ring:
    cdef mds_ring c
    cdef bint mapped
    cdef bint unlink_on_close
    cdef bint producer_finished
    cdef dict pending_releases      # start -> end of batches released out of order
    cdef Py_ssize_t live_batches
    cdef Py_ssize_t live_exports
    cdef Py_ssize_t deferred_batches   # released while views were alive
    cdef Py_ssize_t users           # Python calls inside the ring (they may wait without the GIL)
    cdef bint producing             # a thread is inside write()/finish(): a second one is refused
    cdef bint consuming             # a thread is inside read()/the drain loop: a second one is refused
    cdef object __weakref__

    cdef int check_mapped(self) except -1
    cdef int enter(self, bint produce) except -1
    cdef void leave(self, bint produce) noexcept
    cdef int release_range(self, uint64_t start, uint64_t end) except -1
    cdef int next_span(self, uint64_t deadline, uint64_t *start, uint64_t *end, mds_span_summary *summary) except -1


cdef class Batch:
    cdef readonly Ring ring
    cdef uint64_t start
    cdef uint64_t end
    cdef const uint8_t *span
    cdef uint64_t span_len
    cdef Py_ssize_t exports
    cdef bint release_requested
    cdef bint deferred
    cdef bint is_released
    cdef object index_cache         # (offsets, lengths, positions) once built
    cdef bint has_summary
    cdef mds_span_summary summary_cache
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    cdef int check_live(self) except -1
    cdef int do_release(self) except -1
    cdef int abandon(self) except -1
    cdef tuple _index(self)
    cdef int get_summary(self, mds_span_summary *out) except -1


cdef enum:
    SPAN_READY = 1
    SPAN_END = 2
    SPAN_TIMEOUT = 3

cdef int raise_for(int status, const mds_error *err) except -1
cdef void set_batch_span(Batch batch, uint64_t start, uint64_t end) noexcept
