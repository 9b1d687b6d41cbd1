"""The built-in sample minidump (mdstream.sample): valid for parsers nobody here wrote."""

from __future__ import annotations

import contextlib
import logging
import shutil
import struct
import subprocess

import pytest

from mdstream.sample import MARKER, build_sample_minidump, sample_facts


@pytest.fixture(scope="module")
def sample() -> bytes:
    return build_sample_minidump(0)


@pytest.fixture(scope="module")
def facts() -> dict:
    return sample_facts(0)


@contextlib.contextmanager
def quiet_logging():
    """The PyPI parser logs (with tracebacks) what it cannot read; keep test output clean."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def test_deterministic_and_seeded():
    a = build_sample_minidump(0)
    assert a == build_sample_minidump(0)
    b = build_sample_minidump(7)
    assert b != a
    assert b == build_sample_minidump(7)
    # A meaningful amount of data, still small.
    assert 200 * 1024 <= len(a) <= 600 * 1024


def test_header_and_directory(sample, facts):
    signature, version, count, dir_rva, checksum, timestamp, flags = struct.unpack_from("<4sIIIIIQ", sample)
    assert signature == b"MDMP"
    assert version & 0xFFFF == 0xA793
    assert dir_rva == 0x20
    assert checksum == 0
    assert timestamp == facts["timestamp"]
    assert flags == 0x1101  # WithDataSegs | WithProcessThreadData | WithThreadInfo
    types = [struct.unpack_from("<III", sample, dir_rva + 12 * i)[0] for i in range(count)]
    assert types == facts["streams"]
    assert len(set(types)) == len(types)
    for i in range(count):
        _, size, rva = struct.unpack_from("<III", sample, dir_rva + 12 * i)
        assert 0 < rva and rva + size <= len(sample)


def test_mdstream_reader_finds_no_problem(sample, facts):
    from mdstream.minidump import iter_regions, read_info

    info = read_info(sample)
    assert info.problems == []
    assert [s.type for s in info.streams] == facts["streams"]
    assert [s.type_name for s in info.streams] == [
        "ThreadListStream", "ModuleListStream", "MemoryListStream", "ExceptionStream", "SystemInfoStream",
        "MiscInfoStream", "ThreadInfoListStream"]
    regions = list(iter_regions(sample))
    assert [r for r in regions if r.problem] == []
    contexts = [r for r in regions if r.kind == "context"]
    assert len(contexts) == len(facts["threads"]) + 1  # + the exception's
    assert all(r.size == 1232 for r in contexts)
    memory = [(r.start, r.size) for r in regions if r.kind == "memory" and r.label.startswith("MemoryListStream[")]
    assert len(memory) == len(facts["memory"])
    assert sum(size for _, size in memory) == facts["memory_bytes"]


def test_pypi_minidump_parser_reads_it_back(sample, facts):
    minidumpfile = pytest.importorskip("minidump.minidumpfile")
    from minidump.streams.SystemInfoStream import PROCESSOR_ARCHITECTURE

    with quiet_logging():
        md = minidumpfile.MinidumpFile.parse_bytes(sample)
    assert md.sysinfo.ProcessorArchitecture == PROCESSOR_ARCHITECTURE.AMD64
    assert (md.sysinfo.MajorVersion, md.sysinfo.MinorVersion, md.sysinfo.BuildNumber) == (6, 1, 7601)
    assert md.sysinfo.CSDVersion == facts["csd_version"]

    threads = md.threads.threads
    assert [t.ThreadId for t in threads] == [t["id"] for t in facts["threads"]]
    for parsed, want in zip(threads, facts["threads"]):
        assert parsed.Teb == want["teb"]
        assert parsed.Stack.StartOfMemoryRange == want["stack_start"]
        assert parsed.Stack.DataSize == want["stack_size"]
        assert parsed.ThreadContext.DataSize == 1232
        assert parsed.ContextObject is not None
        assert parsed.ContextObject.Rip == want["rip"]
        assert parsed.ContextObject.Rsp == want["rsp"]
        assert want["stack_start"] <= parsed.ContextObject.Rsp < want["stack_start"] + want["stack_size"]

    modules = md.modules.modules
    assert [(m.name, m.baseaddress, m.size) for m in modules] == [
        (m["name"], m["base"], m["size"]) for m in facts["modules"]]

    segments = [(s.start_virtual_address, s.size) for s in md.memory_segments.memory_segments]
    assert segments == facts["memory"]

    reader = md.get_reader()
    assert reader.read(facts["marker_address"], len(MARKER)) == MARKER
    for thread in facts["threads"]:  # every stack reads back whole
        assert len(reader.read(thread["stack_start"], thread["stack_size"])) == thread["stack_size"]

    # The PEB and process parameters are in the dumped memory.
    assert md.peb is not None
    assert md.peb.image_path == facts["image_path"]
    assert md.peb.command_line == facts["command_line"]
    assert {"name": "MDSTREAM_SAMPLE", "value": "1"} in md.peb.environment_variables

    exc = md.exception.exception_records[0]
    assert exc.ThreadId == facts["threads"][0]["id"]
    assert exc.ExceptionRecord.ExceptionCode_raw == facts["exception_code"]
    assert md.misc_info.ProcessId == facts["process_id"]


def test_codeview_records_are_rsds(sample, facts):
    count = struct.unpack_from("<I", sample, _stream_rva(sample, 4))[0]
    assert count == len(facts["modules"])
    base = _stream_rva(sample, 4) + 4
    for i, module in enumerate(facts["modules"]):
        entry = base + 108 * i
        cv_size, cv_rva = struct.unpack_from("<II", sample, entry + 76)
        cv = sample[cv_rva:cv_rva + cv_size]
        assert cv[:4] == b"RSDS"
        assert cv[24:-1].decode() == module["pdb"] and cv[-1] == 0
        name_rva = struct.unpack_from("<I", sample, entry + 20)[0]
        length = struct.unpack_from("<I", sample, name_rva)[0]
        assert sample[name_rva + 4:name_rva + 4 + length].decode("utf-16-le") == module["name"]
        assert sample[name_rva + 4 + length:name_rva + 6 + length] == b"\0\0"


def _stream_rva(data: bytes, stream_type: int) -> int:
    count, dir_rva = struct.unpack_from("<II", data, 8)
    for i in range(count):
        t, _, rva = struct.unpack_from("<III", data, dir_rva + 12 * i)
        if t == stream_type:
            return rva
    raise KeyError(stream_type)


def test_udmp_parser_accepts_it(sample, facts, tmp_path):
    udmp_parser = pytest.importorskip("udmp_parser")
    path = tmp_path / "sample.dmp"
    path.write_bytes(sample)
    parser = udmp_parser.UserDumpParser()
    assert parser.Parse(str(path))
    assert len(parser.Threads()) == len(facts["threads"])
    assert sorted(m.ModuleName for m in parser.Modules().values()) == sorted(m["name"] for m in facts["modules"])


@pytest.mark.skipif(shutil.which("obj2yaml") is None, reason="LLVM's obj2yaml is not installed (apt-get install llvm)")
def test_obj2yaml_strict_bounds_check(sample, tmp_path):
    path = tmp_path / "sample.dmp"
    path.write_bytes(sample)
    done = subprocess.run(["obj2yaml", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("--- !minidump")
    for word in ("ThreadList", "ModuleList", "MemoryList", "Exception", "SystemInfo", "MiscInfo",
                 "sample.exe", "ntdll.dll", "CSD Version:     Service Pack 1", "Processor Arch:  AMD64"):
        assert word in out
    # The checker really is strict: the same dump cut by one byte is refused.
    cut = tmp_path / "cut.dmp"
    cut.write_bytes(sample[:-1])
    assert subprocess.run(["obj2yaml", str(cut)], capture_output=True, timeout=60).returncode != 0


@pytest.mark.parametrize("schedule", ["writer", "sequential", "shuffled"])
def test_schedules_reproduce_it(sample, tmp_path, schedule):
    import numpy as np

    from mdstream.schedules import plan_for

    path = tmp_path / "sample.dmp"
    path.write_bytes(sample)
    plan = plan_for(path, schedule=schedule, seed=3)
    assert plan.apply().tobytes() == sample
    if schedule == "writer":
        # The memory goes in 1 KiB writes, the structures in small ones, like DbgHelp.
        assert int(np.count_nonzero(plan.lengths == 1024)) >= 200
        assert int(np.count_nonzero(plan.lengths <= 16)) >= 50
