"""The Linux writer's crash context: the Exception stream and the crashing
thread's registers at the fault, the attached (supervisor) snapshot, user
streams, and the stack of a thread whose stack pointer left its stack.

The test process itself plays the supervisor: it seizes and interrupts every
thread of the target with ptrace (through ctypes) and then asks for an
attached snapshot, which must run on this very thread and leave every thread
traced and stopped.  The dumps are read back with the PyPI ``minidump`` parser
and rust-minidump's ``minidump-stackwalk``.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from test_linux_writer import (  # noqa: F401  (fixtures)
    Target,
    make_target,
    parse,
    proc_state,
    rust_minidump,
    target,
    target_binary,
)

from mdstream import linux
from mdstream.minidump import read_info

pytestmark = pytest.mark.skipif(not linux.supported(), reason="the Linux writer needs Linux x86-64")

PTRACE_GETREGS = 12
PTRACE_GETFPREGS = 14
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

# user_regs_struct word indices
R_RBP, R_RIP, R_RSP = 4, 16, 19
# the 23 mcontext gregs -> user_regs_struct word (REG_R8 .. REG_CSGSFS)
MCONTEXT_TO_USER = [9, 8, 7, 6, 3, 2, 1, 0, 14, 13, 4, 5, 12, 10, 11, 19, 16, 18, 17, -1, -1, -1, -1]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(request: int, tid: int, addr: int = 0, data: int | ctypes.Array | None = 0) -> int:
    if isinstance(data, ctypes.Array):
        ptr = ctypes.cast(data, ctypes.c_void_p)
    else:
        ptr = ctypes.c_void_p(data)
    rc = _libc.ptrace(request, tid, ctypes.c_void_p(addr), ptr)
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request}, {tid}): {os.strerror(err)}")
    return rc


class Held:
    """Every thread of a process seized and interrupted by this thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        for tid in self.tids:
            ptrace(PTRACE_SEIZE, tid)
            ptrace(PTRACE_INTERRUPT, tid)
        for tid in self.tids:
            os.waitpid(tid, WALL)

    def regs(self, tid: int) -> bytes:
        buf = ctypes.create_string_buffer(216)
        ptrace(PTRACE_GETREGS, tid, 0, buf)
        return buf.raw

    def fpregs(self, tid: int) -> bytes:
        buf = ctypes.create_string_buffer(512)
        ptrace(PTRACE_GETFPREGS, tid, 0, buf)
        return buf.raw

    def release(self) -> None:
        for tid in self.tids:
            try:
                ptrace(PTRACE_DETACH, tid)
            except OSError:
                pass


def words(regs: bytes) -> list[int]:
    return list(struct.unpack("<27Q", regs))


def thread_contexts(path: Path) -> dict[int, bytes]:
    """tid -> the 1232-byte CONTEXT the ThreadList gives it."""
    data = path.read_bytes()
    stream = next(s for s in read_info(path).streams if s.type == 3)
    count = struct.unpack_from("<I", data, stream.rva)[0]
    out = {}
    for i in range(count):
        entry = stream.rva + 4 + 48 * i
        tid = struct.unpack_from("<I", data, entry)[0]
        size, rva = struct.unpack_from("<II", data, entry + 40)
        out[tid] = data[rva:rva + size]
    return out


def exception_stream(path: Path) -> tuple[int, int, int, int, bytes]:
    data = path.read_bytes()
    stream = next(s for s in read_info(path).streams if s.type == 6)
    raw = data[stream.rva:stream.rva + stream.data_size]
    tid, = struct.unpack_from("<I", raw, 0)
    code, flags = struct.unpack_from("<II", raw, 8)
    address, = struct.unpack_from("<Q", raw, 24)
    size, rva = struct.unpack_from("<II", raw, 160)
    return tid, code, flags, address, data[rva:rva + size]


def ctx_rip_rsp(context: bytes) -> tuple[int, int]:
    return struct.unpack_from("<Q", context, 0xF8)[0], struct.unpack_from("<Q", context, 0x98)[0]


@pytest.fixture
def held(target: Target):
    h = Held(target.pid)
    yield h
    h.release()


def test_attached_snapshot_uses_the_fault_context_and_keeps_the_threads_held(
        target: Target, held: Held, tmp_path: Path, rust_minidump) -> None:
    stackwalk, dump_syms = rust_minidump
    worker = max(held.tids)
    main_regs = held.regs(target.pid)
    # the crash context of a worker is the main thread's registers: the dump
    # must show them (and the main thread's frames) for the worker
    crash = linux.CrashContext(11, 1, 0x10, worker, regs=main_regs, fpregs=held.fpregs(target.pid))
    seen = []
    out = tmp_path / "c.dmp"
    result = linux.write_dump(target.pid, out, crash=crash, attached=True, on_snapshot=seen.append)
    assert result.ok and result.extra["threads"] == target.threads
    # still traced by this process and stopped: the caller decides when they run
    for tid in held.tids:
        status = Path(f"/proc/{target.pid}/task/{tid}/status").read_text()
        assert f"TracerPid:\t{os.getpid()}\n" in status
        assert "State:\tt" in status
    (info,) = [t for t in seen[0].threads if t["tid"] == worker]
    assert info["crashed"] and info["rip"] == words(main_regs)[R_RIP]

    contexts = thread_contexts(out)
    rip, rsp = words(main_regs)[R_RIP], words(main_regs)[R_RSP]
    assert ctx_rip_rsp(contexts[worker]) == (rip, rsp)
    assert ctx_rip_rsp(contexts[target.pid]) == (rip, rsp)  # the main thread itself, unchanged
    tid, code, flags, address, context = exception_stream(out)
    assert (tid, code, flags, address) == (worker, 11, 1, 0x10)
    assert context == contexts[worker]

    syms = tmp_path / "syms"
    subprocess.run([str(dump_syms), "-s", str(syms), str(target.binary)], check=True, capture_output=True)
    proc = subprocess.run([str(stackwalk), "--json", "--symbols-path", str(syms), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["crash_info"]["type"] == "SIGSEGV / SEGV_MAPERR"
    assert int(report["crash_info"]["address"], 16) == 0x10
    crashed = report["threads"][report["crash_info"]["crashing_thread"]]
    assert crashed["thread_id"] == worker
    frames = [f.get("function") for f in crashed["frames"]]
    assert frames[:3] == ["raw_pause", "main_park", "main"], frames  # walked from the given context's stack


def test_mcontext_context_keeps_ptrace_bases(target: Target, held: Held, tmp_path: Path) -> None:
    worker = max(held.tids)
    regs = words(held.regs(worker))
    fake = list(regs)
    fake[R_RIP] += 1  # distinguishable from what ptrace sees
    gregs = [fake[w] if w >= 0 else 0 for w in MCONTEXT_TO_USER]
    gregs[18] = fake[17] | (0x2B << 48)  # CSGSFS: cs | ... | ss << 48 (only cs is taken)
    crash = linux.CrashContext(7, 2, 0x1234, worker, mcontext=struct.pack("<23Q", *gregs))
    out = tmp_path / "m.dmp"
    linux.write_dump(target.pid, out, crash=crash, attached=True)
    context = thread_contexts(out)[worker]
    assert ctx_rip_rsp(context) == (fake[R_RIP], fake[R_RSP])
    assert struct.unpack_from("<H", context, 0x38)[0] == fake[17] & 0xFFFF  # SegCs
    assert struct.unpack_from("<Q", context, 0xA0)[0] == fake[R_RBP]  # Rbp


def test_stack_of_a_thread_whose_sp_left_its_stack(target: Target, held: Held, tmp_path: Path) -> None:
    """A stack overflow: SP in the guard page below the stack.  The frames
    above are captured from the start of the stack's mapping."""
    worker = max(held.tids)
    regs = words(held.regs(worker))
    maps = Path(f"/proc/{target.pid}/maps").read_text().splitlines()
    spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) + (line.split()[1],) for line in maps]
    (stack_start, stack_end, perms), = [m for m in spans if m[0] <= regs[R_RSP] < m[1]]
    below = [m for m in spans if m[1] == stack_start]
    assert below and below[0][2].startswith("---"), "glibc puts a guard mapping below thread stacks"
    fake = list(regs)
    fake[R_RSP] = stack_start - 64
    crash = linux.CrashContext(11, 2, stack_start - 72, worker, regs=struct.pack("<27Q", *fake))
    out = tmp_path / "o.dmp"
    linux.write_dump(target.pid, out, crash=crash, attached=True)
    md = parse(out)
    (thread,) = [t for t in md.threads.threads if t.ThreadId == worker]
    assert thread.Stack.StartOfMemoryRange == stack_start
    assert thread.Stack.DataSize > 0


def test_crashing_thread_that_already_exited_is_still_written(target: Target, held: Held, tmp_path: Path) -> None:
    """At a supervisor's exit stops the crashing thread may be gone already:
    the dump still carries it, with its fault context."""
    regs = held.regs(max(held.tids))
    ghost = 0x7FFF0000
    crash = linux.CrashContext(11, 1, 0, ghost, regs=regs)
    out = tmp_path / "g.dmp"
    linux.write_dump(target.pid, out, crash=crash, attached=True)
    contexts = thread_contexts(out)
    assert ghost in contexts and ctx_rip_rsp(contexts[ghost]) == (words(regs)[R_RIP], words(regs)[R_RSP])
    assert exception_stream(out)[0] == ghost


def test_attached_without_holding_the_threads_is_refused(target: Target) -> None:
    with pytest.raises(ValueError, match="held in a ptrace-stop"):
        linux.write_dump(target.pid, attached=True)
    assert proc_state(target.pid) in "SR"


def test_user_streams(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "u.dmp"
    linux.write_dump(target.pid, out, user_streams=[(0x4D640001, b"Thread 0x1 (most recent call first):\n"),
                                                    (0x4D640002, b"")])
    streams = {s.type: s for s in read_info(out).streams}
    data = out.read_bytes()
    s = streams[0x4D640001]
    assert data[s.rva:s.rva + s.data_size] == b"Thread 0x1 (most recent call first):\n"
    assert streams[0x4D640002].data_size == 0
    with pytest.raises(ValueError, match="user range"):
        linux.write_dump(target.pid, user_streams=[(3, b"x")])
    with pytest.raises(ValueError, match="already in the dump"):
        linux.write_dump(target.pid, user_streams=[(0x47670009, b"x")])
    with pytest.raises(ValueError, match="at most 8"):
        linux.write_dump(target.pid, user_streams=[(0x10000 + i, b"") for i in range(9)])


def test_crash_context_validation() -> None:
    with pytest.raises(ValueError, match="signal"):
        linux.CrashContext(0)
    with pytest.raises(ValueError, match="216 bytes"):
        linux.CrashContext(11, tid=1, regs=b"x")
    with pytest.raises(ValueError, match="not both"):
        linux.CrashContext(11, tid=1, regs=bytes(216), mcontext=bytes(184))
    with pytest.raises(ValueError, match="tid"):
        linux.CrashContext(11, regs=bytes(216))
    assert linux.CrashContext(6, -6, 0, 5).snapshot_context() is None
