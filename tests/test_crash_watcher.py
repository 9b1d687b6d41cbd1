"""The watcher against hostile or broken peers, its socket handling, and the
pure helpers of mdstream.crash (traceback parsing, signal names, addresses).

The watcher runs in a thread of this process; the peers are raw sockets (and
a forked child of another uid).  A peer that misbehaves loses its connection,
a crash the watcher cannot dump is answered with a failure (so the crashing
process never waits for nothing), and the watcher keeps serving the others.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from mdstream import linux
from mdstream.crash import _protocol as proto
from mdstream.crash import code_name, crash_reason, parse_tracebacks, signal_name
from mdstream.crash._signals import fault_address

linux_only = pytest.mark.skipif(not linux.supported(), reason="the watcher needs Linux x86-64")


class Running:
    def __init__(self, tmp_path: Path, address: str | bytes | None = None) -> None:
        from mdstream.crash.watcher import Watcher, listen

        self.path = address if address is not None else str(tmp_path / "w.sock")
        self.lines: list[str] = []
        self.listener = listen(self.path)
        self.watcher = Watcher(tmp_path / "db", self.listener, log=self.lines.append)
        self.thread = threading.Thread(target=self.watcher.serve, daemon=True)
        self.thread.start()

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(self.path)
        return s

    def hello(self, s: socket.socket, pid: int | None = None, annotations: bytes = b"{}") -> bytes:
        s.send(proto.pack_hello(os.getpid() if pid is None else pid, annotations, False))
        return s.recv(proto.ACK.size)

    def stop(self) -> None:
        self.watcher.stop()
        self.thread.join(30)
        self.listener.close()


@pytest.fixture
def running(tmp_path: Path):
    r = Running(tmp_path)
    yield r
    r.stop()
    assert not r.thread.is_alive()


def crash_message(pid: int, tid: int, signo: int = 11) -> bytes:
    return proto.MESSAGE.pack(proto.REPORT_MAGIC, proto.VERSION, pid, tid, signo, 1, 0x10, bytes(128), bytes(184),
                              bytes(512), 0, 0, proto.TB_NONE, 0)


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(proto.ACK.size) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


@linux_only
def test_hello_is_answered_with_the_watchers_pid(running: Running) -> None:
    s = running.connect()
    magic, status, pid, _, _ = proto.parse_ack(running.hello(s))
    assert (magic, status, pid) == (proto.READY_MAGIC, 0, os.getpid())
    s.close()


@linux_only
@pytest.mark.parametrize("payload", [
    b"",                                                   # empty datagram: a close
    b"\x00" * 3,                                           # too short for anything
    b"GARBAGE" * 20,                                       # unknown magic
    proto.HELLO.pack(proto.HELLO_MAGIC, 99, 0, 0, 0, 0),   # another protocol version
    proto.HELLO.pack(proto.HELLO_MAGIC, 1, 0, 0, 50, 0),   # announces annotations it does not carry
    crash_message(0, 0)[:-1],                              # a crash one byte short
])
def test_malformed_messages_close_the_connection_only(running: Running, payload: bytes) -> None:
    s = running.connect()
    if payload:
        s.send(payload)
    else:
        s.shutdown(socket.SHUT_WR)
    assert closed(s)
    s.close()
    other = running.connect()  # the watcher still serves
    assert proto.parse_ack(running.hello(other))[0] == proto.READY_MAGIC
    other.close()


@linux_only
def test_a_hello_for_another_pid_or_a_crash_before_the_hello_is_refused(running: Running) -> None:
    s = running.connect()
    s.send(proto.pack_hello(1, b"{}", False))  # not us: SO_PEERCRED says otherwise
    assert closed(s)
    s = running.connect()
    s.send(crash_message(os.getpid(), threading.get_native_id()))
    assert closed(s)
    s = running.connect()
    s.send(proto.pack_hello(os.getpid(), b"[1, 2]", False))  # annotations must be an object
    assert closed(s)
    assert any("claims pid 1" in line for line in running.lines)
    assert any("before the hello" in line for line in running.lines)


@linux_only
def test_a_crash_the_watcher_cannot_dump_is_answered_with_a_failure(running: Running) -> None:
    s = running.connect()
    running.hello(s)
    s.send(crash_message(os.getpid(), 0x7FFFFFF0))  # no such thread
    magic, status, _, rid, reason = proto.parse_ack(s.recv(proto.ACK.size))
    assert (magic, status, rid) == (proto.ACK_MAGIC, 1, "") and "not a thread of process" in reason
    s.send(crash_message(os.getpid() + 1, threading.get_native_id()))  # a crash of another process
    assert closed(s)
    s = running.connect()
    running.hello(s)
    s.send(crash_message(os.getpid(), threading.get_native_id()))  # the watcher's own process
    magic, status, _, _, reason = proto.parse_ack(s.recv(proto.ACK.size))
    assert status == 1 and "calling process" in reason
    assert running.watcher.served == 2 and running.watcher.reports == []


@linux_only
def test_a_process_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    # an abstract address: any user can connect, the watcher must refuse
    running = Running(tmp_path, b"\0mdstream-test-" + os.urandom(8).hex().encode())
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(10)
            s.connect(running.path)
            s.send(proto.pack_hello(os.getpid(), b"{}", False))
            code = 3 if s.recv(proto.ACK.size) == b"" else 4
        except OSError:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(child, 0)
    try:
        assert os.WEXITSTATUS(status) == 3
        deadline = time.monotonic() + 10
        while not any("of uid 65534" in line for line in running.lines):
            assert time.monotonic() < deadline, running.lines
            time.sleep(0.01)
    finally:
        running.stop()


@linux_only
def test_listen_never_replaces_what_it_did_not_create(tmp_path: Path) -> None:
    from mdstream.crash.watcher import WatcherError, listen

    planted = tmp_path / "planted"
    planted.write_text("a file")
    with pytest.raises(WatcherError, match="not a socket"):
        listen(str(planted))
    assert planted.read_text() == "a file"
    link = tmp_path / "link"
    link.symlink_to(planted)
    with pytest.raises(WatcherError, match="not a socket"):
        listen(str(link))
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(stale))
    s.close()  # bound, nobody listens: stale
    fresh = listen(str(stale))
    assert oct(stale.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(WatcherError, match="already listens"):
        listen(str(stale))
    fresh.close()


# ---- pure helpers -------------------------------------------------------------------


FAULTHANDLER_TEXT = b"""\
Fatal Python error: Segmentation fault

Thread 0x00007f0000001000 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/app/worker.py", line 12 in loop
  ...

Current thread 0x00007f0000002000 [MainThread] (most recent call first):
  File "/app/main.py", line ??? in <module>

Thread 0x00007f0000003000 (most recent call first):
  <no Python frame>
"""


def test_parse_tracebacks_maps_pthread_ids_to_tids() -> None:
    threads = [{"tid": 101, "fs_base": 0x7F0000001000, "name": "worker"},
               {"tid": 100, "fs_base": 0x7F0000002000, "name": "python"}]
    parsed = parse_tracebacks(FAULTHANDLER_TEXT, threads)
    assert [t["tid"] for t in parsed] == [101, 100, None]
    worker, main, native = parsed
    assert not worker["current"] and worker["name"] == "worker"
    assert worker["frames"] == [{"file": "/usr/lib/python3.11/threading.py", "line": 320, "function": "wait"},
                                {"file": "/app/worker.py", "line": 12, "function": "loop"}]
    assert worker["notes"] == ["..."]
    assert main["current"] and main["name"] == "MainThread"
    assert main["frames"] == [{"file": "/app/main.py", "line": None, "function": "<module>"}]
    assert native["frames"] == [] and native["notes"] == ["<no Python frame>"]
    assert parse_tracebacks(b"") == []
    assert parse_tracebacks(b"\xff\xfe garbage\n") == []
    odd = parse_tracebacks(b"Thread 0x1 (most recent call first):\n  \xff\xfe garbage\n")
    assert odd[0]["notes"] == ["\\xff\\xfe garbage"] and odd[0]["thread_id"] == "0x0000000000000001"


def test_signal_names_and_addresses() -> None:
    assert crash_reason(11, 1) == "SIGSEGV / SEGV_MAPERR"
    assert crash_reason(6, -6) == "SIGABRT / SI_TKILL"
    assert crash_reason(7, 2) == "SIGBUS / BUS_ADRERR"
    assert crash_reason(8, 1) == "SIGFPE / FPE_INTDIV"
    assert crash_reason(4, 2) == "SIGILL / ILL_ILLOPN"
    assert crash_reason(5, 0x80) == "SIGTRAP / SI_KERNEL"
    assert crash_reason(31, 1) == "SIGSYS / SYS_SECCOMP"
    assert code_name(11, 999) == "999" and signal_name(200) == "signal 200"
    assert signal_name(signal.SIGRTMIN + 2) == "SIGRTMIN+2"
    # a kernel fault: si_addr; a signal a process sent: the instruction pointer
    assert fault_address(11, 1, 0x10, 0x401000) == 0x10
    assert fault_address(6, -6, 0x00000000_00001234, 0x401000) == 0x401000
    assert fault_address(11, 0, 0x1234, 0x401000) == 0x401000


def test_protocol_layouts_match_the_c_header() -> None:
    native = pytest.importorskip("mdstream._crash")
    assert (native.HELLO_SIZE, native.MESSAGE_SIZE, native.ACK_SIZE) == (proto.HELLO.size, proto.MESSAGE.size,
                                                                         proto.ACK.size)
    assert (native.HELLO_MAGIC, native.READY_MAGIC, native.REPORT_MAGIC, native.ACK_MAGIC) == (
        proto.HELLO_MAGIC, proto.READY_MAGIC, proto.REPORT_MAGIC, proto.ACK_MAGIC)
    msg = proto.parse_crash(crash_message(5, 6, 7))
    assert (msg.pid, msg.tid, msg.signo, msg.code, msg.address, msg.fpregs) == (5, 6, 7, 1, 0x10, None)
    with pytest.raises(proto.ProtocolError, match="signal"):
        proto.parse_crash(crash_message(5, 6, 0))
    ack = proto.pack_ack(proto.ACK_MAGIC, 0, 9, "x" * 100, "line\nbreak " * 50)
    magic, status, pid, rid, reason = proto.parse_ack(ack)
    assert len(ack) == proto.ACK.size and len(rid) == 63 and "\n" not in reason
    assert struct.unpack_from("<I", ack)[0] == proto.ACK_MAGIC
