"""Write a minidump of a Windows process through DbgHelp, streaming it into sinks.

:func:`write_dump` opens the process, hands ``MiniDumpWriteDump`` (dbghelp.dll)
the project's callback (:class:`mdstream.DumpCallback`: DbgHelp's
``IoStartCallback`` is answered ``S_FALSE`` so every byte of the dump goes
through ``IoWriteAllCallback`` into a ring), runs it on a dedicated worker
thread, and drains the ring on the calling thread into sinks (a file path
becomes a :class:`mdstream.FileSink`).  See ``docs/windows.md``.

The module imports everywhere; the structure declarations (``_pack_ = 4``, the
Windows SDK's packing for DbgHelp) are plain ctypes and usable on any system.
Only :func:`write_dump` needs Windows: elsewhere it raises
:class:`~mdstream.errors.UnsupportedPlatformError` (a ``NotImplementedError``)
naming the platform, the same class :func:`mdstream.linux.write_dump` raises
off Linux.  :func:`mdstream.write_dump` picks the right writer for you.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from ctypes import POINTER, Structure, c_int32, c_uint32, c_void_p
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

from mdstream import errors
from mdstream.dbghelp import MinidumpType, hresult_name, hresult_to_unsigned

if TYPE_CHECKING:  # pragma: no cover
    from mdstream._callback import DumpCallback
    from mdstream._ring import Ring
    from mdstream.pipeline import Progress, Sink, StreamResult

__all__ = [
    "DEFAULT_DUMP_TYPE",
    "PROCESS_DUMP_ACCESS",
    "MINIDUMP_CALLBACK_INFORMATION",
    "MINIDUMP_EXCEPTION_INFORMATION",
    "MINIDUMP_USER_STREAM",
    "MINIDUMP_USER_STREAM_INFORMATION",
    "ProcessHandle",
    "WriteDumpError",
    "is_supported",
    "write_dump",
]

# ---- constants -------------------------------------------------------------

PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_VM_READ = 0x0010
PROCESS_DUP_HANDLE = 0x0040
#: The access ``MiniDumpWriteDump`` needs on the process handle (Microsoft's documentation).
PROCESS_DUMP_ACCESS = PROCESS_QUERY_INFORMATION | PROCESS_VM_READ | PROCESS_DUP_HANDLE

#: The default ``DumpType``: what ``mdstream dump`` writes without ``--type``.
DEFAULT_DUMP_TYPE = (
    MinidumpType.MiniDumpWithDataSegs
    | MinidumpType.MiniDumpWithHandleData
    | MinidumpType.MiniDumpWithUnloadedModules
    | MinidumpType.MiniDumpWithThreadInfo
)

_FACILITY_WIN32 = 7
_E_FAIL = 0x80004005

# ---- DbgHelp's structures, as the SDK packs them (pack 4) --------------------

DWORD = c_uint32
ULONG = c_uint32
BOOL = c_int32
HANDLE = c_void_p
PVOID = c_void_p


class MINIDUMP_EXCEPTION_INFORMATION(Structure):
    """``MINIDUMP_EXCEPTION_INFORMATION``: 16 bytes on x64 (pointer at 4, ``ClientPointers`` at 12), 12 on x86.

    ``ExceptionPointers`` is the address of an ``EXCEPTION_POINTERS``; with
    ``ClientPointers`` TRUE it is an address in the dumped process.
    """

    _pack_ = 4
    _fields_ = [("ThreadId", DWORD), ("ExceptionPointers", PVOID), ("ClientPointers", BOOL)]


class MINIDUMP_USER_STREAM(Structure):
    """``MINIDUMP_USER_STREAM``: a stream the caller adds to the dump."""

    _pack_ = 4
    _fields_ = [("Type", c_uint32), ("BufferSize", ULONG), ("Buffer", PVOID)]


class MINIDUMP_USER_STREAM_INFORMATION(Structure):
    """``MINIDUMP_USER_STREAM_INFORMATION``: 12 bytes on x64 (array pointer at 4), 8 on x86."""

    _pack_ = 4
    _fields_ = [("UserStreamCount", ULONG), ("UserStreamArray", POINTER(MINIDUMP_USER_STREAM))]


class MINIDUMP_CALLBACK_INFORMATION(Structure):
    """``MINIDUMP_CALLBACK_INFORMATION``: routine and parameter (``DumpCallback.information_address`` points at one)."""

    _pack_ = 4
    _fields_ = [("CallbackRoutine", PVOID), ("CallbackParam", PVOID)]


@dataclass(frozen=True)
class ProcessHandle:
    """A process handle you opened yourself (with at least :data:`PROCESS_DUMP_ACCESS`).

    ``write_dump(ProcessHandle(h), ...)`` uses it as is and does not close it;
    ``pid`` is looked up with ``GetProcessId`` when omitted.  A plain ``int``
    given to :func:`write_dump` is a process id.
    """

    handle: int
    pid: int | None = None


class WriteDumpError(errors.DumpFailedError, OSError):
    """``MiniDumpWriteDump`` (or opening the process) failed.

    An :class:`OSError` (``winerror``: the Win32 error, or the HRESULT when it
    is not a Win32 one) and a :class:`mdstream.DumpFailedError` (``hresult``
    unsigned, ``reason``).  ``str()`` is the message.
    """

    def __init__(self, message: str, hresult: int = _E_FAIL, reason: str = "", callback_type: int | None = None) -> None:
        OSError.__init__(self, message)
        self.message = message
        self.hresult = hresult_to_unsigned(hresult)
        self.reason = reason
        self.callback_type = callback_type
        self.winerror = _win32_code(self.hresult)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return (type(self), (self.message, self.hresult, self.reason, self.callback_type))


def _win32_code(hresult: int) -> int:
    """The Win32 error inside an ``HRESULT_FROM_WIN32`` value, else the HRESULT itself."""
    unsigned = hresult & 0xFFFFFFFF
    if unsigned & 0x80000000 and ((unsigned >> 16) & 0x1FFF) == _FACILITY_WIN32:
        return unsigned & 0xFFFF
    return unsigned


def _as_hresult(last_error: int) -> int:
    """``GetLastError()`` after ``MiniDumpWriteDump`` is an HRESULT; wrap a bare Win32 code like the SDK macro."""
    code = last_error & 0xFFFFFFFF
    if code == 0:
        return _E_FAIL
    if code & 0x80000000:
        return code
    return 0x80000000 | (_FACILITY_WIN32 << 16) | (code & 0xFFFF)


# ---- the Windows API, behind one small seam -----------------------------------


class _WindowsApi:
    """kernel32 and dbghelp through ctypes.  Tests on other systems substitute a fake."""

    def __init__(self, dbghelp_path: str | None = None) -> None:
        self.kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
        path = dbghelp_path or os.environ.get("MDSTREAM_DBGHELP") or "dbghelp.dll"
        self.dbghelp = ctypes.WinDLL(path, use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
        k = self.kernel32
        k.OpenProcess.argtypes = [DWORD, BOOL, DWORD]
        k.OpenProcess.restype = HANDLE
        k.CloseHandle.argtypes = [HANDLE]
        k.CloseHandle.restype = BOOL
        k.GetProcessId.argtypes = [HANDLE]
        k.GetProcessId.restype = DWORD
        k.FormatMessageW.argtypes = [DWORD, PVOID, DWORD, DWORD, ctypes.c_wchar_p, DWORD, PVOID]
        k.FormatMessageW.restype = DWORD
        f = self.dbghelp.MiniDumpWriteDump
        f.argtypes = [HANDLE, DWORD, HANDLE, c_uint32, POINTER(MINIDUMP_EXCEPTION_INFORMATION),
                      POINTER(MINIDUMP_USER_STREAM_INFORMATION), PVOID]
        f.restype = BOOL

    def open_process(self, pid: int, access: int) -> int:
        handle = self.kernel32.OpenProcess(access, False, pid)
        if not handle:
            error = ctypes.get_last_error()  # type: ignore[attr-defined,unused-ignore]
            raise WriteDumpError(f"cannot open process {pid} for dumping: {self.message(error)} (error {error})",
                                 _as_hresult(error), self.message(error))
        return int(handle)

    def close_handle(self, handle: int) -> None:
        self.kernel32.CloseHandle(handle)

    def process_id(self, handle: int) -> int:
        return int(self.kernel32.GetProcessId(handle))

    def minidump_write_dump(self, process: int, pid: int, dump_type: int,
                            exception: MINIDUMP_EXCEPTION_INFORMATION | None,
                            user_streams: MINIDUMP_USER_STREAM_INFORMATION | None,
                            callback_information: int) -> tuple[bool, int]:
        ok = self.dbghelp.MiniDumpWriteDump(
            process, pid, None, dump_type,
            ctypes.byref(exception) if exception is not None else None,
            ctypes.byref(user_streams) if user_streams is not None else None,
            callback_information,
        )
        return bool(ok), ctypes.get_last_error()  # type: ignore[attr-defined,unused-ignore]

    def message(self, code: int) -> str:
        buf = ctypes.create_unicode_buffer(512)
        n = self.kernel32.FormatMessageW(0x1000 | 0x200, None, code & 0xFFFFFFFF, 0, buf, len(buf), None)
        return buf.value[:n].strip().rstrip(".") if n else hresult_name(code)


_API: _WindowsApi | None = None
_API_LOCK = threading.Lock()

#: Serialises ``MiniDumpWriteDump`` calls made through this module: DbgHelp is single-threaded.
DBGHELP_LOCK = threading.Lock()


def _load_api() -> _WindowsApi:
    """The process-wide API object; UnsupportedPlatformError off Windows."""
    global _API
    if sys.platform != "win32":
        raise errors.UnsupportedPlatformError(
            f"mdstream.windows.write_dump needs Windows (DbgHelp's MiniDumpWriteDump); this is {sys.platform}. "
            "On other systems, rehearse with mdstream.replay() (docs/callback.md)."
        )
    with _API_LOCK:
        if _API is None:
            _API = _WindowsApi()
        return _API


def is_supported() -> bool:
    """True when :func:`write_dump` can run here (Windows with a loadable dbghelp.dll)."""
    try:
        _load_api()
    except (NotImplementedError, OSError):
        return False
    return True


# ---- write_dump --------------------------------------------------------------------

SinksOrRing = Union["Ring", "DumpCallback", "Sink", Sequence["Sink"], str, "os.PathLike[str]"]
ExceptionArg = Union[MINIDUMP_EXCEPTION_INFORMATION, "tuple[int, ...]", None]


def _exception_info(exception: ExceptionArg) -> MINIDUMP_EXCEPTION_INFORMATION | None:
    if exception is None or isinstance(exception, MINIDUMP_EXCEPTION_INFORMATION):
        return exception
    if isinstance(exception, tuple) and len(exception) in (2, 3):
        thread_id, pointers = int(exception[0]), int(exception[1])
        client = bool(exception[2]) if len(exception) == 3 else True
        return MINIDUMP_EXCEPTION_INFORMATION(thread_id, pointers, int(client))
    raise TypeError("exception must be None, a MINIDUMP_EXCEPTION_INFORMATION, or "
                    "(thread_id, exception_pointers_address[, client_pointers])")


def _user_streams(streams: Iterable[tuple[int, bytes]] | None) -> tuple[Any, list[Any]]:
    if not streams:
        return None, []
    items = [(int(t), bytes(b)) for t, b in streams]
    array = (MINIDUMP_USER_STREAM * len(items))()
    keep: list[Any] = [array]
    for i, (stream_type, data) in enumerate(items):
        buf = ctypes.create_string_buffer(data, len(data))
        keep.append(buf)
        array[i].Type = stream_type
        array[i].BufferSize = len(data)
        array[i].Buffer = ctypes.cast(buf, c_void_p)
    info = MINIDUMP_USER_STREAM_INFORMATION(len(items), ctypes.cast(array, POINTER(MINIDUMP_USER_STREAM)))
    return info, keep


def _dump_type(value: Any) -> int:
    return int(MinidumpType.parse(value))


def _failure(pid: int, last_error: int, callback: DumpCallback, api: Any) -> WriteDumpError:
    """The exception for MiniDumpWriteDump returning FALSE: the callback's own reason first."""
    if callback.failure is not None:
        hresult, reason = callback.failure
        hresult = hresult_to_unsigned(hresult)
    else:
        hresult = _as_hresult(last_error)
        try:
            reason = api.message(hresult)
        except Exception:  # pragma: no cover - FormatMessage failing
            reason = ""
    name = hresult_name(hresult)
    text = f"MiniDumpWriteDump failed for process {pid}: {name} (0x{hresult:08X})"
    if reason:
        text += f": {reason}"
    return WriteDumpError(text, hresult, reason)


def write_dump(
    process: int | ProcessHandle | Any,
    sinks_or_ring: SinksOrRing,
    dump_type: int | str | Iterable[int | str] = DEFAULT_DUMP_TYPE,
    exception: ExceptionArg = None,
    *,
    user_streams: Iterable[tuple[int, bytes]] | None = None,
    ring_capacity: int | None = None,
    deadline: float | None = 30.0,
    progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
    lock_timeout: float | None = None,
    overwrite: bool = False,
) -> StreamResult:
    """Write a minidump of ``process`` with DbgHelp, streaming it into ``sinks_or_ring``.

    ``process``: a process id (``int``), a :class:`subprocess.Popen`, or a
    :class:`ProcessHandle` you opened (not closed here).  A pid is opened with
    ``PROCESS_QUERY_INFORMATION | PROCESS_VM_READ | PROCESS_DUP_HANDLE``.

    ``sinks_or_ring``: a path (``str`` / ``os.PathLike``: the dump is written
    there with a :class:`~mdstream.FileSink`, atomically; an existing file is
    refused unless ``overwrite=True``), a sink or a list of
    sinks (drained here from a private ring of ``ring_capacity`` bytes), or a
    :class:`~mdstream.Ring` / :class:`~mdstream.DumpCallback` that another
    thread or process drains (nothing is drained here; the call returns when
    DbgHelp does).

    ``dump_type``: ``MINIDUMP_TYPE`` flags (an int, ``"WithFullMemory|WithHandleData"``,
    or a list).  ``exception``: a :class:`MINIDUMP_EXCEPTION_INFORMATION` or
    ``(thread_id, exception_pointers_address[, client_pointers=True])``.
    ``user_streams``: ``[(stream_type, bytes), ...]`` added to the dump.

    ``deadline``: longest wait of one write for ring space (the dumped process
    is never blocked longer).  ``timeout``: longest time without data while
    draining (``None``: forever; Ctrl-C still works).  ``lock_timeout``:
    longest wait for another ``write_dump`` in this process to finish
    (``None``: wait).  ``progress`` receives :class:`~mdstream.Progress` reports
    while the dump is drained here.

    Returns the pipeline's :class:`~mdstream.StreamResult` (``extra`` holds
    ``pid``, ``dump_type`` and the callback counts).  Raises
    :class:`WriteDumpError` (an ``OSError``) when the process cannot be opened
    or ``MiniDumpWriteDump`` fails, a sink's exception when the consumer
    fails (the dump is then aborted: DbgHelp's next write answers ``E_ABORT``),
    and :class:`~mdstream.errors.UnsupportedPlatformError` off Windows.
    """
    api = _load_api()
    return _write_dump(api, process, sinks_or_ring, dump_type, exception, user_streams=user_streams,
                       ring_capacity=ring_capacity, deadline=deadline, progress=progress, timeout=timeout,
                       lock_timeout=lock_timeout, overwrite=overwrite)


def _resolve_process(api: Any, process: Any) -> tuple[int, int, bool]:
    """(handle, pid, owned)."""
    if isinstance(process, bool):
        raise TypeError("process must be a pid, a subprocess.Popen or a ProcessHandle, not bool")
    if isinstance(process, ProcessHandle):
        handle = int(process.handle)
        pid = process.pid if process.pid is not None else api.process_id(handle)
        return handle, int(pid), False
    if isinstance(process, int):
        pid = int(process)
        if not 0 < pid <= 0xFFFFFFFF:
            raise ValueError(f"process id out of range: {pid}")
        return api.open_process(pid, PROCESS_DUMP_ACCESS), pid, True
    popen_handle = getattr(process, "_handle", None)
    pid = getattr(process, "pid", None)
    if isinstance(pid, int):
        if popen_handle is not None:  # subprocess.Popen on Windows: no pid-reuse race
            return int(popen_handle), pid, False
        return api.open_process(pid, PROCESS_DUMP_ACCESS), pid, True
    raise TypeError(f"process must be a pid, a subprocess.Popen or a ProcessHandle, not {type(process).__name__}")


def _write_dump(
    api: Any,
    process: Any,
    sinks_or_ring: Any,
    dump_type: Any,
    exception: ExceptionArg,
    *,
    user_streams: Iterable[tuple[int, bytes]] | None,
    ring_capacity: int | None,
    deadline: float | None,
    progress: Callable[[Progress], None] | None,
    timeout: float | None,
    lock_timeout: float | None,
    overwrite: bool = False,
) -> StreamResult:
    from mdstream._callback import DumpCallback
    from mdstream._ring import Ring
    from mdstream._sinks import FileSink
    from mdstream.pipeline import DEFAULT_RING_CAPACITY, drain

    flags = _dump_type(dump_type)
    exc_info = _exception_info(exception)
    streams, keepalive = _user_streams(user_streams)

    # Where the bytes go.
    callback: DumpCallback
    sinks: list[Any] | None
    if isinstance(sinks_or_ring, DumpCallback):
        callback, sinks = sinks_or_ring, None
    elif isinstance(sinks_or_ring, Ring):
        callback, sinks = DumpCallback(sinks_or_ring, deadline=deadline), None
    else:
        if isinstance(sinks_or_ring, (str, os.PathLike)):
            sinks = [FileSink(os.fspath(sinks_or_ring), overwrite=overwrite)]
        elif isinstance(sinks_or_ring, (list, tuple)):
            sinks = list(sinks_or_ring)
        else:
            sinks = [sinks_or_ring]
        if not sinks:
            raise ValueError("write_dump needs at least one sink")
        ring = Ring.create(None, ring_capacity or DEFAULT_RING_CAPACITY)
        callback = DumpCallback(ring, deadline=deadline)
    ring = callback.ring
    callback.reset()

    if not DBGHELP_LOCK.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
        raise errors.RingTimeoutError(f"another MiniDumpWriteDump did not finish within {lock_timeout:g} s")
    handle = 0
    owned = False
    worker: threading.Thread | None = None
    try:
        handle, pid, owned = _resolve_process(api, process)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                ok, last_error = api.minidump_write_dump(handle, pid, flags, exc_info, streams,
                                                         callback.information_address)
                outcome["ok"], outcome["error"] = ok, last_error
            except BaseException as exc:  # pragma: no cover - ctypes itself failing
                outcome["ok"], outcome["error"], outcome["exception"] = False, _E_FAIL, exc
            finally:
                done.set()

        def producer_failed() -> BaseException | None:
            if not done.is_set():
                return None
            if "exception" in outcome:
                error: BaseException = outcome["exception"]
                return error
            if not outcome["ok"]:
                return _failure(pid, outcome["error"], callback, api)
            if ring.state == "open":
                # TRUE without IoFinishCallback: this DbgHelp ignored the I/O
                # callbacks (too old: IoStartCallback arrived with DbgHelp 6.x).
                return WriteDumpError(
                    f"MiniDumpWriteDump returned TRUE for process {pid} without finishing the callback's I/O "
                    "(IoFinishCallback never came): this dbghelp.dll does not support callback I/O",
                    _E_FAIL, "no IoFinishCallback")
            return None

        started = time.perf_counter()
        worker = threading.Thread(target=run, name=f"mdstream-MiniDumpWriteDump-{pid}", daemon=True)
        worker.start()
        if sinks is None:
            result = _wait_only(worker, done, ring, callback, producer_failed, timeout, started)
        else:
            # The ring's transaction orders it: the sinks publish, drain
            # commits, and only then does IoFinishCallback answer S_OK.
            result = drain(ring, sinks, timeout=timeout, progress=progress, producer_failed=producer_failed,
                           writes=lambda: callback.writes)
        worker.join()
        worker = None
        failure = producer_failed()
        if failure is not None:
            raise failure
        callback.raise_pending()
        result.writes = callback.writes
        result.extra.update(pid=pid, dump_type=flags, callbacks=callback.counters["calls"])
        return result
    finally:
        if worker is not None:
            # The drain failed (sink error, Ctrl-C, timeout) and aborted the
            # ring: DbgHelp's next write answers E_ABORT and it returns.
            if not ring.closed and ring.state == "open":
                ring.abort(0x80004004, "write_dump interrupted")
            worker.join()
        if owned and handle:
            api.close_handle(handle)
        DBGHELP_LOCK.release()
        del keepalive


def _wait_only(worker: threading.Thread, done: threading.Event, ring: Any, callback: Any,
               producer_failed: Callable[[], BaseException | None], timeout: float | None,
               started: float) -> StreamResult:
    """Someone else drains the ring: wait for DbgHelp, watching for stalls."""
    from mdstream.pipeline import StreamResult

    last_bytes, idle_since = -1, time.perf_counter()
    while not done.wait(0.05):
        now = time.perf_counter()
        current = callback.bytes_written
        if current != last_bytes:
            last_bytes, idle_since = current, now
        elif timeout is not None and now - idle_since > timeout:
            if not ring.closed and ring.state == "open":
                ring.abort(0x800705B4, f"write_dump: no progress for {timeout:g} s")
            worker.join()
            raise errors.RingTimeoutError(f"the dump made no progress for {timeout:g} s")
    failure = producer_failed()
    if failure is not None:
        raise failure
    seconds = time.perf_counter() - started
    return StreamResult("ok", callback.bytes_written, callback.writes, callback.writes, seconds,
                        callback.highest_end)
