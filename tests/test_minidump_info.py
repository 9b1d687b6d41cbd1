"""Minidump header/directory reader and region map (mdstream.minidump)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NO_FIXTURES, pure_module

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
DUMPS = FIXTURES / "dumps"


minidump = pure_module("minidump")
read_info = minidump.read_info
iter_regions = minidump.iter_regions
NotAMinidumpError = minidump.NotAMinidumpError
MinidumpFormatError = minidump.MinidumpFormatError

# What /work/shared/fixtures/README.md says about each fixture.
FIXTURE_FACTS: dict[str, dict[str, Any]] = {
    "dbghelp-win10-x64_tiny-exe-fastfail.dmp": dict(
        size=98722, streams=12, unused=4, version=0xA061A793, flags=0x100,
        sha256="573d69f38407ac3414e4afdc61fab7a32f706fa14512a35bb92a60ad625d6eae"),
    "crashpad-linux-x64_linux_inline.dmp": dict(
        size=21456, streams=7, unused=0, version=0xA793, flags=0,
        sha256="9ec806b08559cb914bbc4ebdb19f80b0a68103947ec10b4395b96256942a774a"),
    "breakpad-linux-x64_linux-mini.dmp": dict(
        size=27549, streams=14, unused=0, version=0xA793, flags=0,
        sha256="ec4b64062545eb9874d25037bf0624c96a49098eed20b595344c72d344381576"),
}


def fixture(name: str) -> Path:
    path = DUMPS / name
    if not path.exists():
        pytest.skip(NO_FIXTURES)
    return path


fixture_names = pytest.mark.parametrize("name", sorted(FIXTURE_FACTS))


# --------------------------------------------------------------------------
# A small minidump builder, independent of the code under test
# --------------------------------------------------------------------------


@dataclass
class Built:
    data: bytes
    directory_rva: int
    streams: list[tuple[int, int, int]]          # (type, size, rva) in directory order
    memory: list[tuple[int, int]] = field(default_factory=list)   # (rva, size) of memory ranges
    module_names: list[str] = field(default_factory=list)
    contexts: list[tuple[int, int]] = field(default_factory=list)


class DumpBuilder:
    """Lays a minidump out the way writers do: allocate, then patch pointers."""

    def __init__(self, seed: int = 0, pad: int = 0xCC) -> None:
        self.buf = bytearray(32)
        self.rng = np.random.default_rng(seed)
        self.pad = pad

    def alloc(self, data: bytes, align: int = 4) -> int:
        while len(self.buf) % align:
            self.buf.append(self.pad)  # non-zero padding: a schedule must write it too
        rva = len(self.buf)
        self.buf += data
        return rva

    def reserve(self, size: int, align: int = 4) -> int:
        return self.alloc(bytes(size), align)

    def put(self, at: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, self.buf, at, *values)

    def string(self, text: str) -> int:
        raw = text.encode("utf-16-le")
        return self.alloc(struct.pack("<I", len(raw)) + raw + b"\0\0")

    def random(self, n: int) -> bytes:
        return self.rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def build_dump(seed: int = 0, directory_at_end: bool = False, unused: int = 2, targets_first: bool = False,
               flags: int = 0x1 | 0x100, timestamp: int = 1_600_000_000, version: int = 0xA793) -> Built:
    """A dump with SystemInfo, ThreadList, ModuleList, MemoryList, ThreadNames, a text stream,
    an unknown stream and a Memory64List, plus ``unused`` trailing unused entries."""
    b = DumpBuilder(seed)
    streams: list[tuple[int, int, int]] = []
    n_streams = 9 + unused
    dir_rva = 0 if directory_at_end else b.reserve(12 * n_streams)
    built = Built(b"", 0, streams)

    # SystemInfo + CSD version string
    si = b.reserve(56)
    csd = b.string("Service Pack 9")
    b.put(si + 24, "<I", csd)
    b.put(si, "<HH", 9, 6)
    streams.append((7, 56, si))

    # ThreadList: 2 threads, stacks and contexts before or after the list
    stacks = [b.random(1500), b.random(3000)]
    ctxs = [b.random(1232), b.random(1232)]
    pre: list[tuple[int, int]] = []
    if targets_first:
        pre = [(b.alloc(stacks[k], 16), b.alloc(ctxs[k], 16)) for k in range(2)]
    tl = b.reserve(4 + 2 * 48)
    b.put(tl, "<I", 2)
    for k in range(2):
        srva, crva = pre[k] if targets_first else (b.alloc(stacks[k], 16), b.alloc(ctxs[k], 16))
        e = tl + 4 + 48 * k
        b.put(e, "<IIIIQ", 100 + k, 0, 0x20, 8, 0x7000_0000 + k * 0x1000)
        b.put(e + 24, "<QII", 0x10_0000 * (k + 1), len(stacks[k]), srva)
        b.put(e + 40, "<II", len(ctxs[k]), crva)
        built.memory.append((srva, len(stacks[k])))
        built.contexts.append((crva, len(ctxs[k])))
    streams.append((3, 4 + 2 * 48, tl))

    # ModuleList: 2 modules with names and CodeView records
    names = ["C:\\app\\main.exe", "C:\\Windows\\System32\\ntdll.dll"]
    ml = b.reserve(4 + 2 * 108)
    b.put(ml, "<I", 2)
    for k, nm in enumerate(names):
        e = ml + 4 + 108 * k
        name_rva = b.string(nm)
        cv = b"RSDS" + b.random(20) + nm.encode() + b"\0"
        cv_rva = b.alloc(cv)
        b.put(e, "<QIII", 0x1_4000_0000 + k * 0x100_0000, 0x10000, 0, 0)
        b.put(e + 20, "<I", name_rva)
        b.put(e + 76, "<II", len(cv), cv_rva)
    built.module_names = names
    streams.append((4, 4 + 2 * 108, ml))

    # MemoryList: thread 0's stack (shared range) + 2 more ranges
    extra = [b.random(777), b.random(2048)]
    mem_ranges = [built.memory[0]] + [(b.alloc(m, 16), len(m)) for m in extra]
    built.memory += mem_ranges[1:]
    mlist = b.reserve(4 + 16 * len(mem_ranges))
    b.put(mlist, "<I", len(mem_ranges))
    for k, (rva, size) in enumerate(mem_ranges):
        b.put(mlist + 4 + 16 * k, "<QII", 0x20_0000 * (k + 1), size, rva)
    streams.append((5, 4 + 16 * len(mem_ranges), mlist))

    # ThreadNames
    tn = b.reserve(4 + 2 * 12)
    b.put(tn, "<I", 2)
    for k in range(2):
        s = b.string(f"worker-{k}")
        b.put(tn + 4 + 12 * k, "<IQ", 100 + k, s)
    streams.append((24, 4 + 24, tn))

    # A text stream (LinuxMaps), an unknown stream and an odd-sized blob
    text = b"00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n" * 5
    streams.append((0x47670009, len(text), b.alloc(text, 1)))
    blob = b.random(333)
    streams.append((0x12345678, len(blob), b.alloc(blob, 1)))
    misc = b.random(232)
    streams.append((15, len(misc), b.alloc(misc)))

    # Memory64List: descriptors, then all memory contiguous at the end
    m64 = [b.random(4096), b.random(100), b.random(2500)]
    ml64 = b.reserve(16 + 16 * len(m64))
    base = len(b.buf)
    b.put(ml64, "<QQ", len(m64), base)
    at = base
    for k, m in enumerate(m64):
        b.put(ml64 + 16 + 16 * k, "<QQ", 0x4000_0000 + k * 0x10000, len(m))
        b.buf += m
        built.memory.append((at, len(m)))
        at += len(m)
    streams.append((9, 16 + 16 * len(m64), ml64))
    for _ in range(unused):
        streams.append((0, 0, 0))

    if directory_at_end:
        dir_rva = b.reserve(12 * n_streams)
    for k, (t, s, r) in enumerate(streams):
        b.put(dir_rva + 12 * k, "<III", t, s, r)
    b.put(0, "<IIIIIIQ", 0x504D444D, version, n_streams, dir_rva, 0, timestamp, flags)
    built.data = bytes(b.buf)
    built.directory_rva = dir_rva
    return built


def write(tmp_path: Path, data: bytes, name: str = "x.dmp") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------
# fixtures: values checked against the README and independent parsing
# --------------------------------------------------------------------------


@fixture_names
def test_fixture_header_values(name: str) -> None:
    path = fixture(name)
    facts = FIXTURE_FACTS[name]
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == facts["sha256"]
    info = read_info(path)
    assert info.file_size == facts["size"] == len(raw)
    assert info.signature == 0x504D444D
    assert info.version == facts["version"]
    assert info.version_low == 0xA793
    assert info.version_high == facts["version"] >> 16
    assert info.number_of_streams == facts["streams"] == len(info.streams)
    assert sum(s.type == 0 for s in info.streams) == facts["unused"]
    assert info.flags == facts["flags"]
    assert info.checksum == 0
    assert info.stream_directory_rva == 0x20
    assert all(s.problem is None for s in info.streams)
    # Timestamp: the raw field, and its ISO form computed independently.
    ts = struct.unpack_from("<I", raw, 20)[0]
    assert info.timestamp == ts
    assert info.timestamp_iso == dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def test_fixture_stream_names() -> None:
    info = read_info(fixture("breakpad-linux-x64_linux-mini.dmp"))
    assert [s.type_name for s in info.streams] == [
        "ThreadListStream", "ModuleListStream", "MemoryListStream", "ExceptionStream", "SystemInfoStream",
        "LinuxCpuInfo", "LinuxProcStatus", "LinuxLsbRelease", "LinuxCmdLine", "LinuxEnviron", "LinuxAuxv",
        "LinuxMaps", "LinuxDsoDebug", "MozSoftErrors"]
    info = read_info(fixture("crashpad-linux-x64_linux_inline.dmp"))
    assert "CrashpadInfo" in [s.type_name for s in info.streams]
    info = read_info(fixture("dbghelp-win10-x64_tiny-exe-fastfail.dmp"))
    assert [s.type_name for s in info.streams][5:] == ["MiscInfoStream", "SystemMemoryInfoStream",
                                                       "ProcessVmCountersStream"] + ["UnusedStream"] * 4


def test_fixture_flag_names() -> None:
    dbghelp = pytest.importorskip("mdstream.dbghelp")
    if not (hasattr(dbghelp, "describe") or hasattr(getattr(dbghelp, "MinidumpType", None), "describe")):
        pytest.skip("mdstream.dbghelp has no describe() yet")
    info = read_info(fixture("dbghelp-win10-x64_tiny-exe-fastfail.dmp"))
    assert info.flag_names == ["MiniDumpWithProcessThreadData"]
    assert read_info(fixture("crashpad-linux-x64_linux_inline.dmp")).flag_names == ["MiniDumpNormal"]


@fixture_names
def test_fixture_against_minidump_package(name: str) -> None:
    """Cross-check with skelsec's ``minidump`` (it skips stream types it does not know)."""
    pytest.importorskip("minidump")
    import logging

    from minidump.minidumpfile import MinidumpFile

    path = fixture(name)
    logging.disable(logging.CRITICAL)  # it logs a traceback when it cannot find the PEB
    try:
        mf = MinidumpFile.parse(str(path))
    finally:
        logging.disable(logging.NOTSET)
    info = read_info(path)
    h = mf.header
    assert h.NumberOfStreams == info.number_of_streams
    assert h.StreamDirectoryRva == info.stream_directory_rva
    assert h.CheckSum == info.checksum
    theirs = [(int(d.StreamType.value), d.Location.DataSize, d.Location.Rva) for d in mf.directories]
    ours = [(s.type, s.data_size, s.rva) for s in info.streams]
    assert theirs and set(theirs) <= set(ours)
    # Memory ranges and module names from the region map.
    regions = list(iter_regions(path))
    mem = {(r.start, r.size) for r in regions if r.kind == "memory" and r.label.startswith("MemoryListStream")}
    assert mem == {(s.start_file_address, s.size) for s in mf.memory_segments.memory_segments}
    raw = path.read_bytes()
    names = [raw[r.start + 4:r.end - 2].decode("utf-16-le") for r in regions
             if r.kind == "string" and r.label.startswith("ModuleListStream")]
    assert names == [m.name for m in mf.modules.modules]


@fixture_names
def test_fixture_regions_are_sound(name: str) -> None:
    path = fixture(name)
    size = path.stat().st_size
    regions = list(iter_regions(path))
    kinds = {r.kind for r in regions}
    assert {"header", "directory", "stream", "entry", "memory", "context", "string"} <= kinds
    for r in regions:
        assert r.problem is None, r
        assert 0 <= r.start <= r.end <= size, r
        if r.fields:
            assert sum(r.fields) == r.size, r
        for a, b in r.refs:
            assert 0 <= a < b <= size
    info = read_info(path)
    streams = [r for r in regions if r.kind == "stream"]
    assert len(streams) == sum(1 for s in info.streams if s.type or s.data_size)
    # Every thread has a context and a stack of the size its entry says.
    raw = path.read_bytes()
    threads = [r for r in regions if r.kind == "entry" and r.label.startswith("ThreadListStream[")]
    assert threads
    for t in threads:
        stack_size, stack_rva, ctx_size, ctx_rva = struct.unpack_from("<IIII", raw, t.start + 32)
        assert (stack_rva, stack_rva + stack_size) in t.refs
        assert (ctx_rva, ctx_rva + ctx_size) in t.refs


# --------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------


def test_to_dict_is_json_ready(tmp_path: Path) -> None:
    built = build_dump()
    info = read_info(write(tmp_path, built.data))
    d = info.to_dict()
    again = json.loads(json.dumps(d))
    assert again == d
    assert d["signature_text"] == "MDMP"
    assert d["version"] == 0xA793 and d["version_low"] == 0xA793 and d["version_high"] == 0
    assert d["number_of_streams"] == len(built.streams)
    assert d["timestamp"] == 1_600_000_000
    assert d["timestamp_iso"] == "2020-09-13T12:26:40Z"
    assert d["flags"] == 0x101
    assert [(s["type"], s["data_size"], s["rva"]) for s in d["streams"]] == built.streams
    assert d["streams"][0] == {"index": 0, "type": 7, "type_name": "SystemInfoStream", "data_size": 56,
                               "rva": built.streams[0][2], "problem": None}
    assert d["problems"] == []


def test_format_text(tmp_path: Path) -> None:
    built = build_dump()
    text = read_info(write(tmp_path, built.data)).format_text()
    assert "x.dmp" in text
    assert "0x0000a793" in text
    assert "2020-09-13T12:26:40Z" in text
    lines = text.splitlines()
    assert any(line.split()[:3] == ["3", "0x00000005", "MemoryListStream"] for line in lines)
    # An unknown type: its number in the type column, "unknown" as its name.
    assert any(line.split()[1:3] == ["0x12345678", "unknown"] for line in lines if line.strip().startswith("6 "))
    assert sum("UnusedStream" in line for line in lines) == 2


def test_stream_type_names() -> None:
    name = minidump.stream_type_name
    assert [name(t) for t in (0, 3, 4, 5, 6, 7, 9, 12, 15, 16, 17, 24)] == [
        "UnusedStream", "ThreadListStream", "ModuleListStream", "MemoryListStream", "ExceptionStream",
        "SystemInfoStream", "Memory64ListStream", "HandleDataStream", "MiscInfoStream",
        "MemoryInfoListStream", "ThreadInfoListStream", "ThreadNamesStream"]
    assert [name(0x47670001 + k) for k in range(10)] == [
        "BreakpadInfo", "AssertionInfo", "LinuxCpuInfo", "LinuxProcStatus", "LinuxLsbRelease", "LinuxCmdLine",
        "LinuxEnviron", "LinuxAuxv", "LinuxMaps", "LinuxDsoDebug"]
    assert name(0x43500001) == "CrashpadInfo"
    assert name(0x12345678) == "0x12345678"
    assert name(25) == "0x00000019"


# --------------------------------------------------------------------------
# not minidumps, broken minidumps
# --------------------------------------------------------------------------


@pytest.mark.parametrize("raw,match", [
    (b"", r"x\.dmp: not a minidump: empty file, shorter than the 32-byte MINIDUMP_HEADER"),
    (b"MDMP" + bytes(27), r"not a minidump: file is 31 bytes, shorter than the 32-byte MINIDUMP_HEADER"),
    (b"hello world, this is a text file, not a dump\n", r"not a minidump: signature b'hell' \(expected b'MDMP'\)"),
    (b"MDTRACE1" + bytes(40), r"not a minidump: signature b'MDTR'"),
])
def test_not_a_minidump(tmp_path: Path, raw: bytes, match: str) -> None:
    with pytest.raises(NotAMinidumpError, match=match) as e:
        read_info(write(tmp_path, raw))
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(NotAMinidumpError):
        list(iter_regions(write(tmp_path, raw)))


def test_directory_out_of_file(tmp_path: Path) -> None:
    raw = struct.pack("<IIIIIIQ", 0x504D444D, 0xA793, 5, 20, 0, 0, 0) + bytes(40)
    path = write(tmp_path, raw)
    with pytest.raises(MinidumpFormatError) as e:
        read_info(path)
    assert str(e.value) == f"{path}: stream directory [20, 80) (5 entries) ends past end of file (size 72)"
    huge = struct.pack("<IIIIIIQ", 0x504D444D, 0xA793, 0xFFFFFFFF, 32, 0, 0, 0)
    with pytest.raises(MinidumpFormatError, match="ends past end of file"):
        read_info(write(tmp_path, huge))


def test_no_streams(tmp_path: Path) -> None:
    raw = struct.pack("<IIIIIIQ", 0x504D444D, 0xA793, 0, 0, 0, 0, 0)
    info = read_info(write(tmp_path, raw))
    assert info.streams == [] and info.file_size == 32


def test_out_of_file_rva(tmp_path: Path) -> None:
    built = build_dump()
    data = bytearray(built.data)
    size = len(data)
    # Point the unknown stream (index 6) past the end of the file.
    struct.pack_into("<III", data, built.directory_rva + 12 * 6, 0x12345678, 333, size - 100)
    info = read_info(write(tmp_path, bytes(data)))
    s = info.streams[6]
    assert s.problem == f"stream data [{size - 100}, {size + 233}) ends past end of file (size {size})"
    assert [k for k, st in enumerate(info.streams) if st.problem] == [6]
    assert info.problems == [f"stream 6 (0x12345678): {s.problem}"]
    assert "ends past end of file" in info.format_text()
    regions = [r for r in iter_regions(bytes(data)) if r.problem]
    assert len(regions) == 1 and regions[0].kind == "stream"


def test_truncated_dump(tmp_path: Path) -> None:
    built = build_dump()
    cut = built.data[:built.streams[3][2] + 10]  # inside the MemoryList stream
    info = read_info(write(tmp_path, cut))
    bad = {s.index for s in info.streams if s.problem}
    assert 3 in bad and 0 not in bad
    for s in info.streams:
        if s.type and s.rva + s.data_size > len(cut):
            assert s.index in bad


def test_out_of_file_memory_range(tmp_path: Path) -> None:
    built = build_dump()
    data = bytearray(built.data)
    mlist = built.streams[3][2]
    struct.pack_into("<I", data, mlist + 4 + 16 * 2 + 12, len(data) - 10)  # third range's Rva
    regions = list(iter_regions(bytes(data)))
    bad = [r for r in regions if r.problem]
    assert [r.label for r in bad] == ["MemoryListStream[2].Memory"]
    assert bad[0].problem == f"[{len(data) - 10}, {len(data) + 2038}) ends past end of file (size {len(data)})"
    entry = next(r for r in regions if r.label == "MemoryListStream[2]")
    assert entry.refs == ()  # a ref is only kept when it lies inside the file
    # read_info only judges the directory entries.
    assert read_info(bytes(data)).problems == []


def test_repeated_stream_type(tmp_path: Path) -> None:
    built = build_dump()
    data = bytearray(built.data)
    t, s, r = built.streams[1]
    struct.pack_into("<III", data, built.directory_rva + 12 * 2, t, s, r)  # entry 2 repeats ThreadList
    info = read_info(bytes(data))
    assert info.streams[2].problem == "stream type repeats entry 1"


# --------------------------------------------------------------------------
# the synthetic dump through the reader
# --------------------------------------------------------------------------


@pytest.mark.parametrize("directory_at_end", [False, True])
@pytest.mark.parametrize("targets_first", [False, True])
def test_synthetic_regions(directory_at_end: bool, targets_first: bool) -> None:
    built = build_dump(directory_at_end=directory_at_end, targets_first=targets_first)
    info = read_info(built.data)
    assert [(s.type, s.data_size, s.rva) for s in info.streams] == built.streams
    assert info.stream_directory_rva == built.directory_rva
    regions = list(iter_regions(built.data))
    assert all(r.problem is None for r in regions)
    mem = sorted({(r.start, r.size) for r in regions if r.kind == "memory"})
    assert mem == sorted(set(built.memory))
    ctx = sorted((r.start, r.size) for r in regions if r.kind == "context")
    assert ctx == sorted(built.contexts)
    names = [built.data[r.start + 4:r.end - 2].decode("utf-16-le") for r in regions
             if r.kind == "string" and "ModuleName" in r.label]
    assert names == built.module_names
    tnames = [built.data[r.start + 4:r.end - 2].decode("utf-16-le") for r in regions if r.kind == "string" and "ThreadName" in r.label]
    assert tnames == ["worker-0", "worker-1"]
    csd = [r for r in regions if r.label == "SystemInfoStream.CSDVersion"]
    assert len(csd) == 1 and built.data[csd[0].start + 4:csd[0].end - 2].decode("utf-16-le") == "Service Pack 9"
    m64 = [r for r in regions if r.label == "Memory64ListStream.BaseRva"]
    assert m64[0].refs == ((built.memory[-3][0], built.memory[-1][0] + built.memory[-1][1]),)
    assert next(r for r in regions if r.kind == "stream" and r.label == "LinuxMaps").piece == "whole"


def test_padded_list_count() -> None:
    """Some writers pad a list's 4-byte count to 8 bytes; entries then start 8 bytes in."""
    b = DumpBuilder()
    dir_rva = b.reserve(12)
    mem = b.random(64)
    mem_rva = b.alloc(mem)
    ml = b.reserve(8 + 16)
    b.put(ml, "<I", 1)
    b.put(ml + 8, "<QII", 0x1000, len(mem), mem_rva)
    b.put(dir_rva, "<III", 5, 24, ml)
    b.put(0, "<IIIIIIQ", 0x504D444D, 0xA793, 1, dir_rva, 0, 0, 0)
    regions = list(iter_regions(bytes(b.buf)))
    assert [(r.start, r.size) for r in regions if r.kind == "memory"] == [(mem_rva, 64)]
    assert next(r for r in regions if r.kind == "list-header").fields == (4, 4)


def test_garbage_streams_do_not_crash() -> None:
    """Random directory entries over random bytes: regions stay bounded, problems are reported."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        size = int(rng.integers(32, 3000))
        data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        n = int(rng.integers(0, 8))
        dir_rva = int(rng.integers(32, max(33, size - 12 * n))) if size - 12 * n > 32 else 32
        if dir_rva + 12 * n > size:
            n = 0
        struct.pack_into("<IIIIIIQ", data, 0, 0x504D444D, 0xA793, n, dir_rva, 0, 0, 0)
        for k in range(n):
            t = int(rng.choice([3, 4, 5, 6, 7, 8, 9, 24, 15, 0x47670003]))
            struct.pack_into("<III", data, dir_rva + 12 * k, t, int(rng.integers(0, 600)),
                             int(rng.integers(0, size + 50)))
        regions = list(iter_regions(bytes(data)))
        for r in regions:
            if r.problem is None:
                assert 0 <= r.start <= r.end <= size
            for a, b2 in r.refs:
                assert 0 <= a < b2 <= size


def test_read_info_accepts_bytes() -> None:
    built = build_dump()
    info = read_info(built.data)
    assert info.path == "<buffer>"
    assert info.file_size == len(built.data)
