"""The C API for native agents, as docs/embedding.md documents it.

- examples/native_agent.c is compiled with nothing but ``mdstream.get_include()``
  and ``mdstream.get_source_files()`` and run as the producer of a named ring
  that this (Python) process drains at the same time; the bytes must match.
- a Cython module built in a temporary directory ``cimport``s the shipped
  ``mdstream/_core.pxd`` and ``mdstream/_dbghelp.pxd`` and calls the core and
  the callback routine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mdstream
from mdstream.sample import build_sample_minidump

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "native_agent.c"
STRICT = ["-Wall", "-Wextra", "-Werror"]


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc) installed")
    return cc


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/native_agent.c built exactly as docs/embedding.md says."""
    out = tmp_path_factory.mktemp("agent") / "native_agent"
    cmd = [_compiler(), "-std=gnu11", "-O2", *STRICT, "-I", mdstream.get_include(), str(EXAMPLE),
           *mdstream.get_source_files(), "-pthread", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/native_consumer.c: the consumer half in C."""
    out = tmp_path_factory.mktemp("consumer") / "native_consumer"
    cmd = [_compiler(), "-std=gnu11", "-O2", *STRICT, "-I", mdstream.get_include(),
           str(ROOT / "examples" / "native_consumer.c"), *mdstream.get_source_files(), "-pthread", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return out


@pytest.fixture
def dump(tmp_path: Path) -> tuple[Path, bytes]:
    data = build_sample_minidump(11)
    path = tmp_path / "crash.dmp"
    path.write_bytes(data)
    return path, data


def _unique_name() -> str:
    return f"mdstream-embed-{os.getpid()}-{secrets.token_hex(4)}"


def test_shipped_headers_and_sources() -> None:
    include = Path(mdstream.get_include())
    for header in ("ring.h", "callback.h", "dbghelp.h", "span.h", "atomics.h"):
        assert (include / "mdstream" / header).is_file(), header
    names = {Path(p).name for p in mdstream.get_source_files()}
    assert {"ring.c", "callback.c", "simulator.c", "span.c", "platform_posix.c", "platform_win32.c"} <= names


@pytest.mark.parametrize("chunk", [65536, 3000, 17])
def test_native_agent_attaches_a_python_ring(agent: Path, dump: tuple[Path, bytes], chunk: int) -> None:
    """Python creates the ring and drains; the C agent attaches and produces (the documented direction)."""
    path, data = dump
    name = _unique_name()
    ring = mdstream.Ring.create(name, 16 << 10)  # much smaller than the dump: it wraps many times
    try:
        memory = mdstream.MemorySink()
        proc = subprocess.Popen([str(agent), "--chunk", str(chunk), name, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        result = mdstream.drain(ring, [memory], timeout=60)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert memory.tobytes() == data
        assert result.written_bytes == len(data)
        assert f"streamed {len(data)} bytes" in out
    finally:
        ring.close()
    assert not Path(f"/dev/shm/{name}").exists()


def _attach_when_ready(name: str, deadline: float = 30.0) -> mdstream.Ring:
    """The agent creates the ring: wait for the name, then for its header (the magic is stored last)."""
    until = time.monotonic() + deadline
    while True:
        try:
            return mdstream.Ring.attach(name)
        except (mdstream.RingNotFoundError, mdstream.RingFormatError):
            if time.monotonic() > until:
                raise
            time.sleep(0.005)


def test_native_agent_creates_the_ring(agent: Path, dump: tuple[Path, bytes]) -> None:
    """The other direction: the agent creates (--create), Python attaches, and the agent removes the name after the drain."""
    path, data = dump
    name = _unique_name()
    proc = subprocess.Popen([str(agent), "--create", "--capacity", "8192", "--chunk", "5000", name, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ring = _attach_when_ready(name)
        memory = mdstream.MemorySink()
        mdstream.drain(ring, [memory], timeout=60)
        ring.close()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert memory.tobytes() == data
    assert not Path(f"/dev/shm/{name}").exists()


def test_native_agent_sees_the_consumer_abort(agent: Path, dump: tuple[Path, bytes]) -> None:
    """A consumer that fails aborts the ring; the agent's next write answers E_ABORT and it exits 1 promptly."""
    path, _ = dump
    name = _unique_name()

    class Failing:
        def consume(self, batch: Any) -> None:
            raise OSError(28, "No space left on device")

        def finish(self) -> None:
            return None

        def abort(self, error: BaseException) -> None:
            pass

    ring = mdstream.Ring.create(name, 8192)
    try:
        proc = subprocess.Popen([str(agent), "--chunk", "1000", name, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        with pytest.raises(OSError, match="No space left"):
            mdstream.drain(ring, [Failing()], timeout=60)
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - started < 10
    finally:
        ring.close()
    assert proc.returncode == 1
    assert "0x80004004" in err and "No space left" in err


def test_native_consumer_and_agent_without_python(agent: Path, consumer: Path, dump: tuple[Path, bytes],
                                                 tmp_path: Path) -> None:
    """Both halves in C: the consumer creates the ring and writes the file, the agent attaches and produces."""
    path, data = dump
    name = _unique_name()
    out = tmp_path / "copy.dmp"
    drainer = subprocess.Popen([str(consumer), "--create", "8192", name, str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _attach_when_ready(name).close()  # the ring exists and its header is complete
        producer = subprocess.run([str(agent), "--chunk", "777", name, str(path)], capture_output=True, text=True,
                                  timeout=60)
        assert producer.returncode == 0, producer.stderr
        stdout, stderr = drainer.communicate(timeout=60)
    finally:
        if drainer.poll() is None:
            drainer.kill()
            drainer.wait()
    assert drainer.returncode == 0, stderr
    assert out.read_bytes() == data
    assert f"{len(data)} bytes" in stdout
    assert not Path(f"/dev/shm/{name}").exists()


def test_native_agent_usage_errors(agent: Path) -> None:
    assert subprocess.run([str(agent)], capture_output=True).returncode == 2
    proc = subprocess.run([str(agent), _unique_name(), "x.dmp"], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot attach" in proc.stderr and "no ring" in proc.stderr
    proc = subprocess.run([str(agent), _unique_name(), "--pid", "1"], capture_output=True, text=True)
    assert proc.returncode == 2


# ---- Cython: cimport the shipped declarations ---------------------------------------------

PROBE = textwrap.dedent(
    """
    # cython: language_level=3
    from libc.string cimport memset
    from libc.stdint cimport uint8_t, uint64_t
    from mdstream._core cimport (
        mds_ring, mds_error, mds_callback_context, mds_ring_attach, mds_ring_close, mds_status_name,
        mds_callback_context_init, mds_dump_callback, mds_now_ns, MDS_OK,
    )
    from mdstream._dbghelp cimport (
        MINIDUMP_CALLBACK_INPUT, MINIDUMP_CALLBACK_OUTPUT, MINIDUMP_CALLBACK_INFORMATION, BOOL, HRESULT,
        IoStartCallback, IoWriteAllCallback, IoFinishCallback, S_OK, S_FALSE, E_NOTIMPL,
    )

    def sizes():
        return {"sizeof MINIDUMP_CALLBACK_INPUT": sizeof(MINIDUMP_CALLBACK_INPUT),
                "sizeof MINIDUMP_CALLBACK_OUTPUT": sizeof(MINIDUMP_CALLBACK_OUTPUT),
                "sizeof MINIDUMP_CALLBACK_INFORMATION": sizeof(MINIDUMP_CALLBACK_INFORMATION)}

    def now_ns():
        return mds_now_ns()

    cdef int call(mds_callback_context *ctx, unsigned long kind, uint64_t offset, const uint8_t *data,
                  unsigned int length, HRESULT want) except -1:
        cdef MINIDUMP_CALLBACK_INPUT cin
        cdef MINIDUMP_CALLBACK_OUTPUT cout
        memset(&cin, 0, sizeof(cin))
        memset(&cout, 0, sizeof(cout))
        cin.CallbackType = kind
        cin.Io.Offset = offset
        cin.Io.Buffer = <void *>data
        cin.Io.BufferBytes = length
        cout.Status = E_NOTIMPL
        cdef BOOL ok
        # Without the GIL: IoFinishCallback waits for the consumer's commit,
        # and that consumer is a Python thread of this process.
        with nogil:
            ok = mds_dump_callback(ctx, &cin, &cout)
        if not ok or cout.Status != want:
            raise RuntimeError(f"callback type {kind}: returned {ok}, Status {cout.Status:#x}: "
                               f"{ctx.failure_reason.decode()}")
        return 0

    def stream(name, list writes):
        \"\"\"Attach the named ring and deliver `writes` [(offset, bytes)] as DbgHelp would.\"\"\"
        cdef mds_ring ring
        cdef mds_error err
        cdef mds_callback_context ctx
        cdef bytes payload
        rc = mds_ring_attach(&ring, name.encode(), &err)
        if rc != MDS_OK:
            raise OSError(f"{mds_status_name(rc).decode()}: {err.message.decode()}")
        try:
            mds_callback_context_init(&ctx, &ring, NULL)
            call(&ctx, IoStartCallback, 0, NULL, 0, S_FALSE)
            for offset, payload in writes:
                call(&ctx, IoWriteAllCallback, offset, payload, len(payload), S_OK)
            call(&ctx, IoFinishCallback, 0, NULL, 0, S_OK)
            return ctx.writes, ctx.bytes
        finally:
            mds_ring_close(&ring)
    """
)

SETUP = textwrap.dedent(
    """
    import os, sys
    import mdstream
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    package_parent = os.path.dirname(os.path.dirname(mdstream.__file__))
    args = [] if sys.platform == "win32" else ["-std=gnu11", "-fvisibility=hidden"]
    ext = Extension("embed_probe", ["embed_probe.pyx", *mdstream.get_source_files()],
                    include_dirs=[mdstream.get_include()], extra_compile_args=args)
    setup(name="embed_probe", ext_modules=cythonize([ext], include_path=[package_parent], quiet=True),
          script_args=["build_ext", "--inplace", "--build-temp", "build"])
    """
)


def test_cython_module_cimports_the_shipped_pxd(tmp_path: Path, ring_name: str) -> None:
    pytest.importorskip("Cython")
    _compiler()
    (tmp_path / "embed_probe.pyx").write_text(PROBE)
    (tmp_path / "build_probe.py").write_text(SETUP)
    proc = subprocess.run([sys.executable, "build_probe.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import embed_probe  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))

    from mdstream import dbghelp

    layout = dbghelp.layout()
    for key, value in embed_probe.sizes().items():
        assert layout[key] == value, key
    assert embed_probe.now_ns() > 0

    ring = mdstream.Ring.create(ring_name, 8192)
    memory = mdstream.MemorySink()
    writes = [(32, b"B" * 5000), (5032, b"C" * 3000), (0, b"MDMP" + b"\0" * 28)]
    drained: list[Any] = []
    consumer = threading.Thread(target=lambda: drained.append(mdstream.drain(ring, [memory], timeout=30)))
    consumer.start()
    count, nbytes = embed_probe.stream(ring_name, writes)
    consumer.join(60)
    ring.close()
    assert (count, nbytes) == (3, 8032)
    expected = bytearray(8032)
    for offset, data in writes:
        expected[offset:offset + len(data)] = data
    assert memory.tobytes() == bytes(expected)


def test_native_consumer_refuses_an_existing_output(consumer: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine.dmp"
    out.write_bytes(b"a dump you already had")
    proc = subprocess.run([str(consumer), "--create", "8192", _unique_name(), str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "File exists" in proc.stderr, proc.stderr
    assert out.read_bytes() == b"a dump you already had"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.dmp"]


def test_native_consumer_killed_leaves_what_the_spill_needs(consumer: Path, tmp_path: Path) -> None:
    """The C consumer names its private output in the ring and stores each record before releasing
    it: killed halfway, the producer's spill copies that file and is complete on its own."""
    import hashlib
    import signal

    import mdstream.spill
    from mdstream._callback import Simulation
    from mdstream.schedules import sized_plan

    plan = sized_plan(1024, 16 << 20, seed=5)
    expected = hashlib.sha256(plan.apply()).hexdigest()
    ring_path, out, spill = tmp_path / "ring", tmp_path / "out.dmp", tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(str(ring_path), 1 << 20)
    drainer = subprocess.Popen([str(consumer), str(ring_path), str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        until = time.monotonic() + 30
        while ring.consumer_pid == 0:
            assert drainer.poll() is None and time.monotonic() < until, drainer.communicate()
            time.sleep(0.001)
        callback = mdstream.DumpCallback(ring, deadline=20, spill_path=spill, spill_after=2.0)
        sim = Simulation(callback.routine_address, callback.param_address, plan.buffer, plan.offsets,
                         plan.lengths, plan.sources, keepalive=callback)
        sim.start()
        while callback.bytes_written < plan.total_bytes // 2:
            time.sleep(0.0005)
        os.kill(drainer.pid, signal.SIGKILL)
        sim.wait(120)
        assert sim.done and sim.succeeded, callback.failure
        info = callback.spill
        assert info["finished"] and info["complete"] and info["base_bytes"] > 0, info
        finished = tmp_path / "finished.dmp"
        mdstream.spill.finish(spill, finished)  # no --base: the spill holds the consumer's part
        assert hashlib.sha256(finished.read_bytes()).hexdigest() == expected
        ring.close(timeout=5)
    finally:
        if drainer.poll() is None:
            drainer.kill()
        drainer.wait()
    assert not out.exists()
