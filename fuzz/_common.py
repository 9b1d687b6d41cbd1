"""Helpers shared by the fuzz harnesses (no atheris needed: the corpora replay
through the same functions in tests/test_fuzz_smoke.py).

Each harness module defines ``test_one_input(data: bytes) -> None``, which
must return normally for every input; an exception that escapes it (or a
sanitizer report, or a crash) is a finding.  ``main()`` runs it under
atheris/libFuzzer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
import sys
import tempfile

FUZZ_DIR = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(FUZZ_DIR, "corpus")


class Bytes:
    """A deterministic consumer of fuzz bytes (a tiny FuzzedDataProvider that
    needs no atheris, so replays work anywhere).  Past the end it yields zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, nbytes: int) -> int:
        raw = self.take(nbytes)
        return int.from_bytes(raw + b"\0" * (nbytes - len(raw)), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def below(self, n: int) -> int:
        if n <= 1:
            return 0
        width = 1 if n <= 0x100 else 2 if n <= 0x10000 else 4 if n <= 1 << 32 else 8
        return self.uint(width) % n

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def flag(self) -> bool:
        return bool(self.u8() & 1)


# --------------------------------------------------------------------------
# Guard pages: make a read past the end of a ring mapping fault.
# --------------------------------------------------------------------------
#
# AddressSanitizer puts no redzones around mmap()ed memory, so a read just past
# a ring's data area would silently read the neighbouring mapping.  Linux
# places a new mapping directly below the lowest free gap it finds (top-down),
# so mapping one PROT_NONE page first and then the ring usually puts the ring
# right below that page: an out-of-bounds read then faults and the fuzzer
# reports a crash.  ``GuardedMapping.check(address, size)`` tells whether it
# worked for one mapping (the harnesses count how often it did).

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value


_PLUGS: list[int] = []  # small mappings that fill holes the guard trick must not use (kept)


class GuardPage:
    """A PROT_NONE page placed so that the next mapping of ``size`` bytes most
    likely ends right below it: reserve ``size`` + one page, give back the
    lower ``size`` bytes, and check with a probe mapping that the next mmap of
    that size takes exactly that hole (a higher hole that fits is plugged
    with a mapping kept for the life of the process, and the trick retried)."""

    def __init__(self, size: int = 0) -> None:
        size = max(_PAGE, (size + _PAGE - 1) // _PAGE * _PAGE)
        self.address = None
        anon = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        for _ in range(8):
            addr = _libc.mmap(None, size + _PAGE, 0, anon, -1, 0)  # PROT_NONE
            if addr in (None, _MAP_FAILED):
                return
            _libc.munmap(addr, size)
            probe = _libc.mmap(None, size, 0, anon, -1, 0)
            if probe == addr:
                _libc.munmap(probe, size)
                self.address = addr + size
                return
            _libc.munmap(addr + size, _PAGE)
            if probe not in (None, _MAP_FAILED):
                _PLUGS.append(probe)

    def guards(self, start: int, size: int) -> bool:
        """True if [start, start+size) ends exactly at this guard page."""
        return self.address is not None and start + size == self.address

    def release(self) -> None:
        if self.address is not None:
            _libc.munmap(self.address, _PAGE)
            self.address = None


class Stats:
    """Counters a harness prints at exit (how often a path was reached)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, int] = {}

    def hit(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def report(self) -> None:
        if self.counts:
            items = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            print(f"[{self.name}] {items}", file=sys.stderr, flush=True)


def private_dir(prefix: str) -> str:
    """A 0700 scratch directory (mkdtemp), on tmpfs when /dev/shm is writable,
    removed at exit -- except under libFuzzer, which exits without running
    Python's atexit: scripts/fuzz.sh points MDS_FUZZ_SCRATCH at a directory it
    removes itself."""
    import atexit
    import shutil

    base = os.environ.get("MDS_FUZZ_SCRATCH") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    atexit.register(shutil.rmtree, path, True)
    return path


def write_private(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600, never through a symlink."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Ring header layout (docs/ring-format.md)
# --------------------------------------------------------------------------

RING_HEADER = 4096
RING_MAGIC = b"MDSRING1"
DATA, PAD, BEGIN, END = 0x52444D01, 0x52444D02, 0x52444D03, 0x52444D04

# name: (offset, struct format)
FIELDS = {
    "magic": (0, "8s"),
    "version": (8, "<I"),
    "header_size": (12, "<I"),
    "capacity": (16, "<Q"),
    "data_offset": (24, "<Q"),
    "record_align": (32, "<I"),
    "record_header": (36, "<I"),
    "max_payload": (40, "<Q"),
    "creator_pid": (48, "<I"),
    "created_ns": (56, "<Q"),
    "created_unix_ns": (64, "<Q"),
    "write_pos": (128, "<Q"),
    "producer_waiting": (136, "<I"),
    "data_event": (140, "<I"),
    "producer_token": (144, "<Q"),
    "producer_pid": (152, "<I"),
    "outcome": (156, "<I"),
    "producer_heartbeat_ns": (160, "<Q"),
    "records_written": (168, "<Q"),
    "dump_id": (176, "<Q"),
    "read_pos": (256, "<Q"),
    "consumer_waiting": (264, "<I"),
    "space_event": (268, "<I"),
    "consumer_token": (272, "<Q"),
    "consumer_pid": (280, "<I"),
    "consumer_heartbeat_ns": (288, "<Q"),
    "output_dump_id": (296, "<Q"),
    "output_device": (304, "<Q"),
    "output_inode": (312, "<Q"),
    "state": (384, "<I"),
    "abort_code": (388, "<i"),
    "flags": (392, "<I"),
    "abort_reason": (400, "256s"),
}
FIELD_NAMES = sorted(FIELDS)


def max_payload_for(capacity: int) -> int:
    limit = capacity // 2 - 16
    return min(limit, 0xFFFFFFF0) & ~15


def ring_header(capacity: int, *, write_pos: int = 0, read_pos: int = 0, state: int = 0) -> bytearray:
    """A valid header page for a ring of ``capacity`` bytes."""
    h = bytearray(RING_HEADER)
    h[0:8] = RING_MAGIC
    struct.pack_into("<IIQQIIQI", h, 8, 1, RING_HEADER, capacity, RING_HEADER, 16, 16, max_payload_for(capacity),
                     os.getpid())
    struct.pack_into("<Q", h, 128, write_pos)
    struct.pack_into("<Q", h, 256, read_pos)
    struct.pack_into("<I", h, 384, state)
    return h


def set_field(buf, name: str, value) -> None:
    off, fmt = FIELDS[name]
    if fmt.endswith("s"):
        size = struct.calcsize(fmt)
        raw = bytes(value)[:size]
        buf[off:off + size] = raw + b"\0" * (size - len(raw))
        return
    size = struct.calcsize(fmt)
    if fmt == "<i":
        value = value & 0xFFFFFFFF
        fmt = "<I"
    buf[off:off + size] = struct.pack(fmt, value & ((1 << (8 * size)) - 1))


def record(offset: int, payload: bytes, kind: int = DATA, length: int | None = None) -> bytes:
    """A record as the ring stores it (header + payload padded to 16)."""
    n = len(payload) if length is None else length
    body = payload + b"\0" * (-len(payload) % 16)
    return struct.pack("<QII", offset & (2**64 - 1), n & 0xFFFFFFFF, kind & 0xFFFFFFFF) + body



def sink_consume(sink, batch, stats: Stats) -> None:
    """``sink.consume(batch)``; ``MemoryError`` is an expected answer of a
    ``MemorySink`` asked to hold an absurd offset.  (This once also stepped
    around span.c's NULL memcpy, fixed since: fuzz/known_bugs.py.)"""
    try:
        sink.consume(batch)
        stats.hit("sink")
    except MemoryError:
        stats.hit("sink-memory-error")


def corpus_files(target: str) -> list[str]:
    d = os.path.join(CORPUS_DIR, target)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))


# Words of the C core's error messages (ring.c, platform_posix.c, span.c): the
# harnesses of native code get coverage feedback from which check fired,
# since the C core itself is not coverage-instrumented (gcc).
MESSAGE_KEYS = (
    "bad magic", "format version", "header size", "record alignment", "absurd capacity", "truncated",
    "max payload", "inconsistent positions", "unknown state", "changed to an inconsistent", "not a regular file",
    "belongs to uid", "accessible by other", "symlink", "cannot read the header", "no ring", "already has a",
    "unknown record kind", "past the published end", "padding record", "overflows", "write position",
    "read position", "changed after it was checked", "changed while it was indexed", "beyond what a file",
    "aborted", "finished", "gone", "closed the ring", "timed out", "no data within", "no space", "deadline",
    "released", "closed", "cannot grow", "too large",
)


def classify(exc: BaseException) -> int:
    """Which check raised ``exc``: one branch per message word (coverage feedback)."""
    text = str(exc)
    hit = 0
    for i, key in enumerate(MESSAGE_KEYS):
        if key in text:
            hit = i + 1
            break
    name = type(exc).__name__
    if name == "RingCorruptError":
        hit += 1000
    elif name == "RingFormatError":
        hit += 2000
    elif name == "RingAbortedError":
        hit += 3000
    elif name == "RingTimeoutError":
        hit += 4000
    elif name in ("ProducerGoneError", "ConsumerGoneError"):
        hit += 5000
    elif name == "RingBusyError":
        hit += 6000
    elif name == "RingFinishedError":
        hit += 7000
    return hit


def _instrument_module(atheris, module) -> None:
    import inspect

    for _name, obj in list(vars(module).items()):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            atheris.instrument_func(obj)
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for attr in vars(obj).values():
                if inspect.isfunction(attr):
                    atheris.instrument_func(attr)


def run_main(test_one_input, stats: Stats | None = None, instrument=()) -> None:
    """Run a harness under atheris (libFuzzer flags in sys.argv).  ``instrument``:
    modules whose functions get coverage instrumentation (the harness itself
    for native targets: its branches and :func:`classify` are the feedback)."""
    import atexit

    import atheris

    for module in instrument:
        _instrument_module(atheris, module)
    if instrument:
        _instrument_module(atheris, sys.modules[__name__])
    target = test_one_input
    if stats is not None:
        atexit.register(stats.report)
        count = [0]

        def target(data: bytes) -> None:
            count[0] += 1
            if count[0] & 0x1FFFF == 0:  # libFuzzer exits without running Python's atexit
                stats.report()
            test_one_input(data)

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
