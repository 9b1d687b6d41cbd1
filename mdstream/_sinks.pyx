# cython: freethreading_compatible = False
"""Built-in sinks.  Python is entered once per batch; the per-record loop is C
(span.h) running without the GIL."""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memset
from cpython.buffer cimport PyBUF_WRITABLE

import os

import numpy as np
cimport numpy as cnp

from mdstream._core cimport *
from mdstream._buffers cimport export_bytes
from mdstream._ring cimport Batch, Ring, SPAN_END, SPAN_TIMEOUT, raise_for, set_batch_span
from mdstream._private_files import check_new_output, check_output_name, create_private_temp, fsync_directory, publish
from mdstream.errors import OutputExistsError

cnp.import_array()

cdef uint8_t EMPTY_BYTE = 0


cdef inline int scan_batch(Batch batch, mds_span_summary *summary) except -1:
    return batch.get_summary(summary)


cdef class NullSink:
    """Counts and releases: the ring alone, for benchmarks and draining to nowhere."""
    cdef readonly uint64_t records
    cdef readonly uint64_t bytes
    cdef readonly uint64_t highest_end

    cpdef consume(self, Batch batch):
        cdef mds_span_summary s
        scan_batch(batch, &s)
        self.records += s.records
        self.bytes += s.bytes
        if s.highest_end > self.highest_end:
            self.highest_end = s.highest_end

    def finish(self):
        return None

    def abort(self, error):
        pass

    @property
    def size(self):
        """The dump's final size so far (highest offset + length)."""
        return self.highest_end


cdef inline uint64_t populate_ahead(uint64_t end) noexcept nogil:
    # An eighth of the dump so far, 2-32 MiB: few calls on a large dump, little
    # memory past the end of a small one.
    cdef uint64_t ahead = end >> 3
    if ahead < (2 << 20):
        return 2 << 20
    if ahead > (32 << 20):
        return 32 << 20
    return ahead


cdef inline uint64_t helper_ahead(uint64_t end) noexcept nogil:
    # A quarter of the dump so far, 8-128 MiB: far enough that the copy rarely
    # catches up with the helper, bounded memory past the end of the dump.
    cdef uint64_t ahead = end >> 2
    if ahead < (8 << 20):
        return 8 << 20
    if ahead > (128 << 20):
        return 128 << 20
    return ahead


cdef class MemorySink:
    """Reassembles the dump in memory: last write wins, gaps read as zeros.

    Grows without copying (on Linux a large address-space reservation that
    fills in place, faulted in ahead of the writer a stretch at a time).  :attr:`array` is a uint8
    numpy view of the dump (zero-copy); :meth:`tobytes` copies it.  The sink
    cannot grow while views of it are alive (``BufferError``), so take views
    after :meth:`finish`.
    """
    cdef mds_growbuf buf
    cdef Py_ssize_t exports
    cdef readonly uint64_t records
    cdef readonly uint64_t bytes
    cdef readonly bint finished
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self):
        memset(&self.buf, 0, sizeof(self.buf))
        self.exports = 0

    def __init__(self, size_hint=0, *, prefault=False):
        """``size_hint``: the expected dump size, reserved up front (no regrowth).

        ``prefault=True`` also faults those pages in now, so that the dump
        itself pays no page faults or kernel page zeroing: for an agent that
        sets its sink up before a crash.  Needs a ``size_hint``.
        """
        cdef mds_error err
        cdef int rc
        hint = int(size_hint)
        if hint < 0:
            raise ValueError("size_hint must be >= 0")
        if prefault and not hint:
            raise ValueError("prefault needs a size_hint")
        if hint:
            if mds_growbuf_reserve(&self.buf, hint, &err) != MDS_OK:
                raise MemoryError(err.message.decode("utf-8", "replace"))
            self.buf.size = 0
            if prefault:
                with nogil:
                    rc = mds_growbuf_prefault(&self.buf, &err)
                if rc != MDS_OK:
                    raise MemoryError(err.message.decode("utf-8", "replace"))

    def __dealloc__(self):
        mds_growbuf_free(&self.buf)

    cpdef consume(self, Batch batch):
        cdef mds_span_summary s
        cdef mds_error err
        cdef int rc
        scan_batch(batch, &s)
        if s.highest_end > self.buf.size:
            if self.exports:
                raise BufferError("MemorySink cannot grow while views of it are alive")
            rc = mds_growbuf_reserve(&self.buf, s.highest_end, &err)
            if rc != MDS_OK:
                raise MemoryError(err.message.decode("utf-8", "replace"))
        with nogil:
            if s.highest_end > self.buf.populated:
                # A large dump: a helper thread faults pages in ahead, beside
                # the copy.  A small one (or no helper): a stretch ahead in one
                # call, cheaper than a fault per page under the copy.
                mds_growbuf_populate_ahead(&self.buf, s.highest_end + helper_ahead(s.highest_end))
                if self.buf.helper == NULL:
                    rc = mds_growbuf_populate(&self.buf, s.highest_end + populate_ahead(s.highest_end), &err)
                    if rc != MDS_OK:
                        with gil:
                            raise MemoryError(err.message.decode("utf-8", "replace"))
            rc = mds_span_apply_memory(batch.span, batch.span_len, self.buf.data, self.buf.size, &err)
        if rc != MDS_OK:
            raise_for(rc, &err)
        self.records += s.records
        self.bytes += s.bytes

    def finish(self):
        self.finished = True
        return self.array

    def abort(self, error):
        pass

    @property
    def size(self):
        """Bytes in the dump (highest offset + length seen)."""
        return self.buf.size

    @property
    def array(self):
        """The dump as a uint8 numpy array sharing the sink's memory."""
        return np.frombuffer(self, dtype=np.uint8)

    def tobytes(self):
        """The dump as ``bytes`` (a copy)."""
        return bytes(memoryview(self))

    def __len__(self):
        return self.buf.size

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        export_bytes(buffer, self, <void *>(self.buf.data if self.buf.data != NULL else &EMPTY_BYTE),
                     <Py_ssize_t>self.buf.size, False, self.shape, self.strides)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1


cdef class FileSink:
    """Reassembles the dump into a file at ``path``.

    Each record is applied at its offset in a private temporary file beside
    the target, which is fsynced and renamed into place only when the ring
    finished cleanly.  Small records are copied into a shared mapping of the
    file (its blocks allocated first, so a full file system is ``ENOSPC``, not
    ``SIGBUS``) and runs of contiguous records of 4 KiB or more go to the file
    with ``pwritev``; either way a record is in the file when :meth:`consume`
    returns (``mdstream/include/mdstream/filesink.h``).  An aborted dump leaves
    nothing under the final name; with ``keep_partial=True`` the partial file
    is kept as ``PATH.partial``.  Files are created 0600 and symlinks are never
    followed.  The final size is the highest offset + length.  An existing
    ``path`` is refused (:class:`~mdstream.errors.OutputExistsError`, at
    construction and again at the rename) unless ``overwrite=True``.
    """
    cdef int fd
    cdef mds_filesink store
    cdef readonly str path
    cdef readonly str temp_path
    cdef readonly bint keep_partial
    cdef readonly bint durable
    cdef readonly bint overwrite
    cdef readonly uint64_t records
    cdef readonly uint64_t bytes
    cdef readonly str state

    def __cinit__(self):
        self.fd = -1
        mds_filesink_init(&self.store, -1, 0)

    def __init__(self, path, *, keep_partial=False, fsync=True, overwrite=False, _mapping=True):
        self.overwrite = bool(overwrite)
        check_new_output(check_output_name(os.fspath(path)), self.overwrite)
        fd, temp, final = create_private_temp(path, ".mdstream-partial")
        self.fd = fd
        mds_filesink_init(&self.store, fd, 1 if _mapping else 0)
        self.temp_path = temp
        self.path = final
        self.keep_partial = bool(keep_partial)
        self.durable = bool(fsync)
        self.state = "open"

    cpdef consume(self, Batch batch):
        cdef mds_span_summary s
        cdef mds_error err
        cdef int rc
        if self.fd < 0:
            raise ValueError(f"FileSink for {self.path} is {self.state}")
        scan_batch(batch, &s)
        with nogil:
            rc = mds_filesink_apply(&self.store, batch.span, batch.span_len, &err)
        if rc != MDS_OK:
            if rc == MDS_ERR_SYS:
                raise OSError(err.sys_errno, f"writing {self.path}: {os.strerror(err.sys_errno)}")
            raise_for(rc, &err)
        self.records += s.records
        self.bytes += s.bytes

    def write(self, offset, data):
        """Apply one write of ``data`` (bytes-like) at ``offset``, as a record would be."""
        cdef mds_error err
        cdef int rc
        cdef const uint8_t[::1] view
        cdef uint64_t off
        if self.fd < 0 or self.state != "open":
            raise ValueError(f"FileSink for {self.path} is {self.state}")
        if offset < 0:
            raise ValueError("offset must be >= 0")
        off = offset
        view = memoryview(data).cast("B")
        with nogil:
            rc = mds_filesink_write(&self.store, off, &view[0] if view.shape[0] else &EMPTY_BYTE,
                                    <uint64_t>view.shape[0], &err)
        if rc != MDS_OK:
            if rc == MDS_ERR_SYS:
                raise OSError(err.sys_errno, f"writing {self.path}: {os.strerror(err.sys_errno)}")
            raise_for(rc, &err)
        self.records += 1
        self.bytes += <uint64_t>view.shape[0]

    @property
    def highest_end(self):
        return self.store.highest_end

    @property
    def storage(self):
        """How the records reached the file: ``mapped`` (small writes through the
        mapping), ``direct_writes`` (pwritev calls), ``mapped_bytes``, ``maps``."""
        return {"mapped": bool(self.store.mapped), "direct_writes": self.store.direct_writes,
                "mapped_bytes": self.store.mapped_bytes, "maps": self.store.maps}

    def prepare(self):
        """First half of :meth:`finish`: size the partial file and make it durable (fsync).

        A consumer committing through a ring calls this, then
        ``Ring.begin_commit()``, then :meth:`publish`.
        """
        cdef mds_error err
        cdef int rc
        cdef int durable = 1 if self.durable else 0
        if self.fd < 0:
            raise ValueError(f"FileSink for {self.path} is {self.state}")
        if self.state == "prepared":
            return
        with nogil:
            rc = mds_filesink_finish(&self.store, durable, &err)
        if rc != MDS_OK:
            raise OSError(err.sys_errno, f"finishing {self.path}: {os.strerror(err.sys_errno)}")
        self.state = "prepared"

    def publish(self, *, keep_temp=False):
        """Second half of :meth:`finish`: rename the durable partial file into place; returns the final path.

        ``keep_temp=True`` (``drain()`` between ``begin_commit`` and ``commit``):
        the partial file stays linked beside the output until
        :meth:`release_temp`, so a producer that spills because this consumer
        died before its commit still finds the whole dump's consumer part.
        """
        if self.state != "prepared":
            self.prepare()
        self._close()
        try:
            kept = publish(self.temp_path, self.path, self.overwrite, keep_temp)
        except OutputExistsError as exc:
            self.state = "aborted"  # abort() must not remove the only copy of this dump
            raise OutputExistsError(exc.errno, f"{self.path} appeared while the dump was being written; "
                                        f"the new dump is kept in {self.temp_path}", self.path) from None
        except OSError as exc:
            self.state = "open"   # abort() may still remove the partial file
            raise OSError(exc.errno, f"cannot put the dump in place at {self.path}: {exc.strerror}") from None
        if self.durable:
            fsync_directory(os.path.dirname(self.path))
        self.state = "published" if kept else "finished"
        return self.path

    def release_temp(self):
        """After the commit: remove the partial file's second name (the output keeps the data)."""
        if self.state != "published":
            return
        self.state = "finished"
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    def finish(self):
        """Size, fsync and rename into place; returns the final path."""
        self.prepare()
        return self.publish()

    cdef _close(self):
        mds_filesink_unmap(&self.store)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.store.fd = -1

    def detach(self):
        """Close without removing the partial file (a spilling producer still needs it)."""
        self._close()
        if self.state in ("open", "prepared"):
            self.state = "detached"

    def abort(self, error=None):
        """Drop the partial file (or keep it as ``PATH.partial`` if asked)."""
        cdef mds_error err
        if self.keep_partial and self.fd >= 0 and self.state == "open":
            # Mapped segments are allocated whole: cut the kept file to the dump's size.
            mds_filesink_finish(&self.store, 0, &err)
        self._close()
        if self.state == "published":  # the output is in place; only its second name goes
            self.release_temp()
            return
        if self.state not in ("open", "prepared"):
            return
        self.state = "aborted"
        try:
            if self.keep_partial:
                os.replace(self.temp_path, self.path + ".partial")
            else:
                os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    @property
    def size(self):
        return self.store.highest_end

    def __dealloc__(self):
        mds_filesink_unmap(&self.store)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.state in ("open", "prepared") and self.temp_path:
                try:
                    os.unlink(self.temp_path)
                except OSError:
                    pass


cdef class TraceSink:
    """Records what was drained as an MDTRACE1 trace (``docs/trace-format.md``).

    Written privately beside ``path`` and renamed into place by :meth:`finish`;
    :meth:`abort` keeps the trace (it shows what arrived before the failure)
    unless ``keep_on_abort=False``.  An existing ``path`` is refused unless
    ``overwrite=True``.
    """
    cdef mds_trace_writer writer
    cdef bint writer_ready
    cdef int fd
    cdef readonly str path
    cdef readonly str temp_path
    cdef readonly bint keep_on_abort
    cdef readonly bint overwrite
    cdef readonly str state
    cdef uint64_t final_records

    def __cinit__(self):
        self.fd = -1
        self.writer_ready = False
        self.final_records = 0

    def __init__(self, path, *, keep_on_abort=True, overwrite=False):
        cdef mds_error err
        self.overwrite = bool(overwrite)
        check_new_output(check_output_name(os.fspath(path)), self.overwrite)
        fd, temp, final = create_private_temp(path, ".mdtrace-partial")
        self.fd = fd
        self.temp_path = temp
        self.path = final
        self.keep_on_abort = bool(keep_on_abort)
        self.state = "open"
        if mds_trace_writer_init(&self.writer, fd, 1 << 20, &err) != MDS_OK:
            raise MemoryError(err.message.decode())
        self.writer_ready = True
        os.write(fd, b"MDTRACE1")

    cpdef consume(self, Batch batch):
        cdef mds_error err
        cdef int rc
        if self.fd < 0:
            raise ValueError(f"TraceSink for {self.path} is {self.state}")
        batch.check_live()
        with nogil:
            rc = mds_trace_writer_span(&self.writer, batch.span, batch.span_len, &err)
        if rc != MDS_OK:
            if rc == MDS_ERR_SYS:
                raise OSError(err.sys_errno, f"writing {self.path}: {os.strerror(err.sys_errno)}")
            raise_for(rc, &err)

    @property
    def records(self):
        """Records written to the trace."""
        return self.writer.records if self.writer_ready else self.final_records

    cdef _close(self, bint keep, str final_path):
        cdef mds_error err
        rc = mds_trace_writer_flush(&self.writer, &err)
        self.final_records = self.writer.records
        if self.writer_ready:
            mds_trace_writer_free(&self.writer)
            self.writer_ready = False
        try:
            if rc == MDS_OK:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        if rc != MDS_OK or not keep:
            os.unlink(self.temp_path)
            if rc != MDS_OK:
                raise OSError(err.sys_errno, f"writing {self.path}: {os.strerror(err.sys_errno)}")
            return None
        publish(self.temp_path, final_path, self.overwrite)
        return final_path

    def finish(self):
        if self.fd < 0:
            raise ValueError(f"TraceSink for {self.path} is {self.state}")
        self.state = "finished"
        return self._close(True, self.path)

    def abort(self, error=None):
        if self.fd < 0:
            return
        self.state = "aborted"
        self._close(self.keep_on_abort, self.path)

    def __dealloc__(self):
        if self.writer_ready:
            mds_trace_writer_free(&self.writer)
        if self.fd >= 0:
            os.close(self.fd)
            try:
                os.unlink(self.temp_path)
            except OSError:
                pass


# ---- the native drain loop ----------------------------------------------------

DRAIN_MORE = 0      # budget used up (or nothing arrived within it): call again
DRAIN_END = 1       # the producer finished and everything was consumed

cdef inline int consume_native(object sink, Batch batch) except -1:
    # Typed calls go through the C vtables: no Python call per batch.
    if type(sink) is MemorySink:
        (<MemorySink>sink).consume(batch)
    elif type(sink) is FileSink:
        (<FileSink>sink).consume(batch)
    elif type(sink) is NullSink:
        (<NullSink>sink).consume(batch)
    else:
        sink.consume(batch)
    return 0


def native_sink(sink):
    """True for the built-in sinks :func:`drain_ready` calls without Python."""
    return type(sink) in (MemorySink, FileSink, NullSink)


def drain_ready(Ring ring not None, list sinks, double budget):
    """Consume batches into ``sinks`` for about ``budget`` seconds.

    The per-batch loop of :func:`mdstream.drain` for built-in sinks: one batch
    object reused, typed sink calls, the ring's own wait (``Ring.read``'s,
    without the GIL).  Returns ``(records, bytes, status)`` with status
    :data:`DRAIN_MORE` or :data:`DRAIN_END`; raises what :meth:`Ring.read`
    raises.  Only for a ring with no batch of its own outstanding (``drain``
    checks).
    """
    cdef uint64_t start = 0, end = 0, deadline
    cdef uint64_t records = 0, nbytes = 0
    cdef mds_span_summary s
    cdef int status
    cdef Batch batch
    ring.check_mapped()
    if ring.live_batches:
        raise ValueError("drain_ready needs a ring with no batch outstanding")
    deadline = mds_now_ns() + <uint64_t>(budget * 1e9)
    batch = empty_batch(ring)
    ring.enter(False)
    try:
        while True:
            status = ring.next_span(deadline, &start, &end, &s)
            if status == SPAN_END:
                return records, nbytes, DRAIN_END
            if status == SPAN_TIMEOUT:
                return records, nbytes, DRAIN_MORE
            set_batch_span(batch, start, end)
            batch.is_released = False
            batch.release_requested = False
            batch.deferred = False
            batch.summary_cache = s
            batch.has_summary = True
            batch.index_cache = None
            ring.live_batches += 1
            try:
                for sink in sinks:
                    consume_native(sink, batch)
            except BaseException:
                batch.abandon()  # not stored, so not released: the records stay for the spill
                raise
            else:
                batch.release_requested = True
                if batch.exports:
                    # A sink kept a view: its owner releases this batch; the loop
                    # goes on with a new one.
                    batch.deferred = True
                    ring.deferred_batches += 1
                    batch = empty_batch(ring)
                else:
                    batch.do_release()
            records += s.records
            nbytes += s.bytes
            if mds_now_ns() >= deadline:
                return records, nbytes, DRAIN_MORE
    finally:
        ring.leave(False)


cdef Batch empty_batch(Ring ring):
    cdef Batch batch = Batch.__new__(Batch)
    batch.ring = ring
    batch.is_released = True        # holds nothing until filled (its __dealloc__ checks)
    return batch
