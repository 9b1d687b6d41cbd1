# cython: freethreading_compatible = False
"""DumpCallback (the streaming MINIDUMP_CALLBACK_ROUTINE's Python face) and
Simulation (DbgHelp's callback protocol driven from a native thread)."""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

import os

import numpy as np
from mdstream.errors import DumpOptionError
cimport numpy as cnp

from mdstream._core cimport *
from mdstream._dbghelp cimport (
    BOOL, HRESULT, PVOID, ULONG, MINIDUMP_CALLBACK_INFORMATION, MINIDUMP_CALLBACK_ROUTINE,
    PMINIDUMP_CALLBACK_INPUT, PMINIDUMP_CALLBACK_OUTPUT,
)
from mdstream._ring cimport Ring, raise_for

cnp.import_array()

CALLBACK_TYPE_COUNT = MDS_CALLBACK_TYPES


cdef inline HRESULT as_hresult(object value) except? -1:
    cdef uint32_t bits = <uint32_t>(int(value) & 0xFFFFFFFF)
    return <HRESULT><int32_t>bits


cdef int python_hook_trampoline(void *hook_param, PMINIDUMP_CALLBACK_INPUT input,
                                PMINIDUMP_CALLBACK_OUTPUT output) noexcept nogil:
    # The one place a non-I/O callback enters Python.  Any exception is stored
    # on the DumpCallback and re-raised after the native call returns; DbgHelp
    # gets FALSE.
    with gil:
        callback = <DumpCallback>hook_param
        try:
            answer = callback.hook(callback._callback_type(input.CallbackType), <size_t>input, <size_t>output)
        except BaseException as exc:
            if callback.hook_error is None:
                callback.hook_error = exc
            return 0
        if answer is None:
            return -1
        return 1 if answer else 0


cdef class DumpCallback:
    """The streaming ``MINIDUMP_CALLBACK_ROUTINE`` bound to a :class:`Ring`.

    Hand :attr:`information_address` (a ``MINIDUMP_CALLBACK_INFORMATION*``) to
    ``MiniDumpWriteDump``.  I/O callbacks never take the GIL: ``IoStartCallback``
    begins the ring's one dump and answers TRUE/S_FALSE, each
    ``IoWriteAllCallback`` is copied into the ring (TRUE/S_OK, or FALSE with an
    HRESULT saying why), ``IoFinishCallback`` ends the dump and answers S_OK
    only once the consumer committed it (or the spill holds all of it); a
    failed dump aborts the ring.  ``deadline``: the longest any one callback
    waits (seconds); ``dump_deadline``: the whole dump's budget for waiting on
    its consumer; ``spill_after``: with ``spill_path``, the total time the dump
    may wait for its consumer before it spills (default: half the deadline).  Other callback types get the defaults documented in
    ``docs/callback.md``, tuned by the keyword options; ``hook`` (optional) is a
    Python callable ``hook(callback_type, input_address, output_address)`` for
    non-I/O callbacks that returns ``None`` (keep the default) or a bool.
    """

    cdef mds_callback_context *ctx
    cdef MINIDUMP_CALLBACK_INFORMATION *info
    cdef readonly Ring ring
    cdef readonly object hook
    cdef public object hook_error
    cdef object _callback_type_enum

    def __cinit__(self, Ring ring not None, *, deadline=30.0, include_modules=True, include_threads=True,
                  module_write_flags_mask=0xFFFFFFFF, thread_write_flags_mask=0xFFFFFFFF,
                  read_memory_failure_status=0, is_process_snapshot_status=1, coalesce=True,
                  publish_bytes=64 * 1024, extra_memory=(), hook=None, spill_path=None, spill_after=None,
                  dump_deadline=None):
        cdef mds_callback_options options
        ring.check_mapped()
        mds_callback_options_init(&options)
        options.deadline_ns = _duration_ns("deadline", deadline, allow_none=True)
        options.dump_deadline_ns = _duration_ns("dump_deadline", dump_deadline, allow_none=True)
        options.include_modules = 1 if include_modules else 0
        options.include_threads = 1 if include_threads else 0
        options.module_write_flags_mask = <ULONG>(int(module_write_flags_mask) & 0xFFFFFFFF)
        options.thread_write_flags_mask = <ULONG>(int(thread_write_flags_mask) & 0xFFFFFFFF)
        options.read_memory_failure_status = as_hresult(read_memory_failure_status)
        options.is_process_snapshot_status = as_hresult(is_process_snapshot_status)
        options.coalesce = 1 if coalesce else 0
        if int(publish_bytes) < 0:
            raise DumpOptionError("publish_bytes must be >= 0")
        options.publish_bytes = <uint64_t>int(publish_bytes)
        ranges = list(extra_memory)
        if len(ranges) > MDS_MAX_EXTRA_MEMORY:
            raise DumpOptionError(f"at most {MDS_MAX_EXTRA_MEMORY} extra memory ranges")
        for i, (base, size) in enumerate(ranges):
            if not (0 <= int(base) < 2**64 and 0 < int(size) < 2**32):
                raise DumpOptionError(f"bad memory range {(base, size)!r}")
            options.extra_memory[i].base = int(base)
            options.extra_memory[i].size = <ULONG>int(size)
        options.extra_memory_count = <uint32_t>len(ranges)
        if hook is not None and not callable(hook):
            raise TypeError("hook must be callable")
        _set_spill_path(&options, spill_path)
        if spill_after is not None:
            if spill_path is None:
                raise DumpOptionError("spill_after needs a spill_path")
            options.spill_after_ns = _duration_ns("spill_after", spill_after, allow_none=False)

        self.ctx = <mds_callback_context *>malloc(sizeof(mds_callback_context))
        self.info = <MINIDUMP_CALLBACK_INFORMATION *>malloc(sizeof(MINIDUMP_CALLBACK_INFORMATION))
        if self.ctx == NULL or self.info == NULL:
            raise MemoryError()
        mds_callback_context_init(self.ctx, &ring.c, &options)
        self.ring = ring
        self.hook = hook
        self.hook_error = None
        if hook is not None:
            self.ctx.hook = python_hook_trampoline
            self.ctx.hook_param = <void *>self
        self.info.CallbackRoutine = <MINIDUMP_CALLBACK_ROUTINE>mds_dump_callback
        self.info.CallbackParam = <PVOID>self.ctx
        self._callback_type_enum = None

    def __dealloc__(self):
        if self.ctx != NULL:
            mds_callback_context_release(self.ctx)
        free(self.ctx)
        free(self.info)

    def _callback_type(self, value):
        if self._callback_type_enum is None:
            from mdstream.dbghelp import CallbackType
            self._callback_type_enum = CallbackType
        try:
            return self._callback_type_enum(value)
        except ValueError:
            return value

    @property
    def information_address(self):
        """Address of a ``MINIDUMP_CALLBACK_INFORMATION`` ready for ``MiniDumpWriteDump``."""
        return <size_t>self.info

    @property
    def routine_address(self):
        """Address of the ``MINIDUMP_CALLBACK_ROUTINE`` (``mds_dump_callback``)."""
        return <size_t>self.info.CallbackRoutine

    @property
    def param_address(self):
        """The ``CallbackParam`` (this callback's C context)."""
        return <size_t>self.info.CallbackParam

    @property
    def counters(self):
        """A dict: ``writes``, ``bytes``, ``highest_end`` and ``calls`` (callback type name -> count)."""
        cdef mds_callback_counters c
        mds_callback_read_counters(self.ctx, &c)
        calls = {}
        for i in range(MDS_CALLBACK_TYPES + 1):
            if c.calls[i]:
                key = self._callback_type(i).name if i < MDS_CALLBACK_TYPES else "unknown"
                calls[key] = c.calls[i]
        return {"writes": c.writes, "bytes": c.bytes, "highest_end": c.highest_end, "calls": calls}

    @property
    def writes(self):
        cdef mds_callback_counters c
        mds_callback_read_counters(self.ctx, &c)
        return c.writes

    @property
    def bytes_written(self):
        cdef mds_callback_counters c
        mds_callback_read_counters(self.ctx, &c)
        return c.bytes

    @property
    def highest_end(self):
        cdef mds_callback_counters c
        mds_callback_read_counters(self.ctx, &c)
        return c.highest_end

    @property
    def failed(self):
        cdef mds_callback_counters c
        mds_callback_read_counters(self.ctx, &c)
        return bool(c.failed)

    @property
    def failure(self):
        """``(hresult, reason)`` of the first failed I/O callback, or ``None``."""
        cdef mds_callback_counters c
        mds_callback_read_counters(self.ctx, &c)
        if not c.failed:
            return None
        return (<uint32_t>self.ctx.failure_status, self.ctx.failure_reason.decode("utf-8", "replace"))

    @property
    def failure_exception(self):
        """The ring-level exception behind the failure (timeout, aborted, consumer gone...), or None."""
        cdef mds_error err
        if not self.failed:
            return None
        err.status = self.ctx.failure_ring_status
        err.sys_errno = 0
        err.message = self.ctx.failure_reason
        err.abort_code = 0
        try:
            raise_for(err.status, &err)
        except Exception as exc:
            return exc

    @property
    def finished(self):
        """True once IoFinishCallback sealed the ring."""
        return bool(self.ctx.finished)

    def raise_pending(self):
        """Re-raise the exception a Python hook raised during the native call, if any."""
        error = self.hook_error
        if error is not None:
            self.hook_error = None
            raise error

    def reset(self, *, spill_path=None, ring=None):
        """Clear counters and failure state before reusing the callback for another dump.

        A ring carries one dump: pass a new ``ring`` for the next one (the
        callback's dump fails at IoStart on a ring that already carried one).
        A spill file is never overwritten: after a dump that spilled, pass a
        new ``spill_path``.
        """
        cdef Ring new_ring
        if ring is not None:
            new_ring = ring
            new_ring.check_mapped()
            mds_callback_context_reset(self.ctx)
            self.ctx.ring = &new_ring.c
            self.ring = new_ring
        if spill_path is not None:
            _set_spill_path(&self.ctx.options, spill_path)
        mds_callback_context_reset(self.ctx)
        self.hook_error = None

    @property
    def spill_path(self):
        """The spill file this callback falls back to, or ``None``."""
        if self.ctx.options.spill_path[0] == 0:
            return None
        return os.fsdecode(<bytes>self.ctx.options.spill_path)

    @property
    def spill(self):
        """``None`` if this dump did not spill, else a dict describing the spill.

        Keys: ``path``, ``manifest``, ``finished``, ``complete`` (the spill
        file alone is the dump), ``failed``, ``trigger`` (``"consumer gone"``,
        ``"stalled"``, ``"ring unusable"``), ``base_bytes``, ``replayed_records``,
        ``replayed_bytes``, ``direct_writes``, ``direct_bytes``, ``extents``,
        ``reason``.  Read it after the dump, not while it runs.
        """
        cdef mds_spill_info info
        mds_callback_spill_info(self.ctx, &info)
        if not info.spilled:
            return None
        path = self.spill_path
        return {
            "path": path,
            "manifest": path + ".mdspill",
            "base_copy": path + ".mdspill-base" if info.flags & MDS_SPILL_BASE_COPY else None,
            "base_length": info.base_length,
            "finished": bool(info.flags & MDS_SPILL_FINISHED),
            "complete": bool(info.flags & MDS_SPILL_FINISHED) and bool(info.flags & MDS_SPILL_BASE_COMPLETE),
            "failed": bool(info.flags & MDS_SPILL_FAILED),
            "trigger": _SPILL_TRIGGERS.get(info.trigger, str(info.trigger)),
            "base_bytes": info.base_bytes,
            "replayed_records": info.replayed_records,
            "replayed_bytes": info.replayed_bytes,
            "direct_writes": info.direct_writes,
            "direct_bytes": info.direct_bytes,
            "extents": info.extent_count,
            "reason": info.reason.decode("utf-8", "replace"),
        }


_SPILL_TRIGGERS = {1: "consumer gone", 2: "stalled", 3: "ring unusable"}


cdef uint64_t _duration_ns(str name, object value, bint allow_none) except? 0:
    # Seconds to nanoseconds, never silently 0 (which means "forever") and
    # never an undefined float conversion.
    if value is None:
        if allow_none:
            return 0
        raise DumpOptionError(f"{name} must be a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number of seconds or None, not {value!r}") from None
    if not seconds > 0 or seconds != seconds:
        raise DumpOptionError(f"{name} must be a positive number of seconds{' or None' if allow_none else ''}, not {value!r}")
    if seconds == float("inf"):
        if allow_none:
            return 0
        raise DumpOptionError(f"{name} must be finite")
    if seconds > 1e9:
        raise DumpOptionError(f"{name} of {seconds:g} s is absurd (use None for no limit)")
    ns = <uint64_t>(seconds * 1e9)
    return ns if ns > 0 else 1


cdef int _set_spill_path(mds_callback_options *options, object spill_path) except -1:
    if spill_path is None:
        options.spill_path[0] = 0
        return 0
    path = os.path.abspath(os.fspath(spill_path))
    raw = os.fsencode(path)
    if len(raw) + len(b".mdspill") >= 1024:
        raise DumpOptionError(f"spill_path is too long ({len(raw)} bytes; the limit is {1023 - len(b'.mdspill')})")
    if b"\0" in raw:
        raise DumpOptionError("spill_path contains a NUL byte")
    for candidate in (path, path + ".mdspill"):
        if os.path.lexists(candidate):
            raise FileExistsError(f"{candidate} already exists; a spill never overwrites a file")
    if not os.path.isdir(os.path.dirname(path)):
        raise FileNotFoundError(f"the directory of spill_path {path} does not exist")
    memcpy(options.spill_path, <const char *>raw, len(raw))
    options.spill_path[len(raw)] = 0
    return 0


cdef class Simulation:
    """DbgHelp's callback-mode I/O replayed from a native thread.

    ``Simulation(routine_address, param_address, buffer, offsets, lengths,
    sources)`` calls the routine through its function pointer exactly as
    DbgHelp does: ``IoStartCallback`` with Status preset to ``E_NOTIMPL``,
    ProcessId 0 and ProcessHandle NULL; one ``IoWriteAllCallback`` per write
    (``buffer[sources[i]:sources[i]+lengths[i]]`` to ``offsets[i]``) with fresh
    structures; then ``IoFinishCallback``.  It stops at the first FALSE or
    unexpected Status.  ``abandon=True`` stops after the last write without
    ``IoFinishCallback`` (a writer that failed); ``time_calls=True`` records
    the slowest callback (:attr:`longest_call`).  ``start()`` returns at
    once; ``wait()`` joins.
    """

    cdef mds_simulation sim
    cdef object keepalive
    cdef const uint8_t[::1] buffer_view
    cdef const uint64_t[::1] offsets_view
    cdef const uint32_t[::1] lengths_view
    cdef const uint64_t[::1] sources_view

    def __cinit__(self, size_t routine_address, size_t param_address, buffer, offsets, lengths, sources,
                  *, size_t io_handle=0, keepalive=None, abandon=False, time_calls=False):
        memset(&self.sim, 0, sizeof(self.sim))
        self.sim.abandon = 1 if abandon else 0
        self.sim.time_calls = 1 if time_calls else 0
        if routine_address == 0:
            raise DumpOptionError("routine_address is NULL")
        buf = np.ascontiguousarray(np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer)
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise TypeError("buffer must be a 1-D uint8 array or bytes-like object")
        offs = np.ascontiguousarray(offsets, dtype=np.uint64)
        lens = np.ascontiguousarray(lengths, dtype=np.uint32)
        srcs = np.ascontiguousarray(sources, dtype=np.uint64)
        if not (offs.ndim == lens.ndim == srcs.ndim == 1) or not (len(offs) == len(lens) == len(srcs)):
            raise DumpOptionError("offsets, lengths and sources must be 1-D arrays of one length")
        if len(buf) == 0:
            buf = np.zeros(1, dtype=np.uint8)[:0]
        self.buffer_view = buf
        self.offsets_view = offs
        self.lengths_view = lens
        self.sources_view = srcs
        self.keepalive = (keepalive, buf, offs, lens, srcs)
        self.sim.routine = <MINIDUMP_CALLBACK_ROUTINE>routine_address
        self.sim.param = <PVOID>param_address
        self.sim.io_handle = <PVOID>io_handle
        self.sim.buffer = &self.buffer_view[0] if len(buf) else NULL
        self.sim.buffer_size = len(buf)
        self.sim.count = len(offs)
        if len(offs):
            self.sim.offsets = &self.offsets_view[0]
            self.sim.lengths = &self.lengths_view[0]
            self.sim.sources = &self.sources_view[0]

    def start(self):
        """Start the native thread (once)."""
        cdef mds_error err
        if self.sim.started or self.sim.done:
            raise RuntimeError("a simulation runs once")
        rc = mds_simulation_start(&self.sim, &err)
        if rc != MDS_OK:
            raise_for(rc, &err)

    def wait(self, timeout=None):
        """Wait for the thread to end; returns True when it did (False on timeout)."""
        cdef uint64_t deadline = 0, now, slice_ns
        cdef int finished = 0
        if not self.sim.started:
            return bool(self.sim.done)
        if timeout is not None:
            deadline = mds_now_ns() + <uint64_t>(max(float(timeout), 0.0) * 1e9)
        while True:
            slice_ns = 50_000_000
            now = mds_now_ns()
            if deadline:
                if now >= deadline:
                    return False
                if deadline - now < slice_ns:
                    slice_ns = deadline - now
            with nogil:
                finished = mds_simulation_wait(&self.sim, slice_ns)
            if finished:
                return True
            PyErr_CheckSignals()

    @property
    def done(self):
        return bool(mds_simulation_is_done(&self.sim))

    @property
    def completed(self):
        """IoWriteAll calls answered TRUE/S_OK so far."""
        return mds_simulation_completed(&self.sim)

    @property
    def count(self):
        return self.sim.count

    @property
    def succeeded(self):
        self._require_done()
        return bool(self.sim.succeeded)

    @property
    def failure(self):
        """None on success, else a dict: callback_type, index, returned, status (unsigned HRESULT)."""
        self._require_done()
        if self.sim.succeeded:
            return None
        return {
            "callback_type": self.sim.failed_callback_type,
            "index": self.sim.failed_index,
            "returned": bool(self.sim.failed_return),
            "status": <uint32_t>self.sim.failed_status,
        }

    @property
    def longest_call(self):
        """``(seconds, callback_type)`` of the slowest callback (with ``time_calls=True``)."""
        self._require_done()
        return self.sim.longest_call_ns / 1e9, self.sim.longest_call_type

    @property
    def elapsed(self):
        """Seconds the native thread spent from IoStart to its last callback."""
        self._require_done()
        return self.sim.elapsed_ns / 1e9

    def _require_done(self):
        if not mds_simulation_is_done(&self.sim):
            raise RuntimeError("the simulation has not ended")

    def __dealloc__(self):
        # The thread reads our arrays: it must end before they go.
        if self.sim.started:
            with nogil:
                mds_simulation_wait(&self.sim, <uint64_t>-1)
