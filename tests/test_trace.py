"""MDTRACE1 reading and writing (mdstream.trace)."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import struct
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import NO_FIXTURES, pure_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


trace = pure_module("trace")
schedules = pure_module("schedules")
TraceFormatError = trace.TraceFormatError
MdstreamError = pure_module("errors").MdstreamError
TraceWriter = trace.TraceWriter
read_trace = trace.read_trace
is_trace = trace.is_trace

HDR = struct.Struct("<QII")


def build(records: list[tuple[int, bytes]], reserved: int = 0) -> bytes:
    """An MDTRACE1 file built by hand, independently of TraceWriter."""
    return b"MDTRACE1" + b"".join(HDR.pack(o, len(d), reserved) + d for o, d in records)


def expected_output(records: list[tuple[int, bytes]]) -> bytes:
    size = max((o + len(d) for o, d in records), default=0)
    out = bytearray(size)
    for o, d in records:
        out[o:o + len(d)] = d
    return bytes(out)


def plan_records(plan: Any) -> list[tuple[int, bytes]]:
    buf = plan.buffer
    return [(int(o), bytes(buf[int(s):int(s) + int(n)]))
            for o, n, s in zip(plan.offsets, plan.lengths, plan.sources)]


@pytest.fixture
def force_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the lane scanner run on small inputs too."""
    monkeypatch.setattr(trace, "_SERIAL_BELOW", 0)
    monkeypatch.setattr(trace, "_FIRST_WINDOW", 1 << 12)
    monkeypatch.setattr(trace, "_WINDOW", 1 << 14)
    monkeypatch.setattr(trace, "_PROBE", 2)
    monkeypatch.setattr(trace, "_DENSE", 1 << 30)


def serial_positions(data: bytes) -> list[int]:
    pos, out = 8, []
    while pos < len(data):
        out.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return out


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


def test_writer_round_trip(tmp_path: Path) -> None:
    records = [(0, b"MDMP"), (100, b""), (4, bytes(range(256)) * 5000), (2, b"xy"), (1 << 40, b"far")]
    path = tmp_path / "t.mdtrace"
    with TraceWriter(path, buffer_size=4096) as w:
        for o, d in records:
            w.write(o, d)
        assert w.records == len(records)
    assert path.read_bytes() == build(records)
    plan = read_trace(path)
    assert plan.count == 5
    assert plan_records(plan) == records
    assert plan.size == (1 << 40) + 3
    assert plan.name == "t.mdtrace"
    plan.validate()


def test_write_accepts_any_bytes_like(tmp_path: Path) -> None:
    path = tmp_path / "t.mdtrace"
    with TraceWriter(path) as w:
        w.write(0, bytearray(b"ab"))
        w.write(2, memoryview(b"cd"))
        w.write(4, np.array([1, 2], dtype="<u2"))
        w.write(np.uint64(8), b"")
    assert plan_records(read_trace(path)) == [(0, b"ab"), (2, b"cd"), (4, b"\x01\x00\x02\x00"), (8, b"")]


def test_write_many_matches_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 5000
    data = rng.integers(0, 256, 100_000, dtype=np.uint8)
    lengths = rng.integers(0, 40, n)
    lengths[::97] = 5000  # some large ones take the slice path
    positions = rng.integers(0, data.size - 5000, n)
    offsets = rng.integers(0, 1 << 33, n, dtype=np.uint64)
    a, b = tmp_path / "a.mdtrace", tmp_path / "b.mdtrace"
    with TraceWriter(a, buffer_size=10_000) as w:
        w.write_many(offsets, lengths, data, positions)
    with TraceWriter(b) as w:
        for o, ln, p in zip(offsets.tolist(), lengths.tolist(), positions.tolist()):
            w.write(o, data[p:p + ln].tobytes())
    assert a.read_bytes() == b.read_bytes()
    plan = read_trace(a)
    assert np.array_equal(plan.offsets, offsets)
    assert np.array_equal(plan.lengths, lengths.astype(np.uint32))


def test_write_plan_then_apply(tmp_path: Path) -> None:
    plan = schedules.tiny_plan(20_000, seed=5)
    path = tmp_path / "tiny.mdtrace"
    with TraceWriter(path) as w:
        w.write_plan(plan)
    again = read_trace(path)
    assert again.count == plan.count
    assert np.array_equal(again.offsets, plan.offsets)
    assert np.array_equal(again.apply(), plan.apply())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5000), st.binary(max_size=64)), max_size=40))
def test_round_trip_property(tmp_path: Path, records: list[tuple[int, bytes]]) -> None:
    path = tmp_path / "p.mdtrace"
    with TraceWriter(path, buffer_size=64) as w:
        for o, d in records:
            w.write(o, d)
    assert path.read_bytes() == build(records)
    plan = read_trace(path)
    assert plan_records(plan) == records
    assert plan.apply().tobytes() == expected_output(records)


def test_empty_trace(tmp_path: Path) -> None:
    path = tmp_path / "e.mdtrace"
    with TraceWriter(path):
        pass
    assert path.read_bytes() == b"MDTRACE1"
    plan = read_trace(path)
    assert plan.count == 0 and plan.size == 0 and plan.total_bytes == 0
    assert plan.apply().size == 0


def test_read_from_bytes_and_array() -> None:
    records = [(3, b"abc"), (0, b"xyz")]
    raw = build(records)
    for src in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        plan = read_trace(src)
        assert plan_records(plan) == records
        assert plan.apply().tobytes() == b"xyzabc"
    with pytest.raises(TypeError):
        read_trace(12345)  # type: ignore[arg-type]


def test_read_maps_the_file_without_copying(tmp_path: Path) -> None:
    path = tmp_path / "m.mdtrace"
    path.write_bytes(build([(0, b"hello")]))
    plan = read_trace(path)
    assert not plan.buffer.flags.writeable
    assert plan.buffer.size == path.stat().st_size
    assert int(plan.sources[0]) == 8 + 16


# --------------------------------------------------------------------------
# malformed traces
# --------------------------------------------------------------------------


def write(tmp_path: Path, raw: bytes, name: str = "trace.mdtrace") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"")
    with pytest.raises(TraceFormatError) as e:
        read_trace(path)
    assert str(e.value).startswith(f"{path}: empty file")  # the path as given, not its basename
    assert e.value.record is None and e.value.byte == 0
    assert isinstance(e.value, ValueError) and isinstance(e.value, MdstreamError)


@pytest.mark.parametrize("n", range(1, 8))
def test_header_cut_short(tmp_path: Path, n: int) -> None:
    with pytest.raises(TraceFormatError, match=rf"header cut short \({n} of 8 bytes\)") as e:
        read_trace(write(tmp_path, b"MDTRACE1"[:n]))
    assert e.value.record is None and e.value.byte == 0


@pytest.mark.parametrize("raw", [b"MDTRACE2", b"MDMP\x93\xa7\x00\x00" + bytes(24), b"abc", b"\x00" * 100])
def test_wrong_magic(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(TraceFormatError, match=r"not an MDTRACE1 trace: magic b'") as e:
        read_trace(write(tmp_path, raw))
    assert repr(raw[:8]) in str(e.value)


@pytest.mark.parametrize("extra", range(1, 16))
def test_record_header_cut_short(tmp_path: Path, extra: int) -> None:
    records = [(0, b"a" * 10), (5, b"bb")]
    raw = build(records) + HDR.pack(7, 3, 0)[:extra]
    at = len(build(records))
    path = write(tmp_path, raw)
    with pytest.raises(TraceFormatError) as e:
        read_trace(path)
    assert str(e.value) == (f"{path}: record 2 at byte {at}: record header cut short "
                            f"(need 16 bytes, {extra} left)")
    assert e.value.record == 2 and e.value.byte == at


def test_data_cut_short_message(tmp_path: Path) -> None:
    records = [(i, b"x" * 7) for i in range(17)]
    body = build(records)
    raw = body + HDR.pack(0, 1024, 0) + b"y" * 300
    path = write(tmp_path, raw)
    with pytest.raises(TraceFormatError) as e:
        read_trace(path)
    assert str(e.value) == f"{path}: record 17 at byte {len(body)}: data cut short (need 1024 bytes, 300 left)"
    assert e.value.record == 17 and e.value.byte == len(body)


def test_cut_in_first_record(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"record 0 at byte 8: data cut short \(need 4 bytes, 3 left\)"):
        read_trace(write(tmp_path, b"MDTRACE1" + HDR.pack(0, 4, 0) + b"abc"))


def test_error_pickles() -> None:
    err = TraceFormatError("x: record 3 at byte 9: boom", record=3, byte=9)
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.record, again.byte) == (str(err), 3, 9)


def test_zero_length_records_are_kept(tmp_path: Path) -> None:
    records = [(0, b""), (10, b"abc"), (1000, b""), (3, b"")]
    plan = read_trace(write(tmp_path, build(records)))
    assert plan.count == 4
    assert plan.lengths.tolist() == [0, 3, 0, 0]
    # A zero-length write changes nothing but still counts for the size.
    assert plan.size == 1000
    assert plan.apply().tobytes() == bytes(10) + b"abc" + bytes(987)


def test_reserved_is_ignored(tmp_path: Path) -> None:
    records = [(0, b"abcd"), (2, b"ZZ")]
    plan = read_trace(write(tmp_path, build(records, reserved=0xDEADBEEF)))
    assert plan_records(plan) == records
    assert plan.apply().tobytes() == b"abZZ"


def test_destination_past_file_offsets(tmp_path: Path) -> None:
    raw = build([(0, b"ok"), ((1 << 64) - 2, b"four")])
    with pytest.raises(TraceFormatError, match=r"record 1 at byte 26: .*does not fit a file offset") as e:
        read_trace(write(tmp_path, raw))
    assert e.value.record == 1


def test_is_trace(tmp_path: Path) -> None:
    assert is_trace(write(tmp_path, build([]), "a"))
    assert not is_trace(write(tmp_path, b"MDTRACE", "b"))
    assert not is_trace(write(tmp_path, b"MDMP" + bytes(40), "c"))
    assert not is_trace(write(tmp_path, b"", "d"))
    with pytest.raises(FileNotFoundError):
        is_trace(tmp_path / "missing")


# --------------------------------------------------------------------------
# the lane scanner agrees with a plain loop
# --------------------------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=24),
    st.just(b""),
    st.integers(0, 40).map(bytes),  # zeros: look like headers
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 64)).map(lambda t: HDR.pack(t[0], t[1], 0)),  # fake headers
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, (1 << 32) - 1), payloads), min_size=0, max_size=400),
       st.sampled_from([0, 0, 0, 1, 0xFFFFFFFF]), st.integers(0, 20))
def test_lanes_equal_serial(force_lanes: None, records: list[tuple[int, bytes]], reserved: int, cut: int) -> None:
    raw = build(records, reserved)
    if cut and len(raw) - cut > 8:
        raw = raw[:-cut]
        try:
            read_trace(raw)
        except TraceFormatError as e:
            pos = serial_positions_until_cut(raw)
            assert e.byte == pos[-1] and e.record == len(pos) - 1
        else:
            # Cutting exactly at a record boundary leaves a valid trace.
            assert serial_positions(raw)[-1] + 16 <= len(raw)
        return
    plan = read_trace(raw)
    assert (plan.sources.astype(np.int64) - 16).tolist() == serial_positions(raw)
    assert plan_records(plan) == records


def serial_positions_until_cut(data: bytes) -> list[int]:
    """Positions up to and including the first record that does not fit."""
    pos, out = 8, []
    while pos < len(data):
        out.append(pos)
        if pos + 16 > len(data):
            break
        nxt = pos + 16 + struct.unpack_from("<I", data, pos + 8)[0]
        if nxt > len(data):
            break
        pos = nxt
    return out


def synthetic_trace(n: int, lo: int, hi: int, seed: int = 0, reserved: int = 0,
                    dump: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:
    """n records with lo..hi-byte payloads (random bytes, or slices of ``dump``); returns raw and positions."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi + 1, n)
    starts = 8 + np.concatenate(([0], np.cumsum(16 + lens)[:-1]))
    total = 8 + int((16 + lens).sum())
    buf = np.zeros(total, np.uint8)
    buf[:8] = np.frombuffer(b"MDTRACE1", np.uint8)
    hdr = np.zeros(n, dtype=[("o", "<u8"), ("l", "<u4"), ("r", "<u4")])
    hdr["o"] = rng.integers(0, 1 << 20, n)
    hdr["l"] = lens
    hdr["r"] = reserved
    buf[(starts[:, None] + np.arange(16)).ravel()] = hdr.view(np.uint8)
    mask = np.ones(total, bool)
    mask[:8] = False
    mask[(starts[:, None] + np.arange(16)).ravel()] = False
    if dump is None:
        buf[mask] = rng.integers(0, 256, int(mask.sum()), dtype=np.uint8)
    else:
        idx = np.flatnonzero(mask)
        buf[idx] = dump[(idx * 7919) % dump.size]
    return buf.tobytes(), starts


@pytest.mark.parametrize("lo,hi,reserved", [(4, 16, 0), (0, 0, 0), (4, 16, 7), (0, 3000, 0), (1024, 1024, 0)])
def test_lanes_on_larger_traces(force_lanes: None, lo: int, hi: int, reserved: int) -> None:
    raw, starts = synthetic_trace(3000 if hi < 100 else 300, lo, hi, reserved=reserved)
    plan = read_trace(raw)
    assert np.array_equal(plan.sources.astype(np.int64) - 16, starts)
    cut = raw[:-3]
    with pytest.raises(TraceFormatError) as e:
        read_trace(cut)
    assert e.value.record == len(starts) - 1 and e.value.byte == int(starts[-1])


def test_default_scanner_on_real_dump_payloads() -> None:
    """Payloads made of real dump bytes (zeros, small ints) through the default windows."""
    path = FIXTURES / "dumps" / "dbghelp-win10-x64_tiny-exe-fastfail.dmp"
    if not path.exists():
        pytest.skip(NO_FIXTURES)
    dump = np.fromfile(path, np.uint8)
    raw, starts = synthetic_trace(200_000, 4, 16, seed=9, dump=dump)
    plan = read_trace(raw)
    assert np.array_equal(plan.sources.astype(np.int64) - 16, starts)


def test_read_speed_one_million_records(tmp_path: Path) -> None:
    """1 M records of 4-16 bytes: the scan is well under a second (measured ~0.1-0.2 s)."""
    raw, starts = synthetic_trace(1_000_000, 4, 16, seed=1)
    path = tmp_path / "big.mdtrace"
    path.write_bytes(raw)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        plan = read_trace(path)
        best = min(best, time.perf_counter() - t0)
    assert plan.count == 1_000_000
    assert np.array_equal(plan.sources.astype(np.int64) - 16, starts)
    assert best < 2.0, f"read_trace took {best:.2f} s for 1 M records"


# --------------------------------------------------------------------------
# TraceWriter: files, modes, symlinks, atomic replace, abort
# --------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_new_file_is_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "new.mdtrace"
    with TraceWriter(path) as w:
        assert path.exists()  # created right away (O_EXCL)
        assert mode(path) == 0o600
        w.write(0, b"x")
    assert mode(path) == 0o600
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_existing_file_is_replaced_atomically(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "old.mdtrace"
    path.write_bytes(b"previous contents")
    os.chmod(path, 0o644)
    w = TraceWriter(path)
    w.write(0, b"new")
    w._flush()
    # Until close, the old file is untouched and the new trace lives in a private temp file.
    assert path.read_bytes() == b"previous contents"
    temps = [p for p in tmp_path.iterdir() if p != path]
    assert len(temps) == 1 and mode(temps[0]) == 0o600
    w.close()
    assert path.read_bytes() == build([(0, b"new")])
    assert mode(path) == 0o600
    assert list(tmp_path.iterdir()) == [path]
    w.close()  # idempotent


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_is_refused(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "target"
    if not dangling:
        target.write_bytes(b"keep me")
    link = tmp_path / "link.mdtrace"
    link.symlink_to(target)
    with pytest.raises(OSError) as e:
        TraceWriter(link)
    assert e.value.errno == errno.ELOOP
    assert "symbolic link" in str(e.value)
    assert link.is_symlink()
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["link.mdtrace"] + ([] if dangling else ["target"]))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        TraceWriter(tmp_path)


def test_abort_new_file(tmp_path: Path) -> None:
    path = tmp_path / "a.mdtrace"
    w = TraceWriter(path)
    w.write(0, b"partial")
    w.abort()
    assert not path.exists()
    w.abort()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(0, b"more")


def test_abort_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.mdtrace"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with TraceWriter(path) as w:
            w.write(0, b"partial")
            raise RuntimeError("dump failed")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_context_manager_error_removes_new_file(tmp_path: Path) -> None:
    path = tmp_path / "n.mdtrace"
    with pytest.raises(KeyError):
        with TraceWriter(path) as w:
            w.write(0, b"x")
            raise KeyError("boom")
    assert not path.exists()


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "x.mdtrace") as w:
        with pytest.raises(ValueError, match="does not fit a file offset"):
            w.write(-1, b"x")
        with pytest.raises(ValueError, match="does not fit a file offset"):
            w.write((1 << 63) - 1, b"xy")
        with pytest.raises(TypeError):
            w.write(1.5, b"x")  # type: ignore[arg-type]
        data = np.zeros(10, np.uint8)
        with pytest.raises(ValueError, match="outside the data buffer"):
            w.write_many([0], [5], data, [6])
        with pytest.raises(ValueError, match="one length"):
            w.write_many([0, 1], [5], data, [0])
        with pytest.raises(ValueError, match="negative"):
            w.write_many([0], [-1], data, [0])
        w.write_many([], [], data, [])
        assert w.records == 0
    assert read_trace(tmp_path / "x.mdtrace").count == 0
