"""The wire protocol between the in-process crash handler and the watcher
(``mdstream/include/mdstream/crash.h``), for the Python side of both.

Every message is one SOCK_SEQPACKET datagram, little-endian:

- hello (process -> watcher): ``magic "MDCH", version, pid, flags,
  annotations_size, reserved`` then the annotations as UTF-8 JSON; with
  ``flags & 1`` a memfd for the Python tracebacks rides along (SCM_RIGHTS).
- ready (watcher -> process): an ack with magic ``"MDRY"``.
- crash (process -> watcher, from the signal handler): ``magic "MDCR",
  version, pid, tid, signo, code, address (si_addr), siginfo[128],
  gregs[23] (uc_mcontext.gregs), fpregs[512] (FXSAVE), flags,
  traceback_bytes, traceback_state, reserved`` (872 bytes).
- ack (watcher -> process): ``magic "MDAK", version, status (0 written),
  watcher_pid, report_id[64], reason[192]`` (272 bytes).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = [
    "HELLO", "MESSAGE", "ACK", "Hello", "CrashMessage", "ProtocolError", "parse_hello", "parse_crash",
    "pack_ack", "pack_hello", "peer_credentials", "HELLO_MAGIC", "READY_MAGIC", "REPORT_MAGIC", "ACK_MAGIC",
    "VERSION", "TB_NONE", "TB_COMPLETE", "TB_FAILED", "TB_UNAVAILABLE", "MAX_ANNOTATIONS", "MAX_TRACEBACK_BYTES",
]

VERSION = 1
HELLO_MAGIC = 0x4843444D
READY_MAGIC = 0x5952444D
REPORT_MAGIC = 0x5243444D
ACK_MAGIC = 0x4B41444D
HELLO_TRACEBACKS = 1
FLAG_FPREGS = 1
FLAG_LATE_HELLO = 2
TB_NONE, TB_COMPLETE, TB_FAILED, TB_UNAVAILABLE = 0, 1, 2, 3
MAX_ANNOTATIONS = 64 << 10
#: faulthandler prints at most 100 threads of 100 frames; far below this
MAX_TRACEBACK_BYTES = 4 << 20

HELLO = struct.Struct("<6I")
MESSAGE = struct.Struct("<4I2iQ128s184s512s4I")
ACK = struct.Struct("<4I64s192s")
UCRED = struct.Struct("<3i")
assert HELLO.size == 24 and MESSAGE.size == 872 and ACK.size == 272


class ProtocolError(ValueError):
    """A message that does not follow mdstream/crash.h."""


@dataclass(frozen=True)
class Hello:
    pid: int
    flags: int
    annotations: bytes


@dataclass(frozen=True)
class CrashMessage:
    pid: int
    tid: int
    signo: int
    code: int
    address: int
    siginfo: bytes
    gregs: bytes
    fpregs: bytes | None
    flags: int
    traceback_bytes: int
    traceback_state: int

    @property
    def instruction_pointer(self) -> int:
        return int(struct.unpack_from("<Q", self.gregs, 16 * 8)[0])  # REG_RIP


def pack_hello(pid: int, annotations: bytes, with_memfd: bool) -> bytes:
    if len(annotations) > MAX_ANNOTATIONS:
        raise ValueError(f"annotations take {len(annotations)} bytes; at most {MAX_ANNOTATIONS}")
    return HELLO.pack(HELLO_MAGIC, VERSION, pid, HELLO_TRACEBACKS if with_memfd else 0, len(annotations), 0) + \
        annotations


def parse_hello(data: bytes) -> Hello:
    if len(data) < HELLO.size:
        raise ProtocolError(f"a hello is at least {HELLO.size} bytes, not {len(data)}")
    magic, version, pid, flags, size, _ = HELLO.unpack_from(data)
    if magic != HELLO_MAGIC:
        raise ProtocolError(f"not a hello (magic 0x{magic:08X})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}; this watcher speaks {VERSION}")
    if size > MAX_ANNOTATIONS or HELLO.size + size != len(data):
        raise ProtocolError(f"the hello announces {size} bytes of annotations but carries {len(data) - HELLO.size}")
    return Hello(pid, flags, bytes(data[HELLO.size:]))


def parse_crash(data: bytes) -> CrashMessage:
    if len(data) != MESSAGE.size:
        raise ProtocolError(f"a crash message is {MESSAGE.size} bytes, not {len(data)}")
    (magic, version, pid, tid, signo, code, address, siginfo, gregs, fpregs, flags, tb_bytes, tb_state,
     _) = MESSAGE.unpack(data)
    if magic != REPORT_MAGIC:
        raise ProtocolError(f"not a crash message (magic 0x{magic:08X})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}; this watcher speaks {VERSION}")
    if not 0 < signo < 65:
        raise ProtocolError(f"bad signal number {signo}")
    if tb_state not in (TB_NONE, TB_COMPLETE, TB_FAILED, TB_UNAVAILABLE):
        raise ProtocolError(f"bad traceback state {tb_state}")
    return CrashMessage(pid, tid, signo, code, address, siginfo, gregs,
                        fpregs if flags & FLAG_FPREGS else None, flags, tb_bytes, tb_state)


def pack_ack(magic: int, status: int, watcher_pid: int, report_id: str = "", reason: str = "") -> bytes:
    rid = report_id.encode("utf-8", "replace")[:63]
    text = " ".join(reason.split()).encode("utf-8", "replace")[:191]
    return ACK.pack(magic, VERSION, status, watcher_pid, rid, text)


def parse_ack(data: bytes) -> tuple[int, int, int, str, str]:
    """``(magic, status, watcher_pid, report_id, reason)``."""
    if len(data) != ACK.size:
        raise ProtocolError(f"an answer is {ACK.size} bytes, not {len(data)}")
    magic, version, status, pid, rid, reason = ACK.unpack(data)
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}")
    return magic, status, pid, rid.split(b"\0", 1)[0].decode("utf-8", "replace"), \
        reason.split(b"\0", 1)[0].decode("utf-8", "replace")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end (SO_PEERCRED)."""
    pid, uid, gid = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
    return pid, uid, gid


def socket_address(text: str) -> str | bytes:
    """A ``--socket`` argument: ``@name`` is an abstract address, anything else a path."""
    if text.startswith("@"):
        return b"\0" + text[1:].encode()
    return text
