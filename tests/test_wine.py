"""Windows for real, on Linux: mingw-w64 cross-compiles and Wine runs (docs/windows.md).

``pytest -m extended -k "wine or mingw"`` selects this module (the extended tier);
``-k "wine and x86"`` / ``-k "wine and x64"`` one Windows ABI.

mingw tests (need ``gcc-mingw-w64-x86-64`` / ``gcc-mingw-w64-i686``):
  the whole C core (ring, span, callback, simulator, platform_win32) and the
  native agent example build warning-free for Windows x64 and x86.

wine tests, each twice: ``[x64]`` (needs ``wine64`` and the x64 cross compiler) and
``[x86]`` (needs 32-bit Wine, Debian's ``wine32:i386``, and the i686 cross compiler):
  - ``wine/platform_check.c`` runs platform_win32.c against Wine's Windows API;
  - ``wine/harness.c`` calls Wine's real ``MiniDumpWriteDump`` on a live
    Windows process and redirects dbghelp's file writes (its import table)
    into ``mds_dump_callback`` exactly as native DbgHelp's callback I/O mode
    delivers them; the callback streams into a ring under /dev/shm that this
    Linux process drains at the same time.  The drained dump must be
    byte-identical to the file Wine wrote itself in the same call (``--tee``)
    and to the MDTRACE1 trace of its writes, and parse with the PyPI
    ``minidump`` parser as a dump of that architecture - for a normal dump of a
    child, a full-memory dump (~100 MB, ``MDSTREAM_WINE_FULL=0`` skips it) and
    a dump of the harness itself from a second thread.  The module and thread
    callbacks Wine's writer sent (read through mdstream/dbghelp.h) must match
    the dump's module and thread lists: the ABI's callback layout, proven by a
    real writer.

A missing cross compiler or Wine skips with the package to install;
``MDSTREAM_REQUIRE_WINE=1`` (set by ``.ci/run``) turns those skips into failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import mdstream
import mdstream.dbghelp

ROOT = Path(__file__).resolve().parents[1]
WINE_DIR = ROOT / "wine"
STRICT = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"]
MINGW = {"x64": ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"), "x86": ("i686-w64-mingw32-gcc", "gcc-mingw-w64-i686")}
ARCHES = ("x64", "x86")
# Debian's loaders: wine64 runs 64-bit programs; /usr/lib/wine/wine (package wine32:i386) 32-bit ones.
WINE_LOADERS = {"x64": ("/usr/lib/wine/wine64", "wine64", "wine"), "x86": ("/usr/lib/wine/wine",)}
WINE_INSTALL = {
    "x64": "apt-get install wine64; loader /usr/lib/wine/wine64",
    "x86": "dpkg --add-architecture i386 && apt-get update && apt-get install wine32:i386; loader /usr/lib/wine/wine",
}
# What a dump of each says it is (MINIDUMP_SYSTEM_INFO.ProcessorArchitecture, as the PyPI parser names it).
DUMP_ARCH = {"x64": "AMD64", "x86": "INTEL"}
CONTEXT_SIZE = {"x64": 1232, "x86": 716}  # sizeof(CONTEXT) in each ABI
POINTER_BITS = {"x64": 64, "x86": 32}
FULL_MEMORY = 0x2


def _unavailable(reason: str) -> None:
    """A missing tool skips here, and fails where it must be present (CI sets MDSTREAM_REQUIRE_WINE=1)."""
    if os.environ.get("MDSTREAM_REQUIRE_WINE", "0") not in ("", "0"):
        pytest.fail(f"MDSTREAM_REQUIRE_WINE is set, but {reason}")
    pytest.skip(reason)


def _mingw(abi: str) -> str:
    compiler, package = MINGW[abi]
    path = shutil.which(compiler)
    if path is None:
        _unavailable(f"{compiler} not installed (apt-get install {package})")
    assert path is not None
    return path


_CORE: dict[str, list[Path]] = {}


def _core_objects(abi: str, workdir: Path) -> list[Path]:
    """The C core (mdstream.get_source_files()) compiled once per ABI, -Wall -Wextra -Werror."""
    if abi not in _CORE:
        cc = _mingw(abi)
        outdir = workdir / f"core-{abi}"
        outdir.mkdir(parents=True, exist_ok=True)
        objects = []
        for source in mdstream.get_source_files():
            obj = outdir / (Path(source).stem + ".o")
            proc = subprocess.run([cc, *STRICT, "-I", mdstream.get_include(), "-c", source, "-o", str(obj)],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{cc}: {source}:\n{proc.stderr}"
            objects.append(obj)
        _CORE[abi] = objects
    return _CORE[abi]


def _build(abi: str, source: Path, out: Path, workdir: Path) -> None:
    """A Windows program: `source` linked with the core, as docs/embedding.md builds the agent."""
    cc = _mingw(abi)
    objects = _core_objects(abi, workdir)
    cmd = [cc, *STRICT, "-I", mdstream.get_include(), str(source), *map(str, objects), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mingw")


# ---- mingw: cross-compiles ------------------------------------------------------------------


@pytest.mark.extended
@pytest.mark.parametrize("abi", sorted(MINGW))
def test_mingw_core_compiles(abi: str, build_dir: Path) -> None:
    """Every core source, platform_win32.c included, compiles with -Wall -Wextra -Werror for Windows."""
    objects = _core_objects(abi, build_dir)
    assert {o.stem for o in objects} >= {"ring", "span", "callback", "simulator", "platform_win32"}


@pytest.mark.extended
@pytest.mark.parametrize("abi", sorted(MINGW))
def test_mingw_links_native_agent_and_harness(abi: str, build_dir: Path) -> None:
    """The examples, the Wine harness and the platform check link as Windows executables."""
    out = build_dir / f"exe-{abi}"
    out.mkdir(exist_ok=True)
    for source in (ROOT / "examples" / "native_agent.c", ROOT / "examples" / "native_consumer.c",
                   WINE_DIR / "harness.c", WINE_DIR / "platform_check.c"):
        exe = out / (source.stem + ".exe")
        _build(abi, source, exe, build_dir)
        assert exe.read_bytes()[:2] == b"MZ"


def test_mingw_platform_win32_is_empty_off_windows(tmp_path: Path) -> None:
    """platform_win32.c is entirely inside #ifdef _WIN32: a POSIX build gets no symbols from it."""
    gcc = shutil.which("gcc")
    nm = shutil.which("nm")
    if gcc is None or nm is None:
        pytest.skip("gcc/nm not installed")
    source = [s for s in mdstream.get_source_files() if s.endswith("platform_win32.c")][0]
    obj = tmp_path / "w.o"
    proc = subprocess.run([gcc, *STRICT, "-I", mdstream.get_include(), "-c", source, "-o", str(obj)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    symbols = subprocess.run([nm, str(obj)], capture_output=True, text=True).stdout
    assert "mds_" not in symbols


# ---- wine: the environment ---------------------------------------------------------------------


def _wine_loader(arch: str) -> str | None:
    for candidate in WINE_LOADERS[arch]:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


_RUNNING: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_wine_process_left_behind() -> Iterator[None]:
    yield
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


class Wine:
    """One Windows ABI under Wine: its loader, its programs, a prefix (shared by both ABIs: a 64-bit
    prefix runs 32-bit programs through WoW64, as Windows does)."""

    def __init__(self, arch: str, loader: str, prefix: Path, bindir: Path) -> None:
        self.arch = arch
        self.loader = loader
        self.prefix = prefix
        self.bindir = bindir
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
        # Wine is not Python: a sanitized run's preloaded ASan runtime must not reach it.
        self.env = {**env, "WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="}

    @staticmethod
    def path(p: Path | str) -> str:
        """The Windows name of a Linux path (Wine's Z: drive is /)."""
        return "Z:" + str(p).replace("/", "\\")

    def popen(self, exe: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([self.loader, str(self.bindir / exe), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)
        _RUNNING.append(proc)
        return proc

    def run(self, exe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.loader, str(self.bindir / exe), *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def wine_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wine") / "prefix"


@pytest.fixture(scope="module", params=ARCHES)
def wine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, build_dir: Path,
         wine_prefix: Path) -> Iterator[Wine]:
    """The Wine programs built for one ABI (the test's [x64]/[x86]), and a probe run of the harness."""
    arch = request.param
    loader = _wine_loader(arch)
    if loader is None:
        _unavailable(f"{'32' if arch == 'x86' else '64'}-bit Wine not installed ({WINE_INSTALL[arch]})")
    assert loader is not None
    _mingw(arch)
    bindir = tmp_path_factory.mktemp(f"wine-{arch}")
    for source in (WINE_DIR / "harness.c", WINE_DIR / "platform_check.c", ROOT / "examples" / "native_agent.c"):
        _build(arch, source, bindir / (source.stem + ".exe"), build_dir)
    w = Wine(arch, loader, wine_prefix, bindir)
    started = time.monotonic()
    probe = w.run("harness.exe", "probe", timeout=300)  # the first run creates the prefix
    if probe.returncode != 0:
        _unavailable(f"wine cannot run a mingw-w64 {arch} program here ({WINE_INSTALL[arch]}): "
                     f"{probe.stderr.strip()[-500:]}")
    w.probe = json.loads(probe.stdout.strip().splitlines()[-1])  # type: ignore[attr-defined]
    w.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    try:
        yield w
    finally:
        server = Path(loader).with_name("wineserver")
        if server.exists():
            subprocess.run([str(server), "-k"], env=w.env, capture_output=True, timeout=60)


@pytest.fixture
def shm_ring() -> Iterator[Any]:
    """Creates file-backed rings under /dev/shm (removed afterwards)."""
    made: list[Any] = []

    def make(capacity: int) -> tuple[Any, str]:
        name = f"/dev/shm/mdstream-wine-{os.getpid()}-{secrets.token_hex(4)}"
        ring = mdstream.Ring.create(name, capacity)
        made.append(ring)
        return ring, name

    yield make
    for ring in made:
        with contextlib.suppress(Exception):
            ring.close()


def _drain_while(proc: subprocess.Popen[str], ring: Any, sinks: list[Any], timeout: float = 120) -> Any:
    """Drain on this thread while the Wine process produces; a producer that dies early ends the drain."""

    def producer_failed() -> BaseException | None:
        if proc.poll() is not None and ring.state == "open":
            return RuntimeError(f"the Wine producer exited with {proc.returncode} before finishing the ring: "
                                f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        return None

    return mdstream.drain(ring, sinks, timeout=timeout, producer_failed=producer_failed)


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[dict[str, Any], str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"the Wine process did not end within {timeout} s:\n{out}\n{err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no report from the harness (exit {proc.returncode}):\n{out}\n{err}"
    return json.loads(lines[-1]), err


@contextlib.contextmanager
def _parser_that_skips_wine_streams() -> Iterator[Any]:
    """The PyPI ``minidump`` parser (0.0.24) rejects stream type 0xfff0 (Wine's private list of ELF
    modules: reserved range, not in its enum).  It already skips unknown user streams (> 0xffff);
    this extends that one rule to 0xfff0 and leaves every other check to the parser."""
    minidumpfile = pytest.importorskip("minidump.minidumpfile")
    from minidump import directory

    original = directory.MINIDUMP_DIRECTORY.parse

    def parse(buff: Any) -> Any:
        at = buff.tell()
        stream_type = int.from_bytes(buff.read(4), "little")
        buff.seek(at)
        if stream_type == 0xFFF0:
            return None
        return original(buff)

    directory.MINIDUMP_DIRECTORY.parse = staticmethod(parse)
    try:
        yield minidumpfile.MinidumpFile
    finally:
        directory.MINIDUMP_DIRECTORY.parse = staticmethod(original)


def _splitmix64(count: int) -> np.ndarray:
    i = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _assert_dump_is(md: Any, arch: str, report: dict[str, Any]) -> None:
    """The parsed dump is one of `arch`, and the ModuleCallback/ThreadCallback inputs Wine's writer sent,
    read by the harness through mdstream/dbghelp.h, describe exactly the modules and threads in the file
    it wrote: base, size and path of every module, id, stack range and CONTEXT size of every thread.
    With a wrong layout for this ABI (the union's offset, pointer widths, the CONTEXT size) they cannot.
    (On x64, Wine's own thread-callback layout differs from Microsoft's; see below.)"""
    assert md.sysinfo.ProcessorArchitecture.name == DUMP_ARCH[arch]
    assert report["seen_modules"] == len(report["modules"]) == report["calls"]["ModuleCallback"]
    assert report["seen_threads"] == len(report["threads"]) == report["calls"]["ThreadCallback"]
    seen_modules = {(m["base"], m["size"]): m["path"] for m in report["modules"]}
    dumped_modules = md.modules.modules
    assert any(m.name.lower().endswith("harness.exe") for m in dumped_modules)
    for module in dumped_modules:
        assert seen_modules.get((module.baseaddress, module.size)) == module.name, (module.name, report["modules"])
    seen_threads = {t["id"]: t for t in report["threads"]}
    assert md.threads.threads
    for thread in md.threads.threads:
        seen = seen_threads.get(thread.ThreadId)
        assert seen is not None, (thread.ThreadId, report["threads"])
        # Dumping itself, Wine records neither the context nor the stack of the thread that writes.
        writer = thread.ThreadId == report["writer_thread"]
        assert thread.ThreadContext.DataSize == (0 if writer else CONTEXT_SIZE[arch])
        assert (thread.Stack.DataSize == 0) == writer
        if arch == "x64":
            # Wine's x64 MINIDUMP_THREAD_CALLBACK is not Microsoft's: GCC's pack(4) caps CONTEXT's
            # 16-byte alignment, so Wine puts Context at 12 where MSVC (and mdstream/dbghelp.h, checked
            # against clang's MSVC layout in test_msvc_dialect.py) put it at 16.  Every field after
            # ThreadHandle arrives 4 bytes early: what mdstream reads as SizeOfContext is the low half of
            # Wine's StackBase.  Pinned, so that a Wine that changes its layout shows up here.
            assert seen["context_size"] == thread.Stack.StartOfMemoryRange & 0xFFFFFFFF
            assert seen["stack_base"] >> 32 == (thread.Stack.StartOfMemoryRange + thread.Stack.DataSize) & 0xFFFFFFFF
        else:
            assert seen["context_size"] == CONTEXT_SIZE[arch]
            assert seen["stack_base"] == thread.Stack.StartOfMemoryRange
            assert seen["stack_end"] - seen["stack_base"] == thread.Stack.DataSize


# ---- wine: the platform layer -----------------------------------------------------------------------


@pytest.mark.extended
def test_wine_probe(wine: Wine) -> None:
    probe = wine.probe  # type: ignore[attr-defined]
    assert probe["wine"], probe
    assert probe["pointer_bits"] == POINTER_BITS[wine.arch]
    imports = {name.split("!")[1] for name in probe["imports"]}
    assert {"WriteFile", "SetFilePointer"} <= imports, probe  # what Wine's dbghelp writes its file with
    assert probe["ring_pid"] != probe["windows_pid"]  # a Unix pid in rings: Linux peers can check it
    # The declarations the harness hands Wine's writer are the Microsoft layout of this ABI
    # (x86: a 772-byte MINIDUMP_CALLBACK_INPUT, 4-byte pointers inside pack(4)).
    reference = mdstream.dbghelp.reference_layout(wine.arch)
    assert len(probe["layout"]) == 10
    assert probe["layout"] == {key: reference[key] for key in probe["layout"]}


@pytest.mark.extended
def test_wine_platform_layer(wine: Wine, shm_ring: Any, tmp_path: Path) -> None:
    private, private_name = shm_ring(8192)
    _, open_name = shm_ring(8192)
    os.chmod(open_name, 0o644)
    dead = subprocess.Popen(["true"])
    dead.wait()
    proc = wine.popen("platform_check.exe", wine.path(private_name), wine.path(open_name), wine.path(tmp_path),
                      str(os.getpid()), str(dead.pid))
    stdout, stderr = proc.communicate(timeout=120)
    results = json.loads(stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in results.items() if isinstance(v, str) and v != "ok"}
    assert not failed and proc.returncode == 0, (failed, stderr[-2000:])
    assert len(results) >= 33
    spill_checks = [k for k in results if k.startswith("spill_")]
    assert len(spill_checks) == 8, spill_checks  # the spill ran with Windows files (platform_win32.c)
    assert results["ring_pid_value"] == proc.pid  # the Unix pid Linux sees (kill(pid, 0) works on it)
    assert [(int(o), v.tobytes()) for batch in private for o, v in batch] == [(7, b"from wine")]
    assert not list(tmp_path.iterdir())  # the file ring it created was removed


@pytest.mark.extended
def test_wine_native_agent_streams_into_a_linux_ring(wine: Wine, shm_ring: Any, tmp_path: Path) -> None:
    """examples/native_agent.c built for Windows, run under Wine, attached to a ring a Linux process drains."""
    from mdstream.sample import build_sample_minidump

    data = build_sample_minidump(4)
    dump = tmp_path / "crash.dmp"
    dump.write_bytes(data)
    ring, name = shm_ring(16 << 10)
    proc = wine.popen("native_agent.exe", "--chunk", "3000", wine.path(name), wine.path(dump))
    memory = mdstream.MemorySink()
    _drain_while(proc, ring, [memory])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert memory.tobytes() == data


@pytest.mark.extended
def test_wine_native_agent_crash_handler_runs(wine: Wine, shm_ring: Any) -> None:
    """native_agent --crash under Wine: a real access violation reaches the unhandled-exception filter,
    the dumper thread calls Wine's MiniDumpWriteDump with the exception information and the callback.
    Wine's dbghelp never sends the I/O callbacks (the harness below supplies them), so the agent must
    notice that no IoFinishCallback came, abort the ring and exit 1 - not hang, not report success."""
    ring, name = shm_ring(1 << 16)
    proc = wine.popen("native_agent.exe", "--crash", wine.path(name))
    with pytest.raises(mdstream.RingAbortedError, match="native agent: dump failed"):
        _drain_while(proc, ring, [mdstream.NullSink()], timeout=60)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    # Normally "(no IoFinishCallback: ...)"; should Wine's writer itself fail, "(the writer failed)".
    assert "MiniDumpWriteDump did not complete the dump" in err, err


@pytest.mark.extended
def test_wine_run_sh_by_hand(wine: Wine, tmp_path: Path) -> None:
    """wine/run.sh --arch ARCH as a user runs it, from the repository root, after `pip install .`: the
    unbuilt source tree (./mdstream) must not shadow the installed package, a missing OUT is created
    (0700, nested), and a second run into the same OUT refuses to replace the first one's files."""
    repo = tmp_path / "clone"
    (repo / "wine").mkdir(parents=True)
    (repo / "mdstream").mkdir()
    (repo / "mdstream" / "__init__.py").write_text('raise ImportError("imported the unbuilt source tree")\n')
    for name in ("run.sh", "harness.c"):
        shutil.copy2(WINE_DIR / name, repo / "wine" / name)
    out = tmp_path / "not" / "yet"
    env = {**wine.env, "OUT": str(out), "PYTHON": sys.executable, "WINE": wine.loader}
    proc = subprocess.run(["bash", "wine/run.sh", "--arch", wine.arch], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{wine.arch}: drained" in proc.stdout and "identical to Wine's own file: True" in proc.stdout
    assert (out / "ring.dmp").read_bytes() == (out / "wine.dmp").read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    again = subprocess.run(["bash", "wine/run.sh", "--arch", wine.arch], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1 and "ring.dmp exists" in again.stderr and "--force" in again.stderr


# ---- wine: Wine's real MiniDumpWriteDump -----------------------------------------------------------


# Rings smaller than the normal dump (x64 ~200 KB, x86 ~5 KB): the producer must wait for the drain.
NORMAL_DUMP_RING = {"x64": 64 << 10, "x86": 4 << 10}


@pytest.mark.extended
def test_wine_normal_dump_streams_byte_identical(wine: Wine, shm_ring: Any, tmp_path: Path) -> None:
    """A normal dump of a live child process: the ring's bytes are Wine's file, the records its writes."""
    ring, name = shm_ring(NORMAL_DUMP_RING[wine.arch])
    tee, trace = tmp_path / "wine.dmp", tmp_path / "wine.mdtrace"
    out_dump, out_trace = tmp_path / "ring.dmp", tmp_path / "ring.mdtrace"
    started = time.monotonic()
    proc = wine.popen("harness.exe", "dump", "--ring", wine.path(name), "--type", "0", "--tee", wine.path(tee),
                      "--trace", wine.path(trace), "--exact")
    result = _drain_while(proc, ring, [mdstream.FileSink(str(out_dump)), mdstream.TraceSink(str(out_trace))])
    report, err = _finish(proc)
    seconds = time.monotonic() - started
    assert proc.returncode == 0 and report["ok"], (report, err)

    wine_bytes = tee.read_bytes()
    assert report["pointer_mismatch"] == 0 and report["size"] == len(wine_bytes)
    assert out_dump.read_bytes() == wine_bytes  # byte-identical to the file Wine wrote itself
    assert out_trace.read_bytes() == trace.read_bytes()  # record for record, the writes Wine made
    assert mdstream.replay(str(trace)).outputs[0].tobytes() == wine_bytes
    assert len(wine_bytes) > ring.capacity  # so the drain ran concurrently with the writer

    calls = report["calls"]
    assert calls["IoStartCallback"] == 1 and calls["IoFinishCallback"] == 1
    assert calls["IoWriteAllCallback"] == report["writes"] == result.records
    assert calls.get("ModuleCallback", 0) > 0 and calls.get("ThreadCallback", 0) > 0  # Wine calls the routine too
    assert report["seek_backs"] > 0  # the writer patches the header and the directory
    assert report["ring_pid"] == proc.pid != report["windows_pid"]  # the Unix pid: the Linux drain can watch it

    with _parser_that_skips_wine_streams() as MinidumpFile:
        md = MinidumpFile.parse(str(out_dump))
        _assert_dump_is(md, wine.arch, report)
        assert md.memory_segments is not None and md.memory_segments.memory_segments
    print(f"\nwine {wine.arch} normal dump: {len(wine_bytes):,} bytes, {report['writes']:,} writes, "
          f"{report['seek_backs']:,} seeks back, {seconds:.1f} s (harness {report['seconds']:.2f} s)")


@pytest.mark.extended
def test_wine_self_dump_from_a_separate_thread(wine: Wine, shm_ring: Any, tmp_path: Path) -> None:
    """The harness dumps itself (MiniDumpWriteDump on its own thread), the other live-process form."""
    ring, name = shm_ring(64 << 10)
    tee, out_dump = tmp_path / "wine.dmp", tmp_path / "ring.dmp"
    proc = wine.popen("harness.exe", "dump", "--ring", wine.path(name), "--type", "0", "--target", "self",
                      "--tee", wine.path(tee))
    _drain_while(proc, ring, [mdstream.FileSink(str(out_dump))])
    report, err = _finish(proc)
    assert proc.returncode == 0 and report["ok"], (report, err)
    assert out_dump.read_bytes() == tee.read_bytes()
    assert report["target_pid"] == report["windows_pid"]
    with _parser_that_skips_wine_streams() as MinidumpFile:
        md = MinidumpFile.parse(str(out_dump))
        _assert_dump_is(md, wine.arch, report)
        assert len(md.threads.threads) >= 2  # the main thread waiting and the one writing


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.skipif(os.environ.get("MDSTREAM_WINE_FULL", "1") == "0", reason="MDSTREAM_WINE_FULL=0")
def test_wine_full_memory_dump_streams_byte_identical(wine: Wine, shm_ring: Any, tmp_path: Path) -> None:
    """MiniDumpWithFullMemory of a child with 64 MiB of patterned memory: ~100 MB through a 4 MiB ring."""
    ring, name = shm_ring(4 << 20)
    tee, out_dump = tmp_path / "wine.dmp", tmp_path / "ring.dmp"
    started = time.monotonic()
    proc = wine.popen("harness.exe", "dump", "--ring", wine.path(name), "--type", str(FULL_MEMORY), "--ballast", "64",
                      "--tee", wine.path(tee))
    result = _drain_while(proc, ring, [mdstream.FileSink(str(out_dump))], timeout=300)
    report, err = _finish(proc, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0 and report["ok"], (report, err)
    size = out_dump.stat().st_size
    assert size == tee.stat().st_size == report["size"] >= 80 << 20  # the 64 MiB ballast and the rest
    with open(out_dump, "rb") as a, open(tee, "rb") as b:
        while True:
            x, y = a.read(8 << 20), b.read(8 << 20)
            assert x == y
            if not x:
                break
    assert result.written_bytes == report["bytes"]

    with _parser_that_skips_wine_streams() as MinidumpFile:
        md = MinidumpFile.parse(str(out_dump))
        _assert_dump_is(md, wine.arch, report)
        segments = md.memory_segments_64.memory_segments
        base, length = report["ballast_address"], report["ballast_bytes"]
        covering = [s for s in segments if s.start_virtual_address <= base < s.start_virtual_address + s.size]
        assert covering, "the ballast is not in the dump's Memory64ListStream"
        seg = covering[0]
        assert seg.start_virtual_address + seg.size >= base + length
        file_offset = seg.start_file_address + (base - seg.start_virtual_address)
    with open(out_dump, "rb") as f:
        f.seek(file_offset)
        ballast = np.frombuffer(f.read(length), dtype="<u8")
    assert np.array_equal(ballast, _splitmix64(length // 8))  # the child's memory arrived intact
    print(f"\nwine {wine.arch} full-memory dump: {size / 1e6:.1f} MB, {report['writes']:,} writes, {seconds:.1f} s "
          f"(harness {report['seconds']:.2f} s)")


@pytest.mark.extended
def test_wine_killed_producer_is_noticed_by_the_linux_drain(wine: Wine, shm_ring: Any) -> None:
    """SIGKILL the Wine process mid-dump: the Linux drain, with no other hint (no producer_failed), must
    see from the ring's producer pid that the producer is gone and stop - not wait for its timeout.
    It can only if the ring holds the Unix pid of the Wine process (x86: the int 0x80 getpid)."""
    rng = random.Random(0x18)
    for _ in range(3):
        ring, name = shm_ring(64 << 10)
        proc = wine.popen("harness.exe", "dump", "--ring", wine.path(name), "--type", str(FULL_MEMORY),
                          "--ballast", "16")
        deadline = time.monotonic() + 60
        while ring.producer_pid == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ring.producer_pid == proc.pid, (ring.producer_pid, proc.pid)  # the dump has started
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.communicate(timeout=30)
        started = time.monotonic()
        with pytest.raises(mdstream.ProducerGoneError, match=f"producer process {proc.pid} is gone"):
            mdstream.drain(ring, [mdstream.NullSink()], timeout=30)
        assert time.monotonic() - started < 10  # noticed by the liveness check, far from the 30 s timeout


@pytest.mark.extended
def test_wine_consumer_abort_fails_the_dump_promptly(wine: Wine, shm_ring: Any) -> None:
    """A consumer that fails aborts the ring: the next IoWriteAllCallback answers E_ABORT."""

    class Failing:
        def __init__(self) -> None:
            self.batches = 0

        def consume(self, batch: Any) -> None:
            self.batches += 1
            if self.batches == fail_at:
                raise OSError(28, "No space left on device")

        def finish(self) -> None:
            return None

        def abort(self, error: BaseException) -> None:
            pass

    # Whatever the consumer has taken when it fails, the rest of the dump cannot have fit in the ring.
    ring, name = shm_ring(16 << 10 if wine.arch == "x64" else 4 << 10)
    fail_at = 3 if wine.arch == "x64" else 1  # x86: a normal dump is ~5 KB
    proc = wine.popen("harness.exe", "dump", "--ring", wine.path(name), "--type", "0")
    with pytest.raises(OSError, match="No space left"):
        _drain_while(proc, ring, [Failing()])
    report, _ = _finish(proc, timeout=60)
    assert proc.returncode == 1 and not report["ok"]
    failure = report["failure"]
    assert failure["callback"] == "IoWriteAllCallback" and failure["status"] == "0x80004004"
    assert failure["returned"] == 0 and "No space left" in failure["reason"]
