"""Dump a live Linux process as a minidump, streamed through the callback.

On Linux there is no DbgHelp, so mdstream writes the minidump itself: it stops
the target's threads with ptrace, copies what the dump needs, resumes the
target, and only then lays the file out and emits it through the very same
``MINIDUMP_CALLBACK_ROUTINE`` protocol (IoStart, IoWriteAll in increasing
offsets, IoFinish) from a native thread.  The ring, the sinks, ``mdstream
drain`` and the benchmarks therefore work unchanged.  See ``docs/linux.md``.

>>> result = write_dump(pid, "process.dmp")                      # doctest: +SKIP
>>> result.extra["threads"], result.extra["stopped_seconds"]     # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mdstream import errors
from mdstream.errors import (
    LinuxDumpError,
    ProcessExitedError,
    ProcessNotFoundError,
    PtracePermissionError,
    SnapshotTimeoutError,
    UnsupportedPlatformError,
    ZombieProcessError,
)
from mdstream.pipeline import DEFAULT_RING_CAPACITY, Progress, Sink, StreamResult, drain

__all__ = [
    "CrashContext",
    "LinuxDumpError",
    "ProcessNotFoundError",
    "PtracePermissionError",
    "ProcessExitedError",
    "ZombieProcessError",
    "SnapshotTimeoutError",
    "UnsupportedPlatformError",
    "write_dump",
    "supported",
]


#: Sizes of the register images a :class:`CrashContext` carries (x86-64).
USER_REGS_SIZE = 27 * 8
MCONTEXT_SIZE = 23 * 8
FXSAVE_SIZE = 512


@dataclass(frozen=True)
class CrashContext:
    """The crash a dump describes, written as Breakpad's Linux writer does.

    ``signal`` becomes the Exception stream's ExceptionCode, ``code`` (the
    ``si_code``) its ExceptionFlags, ``address`` its ExceptionAddress, ``tid``
    its ThreadId.  The crashing thread's registers *at the faulting
    instruction* come from exactly one of ``regs`` (a ptrace ``struct
    user_regs_struct``, 216 bytes, e.g. read at the signal-delivery-stop) or
    ``mcontext`` (a signal handler's ``uc_mcontext.gregs``, 23 words, 184
    bytes; fs_base, gs_base and the data segments then come from ptrace), plus
    ``fpregs`` (the 512-byte FXSAVE image) when known.  They replace what
    ptrace sees at snapshot time (a signal handler, ``raise()``, the exit
    path) in the thread list and the Exception stream, and the thread's stack
    is captured from that context's stack pointer.
    """

    signal: int
    code: int = 0
    address: int = 0
    tid: int = 0
    regs: bytes | None = None
    mcontext: bytes | None = None
    fpregs: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 < int(self.signal) < 65:
            raise ValueError(f"bad signal number {self.signal!r}")
        if self.regs is not None and self.mcontext is not None:
            raise ValueError("give the registers as regs or as mcontext, not both")
        for name, value, size in (("regs", self.regs, USER_REGS_SIZE), ("mcontext", self.mcontext, MCONTEXT_SIZE),
                                  ("fpregs", self.fpregs, FXSAVE_SIZE)):
            if value is not None and len(value) != size:
                raise ValueError(f"{name} must be {size} bytes, not {len(value)}")
        if (self.regs is not None or self.mcontext is not None) and not 0 < int(self.tid) < 2**31:
            raise ValueError("registers need the crashing thread's id (tid)")

    @property
    def exception(self) -> tuple[int, int, int, int]:
        return (int(self.signal), int(self.code), int(self.address) & 0xFFFFFFFFFFFFFFFF, int(self.tid))

    def snapshot_context(self) -> tuple[int, bytes | None, bytes | None, bytes | None] | None:
        if self.regs is None and self.mcontext is None:
            return None
        return (int(self.tid), self.regs, self.mcontext, self.fpregs)


def error_for(status: int, errno: int, message: str) -> BaseException:
    """The exception for a C status (kept for callers of the old name; see :func:`mdstream.errors.linux_dump_error`)."""
    return errors.linux_dump_error(status, errno, message)


def supported() -> bool:
    """True where :func:`write_dump` works: Linux on x86-64."""
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def _check_platform() -> None:
    if not supported():
        raise UnsupportedPlatformError(
            f"mdstream.linux.write_dump dumps live Linux x86-64 processes; this is {sys.platform} on "
            f"{platform.machine() or 'an unknown machine'}"
            + (" (on Windows, hand mdstream.DumpCallback to DbgHelp's MiniDumpWriteDump instead)"
               if sys.platform == "win32" else "")
        )


_PF_KTHREAD = 0x00200000  # task flag of kernel threads (/proc/PID/stat, field 9)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(comm, flags)`` from ``/proc/PID/stat``, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    open_paren, close_paren = text.find("("), text.rfind(")")
    fields = text[close_paren + 2:].split()
    if open_paren < 0 or close_paren < 0 or len(fields) < 7:
        return None
    try:
        return text[open_paren + 1:close_paren], int(fields[6])
    except ValueError:
        return None


def _check_dumpable(pid: int) -> None:
    """A kernel thread has no user memory: say so instead of a ptrace paragraph."""
    stat = _proc_stat(pid)
    if stat is not None and stat[1] & _PF_KTHREAD:
        raise LinuxDumpError(f"process {pid} ({stat[0]}) is a kernel thread: it has no user-space memory or "
                             f"registers to dump")


def _privileged() -> bool:
    """True when this process has CAP_SYS_PTRACE (root normally has it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 19 & 1)  # CAP_SYS_PTRACE = 19
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def _explain_refusal(pid: int, exc: PtracePermissionError) -> PtracePermissionError:
    """The ptrace refusal explained for a caller that has CAP_SYS_PTRACE, where "run as its user" is no help."""
    if not _privileged():
        return exc
    try:
        os.readlink(f"/proc/{pid}/exe")
        hidden = False
    except PermissionError:
        hidden = True
    except OSError:
        hidden = False
    comm = (_proc_stat(pid) or ("?", 0))[0]
    if hidden:
        why = (f"the kernel refuses this process any access to process {pid} ({comm}) -- even /proc/{pid}/exe "
               f"cannot be read -- although it has CAP_SYS_PTRACE (uid {os.geteuid()}): the target lies outside "
               f"this process's reach (an ancestor user namespace, or a security module's policy); dump it from "
               f"the namespace it runs in")
    else:
        why = (f"ptrace refused to attach to process {pid} ({comm}) although this process has CAP_SYS_PTRACE "
               f"(uid {os.geteuid()}): a security module (SELinux, AppArmor, Yama) or a tracer already attached "
               f"forbids it ({exc})")
    return PtracePermissionError(why, exc.sys_errno)


def _failure(snapshot: Any, callback: Any) -> errors.DumpFailedError:
    from mdstream.dbghelp import CallbackType, hresult_name

    failure = snapshot.failure or {}
    status = failure.get("status", 0)
    ctype = failure.get("callback_type")
    reason = ""
    if callback is not None and callback.failure is not None:
        status, reason = callback.failure
    try:
        name = CallbackType(int(ctype)).name if ctype is not None else "unknown callback"
    except ValueError:
        name = str(ctype)
    if not reason:
        reason = "the callback returned FALSE" if not failure.get("returned", True) else "unexpected Status"
    return errors.DumpFailedError(f"dump failed in {name}: {hresult_name(status)}: {reason}", status, reason, ctype)


def write_dump(
    pid: int,
    sinks_or_ring: Any = None,
    *,
    full: bool = False,
    include_environ: bool = False,
    include_cmdline: bool = True,
    sanitize_stacks: bool = False,
    max_stack: int = 64 * 1024,
    ip_context: int = 256,
    stop_timeout: float = 5.0,
    exception: tuple[int, ...] | None = None,
    crash: CrashContext | None = None,
    attached: bool = False,
    user_streams: Sequence[tuple[int, bytes]] = (),
    ring_capacity: int = DEFAULT_RING_CAPACITY,
    deadline: float | None = 30.0,
    timeout: float | None = None,
    max_write: int = 16 << 20,
    progress: Callable[[Progress], None] | None = None,
    overwrite: bool = False,
    on_snapshot: Callable[[Any], None] | None = None,
    _fault: int = 0,
) -> StreamResult:
    """Write a minidump of the live process ``pid`` through the streaming callback.

    ``sinks_or_ring``: a path (written with a :class:`~mdstream.FileSink`; an
    existing file is refused unless ``overwrite=True``), a
    sink or a list of sinks (drained here), ``None`` (one
    :class:`~mdstream.MemorySink`), or a :class:`~mdstream.Ring` that another
    process drains (nothing is drained here).

    The target is stopped only while its threads, registers, maps, stacks (up
    to ``max_stack`` bytes from the page-aligned stack pointer), the
    ``ip_context`` bytes each side of every instruction pointer and, with
    ``full=True``, every readable private mapping are copied; it is resumed
    before the first byte is emitted, so a slow consumer never extends the
    stop.  Privacy: ``include_environ=False`` (default) leaves the environment
    out (and blanks it in copied memory), ``include_cmdline=False`` does the
    same for the arguments, ``sanitize_stacks=True`` replaces every stack word
    that is not a small integer or a pointer into the stack or code with
    ``0x0defaced`` (Breakpad's rule).  ``exception=(signal, code, address[,
    tid])`` adds an Exception stream; ``crash=CrashContext(...)`` adds it with
    the crashing thread's registers at the fault (see :class:`CrashContext`).
    ``attached=True``: the calling thread already traces every thread of
    ``pid`` and holds each in a ptrace-stop (a supervisor); the snapshot then
    runs on the calling thread, and the threads stay traced and stopped.
    ``user_streams=[(type, bytes), ...]`` adds streams of user types (above
    0xFFFF) as given.  ``on_snapshot(snapshot)`` is called once the snapshot
    is taken, before the first byte is emitted (``snapshot.threads`` lists
    each thread's tid, name, fs_base, rip, rsp).

    Returns the pipeline's :class:`~mdstream.StreamResult`; ``result.extra``
    holds the snapshot's figures: ``threads``, ``modules``, ``memory_bytes``,
    ``dump_size``, ``stopped_seconds`` (time the target was stopped),
    ``snapshot_seconds`` and ``emit_seconds``.

    Raises :class:`ProcessNotFoundError`, :class:`PtracePermissionError`,
    :class:`ProcessExitedError`, :class:`ZombieProcessError`,
    :class:`SnapshotTimeoutError`, :class:`UnsupportedPlatformError` (not
    Linux x86-64), or :class:`~mdstream.DumpFailedError` when the callback
    refuses a write.
    """
    _check_platform()
    from mdstream._callback import DumpCallback
    from mdstream._linux import Snapshot
    from mdstream._ring import Ring
    from mdstream._sinks import FileSink, MemorySink

    _check_dumpable(pid)
    ring: Ring | None = sinks_or_ring if isinstance(sinks_or_ring, Ring) else None
    sink_list: list[Sink] | None = None
    if ring is None:
        if sinks_or_ring is None:
            sink_list = [MemorySink()]
        elif isinstance(sinks_or_ring, (str, os.PathLike)):
            sink_list = [FileSink(sinks_or_ring, overwrite=overwrite)]
        elif isinstance(sinks_or_ring, (list, tuple)):
            sink_list = list(sinks_or_ring)
        else:
            sink_list = [sinks_or_ring]
        if not sink_list:
            raise ValueError("no sinks")

    try:
        snapshot = Snapshot.take(
            pid,
            full=full,
            include_environ=include_environ,
            include_cmdline=include_cmdline,
            sanitize_stacks=sanitize_stacks,
            max_stack=max_stack,
            ip_context=ip_context,
            stop_timeout=stop_timeout,
            exception=crash.exception if crash is not None else exception,
            crash_context=crash.snapshot_context() if crash is not None else None,
            attached=attached,
            user_streams=user_streams,
            _fault=_fault,
        )
    except PtracePermissionError as exc:
        raise _explain_refusal(pid, exc) from None
    # The target runs again from here on (unless attached: the caller holds it).
    if on_snapshot is not None:
        on_snapshot(snapshot)
    if ring is None:
        ring = Ring.create(None, ring_capacity)
    callback = DumpCallback(ring, deadline=deadline)
    snapshot.start_emit(callback.routine_address, callback.param_address, max_write=max_write, keepalive=callback)
    try:
        if sink_list is None:
            snapshot.wait(timeout)
            if not snapshot.done:
                raise errors.RingTimeoutError(f"the dump was not consumed within {timeout} s")
            result = StreamResult("ok", snapshot.bytes_emitted, snapshot.writes, snapshot.writes,
                                  snapshot.emit_seconds, snapshot.size)
        else:
            def producer_failed() -> BaseException | None:
                if snapshot.done and not snapshot.succeeded:
                    return _failure(snapshot, callback)
                return None

            result = drain(ring, sink_list, timeout=timeout, progress=progress, producer_failed=producer_failed,
                           writes=lambda: snapshot.writes, expected_bytes=snapshot.size)
    except BaseException:
        if not ring.closed and ring.state == "open":
            ring.abort(0x80004004, "dump interrupted")
        snapshot.wait()
        raise
    snapshot.wait()
    if not snapshot.succeeded:
        raise _failure(snapshot, callback)
    result.writes = snapshot.writes
    result.rewritten_bytes = 0  # the writer emits every byte once, at increasing offsets
    result.extra.update(snapshot.figures)
    result.extra["emit_seconds"] = snapshot.emit_seconds
    result.extra["full"] = bool(full)
    return result
