"""``mdstream.crash.install()``: in-process crash handlers for Python programs
and services, with the dump written out of process by a watcher.

The handlers (C, ``mdstream/crash/handler.c``) run on an alternate signal
stack, record the crash context, write the Python tracebacks of every thread
into a memfd, hand everything to the watcher (``mdstream watch``) and wait for
it with a deadline; then the previous handler (``faulthandler``'s, say) or the
default action takes over and the process dies as it would have.  See
docs/crash-reporting.md.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from typing import Any, Mapping

from mdstream import errors, linux
from mdstream.crash import _protocol as proto

__all__ = ["CrashHandler", "CrashHandlerError", "WatcherUnavailableError", "install", "installed"]

class CrashHandlerError(errors.MdstreamError, RuntimeError):
    """The crash handler could not be installed."""


class WatcherUnavailableError(CrashHandlerError, ConnectionError):
    """The watcher could not be started, reached, or refused this process."""


class CrashHandler:
    """What :func:`install` returns.  ``uninstall()`` restores the previous handlers."""

    def __init__(self, *, address: bytes | str, watcher_pid: int, peer_pid: int, database: Any, timeout: float,
                 hard_timeout: float, annotations: dict[str, str], python_tracebacks: bool,
                 process: subprocess.Popen[bytes] | None, threads_covered: tuple[int, int]) -> None:
        self.address = address
        self.watcher_pid = watcher_pid
        self.peer_pid = peer_pid
        self.database = database
        self.timeout = timeout
        self.hard_timeout = hard_timeout
        self.annotations = annotations
        self.python_tracebacks = python_tracebacks
        self.threads_covered = threads_covered
        """``(covered, total)``: threads given an alternate signal stack at install time."""
        self._process = process
        self._owner = os.getpid()
        self.stacks_kept = 0
        """After :meth:`uninstall`: alternate stacks left mapped (threads that did not answer)."""

    @property
    def installed(self) -> bool:
        return _handler is self and _crash().is_installed()

    def uninstall(self) -> None:
        """Restore the handlers that were there before (where ours are still in place),
        disconnect from the watcher (a watcher install() started then ends), and
        give back the alternate signal stacks.  Calling it twice is harmless."""
        global _handler
        if _handler is not self:
            return
        native = _crash()
        native.uninstall()
        _unhook_threads()
        self.stacks_kept = native.altstack_release_all(1000)
        _handler = None
        if self._process is not None and os.getpid() == self._owner:
            process = self._process
            self._process = None
            threading.Thread(target=process.wait, name="mdstream-watch-reaper", daemon=True).start()

    def __repr__(self) -> str:
        state = "installed" if self.installed else "uninstalled"
        return f"<CrashHandler {state} watcher={self.watcher_pid}>"


_handler: CrashHandler | None = None
_install_lock = threading.Lock()
_fork_hook_registered = False
_original_bootstrap: Any = None


def _crash() -> Any:
    from mdstream import _crash as native

    return native


def installed() -> CrashHandler | None:
    """The installed handler, or None."""
    return _handler


# ---- threads: an alternate signal stack for each ------------------------------------


def _hook_threads() -> None:
    global _original_bootstrap
    if _original_bootstrap is not None:
        return
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    native = _crash()

    def _bootstrap_inner(self: threading.Thread) -> None:
        address, size = native.altstack_enter()
        try:
            original(self)
        finally:
            native.altstack_leave(address, size)

    _bootstrap_inner.__wrapped__ = original  # type: ignore[attr-defined]
    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]
    _original_bootstrap = original


def _unhook_threads() -> None:
    global _original_bootstrap
    if _original_bootstrap is None:
        return
    current = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    if getattr(current, "__wrapped__", None) is _original_bootstrap:
        threading.Thread._bootstrap_inner = _original_bootstrap  # type: ignore[attr-defined]
    _original_bootstrap = None


# ---- the watcher -----------------------------------------------------------------------


def _watcher_command(database: Any, options: dict[str, Any]) -> list[str]:
    argv = [sys.executable, "-m", "mdstream"]
    argv += ["watch", "--listen-fd", "{fd}", "--exit-when-idle", "2", "--quiet"]
    if database is not None:
        argv += ["-d", os.fspath(database)]
    if options.get("full"):
        argv.append("--full")
    if options.get("include_environ"):
        argv.append("--include-environ")
    if not options.get("include_cmdline", True):
        argv.append("--no-cmdline")
    if options.get("sanitize_stacks"):
        argv.append("--sanitize-stacks")
    return argv


def _spawn_watcher(database: Any, options: dict[str, Any]) -> tuple[bytes, subprocess.Popen[bytes]]:
    address = b"\0mdstream-watch-" + secrets.token_hex(16).encode()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.bind(address)
        listener.listen(128)
        argv = [a.replace("{fd}", str(listener.fileno())) for a in _watcher_command(database, options)]
        process = subprocess.Popen(argv, pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise WatcherUnavailableError(f"cannot start the crash watcher: {exc}") from exc
    finally:
        listener.close()  # the watcher holds it now
    return address, process


def _connect(address: bytes | str, expect_peer: int | None, *, wait: bool = True) -> tuple[socket.socket, int]:
    """A connection to the watcher's socket; returns it and the socket's SO_PEERCRED pid (the
    process that created the listening socket), which must be ``expect_peer`` when given.
    ``wait=False``: fail at once (BlockingIOError) when the watcher's backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(wait)
        sock.connect(address)
        sock.setblocking(True)
        pid, uid, _ = proto.peer_credentials(sock)
    except OSError as exc:
        sock.close()
        raise WatcherUnavailableError(f"cannot reach the crash watcher at {_show(address)}: {exc}") from exc
    if expect_peer is not None and pid != expect_peer:
        sock.close()
        raise WatcherUnavailableError(f"{_show(address)} is now a socket of process {pid}, not the watcher's")
    if uid not in (os.geteuid(), 0):
        sock.close()
        raise WatcherUnavailableError(f"the watcher at {_show(address)} runs as uid {uid}: refusing to send it "
                                      f"crash contexts")
    return sock, pid


def _register(sock: socket.socket, annotations: bytes, memfd: int) -> None:
    hello = proto.pack_hello(os.getpid(), annotations, memfd >= 0)
    fds = [memfd] if memfd >= 0 else []
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(_int_array(fds))))] if fds else []
    sock.sendmsg([hello], ancillary)


def _int_array(values: list[int]) -> Any:
    import array

    return array.array("i", values)


def _wait_ready(sock: socket.socket, timeout: float, address: bytes | str) -> int:
    """Waits for the watcher's READY; returns the watcher's pid."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(proto.ACK.size)
    except socket.timeout:
        raise WatcherUnavailableError(f"the crash watcher at {_show(address)} did not answer within {timeout} s "
                                      f"(it did not start?)") from None
    except OSError as exc:
        raise WatcherUnavailableError(f"the crash watcher at {_show(address)} went away: {exc}") from exc
    finally:
        sock.settimeout(None)
    if not data:
        raise WatcherUnavailableError(f"the crash watcher at {_show(address)} closed the connection (it could not "
                                      f"start, or refused this process)")
    try:
        magic, _, watcher_pid, _, _ = proto.parse_ack(data)
    except proto.ProtocolError as exc:
        raise WatcherUnavailableError(f"the crash watcher at {_show(address)} answered nonsense: {exc}") from exc
    if magic != proto.READY_MAGIC:
        raise WatcherUnavailableError(f"the crash watcher at {_show(address)} did not accept the registration")
    return watcher_pid


def _show(address: bytes | str) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode("utf-8", "replace") if address.startswith(b"\0") else address.decode()
    return address


def _memfd(python_tracebacks: bool) -> int:
    if not python_tracebacks:
        return -1
    return os.memfd_create("mdstream-tracebacks", os.MFD_CLOEXEC)


def _after_fork_in_child() -> None:
    """A forked child registers itself with the watcher (its own connection and
    tracebacks file); without this, its handler would connect at the crash."""
    handler = _handler
    native = _crash()
    if handler is None or not native.is_installed():
        return
    memfd = -1
    try:
        memfd = _memfd(handler.python_tracebacks)
        # never wait here (a fork-heavy program would wait for the watcher at every fork):
        # when the watcher's backlog is full, the handler registers at the crash instead
        sock, _ = _connect(handler.address, handler.peer_pid, wait=False)
        _register(sock, json.dumps(handler.annotations, sort_keys=True).encode(), memfd)
    except (OSError, CrashHandlerError):
        native.set_connection(-1, memfd)  # register at the crash
        return
    native.set_connection(sock.detach(), memfd)
    handler._process = None  # the parent owns the watcher it started


# ---- install -----------------------------------------------------------------------------


def _install_windows(database: Any, *, annotations: Mapping[str, str] | None, timeout: float,
                     quiet: bool) -> CrashHandler:
    """Windows: the C core's handler (mdstream/src/crash_win32.c), rendezvous = this pid.  The dump is
    written by a watcher that attaches with mds_watch_attach (examples/native_watcher.c) and streams into
    a ring drained by :func:`mdstream.crash.report_from_ring`; no Python watcher is started (not written
    yet, see docs/windows.md).  Compile-checked only: these machines have no Windows Python."""
    global _handler
    with _install_lock:
        if _handler is not None and _crash().is_installed():
            return _handler
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        _crash().install_windows(None, float(timeout), 0, quiet)
        _handler = CrashHandler(address="", watcher_pid=0, peer_pid=0, database=database, timeout=float(timeout),
                                hard_timeout=float(timeout), annotations=dict(annotations or {}),
                                python_tracebacks=False, process=None, threads_covered=(0, 0))
        return _handler



def install(
    database: Any = None,
    *,
    annotations: Mapping[str, str] | None = None,
    full: bool = False,
    watcher: str | bytes | None = None,
    timeout: float = 10.0,
    hard_timeout: float | None = None,
    python_tracebacks: bool = True,
    include_environ: bool = False,
    include_cmdline: bool = True,
    sanitize_stacks: bool = False,
    wait: bool = True,
    quiet: bool = False,
) -> CrashHandler:
    """Install crash handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP and SIGSYS.

    ``database``: the crash database directory (default: the user's data
    directory).  ``watcher``: the address of a running ``mdstream watch``
    (a socket path, or ``"@name"`` for an abstract socket); by default one is
    started for this process (and its forked children), ending with them.
    ``timeout``: how long a crashing process waits for the watcher; in every
    case it dies within ``hard_timeout`` (default ``timeout`` + 5 s; a kernel
    timer SIGKILLs it if the watcher stopped while it held the process
    stopped).  ``python_tracebacks``: put every thread's Python traceback in
    the report.  ``wait``: wait until the watcher accepted the registration
    (raises :class:`WatcherUnavailableError` if it does not).  ``quiet``: no
    line on stderr when a report was written (failures are always said).

    Calling it again while installed returns the installed handler unchanged.
    """
    global _handler, _fork_hook_registered
    if sys.platform == "win32":
        return _install_windows(database, annotations=annotations, timeout=timeout, quiet=quiet)
    linux._check_platform()
    with _install_lock:
        if _handler is not None and _crash().is_installed():
            return _handler
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        hard = float(hard_timeout) if hard_timeout is not None else float(timeout) + min(5.0, max(1.0, timeout / 2))
        if hard <= timeout:
            raise ValueError("hard_timeout must be longer than timeout")
        notes = {str(k): str(v) for k, v in dict(annotations or {}).items()}
        encoded = json.dumps(notes, sort_keys=True).encode()
        if len(encoded) > proto.MAX_ANNOTATIONS:
            raise ValueError(f"the annotations take {len(encoded)} bytes as JSON; at most {proto.MAX_ANNOTATIONS}")
        options = {"full": full, "include_environ": include_environ, "include_cmdline": include_cmdline,
                   "sanitize_stacks": sanitize_stacks}
        process = None
        address: bytes | str
        if watcher is None:
            address, process = _spawn_watcher(database, options)
        else:
            address = proto.socket_address(watcher) if isinstance(watcher, str) else watcher
        memfd = -1
        try:
            sock, peer_pid = _connect(address, os.getpid() if process is not None else None)
            memfd = _memfd(python_tracebacks)
            _register(sock, encoded, memfd)
            # the watcher's pid: the one started here, else what it says (or, not waiting, the socket's owner)
            watcher_pid = process.pid if process is not None else peer_pid
            if wait:
                said = _wait_ready(sock, 30.0 if watcher is None else 5.0, address)
                if process is not None and said != process.pid:
                    raise WatcherUnavailableError(f"the watcher started as process {process.pid} says it is {said}")
                watcher_pid = said
        except BaseException:
            if memfd >= 0:
                os.close(memfd)
            if process is not None:
                process.kill()
                process.wait()
            raise
        raw_address = address.encode() if isinstance(address, str) else address
        _crash().install(sock.detach(), memfd, watcher_pid, peer_pid, float(timeout), hard, raw_address, encoded,
                         python_tracebacks, quiet)
        covered = _crash().altstack_all_threads(1000)
        _hook_threads()
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True
        _handler = CrashHandler(address=address, watcher_pid=watcher_pid, peer_pid=peer_pid, database=database,
                                timeout=float(timeout),
                                hard_timeout=hard, annotations=notes, python_tracebacks=python_tracebacks,
                                process=process, threads_covered=tuple(covered))
        return _handler
