"""``mdstream info``'s summary (read_summary): system, exception, threads with names, modules with build ids,
vendor stream names -- on hand-built dumps, hostile ones, and the real fixtures against minidump-stackwalk."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import fixture_params

from mdstream import minidump
from mdstream.cli import main
from mdstream.minidump import read_summary, register_stream_type, stream_type_name

BUILD_ID = bytes(range(1, 21))


def _string(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return struct.pack("<I", len(raw)) + raw + b"\0\0"


def build(streams: list[tuple[int, bytes]] | None = None, *, thread_count: int | None = None) -> bytes:
    """A small minidump: Linux amd64 SystemInfo, a SIGSEGV in thread 7, threads 7 and 8 (named),
    one module with a BpEL build id, plus ``streams`` (type, data).  Strings and records are laid
    out after the streams and patched in."""
    body = bytearray()
    directory: list[tuple[int, int, int]] = []
    extra = list(streams or [])
    names_at: dict[str, int] = {}

    def place(data: bytes) -> int:
        while len(body) % 4:
            body.append(0)
        at = 32 + len(body)
        body.extend(data)
        return at

    for text in ("Linux 6.1 test", "main", "worker", "/usr/bin/x"):
        names_at[text] = 0  # filled below
    csd = place(_string("Linux 6.1 test"))
    main_name = place(_string("main"))
    worker_name = place(_string("worker"))
    module_name = place(_string("/usr/bin/x"))
    cv = place(b"LEpB" + BUILD_ID)
    system = struct.pack("<HHHBBIIIIIHH", 9, 6, 0, 4, 1, 0, 0, 0, 0x8201, csd, 0, 0) + b"GenuineIntel" + bytes(12)
    directory.append((7, len(system), place(system)))
    exception = struct.pack("<IIIIQQII", 7, 0, 11, 0, 0, 0xDEAD, 0, 0) + bytes(8 * 15) + struct.pack("<II", 0, 0)
    directory.append((6, len(exception), place(exception)))
    count = 2 if thread_count is None else thread_count
    threads = struct.pack("<I", count) + b"".join(struct.pack("<IIIIQQIIII", tid, 0, 0, 0, 0, 0, 0, 0, 0, 0)
                                                    for tid in (7, 8))
    directory.append((3, len(threads), place(threads)))
    names = struct.pack("<I", 2) + struct.pack("<IQ", 7, main_name) + struct.pack("<IQ", 8, worker_name)
    directory.append((24, len(names), place(names)))
    module = struct.pack("<QIIII", 0x400000, 0x1000, 0, 0, module_name) + bytes(52) + \
        struct.pack("<II", 4 + len(BUILD_ID), cv) + bytes(24)
    modules = struct.pack("<I", 1) + module
    directory.append((4, len(modules), place(modules)))
    for stype, data in extra:
        directory.append((stype, len(data), place(data)))
    dir_at = place(b"".join(struct.pack("<III", *d) for d in directory))
    header = struct.pack("<IIIIIIQ", 0x504D444D, 0xA793, len(directory), dir_at, 0, 0, 0)
    return header + bytes(body)


def test_summary_of_a_hand_built_dump(tmp_path):
    path = tmp_path / "x.dmp"
    path.write_bytes(build())
    s = read_summary(path)
    assert s.system is not None
    assert (s.system.os, s.system.cpu, s.system.cpu_count, s.system.csd_version, s.system.cpu_vendor) == \
        ("Linux", "amd64", 4, "Linux 6.1 test", "GenuineIntel")
    assert s.exception is not None
    assert (s.exception.thread_id, s.exception.code, s.exception.code_name, s.exception.address) == \
        (7, 11, "SIGSEGV", 0xDEAD)
    assert s.thread_count == 2 and [(t.id, t.name) for t in s.threads] == [(7, "main"), (8, "worker")]
    assert s.module_count == 1
    m = s.modules[0]
    assert (m.base, m.size, m.name, m.build_id) == (0x400000, 0x1000, "/usr/bin/x", BUILD_ID.hex())
    # Breakpad's debug id: the first 16 build-id bytes as a little-endian GUID, then age 0.
    assert m.debug_id == "04030201" "0605" "0807" "090A0B0C0D0E0F10" "0"


def test_cli_info_shows_the_summary_and_vendor_names(tmp_path, capsys):
    vendor = [(0x4767000B, b"1 (x) S"), (0xFFF0, b"\0" * 8), (0x43500001, b"\0" * 8), (0x4D530001, b"?" * 4)]
    path = tmp_path / "x.dmp"
    path.write_bytes(build(vendor))
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "system      Linux (Linux 6.1 test); amd64, 4 CPUs (GenuineIntel)" in text
    assert "exception   SIGSEGV (code 0x0000000b, flags 0x0) at 0xdead in thread 7" in text
    assert "threads     2: 7 'main', 8 'worker'" in text
    assert f"/usr/bin/x  [build id {BUILD_ID.hex()}]" in text
    for name in ("LinuxProcStat", "WineElfModuleList", "CrashpadInfo", "unknown (vendor 'MS')"):
        assert name in text, name
    assert main(["info", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "mdstream-info/1" and report["path"] == str(path.resolve())
    assert report["summary"]["exception"]["code_name"] == "SIGSEGV"
    assert [t["name"] for t in report["summary"]["threads"]] == ["main", "worker"]
    assert report["summary"]["modules"][0]["build_id"] == BUILD_ID.hex()


def test_a_hostile_thread_count_is_bounded_by_the_stream(tmp_path):
    path = tmp_path / "x.dmp"
    path.write_bytes(build(thread_count=0xFFFFFFFF))
    s = read_summary(path)
    assert s.thread_count == 2 and len(s.threads) == 2  # what fits in the stream, not 4 billion


def test_cut_strings_and_records_leave_fields_empty(tmp_path):
    raw = bytearray(build())
    # Point the module's name and CodeView record far past the end of the file.
    at = raw.index(struct.pack("<QI", 0x400000, 0x1000))
    raw[at + 20:at + 24] = struct.pack("<I", 0xFFFFFF00)
    raw[at + 80:at + 84] = struct.pack("<I", 0xFFFFFF00)
    path = tmp_path / "x.dmp"
    path.write_bytes(bytes(raw))
    m = read_summary(path).modules[0]
    assert m.name is None and m.build_id is None and m.debug_id is None


def test_stream_names_can_be_registered():
    register_stream_type(0x4D530001, "ExampleVendorStream")
    try:
        assert stream_type_name(0x4D530001) == "ExampleVendorStream"
        register_stream_type(0x4D530001, "ExampleVendorStream")  # idempotent
        with pytest.raises(ValueError, match="already named"):
            register_stream_type(0x4D530001, "SomethingElse")
        with pytest.raises(ValueError, match="already named 'CrashpadInfo'"):
            register_stream_type(0x43500001, "Mine")
    finally:
        minidump.STREAM_TYPE_NAMES.pop(0x4D530001, None)
    assert stream_type_name(0x4D530001) == "0x4d530001"
    assert minidump.vendor_tag(0x4D530001) == "MS" and minidump.vendor_tag(0x12345) is None


def _stackwalk() -> Path:
    where = os.environ.get("MDSTREAM_RUST_MINIDUMP_DIR")
    tool = Path(where) / "minidump-stackwalk-linux" if where else None
    if tool is None or not tool.exists():
        pytest.skip("minidump-stackwalk not available (set MDSTREAM_RUST_MINIDUMP_DIR)")
    return tool


@pytest.mark.parametrize("dump", fixture_params())
def test_fixture_summaries_agree_with_minidump_stackwalk(dump):
    tool = _stackwalk()
    done = subprocess.run([str(tool), "--json", str(dump)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    walked = json.loads(done.stdout)
    s = read_summary(dump)
    assert s.thread_count == walked["thread_count"]
    assert s.system is not None and s.system.cpu_count == walked["system_info"]["cpu_count"]
    assert s.exception is not None
    assert s.exception.address == int(walked["crash_info"]["address"], 16)
    theirs = [(m["base_addr"], m.get("debug_id")) for m in walked["modules"]]
    ours = [(f"0x{m.base:016x}", m.debug_id) for m in s.modules]
    assert ours == theirs
    for m, w in zip(s.modules, walked["modules"]):
        if m.build_id:
            assert m.build_id == w["code_id"]
