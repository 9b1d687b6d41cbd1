"""Throughput benchmarks: mdstream against memcpy, ``os.pwrite`` and the IPC peers.

Every mdstream measurement goes through the real callback routine
(:class:`~mdstream.DumpCallback`) driven by DbgHelp's protocol from a native
thread (:func:`mdstream.simulator.run_plan`), while the calling thread drains
the ring into a sink -- the consumer runs on the other core.  The workloads
(``docs/benchmarks.md``):

``tiny``
    a normal dump's shape: 4-16-byte writes, about half of them seeking back to
    patch earlier bytes (``synthetic_plan("tiny")``), 1 M writes;
``1k``
    a full dump's shape: 1 KiB writes at increasing offsets, 256 MiB;
``64k`` and ``1m``
    64 KiB and 1 MiB writes, 1 GiB.

Each runs into ``NullSink`` (the ring alone), ``MemorySink`` and ``FileSink``
(on ``/dev/shm``), next to these baselines, measured in the same run:

* numpy copying the same bytes once, in one piece and in the same-sized pieces
  (one ``memcpy`` per write inside numpy's C loop);
* ``os.pwrite`` of the same writes into a new file on ``/dev/shm`` (what
  DbgHelp does without callbacks);
* the peers a user could pick instead -- ``multiprocessing.Queue``,
  ``faster-fifo``, ``ringbuf``, ``tachyon-ipc``, ``shm-ring-buffer`` -- moving
  the same messages from one producer to one consumer.  A peer that is not
  installed is reported as missing, never dropped.

``run(quick=False)`` returns everything as a dict; ``format_table`` prints it;
``mdstream bench [--quick] [--json]`` is the command line (see
:func:`add_parser`).  The pytest-benchmark suite in ``benchmarks/`` runs the
same cases.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "WORKLOADS",
    "Workload",
    "Case",
    "cases_for",
    "build_plan",
    "run",
    "format_table",
    "format_markdown",
    "evaluate_targets",
    "measure_rss",
    "machine_info",
    "add_parser",
    "command",
    "main",
]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

RING_CAPACITY = 4 * MiB
#: The peak-RSS budget on top of the ring (issue 5).
RSS_BUDGET_EXTRA = 64 * MiB
#: How long one peer run may take before it is declared stuck.
PEER_TIMEOUT = 120.0


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: a synthetic write plan and how big it is in each mode."""

    name: str
    kind: str            # "tiny" or "sized"
    description: str
    write_size: float    # nominal write size for plots (the mean for tiny)
    full: dict[str, int]
    quick: dict[str, int]

    def params(self, quick: bool) -> dict[str, int]:
        return dict(self.quick if quick else self.full)


WORKLOADS: dict[str, Workload] = {
    "tiny": Workload("tiny", "tiny", "4-16 B writes, ~half seeking back (normal dump)", 10.0,
                     {"count": 1_000_000}, {"count": 100_000}),
    "1k": Workload("1k", "sized", "1 KiB writes, increasing offsets (full dump)", 1024.0,
                   {"write_size": KiB, "total_bytes": 256 * MiB}, {"write_size": KiB, "total_bytes": 16 * MiB}),
    "64k": Workload("64k", "sized", "64 KiB writes", 65536.0,
                    {"write_size": 64 * KiB, "total_bytes": GiB}, {"write_size": 64 * KiB, "total_bytes": 64 * MiB}),
    "1m": Workload("1m", "sized", "1 MiB writes", float(MiB),
                   {"write_size": MiB, "total_bytes": GiB}, {"write_size": MiB, "total_bytes": 64 * MiB}),
}

#: Rounds per case family (full, quick).
ROUNDS = {"mdstream": (5, 2), "memcpy": (5, 2), "pwrite": (3, 1), "peer": (3, 1)}
#: Peers move the first messages of the same plan, up to this many (full, quick).
PEER_MAX_MESSAGES = (250_000, 20_000)
PEER_MAX_BYTES = (256 * MiB, 16 * MiB)
#: The RSS check: a dump this large through a RING_CAPACITY ring into FileSink (full, quick).
RSS_DUMP_BYTES = (GiB, 64 * MiB)
#: Beyond the dump's size, also recycled before a fresh-memory round (the ring, plan temporaries).
RECYCLE_SLACK = 64 * MiB


def build_plan(name: str, quick: bool = False, seed: int = 0) -> Any:
    """The workload's :class:`~mdstream.schedules.WritePlan` (deterministic from ``seed``).

    Sized plans take their bytes from a pool as large as the dump, so every
    byte copied is a distinct, cold byte (as a dumped process's memory is).
    """
    from mdstream.schedules import synthetic_plan

    w = WORKLOADS[name]
    params = w.params(quick)
    if w.kind == "tiny":
        return synthetic_plan("tiny", seed=seed, count=params["count"])
    return synthetic_plan("sized", seed=seed, write_size=params["write_size"], total_bytes=params["total_bytes"],
                          pool_bytes=params["total_bytes"])


def scratch_dir() -> str:
    """Where file outputs go: ``/dev/shm`` when it is there (no disk in the measurement)."""
    env = os.environ.get("MDSTREAM_BENCH_DIR")
    if env:
        return env
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


_counter = 0


def _unique(stem: str) -> str:
    global _counter
    _counter += 1
    return f"mdsbench-{os.getpid()}-{_counter}-{stem}"


def recycle_free_memory(nbytes: int) -> None:
    """Touch and free ``nbytes`` of anonymous memory, so that the next round's
    fresh pages are pages the kernel just had, as on a machine that is busy.

    On a VM whose balloon reports free pages to the host (virtio-balloon free
    page reporting, as on the Firecracker guests this project is measured on),
    memory the guest freed a few seconds earlier has been handed back to the
    host, and touching it again costs a host fault per page: measured here at
    0.32-0.36 GB/s for both a MemorySink and numpy's own fresh copy, against
    5-6 GB/s for pages freed just before.  Which of the two a case met depended
    on what ran before it (the peers run for seconds between two MemorySink
    rounds), not on the case.  Every case with ``fresh_memory`` gets this same
    untimed step before its round; the page faults and the kernel's zeroing of
    each page stay in the time.
    """
    if nbytes <= 0:
        return
    scratch = np.empty(nbytes, dtype=np.uint8)  # numpy asks for huge pages, as the sinks do
    scratch.fill(1)
    del scratch


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


class Case:
    """One thing measured on a workload.

    ``prepare(plan)`` once per workload (untimed: allocations, index arrays);
    then per round ``state = setup()``, the timed ``run(state)``,
    ``teardown(state)``; ``release()`` frees what ``prepare`` made.
    ``volume()`` is ``(bytes, writes)`` moved by one ``run``.
    """

    key = ""
    family = ""
    label = ""
    #: The timed run writes into memory it has just allocated (anonymous pages,
    #: a new file's page cache): see :func:`recycle_free_memory`.
    fresh_memory = False

    def __init__(self, quick: bool = False) -> None:
        self.quick = quick
        self.plan: Any = None

    def missing(self) -> str | None:
        """Why this case cannot run here, or None."""
        return None

    def prepare(self, plan: Any) -> None:
        self.plan = plan

    def volume(self) -> tuple[int, int]:
        return int(self.plan.total_bytes), int(self.plan.count)

    def setup(self) -> Any:
        return None

    def setup_round(self) -> Any:
        """``setup()``, preceded for a ``fresh_memory`` case by :func:`recycle_free_memory`."""
        if self.fresh_memory and self.plan is not None:
            recycle_free_memory(int(self.plan.size) + RECYCLE_SLACK)
        return self.setup()

    def run(self, state: Any) -> Any:
        raise NotImplementedError

    def teardown(self, state: Any) -> None:
        pass

    def release(self) -> None:
        self.plan = None

    def rounds(self) -> int:
        full, quick = ROUNDS[self.family]
        return quick if self.quick else full


# -- mdstream ---------------------------------------------------------------


def _cpu_times() -> tuple[float, float] | None:
    """(CPU seconds of the whole process, of the calling thread), or None where unsupported."""
    import resource

    who = getattr(resource, "RUSAGE_THREAD", None)
    if who is None:
        return None
    proc = resource.getrusage(resource.RUSAGE_SELF)
    thread = resource.getrusage(who)
    return proc.ru_utime + proc.ru_stime, thread.ru_utime + thread.ru_stime


def cpu_pair() -> tuple[int, int] | None:
    """Two CPUs this process may run on (producer, consumer), or None (one CPU, or no affinity API)."""
    if os.environ.get("MDSTREAM_BENCH_PIN", "1") in ("0", "no", "false"):
        return None
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


class MdstreamCase(Case):
    """The real callback, driven from a native thread, drained here into one sink.

    With two CPUs available (``cpu_pair``) the producer and the consumer are
    pinned to different ones: the calling thread is moved to the producer CPU
    before :func:`~mdstream.simulator.run_plan` starts the native thread (which
    inherits that affinity) and to the consumer CPU right after (``started``); its
    affinity is restored afterwards.  Without pinning a 2-core machine with any
    other load often runs both on one core, ping-ponging.
    """

    family = "mdstream"
    SINKS = {"null": "ring alone (NullSink)", "memory": "MemorySink", "memory-prefaulted": "MemorySink (prefaulted)",
             "file": "FileSink (/dev/shm)"}

    def __init__(self, sink: str, quick: bool = False, ring_capacity: int = RING_CAPACITY,
                 directory: str | None = None, pin: bool | None = None) -> None:
        super().__init__(quick)
        self.sink = sink
        self.key = f"mdstream/{sink}"
        self.ring_capacity = ring_capacity
        self.directory = directory or scratch_dir()
        self.label = f"mdstream -> {self.SINKS[sink]}".replace("/dev/shm", self.directory)
        self.fresh_memory = sink in ("memory", "file")
        self.cpus = cpu_pair() if pin is None or pin else None

    def setup(self) -> Any:
        import mdstream

        gc.collect()
        ring = mdstream.Ring.create(None, self.ring_capacity)
        callback = mdstream.DumpCallback(ring)
        path = None
        if self.sink == "null":
            sink: Any = mdstream.NullSink()
        elif self.sink == "memory":
            sink = mdstream.MemorySink()
        elif self.sink == "memory-prefaulted":
            # What an agent sets up before any crash: the pages are faulted in
            # here, outside the timed dump (the memcpy baseline's setup too).
            sink = mdstream.MemorySink(size_hint=int(self.plan.size), prefault=True)
        else:
            path = os.path.join(self.directory, _unique("filesink.dmp"))
            sink = mdstream.FileSink(path)
        return {"callback": callback, "sink": sink, "path": path}

    def run(self, state: Any) -> Any:
        from mdstream.simulator import run_plan

        cpu0 = _cpu_times()
        wall0 = time.perf_counter()
        if self.cpus is None:
            result = run_plan(self.plan, state["callback"], [state["sink"]])
        else:
            original = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpus[0]})
            try:
                # The native thread starts on the producer CPU (inherited);
                # then this thread moves to the consumer CPU before draining.
                consumer_cpu = self.cpus[1]
                result = run_plan(self.plan, state["callback"], [state["sink"]],
                                  started=lambda: os.sched_setaffinity(0, {consumer_cpu}))
            finally:
                os.sched_setaffinity(0, original)
        wall = time.perf_counter() - wall0
        cpu1 = _cpu_times()
        if result.written_bytes != self.plan.total_bytes or result.writes != self.plan.count:
            raise RuntimeError(f"{self.key}: drained {result.written_bytes} bytes / {result.writes} writes, "
                               f"expected {self.plan.total_bytes} / {self.plan.count}")
        if cpu0 is not None and cpu1 is not None and wall > 0:
            consumer = cpu1[1] - cpu0[1]
            producer = max(0.0, (cpu1[0] - cpu0[0]) - consumer)  # the process minus this thread
            state["metrics"] = {"producer_cpu": producer / wall, "consumer_cpu": consumer / wall,
                                "records": float(result.records)}
        return result

    def teardown(self, state: Any) -> None:
        path = state.get("path")
        sink = state.pop("sink", None)
        if sink is not None and path is not None and getattr(sink, "state", "") == "open":
            sink.abort(None)
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        state.clear()


# -- memcpy -----------------------------------------------------------------


def _prefaulted(size: int) -> np.ndarray:
    out = np.empty(max(size, 1), dtype=np.uint8)
    out.fill(0)  # touch every page: the copy below measures copying, not page faults
    return out


class MemcpyOnePiece(Case):
    """numpy copying the plan's bytes once, in one call (``np.copyto``), into pre-faulted memory."""

    family = "memcpy"
    key = "memcpy/one-piece"
    label = "numpy copy, one piece"
    dst: Any = None

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        self.total = int(plan.total_bytes)
        self.dst = _prefaulted(self.total)

    def run(self, state: Any) -> None:
        src = self.plan.buffer
        pos = 0
        while pos < self.total:  # one call unless the plan's pool is smaller than the dump
            n = min(self.total - pos, src.size)
            np.copyto(self.dst[pos:pos + n], src[:n])
            pos += n

    def release(self) -> None:
        super().release()
        self.dst = None


class MemcpyFresh(Case):
    """numpy copying the plan's bytes once, in one call, into memory allocated for the round:
    the page faults (and the kernel zeroing each new page) are in the time, as they are
    for a MemorySink or a new file."""

    family = "memcpy"
    key = "memcpy/fresh"
    label = "numpy copy, one piece, fresh memory"
    fresh_memory = True

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        self.total = int(plan.total_bytes)

    def setup(self) -> Any:
        gc.collect()
        return {}

    def run(self, state: Any) -> None:
        dst = np.empty(max(self.total, 1), dtype=np.uint8)  # mmap'd, untouched: faults on first write
        src = self.plan.buffer
        pos = 0
        while pos < self.total:
            n = min(self.total - pos, src.size)
            np.copyto(dst[pos:pos + n], src[:n])
            pos += n
        state["dst"] = dst

    def teardown(self, state: Any) -> None:
        state.clear()


def _strided_pieces(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` seen as overlapping ``size``-byte items starting at every byte (stride 1)."""
    count = array.size - size + 1
    if count <= 0:
        return np.zeros(0, dtype=f"V{size}")
    return np.ndarray((count,), dtype=f"V{size}", buffer=array, strides=(1,))


class MemcpyPieces(Case):
    """numpy copying the same writes one by one: fancy indexing over a void dtype of the
    write's size, so numpy's C loop does one ``memcpy`` per write (no Python per write).

    Writes are grouped by length (one indexing call per distinct length); when a
    group's sources are contiguous in order the source is a plain view, otherwise
    it is gathered in cache-sized chunks first."""

    family = "memcpy"
    key = "memcpy/pieces"
    label = "numpy copy, same-sized pieces"
    dst: Any = None
    CHUNK = 64 * 1024  # writes per gather when sources are scattered

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        size = max(int(plan.size), 1)
        self.dst = _prefaulted(size)
        buf = plan.buffer
        offs = plan.offsets.astype(np.int64)
        lens = plan.lengths.astype(np.int64)
        srcs = plan.sources.astype(np.int64)
        self.ops: list[tuple[np.ndarray, np.ndarray, Any]] = []
        for length in np.unique(lens):
            length = int(length)
            if length == 0:
                continue
            sel = np.flatnonzero(lens == length)
            dview = _strided_pieces(self.dst, length)
            s = srcs[sel]
            contiguous = sel.size == 1 or bool(np.all(np.diff(s) == length))
            if contiguous:
                first = int(s[0])
                rhs = np.ndarray((sel.size,), dtype=f"V{length}", buffer=buf, offset=first, strides=(length,))
                self.ops.append((dview, offs[sel], rhs))
            else:
                sview = _strided_pieces(buf, length)
                for a in range(0, sel.size, self.CHUNK):
                    self.ops.append((dview, offs[sel[a:a + self.CHUNK]], (sview, s[a:a + self.CHUNK])))

    def run(self, state: Any) -> None:
        for dview, idx, rhs in self.ops:
            if isinstance(rhs, tuple):
                sview, sidx = rhs
                dview[idx] = sview[sidx]
            else:
                dview[idx] = rhs

    def release(self) -> None:
        super().release()
        self.ops = []
        self.dst = None


# -- os.pwrite --------------------------------------------------------------


class PwriteCase(Case):
    """``os.pwrite`` of every write, in order, into a new file (what DbgHelp does itself)."""

    family = "pwrite"
    key = "pwrite/new-file"
    fresh_memory = True
    label = "os.pwrite into a new /dev/shm file"
    view: Any = None

    def __init__(self, quick: bool = False, directory: str | None = None) -> None:
        super().__init__(quick)
        self.directory = directory or scratch_dir()
        self.label = type(self).label.replace("/dev/shm", self.directory)

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        self.offsets = plan.offsets.tolist()
        self.starts = plan.sources.tolist()
        self.ends = (plan.sources + plan.lengths.astype(np.uint64)).tolist()
        self.view = memoryview(plan.buffer)

    def setup(self) -> Any:
        gc.collect()
        path = os.path.join(self.directory, _unique("pwrite.dmp"))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        return {"fd": fd, "path": path}

    def run(self, state: Any) -> None:
        fd = state["fd"]
        view = self.view
        pwrite = os.pwrite
        for off, s, e in zip(self.offsets, self.starts, self.ends):
            pwrite(fd, view[s:e], off)

    def teardown(self, state: Any) -> None:
        os.close(state["fd"])
        os.unlink(state["path"])

    def release(self) -> None:
        super().release()
        self.offsets = self.starts = self.ends = []
        if getattr(self, "view", None) is not None:
            self.view.release()
        self.view = None


class PwriteBlocksCase(Case):
    """``os.pwrite`` of the same number of bytes in 1 MiB pieces into a new file, then
    ``fsync``: the medium's own limit, which FileSink (fsync included) is held to."""

    family = "pwrite"
    key = "pwrite/1m-pieces"
    fresh_memory = True
    label = "os.pwrite, 1 MiB pieces, + fsync"
    view: Any = None
    PIECE = MiB

    def __init__(self, quick: bool = False, directory: str | None = None) -> None:
        super().__init__(quick)
        self.directory = directory or scratch_dir()

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        self.total = int(plan.total_bytes)
        self.view = memoryview(plan.buffer)

    def setup(self) -> Any:
        gc.collect()
        path = os.path.join(self.directory, _unique("pwrite-1m.dmp"))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        return {"fd": fd, "path": path}

    def run(self, state: Any) -> None:
        fd = state["fd"]
        view = self.view
        pool = len(view)
        pos = 0
        while pos < self.total:  # the pool is reused when it is smaller than the dump
            start = pos % pool if pool else 0
            n = min(self.PIECE, self.total - pos, pool - start)
            pos += os.pwrite(fd, view[start:start + n], pos)
        os.fsync(fd)

    def teardown(self, state: Any) -> None:
        os.close(state["fd"])
        os.unlink(state["path"])

    def release(self) -> None:
        super().release()
        if getattr(self, "view", None) is not None:
            self.view.release()
        self.view = None


# -- peers ------------------------------------------------------------------


class PeerCase(Case):
    """A queue or ring a user could pick instead, moving the same messages (one per write)
    from one producer to one consumer.

    The consumer only receives each message and counts its bytes (it is told
    the message count; it does not apply anything at an offset), which is
    generous to the peers.  Peers move the first messages of the plan, up to
    ``PEER_MAX_MESSAGES`` / ``PEER_MAX_BYTES``: their rate per message is
    steady long before that.
    """

    family = "peer"
    module = ""
    package = ""
    producer = "process"
    install_hint = ""
    view: Any = None

    def __init__(self, quick: bool = False) -> None:
        super().__init__(quick)
        self.key = f"peer/{self.package}"

    def missing(self) -> str | None:
        import importlib

        if self.producer == "process" and "fork" not in _mp().get_all_start_methods():
            return "needs the 'fork' start method"
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken build
            return (f"{self.package} is not installed ({type(exc).__name__}: {exc}); "
                    f"pip install 'mdstream[bench]'" + (f" ({self.install_hint})" if self.install_hint else ""))
        return None

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        max_msgs, max_bytes = (PEER_MAX_MESSAGES[1], PEER_MAX_BYTES[1]) if self.quick else \
            (PEER_MAX_MESSAGES[0], PEER_MAX_BYTES[0])
        lens = plan.lengths.astype(np.int64)
        csum = np.cumsum(lens)
        n = int(min(plan.count, max_msgs, max(1, int(np.searchsorted(csum, max_bytes, side="right")))))
        self.count = n
        self.nbytes = int(csum[n - 1]) if n else 0
        self.lengths = plan.lengths[:n].astype(np.int64)
        self.starts = plan.sources[:n].tolist()
        self.ends = (plan.sources[:n] + plan.lengths[:n].astype(np.uint64)).tolist()
        self.max_message = int(self.lengths.max()) if n else 0
        self.view = memoryview(plan.buffer)

    def volume(self) -> tuple[int, int]:
        return self.nbytes, self.count

    def release(self) -> None:
        super().release()
        self.starts = self.ends = []
        if getattr(self, "view", None) is not None:
            self.view.release()
        self.view = None

    def messages(self) -> Iterable[memoryview]:
        view = self.view
        return (view[s:e] for s, e in zip(self.starts, self.ends))

    def _deadline(self) -> float:
        return time.monotonic() + PEER_TIMEOUT


def _import(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


def _mp() -> Any:
    import multiprocessing

    return multiprocessing


def _fork_context() -> Any:
    return _mp().get_context("fork")


def _join(proc: Any) -> None:
    proc.join(10)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)


def _queue_producer(put: Callable[[bytes], Any], go: Any, messages: Iterable[memoryview]) -> None:
    go.wait()
    for m in messages:
        put(bytes(m))


class MpQueuePeer(PeerCase):
    module = "multiprocessing"
    package = "multiprocessing.Queue"
    label = "multiprocessing.Queue (producer process)"

    def __init__(self, quick: bool = False) -> None:
        super().__init__(quick)
        self.key = "peer/multiprocessing.Queue"

    def setup(self) -> Any:
        ctx = _fork_context()
        q = ctx.Queue()
        go = ctx.Event()
        proc = ctx.Process(target=_queue_producer, args=(q.put, go, self.messages()), daemon=True)
        proc.start()
        return {"q": q, "go": go, "proc": proc}

    def run(self, state: Any) -> None:
        get = state["q"].get
        state["go"].set()
        total = 0
        for _ in range(self.count):
            total += len(get(timeout=PEER_TIMEOUT))
        if total != self.nbytes:
            raise RuntimeError(f"{self.key}: received {total} bytes, expected {self.nbytes}")

    def teardown(self, state: Any) -> None:
        _join(state["proc"])
        state["q"].close()
        state["q"].join_thread()


class FasterFifoPeer(PeerCase):
    module = "faster_fifo"
    package = "faster-fifo"
    install_hint = ""
    label = "faster-fifo (producer process, get_many)"

    def setup(self) -> Any:
        faster_fifo = _import("faster_fifo")

        ctx = _fork_context()
        size = max(RING_CAPACITY, 4 * self.max_message + 64 * KiB)
        q = faster_fifo.Queue(max_size_bytes=size)
        go = ctx.Event()

        def put(data: bytes, _put: Any = q.put) -> None:
            _put(data, timeout=PEER_TIMEOUT)

        proc = ctx.Process(target=_queue_producer, args=(put, go, self.messages()), daemon=True)
        proc.start()
        return {"q": q, "go": go, "proc": proc}

    def run(self, state: Any) -> None:
        get_many = state["q"].get_many
        state["go"].set()
        got = total = 0
        while got < self.count:
            msgs = get_many(timeout=PEER_TIMEOUT, max_messages_to_get=self.count - got)
            got += len(msgs)
            total += sum(map(len, msgs))
        if total != self.nbytes:
            raise RuntimeError(f"{self.key}: received {total} bytes, expected {self.nbytes}")

    def teardown(self, state: Any) -> None:
        _join(state["proc"])
        state["q"].close()


class RingbufPeer(PeerCase):
    module = "ringbuf"
    package = "ringbuf"
    producer = "thread"
    install_hint = "an sdist: building it needs Boost, e.g. apt-get install libboost-dev libboost-system-dev"
    label = "ringbuf (producer thread, pop per message)"

    def setup(self) -> Any:
        ringbuf = _import("ringbuf")

        capacity = max(RING_CAPACITY, 2 * self.max_message)
        rb = ringbuf.RingBuffer(format="B", capacity=capacity)
        go = threading.Event()
        failure: list[BaseException] = []
        messages = self.messages()

        def produce() -> None:
            try:
                go.wait()
                push = rb.push
                sleep = time.sleep
                for m in messages:
                    rest = push(m)
                    while rest is not None:
                        sleep(0)  # full: let the consumer have the GIL
                        rest = push(rest)
            except BaseException as exc:  # pragma: no cover - reported by run()
                failure.append(exc)

        thread = threading.Thread(target=produce, name="ringbuf-producer", daemon=True)
        thread.start()
        return {"rb": rb, "go": go, "thread": thread, "failure": failure}

    def run(self, state: Any) -> None:
        pop = state["rb"].pop
        sleep = time.sleep
        deadline = self._deadline()
        state["go"].set()
        total = 0
        for need in self.lengths.tolist():
            while need:
                part = pop(need)
                if part is None:
                    if state["failure"]:
                        raise state["failure"][0]
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.key}: stuck")
                    sleep(0)
                    continue
                got = len(part)
                need -= got
                total += got
        if total != self.nbytes:
            raise RuntimeError(f"{self.key}: received {total} bytes, expected {self.nbytes}")

    def teardown(self, state: Any) -> None:
        state["thread"].join(10)


def _shm_ring_producer(rb: Any, go: Any, messages: Iterable[memoryview]) -> None:
    go.wait()
    write = rb.write
    for m in messages:
        while not write(m):
            pass


class ShmRingBufferPeer(PeerCase):
    module = "ring_buffer"
    package = "shm-ring-buffer"
    label = "shm-ring-buffer (producer process)"

    def prepare(self, plan: Any) -> None:
        super().prepare(plan)
        # Slots are fixed-size and a write must fill its slot: messages shorter
        # than the largest are sent padded to it (more bytes, same count).
        self.item = self.max_message
        if self.count and int(self.lengths.min()) != self.item:
            padded = np.zeros(plan.buffer.size + self.item, dtype=np.uint8)
            padded[:plan.buffer.size] = plan.buffer
            self.view.release()
            self.view = padded.data
            self.ends = [s + self.item for s in self.starts]
            self.padded_bytes = self.item * self.count
        else:
            self.padded_bytes = self.nbytes

    def setup(self) -> Any:
        BytesShmRingBuffer = _import("ring_buffer").BytesShmRingBuffer

        ctx = _fork_context()
        slots = max(2, RING_CAPACITY // max(self.item, 1))
        stem = _unique("srb").replace("-", "_")
        rb = BytesShmRingBuffer(slots=slots, item_size=self.item, buf_shm_name=stem + "_b",
                                read_idx_shm_name=stem + "_r", write_idx_shm_name=stem + "_w", create=True)
        go = ctx.Event()
        proc = ctx.Process(target=_shm_ring_producer, args=(rb, go, self.messages()), daemon=True)
        proc.start()
        return {"rb": rb, "go": go, "proc": proc}

    def run(self, state: Any) -> None:
        rb = state["rb"]
        read, release = rb.read, rb.release
        proc = state["proc"]
        deadline = self._deadline()
        state["go"].set()
        got = total = idle = 0
        while got < self.count:
            m = read()
            if m is None:
                idle += 1
                if idle & 0xFFFFF == 0 and (time.monotonic() > deadline or not proc.is_alive()):
                    raise TimeoutError(f"{self.key}: stuck after {got} messages")
                continue
            total += len(m)
            release()
            got += 1
        if total != self.padded_bytes:
            raise RuntimeError(f"{self.key}: received {total} bytes, expected {self.padded_bytes}")

    def teardown(self, state: Any) -> None:
        _join(state["proc"])
        state["rb"].close()


_TACHYON_FAILED = 0xBEEF


def _tachyon_producer(path: str, go: Any, done: Any, messages: Iterable[memoryview]) -> None:
    tachyon = _import("tachyon")
    bus = None
    for _ in range(2000):
        try:
            bus = tachyon.Bus.connect(path)
            break
        except Exception:
            time.sleep(0.005)
    if bus is None:
        return
    with bus:
        go.wait()
        send = bus.send
        error = tachyon.TachyonError
        sleep = time.sleep
        try:
            for m in messages:
                stuck_since = 0.0
                while True:
                    try:
                        send(m)
                        break
                    except error:  # full: send() does not wait for space
                        now = time.monotonic()
                        if not stuck_since:
                            stuck_since = now
                        elif now - stuck_since > 30.0:
                            raise
                        sleep(0)
        except BaseException:
            # Tell the consumer (blocked in drain_batch) that no more is coming.
            for _ in range(10000):
                try:
                    send(b"", type_id=_TACHYON_FAILED)
                    break
                except error:
                    sleep(0.001)
            raise
        done.wait(PEER_TIMEOUT)


class TachyonPeer(PeerCase):
    module = "tachyon"
    package = "tachyon-ipc"
    install_hint = ("an sdist needing GCC >= 14 or Clang >= 17, e.g. apt-get install clang-19 lld-19; "
                    "CC=clang-19 CXX=clang++-19 LDSHARED='clang++-19 -shared -fuse-ld=lld-19' pip install tachyon-ipc")
    label = "tachyon-ipc (producer process, drain_batch)"

    def setup(self) -> Any:
        tachyon = _import("tachyon")
        ctx = _fork_context()
        path = os.path.join(tempfile.gettempdir(), _unique("tachyon.sock"))
        # tachyon-ipc 0.5.1 stalls for good with 1 MiB messages in an 8 MiB bus
        # (7 messages, then "full" forever): give it 64 messages' worth.
        capacity = 1 << (max(RING_CAPACITY, 64 * self.max_message) - 1).bit_length()
        go, done = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_tachyon_producer, args=(path, go, done, self.messages()), daemon=True)
        proc.start()
        bus = tachyon.Bus.listen(path, capacity)  # returns once the producer connected
        return {"bus": bus, "go": go, "done": done, "proc": proc, "path": path}

    def run(self, state: Any) -> None:
        bus = state["bus"]
        state["go"].set()
        got = total = 0
        while got < self.count:
            with bus.drain_batch(max_msgs=1024) as batch:
                for msg in batch:
                    if msg.type_id == _TACHYON_FAILED:
                        raise RuntimeError(f"{self.key}: the producer failed after {got} messages")
                    total += msg.actual_size
                got += len(batch)
        if total != self.nbytes:
            raise RuntimeError(f"{self.key}: received {total} bytes, expected {self.nbytes}")

    def teardown(self, state: Any) -> None:
        state["done"].set()
        _join(state["proc"])
        state["bus"].__exit__(None, None, None)
        try:
            os.unlink(state["path"])
        except OSError:
            pass


PEERS: tuple[type[PeerCase], ...] = (MpQueuePeer, FasterFifoPeer, RingbufPeer, TachyonPeer, ShmRingBufferPeer)


def cases_for(quick: bool = False, *, peers: bool = True, directory: str | None = None,
              pin: bool = True) -> list[Case]:
    """Every case, in the order they run within a round (``pin``: producer and consumer on two CPUs)."""
    cases: list[Case] = [
        MdstreamCase("null", quick, directory=directory, pin=pin),
        MdstreamCase("memory", quick, directory=directory, pin=pin),
        MdstreamCase("memory-prefaulted", quick, directory=directory, pin=pin),
        MdstreamCase("file", quick, directory=directory, pin=pin),
        MemcpyOnePiece(quick),
        MemcpyFresh(quick),
        MemcpyPieces(quick),
        PwriteCase(quick, directory=directory),
        PwriteBlocksCase(quick, directory=directory),
    ]
    if peers:
        cases += [p(quick) for p in PEERS]
    return cases


# --------------------------------------------------------------------------
# Peak RSS
# --------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    import resource

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def _rss_child(total_bytes: int, write_size: int, ring_capacity: int, directory: str) -> None:
    """Runs in a fresh interpreter: stream a dump into FileSink and print RSS figures as JSON."""
    import mdstream
    from mdstream.schedules import synthetic_plan
    from mdstream.simulator import run_plan

    plan = synthetic_plan("sized", write_size=write_size, total_bytes=total_bytes, pool_bytes=min(total_bytes, 8 * MiB))
    path = os.path.join(directory, _unique("rss.dmp"))
    ring = mdstream.Ring.create(None, ring_capacity)
    callback = mdstream.DumpCallback(ring)
    sink = mdstream.FileSink(path)
    gc.collect()
    rss_before = (_status_kib("VmRSS") or 0) * 1024
    maxrss_before = _maxrss_bytes()
    try:  # reset the high-water mark so VmHWM is the streaming peak alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    started = time.perf_counter()
    result = run_plan(plan, callback, [sink])
    seconds = time.perf_counter() - started
    maxrss = _maxrss_bytes()
    hwm = (_status_kib("VmHWM") or 0) * 1024
    size = os.path.getsize(path)
    os.unlink(path)
    print(json.dumps({
        "dump_bytes": int(result.written_bytes), "file_bytes": size, "writes": int(result.writes), "seconds": seconds,
        "rss_before": rss_before, "maxrss_before": maxrss_before, "maxrss": maxrss,
        "hwm_streaming": hwm if hwm_reset else None,
    }))


def measure_rss(quick: bool = False, *, total_bytes: int | None = None, write_size: int = KiB,
                ring_capacity: int = RING_CAPACITY, directory: str | None = None,
                timeout: float = 600.0) -> dict[str, Any]:
    """Stream a dump of ``total_bytes`` (1 GiB; 64 MiB quick) in ``write_size`` writes through a
    ``ring_capacity`` ring into a FileSink, in a subprocess, and report its peak RSS
    (``resource.getrusage``).

    ``peak_rss`` is the process's whole peak (interpreter, numpy and the
    simulated writer's plan included); ``streaming_growth`` is how far the peak
    rose above the RSS just before streaming started, which is what the budget
    (ring + 64 MiB) is about.
    """
    total = total_bytes or (RSS_DUMP_BYTES[1] if quick else RSS_DUMP_BYTES[0])
    directory = directory or scratch_dir()
    code = (f"from mdstream.bench import _rss_child; "
            f"_rss_child({int(total)}, {int(write_size)}, {int(ring_capacity)}, {directory!r})")
    # Through a small intermediate interpreter: Linux carries a process's peak
    # RSS across fork+exec, so a child forked straight from this (large)
    # process would report our peak, not its own.
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = max(data["maxrss_before"], data["maxrss"], data["hwm_streaming"] or 0)
    streaming_peak = data["hwm_streaming"] if data["hwm_streaming"] else data["maxrss"]
    growth = max(0, streaming_peak - data["rss_before"])
    budget = ring_capacity + RSS_BUDGET_EXTRA
    data.update({
        "ring_capacity": ring_capacity, "write_size": write_size, "budget": budget,
        "peak_rss": peak, "streaming_peak": streaming_peak, "streaming_growth": growth,
        "within_budget": growth <= budget, "peak_within_budget": peak <= budget,
    })
    return data


# --------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def core_digest() -> str:
    """sha256 (12 hex digits) of the C core's sources as installed: which core was measured.

    (It hashes sources, not the compiled modules: after editing the core, rebuild before measuring.)"""
    base = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for sub, ext in (("src", (".c", ".h")), (os.path.join("include", "mdstream"), (".h",))):
        d = os.path.join(base, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith(ext):
                h.update(name.encode())
                with open(os.path.join(d, name), "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:12]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import mdstream

    cpu = platform.processor() or platform.machine()
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = None
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "affinity": affinity,
        "memory_bytes": mem,
        "virtualized": " hypervisor" in flags,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mdstream": mdstream.__version__,
        "core_digest": core_digest(),
        "clocksource": _read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "scratch_dir": scratch_dir(),
    }


# --------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------


def summarize(seconds: Sequence[float], nbytes: int, writes: int,
              metrics: Sequence[dict[str, float]] = ()) -> dict[str, Any]:
    """Median-based figures for one case (``metrics``: per-round extras, summarized by median)."""
    med = statistics.median(seconds)
    extra: dict[str, float] = {}
    for name in sorted({k for m in metrics for k in m}):
        values = [m[name] for m in metrics if name in m]
        extra[name] = statistics.median(values)
    return {
        "metrics": extra,
        "status": "ok",
        "rounds": len(seconds),
        "seconds": list(seconds),
        "median_s": med,
        "min_s": min(seconds),
        "bytes": nbytes,
        "writes": writes,
        "gbps": nbytes / med / 1e9 if med > 0 else 0.0,
        "mwps": writes / med / 1e6 if med > 0 else 0.0,
    }


def add_ratios(workload_result: dict[str, Any]) -> None:
    """Ratio of every case to the one-piece memcpy (bytes/s) and to the best peer (writes/s)."""
    cases = workload_result["cases"]
    memcpy = cases.get("memcpy/one-piece", {})
    base = memcpy.get("gbps") if memcpy.get("status") == "ok" else None
    peers = {k: v for k, v in cases.items() if k.startswith("peer/") and v.get("status") == "ok"}
    best = max(peers, key=lambda k: peers[k]["mwps"]) if peers else None
    workload_result["best_peer"] = best
    for v in cases.values():
        if v.get("status") != "ok":
            continue
        v["x_memcpy"] = v["gbps"] / base if base else None
        v["x_best_peer"] = v["mwps"] / peers[best]["mwps"] if best else None


#: The --full dump measurement: this much memory touched in the target (full, quick), rounds (full, quick).
LINUX_FULL_BYTES = (500 * MiB, 32 * MiB)
LINUX_FULL_ROUNDS = (5, 1)

_FULL_TARGET_CODE = (
    "import sys, numpy as np\n"
    "data = np.empty({size}, dtype=np.uint8)\n"
    "data[:] = np.arange(data.size, dtype=np.uint64).astype(np.uint8)  # every page touched, not zero\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()  # until the benchmark closes our stdin\n"
)


def _memory64_ranges(path: str) -> list[tuple[int, int]]:
    """The (address, size) pairs of a minidump's Memory64List: what a full dump copied."""
    with open(path, "rb") as f:
        header = f.read(32)
        _sig, _ver, count, dir_rva = struct.unpack_from("<IIII", header)
        f.seek(dir_rva)
        directory = f.read(12 * count)
        for i in range(count):
            stype, _size, rva = struct.unpack_from("<III", directory, 12 * i)
            if stype == 9:  # Memory64ListStream
                f.seek(rva)
                n, _base = struct.unpack("<QQ", f.read(16))
                raw = f.read(16 * n)
                return [struct.unpack_from("<QQ", raw, 16 * k) for k in range(n)]
    return []


class FirstBatchClock:
    """A sink that only notes when its first batch arrived (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.first: float | None = None

    def consume(self, batch: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def finish(self, *args: Any, **kwargs: Any) -> None:
        pass

    def abort(self, *args: Any, **kwargs: Any) -> None:
        pass


def measure_replay_start(source: str, directory: str | None = None, schedule: str = "writer") -> dict[str, float]:
    """How soon a replay of ``source`` starts writing: ``plan_for`` (the source is
    mapped, not read), then ``simulator.replay`` into a FileSink, with a
    :class:`FirstBatchClock` before it.  ``first_write_s`` runs from calling
    ``plan_for`` to the first batch reaching the consumer (a little after the
    first write entered the ring)."""
    from mdstream import FileSink
    from mdstream.schedules import plan_for
    from mdstream.simulator import replay

    out = os.path.join(directory or scratch_dir(), _unique("replay.dmp"))
    clock = FirstBatchClock()
    t0 = time.perf_counter()
    plan = plan_for(source, schedule=schedule)
    planned = time.perf_counter()
    try:
        replay(plan, sinks=[clock, FileSink(out)], schedule=schedule)
        done = time.perf_counter()
    finally:
        if os.path.exists(out):
            os.unlink(out)
    if clock.first is None:
        raise RuntimeError(f"the replay of {source} wrote nothing")
    return {"plan_s": planned - t0, "first_write_s": clock.first - t0, "replay_s": done - t0,
            "writes": float(plan.count), "bytes": float(plan.total_bytes)}


def measure_linux_full(quick: bool = False, *, directory: str | None = None, rounds: int | None = None,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The Linux writer's ``--full`` dump of a process with ``LINUX_FULL_BYTES`` touched,
    into a FileSink, against one ``process_vm_readv`` pass over the very ranges the
    dump holds (into one reused buffer).  Per round: end-to-end seconds, the
    target's stopped seconds, and the pass's seconds."""
    from mdstream import FileSink
    from mdstream import linux as linux_writer
    from mdstream._linux import read_pass

    log = log or (lambda message: None)
    size = LINUX_FULL_BYTES[1 if quick else 0]
    n_rounds = rounds or LINUX_FULL_ROUNDS[1 if quick else 0]
    directory = directory or scratch_dir()
    child = subprocess.Popen([sys.executable, "-c", _FULL_TARGET_CODE.format(size=size)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("the target process did not start")
        out: dict[str, Any] = {"touched_bytes": size, "end_to_end_seconds": [], "stopped_seconds": [],
                               "readv_seconds": [], "directory": directory, "replay": []}
        ranges: list[tuple[int, int]] = []
        for r in range(n_rounds):
            path = os.path.join(directory, _unique("full.dmp"))
            recycle_free_memory(2 * size + RECYCLE_SLACK)  # the dump's buffers and its file are fresh memory
            t0 = time.perf_counter()
            result = linux_writer.write_dump(child.pid, FileSink(path), full=True)
            elapsed = time.perf_counter() - t0
            try:
                if not ranges:
                    ranges = _memory64_ranges(path)
                    out["dump_bytes"] = os.path.getsize(path)
                    out["memory_bytes"] = sum(n for _a, n in ranges)
                # The dump just written, replayed (writer schedule): planning and the first write.
                out["replay"].append(measure_replay_start(path, directory))
            finally:
                os.unlink(path)
            figures = result.to_dict()
            read_bytes, read_seconds = read_pass(child.pid, ranges)
            out["readv_bytes"] = read_bytes
            out["end_to_end_seconds"].append(elapsed)
            out["stopped_seconds"].append(float(figures.get("stopped_seconds") or 0.0))
            out["readv_seconds"].append(read_seconds)
            log(f"[linux --full] round {r + 1}/{n_rounds}: {out['dump_bytes'] / MiB:,.0f} MiB dump in "
                f"{elapsed * 1e3:.0f} ms (target stopped {out['stopped_seconds'][-1] * 1e3:.0f} ms); "
                f"process_vm_readv pass {read_seconds * 1e3:.0f} ms")
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    e2e = statistics.median(out["end_to_end_seconds"])
    readv = statistics.median(out["readv_seconds"])
    replays = out["replay"]
    out["replay_writes"] = replays[0]["writes"]
    out["median_replay_plan_s"] = statistics.median(r["plan_s"] for r in replays)
    out["median_replay_first_write_s"] = statistics.median(r["first_write_s"] for r in replays)
    out["median_end_to_end_s"] = e2e
    out["median_stopped_s"] = statistics.median(out["stopped_seconds"])
    out["median_readv_s"] = readv
    # Rates, since the pass reads the memory ranges and the dump also writes its metadata.
    out["end_to_end_gbps"] = out["memory_bytes"] / e2e / 1e9 if e2e else None
    out["readv_gbps"] = out["readv_bytes"] / readv / 1e9 if readv else None
    out["status"] = "ok"
    return out


def _case_value(results: dict[str, Any], workload: str, key: str, field_name: str) -> float | None:
    case = results.get("workloads", {}).get(workload, {}).get("cases", {}).get(key)
    if not case or case.get("status") != "ok":
        return None
    value = case.get(field_name)
    return float(value) if value is not None else None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets against these results (reported, never asserted)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, threshold: float, unit: str, note: str = "",
            complete: bool = True) -> None:
        # ``complete=False``: the comparison lacks some of its baselines, so it is not a verdict.
        targets.append({"target": name, "value": value, "threshold": threshold, "unit": unit,
                        "met": None if value is None or not complete else value >= threshold, "note": note})

    add("ring alone, 64k: x one-piece memcpy", _case_value(results, "64k", "mdstream/null", "x_memcpy"), 0.8, "x")
    add("ring alone, 1k: x one-piece memcpy", _case_value(results, "1k", "mdstream/null", "x_memcpy"), 0.5, "x")
    add("tiny into MemorySink: M writes/s", _case_value(results, "tiny", "mdstream/memory", "mwps"), 10.0, "M/s",
        "aim 20")
    w1k = results.get("workloads", {}).get("1k", {})
    peer_cases = [v for k, v in w1k.get("cases", {}).items() if k.startswith("peer/")]
    measured = sum(1 for v in peer_cases if v.get("status") == "ok")
    all_peers = bool(peer_cases) and measured == len(peer_cases)
    partial = "" if all_peers else f"; not measured: only {measured} of {len(peer_cases)} peers ran"
    add("1k into MemorySink: x best peer", _case_value(results, "1k", "mdstream/memory", "x_best_peer"), 10.0, "x",
        f"best: {w1k.get('best_peer') or 'none'}; {measured} of {len(peer_cases)} peers measured", all_peers)
    add("1k into MemorySink (prefaulted): x best peer",
        _case_value(results, "1k", "mdstream/memory-prefaulted", "x_best_peer"), 10.0, "x",
        "sink memory faulted in before the dump, like the one-piece memcpy baseline" + partial, all_peers)
    mem = _case_value(results, "1k", "mdstream/memory", "gbps")
    pw = _case_value(results, "1k", "pwrite/new-file", "gbps")
    add("1k into MemorySink: x os.pwrite", mem / pw if mem and pw else None, 2.0, "x")
    # Issue 14: the sinks at the speed of their medium.
    add("tiny into FileSink: M writes/s", _case_value(results, "tiny", "mdstream/file", "mwps"), 10.0, "M/s")
    for name in ("1k", "64k", "1m"):
        fs = _case_value(results, name, "mdstream/file", "gbps")
        blocks = _case_value(results, name, "pwrite/1m-pieces", "gbps")
        add(f"{name} into FileSink (fsync included): x os.pwrite in 1 MiB pieces + fsync",
            fs / blocks if fs and blocks else None, 0.9, "x",
            f"same file system ({results.get('directory') or 'default dir'}); the target is >= 0.5 on a disk")
    for name in ("1k", "64k", "1m"):  # tiny: a one-piece copy of 10 MiB is no baseline for 1 M writes
        ms = _case_value(results, name, "mdstream/memory", "gbps")
        fresh = _case_value(results, name, "memcpy/fresh", "gbps")
        add(f"{name} into MemorySink (no size hint): x numpy fresh-memory copy",
            ms / fresh if ms and fresh else None, 0.8, "x")
    full = results.get("linux_full") or {}
    if full.get("status") == "ok":
        ratio = (full["end_to_end_gbps"] / full["readv_gbps"]
                 if full.get("end_to_end_gbps") and full.get("readv_gbps") else None)
        add("Linux writer --full into FileSink: x one process_vm_readv pass", ratio, 0.5, "x",
            f"{full['memory_bytes'] / MiB:,.0f} MiB of memory; target stopped "
            f"{full['median_stopped_s'] * 1e3:.0f} ms of {full['median_end_to_end_s'] * 1e3:.0f} ms; "
            f"FileSink in {full.get('directory')}")
    if full.get("status") == "ok" and full.get("median_replay_plan_s"):
        add("replay planning (writer schedule) of the --full dump: M planned writes/s",
            full["replay_writes"] / full["median_replay_plan_s"] / 1e6, 10.0, "M/s",
            f"{full['replay_writes']:,.0f} writes, {full['dump_bytes'] / 1e9:.2f} GB dump")
        targets.append({
            "target": "replay of the --full dump: first write after starting it, s",
            "value": full["median_replay_first_write_s"], "threshold": 0.2, "unit": "s",
            "met": full["median_replay_first_write_s"] <= 0.2, "lower_is_better": True,
            "note": f"{full['dump_bytes'] / 1e9:.2f} GB dump; the issue's target is for 1.6 GB "
                    f"(benchmarks/replay_first_write.py DUMP measures any dump)",
        })
    rss = results.get("rss") or {}
    if rss.get("budget"):
        growth = rss.get("streaming_growth")
        targets.append({
            "target": f"peak RSS growth, {rss['dump_bytes'] / MiB:.0f} MiB dump via "
                      f"{rss['ring_capacity'] / MiB:.0f} MiB ring into FileSink",
            "value": growth / MiB if growth is not None else None,
            "threshold": rss["budget"] / MiB, "unit": "MiB", "met": rss.get("within_budget"),
            "note": f"whole-process peak {rss['peak_rss'] / MiB:.1f} MiB "
                    f"({rss['rss_before'] / MiB:.1f} MiB before streaming)",
            "lower_is_better": True,
        })
    return targets


def run(quick: bool = False, *, workloads: Sequence[str] | None = None, peers: bool = True, rss: bool = True,
        linux_full: bool = True, rounds: int | None = None, directory: str | None = None, pin: bool = True,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every workload with every case (rounds interleaved, so drift hits all cases alike)
    and the RSS check; return a JSON-ready dict (``format_table`` prints it).

    ``quick``: small sizes and 1-2 rounds (well under a minute: a smoke test,
    not a measurement).  ``rounds`` overrides the per-family round counts.
    ``pin``: run mdstream's producer and consumer on two different CPUs
    (:class:`MdstreamCase`; also off with ``MDSTREAM_BENCH_PIN=0``).
    """
    log = log or (lambda message: None)
    names = list(workloads) if workloads else list(WORKLOADS)
    for name in names:
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    started = time.time()
    results: dict[str, Any] = {
        "format": "mdstream-bench/1",
        "quick": bool(quick),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "config": {
            "ring_capacity": RING_CAPACITY,
            "rounds": {k: (rounds or (q if quick else f)) for k, (f, q) in ROUNDS.items()},
            "peer_max_messages": PEER_MAX_MESSAGES[1 if quick else 0],
            "peer_max_bytes": PEER_MAX_BYTES[1 if quick else 0],
            "pinned_cpus": list(cpu_pair() or ()) if pin else [],
            # Untimed before each fresh-memory round (recycle_free_memory).
            "fresh_memory_recycled": True,
        },
        "directory": directory or scratch_dir(),
        "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "workloads": {},
    }
    for name in names:
        w = WORKLOADS[name]
        log(f"[{name}] building the plan")
        plan = build_plan(name, quick)
        wres: dict[str, Any] = {
            "description": w.description, "write_size": w.write_size, "writes": int(plan.count),
            "bytes": int(plan.total_bytes), "size": int(plan.size), "cases": {},
        }
        results["workloads"][name] = wres
        active: list[Case] = []
        for case in cases_for(quick, peers=peers, directory=directory, pin=pin):
            reason = case.missing()
            if reason:
                wres["cases"][case.key] = {"status": "missing", "reason": reason, "label": case.label}
                continue
            try:
                case.prepare(plan)
            except Exception as exc:
                wres["cases"][case.key] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                                           "label": case.label}
                continue
            active.append(case)
        timings: dict[str, list[float]] = {c.key: [] for c in active}
        metrics: dict[str, list[dict[str, float]]] = {c.key: [] for c in active}
        failed: dict[str, str] = {}
        max_rounds = max((rounds or c.rounds()) for c in active) if active else 0
        for r in range(max_rounds):
            for case in active:
                if case.key in failed or r >= (rounds or case.rounds()):
                    continue
                try:
                    state = case.setup_round()
                    try:
                        t0 = time.perf_counter()
                        case.run(state)
                        dt = time.perf_counter() - t0
                        if isinstance(state, dict) and isinstance(state.get("metrics"), dict):
                            metrics[case.key].append(state["metrics"])
                    finally:
                        case.teardown(state)
                except Exception as exc:
                    failed[case.key] = f"{type(exc).__name__}: {exc}"
                    log(f"[{name}] {case.key} failed: {failed[case.key]}")
                    continue
                timings[case.key].append(dt)
                nbytes, writes = case.volume()
                log(f"[{name}] round {r + 1}/{max_rounds} {case.key:28s} {dt * 1e3:9.1f} ms "
                    f"{nbytes / dt / 1e9:7.2f} GB/s {writes / dt / 1e6:8.2f} M writes/s")
        for case in active:
            nbytes, writes = case.volume()
            if case.key in failed:
                wres["cases"][case.key] = {"status": "failed", "reason": failed[case.key], "label": case.label}
            else:
                wres["cases"][case.key] = dict(summarize(timings[case.key], nbytes, writes, metrics[case.key]),
                                               label=case.label)
            case.release()
        add_ratios(wres)
        del plan, active
        gc.collect()
    if linux_full:
        if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
            log("[linux --full] dumping a process with its memory touched, and one process_vm_readv pass")
            try:
                results["linux_full"] = measure_linux_full(quick, directory=directory, log=log)
            except Exception as exc:
                results["linux_full"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        else:
            results["linux_full"] = {"status": "missing", "reason": "the Linux writer needs Linux on x86-64"}
    if rss:
        log("[rss] streaming through a 4 MiB ring into FileSink in a subprocess")
        try:
            results["rss"] = measure_rss(quick, directory=directory)
        except Exception as exc:
            results["rss"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    results["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["seconds"] = time.time() - started
    results["targets"] = evaluate_targets(results)
    return results


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(results: dict[str, Any]) -> str:
    """The human-readable table: rate per workload and case, ratios, targets."""
    lines: list[str] = []
    m = results.get("machine", {})
    lines.append(f"mdstream bench{' --quick (smoke test, not a measurement)' if results.get('quick') else ''}: "
                 f"{m.get('cpu')} x{m.get('cpus')}, Python {m.get('python')}, numpy {m.get('numpy')}, "
                 f"core {m.get('core_digest')}")
    la, lb = results.get("loadavg_before"), results.get("loadavg_after")
    if la:
        lines.append(f"load average before {la[0]:.2f}, after {lb[0] if lb else float('nan'):.2f}; "
                     f"medians of {results['config']['rounds']['mdstream']} rounds "
                     f"(peers {results['config']['rounds']['peer']}); ring {results['config']['ring_capacity'] // MiB} MiB; "
                     + (f"producer on CPU {results['config']['pinned_cpus'][0]}, consumer on CPU "
                        f"{results['config']['pinned_cpus'][1]}" if results["config"].get("pinned_cpus")
                        else "producer and consumer placed by the scheduler"))
    header = (f"{'workload':8s} {'path':44s} {'median':>10s} {'GB/s':>7s} {'M wr/s':>8s} {'x memcpy':>9s} "
              f"{'x peer':>8s} {'prod/cons CPU':>14s}")
    absent = _missing_cases(results)
    for name, w in results.get("workloads", {}).items():
        lines.append("")
        lines.append(f"{name}: {w['description']} -- {w['writes']:,} writes, {w['bytes'] / MiB:,.1f} MiB"
                     + (f"; best peer {w['best_peer']}" if w.get("best_peer") else "; no peer measured"))
        lines.append(header)
        for key, c in w["cases"].items():
            label = c.get("label", key)
            if c.get("status") == "missing" and key in absent:
                continue  # listed once, below the tables
            if c.get("status") != "ok":
                lines.append(f"{name:8s} {label:44s} {c.get('status', '?').upper()}: {c.get('reason', '')}")
                continue
            m = c.get("metrics") or {}
            cpu = (f"{m['producer_cpu'] * 100:5.0f}%/{m['consumer_cpu'] * 100:4.0f}%"
                   if "producer_cpu" in m and "consumer_cpu" in m else "")
            lines.append(f"{name:8s} {label:44s} {c['median_s'] * 1e3:8.1f}ms {c['gbps']:7.2f} {c['mwps']:8.2f} "
                         f"{_fmt(c.get('x_memcpy'), '9.2f'):>9s} {_fmt(c.get('x_best_peer'), '8.1f'):>8s} {cpu:>14s}")
        skipped = [absent[k][0] for k in w["cases"] if k in absent]
        if skipped:
            lines.append(f"{name:8s} not measured (not installed): {', '.join(skipped)}")
    if absent:
        lines.append("")
        lines.append("not measured, in any workload:")
        for label, reason in absent.values():
            lines.append(f"  {label}: {reason}")
    full = results.get("linux_full")
    if full:
        lines.append("")
        if full.get("status") != "ok":
            lines.append(f"Linux writer --full: {full.get('status', '?').upper()}: {full.get('reason')}")
        else:
            lines.append(f"Linux writer --full of a process with {full['touched_bytes'] / MiB:,.0f} MiB touched "
                         f"({full['memory_bytes'] / MiB:,.0f} MiB of memory, {full['dump_bytes'] / MiB:,.0f} MiB dump) "
                         f"into FileSink: {full['median_end_to_end_s'] * 1e3:.0f} ms end to end "
                         f"({_fmt(full.get('end_to_end_gbps'), '.2f')} GB/s), target stopped "
                         f"{full['median_stopped_s'] * 1e3:.0f} ms; one process_vm_readv pass "
                         f"{full['median_readv_s'] * 1e3:.0f} ms ({_fmt(full.get('readv_gbps'), '.2f')} GB/s)")
            if full.get("median_replay_plan_s"):
                lines.append(f"replaying that dump (writer schedule, {full['replay_writes']:,.0f} writes): planned in "
                             f"{full['median_replay_plan_s'] * 1e3:.0f} ms, first write after "
                             f"{full['median_replay_first_write_s'] * 1e3:.0f} ms")
    rss = results.get("rss")
    if rss:
        lines.append("")
        if rss.get("status") == "failed":
            lines.append(f"peak RSS: FAILED: {rss.get('reason')}")
        else:
            lines.append(f"peak RSS streaming {rss['dump_bytes'] / MiB:,.0f} MiB in {rss['write_size']} B writes "
                         f"through a {rss['ring_capacity'] / MiB:.0f} MiB ring into FileSink: "
                         f"whole process {rss['peak_rss'] / MiB:.1f} MiB (getrusage), "
                         f"{rss['rss_before'] / MiB:.1f} MiB before streaming, growth "
                         f"{rss['streaming_growth'] / MiB:.1f} MiB; budget {rss['budget'] / MiB:.0f} MiB")
    targets = results.get("targets") or []
    if targets:
        lines.append("")
        lines.append("targets (reported, not asserted):")
        for t in targets:
            state = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
            op = "<=" if t.get("lower_is_better") else ">="
            lines.append(f"  {state:12s} {t['target']}: {_fmt(t['value'], '.2f')} {t['unit']} "
                         f"({op} {t['threshold']:g})" + (f"  [{t['note']}]" if t.get("note") else ""))
    if results.get("quick"):
        lines.append("")
        lines.append("quick mode: small sizes, 1-2 rounds; run without --quick for numbers worth comparing.")
    return "\n".join(lines)


def _missing_cases(results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Cases missing (not installed) in every workload: key -> (label, reason), each reported once."""
    workloads = list(results.get("workloads", {}).values())
    if not workloads:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for key, c in workloads[0].get("cases", {}).items():
        if all(w.get("cases", {}).get(key, {}).get("status") == "missing" for w in workloads):
            out[key] = (c.get("label", key), c.get("reason", ""))
    return out


def format_markdown(results: dict[str, Any]) -> str:
    """The same table as Markdown (what docs/benchmarks.md shows)."""
    out: list[str] = []
    absent = _missing_cases(results)
    for name, w in results.get("workloads", {}).items():
        out.append(f"**{name}** -- {w['description']}: {w['writes']:,} writes, {w['bytes'] / MiB:,.1f} MiB"
                   + (f" (best peer: {w['best_peer'].split('/', 1)[1]})" if w.get("best_peer") else ""))
        out.append("")
        out.append("| path | median | GB/s | M writes/s | x memcpy (1 piece) | x best peer | producer / consumer CPU |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for key, c in w["cases"].items():
            label = c.get("label", key)
            if c.get("status") == "missing" and key in absent:
                continue  # listed once, below the tables
            if c.get("status") != "ok":
                out.append(f"| {label} | {c.get('status')}: {c.get('reason', '')} | | | | | |")
                continue
            m = c.get("metrics") or {}
            cpu = (f"{m['producer_cpu'] * 100:.0f}% / {m['consumer_cpu'] * 100:.0f}%"
                   if "producer_cpu" in m and "consumer_cpu" in m else "")
            bold = "**" if key.startswith("mdstream/") else ""
            out.append(f"| {bold}{label}{bold} | {c['median_s'] * 1e3:,.1f} ms | {c['gbps']:.2f} | {c['mwps']:.2f} | "
                       f"{_fmt(c.get('x_memcpy'), '.2f')} | {_fmt(c.get('x_best_peer'), '.1f')} | {cpu} |")
        out.append("")
    if absent:
        out.append("Not measured (not installed): " + "; ".join(f"{label} ({reason})" for label, reason in absent.values()))
        out.append("")
    targets = results.get("targets") or []
    if targets:
        out.append("| target | measured | threshold | status |")
        out.append("|---|---:|---:|---|")
        for t in targets:
            state = "not measured" if t["met"] is None else ("met" if t["met"] else "**missed**")
            op = "<=" if t.get("lower_is_better") else ">="
            note = f" ({t['note']})" if t.get("note") else ""
            out.append(f"| {t['target']}{note} | {_fmt(t['value'], '.2f')} {t['unit']} | {op} {t['threshold']:g} "
                       f"| {state} |")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``mdstream``'s subparsers."""
    p = subparsers.add_parser(
        "bench", help="measure throughput against memcpy, os.pwrite and the IPC peers",
        description="Run mdstream's throughput benchmarks on this machine: every workload (tiny, 1k, 64k, 1m) "
                    "through the real callback driven from a native thread, into NullSink, MemorySink and FileSink, "
                    "next to numpy memcpy, os.pwrite and the peers (pip install 'mdstream[bench]'). Prints the "
                    "rate of each, its ratio to one-piece memcpy and to the best peer, and the targets.")
    _add_options(p)
    p.set_defaults(func=command, usage_error=p.error)
    return p


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes, 1-2 rounds: a smoke test in well under a minute")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of the table")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--from", dest="from_json", metavar="JSON",
                   help="do not measure: print the table of a results file written earlier (with -o or --json)")
    p.add_argument("-o", "--output", metavar="PATH", help="also write the JSON results to PATH")
    p.add_argument("--workloads", metavar="NAMES", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, metavar="N", help="rounds per case (default: 5 for mdstream and memcpy, "
                                                             "3 for os.pwrite and peers; quick 2/1)")
    p.add_argument("--no-peers", action="store_true", help="skip the IPC peers")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS check")
    p.add_argument("--no-linux-full", action="store_true",
                   help="skip the Linux writer's --full dump against one process_vm_readv pass")
    p.add_argument("--no-pin", action="store_true",
                   help="let the scheduler place mdstream's producer and consumer (default: two different CPUs)")
    p.add_argument("--dir", metavar="DIR", help="where file outputs go (default /dev/shm, else the temp dir)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def command(args: argparse.Namespace) -> int:
    """``mdstream bench``: run, print the table (or JSON); returns the exit status."""
    def usage_error(message: str) -> int:
        # Under ``mdstream`` the parser's error() prints the usage line (and, with --json, the JSON error).
        if getattr(args, "usage_error", None) is not None:
            args.usage_error(message)
        print(f"mdstream bench: error: {message}", file=sys.stderr)
        return 2

    if args.rounds is not None and args.rounds < 1:
        return usage_error("--rounds must be >= 1")
    names = [n.strip() for n in args.workloads.split(",") if n.strip()] if args.workloads else None
    if names:
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            return usage_error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if getattr(args, "from_json", None):
        with open(args.from_json) as f:
            results = json.load(f)
    else:
        results = run(quick=args.quick, workloads=names, peers=not args.no_peers, rss=not args.no_rss,
                      linux_full=not getattr(args, "no_linux_full", False),
                      rounds=args.rounds, directory=args.dir, pin=not getattr(args, "no_pin", False), log=log)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    if args.json:
        print(json.dumps(results, indent=1))
    elif getattr(args, "markdown", False):
        print(format_markdown(results))
    else:
        print(format_table(results))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mdstream.bench``: the same as ``mdstream bench``."""
    parser = argparse.ArgumentParser(prog="mdstream bench", description="mdstream throughput benchmarks")
    _add_options(parser)
    args = parser.parse_args(argv)
    args.usage_error = parser.error
    return command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
