"""The ``mdstream`` command: replay, drain, info, dump, demo, and its failure modes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
from conftest import NO_FIXTURES, fixture_params

import mdstream._ring
import mdstream._sinks
from mdstream import FileSink, Ring, cli
from mdstream.cli import main, parse_size
from mdstream.sample import build_sample_minidump

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "dumps"
FIXTURE_DUMPS = sorted(FIXTURES.glob("*.dmp")) if FIXTURES.is_dir() else []
SCHEDULES = ["writer", "sequential", "shuffled"]
RESULT_KEYS = {"format", "status", "written_bytes", "output_size", "rewritten_bytes", "writes", "records", "seconds", "gbps",
               "output", "sha256", "size"}

needs_fixtures = pytest.mark.skipif(not FIXTURE_DUMPS, reason=NO_FIXTURES)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_json(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    assert out.count("\n") == 1, "one JSON object on one line"
    return json.loads(out)


def assert_one_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mdstream: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def leftovers(directory: Path) -> list[str]:
    """Temporary or partial files a failed run might leave behind."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith(".") or "partial" in p.name)


@contextlib.contextmanager
def quiet_logging():
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def pypi_parse(path: Path):
    """Threads, modules and memory ranges (with their bytes) as the PyPI ``minidump`` package reads them."""
    minidumpfile = pytest.importorskip("minidump.minidumpfile")
    with quiet_logging():
        md = minidumpfile.MinidumpFile.parse(str(path))
    threads = [(t.ThreadId, t.Teb, t.Stack.StartOfMemoryRange, t.Stack.DataSize, t.ThreadContext.DataSize)
               for t in (md.threads.threads if md.threads else [])]
    modules = [(m.name, m.baseaddress, m.size) for m in (md.modules.modules if md.modules else [])]
    segments = []
    for lst in (md.memory_segments, md.memory_segments_64):
        if lst is not None:
            segments += [(s.start_virtual_address, s.size) for s in lst.memory_segments]
    reader = md.get_reader()
    contents = {}
    for start, size in segments:
        with quiet_logging():
            contents[start] = hashlib.sha256(reader.read(start, size)).hexdigest()
    return {"threads": threads, "modules": modules, "memory": segments, "contents": contents}


@pytest.fixture
def ring_name():
    name = f"mdstream-cli-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/dev/shm/{name}")


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.dmp"
    path.write_bytes(build_sample_minidump(0))
    return path


# --------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dump", fixture_params())
def test_replay_fixture_byte_identical(capsys, tmp_path, dump, schedule):
    out = tmp_path / "out.dmp"
    result = run_json(capsys, ["replay", str(dump), "-o", str(out), "--schedule", schedule, "--json"])
    original = dump.read_bytes()
    assert out.read_bytes() == original
    assert result["sha256"] == hashlib.sha256(original).hexdigest() == sha256(out)
    assert RESULT_KEYS | {"schedule"} <= set(result)
    assert result["schedule"] == schedule
    assert result["format"] == "mdstream-replay/1"
    assert result["size"] == len(original) == result["output_size"]
    assert result["output"] == str(out.resolve()) and result["source"] == os.path.abspath(dump)
    # Every schedule covers the whole file, so what was written beyond its size was written twice.
    assert result["written_bytes"] >= len(original)
    assert result["rewritten_bytes"] == result["written_bytes"] - len(original)
    assert result["writes"] == result["planned_writes"] >= 1
    assert result["status"] == "ok"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []
    # A parser nobody here wrote reads the same threads, modules and memory.
    assert pypi_parse(out) == pypi_parse(dump)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_replay_sample_every_schedule(capsys, tmp_path, sample_path, schedule):
    out = tmp_path / "out.dmp"
    result = run_json(capsys, ["replay", str(sample_path), "-o", str(out), "--schedule", schedule, "--chunk", "2K",
                               "--seed", "5", "--ring-capacity", "64K", "--json"])
    assert out.read_bytes() == sample_path.read_bytes()
    assert result["sha256"] == sha256(sample_path)
    assert result["ring_capacity"] == 64 * 1024 and result["chunk"] == 2048
    parsed = pypi_parse(out)
    assert parsed == pypi_parse(sample_path)
    assert len(parsed["threads"]) == 3 and len(parsed["modules"]) == 2 and len(parsed["memory"]) == 9


def test_replay_human_summary(capsys, tmp_path, sample_path):
    out = tmp_path / "out.dmp"
    assert main(["replay", str(sample_path), "-o", str(out)]) == 0
    text, err = capsys.readouterr()
    assert err == ""  # no progress bar when not on a terminal
    assert "writer schedule" in text and "writes" in text and "GB/s" in text
    assert sha256(out) in text and str(out.resolve()) in text


def test_replay_quiet_prints_nothing(capsys, tmp_path, sample_path):
    out = tmp_path / "out.dmp"
    assert main(["replay", str(sample_path), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert out.read_bytes() == sample_path.read_bytes()


def test_replay_refuses_an_existing_output_without_force(capsys, tmp_path, sample_path):
    out = tmp_path / "out.dmp"
    out.write_bytes(b"old contents")
    assert main(["replay", str(sample_path), "-o", str(out)]) == 1
    assert_one_error_line(capsys.readouterr().err, str(out), "exists; use --force to replace it")
    assert out.read_bytes() == b"old contents" and leftovers(tmp_path) == []
    run_json(capsys, ["replay", str(sample_path), "-o", str(out), "--json", "--force"])
    assert out.read_bytes() == sample_path.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_trace_replays_to_the_same_bytes(capsys, tmp_path, sample_path, schedule):
    from mdstream.schedules import plan_for
    from mdstream.trace import MAGIC, read_trace

    out = tmp_path / "out.dmp"
    trace = tmp_path / "out.mdtrace"
    first = run_json(capsys, ["replay", str(sample_path), "-o", str(out), "--schedule", schedule,
                              "--trace", str(trace), "--json"])
    assert first["trace"] == str(trace.resolve())
    assert trace.read_bytes()[:8] == MAGIC
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600
    # The trace keeps the writer's exact writes (no coalescing): same count, same order.
    recorded = read_trace(trace)
    planned = plan_for(sample_path, schedule=schedule)
    assert recorded.count == first["writes"] == first["trace_records"] == planned.count
    assert recorded.offsets.tolist() == planned.offsets.tolist()
    assert recorded.lengths.tolist() == planned.lengths.tolist()

    again = tmp_path / "again.dmp"
    second = run_json(capsys, ["replay", str(trace), "-o", str(again), "--json"])
    assert second["schedule"] == "trace" and second["source_kind"] == "trace"
    assert again.read_bytes() == sample_path.read_bytes()
    assert second["sha256"] == first["sha256"] == sha256(sample_path)
    assert second["writes"] == recorded.count


@needs_fixtures
def test_fixture_trace_roundtrip(capsys, tmp_path):
    dump = FIXTURE_DUMPS[0]
    trace = tmp_path / "t.mdtrace"
    run_json(capsys, ["replay", str(dump), "-o", str(tmp_path / "a.dmp"), "--trace", str(trace), "--json"])
    result = run_json(capsys, ["replay", str(trace), "-o", str(tmp_path / "b.dmp"), "--json"])
    assert (tmp_path / "b.dmp").read_bytes() == dump.read_bytes()
    assert result["sha256"] == sha256(dump)


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


def test_demo_with_output(capsys, tmp_path):
    out = tmp_path / "demo.dmp"
    assert main(["demo", "-o", str(out)]) == 0
    text, err = capsys.readouterr()
    assert err == ""
    assert out.read_bytes() == build_sample_minidump(0)
    assert "byte-identical" in text and str(out.resolve()) in text
    assert "IoWriteAllCallback" in text and "GB/s" in text and "ThreadListStream" in text
    assert len(text.splitlines()) <= 8
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.dmp"]


def test_demo_json(capsys, tmp_path):
    result = run_json(capsys, ["demo", "--json", "-o", str(tmp_path / "d.dmp")])
    assert result["identical"] is True
    assert result["sha256"] == result["expected_sha256"] == hashlib.sha256(build_sample_minidump(0)).hexdigest()
    sizes = result["write_sizes"]
    assert sizes["1024"] > 100  # 1 KiB memory chunks, as DbgHelp writes them
    assert sum(sizes.values()) == result["writes"]  # the breakdown adds up
    assert result["seeks_back"] > 0
    # The header and directory are written twice (placeholders, then the real values).
    assert result["written_bytes"] == result["output_size"] + result["rewritten_bytes"]
    assert result["output_size"] == result["sample_size"] and result["rewritten_bytes"] > 0
    assert result["format"] == "mdstream-demo/1"
    assert result["streams"][:3] == ["ThreadListStream", "ModuleListStream", "MemoryListStream"]
    assert RESULT_KEYS <= set(result)


def test_bare_demo_uses_a_private_temp_dir(capsys):
    assert main(["demo"]) == 0
    text, _ = capsys.readouterr()
    path = Path(text.strip().splitlines()[-1].split("mdstream info ", 1)[1])
    try:
        assert path.name == "mdstream-demo.dmp"
        assert path.read_bytes() == build_sample_minidump(0)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert sorted(p.name for p in path.parent.iterdir()) == ["mdstream-demo.dmp"]
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            path.parent.rmdir()


# --------------------------------------------------------------------------
# subprocess: the real entry point
# --------------------------------------------------------------------------


def run_module(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "mdstream", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_python_m_mdstream(tmp_path, sample_path):
    out = tmp_path / "out.dmp"
    done = run_module("replay", str(sample_path), "-o", str(out), "--schedule", "shuffled", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["sha256"] == sha256(sample_path)
    assert out.read_bytes() == sample_path.read_bytes()

    done = run_module("demo", "-o", str(tmp_path / "demo.dmp"))
    assert done.returncode == 0, done.stderr
    assert "byte-identical" in done.stdout

    done = run_module("info", str(tmp_path / "missing.dmp"))
    assert done.returncode == 1
    assert_one_error_line(done.stderr, "missing.dmp")

    done = run_module("--version")
    assert done.returncode == 0 and "mdstream" in done.stdout


# --------------------------------------------------------------------------
# drain
# --------------------------------------------------------------------------

PRODUCER = textwrap.dedent("""
    import sys
    from mdstream import DumpCallback, Ring
    from mdstream.simulator import replay

    name, source = sys.argv[1], sys.argv[2]
    ring = Ring.create(name, 64 * 1024)   # smaller than the dump: both sides must run together
    callback = DumpCallback(ring, deadline=30.0)
    print("ready", flush=True)
    result = replay(source, callback, drain_here=False, schedule="writer", timeout=60)
    print("done", result.writes, flush=True)
    ring.close()
""")


def start_producer(code, *args):
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        pytest.fail(f"producer did not start: {line!r} {child.stderr.read()}")
    return child


def test_drain_from_another_process(capsys, tmp_path, sample_path, ring_name):
    child = start_producer(PRODUCER, ring_name, str(sample_path))
    try:
        out = tmp_path / "drained.dmp"
        result = run_json(capsys, ["drain", ring_name, "-o", str(out), "--timeout", "30", "--json"])
    finally:
        stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert out.read_bytes() == sample_path.read_bytes()
    assert result["sha256"] == sha256(sample_path)
    assert RESULT_KEYS <= set(result) and "schedule" not in result
    assert result["ring"] == ring_name and result["format"] == "mdstream-drain/1"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    writes = int(stdout.split()[-1])
    assert result["written_bytes"] >= sample_path.stat().st_size and writes > 100


def test_drain_missing_ring(capsys, tmp_path):
    out = tmp_path / "out.dmp"
    assert main(["drain", f"mdstream-no-such-ring-{secrets.token_hex(4)}", "-o", str(out), "--timeout", "0.2"]) == 1
    assert_one_error_line(capsys.readouterr().err, "no ring appeared within 0.2 s")
    assert list(tmp_path.iterdir()) == []


def test_drain_waits_for_the_ring_to_appear(tmp_path, ring_name, sample_path):
    """The user guide's order: the consumer first, the producer's ring a moment later."""
    out = tmp_path / "out.dmp"
    consumer = subprocess.Popen([sys.executable, "-m", "mdstream", "drain", ring_name, "-o", str(out),
                                 "--timeout", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.7)
        assert consumer.poll() is None, consumer.communicate()
        producer = start_producer(PRODUCER, ring_name, str(sample_path))
        stdout, stderr = consumer.communicate(timeout=60)
        assert producer.wait(timeout=60) == 0, producer.stderr.read()
        assert producer.stdout.read().startswith("done")
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert consumer.returncode == 0, stderr
    assert json.loads(stdout)["sha256"] == sha256(sample_path) == sha256(out)


def test_drain_aborted_ring(capsys, tmp_path, ring_name):
    ring = Ring.create(ring_name, 64 * 1024)
    try:
        ring.write(0, b"MDMP" + bytes(60))
        ring.abort(0x80004005, "the dump writer failed")
        assert main(["drain", ring_name, "-o", str(tmp_path / "out.dmp")]) == 1
    finally:
        ring.close()
    assert_one_error_line(capsys.readouterr().err, "aborted", "the dump writer failed")
    assert list(tmp_path.iterdir()) == []


def test_drain_ring_aborted_midway(capsys, tmp_path, ring_name):
    ring = Ring.create(ring_name, 64 * 1024)
    try:
        for i in range(4):
            ring.write(i * 512, bytes([i + 1]) * 512)
        ring.flush()
        timer = threading.Timer(0.3, ring.abort, (0x80070070, "the dump writer ran out of disk"))
        timer.start()
        out = tmp_path / "out.dmp"
        assert main(["drain", ring_name, "-o", str(out), "--timeout", "20"]) == 1
        timer.join()
    finally:
        ring.close()
    assert_one_error_line(capsys.readouterr().err, "aborted", "0x80070070", "ran out of disk")
    assert not out.exists() and leftovers(tmp_path) == []


PRODUCER_DIES = textwrap.dedent("""
    import os, sys, time
    from mdstream import Ring

    ring = Ring.create(sys.argv[1], 64 * 1024)
    for i in range(8):
        ring.write(i * 1024, bytes([i]) * 1024)
    ring.flush()
    print("ready", flush=True)
    sys.stdin.readline()      # the consumer attached
    time.sleep(0.3)
    os._exit(3)               # die without finishing the ring
""")


def test_drain_producer_dies(capsys, tmp_path, ring_name):
    child = subprocess.Popen([sys.executable, "-c", PRODUCER_DIES, ring_name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    out = tmp_path / "out.dmp"
    real_attach = Ring.attach

    def attach_then_release(name):
        ring = real_attach(name)
        child.stdin.write("go\n")
        child.stdin.flush()
        # Reap the child as soon as it dies: a zombie still "exists" for kill(pid, 0).
        threading.Thread(target=child.wait, daemon=True).start()
        return ring

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mdstream._ring, "Ring", types.SimpleNamespace(attach=attach_then_release))
            rc = main(["drain", ring_name, "-o", str(out), "--timeout", "20"])
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=30)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert rc == 1
    assert_one_error_line(capsys.readouterr().err, "producer", "gone")
    assert not out.exists() and leftovers(tmp_path) == []


def test_drain_timeout(capsys, tmp_path, ring_name):
    ring = Ring.create(ring_name, 64 * 1024)  # a producer that never writes
    try:
        assert main(["drain", ring_name, "-o", str(tmp_path / "out.dmp"), "--timeout", "0.3"]) == 1
    finally:
        ring.close()
    assert_one_error_line(capsys.readouterr().err, "0.3")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("dump", fixture_params())
def test_info_fixture(capsys, dump):
    from mdstream.minidump import read_info

    assert main(["info", str(dump)]) == 0
    text, err = capsys.readouterr()
    assert err == ""
    info = read_info(dump)
    assert "MDMP" in text and f"0x{info.version:08x}" in text
    for s in info.streams:
        assert s.type_name in text
    result = run_json(capsys, ["info", str(dump), "--json"])
    assert result["number_of_streams"] == len(result["streams"]) == info.number_of_streams
    assert result["problems"] == [] and result["ok"] is True


@needs_fixtures
def test_info_names_dbghelp_flags(capsys):
    dump = FIXTURES / "dbghelp-win10-x64_tiny-exe-fastfail.dmp"
    if not dump.exists():
        pytest.skip("fixture absent")
    result = run_json(capsys, ["info", str(dump), "--json"])
    assert result["flags"] == 0x100
    assert result["flag_names"] == ["MiniDumpWithProcessThreadData"]
    assert result["version_hex"] == "0xa061a793"


def test_info_sample_flags(capsys, sample_path):
    result = run_json(capsys, ["info", str(sample_path), "--json"])
    assert result["flag_names"] == ["MiniDumpWithDataSegs", "MiniDumpWithProcessThreadData", "MiniDumpWithThreadInfo"]
    assert [s["type_name"] for s in result["streams"]][:2] == ["ThreadListStream", "ModuleListStream"]


def test_info_truncated_dump_reports_out_of_file_ranges(capsys, tmp_path, sample_path):
    cut = tmp_path / "cut.dmp"
    cut.write_bytes(sample_path.read_bytes()[:-5000])
    assert main(["info", str(cut)]) == 1
    out, err = capsys.readouterr()
    assert "ThreadListStream" in out and "past end of file" in out  # the report is still printed
    assert_one_error_line(err, "cut.dmp", "past end of file")

    assert main(["info", str(cut), "--json"]) == 1
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["ok"] is False and any("past end of file" in p for p in result["problems"])
    assert_one_error_line(err)


def test_info_stream_outside_the_file(capsys, tmp_path, sample_path):
    data = bytearray(sample_path.read_bytes())
    struct.pack_into("<I", data, 0x20 + 8, len(data) + 100)  # ThreadList's RVA past the end
    bad = tmp_path / "bad.dmp"
    bad.write_bytes(bytes(data))
    assert main(["info", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert "ends past end of file" in out
    assert_one_error_line(err, "stream 0 (ThreadListStream)")


@pytest.mark.parametrize("content", [b"", b"MDM", b"PK\x03\x04" + bytes(100), b"MDTRACE1" + bytes(40)])
def test_info_refuses_non_minidumps(capsys, tmp_path, content):
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    assert main(["info", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, "not a minidump")


# --------------------------------------------------------------------------
# dump
# --------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32" or sys.platform.startswith("linux"),
                    reason="Windows and Linux have a dump writer")
def test_dump_elsewhere_explains_itself(capsys, tmp_path):
    assert main(["dump", "1234", "-o", str(tmp_path / "x.dmp"), "--type", "WithFullMemory|WithHandleData"]) == 2
    assert_one_error_line(capsys.readouterr().err, "DbgHelp", "MiniDumpWriteDump", sys.platform)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux writer")
def test_dump_a_live_linux_process(capsys, tmp_path):
    import json
    import subprocess
    import time

    from mdstream.minidump import read_info

    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        out = tmp_path / "live.dmp"
        assert main(["dump", str(target.pid), "-o", str(out), "--json"]) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["pid"] == target.pid and payload["size"] == out.stat().st_size
        assert out.stat().st_mode & 0o777 == 0o600
        names = [s.type_name for s in read_info(out).streams]
        assert "ThreadListStream" in names and "ModuleListStream" in names
        with open(f"/proc/{target.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] in "RS"  # left running
    finally:
        target.kill()
        target.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux writer")
def test_dump_of_a_missing_process_is_one_clear_line(capsys, tmp_path):
    assert main(["dump", "999999999", "-o", str(tmp_path / "x.dmp")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_dump_bad_type_is_a_usage_error(capsys, tmp_path):
    assert main(["dump", "1234", "-o", str(tmp_path / "x.dmp"), "--type", "WithEverything"]) == 2
    assert "WithEverything" in capsys.readouterr().err


# --------------------------------------------------------------------------
# failures: one line, exit 1, nothing under the final name
# --------------------------------------------------------------------------


def test_missing_source(capsys, tmp_path):
    assert main(["replay", str(tmp_path / "nope.dmp"), "-o", str(tmp_path / "out.dmp")]) == 1
    assert_one_error_line(capsys.readouterr().err, "nope.dmp", "no such file")
    assert list(tmp_path.iterdir()) == []


def test_non_minidump_source(capsys, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("hello, this is not a dump\n")
    assert main(["replay", str(src), "-o", str(tmp_path / "out.dmp")]) == 1
    assert_one_error_line(capsys.readouterr().err, "not a minidump")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _trace_bytes(records):
    body = b"MDTRACE1"
    for offset, data in records:
        body += struct.pack("<QII", offset, len(data), 0) + data
    return body


@pytest.mark.parametrize("cut, record, byte", [
    (8 + 16 + 100 + 16 + 50, 1, 8 + 16 + 100),   # record 1's data cut short
    (8 + 16 + 100 + 5, 1, 8 + 16 + 100),         # record 1's header cut short
    (8 + 16 + 10, 0, 8),                         # record 0's data cut short
])
def test_truncated_trace(capsys, tmp_path, cut, record, byte):
    trace = tmp_path / "cut.mdtrace"
    trace.write_bytes(_trace_bytes([(0, b"M" * 100), (100, b"D" * 200), (300, b"P" * 10)])[:cut])
    out = tmp_path / "out.dmp"
    assert main(["replay", str(trace), "-o", str(out)]) == 1
    assert_one_error_line(capsys.readouterr().err, f"record {record}", f"byte {byte}")
    assert not out.exists() and leftovers(tmp_path) == []


def test_corrupt_trace_length(capsys, tmp_path):
    # A record whose length field is garbage: its data would run past the end.
    trace = tmp_path / "bad.mdtrace"
    body = _trace_bytes([(0, b"x" * 32), (32, b"y" * 32)])
    body = body[:8 + 16 + 32 + 8] + struct.pack("<I", 0xFFFF0000) + body[8 + 16 + 32 + 12:]
    trace.write_bytes(body)
    assert main(["replay", str(trace), "-o", str(tmp_path / "out.dmp")]) == 1
    assert_one_error_line(capsys.readouterr().err, "record 1", f"byte {8 + 16 + 32}")


class FailingFileSink(FileSink):
    """A FileSink whose disk fills up (or whose user presses Ctrl-C) after a few batches."""

    error: BaseException = OSError(errno.ENOSPC, "No space left on device")
    after = 2
    seen = 0

    def consume(self, batch):
        type(self).seen += 1
        if type(self).seen > self.after:
            raise self.error
        super().consume(batch)


@pytest.fixture
def failing_sink(monkeypatch):
    FailingFileSink.seen = 0
    monkeypatch.setattr(mdstream._sinks, "FileSink", FailingFileSink)  # the CLI imports it when it runs
    return FailingFileSink


def test_disk_full_leaves_nothing(capsys, tmp_path, sample_path, failing_sink, monkeypatch):
    monkeypatch.setattr(failing_sink, "error", OSError(errno.ENOSPC, "writing out.dmp: No space left on device"))
    out = tmp_path / "out.dmp"
    assert main(["replay", str(sample_path), "-o", str(out), "--ring-capacity", "8K", "--schedule", "sequential",
                 "--chunk", "1K"]) == 1
    assert_one_error_line(capsys.readouterr().err, "No space left on device")
    assert not out.exists() and leftovers(tmp_path) == []


def test_failed_replay_keeps_the_old_file(capsys, tmp_path, sample_path, failing_sink, monkeypatch):
    monkeypatch.setattr(failing_sink, "error", OSError(errno.EIO, "Input/output error"))
    out = tmp_path / "out.dmp"
    out.write_bytes(b"yesterday's dump")
    assert main(["replay", str(sample_path), "-o", str(out), "--ring-capacity", "8K", "--force"]) == 1
    assert_one_error_line(capsys.readouterr().err, "Input/output error")
    assert out.read_bytes() == b"yesterday's dump"
    assert leftovers(tmp_path) == []


def test_keyboard_interrupt(capsys, tmp_path, sample_path, failing_sink, monkeypatch):
    monkeypatch.setattr(failing_sink, "error", KeyboardInterrupt())
    out = tmp_path / "out.dmp"
    assert main(["replay", str(sample_path), "-o", str(out), "--ring-capacity", "8K"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "mdstream: error: interrupted"
    assert not out.exists() and leftovers(tmp_path) == []


def test_interrupted_trace_keeps_partial_trace(capsys, tmp_path, sample_path, failing_sink, monkeypatch):
    monkeypatch.setattr(failing_sink, "error", OSError(errno.ENOSPC, "No space left on device"))
    out, trace = tmp_path / "out.dmp", tmp_path / "t.mdtrace"
    assert main(["replay", str(sample_path), "-o", str(out), "--trace", str(trace), "--ring-capacity", "8K"]) == 1
    assert_one_error_line(capsys.readouterr().err, "No space left on device", "partial trace", str(trace))
    assert not out.exists()
    assert trace.read_bytes()[:8] == b"MDTRACE1"


def _small_tmpfs(path: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        path.rmdir()
        return False
    return True


def test_real_full_disk(capsys, tmp_path, sample_path):
    """ENOSPC from a real (tiny tmpfs) filesystem, when this machine lets us mount one."""
    small = tmp_path / "small"
    if not _small_tmpfs(small, "64k"):
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    try:
        out = small / "out.dmp"
        assert main(["replay", str(sample_path), "-o", str(out)]) == 1
        assert_one_error_line(capsys.readouterr().err, "No space left on device")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_output_directory_problems(capsys, tmp_path, sample_path):
    assert main(["replay", str(sample_path), "-o", str(tmp_path)]) == 1
    assert_one_error_line(capsys.readouterr().err, "is a directory")
    assert main(["replay", str(sample_path), "-o", str(tmp_path / "no" / "such" / "dir.dmp")]) == 1
    assert_one_error_line(capsys.readouterr().err, "does not exist")


def test_failures_in_a_subprocess_have_no_traceback(tmp_path):
    trace = tmp_path / "cut.mdtrace"
    trace.write_bytes(_trace_bytes([(0, b"a" * 64), (64, b"b" * 64)])[:-10])
    done = run_module("replay", str(trace), "-o", str(tmp_path / "o.dmp"))
    assert done.returncode == 1 and done.stdout == ""
    assert_one_error_line(done.stderr, "record 1", "byte 88")
    done = run_module("drain", f"mdstream-no-such-ring-{secrets.token_hex(4)}", "-o", str(tmp_path / "o.dmp"),
                      "--timeout", "0.1")
    assert done.returncode == 1
    assert_one_error_line(done.stderr, "no ring")
    if sys.platform.startswith("linux"):
        done = run_module("dump", "999999999", "-o", str(tmp_path / "o.dmp"))
        assert done.returncode == 1
        assert_one_error_line(done.stderr, "999999999")
    elif sys.platform != "win32":
        done = run_module("dump", "1", "-o", str(tmp_path / "o.dmp"))
        assert done.returncode == 2
        assert_one_error_line(done.stderr, "needs Windows")


# --------------------------------------------------------------------------
# usage
# --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["replay", "x.dmp"],                                   # -o missing
    ["replay", "x.dmp", "-o", "y", "--schedule", "random"],
    ["replay", "x.dmp", "-o", "y", "--ring-size", "4Q"],
    ["replay", "x.dmp", "-o", "y", "--ring-size", "1"],
    ["replay", "x.dmp", "-o", "y", "--ring-size", "64G"],
    ["replay", "x.dmp", "-o", "y", "--chunk", "0"],
    ["replay", "x.dmp", "-o", "y", "--seed", "-1"],
    ["drain", "r", "-o", "y", "--timeout", "soon"],
    ["dump", "notapid", "-o", "y"],
])
def test_usage_errors(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("usage:" in err or "error" in err)


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "replay" in capsys.readouterr().out
    assert main(["info", "--help"]) == 0
    assert "outside the file" in capsys.readouterr().out


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("64K", 65536), ("64k", 65536), ("4M", 4 << 20), ("4MiB", 4 << 20), ("4MB", 4 << 20),
    ("1G", 1 << 30), ("10b", 10), (" 2m ", 2 << 20),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "4Q", "-1", "1.5M", "4 M B", "0x10"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


# --------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------


def test_progress_bar_draws_after_the_delay():
    from mdstream.pipeline import Progress

    stream = io.StringIO()
    bar = cli.ProgressBar(True, "replay", delay=1.0, file=stream)
    bar(Progress(1000, 1, 1, 0.5, 10_000))
    assert stream.getvalue() == ""  # quick runs print nothing
    bar.started -= 1.0  # the command has now run for the delay (planning included)
    bar(Progress(4000, 4, 40, 0.1, 10_000))
    bar(Progress(10_000, 10, 100, 1.5, 10_000))
    bar.close()
    drawn = stream.getvalue()
    assert "replay" in drawn and "writes" in drawn


def test_progress_bar_disabled():
    from mdstream.pipeline import Progress

    stream = io.StringIO()
    bar = cli.ProgressBar(False, "replay", delay=0, file=stream)
    bar(Progress(1000, 1, 1, 5.0, 10_000))
    bar.close()
    assert stream.getvalue() == ""


def test_progress_off_unless_both_streams_are_terminals(monkeypatch):
    import argparse

    class Tty(io.StringIO):
        def isatty(self):
            return True

    args = argparse.Namespace(quiet=False, json=False)
    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setattr(sys, "stdout", Tty())
    assert cli._progress_for(args, "x").enabled
    assert not cli._progress_for(argparse.Namespace(quiet=True, json=False), "x").enabled
    assert not cli._progress_for(argparse.Namespace(quiet=False, json=True), "x").enabled
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert not cli._progress_for(args, "x").enabled


def test_closed_output_pipe_is_quiet(tmp_path):
    # A directory of 5000 (empty, private-type) streams: far more report than a pipe buffers.
    count = 5000
    dump = tmp_path / "many.dmp"
    dump.write_bytes(struct.pack("<4sIIIIIQ", b"MDMP", 0xA793, count, 32, 0, 0, 0)
                     + b"".join(struct.pack("<III", 0x10000 + i, 0, 0) for i in range(count)))
    child = subprocess.Popen([sys.executable, "-m", "mdstream", "info", str(dump)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout.read(20).startswith(b"file")
    child.stdout.close()  # like `mdstream info X | head -1`
    err = child.stderr.read()
    assert child.wait(timeout=60) == 141
    assert err == b""


# --------------------------------------------------------------------------
# one set of conventions for every command (issue 13)
# --------------------------------------------------------------------------


def test_every_command_refuses_an_existing_output_before_any_work(capsys, tmp_path, sample_path):
    out = tmp_path / "precious.dmp"
    out.write_bytes(b"yesterday's dump")
    no_ring = f"mdstream-no-such-ring-{secrets.token_hex(4)}"
    for argv in (["replay", str(sample_path), "-o", str(out)],
                 ["drain", no_ring, "-o", str(out)],          # refused before it even looks for the ring
                 ["dump", "999999999", "-o", str(out)],        # and before looking for the process
                 ["demo", "-o", str(out)],
                 ["spill", "finish", str(tmp_path / "missing.spill"), "-o", str(out)]):
        assert main(argv) == 1, argv
        assert_one_error_line(capsys.readouterr().err, f"{out}: exists; use --force to replace it")
        assert out.read_bytes() == b"yesterday's dump" and leftovers(tmp_path) == []
    assert main(["demo", "-o", str(out), "--force", "--quiet"]) == 0
    assert out.read_bytes() == build_sample_minidump(0)


def test_json_errors_are_one_object_on_stdout(capsys, tmp_path):
    missing = tmp_path / "missing.dmp"
    assert main(["info", str(missing), "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == f"mdstream: error: {missing}: no such minidump\n"
    assert json.loads(out) == {"format": "mdstream-info/1", "status": "error",
                               "error": f"{missing}: no such minidump", "exit": 1}
    # A usage error: the usage line and the error on stderr, the object (exit 2) on stdout.
    assert main(["replay", "--json"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("usage: mdstream replay") and "the following arguments are required" in err
    report = json.loads(out)
    assert report["format"] == "mdstream-replay/1" and report["exit"] == 2 and report["status"] == "error"
    assert main(["spill", "finish", "x.spill", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["format"] == "mdstream-spill-finish/1"


def test_a_damaged_dump_is_one_json_report_not_two(capsys, tmp_path, sample_path):
    cut = tmp_path / "cut.dmp"
    cut.write_bytes(sample_path.read_bytes()[:-1000])
    assert main(["info", str(cut), "--json"]) == 1
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    report = json.loads(out)
    assert report["ok"] is False and report["status"] == "ok" and report["problems"]
    assert_one_error_line(err, "damaged minidump")


def test_json_paths_are_absolute(capsys, tmp_path, sample_path, monkeypatch):
    (tmp_path / "in.dmp").write_bytes(sample_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    result = run_json(capsys, ["replay", "in.dmp", "-o", "out.dmp", "--trace", "out.mdtrace", "--json"])
    assert result["source"] == str(tmp_path / "in.dmp") and result["output"] == str(tmp_path / "out.dmp")
    assert result["trace"] == str(tmp_path / "out.mdtrace")
    report = run_json(capsys, ["info", "out.dmp", "--json"])
    assert report["path"] == str(tmp_path / "out.dmp") and report["format"] == "mdstream-info/1"


def test_drain_with_an_empty_ring_name_is_a_usage_error(capsys, tmp_path):
    assert main(["drain", "", "-o", str(tmp_path / "o.dmp")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage: mdstream drain")
    assert err.splitlines()[-1] == "mdstream drain: error: argument RING: empty ring name"


def test_drain_names_a_file_that_is_no_ring(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a ring")
    text.chmod(0o644)  # the ring's permission check would otherwise speak first
    assert main(["drain", str(text), "-o", str(tmp_path / "o.dmp")]) == 1
    assert_one_error_line(capsys.readouterr().err, f"{text}: not an mdstream ring (starts with b'hello, n'")
    short = tmp_path / "short.ring"
    short.write_bytes(b"MDSRING1" + bytes(100))
    short.chmod(0o600)
    assert main(["drain", str(short), "-o", str(tmp_path / "o.dmp")]) == 1
    assert_one_error_line(capsys.readouterr().err, "a truncated ring: 108 bytes, but its header alone is 4,096")


def test_replay_of_a_damaged_dump_warns_like_info(capsys, tmp_path, sample_path):
    cut = tmp_path / "cut.dmp"
    cut.write_bytes(sample_path.read_bytes()[:-1000])
    out = tmp_path / "out.dmp"
    assert main(["replay", str(cut), "-o", str(out), "--json"]) == 0
    stdout, err = capsys.readouterr()
    result = json.loads(stdout)
    assert result["source_problems"]
    first = result["source_problems"][0]
    assert err.splitlines()[0] == f"mdstream: warning: {cut} is damaged: {first}; replayed as it is"
    assert out.read_bytes() == cut.read_bytes()
    assert main(["info", str(cut)]) == 1  # the same file, the same verdict
    assert first in capsys.readouterr().err


def test_ctrl_c_after_the_output_is_in_place_says_so(capsys, tmp_path, sample_path, monkeypatch):
    def interrupted(path, show_progress=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_sha256", interrupted)
    out = tmp_path / "out.dmp"
    assert main(["replay", str(sample_path), "-o", str(out)]) == 130
    err = capsys.readouterr().err
    assert err == f"mdstream: error: interrupted after {out} was written completely (the summary was not printed)\n"
    assert out.read_bytes() == sample_path.read_bytes()


def _interrupted_before_mdstream_ran(err: str) -> bool:
    """The interrupt landed while Python's importer was still loading the package's first statement.

    ``python -m mdstream`` (and the console script) import the package before
    any of its code can run: a SIGINT inside importlib at that point is
    Python's, like one during site start-up.
    """
    lines = [line.strip() for line in err.splitlines()]
    ours = [i for i, line in enumerate(lines) if line.startswith("File ") and "/mdstream/" in line]
    if len(ours) != 1 or "/mdstream/__init__.py" not in lines[ours[0]]:
        return False
    first_statement = lines[ours[0] + 1] if ours[0] + 1 < len(lines) else ""
    rest = [line for line in lines[ours[0] + 2:] if line.startswith("File ")]
    return first_statement == "from __future__ import annotations" and all("importlib" in f for f in rest)


def test_ctrl_c_early_never_prints_a_traceback(tmp_path):
    """SIGINT during start-up (imports included) and early work: the one-line message, never a traceback."""
    import signal
    import time

    delays = [0.05, 0.15, 0.25, 0.4, 0.6]
    children = []
    for i, delay in enumerate(delays):
        child = subprocess.Popen([sys.executable, "-m", "mdstream", "demo", "-o", str(tmp_path / f"d{i}.dmp")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children.append((time.monotonic() + delay, child))
    for when, child in children:
        time.sleep(max(0.0, when - time.monotonic()))
        child.send_signal(signal.SIGINT)
    outcomes = []
    package = str(Path(cli.__file__).parent)
    for _, child in children:
        _, err = child.communicate(timeout=60)
        # Python's own start-up (site, encodings) can be interrupted before any mdstream code runs;
        # from the first line of mdstream on, no traceback.
        if err.startswith("Fatal Python error: init_import_site"):
            continue  # interrupted inside Python's own start-up, before mdstream was imported at all
        if _interrupted_before_mdstream_ran(err):
            continue
        assert package not in err and "mdstream/" not in err, err
        # Before Python's own handler exists SIGINT just ends the process; after, our message.
        assert child.returncode in (0, 130, -signal.SIGINT), (child.returncode, err)
        if child.returncode == 130:
            assert err.startswith("mdstream: error: interrupted"), err
        outcomes.append(child.returncode)
    assert 130 in outcomes, outcomes  # at least one interruption reached the command itself


def test_deprecated_ring_size_still_works_and_says_so(capsys, tmp_path, sample_path):
    assert main(["replay", str(sample_path), "-o", str(tmp_path / "o.dmp"), "--ring-size", "64K", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "mdstream: warning: --ring-size is deprecated; use --ring-capacity\n"
    result = json.loads(out)
    assert result["ring_capacity"] == result["ring_size"] == 64 * 1024


def test_sizes_and_counts_in_words(capsys, tmp_path):
    assert cli.format_size(1 << 34) == "16 GiB" and cli.format_size(4096) == "4 KiB"
    assert cli.format_size(1000) == "1,000 bytes"
    assert main(["replay", "x.dmp", "-o", str(tmp_path / "y"), "--ring-capacity", "32G"]) == 2
    assert "is larger than 16 GiB" in capsys.readouterr().err
    assert cli._plural(1, "merged range") == "1 merged range" and cli._plural(2, "thread") == "2 threads"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux writer")
def test_dump_type_means_the_same_on_linux(capsys, tmp_path):
    from mdstream.minidump import read_info

    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        out = tmp_path / "p.dmp"
        assert main(["dump", str(child.pid), "-o", str(out), "--type", "WithFullMemory|WithHandleData"]) == 2
        err = capsys.readouterr().err
        assert "cannot honour MiniDumpWithHandleData" in err.splitlines()[-1] and not out.exists()
        result = run_json(capsys, ["dump", str(child.pid), "-o", str(out), "--type", "WithFullMemory", "--json"])
        assert result["format"] == "mdstream-dump/1" and result["system"] == "linux"
        assert result["dump_type"] == 2 and result["dump_type_names"] == ["MiniDumpWithFullMemory"]
        assert read_info(out).flags == 2 and result["rewritten_bytes"] == 0
        assert main(["dump", str(child.pid), "-o", str(out), "--force"]) == 0
        text = capsys.readouterr().out
        assert " 1 threads" not in text and "written " in text and "output " in text
    finally:
        child.kill()
        child.wait()


def test_linux_only_options_are_errors_on_windows(capsys, tmp_path, monkeypatch):
    from mdstream import dump as dumping

    monkeypatch.setattr(dumping, "system_writer", lambda: "windows")
    assert main(["dump", "42", "-o", str(tmp_path / "o.dmp"), "--include-environ", "--no-cmdline"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--include-environ, --no-cmdline: Linux-only options")


def test_progress_shows_planning_from_the_start():
    import time

    stream = io.StringIO()
    bar = cli.ProgressBar(True, "replay", delay=0.1, file=stream)
    with bar.phase("planning the replay of big.dmp"):
        time.sleep(0.6)
    assert "planning the replay of big.dmp" in stream.getvalue()
    quick = io.StringIO()
    bar = cli.ProgressBar(True, "replay", delay=5.0, file=quick)
    with bar.phase("planning"):
        pass
    assert quick.getvalue() == ""  # quick work prints nothing


FORKED_CHILD_TERMINATED = """
import os, signal, sys, time
from mdstream import cli
cli._terminate_like_interrupt()
pid = os.fork()
if pid == 0:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(7)
_, status = os.waitpid(pid, 0)
print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
"""


def test_sigterm_in_a_forked_child_ends_it_without_a_traceback():
    """`mdstream bench` forks peer producers and terminates them: the CLI's SIGTERM handler is
    the parent's, a child must end as SIGTERM ends a process, not print a Terminated traceback."""
    proc = subprocess.run([sys.executable, "-c", FORKED_CHILD_TERMINATED], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True" and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)


@pytest.mark.parametrize("signame, code, message", [("SIGINT", 130, "interrupted"),
                                                    ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_an_interrupt_an_import_swallowed_is_still_an_interruption(monkeypatch, capsys, signame, code, message):
    """numpy's import turns a KeyboardInterrupt raised inside it into an ImportError (a Ctrl-C that
    lands while ``bench`` or ``demo`` first imports numpy): the one-line message, not a traceback."""
    import signal

    def import_hit_by_a_signal(args):
        swallowed = False
        try:
            os.kill(os.getpid(), getattr(signal, signame))
            time.sleep(1)  # the handler runs at the next bytecode boundary
        except KeyboardInterrupt:  # as C code does: the exception is cleared, not chained
            swallowed = True
        assert swallowed, "the signal did not arrive"
        raise ImportError('PyCapsule_Import could not import module "datetime"')

    monkeypatch.setattr(cli, "cmd_info", import_hit_by_a_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["info", "whatever.dmp"]) == code
    err = capsys.readouterr().err
    assert err == f"mdstream: error: {message}\n"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back
