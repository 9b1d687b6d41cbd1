# cython: freethreading_compatible = False
"""The ring's Python face: Ring (create/attach/produce/consume) and Batch
(a zero-copy, export-counted view of records in the shared mapping)."""

from cpython.buffer cimport PyBUF_WRITABLE, PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t, uint64_t
from libc.string cimport memcpy, memset

import os

import numpy as np
cimport numpy as cnp

from mdstream._core cimport *
from mdstream._buffers cimport export_bytes
from mdstream import errors as _errors

cnp.import_array()

DEFAULT_CAPACITY = 4 * 1024 * 1024
# Blocking waits sleep in slices this long so Ctrl-C is seen promptly.
cdef uint64_t WAIT_SLICE_NS = 50_000_000

_STATE_NAMES = {MDS_STATE_OPEN: "open", MDS_STATE_FINISHED: "finished",
                MDS_STATE_ABORTING: "aborted", MDS_STATE_ABORTED: "aborted",
                MDS_STATE_COMMITTING: "committing", MDS_STATE_COMMITTED: "committed"}
_OUTCOME_NAMES = {MDS_OUTCOME_PENDING: None, MDS_OUTCOME_COMMITTED: "committed",
                  MDS_OUTCOME_SPILLED: "spilled", MDS_OUTCOME_FAILED: "failed"}
# How long close() waits for other threads to leave the ring.
DEFAULT_CLOSE_TIMEOUT = 10.0


cdef int raise_for(int status, const mds_error *err) except -1:
    """The one translator from C statuses to exceptions."""
    cdef const char *text
    if err != NULL:
        text = &err.message[0]
    else:
        text = mds_status_name(status)
    message = text.decode("utf-8", "replace")
    if status == MDS_ERR_FORMAT:
        raise _errors.RingFormatError(message)
    if status == MDS_ERR_CORRUPT:
        raise _errors.RingCorruptError(message)
    if status == MDS_ERR_PERMISSION:
        raise _errors.RingPermissionError(message)
    if status == MDS_ERR_NOT_FOUND:
        raise _errors.RingNotFoundError(message)
    if status == MDS_ERR_EXISTS:
        raise _errors.RingExistsError(message)
    if status == MDS_ERR_TIMEOUT:
        raise _errors.RingTimeoutError(message)
    if status == MDS_ERR_ABORTED:
        raise _errors.aborted_error(<uint32_t>err.abort_code if err != NULL else 0, message)
    if status == MDS_ERR_FINISHED:
        raise _errors.RingFinishedError(message)
    if status == MDS_ERR_BUSY:
        raise _errors.RingBusyError(message)
    if status == MDS_ERR_CLOSED:
        raise _errors.RingClosedError(message)
    if status == MDS_ERR_USED:
        raise _errors.RingUsedError(message)
    if status == MDS_ERR_PEER_GONE:
        if "producer" in message:
            raise _errors.ProducerGoneError(message)
        raise _errors.ConsumerGoneError(message)
    if status == MDS_ERR_ARG:
        raise ValueError(message)
    if status == MDS_ERR_SYS:
        raise OSError(err.sys_errno if err != NULL else 0, message)
    raise _errors.RingError(message)


cdef inline uint64_t deadline_after(object timeout) except? 0:
    if timeout is None:
        return 0
    seconds = float(timeout)
    if seconds != seconds or seconds < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return mds_now_ns() + <uint64_t>(seconds * 1e9) + 1


cdef class Ring:
    """A single-producer, single-consumer ring of offset-addressed records.

    Create one with :meth:`Ring.create` (anonymous, a shared-memory name, or a
    file path) or join one another process created with :meth:`Ring.attach`.
    The producer side is :meth:`write` / :meth:`finish` / :meth:`abort` (and the
    C API, which the dump callback uses without the GIL); the consumer side is
    :meth:`read`, which returns :class:`Batch` objects.
    """

    def __cinit__(self):
        memset(&self.c, 0, sizeof(self.c))
        self.mapped = False
        self.unlink_on_close = False
        self.producer_finished = False
        self.pending_releases = {}
        self.live_batches = 0
        self.live_exports = 0
        self.deferred_batches = 0
        self.users = 0
        self.producing = False
        self.consuming = False

    def __init__(self):
        raise TypeError("use Ring.create(...) or Ring.attach(...)")

    @staticmethod
    def create(name_or_path=None, capacity=DEFAULT_CAPACITY, *, unlink_on_close=True, replace_stale=False):
        """Create a ring.

        ``name_or_path``: ``None`` for an anonymous shared mapping (this process
        and its forks), a name without ``/`` for a POSIX shared-memory object
        (``/dev/shm/NAME`` on Linux), or a file path.  Named rings are created
        exclusively with mode 0600 and never through a symlink.  ``capacity``
        (bytes of record space) is rounded up to a power of two, at least 4096.
        With ``unlink_on_close`` (the default) the creator removes the name when
        it closes, so no dump bytes linger in ``/dev/shm``.  A named ring
        appears under its name only once complete.  ``replace_stale=True``
        first removes a ring left under the name by processes that are all
        gone (a creator killed before it could remove it); a ring any live
        process still holds is never replaced (:class:`RingExistsError`).

        A ring carries exactly one dump (see ``docs/ring-format.md``).
        """
        cdef Ring ring = Ring.__new__(Ring)
        cdef mds_error err
        cdef int rc
        cdef bytes encoded
        cdef const char *cname = NULL
        cap = int(capacity)
        if cap <= 0:
            raise ValueError(f"capacity must be positive, not {capacity!r}")
        if cap > MDS_RING_MAX_CAPACITY:
            raise ValueError(f"capacity {cap} exceeds the maximum {MDS_RING_MAX_CAPACITY}")
        if name_or_path is not None:
            encoded = os.fsencode(name_or_path)
            if b"\0" in encoded:
                raise ValueError("ring name contains a NUL byte")
            cname = encoded
        cdef int replace = 1 if replace_stale else 0
        cdef uint64_t ccap = cap
        # Creation sizes and maps the file (tens of ms for a large ring on a cold page cache); the
        # new Ring is not shared yet and `encoded` holds cname, so other threads may run meanwhile.
        with nogil:
            rc = mds_ring_create_ex(&ring.c, cname, ccap, replace, &err)
        if rc != MDS_OK:
            raise_for(rc, &err)
        ring.mapped = True
        ring.unlink_on_close = bool(unlink_on_close) and name_or_path is not None
        return ring

    @staticmethod
    def attach(name_or_path):
        """Attach to a ring another handle (usually another process) created.

        Every header field is validated before it is trusted; a file that is not
        a ring raises :class:`RingFormatError`, one that other users can read
        raises :class:`RingPermissionError`.  A ring that was aborted raises
        :class:`RingAbortedError`; one finished and already drained raises
        :class:`RingFinishedError`.
        """
        cdef Ring ring = Ring.__new__(Ring)
        cdef mds_error err
        cdef int rc
        cdef int32_t code
        cdef char reason[256]
        encoded = os.fsencode(name_or_path)
        if b"\0" in encoded:
            raise ValueError("ring name contains a NUL byte")
        cdef const char *cname = encoded
        # Not shared yet (see create): let other threads run while the file is opened and mapped.
        with nogil:
            rc = mds_ring_attach(&ring.c, cname, &err)
        if rc != MDS_OK:
            raise_for(rc, &err)
        ring.mapped = True
        state = mds_ring_state(&ring.c)
        if state == MDS_STATE_ABORTING or state == MDS_STATE_ABORTED:
            mds_ring_abort_info(&ring.c, &code, reason, sizeof(reason))
            ring.close()
            raise _errors.aborted_error(<uint32_t>code, reason.decode("utf-8", "replace"))
        if state == MDS_STATE_COMMITTED or (state == MDS_STATE_FINISHED
                                            and ring.c.header.read_pos == ring.c.header.write_pos):
            path = ring.path
            ring.close()
            raise _errors.RingFinishedError(f"ring {path} was already finished and fully drained")
        return ring

    cdef int check_mapped(self) except -1:
        if not self.mapped:
            raise _errors.RingClosedError("the ring is closed")
        return 0

    cdef int enter(self, bint produce) except -1:
        # Every Python call that may wait without the GIL counts itself, so
        # close() from another thread waits for it instead of unmapping under
        # it.  One producing and one consuming thread per handle.
        self.check_mapped()
        if self.c.closing:
            raise _errors.RingClosedError("the ring is being closed")
        if not mds_ring_owned_by_this_process(&self.c):
            raise _errors.RingClosedError(
                f"this handle of ring {self.path or '(anonymous)'} was inherited across fork(): roles belong to "
                "the process that made the handle; attach the ring again in this process")
        if produce:
            if self.producing:
                raise _errors.RingBusyError("another thread is producing through this ring handle; "
                                            "one producing thread per handle")
            self.producing = True
        else:
            if self.consuming:
                raise _errors.RingBusyError("another thread is consuming through this ring handle; "
                                            "one consuming thread per handle")
            self.consuming = True
        self.users += 1
        return 0

    cdef void leave(self, bint produce) noexcept:
        self.users -= 1
        if produce:
            self.producing = False
        else:
            self.consuming = False

    # ---- properties ---------------------------------------------------

    @property
    def name(self):
        """The name or path given at creation/attach (``None`` if anonymous)."""
        return self.c.name.decode() if self.c.name[0] else None

    @property
    def path(self):
        """Filesystem path of the ring (``None`` if anonymous)."""
        return self.c.path.decode() if self.c.path[0] else None

    @property
    def capacity(self):
        """Bytes of record space in the data area."""
        return self.c.capacity

    @property
    def max_payload(self):
        """The largest payload one record holds; larger writes are split."""
        return self.c.max_payload

    @property
    def closed(self):
        return not self.mapped

    @property
    def state(self):
        """``"open"``, ``"finished"`` (the END record is in), ``"committing"``,
        ``"committed"`` (the consumer's sinks are done) or ``"aborted"``."""
        self.check_mapped()
        return _STATE_NAMES.get(mds_ring_state(&self.c), "unknown")

    @property
    def data_address(self):
        """Address of the data area in this process (for zero-copy checks)."""
        self.check_mapped()
        return <size_t>self.c.data

    @property
    def write_position(self):
        self.check_mapped()
        return self.c.header.write_pos

    @property
    def read_position(self):
        self.check_mapped()
        return self.c.header.read_pos

    @property
    def producer_pid(self):
        self.check_mapped()
        return self.c.header.producer_pid

    @property
    def consumer_pid(self):
        self.check_mapped()
        return self.c.header.consumer_pid

    @property
    def creator_pid(self):
        self.check_mapped()
        return self.c.header.creator_pid

    @property
    def dump_id(self):
        """The id of the dump this ring carries (from its BEGIN record), or ``None`` before it began."""
        self.check_mapped()
        value = self.c.header.dump_id
        return value or None

    @property
    def outcome(self):
        """The producer's last word: ``None`` (pending), ``"committed"``, ``"spilled"`` or ``"failed"``."""
        self.check_mapped()
        return _OUTCOME_NAMES.get(self.c.header.outcome, "unknown")

    @property
    def is_producer(self):
        """True while this handle holds the producer role."""
        return self.mapped and bool(self.c.prod.claimed)

    @property
    def is_consumer(self):
        """True while this handle holds the consumer role."""
        return self.mapped and bool(self.c.cons.claimed)

    @property
    def inherited(self):
        """True for a handle this process inherited across ``fork()`` (it may only be closed)."""
        return self.mapped and not mds_ring_owned_by_this_process(&self.c)

    @property
    def outstanding_batches(self):
        """Batches read from this handle and not released yet (deferred ones included)."""
        return self.live_batches

    @property
    def consumer_output(self):
        """The file the consumer's sink writes released records into, or ``None``.

        Set by :func:`mdstream.drain` for a :class:`FileSink`; a producer that
        has to spill copies this file (after checking it is the regular file
        this consumer registered for this dump) so its spill holds the whole
        dump.  Must name a file this process created; published with the dump
        id before anything of the dump is released.
        """
        cdef char path[1024]
        self.check_mapped()
        memcpy(path, self.c.header.consumer_output, sizeof(path))
        path[sizeof(path) - 1] = 0
        if path[0] == 0:
            return None
        return os.fsdecode(<bytes>path)

    @consumer_output.setter
    def consumer_output(self, value):
        cdef mds_error err
        self.check_mapped()
        raw = b"" if value is None else os.fsencode(os.path.abspath(os.fspath(value)))
        if b"\0" in raw:
            raise ValueError("consumer_output contains a NUL byte")
        if mds_ring_set_consumer_output(&self.c, raw, &err) != MDS_OK:
            raise_for(err.status, &err)

    @property
    def abort_info(self):
        """``(code, reason)`` if the ring was aborted, else ``None``."""
        cdef int32_t code
        cdef char reason[256]
        self.check_mapped()
        if mds_ring_state(&self.c) not in (MDS_STATE_ABORTING, MDS_STATE_ABORTED):
            return None
        mds_ring_abort_info(&self.c, &code, reason, sizeof(reason))
        return (<uint32_t>code, reason.decode("utf-8", "replace"))

    # ---- producer -------------------------------------------------------

    def write(self, offset, data, timeout=None):
        """Append one record: ``data`` (any contiguous buffer) destined for ``offset``.

        Waits for space up to ``timeout`` seconds (``None``: as long as it takes,
        interruptible with Ctrl-C); raises :class:`RingTimeoutError` instead of
        dropping data.  Writes larger than :attr:`max_payload` become several
        records; if such a write fails part-way, the exception's
        ``bytes_written`` says how long a prefix was delivered.  Publishes
        immediately.  The first write begins the ring's one dump.
        """
        cdef Py_buffer view
        cdef mds_error err
        cdef int rc = MDS_OK
        cdef uint64_t off, deadline, slice_deadline, now, done = 0, chunk, length
        cdef const uint8_t *ptr
        self.check_mapped()
        if not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0 or offset > 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"offset must be in [0, 2**64), not {offset}")
        if isinstance(data, str):
            raise TypeError("data must be a bytes-like object, not str")
        off = offset
        deadline = deadline_after(timeout)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.enter(True)
            try:
                ptr = <const uint8_t *>view.buf
                length = <uint64_t>view.len
                if off > 0xFFFFFFFFFFFFFFFF - length:
                    raise ValueError(f"offset {offset} + {length} bytes overflows 64 bits")
                while True:
                    chunk = length - done
                    if chunk > self.c.max_payload:
                        chunk = self.c.max_payload
                    now = mds_now_ns()
                    slice_deadline = now + WAIT_SLICE_NS
                    if deadline and deadline < slice_deadline:
                        slice_deadline = deadline
                    with nogil:
                        rc = mds_ring_write(&self.c, off + done, ptr + done, chunk, slice_deadline, &err)
                    if rc == MDS_ERR_TIMEOUT and (deadline == 0 or mds_now_ns() < deadline):
                        PyErr_CheckSignals()
                        continue   # nothing of this chunk was written: retry it
                    if rc != MDS_OK:
                        try:
                            raise_for(rc, &err)
                        except _errors.RingError as exc:
                            # A write larger than max_payload is several records:
                            # say how much of it the consumer will see.
                            exc.bytes_written = done
                            raise
                    done += chunk
                    if done >= length:
                        break
                mds_ring_flush(&self.c)
            finally:
                self.leave(True)
        finally:
            PyBuffer_Release(&view)

    def flush(self):
        """Publish records written through the C API with lazy publication."""
        self.check_mapped()
        mds_ring_flush(&self.c)

    def seal(self, timeout=None):
        """The producer's end of the dump: write the END record and mark the ring finished.

        Returns at once; the consumer drains what is left, verifies the END
        record and commits.  :meth:`finish` also waits for that commit.
        """
        cdef mds_error err
        cdef int rc
        cdef uint64_t timeout_ns = 0
        if timeout is not None:
            timeout_ns = <uint64_t>(max(float(timeout), 0.0) * 1e9) + 1
        self.enter(True)
        try:
            with nogil:
                rc = mds_ring_end(&self.c, timeout_ns, &err)
        finally:
            self.leave(True)
        if rc != MDS_OK:
            raise_for(rc, &err)

    def finish(self, timeout=None):
        """The producer is done: seal the dump, then wait until the consumer committed it.

        Returns only once the consumer said, through the ring, that the dump is
        safe (its sinks finished: fsync and rename done).  Raises
        :class:`RingAbortedError` if the consumer gave up, :class:`ConsumerGoneError`
        if it died or detached first, :class:`RingTimeoutError` after
        ``timeout`` seconds (``None``: wait as long as it takes, interruptible
        with Ctrl-C).  A thread that consumes the same handle itself must use
        :meth:`seal` instead (it cannot wait for its own commit).
        """
        cdef mds_error err
        cdef int rc = MDS_OK
        cdef uint64_t deadline = deadline_after(timeout), slice_deadline, now
        self.seal(timeout)
        self.enter(True)
        try:
            while True:
                now = mds_now_ns()
                slice_deadline = now + WAIT_SLICE_NS
                if deadline and deadline < slice_deadline:
                    slice_deadline = deadline
                with nogil:
                    rc = mds_ring_wait_committed(&self.c, slice_deadline, &err)
                if rc == MDS_ERR_TIMEOUT and (deadline == 0 or mds_now_ns() < deadline):
                    PyErr_CheckSignals()
                    continue
                break
        finally:
            self.leave(True)
        if rc != MDS_OK:
            if self.c.prod.claimed:
                mds_ring_set_outcome(&self.c, MDS_OUTCOME_FAILED)
            raise_for(rc, &err)
        self.producer_finished = True

    def abort(self, code, reason=""):
        """End the ring with an HRESULT-like ``code`` and a ``reason``.

        Either side may abort (also a finished ring that was not committed yet);
        the other side then gets :class:`RingAbortedError` carrying both.  The
        first abort wins; returns ``False`` if the ring was already aborted or
        committed.
        """
        self.check_mapped()
        if not mds_ring_owned_by_this_process(&self.c):
            raise _errors.RingClosedError("this ring handle was inherited across fork(); it may only be closed")
        icode = int(code)
        if not -0x80000000 <= icode <= 0xFFFFFFFF:
            raise ValueError(f"code must fit 32 bits, not {code!r}")
        encoded = str(reason).encode("utf-8", "replace")[:255]
        if b"\0" in encoded:
            encoded = encoded.replace(b"\0", b" ")
        cdef uint32_t bits = <uint32_t>(icode & 0xFFFFFFFF)
        aborted = mds_ring_abort(&self.c, <int32_t>bits, encoded) == MDS_OK
        if aborted and self.c.prod.claimed:
            mds_ring_set_outcome(&self.c, MDS_OUTCOME_FAILED)
        return aborted

    # ---- the consumer's commit -------------------------------------------

    def begin_commit(self):
        """The consumer's output is durable (fsynced); it is about to publish it under its final name.

        Call after the last batch (:meth:`read` returned ``None``: the END
        record was verified).  Raises :class:`RingAbortedError` when the
        producer gave up meanwhile (its deadline passed): then publish nothing.
        """
        cdef mds_error err
        self.check_mapped()
        if mds_ring_commit_begin(&self.c, &err) != MDS_OK:
            raise_for(err.status, &err)

    def commit(self):
        """The dump is safe under its final name: the producer's ``finish`` (or ``IoFinishCallback``) succeeds now.

        Implies :meth:`begin_commit` for a consumer with nothing to publish.
        """
        cdef mds_error err
        self.check_mapped()
        if mds_ring_commit(&self.c, &err) != MDS_OK:
            raise_for(err.status, &err)

    def wait_output_released(self, timeout=60.0):
        """After a failure: wait until a spilling producer no longer needs :attr:`consumer_output`.

        True when the partial output may be removed now (the producer copied
        what it needed, will not spill, or is gone); False when ``timeout``
        passed and it may still be needed.
        """
        cdef uint64_t t = <uint64_t>(max(float(timeout), 0.0) * 1e9)
        cdef int released
        self.check_mapped()
        with nogil:
            released = mds_ring_wait_output_released(&self.c, t)
        return bool(released)

    # ---- consumer -------------------------------------------------------

    def read(self, timeout=None):
        """Return the next :class:`Batch` of records, waiting up to ``timeout`` seconds.

        Returns ``None`` once the producer finished and everything was read,
        the END record included and verified (then :meth:`commit` once what was
        read is safe); raises :class:`RingAbortedError` if the ring was
        aborted, :class:`ProducerGoneError` if the producer died or detached,
        :class:`RingCorruptError` if the stream is not one whole dump (an END
        that does not match, a second dump, a consumer that joined late), and
        :class:`RingTimeoutError` when ``timeout`` passes with nothing to read.
        Blocking waits sleep (no busy loop) and Ctrl-C interrupts them.
        """
        cdef uint64_t start = 0, end = 0
        cdef int status
        cdef Batch batch
        cdef mds_span_summary summary
        self.enter(False)
        try:
            status = self.next_span(deadline_after(timeout), &start, &end, &summary)
        finally:
            self.leave(False)
        if status == SPAN_TIMEOUT:
            raise _errors.RingTimeoutError(f"no data within {timeout} s")
        if status == SPAN_END:
            return None
        batch = Batch.__new__(Batch)
        batch.ring = self
        set_batch_span(batch, start, end)
        batch.summary_cache = summary
        batch.has_summary = True
        self.live_batches += 1
        return batch

    cdef int next_span(self, uint64_t deadline, uint64_t *start, uint64_t *end,
                       mds_span_summary *summary) except -1:
        # The consumer's wait for the next published span holding a DATA
        # record: SPAN_READY with [start, end) taken (checked, folded into the
        # dump's totals, the cursor moved past it) and its summary, SPAN_END
        # once the producer finished and the END record was verified,
        # SPAN_TIMEOUT at the deadline (0 = none).  Shared by read() and the
        # native drain loop; callers hold enter(False).
        cdef mds_error err
        cdef uint64_t now, slice_ns
        cdef int rc
        if not self.c.cons.claimed:
            rc = mds_ring_claim_consumer(&self.c, &err)
            if rc != MDS_OK:
                raise_for(rc, &err)
        stalled_since = 0
        while True:
            rc = mds_ring_poll(&self.c, start, end, &err)
            if rc == MDS_OK:
                rc = mds_ring_take(&self.c, start[0], end[0], &summary.records, &summary.bytes,
                                   &summary.highest_end, &err)
                if rc != MDS_OK:
                    raise_for(rc, &err)
                if summary.records == 0:
                    # Only framing (BEGIN/END) or padding: give it back and read on.
                    self.release_range(start[0], end[0])
                    continue
                return SPAN_READY
            if rc == MDS_END:
                start[0] = end[0] = 0
                return SPAN_END
            if rc != MDS_EMPTY:
                raise_for(rc, &err)
            now = mds_now_ns()
            if deadline and now >= deadline:
                return SPAN_TIMEOUT
            # A deferred release holds space; if the producer is waiting for
            # exactly that space, only this consumer can end the wait.
            # (Checked at two moments at least a second apart, so the brief
            # gaps between the producer's wait slices do not hide it.)
            if not self.deferred_batches:
                stalled_since = 0
            elif self.c.header.producer_waiting:
                if not stalled_since:
                    stalled_since = now
                elif now - stalled_since > 1_000_000_000:
                    raise BufferError(
                        f"the producer is waiting for space that {self.deferred_batches} released batch(es) "
                        "still hold through live numpy views; drop those views (a leftover loop variable?) "
                        "or copy the data you keep")
            slice_ns = WAIT_SLICE_NS
            if deadline and deadline - now < slice_ns:
                slice_ns = deadline - now
            with nogil:
                rc = mds_ring_wait_data(&self.c, slice_ns, &err)
            if rc != MDS_OK:
                # Data may have been published just before the peer went away.
                if mds_ring_poll(&self.c, start, end, &err) == MDS_OK:
                    continue
                raise_for(rc, &err)
            PyErr_CheckSignals()

    def __iter__(self):
        """Yield batches until the producer finishes (each released after the loop body).

        Leaving the loop (``break``, or an exception in its body) also releases
        the current batch: a loop cannot tell the two apart.  A consumer whose
        sink may fail reads with ``with ring.read() as batch:`` instead, which
        keeps a batch whose block raised for the spill.
        """
        while True:
            batch = self.read()
            if batch is None:
                return
            try:
                yield batch
            finally:
                batch.release()

    cdef int release_range(self, uint64_t start, uint64_t end) except -1:
        # Batches may be released in any order; the shared read position only
        # moves over a contiguous prefix of released batches.
        if start != self.c.cons.released:
            self.pending_releases[start] = end
            return 0
        while True:
            nxt = self.pending_releases.pop(end, None)
            if nxt is None:
                break
            end = nxt
        mds_ring_release(&self.c, end)
        return 0

    # ---- lifecycle ------------------------------------------------------

    def close(self, timeout=DEFAULT_CLOSE_TIMEOUT):
        """Unmap the ring and give up this handle's roles.

        Other threads blocked in this handle (a read, a write, a dump
        callback's wait for space) are woken and fail with
        :class:`RingClosedError`; close waits up to ``timeout`` seconds for
        them to leave and raises :class:`RingBusyError` if they do not (the
        handle then stays mapped, and refuses new work).  Raises
        :class:`BufferError` while numpy views of its data are alive.  A
        producer that closes without finishing leaves the ring marked so the
        consumer stops waiting; the creator of a named ring removes its name.
        A handle inherited across ``fork()`` only unmaps.
        """
        cdef mds_error err
        cdef int rc
        cdef uint64_t deadline
        if not self.mapped:
            return
        if self.live_exports:
            raise BufferError(f"{self.live_exports} view(s) of ring data are still alive")
        inherited = not mds_ring_owned_by_this_process(&self.c)
        # Wake and wait out the other users: Python calls (counted here) and
        # native dump callbacks (counted in C).
        deadline = mds_now_ns() + <uint64_t>(max(float(timeout), 0.0) * 1e9)
        with nogil:
            rc = mds_ring_shutdown(&self.c, 0, &err)
        while not inherited and (self.users or rc != MDS_OK):
            if mds_now_ns() >= deadline:
                users = self.users + self.c.active_users
                raise _errors.RingBusyError(
                    f"ring {self.path or '(anonymous)'} is still in use by {users} operation(s) in other threads "
                    f"after {timeout} s (a dump in progress?); it refuses new work and can be closed again")
            with nogil:
                rc = mds_ring_shutdown(&self.c, 2_000_000, &err)
        path = self.c.name if (self.unlink_on_close and not inherited) else None
        mds_ring_close(&self.c)
        self.mapped = False
        if path:
            mds_ring_unlink(path, NULL)

    def unlink(self):
        """Remove the ring's name now (existing mappings stay valid)."""
        cdef mds_error err
        if not self.c.name[0]:
            return
        rc = mds_ring_unlink(self.c.name, &err)
        self.unlink_on_close = False
        if rc != MDS_OK and rc != MDS_ERR_NOT_FOUND:
            raise_for(rc, &err)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        # Batches keep their ring alive, so no view can outlive this mapping;
        # callers inside a method keep it alive too.
        if self.mapped:
            name = self.c.name if (self.unlink_on_close and mds_ring_owned_by_this_process(&self.c)) else None
            mds_ring_close(&self.c)
            self.mapped = False
            if name:
                mds_ring_unlink(name, NULL)

    @staticmethod
    def probe_stale(name_or_path):
        """``(stale, creator_pid)`` for the ring file at ``name_or_path``, without attaching.

        ``stale`` is True for an mdstream ring of this user that no live process
        holds (creator, producer and consumer all gone).  Raises
        :class:`RingNotFoundError`, :class:`RingFormatError` (not a ring) or
        :class:`RingPermissionError` (not this user's regular file).
        """
        cdef mds_error err
        cdef int stale = 0
        cdef uint32_t creator = 0
        encoded = os.fsencode(name_or_path)
        if b"\0" in encoded or not encoded:
            raise ValueError(f"bad ring name {name_or_path!r}")
        if mds_ring_probe_stale(encoded, &stale, &creator, &err) != MDS_OK:
            raise_for(err.status, &err)
        return bool(stale), creator

    @staticmethod
    def remove_stale(name_or_path):
        """Remove the ring file at ``name_or_path`` if it is stale; True if it was removed.

        Only the very file found stale goes: a ring that someone created or
        reclaimed under that name meanwhile holds its creator lock and is left
        alone.  Raises as :meth:`probe_stale` does.
        """
        cdef mds_error err
        cdef int removed = 0
        encoded = os.fsencode(name_or_path)
        if b"\0" in encoded or not encoded:
            raise ValueError(f"bad ring name {name_or_path!r}")
        if mds_ring_remove_stale(encoded, &removed, &err) != MDS_OK:
            raise_for(err.status, &err)
        return bool(removed)

    def __repr__(self):
        if not self.mapped:
            return "<mdstream.Ring closed>"
        return (f"<mdstream.Ring {self.path or 'anonymous'} capacity={self.capacity} "
                f"state={self.state} write={self.write_position} read={self.read_position}>")


cdef inline void set_batch_span(Batch batch, uint64_t start, uint64_t end) noexcept:
    # The BEGIN record leads the ring's first span: the batch holds (and
    # releases) it, but shows only the dump's records.
    cdef uint64_t shown = start
    if start == 0:
        shown = MDS_RING_RECORD_HEADER + MDS_BEGIN_PAYLOAD
    batch.start = start
    batch.end = end
    batch.span = mds_ring_at(&batch.ring.c, shown)
    batch.span_len = end - shown


cdef class Batch:
    """Records read from the ring in one go, exposed without copying.

    ``offsets`` (uint64) and ``lengths`` (uint32) are numpy arrays with one entry
    per record; ``positions`` (uint64) locate each payload inside ``buffer``, a
    read-only uint8 view straight into the shared mapping; ``view(i)`` and
    iteration give per-record payload views.

    Lifetime: :meth:`release` (or leaving a ``with`` block) hands the space back
    to the producer.  If numpy views of the batch are still alive at that moment
    the release is *deferred* until the last of them is gone, so a view never
    sees bytes the producer reused.  Batches may be released in any order.
    """

    def __cinit__(self):
        self.exports = 0
        self.release_requested = False
        self.is_released = False
        self.deferred = False
        self.index_cache = None
        self.has_summary = False

    def __init__(self):
        raise TypeError("batches come from Ring.read()")

    cdef int check_live(self) except -1:
        if self.is_released or self.release_requested:
            raise ValueError("the batch was released")
        if not self.ring.mapped:
            raise ValueError("the batch's ring was closed")
        if mds_ring_faulted(&self.ring.c):
            raise _errors.RingCorruptError(f"ring file {self.ring.path} was truncated while this batch was in use")
        return 0

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("ring batches are read-only")
        if self.is_released or self.release_requested:
            raise BufferError("the batch was released")
        if not self.ring.mapped:
            raise BufferError("the batch's ring was closed")
        export_bytes(buffer, self, <void *>self.span, <Py_ssize_t>self.span_len, True, self.shape, self.strides)
        self.exports += 1
        self.ring.live_exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1
        self.ring.live_exports -= 1
        if self.exports == 0 and self.release_requested and not self.is_released:
            self.do_release()

    cdef int do_release(self) except -1:
        self.is_released = True
        self.index_cache = None
        self.ring.live_batches -= 1
        if self.deferred:
            self.ring.deferred_batches -= 1
        if self.ring.mapped:
            self.ring.release_range(self.start, self.end)
        return 0

    cdef int abandon(self) except -1:
        """Stop tracking the batch without releasing it: its records were not stored.

        A consumer whose sink failed must not hand the space back: the records
        stay at or after ``read_pos``, where a spilling producer finds them
        (docs/ring-format.md, "Release means stored").
        """
        if self.is_released:
            return 0
        self.is_released = True
        self.release_requested = True
        self.index_cache = None
        self.ring.live_batches -= 1
        if self.deferred:
            self.ring.deferred_batches -= 1
        return 0

    def release(self):
        """Give the batch's space back (deferred while views are alive; idempotent)."""
        if self.is_released or self.release_requested:
            return
        self.release_requested = True
        if self.exports == 0:
            self.do_release()
        else:
            self.deferred = True
            self.ring.deferred_batches += 1
        if self.ring.mapped and mds_ring_faulted(&self.ring.c):
            # Whatever a sink took from this batch may be zeros: say so before
            # anyone trusts it (the SIGBUS guard absorbed the fault).
            raise _errors.RingCorruptError(f"ring file {self.ring.path} was truncated while this batch was in use; "
                                           "its contents are not trustworthy")

    @property
    def released(self):
        """True once the space went back to the producer."""
        return self.is_released

    @property
    def pending_views(self):
        """How many buffer exports (numpy views) of this batch are alive."""
        return self.exports

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # Released only if the block stored it: after an exception the records
        # stay in the ring for the spill (see abandon).
        if exc_type is None:
            self.release()
        else:
            self.abandon()

    def __dealloc__(self):
        if not self.is_released and self.ring is not None:
            self.is_released = True
            self.ring.live_batches -= 1
            if self.ring.mapped:
                try:
                    self.ring.release_range(self.start, self.end)
                except BaseException:
                    pass

    cdef tuple _index(self):
        cdef mds_error err
        cdef uint64_t count = 0
        cdef int rc
        cdef cnp.ndarray offsets, lengths, positions
        cdef mds_span_summary summary
        if self.index_cache is not None:
            return self.index_cache
        self.check_live()
        with nogil:
            rc = mds_span_scan(self.span, self.span_len, &summary, &err)
        if rc != MDS_OK:
            raise_for(rc, &err)
        offsets = np.empty(summary.records, dtype=np.uint64)
        lengths = np.empty(summary.records, dtype=np.uint32)
        positions = np.empty(summary.records, dtype=np.uint64)
        with nogil:
            rc = mds_span_index(self.span, self.span_len, <uint64_t *>cnp.PyArray_DATA(offsets),
                                <uint32_t *>cnp.PyArray_DATA(lengths), <uint64_t *>cnp.PyArray_DATA(positions),
                                summary.records, &count, &err)
        if rc != MDS_OK:
            raise_for(rc, &err)
        if count != summary.records:
            raise _errors.RingCorruptError("the batch changed while it was indexed")
        for arr in (offsets, lengths, positions):
            arr.flags.writeable = False
        self.index_cache = (offsets, lengths, positions)
        return self.index_cache

    @property
    def offsets(self):
        """Destination offset of each record (uint64 array)."""
        return self._index()[0]

    @property
    def lengths(self):
        """Payload length of each record (uint32 array)."""
        return self._index()[1]

    @property
    def positions(self):
        """Where each payload starts inside :attr:`buffer` (uint64 array)."""
        return self._index()[2]

    @property
    def buffer(self):
        """The batch's bytes in the mapping (record headers included), read-only uint8, zero-copy."""
        self.check_live()
        return np.frombuffer(self, dtype=np.uint8)

    cdef int get_summary(self, mds_span_summary *out) except -1:
        # One validating pass over the record headers, shared by every sink
        # that consumes this batch (each still re-checks bounds as it copies).
        cdef mds_error err
        cdef int rc
        self.check_live()
        if not self.has_summary:
            with nogil:
                rc = mds_span_scan(self.span, self.span_len, &self.summary_cache, &err)
            if rc != MDS_OK:
                raise_for(rc, &err)
            self.has_summary = True
        out[0] = self.summary_cache
        return 0

    def summary(self):
        """``(records, payload_bytes, highest_end)`` from one pass over the record headers, no allocation."""
        cdef mds_span_summary s
        self.get_summary(&s)
        return (s.records, s.bytes, s.highest_end)

    @property
    def nbytes(self):
        """Total payload bytes."""
        return int(self._index()[1].sum(dtype=np.uint64))

    @property
    def span(self):
        """``(start, end)`` ring positions covered by the batch."""
        return (self.start, self.end)

    def __len__(self):
        return len(self._index()[0])

    def view(self, Py_ssize_t i):
        """Payload of record ``i`` as a read-only uint8 view into the mapping."""
        offsets, lengths, positions = self._index()
        n = len(offsets)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("record index out of range")
        p = int(positions[i])
        return self.buffer[p:p + int(lengths[i])]

    def __iter__(self):
        """Yield ``(offset, view)`` for each record, in the order written."""
        offsets, lengths, positions = self._index()
        data = self.buffer
        for off, length, pos in zip(offsets.tolist(), lengths.tolist(), positions.tolist()):
            yield off, data[pos:pos + length]

    def __repr__(self):
        state = "released" if self.is_released else ("releasing" if self.release_requested else "live")
        return f"<mdstream.Batch span=[{self.start}, {self.end}) {state}>"
