# cython: freethreading_compatible = False
"""The Linux minidump writer's native face: a ptrace snapshot of a live
process (``Snapshot.take``) and the emission of its minidump through a
MINIDUMP_CALLBACK_ROUTINE from a native thread.  Use :mod:`mdstream.linux`."""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from mdstream._dbghelp cimport BOOL, HRESULT, PVOID, ULONG, MINIDUMP_CALLBACK_ROUTINE


cdef extern from "linuxdump.h" nogil:
    enum:
        MDL_OK
        MDL_ERR_ARG
        MDL_ERR_SYS
        MDL_ERR_NO_PROCESS
        MDL_ERR_PERMISSION
        MDL_ERR_EXITED
        MDL_ERR_ZOMBIE
        MDL_ERR_TIMEOUT
        MDL_ERR_UNSUPPORTED
        MDL_ERR_SELF
        MDL_ERR_EMIT

    ctypedef struct mdl_error:
        int status
        int sys_errno
        char message[512]

    enum:
        MDL_FAULT_REGS
        MDL_FAULT_MCONTEXT
        MDL_FAULT_FPREGS
        MDL_USER_REGS_WORDS
        MDL_MCONTEXT_GREGS
        MDL_MAX_USER_STREAMS

    ctypedef struct mdl_fault_context:
        uint32_t tid
        uint32_t flags
        uint64_t regs[27]
        uint8_t fpregs[512]

    void mdl_fault_from_mcontext(mdl_fault_context *ctx, uint32_t tid, const uint64_t *gregs, const uint8_t *fxsave)

    ctypedef struct mdl_user_stream:
        uint32_t type
        uint32_t size
        const uint8_t *data

    ctypedef struct mdl_options:
        int full_memory
        int include_environ
        int include_cmdline
        int sanitize_stacks
        uint32_t max_stack
        uint32_t ip_context
        uint64_t stop_timeout_ns
        int exception_signal
        int exception_code
        uint64_t exception_address
        uint32_t exception_tid
        mdl_fault_context crash
        int attached
        const mdl_user_stream *user_streams
        uint32_t nuser_streams
        int fault

    void mdl_options_init(mdl_options *options)

    ctypedef struct mdl_snapshot:
        pass

    ctypedef struct mdl_figures:
        uint32_t pid
        uint32_t threads
        uint32_t modules
        uint32_t mappings
        uint32_t memory_ranges
        uint64_t memory_bytes
        uint64_t stopped_ns
        uint64_t snapshot_ns
        uint32_t vm_readv_failures
        uint32_t pending_signals

    int mdl_snapshot_take(uint32_t pid, const mdl_options *options, mdl_snapshot **out, mdl_error *err)
    void mdl_snapshot_figures(const mdl_snapshot *snap, mdl_figures *out)

    ctypedef struct mdl_thread_info:
        uint32_t tid
        uint64_t fs_base
        uint64_t rip
        uint64_t rsp
        int crashed
        char name[32]

    int mdl_snapshot_thread(const mdl_snapshot *snap, size_t i, mdl_thread_info *out)
    void mdl_snapshot_free(mdl_snapshot *snap)
    int mdl_read_pass(uint32_t pid, const uint64_t *starts, const uint64_t *sizes, size_t n, uint64_t *bytes,
                      uint64_t *elapsed_ns, mdl_error *err)

    ctypedef struct mdl_piece:
        uint64_t offset
        const uint8_t *data
        uint64_t size

    ctypedef struct mdl_layout:
        uint8_t *meta
        uint64_t meta_size
        mdl_piece *pieces
        size_t npieces
        uint64_t total
        uint32_t streams

    int mdl_layout_build(const mdl_snapshot *snap, const mdl_options *options, mdl_layout *out, mdl_error *err)
    void mdl_layout_free(mdl_layout *layout)

    ctypedef struct mdl_emitter:
        MINIDUMP_CALLBACK_ROUTINE routine
        PVOID param
        const mdl_layout *layout
        uint32_t max_write
        uint64_t writes
        uint64_t bytes
        uint32_t done
        int succeeded
        ULONG failed_callback_type
        BOOL failed_return
        HRESULT failed_status
        uint64_t elapsed_ns
        void *thread
        int started

    int mdl_emit_start(mdl_emitter *em, mdl_error *err)
    int mdl_emit_wait(mdl_emitter *em, uint64_t timeout_ns)
    int mdl_emit_is_done(const mdl_emitter *em)
    uint64_t mdl_now_ns()


STATUS_NAMES = {
    MDL_ERR_ARG: "bad argument",
    MDL_ERR_SYS: "system error",
    MDL_ERR_NO_PROCESS: "no such process",
    MDL_ERR_PERMISSION: "permission denied",
    MDL_ERR_EXITED: "process exited",
    MDL_ERR_ZOMBIE: "zombie",
    MDL_ERR_TIMEOUT: "timeout",
    MDL_ERR_UNSUPPORTED: "unsupported platform",
    MDL_ERR_SELF: "own process",
    MDL_ERR_EMIT: "emission failed",
}


cdef int raise_error(int status, mdl_error *err) except -1:
    from mdstream import errors
    message = err.message.decode("utf-8", "replace")
    raise errors.linux_dump_error(int(status), int(err.sys_errno), message)


def read_pass(pid, ranges):
    """One ``process_vm_readv`` pass over ``ranges`` (``(start, size)`` pairs) of the
    running process ``pid`` into one reused buffer: the benchmark's reference for a
    full dump.  Returns ``(bytes read, seconds)``."""
    import numpy as np

    cdef uint64_t[::1] starts = np.ascontiguousarray([int(r[0]) for r in ranges], dtype=np.uint64)
    cdef uint64_t[::1] sizes = np.ascontiguousarray([int(r[1]) for r in ranges], dtype=np.uint64)
    cdef size_t n = starts.shape[0]
    cdef uint64_t got = 0, elapsed = 0
    cdef uint32_t c_pid = pid
    cdef mdl_error err
    cdef int rc
    if n == 0:
        return 0, 0.0
    with nogil:
        rc = mdl_read_pass(c_pid, &starts[0], &sizes[0], n, &got, &elapsed, &err)
    if rc != MDL_OK:
        raise_error(rc, &err)
    return int(got), elapsed / 1e9


cdef class Snapshot:
    """What was copied from a stopped process, and the minidump laid out from it.

    ``Snapshot.take(pid, ...)`` stops every thread (PTRACE_SEIZE +
    PTRACE_INTERRUPT, bounded waits), copies registers, maps, stacks and memory
    around each RIP (and every readable private mapping with ``full=True``),
    resumes the process, and lays the minidump out.  ``start_emit(routine,
    param)`` then calls the routine from a native thread: IoStart, IoWriteAll
    in increasing offsets, IoFinish.  The process is running again before
    ``take`` returns, whatever the emission does later.
    """

    cdef mdl_snapshot *snap
    cdef mdl_options options
    cdef mdl_layout layout
    cdef bint laid_out
    cdef mdl_emitter em
    cdef object keepalive

    def __cinit__(self):
        self.snap = NULL
        self.laid_out = False
        memset(&self.layout, 0, sizeof(self.layout))
        memset(&self.em, 0, sizeof(self.em))
        mdl_options_init(&self.options)

    def __dealloc__(self):
        if self.em.started:
            with nogil:
                mdl_emit_wait(&self.em, <uint64_t>-1)
        if self.laid_out:
            mdl_layout_free(&self.layout)
        if self.snap != NULL:
            mdl_snapshot_free(self.snap)

    @staticmethod
    def take(pid, *, full=False, include_environ=False, include_cmdline=True, sanitize_stacks=False,
             max_stack=64 * 1024, ip_context=256, stop_timeout=5.0, exception=None, crash_context=None,
             attached=False, user_streams=(), _fault=0):
        """``crash_context``: ``(tid, regs, mcontext, fpregs)``, the crashing
        thread's registers at the fault: ``regs`` a ptrace ``user_regs_struct``
        (216 bytes) or ``mcontext`` a signal handler's 23 gregs (184 bytes),
        ``fpregs`` the FXSAVE image (512 bytes) or None.  ``attached=True``: the
        calling thread already traces every thread and holds each in a
        ptrace-stop.  ``user_streams``: ``[(type, bytes), ...]`` (types above
        0xFFFF)."""
        cdef Snapshot self = Snapshot.__new__(Snapshot)
        cdef mdl_error err
        cdef int rc
        cdef uint32_t cpid
        cdef mdl_user_stream streams[8]
        cdef const uint8_t[::1] view
        cdef const uint8_t *fx = NULL
        cdef uint64_t gregs[23]
        cdef Py_ssize_t k
        keep = []
        pid = int(pid)
        if not 0 < pid < 2**31:
            raise ValueError(f"bad pid {pid!r}")
        if not 0 < int(max_stack) <= 1 << 30:
            raise ValueError("max_stack must be in (0, 1 GiB]")
        if not 0 <= int(ip_context) <= 1 << 20:
            raise ValueError("ip_context must be in [0, 1 MiB]")
        if not float(stop_timeout) > 0:
            raise ValueError("stop_timeout must be a positive number of seconds")
        self.options.full_memory = 1 if full else 0
        self.options.include_environ = 1 if include_environ else 0
        self.options.include_cmdline = 1 if include_cmdline else 0
        self.options.sanitize_stacks = 1 if sanitize_stacks else 0
        self.options.max_stack = <uint32_t>int(max_stack)
        self.options.ip_context = <uint32_t>int(ip_context)
        self.options.stop_timeout_ns = <uint64_t>(float(stop_timeout) * 1e9)
        if exception is not None:
            signal, code, address, tid = (tuple(exception) + (0, 0, 0))[:4]
            if not 0 < int(signal) < 65:
                raise ValueError(f"bad exception signal {signal!r}")
            self.options.exception_signal = int(signal)
            self.options.exception_code = int(code)
            self.options.exception_address = int(address) & 0xFFFFFFFFFFFFFFFF
            self.options.exception_tid = int(tid)
        if crash_context is not None:
            ctid, regs, mcontext, fpregs = crash_context
            if not 0 < int(ctid) < 2**31:
                raise ValueError(f"bad crash thread id {ctid!r}")
            if (regs is None) == (mcontext is None):
                raise ValueError("crash_context needs exactly one of regs (user_regs_struct) and mcontext (gregs)")
            if fpregs is not None:
                if len(fpregs) != 512:
                    raise ValueError(f"fpregs must be the 512-byte FXSAVE image, not {len(fpregs)} bytes")
                view = bytes(fpregs)
                fx = &view[0]
            if mcontext is not None:
                if len(mcontext) != 8 * 23:
                    raise ValueError(f"mcontext must be 23 gregs (184 bytes), not {len(mcontext)} bytes")
                raw = bytes(mcontext)
                memcpy(gregs, <const char *>raw, sizeof(gregs))
                mdl_fault_from_mcontext(&self.options.crash, <uint32_t>int(ctid), gregs, fx)
            else:
                if len(regs) != 8 * 27:
                    raise ValueError(f"regs must be a user_regs_struct (216 bytes), not {len(regs)} bytes")
                self.options.crash.tid = <uint32_t>int(ctid)
                self.options.crash.flags = MDL_FAULT_REGS
                raw = bytes(regs)
                memcpy(self.options.crash.regs, <const char *>raw, 216)
                if fx != NULL:
                    memcpy(self.options.crash.fpregs, fx, 512)
                    self.options.crash.flags |= MDL_FAULT_FPREGS
        self.options.attached = 1 if attached else 0
        user_streams = list(user_streams or ())
        if len(user_streams) > MDL_MAX_USER_STREAMS:
            raise ValueError(f"at most {MDL_MAX_USER_STREAMS} user streams")
        for k in range(len(user_streams)):
            stype, data = user_streams[k]
            if not 0xFFFF < int(stype) <= 0xFFFFFFFF:
                raise ValueError(f"user stream type {stype!r} is not in the user range (0x10000..0xFFFFFFFF)")
            data = bytes(data)
            if len(data) > 0xFFFFFFFF:
                raise ValueError("a user stream holds at most 4 GiB")
            keep.append(data)
            streams[k].type = <uint32_t>int(stype)
            streams[k].size = <uint32_t>len(data)
            streams[k].data = <const uint8_t *><const char *>data if len(data) else NULL
        self.options.user_streams = streams if user_streams else NULL
        self.options.nuser_streams = <uint32_t>len(user_streams)
        self.options.fault = int(_fault)
        cpid = <uint32_t>pid
        memset(&err, 0, sizeof(err))
        with nogil:
            rc = mdl_snapshot_take(cpid, &self.options, &self.snap, &err)
        if rc != MDL_OK:
            raise_error(rc, &err)
        with nogil:
            rc = mdl_layout_build(self.snap, &self.options, &self.layout, &err)
        self.options.user_streams = NULL  # copied into the layout; `keep` dies with this call
        self.options.nuser_streams = 0
        if rc != MDL_OK:
            raise_error(rc, &err)
        self.laid_out = True
        return self

    @property
    def threads(self):
        """``[{"tid", "name", "fs_base", "rip", "rsp", "crashed"}, ...]`` as written (fs_base is the pthread_t)."""
        cdef mdl_thread_info info
        cdef size_t i = 0
        out = []
        while mdl_snapshot_thread(self.snap, i, &info) == 0:
            out.append({"tid": info.tid, "name": info.name.decode("utf-8", "replace"), "fs_base": info.fs_base,
                        "rip": info.rip, "rsp": info.rsp, "crashed": bool(info.crashed)})
            i += 1
        return out

    @property
    def figures(self):
        """threads, modules, mappings, memory_ranges, memory_bytes, stopped_seconds, snapshot_seconds, ..."""
        cdef mdl_figures f
        mdl_snapshot_figures(self.snap, &f)
        return {
            "pid": f.pid,
            "threads": f.threads,
            "modules": f.modules,
            "mappings": f.mappings,
            "memory_ranges": f.memory_ranges,
            "memory_bytes": f.memory_bytes,
            "stopped_seconds": f.stopped_ns / 1e9,
            "snapshot_seconds": f.snapshot_ns / 1e9,
            "vm_readv_failures": f.vm_readv_failures,
            "pending_signals": f.pending_signals,
            "dump_size": self.layout.total,
            "streams": self.layout.streams,
        }

    @property
    def size(self):
        """Size of the minidump file in bytes."""
        return self.layout.total

    @property
    def pieces(self):
        """``[(offset, size), ...]`` the emission writes (before cutting into ``max_write`` pieces)."""
        return [(self.layout.pieces[i].offset, self.layout.pieces[i].size) for i in range(self.layout.npieces)]

    def start_emit(self, routine_address, param_address, *, max_write=16 << 20, keepalive=None):
        """Start the native thread that calls the routine (IoStart, IoWriteAll..., IoFinish)."""
        cdef mdl_error err
        if self.em.started:
            raise RuntimeError("an emission is already running")
        if not 0 < int(max_write) <= 0xFFFFFFF0:
            raise ValueError("max_write must be in (0, 4 GiB)")
        memset(&self.em, 0, sizeof(self.em))
        self.em.routine = <MINIDUMP_CALLBACK_ROUTINE><size_t>int(routine_address)
        self.em.param = <PVOID><size_t>int(param_address)
        self.em.layout = &self.layout
        self.em.max_write = <uint32_t>int(max_write)
        self.keepalive = keepalive
        if mdl_emit_start(&self.em, &err) != MDL_OK:
            raise_error(err.status, &err)

    def wait(self, timeout=None):
        """Wait for the emission thread (``None``: until it ends, still interruptible); True once joined."""
        cdef uint64_t slice_ns = 50000000
        cdef uint64_t deadline = 0
        cdef int done = 0
        if not self.em.started:
            return True
        if timeout is not None:
            deadline = mdl_now_ns() + <uint64_t>(max(float(timeout), 0.0) * 1e9)
        while True:
            with nogil:
                done = mdl_emit_wait(&self.em, slice_ns)
            if done:
                self.keepalive = None
                return True
            PyErr_CheckSignals()
            if timeout is not None and mdl_now_ns() >= deadline:
                return False

    @property
    def done(self):
        return bool(mdl_emit_is_done(&self.em))

    @property
    def succeeded(self):
        return bool(mdl_emit_is_done(&self.em)) and bool(self.em.succeeded)

    @property
    def writes(self):
        return self.em.writes

    @property
    def bytes_emitted(self):
        return self.em.bytes

    @property
    def emit_seconds(self):
        return self.em.elapsed_ns / 1e9

    @property
    def failure(self):
        """``{"callback_type", "returned", "status"}`` of the call that stopped the emission, or None."""
        if not mdl_emit_is_done(&self.em) or self.em.succeeded:
            return None
        return {
            "callback_type": int(self.em.failed_callback_type),
            "returned": bool(self.em.failed_return),
            "status": <uint32_t>self.em.failed_status,
            "index": self.em.writes,
        }

    def meta_bytes(self):
        """The laid-out metadata (header, directory, streams) as bytes: for tests."""
        return bytes((<char *>self.layout.meta)[:self.layout.meta_size])


# ---- the ptrace supervisor of `mdstream run` ------------------------------------

cdef extern from "supervise.h" nogil:
    ctypedef struct mdl_supervisor:
        pass

    ctypedef struct mdl_sup_options:
        const char *path
        char *const *argv
        int follow_forks
        uint64_t reset_signals
        uint64_t exit_stop_timeout_ns

    ctypedef struct mdl_sup_fault:
        uint32_t tid
        int signo
        int code
        int sender_pid
        uint32_t sender_uid
        uint64_t address
        uint8_t siginfo[128]
        int have_regs
        int have_fpregs
        uint64_t regs[27]
        uint8_t fpregs[512]

    enum:
        MDL_SUP_CRASH
        MDL_SUP_DONE

    ctypedef struct mdl_sup_event:
        int kind
        uint32_t pid
        int death_signal
        int have_fault
        mdl_sup_fault fault
        uint32_t held
        uint32_t missing
        int status

    int mdl_sup_start(const mdl_sup_options *options, mdl_supervisor **out, uint32_t *child, mdl_error *err)
    int mdl_sup_next(mdl_supervisor *sup, mdl_sup_event *event, mdl_error *err)
    void mdl_sup_release(mdl_supervisor *sup, uint32_t pid)
    void mdl_sup_counts(const mdl_supervisor *sup, uint64_t *signal_stops, uint64_t *threads, uint64_t *processes)
    void mdl_sup_free(mdl_supervisor *sup)


from libc.stdlib cimport calloc, free


cdef class Supervisor:
    """Runs a program traced and reports how each traced process ends (see
    ``supervise.h``).  Every method must be called from the thread that
    called :meth:`start`: ptrace only accepts requests from the tracer."""

    cdef mdl_supervisor *sup
    cdef readonly int pid

    def __cinit__(self):
        self.sup = NULL
        self.pid = 0

    def __dealloc__(self):
        if self.sup != NULL:
            mdl_sup_free(self.sup)
            self.sup = NULL

    @staticmethod
    def start(path, argv, *, follow_forks=False, reset_signals=(), exit_stop_timeout=2.0):
        """Fork, trace and exec ``path`` with ``argv``; raises OSError (with
        execve's errno) when it cannot be executed."""
        cdef Supervisor self = Supervisor.__new__(Supervisor)
        cdef mdl_sup_options opts
        cdef mdl_error err
        cdef int rc
        cdef uint32_t child = 0
        cdef char **cargv
        cdef Py_ssize_t i
        args = [a if isinstance(a, bytes) else __import__("os").fsencode(a) for a in argv]
        bpath = path if isinstance(path, bytes) else __import__("os").fsencode(path)
        if not args:
            raise ValueError("no command")
        for a in args + [bpath]:
            if b"\0" in a:
                raise ValueError("embedded NUL in the command")
        memset(&opts, 0, sizeof(opts))
        memset(&err, 0, sizeof(err))
        cargv = <char **>calloc(len(args) + 1, sizeof(char *))
        if cargv == NULL:
            raise MemoryError()
        try:
            for i in range(len(args)):
                cargv[i] = <char *>args[i]
            opts.path = <const char *>bpath
            opts.argv = cargv
            opts.follow_forks = 1 if follow_forks else 0
            for n in reset_signals:
                if 0 < int(n) < 65:
                    opts.reset_signals |= (<uint64_t>1) << (int(n) - 1)
            opts.exit_stop_timeout_ns = <uint64_t>(max(float(exit_stop_timeout), 0.001) * 1e9)
            with nogil:
                rc = mdl_sup_start(&opts, &self.sup, &child, &err)
        finally:
            free(cargv)
        if rc != MDL_OK:
            message = err.message.decode("utf-8", "replace")
            if rc == MDL_ERR_SYS and err.sys_errno:
                raise OSError(err.sys_errno, message)
            raise_error(rc, &err)
        self.pid = child
        return self

    def next(self):
        """Block until a crash or the end; returns a dict (``kind`` "crash" or "done")."""
        cdef mdl_sup_event ev
        cdef mdl_error err
        cdef int rc
        if self.sup == NULL:
            raise ValueError("the supervisor is closed")
        memset(&err, 0, sizeof(err))
        with nogil:
            rc = mdl_sup_next(self.sup, &ev, &err)
        if rc != MDL_OK:
            raise_error(rc, &err)
        if ev.kind == MDL_SUP_DONE:
            return {"kind": "done", "status": ev.status}
        fault = None
        if ev.have_fault:
            fault = {
                "tid": ev.fault.tid,
                "signal": ev.fault.signo,
                "code": ev.fault.code,
                "address": ev.fault.address,
                "sender_pid": ev.fault.sender_pid,
                "sender_uid": ev.fault.sender_uid,
                "siginfo": bytes((<char *>ev.fault.siginfo)[:128]),
                "regs": bytes((<char *>ev.fault.regs)[:216]) if ev.fault.have_regs else None,
                "fpregs": bytes((<char *>ev.fault.fpregs)[:512]) if ev.fault.have_fpregs else None,
            }
        return {"kind": "crash", "pid": ev.pid, "death_signal": ev.death_signal, "fault": fault,
                "held": ev.held, "missing": ev.missing}

    def release(self, pid):
        """Let a process reported as crashing die."""
        if self.sup != NULL:
            mdl_sup_release(self.sup, <uint32_t>int(pid))

    @property
    def counts(self):
        cdef uint64_t stops = 0, threads = 0, processes = 0
        if self.sup != NULL:
            mdl_sup_counts(self.sup, &stops, &threads, &processes)
        return {"signal_stops": stops, "threads": threads, "processes": processes}

    def close(self):
        if self.sup != NULL:
            mdl_sup_free(self.sup)
            self.sup = NULL
