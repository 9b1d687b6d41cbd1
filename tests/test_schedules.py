"""Write plans and schedules (mdstream.schedules): the oracle and every schedule over real dumps."""

from __future__ import annotations

import importlib
import importlib.util
import struct
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NO_FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
DUMPS = FIXTURES / "dumps"
FIXTURE_NAMES = ["dbghelp-win10-x64_tiny-exe-fastfail.dmp", "crashpad-linux-x64_linux_inline.dmp",
                 "breakpad-linux-x64_linux-mini.dmp"]


def _pure(name: str) -> types.ModuleType:
    """Import a pure-Python mdstream module even when the compiled extension is not built."""
    try:
        return importlib.import_module(f"mdstream.{name}")
    except ImportError:
        if "mdstream" in sys.modules and hasattr(sys.modules["mdstream"], "__file__"):
            raise
        pkg = types.ModuleType("mdstream")
        pkg.__path__ = [str(ROOT / "mdstream")]
        sys.modules["mdstream"] = pkg
        return importlib.import_module(f"mdstream.{name}")


def _helpers() -> types.ModuleType:
    """The synthetic-minidump builder lives in test_minidump_info.py."""
    name = "_mdstream_info_helpers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_minidump_info.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


schedules = _pure("schedules")
plan_module = _pure("plan")
trace = _pure("trace")
minidump = _pure("minidump")
helpers = _helpers()
WritePlan = schedules.WritePlan
ScheduleError = schedules.ScheduleError
plan_for = schedules.plan_for
backward_writes = schedules.backward_writes


def fixture(name: str) -> Path:
    path = DUMPS / name
    if not path.exists():
        pytest.skip(NO_FIXTURES)
    return path


def make_plan(buffer: bytes | np.ndarray, writes: list[tuple[int, int, int]], name: str = "t") -> Any:
    offs = np.array([w[0] for w in writes], dtype=np.uint64)
    lens = np.array([w[1] for w in writes], dtype=np.uint32)
    srcs = np.array([w[2] for w in writes], dtype=np.uint64)
    size = int((offs + lens.astype(np.uint64)).max()) if writes else 0
    return WritePlan(np.frombuffer(bytes(buffer), np.uint8).copy(), offs, lens, srcs, size, name)


def naive_apply(plan: Any) -> bytes:
    """The obvious oracle: a loop of slice assignments."""
    out = bytearray(plan.size)
    buf = plan.buffer.tobytes()
    for o, n, s in zip(plan.offsets.tolist(), plan.lengths.tolist(), plan.sources.tolist()):
        out[o:o + n] = buf[s:s + n]
    return bytes(out)


# --------------------------------------------------------------------------
# WritePlan
# --------------------------------------------------------------------------


def test_plan_basics() -> None:
    plan = make_plan(b"abcdefgh", [(0, 4, 0), (10, 2, 6), (2, 0, 8)])
    assert plan.count == 3
    assert plan.total_bytes == 6
    assert plan.size == 12
    plan.validate()
    assert plan.apply().tobytes() == b"abcd" + bytes(6) + b"gh"
    assert "count=3" in repr(plan)


def test_empty_plan() -> None:
    plan = make_plan(b"", [])
    plan.validate()
    assert plan.count == 0 and plan.total_bytes == 0
    assert plan.apply().size == 0


def test_last_write_wins() -> None:
    plan = make_plan(b"AAAABBBBCC", [(0, 4, 0), (2, 4, 4), (3, 2, 8), (100, 0, 0)])
    assert plan.apply().tobytes() == b"AABCCB" + bytes(94)


@pytest.mark.parametrize("mutate,match", [
    (lambda p: setattr(p, "offsets", p.offsets.astype(np.int64)), "offsets must have dtype uint64"),
    (lambda p: setattr(p, "lengths", p.lengths.astype(np.uint64)), "lengths must have dtype uint32"),
    (lambda p: setattr(p, "buffer", p.buffer.astype(np.int8)), "buffer must have dtype uint8"),
    (lambda p: setattr(p, "sources", p.sources[:1]), "differ in length"),
    (lambda p: setattr(p, "sources", np.array([0, 7], np.uint64)), r"write 1: source range \[7, 9\) is past the end"),
    (lambda p: setattr(p, "sources", np.array([0, 2**64 - 1], np.uint64)), "write 1: source range"),
    (lambda p: setattr(p, "size", 3), "size is 3 but the writes end at 7"),
    (lambda p: setattr(p, "size", -1), "non-negative"),
    (lambda p: setattr(p, "offsets", np.array([0, 2**63], np.uint64)), "does not fit a file offset"),
    (lambda p: setattr(p, "offsets", np.zeros((2, 2), np.uint64)[:, 0]), "C-contiguous"),
    (lambda p: setattr(p, "lengths", [1, 2]), "must be a numpy array"),
])
def test_validate(mutate: Any, match: str) -> None:
    plan = make_plan(b"abcdefgh", [(0, 4, 0), (5, 2, 6)])
    plan.validate()
    mutate(plan)
    with pytest.raises(ValueError, match=match):
        plan.validate()
    with pytest.raises(ValueError):
        plan.apply()


writes_strategy = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(0, 200)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(writes_strategy)
def test_apply_equals_naive_loop(writes: list[tuple[int, int, int]]) -> None:
    buffer = bytes(range(256)) * 1
    plan = make_plan(buffer, [(o, n, min(s, 256 - n)) for o, n, s in writes])
    assert plan.apply().tobytes() == naive_apply(plan)


def test_apply_windows_and_big_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overlapping writes across several windows, and large writes on the slice path."""
    monkeypatch.setattr(plan_module, "_BATCH_BYTES", 1000)
    rng = np.random.default_rng(2)
    buffer = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    writes = [(int(rng.integers(0, 40_000)), int(rng.integers(0, 9000)), int(rng.integers(0, 40_000)))
              for _ in range(300)]
    writes = [(o, min(n, 50_000 - s), s) for o, n, s in writes]
    plan = make_plan(buffer, writes)
    assert plan.apply().tobytes() == naive_apply(plan)
    disjoint = make_plan(buffer, [(k * 6000 + 7, 5000 + k, k) for k in range(8)] + [(100_000, 3, 0)])
    assert disjoint.apply().tobytes() == naive_apply(disjoint)


def test_backward_writes() -> None:
    plan = make_plan(bytes(64), [(0, 8, 0), (8, 8, 0), (4, 4, 0), (16, 4, 0), (12, 2, 0), (14, 2, 0)])
    # below the high-water mark: (4,4), (12,2), (14,2); moved back from the previous end: (4,4), (12,2)
    assert backward_writes(plan) == (3, 2)


# --------------------------------------------------------------------------
# plan_for over real dumps: the oracle reproduces the file byte for byte
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("schedule", ["sequential", "writer", "shuffled"])
def test_fixture_schedules_reproduce_the_file(name: str, schedule: str) -> None:
    path = fixture(name)
    source = np.fromfile(path, np.uint8)
    plan = plan_for(path, schedule)
    plan.validate()
    assert plan.size == source.size
    assert np.array_equal(plan.apply(), source)
    assert plan.apply().tobytes() == naive_apply(plan)
    assert name in plan.name and schedule in plan.name


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("schedule,chunk", [("sequential", 1), ("sequential", 4096), ("sequential", 10**9),
                                            ("writer", 64), ("writer", 4096), ("shuffled", 100),
                                            ("shuffled", 65536)])
def test_fixture_chunk_sizes(name: str, schedule: str, chunk: int) -> None:
    path = fixture(name)
    plan = plan_for(path, schedule, chunk=chunk, seed=3)
    assert np.array_equal(plan.apply(), np.fromfile(path, np.uint8))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_writer_writes_backwards(name: str) -> None:
    """Like Wine's measured trace: about half the writes patch bytes below the end written so far."""
    path = fixture(name)
    plan = plan_for(path, "writer")
    below, seeks = backward_writes(plan)
    assert 0.35 <= below / plan.count <= 0.65, (below, plan.count)
    assert seeks >= 5
    lengths = plan.lengths
    assert np.count_nonzero(lengths <= 16) / plan.count > 0.75  # mostly small structure fields
    # Memory in 1 KiB pieces, contexts (1232 bytes) whole; only text streams are longer (written whole).
    text = {(r.start, r.size) for r in minidump.iter_regions(path) if r.kind == "stream" and r.piece == "whole"}
    long = {(int(o), int(n)) for o, n in zip(plan.offsets, plan.lengths) if n > 1232}
    assert long <= text


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_writer_header_placeholder_then_rewrite(name: str) -> None:
    path = fixture(name)
    raw = path.read_bytes()
    plan = plan_for(path, "writer")
    buf = plan.buffer
    # First write: the 32-byte header with NumberOfStreams and StreamDirectoryRva still zero.
    assert (int(plan.offsets[0]), int(plan.lengths[0])) == (0, 32)
    first = buf[int(plan.sources[0]):int(plan.sources[0]) + 32].tobytes()
    assert first[:8] == raw[:8] and first[8:16] == bytes(8) and first[16:] == raw[16:32]
    # Last writes: the header in 4-8-byte pieces, then the directory entries.
    info = minidump.read_info(path)
    n_dir = 2 * info.number_of_streams
    tail = list(zip(plan.offsets[-(5 + n_dir):].tolist(), plan.lengths[-(5 + n_dir):].tolist()))
    assert tail[:5] == [(0, 8), (8, 8), (16, 4), (20, 4), (24, 8)]
    d = info.stream_directory_rva
    assert tail[5:] == [x for k in range(info.number_of_streams) for x in ((d + 12 * k, 4), (d + 12 * k + 4, 8))]
    # Nothing else touches the header or directory.
    body = plan.offsets[1:-(5 + n_dir)].astype(np.int64)
    body_end = body + plan.lengths[1:-(5 + n_dir)].astype(np.int64)
    in_header = body < 32
    in_directory = (body < d + 12 * info.number_of_streams) & (body_end > d)
    assert not np.any(in_header | in_directory)


def test_writer_entries_after_their_data() -> None:
    """A list entry is written once the data it points at has been written (reserve, fill, patch)."""
    path = fixture("crashpad-linux-x64_linux_inline.dmp")
    plan = plan_for(path, "writer")
    regions = list(minidump.iter_regions(path))
    offs = plan.offsets.astype(np.int64)
    ends = offs + plan.lengths.astype(np.int64)
    checked = 0
    for r in regions:
        if r.kind != "entry" or not r.refs:
            continue
        first_entry_write = int(np.flatnonzero((offs >= r.start) & (offs < r.end))[0])
        for a, b in r.refs:
            if a > r.start:
                last_data_write = int(np.flatnonzero((offs < b) & (ends > a))[-1])
                assert last_data_write < first_entry_write, r.label
                checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_shuffled_writes_garbage_first(name: str) -> None:
    path = fixture(name)
    raw = np.fromfile(path, np.uint8)
    chunk = 512
    plan = plan_for(path, "shuffled", chunk=chunk, seed=7)
    offs = plan.offsets.tolist()
    nchunks = -(-raw.size // chunk)
    assert sorted(set(offs)) == list(range(0, raw.size, chunk))
    garbage = []
    for i, (o, n, s) in enumerate(zip(offs, plan.lengths.tolist(), plan.sources.tolist())):
        data = plan.buffer[s:s + n]
        if not np.array_equal(data, raw[o:o + n]):
            assert np.all(data != raw[o:o + n])  # every garbage byte is wrong
            later = [j for j in range(i + 1, plan.count) if offs[j] == o]
            assert later, "garbage is never corrected"
            j = later[-1]
            assert np.array_equal(plan.buffer[plan.sources[j]:plan.sources[j] + n], raw[o:o + n])
            garbage.append(i)
    assert len(garbage) == max(1, round(0.1 * nchunks))
    assert plan.count == nchunks + len(garbage)
    assert offs != sorted(offs)  # really shuffled
    assert np.array_equal(plan.apply(), raw)


def test_shuffled_is_seeded() -> None:
    path = fixture("dbghelp-win10-x64_tiny-exe-fastfail.dmp")
    a, b, c = (plan_for(path, "shuffled", seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.buffer, b.buffer)
    assert not np.array_equal(a.offsets, c.offsets)


def test_sequential_layout() -> None:
    path = fixture("breakpad-linux-x64_linux-mini.dmp")
    size = path.stat().st_size
    plan = plan_for(path, "sequential", chunk=1000)
    assert plan.offsets.tolist() == list(range(0, size, 1000))
    assert plan.lengths[:-1].tolist() == [1000] * (plan.count - 1)
    assert int(plan.lengths[-1]) == size - 1000 * (plan.count - 1)
    assert np.array_equal(plan.sources, plan.offsets)
    assert plan_for(path, "sequential").count == 1  # 64 KiB default


def test_trace_source_keeps_its_order(tmp_path: Path) -> None:
    path = fixture("crashpad-linux-x64_linux_inline.dmp")
    writer_plan = plan_for(path, "writer")
    tpath = tmp_path / "w.mdtrace"
    with trace.TraceWriter(tpath) as w:
        w.write_plan(writer_plan)
    for schedule in ("sequential", "shuffled", "writer"):
        again = plan_for(tpath, schedule, chunk=4096, seed=9)
        assert np.array_equal(again.offsets, writer_plan.offsets)
        assert np.array_equal(again.lengths, writer_plan.lengths)
        assert np.array_equal(again.apply(), np.fromfile(path, np.uint8))


# --------------------------------------------------------------------------
# synthetic dumps (known layout, odd layouts, garbage)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("directory_at_end", [False, True])
@pytest.mark.parametrize("targets_first", [False, True])
@pytest.mark.parametrize("schedule", ["sequential", "writer", "shuffled"])
def test_synthetic_dump_schedules(tmp_path: Path, directory_at_end: bool, targets_first: bool, schedule: str) -> None:
    built = helpers.build_dump(seed=4, directory_at_end=directory_at_end, targets_first=targets_first)
    path = tmp_path / "s.dmp"
    path.write_bytes(built.data)
    for chunk in (None, 7, 1024):
        plan = plan_for(path, schedule, chunk=chunk)
        plan.validate()
        assert plan.apply().tobytes() == built.data


def test_synthetic_writer_pieces(tmp_path: Path) -> None:
    built = helpers.build_dump(seed=1)
    path = tmp_path / "s.dmp"
    path.write_bytes(built.data)
    plan = plan_for(path, "writer")
    pieces = set(zip(plan.offsets.tolist(), plan.lengths.tolist()))
    # Memory in 1 KiB pieces.
    rva, size = built.memory[1]  # thread 1's 3000-byte stack
    assert {(rva, 1024), (rva + 1024, 1024), (rva + 2048, size - 2048)} <= pieces
    # Contexts whole; the thread list's count first, then 4-16-byte fields.
    for crva, csize in built.contexts:
        assert (crva, csize) in pieces
    tl = built.streams[1][2]
    assert (tl, 4) in pieces
    assert {(tl + 4, 4), (tl + 4 + 16, 8), (tl + 4 + 40, 8)} <= pieces
    below, _ = backward_writes(plan)
    assert below / plan.count > 0.3


def random_dump(rng: np.random.Generator) -> bytes:
    """Random bytes under a valid header and directory whose entries point anywhere (even past the end)."""
    size = int(rng.integers(32 + 12 * 8, 6000))
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    n = int(rng.integers(0, 8))
    dir_rva = int(rng.integers(0, size - 12 * n + 1))
    struct.pack_into("<IIII", data, 0, 0x504D444D, 0xA793, n, dir_rva)
    for k in range(n):
        t = int(rng.choice([0, 3, 4, 5, 6, 7, 8, 9, 15, 24, 0x47670003, 0xABCDEF]))
        struct.pack_into("<III", data, dir_rva + 12 * k, t, int(rng.integers(0, 800)), int(rng.integers(0, size + 100)))
    if dir_rva < 32:  # the directory overlaps the header: keep the header valid
        struct.pack_into("<IIII", data, 0, 0x504D444D, 0xA793, n, dir_rva)
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.sampled_from(["sequential", "writer", "shuffled"]), st.integers(1, 3000))
def test_garbage_dumps_reproduce(tmp_path: Path, seed: int, schedule: str, chunk: int) -> None:
    data = random_dump(np.random.default_rng(seed))
    try:
        minidump.read_info(data)
    except minidump.MinidumpFormatError:
        return
    path = tmp_path / "g.dmp"
    path.write_bytes(data)
    plan = plan_for(path, schedule, chunk=chunk, seed=seed % 1000)
    plan.validate()
    assert plan.apply().tobytes() == data


@pytest.mark.parametrize("raw,error", [
    (b"not a dump at all, just text" * 3, "NotAMinidumpError"),
    (b"MDMP" + bytes(10), "NotAMinidumpError"),
    (b"", "NotAMinidumpError"),
])
def test_plan_for_rejects_non_minidumps(tmp_path: Path, raw: bytes, error: str) -> None:
    path = tmp_path / "n.bin"
    path.write_bytes(raw)
    for schedule in ("sequential", "writer", "shuffled"):
        with pytest.raises(getattr(minidump, error)):
            plan_for(path, schedule)


def test_plan_for_errors(tmp_path: Path) -> None:
    path = fixture("crashpad-linux-x64_linux_inline.dmp")
    with pytest.raises(ScheduleError, match="unknown schedule 'random'; choose one of writer, sequential, shuffled"):
        plan_for(path, "random")
    for bad in (0, -4, True, 1.5, "64"):
        with pytest.raises(ScheduleError, match="chunk"):
            plan_for(path, "sequential", chunk=bad)
    with pytest.raises(ScheduleError, match="seed"):
        plan_for(path, "shuffled", seed=-1)
    with pytest.raises(FileNotFoundError):
        plan_for(tmp_path / "missing.dmp")
    assert issubclass(ScheduleError, ValueError)


# --------------------------------------------------------------------------
# synthetic plans for benchmarks
# --------------------------------------------------------------------------


def test_tiny_plan() -> None:
    plan = schedules.tiny_plan(100_000, seed=1)
    plan.validate()
    assert plan.count == 100_000
    assert plan.lengths.min() >= 4 and plan.lengths.max() <= 16
    below, _ = backward_writes(plan)
    assert 0.45 < below / plan.count < 0.55
    out = plan.apply()
    assert out.tobytes() == naive_apply(plan)
    again = schedules.tiny_plan(100_000, seed=1)
    assert np.array_equal(again.apply(), out) and np.array_equal(again.offsets, plan.offsets)
    assert not np.array_equal(schedules.tiny_plan(100_000, seed=2).apply()[:1000], out[:1000])
    assert schedules.tiny_plan(0).count == 0
    assert schedules.tiny_plan(1).count == 1


def test_tiny_plan_is_fast() -> None:
    t0 = time.perf_counter()
    plan = schedules.tiny_plan(2_000_000, seed=3)
    elapsed = time.perf_counter() - t0
    assert plan.count == 2_000_000
    assert elapsed < 3.0, f"tiny_plan(2M) took {elapsed:.2f} s"


def test_sized_plan() -> None:
    plan = schedules.sized_plan(1024, 10_000, seed=5)
    plan.validate()
    assert plan.offsets.tolist() == list(range(0, 10_000, 1024))
    assert set(plan.lengths[:-1].tolist()) == {1024} and int(plan.lengths[-1]) == 10_000 - 9 * 1024
    assert plan.size == 10_000 == plan.total_bytes
    assert np.array_equal(plan.apply(), plan.buffer[:10_000])
    # Larger than the pool: bytes are reused, the plan stays valid.
    big = schedules.sized_plan(4096, 1 << 22, pool_bytes=1 << 16)
    big.validate()
    assert big.buffer.size == 1 << 16
    assert big.apply().tobytes() == naive_apply(big)
    assert np.array_equal(schedules.sized_plan(64, 1000, seed=1).buffer, schedules.sized_plan(64, 1000, seed=1).buffer)
    assert schedules.sized_plan(64, 0).count == 0


def test_synthetic_plan_dispatch() -> None:
    a = schedules.synthetic_plan("tiny", count=1000, seed=4)
    assert np.array_equal(a.offsets, schedules.tiny_plan(1000, seed=4).offsets)
    b = schedules.synthetic_plan("sized", write_size=1024, total_bytes=5000)
    assert b.count == 5
    with pytest.raises(ScheduleError, match="unknown synthetic plan kind"):
        schedules.synthetic_plan("huge", count=1)
    with pytest.raises(ScheduleError, match="needs count"):
        schedules.synthetic_plan("tiny")
    with pytest.raises(ScheduleError, match="unexpected parameters: chunk"):
        schedules.synthetic_plan("sized", write_size=1, total_bytes=1, chunk=3)
    with pytest.raises(ScheduleError, match="write_size must be >= 1"):
        schedules.sized_plan(0, 100)
    with pytest.raises(ScheduleError, match="max_size"):
        schedules.tiny_plan(10, min_size=8, max_size=4)


# ---------------------------------------------------------------------------
# the source as a private mapping (read_with_room)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 4096 + 17])
@pytest.mark.parametrize("room", [0, 1, 32, 4096, 10_000])
def test_read_with_room_is_the_file_then_zeros_and_never_writes_the_file(tmp_path: Path, size: int,
                                                                         room: int) -> None:
    from mdstream._files import read_with_room

    raw = np.random.default_rng(size + room).integers(0, 256, size, dtype=np.uint8).tobytes()
    src = tmp_path / "src.bin"
    src.write_bytes(raw)
    buf, got = read_with_room(src, room)
    assert got == size and buf.size == size + room and buf.flags.writeable
    assert buf[:size].tobytes() == raw
    assert not buf[size:].any()                 # the room reads as zeros, also inside the file's last page
    buf[:] = 0xA5                               # write everything: the file and the room
    assert buf[size:].tobytes() == b"\xa5" * room
    assert src.read_bytes() == raw              # copy-on-write: the file never changes
    del buf


def test_read_with_room_falls_back_to_reading_where_it_cannot_map(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mdstream import _files, _mapping

    def refuse(fd: int, size: int, room: int) -> Any:
        raise OSError(19, "no mmap here")

    monkeypatch.setattr(_mapping, "map_private_with_room", refuse)
    src = tmp_path / "src.bin"
    src.write_bytes(b"minidump bytes")
    buf, got = _files.read_with_room(src, 5)
    assert got == 14 and buf.tobytes() == b"minidump bytes" + bytes(5)


@pytest.mark.parametrize("schedule", ["writer", "shuffled"])
def test_a_mapped_plan_outlives_its_file(tmp_path: Path, schedule: str) -> None:
    """The plan keeps its pages when the source is unlinked, and changes the source not at all."""
    built = helpers.build_dump(seed=2)
    src = tmp_path / "a.dmp"
    src.write_bytes(built.data)
    plan = plan_for(src, schedule)
    assert src.read_bytes() == built.data       # the placeholder header and the garbage went to the room
    src.unlink()
    assert plan.apply().tobytes() == built.data
