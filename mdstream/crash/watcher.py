"""``mdstream watch``: the out-of-process half of :func:`mdstream.crash.install`.

Processes connect to the watcher's Unix socket (SOCK_SEQPACKET) and register
(a hello: their annotations and a memfd for the Python tracebacks).  When one
crashes, its signal handler sends the crash context (siginfo, the registers
of the ucontext, the thread id) and waits; the watcher snapshots the process
with the Linux writer using that context, emits the dump through the
callback, the ring and a FileSink into the crash database, publishes the
report (with the Python tracebacks read from the memfd) and answers; then the
handler lets the process die.  Only processes of the watcher's own user (or
``allowed_uids``) are served, and the pid a process claims must be the one
the kernel reports for the connection (SO_PEERCRED).
"""

from __future__ import annotations

import array
import json
import os
import queue
import selectors
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mdstream import linux
from mdstream.crash import _protocol as proto
from mdstream.crash._report import DumpOptions, open_database, write_report
from mdstream.crash._signals import crash_reason, fault_address

__all__ = ["Watcher", "listen", "WatcherError"]


class WatcherError(linux.LinuxDumpError):
    """The watcher cannot listen (the socket path is taken, ...)."""


@dataclass
class _Client:
    sock: socket.socket
    fd: int
    pid: int
    uid: int
    registered: bool = False
    memfd: int = -1
    annotations: dict[str, str] = field(default_factory=dict)
    busy: bool = False      # a report is being written (a worker owns the socket)
    closing: bool = False   # the process went away meanwhile


def listen(address: str | bytes, *, backlog: int = 128) -> socket.socket:
    """A listening SOCK_SEQPACKET socket at ``address`` (a path, or ``b"\\0name"`` abstract).

    A path is created 0600 (through the umask) and never replaces a file:
    only a stale socket of ours (nobody listening, same owner) is removed
    first.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        if isinstance(address, str):
            try:
                st = os.lstat(address)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                    raise WatcherError(f"{address} exists and is not a socket of this user: not replacing it")
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    probe.connect(address)
                except (ConnectionRefusedError, FileNotFoundError):
                    os.unlink(address)  # stale: its watcher is gone
                else:
                    raise WatcherError(f"a watcher already listens on {address}")
                finally:
                    probe.close()
            old = os.umask(0o177)
            try:
                sock.bind(address)
            finally:
                os.umask(old)
        else:
            sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class Watcher:
    """Serve crash reports for the processes that connect to ``listener``.

    ``exit_when_idle``: seconds without any connected process after which
    :meth:`serve` returns (None: serve until :meth:`stop`); the watcher
    ``install()`` starts uses it, so it ends with the processes it serves.
    ``log(line)`` receives one line per event (default: stderr).
    """

    def __init__(
        self,
        database: Any,
        listener: socket.socket,
        *,
        options: DumpOptions = DumpOptions(),
        allowed_uids: Iterable[int] | None = None,
        exit_when_idle: float | None = None,
        workers: int = 4,
        log: Callable[[str], None] | None = None,
        json_lines: bool = False,
        on_report: Callable[[Any], None] | None = None,
    ) -> None:
        self.db = open_database(database)
        self.listener = listener
        self.options = options
        self.allowed_uids = set(allowed_uids) if allowed_uids is not None else {os.geteuid()}
        self.exit_when_idle = exit_when_idle
        self.json_lines = json_lines
        self.on_report = on_report
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self._selector = selectors.DefaultSelector()
        self._clients: dict[int, _Client] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mdstream-watch")
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._pending = 0
        self._finished: queue.SimpleQueue[_Client] = queue.SimpleQueue()
        self.reports: list[Any] = []
        self.failures: list[str] = []
        self.served = 0

    # -- lifecycle -----------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`serve` return (from any thread or a signal handler)."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def _collect_finished(self) -> None:
        """Clients whose report a worker finished: listen to them again (or close them)."""
        while True:
            try:
                client = self._finished.get_nowait()
            except queue.Empty:
                return
            client.busy = False
            if client.closing:
                self._close(client)
            else:
                try:
                    self._selector.register(client.sock, selectors.EVENT_READ, client)
                except (KeyError, ValueError, OSError):
                    self._close(client)

    def serve(self) -> int:
        """Serve until stopped (or idle); returns the number of reports written."""
        self.listener.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._stop_r, selectors.EVENT_READ, "stop")
        idle_since = time.monotonic()
        try:
            while True:
                timeout = None
                if self.exit_when_idle is not None:
                    timeout = 0.2
                for key, _ in self._selector.select(timeout):
                    if key.data == "stop":
                        try:
                            wakes = os.read(self._stop_r, 4096)
                        except BlockingIOError:
                            wakes = b""
                        self._collect_finished()
                        if b"x" in wakes:
                            return len(self.reports)
                        continue
                    if key.data == "listen":
                        self._accept()
                    else:
                        self._readable(key.data)
                if self._clients or self._pending:
                    idle_since = time.monotonic()
                elif self.exit_when_idle is not None and time.monotonic() - idle_since >= self.exit_when_idle:
                    return len(self.reports)
        finally:
            self._pool.shutdown(wait=True)
            self._collect_finished()
            for client in list(self._clients.values()):
                self._close(client)
            self._selector.close()
            os.close(self._stop_r)
            os.close(self._stop_w)

    # -- connections ---------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log(f"mdstream watch: accept failed: {exc}")
                return
            try:
                pid, uid, _ = proto.peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if uid not in self.allowed_uids:
                self._log(f"mdstream watch: refused process {pid} of uid {uid} (serving uids "
                          f"{sorted(self.allowed_uids)})")
                conn.close()
                continue
            conn.setblocking(False)
            client = _Client(conn, conn.fileno(), pid, uid)
            self._clients[client.fd] = client
            self._selector.register(conn, selectors.EVENT_READ, client)

    def _drop(self, client: _Client) -> None:
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        if client.busy:
            client.closing = True  # the worker still answers on it; closed when it is done
            return
        self._close(client)

    def _close(self, client: _Client) -> None:
        self._clients.pop(client.fd, None)
        client.sock.close()
        if client.memfd >= 0:
            os.close(client.memfd)
            client.memfd = -1

    def _readable(self, client: _Client) -> None:
        fds = array.array("i")
        try:
            data, ancdata, flags, _ = client.sock.recvmsg(proto.HELLO.size + proto.MAX_ANNOTATIONS + 16,
                                                          socket.CMSG_SPACE(4 * fds.itemsize))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if not data:
            for fd in fds:
                os.close(fd)
            self._drop(client)
            return
        try:
            magic = proto.HELLO.unpack_from(data)[0] if len(data) >= 4 else 0
            if magic == proto.HELLO_MAGIC:
                self._hello(client, data, list(fds))
                fds = array.array("i")
            elif magic == proto.REPORT_MAGIC:
                self._crash(client, proto.parse_crash(data))
            else:
                raise proto.ProtocolError(f"unknown message (magic 0x{magic:08X})")
        except proto.ProtocolError as exc:
            self._log(f"mdstream watch: process {client.pid}: {exc}; connection closed")
            self._drop(client)
        finally:
            for fd in fds:
                os.close(fd)

    def _hello(self, client: _Client, data: bytes, fds: list[int]) -> None:
        hello = proto.parse_hello(data)
        if hello.pid != client.pid:
            for fd in fds:
                os.close(fd)
            raise proto.ProtocolError(f"the hello claims pid {hello.pid}, the connection is process {client.pid}")
        if client.memfd >= 0:
            os.close(client.memfd)
            client.memfd = -1
        if hello.flags & proto.HELLO_TRACEBACKS and fds:
            client.memfd = fds.pop(0)
        for fd in fds:
            os.close(fd)
        annotations: dict[str, str] = {}
        if hello.annotations:
            try:
                parsed = json.loads(hello.annotations.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise proto.ProtocolError("the annotations are not a UTF-8 JSON object") from None
            if not isinstance(parsed, dict):
                raise proto.ProtocolError("the annotations are not a JSON object")
            annotations = {str(k): str(v) for k, v in parsed.items()}
        client.annotations = annotations
        client.registered = True
        self._send(client, proto.pack_ack(proto.READY_MAGIC, 0, os.getpid()))

    def _send(self, client: _Client, data: bytes) -> None:
        try:
            client.sock.setblocking(True)
            client.sock.settimeout(2.0)
            client.sock.sendall(data)
        except OSError:
            pass  # gone: its handler notices
        finally:
            try:
                client.sock.setblocking(False)
            except OSError:
                pass

    # -- crashes -------------------------------------------------------------

    def _crash(self, client: _Client, msg: proto.CrashMessage) -> None:
        if not client.registered:
            raise proto.ProtocolError("a crash before the hello")
        if msg.pid != client.pid:
            raise proto.ProtocolError(f"a crash of pid {msg.pid} on the connection of process {client.pid}")
        client.busy = True
        self._selector.unregister(client.sock)  # the worker owns it until it answers
        with self._lock:
            self._pending += 1
        self._pool.submit(self._write, client, msg)

    def _write(self, client: _Client, msg: proto.CrashMessage) -> None:
        report = None
        reason = ""
        try:
            if not os.path.isdir(f"/proc/{msg.pid}/task/{msg.tid}"):
                raise proto.ProtocolError(f"thread {msg.tid} is not a thread of process {msg.pid}")
            crash = linux.CrashContext(
                msg.signo, msg.code, fault_address(msg.signo, msg.code, msg.address, msg.instruction_pointer),
                msg.tid, mcontext=msg.gregs, fpregs=msg.fpregs)
            text = None
            if client.memfd >= 0 and msg.traceback_state in (proto.TB_COMPLETE, proto.TB_FAILED):
                text = os.pread(client.memfd, min(msg.traceback_bytes, proto.MAX_TRACEBACK_BYTES), 0)
            annotations = dict(self.options.annotations)
            annotations.update(client.annotations)
            if msg.traceback_state == proto.TB_FAILED:
                annotations["mdstream.python_tracebacks"] = "incomplete: the traceback dumper faulted"
            elif msg.traceback_state == proto.TB_UNAVAILABLE:
                annotations["mdstream.python_tracebacks"] = "unavailable: _Py_DumpTracebackThreads not found"
            options = DumpOptions(full=self.options.full, include_environ=self.options.include_environ,
                                  include_cmdline=self.options.include_cmdline,
                                  sanitize_stacks=self.options.sanitize_stacks, annotations=annotations)
            report = write_report(self.db, msg.pid, crash, options, traceback_text=text)
        except Exception as exc:  # answer in every case: the process must not wait for nothing
            reason = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        finally:
            rid = str(getattr(report, "id", "") or "")
            with self._lock:
                self.served += 1
            self._send(client, proto.pack_ack(proto.ACK_MAGIC, 0 if report is not None else 1, os.getpid(), rid,
                                              reason))
            with self._lock:
                self._pending -= 1
            self._finished.put(client)
            try:
                os.write(self._stop_w, b"d")
            except OSError:
                pass
        if report is not None:
            self.reports.append(report)
            self._announce(msg, report)
            if self.on_report is not None:
                self.on_report(report)
        else:
            self.failures.append(f"process {msg.pid}: {reason}")
            self._log(f"mdstream watch: process {msg.pid} crashed ({crash_reason(msg.signo, msg.code)}), "
                      f"but its report could not be written: {reason}")

    def _announce(self, msg: proto.CrashMessage, report: Any) -> None:
        meta = dict(getattr(report, "metadata", {}) or {})
        if self.json_lines:
            line = {"id": getattr(report, "id", None), "pid": msg.pid, "crashing_thread": msg.tid,
                    "signal": msg.signo, "code": msg.code, "address": meta.get("address"),
                    "dump_path": os.fspath(getattr(report, "dump_path", "") or "")}
            self._log(json.dumps(line, sort_keys=True))
        else:
            self._log(f"mdstream watch: process {msg.pid} ({os.path.basename(str(meta.get('executable') or '?'))}) "
                      f"crashed: {crash_reason(msg.signo, msg.code)} in thread {msg.tid}; report "
                      f"{getattr(report, 'id', '?')}")

