"""The streaming pipeline: a producer (DbgHelp, the simulator, another process)
fills a ring while this thread drains it into sinks.

Sinks are any objects with ``consume(batch)``, ``finish()`` and
``abort(error)``; the built-in ones run their per-record loop in C without the
GIL, so Python is entered once per batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from mdstream import errors
from mdstream._ring import Batch, Ring
from mdstream._sinks import DRAIN_END, FileSink, drain_ready, native_sink

__all__ = [
    "Sink",
    "StreamSink",
    "Tee",
    "Progress",
    "StreamResult",
    "drain",
    "DEFAULT_RING_CAPACITY",
]

DEFAULT_RING_CAPACITY = 4 * 1024 * 1024
PROGRESS_INTERVAL = 0.1
# How long one read waits before the loop looks at the producer's health.
POLL_INTERVAL = 0.05


@runtime_checkable
class Sink(Protocol):
    """What the pipeline hands batches to.

    ``consume(batch)`` is called once per :class:`~mdstream.Batch` (records in
    the order written; ``batch.offsets``, ``batch.lengths``, ``batch.view(i)``);
    the batch is released after every sink consumed it, so keep nothing from it
    past the call (copy what you need, or keep a view: the release is then
    deferred until the view is gone, holding back the producer).
    ``finish()`` is called once when the producer finished cleanly and returns
    the sink's result; ``abort(error)`` when the dump failed.

    A sink that publishes its output under a final name may split ``finish``
    into ``prepare()`` (make it durable) and ``publish()`` (put it in place,
    return the result): :func:`drain` then publishes only after the ring
    confirmed the producer is still waiting for the commit.
    """

    def consume(self, batch: Batch) -> None: ...

    def finish(self) -> Any: ...

    def abort(self, error: BaseException) -> None: ...


class Tee:
    """Feeds every batch to several sinks in turn; ``finish`` returns their results as a list."""

    def __init__(self, *sinks: Sink) -> None:
        if not sinks:
            raise ValueError("Tee needs at least one sink")
        self.sinks = list(sinks)

    def consume(self, batch: Batch) -> None:
        for sink in self.sinks:
            sink.consume(batch)

    def finish(self) -> list[Any]:
        self.prepare()
        return self.publish()

    def prepare(self) -> None:
        self._results: list[Any] = []
        for sink in self.sinks:
            if _two_phase(sink):
                sink.prepare()  # type: ignore[attr-defined]
                self._results.append(None)
            else:
                self._results.append(sink.finish())

    def publish(self) -> list[Any]:
        return [sink.publish() if _two_phase(sink) else result  # type: ignore[attr-defined]
                for sink, result in zip(self.sinks, self._results)]

    def abort(self, error: BaseException) -> None:
        for sink in self.sinks:
            try:
                sink.abort(error)
            except Exception:
                pass


class StreamSink:
    """Writes the dump to a stream: standard output (``"-"``), a FIFO or a device.

    A stream cannot seek, so the dump is assembled in memory (a
    :class:`MemorySink`) and written sequentially once it is complete; an
    aborted dump writes nothing.  The target is opened only then, never
    created, truncated or replaced.
    """

    def __init__(self, target: str | int = "-") -> None:
        from mdstream._sinks import MemorySink

        if isinstance(target, str) and target != "-":
            import stat

            try:
                mode = os.stat(target).st_mode
            except OSError as exc:
                raise errors.OutputPathError(f"cannot use {target} as a stream: {exc.strerror}") from None
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                raise errors.OutputPathError(f"{target} is a {'directory' if stat.S_ISDIR(mode) else 'regular file'}, "
                                             "not a stream: use FileSink")
        self.target = target
        self.memory = MemorySink()
        self.state = "open"

    @property
    def path(self) -> str:
        return "<stdout>" if self.target == "-" else str(self.target)

    @property
    def size(self) -> int:
        return int(self.memory.size)

    def consume(self, batch: Batch) -> None:
        self.memory.consume(batch)

    def finish(self) -> str:
        import sys

        data = memoryview(self.memory)
        if self.target == "-" or isinstance(self.target, int):
            fd = 1 if self.target == "-" else int(self.target)
            if fd == 1:
                sys.stdout.flush()
            own = False
        else:
            fd = os.open(self.target, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            own = True
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:done + (1 << 20)])
        finally:
            data.release()
            if own:
                os.close(fd)
        self.state = "finished"
        return self.path

    def abort(self, error: BaseException | None = None) -> None:
        self.state = "aborted"


def _two_phase(sink: Any) -> bool:
    return callable(getattr(sink, "prepare", None)) and callable(getattr(sink, "publish", None))


@dataclass(frozen=True)
class Progress:
    """A progress report: bytes and records drained so far, and the rate."""

    bytes: int
    records: int
    writes: int
    seconds: float
    expected_bytes: int | None = None

    @property
    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(init=False)
class StreamResult:
    """What a pipeline run did.

    ``status`` is ``"ok"`` or ``"failed"``.  ``written_bytes`` is the payload
    the writer handed over (every ``IoWriteAllCallback``'s bytes, so a region
    written twice counts twice), ``writes`` the writer's I/O calls (when
    known), ``records`` the ring records drained (adjacent writes may share
    one), ``output_size`` the dump's size (highest offset + length), and
    ``rewritten_bytes`` the bytes written again over bytes already written
    (``None`` when not known: only a run that knows its whole write list can
    count them).  ``outputs`` is what each sink's ``finish`` returned.

    The old names still work and warn: ``bytes`` (= ``written_bytes``) and
    ``final_size`` (= ``output_size``), as attributes and as constructor keywords.
    """

    status: str
    written_bytes: int
    writes: int
    records: int
    seconds: float
    output_size: int
    hresult: int | None
    reason: str | None
    outputs: list[Any]
    sinks: list[Any]
    extra: dict[str, Any]
    rewritten_bytes: int | None

    def __init__(
        self,
        status: str,
        written_bytes: int | None = None,
        writes: int = 0,
        records: int = 0,
        seconds: float = 0.0,
        output_size: int | None = None,
        hresult: int | None = None,
        reason: str | None = None,
        outputs: list[Any] | None = None,
        sinks: list[Any] | None = None,
        extra: dict[str, Any] | None = None,
        rewritten_bytes: int | None = None,
        **deprecated: Any,
    ) -> None:
        for old, new in (("bytes", "written_bytes"), ("final_size", "output_size")):
            if old in deprecated:
                warnings.warn(f"StreamResult({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=2)
                if (written_bytes if new == "written_bytes" else output_size) is not None:
                    raise TypeError(f"StreamResult got both {old}= and {new}=")
                if new == "written_bytes":
                    written_bytes = deprecated.pop(old)
                else:
                    output_size = deprecated.pop(old)
        if deprecated:
            raise TypeError(f"StreamResult got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        self.status = status
        self.written_bytes = int(written_bytes or 0)
        self.writes = writes
        self.records = records
        self.seconds = seconds
        self.output_size = int(output_size or 0)
        self.hresult = hresult
        self.reason = reason
        self.outputs = [] if outputs is None else outputs
        self.sinks = [] if sinks is None else sinks
        self.extra = {} if extra is None else extra
        self.rewritten_bytes = rewritten_bytes

    @property
    def bytes(self) -> int:
        """Deprecated name of :attr:`written_bytes`."""
        warnings.warn("StreamResult.bytes is deprecated; use written_bytes", DeprecationWarning, stacklevel=2)
        return self.written_bytes

    @bytes.setter
    def bytes(self, value: int) -> None:
        warnings.warn("StreamResult.bytes is deprecated; use written_bytes", DeprecationWarning, stacklevel=2)
        self.written_bytes = value

    @property
    def final_size(self) -> int:
        """Deprecated name of :attr:`output_size`."""
        warnings.warn("StreamResult.final_size is deprecated; use output_size", DeprecationWarning, stacklevel=2)
        return self.output_size

    @final_size.setter
    def final_size(self, value: int) -> None:
        warnings.warn("StreamResult.final_size is deprecated; use output_size", DeprecationWarning, stacklevel=2)
        self.output_size = value

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def gbps(self) -> float:
        """Written gigabytes (1e9) per second."""
        return self.written_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """``written N bytes (M writes, K bytes rewritten); output S bytes`` (K left out when unknown)."""
        rewritten = "" if self.rewritten_bytes is None else f", {self.rewritten_bytes:,} bytes rewritten"
        return (f"written {self.written_bytes:,} bytes ({_plural(self.writes, 'write')}{rewritten}); "
                f"output {self.output_size:,} bytes")

    def to_dict(self) -> dict[str, Any]:
        out = {
            "status": self.status,
            "written_bytes": self.written_bytes,
            "writes": self.writes,
            "records": self.records,
            "seconds": self.seconds,
            "gbps": self.gbps,
            "output_size": self.output_size,
            "rewritten_bytes": self.rewritten_bytes,
        }
        if self.hresult is not None:
            out["hresult"] = f"0x{self.hresult & 0xFFFFFFFF:08X}"
        if self.reason:
            out["reason"] = self.reason
        out.update(self.extra)
        return out


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _sink_size(sink: Any) -> int:
    size = getattr(sink, "size", None)
    if isinstance(size, int):
        return size
    inner = getattr(sink, "sinks", None)
    if inner:
        return max((_sink_size(s) for s in inner), default=0)
    return 0


@dataclass
class _DrainState:
    bytes: int = 0
    records: int = 0
    highest_end: int = 0


_IDLE: Any = object()  # ring.read() timed out: nothing arrived within POLL_INTERVAL


def _register_consumer_output(ring: Ring, sinks: Sequence[Sink]) -> FileSink | None:
    """Tell a producer that may spill which file holds what this consumer released.

    Only a :class:`FileSink` qualifies (its records are in the file before they
    are released).  Returns the registered sink: on failure its partial file is
    kept until the producer no longer needs it.
    """
    queue = list(sinks)
    while queue:
        sink = queue.pop(0)
        if isinstance(sink, FileSink):
            try:
                ring.consumer_output = sink.temp_path
            except (ValueError, OSError):  # a path too long for the header: the spill then holds only its own part
                return None
            return sink
        queue.extend(getattr(sink, "sinks", ()))
    return None


def _fail(ring: Ring, sinks: Sequence[Sink], exc: BaseException, abort_code: int, registered: FileSink | None,
          output_wait: float) -> None:
    """The consumer failed: abort the ring it holds, keep what a spilling producer still needs, abort the sinks."""
    holds = not ring.closed and ring.is_consumer and not ring.inherited
    if holds and ring.state in ("open", "finished", "committing"):
        code = getattr(exc, "hresult", None) or abort_code
        ring.abort(code, f"consumer failed: {type(exc).__name__}: {exc}"[:255])
    released = True
    if holds and registered is not None:
        # The producer may spill and copy our partial file: never remove
        # what it still needs (it says when it holds its own descriptor).
        released = ring.wait_output_released(output_wait)
    for sink in sinks:
        try:
            if sink is registered and not released:
                sink.detach()  # type: ignore[union-attr]
                _add_note(exc, f"the partial dump stays at {registered.temp_path} for the producer's spill")
            else:
                sink.abort(exc)
        except Exception:
            pass


def _add_note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)


def _commit(ring: Ring, sinks: Sequence[Sink]) -> tuple[list[Any], list[int]]:
    """Make every sink durable, confirm the producer still waits, publish, commit.

    Two-phase sinks publish their output only after ``begin_commit`` succeeded,
    so a producer that gave up at its deadline never sees a dump appear later.
    Returns the sinks' results and the interrupts held during the commit.
    """
    results: list[Any] = []
    for sink in sinks:
        if _two_phase(sink):
            sink.prepare()  # type: ignore[attr-defined]
            results.append(None)
        else:
            results.append(sink.finish())
    with _interrupts_deferred() as pending:
        ring.begin_commit()
        for i, sink in enumerate(sinks):
            if isinstance(sink, FileSink):
                # Its partial file keeps its name until the commit: a producer that spills
                # because this process died in between can still copy it.
                results[i] = sink.publish(keep_temp=True)
            elif _two_phase(sink):
                results[i] = sink.publish()  # type: ignore[attr-defined]
        ring.commit()
    for sink in sinks:
        if isinstance(sink, FileSink):
            sink.release_temp()
    return results, pending


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """Hold Ctrl-C and SIGTERM while the output goes under its final name and the commit follows.

    Interrupted in between, the output would be published while the producer,
    told of a failure, spills without it: neither side would hold the whole dump
    for sure.  The window is a rename and a compare-and-swap; a signal that
    arrives in it is delivered right after (only the main thread can hold them).
    """
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is None:  # installed outside Python: cannot be put back
                continue
            previous[signum] = signal.signal(signum, lambda n, _frame: pending.append(n))
        yield pending
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def drain(
    ring: Ring,
    sinks: Sequence[Sink] | Sink,
    *,
    timeout: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    producer_failed: Callable[[], BaseException | None] | None = None,
    writes: Callable[[], int] | None = None,
    expected_bytes: int | None = None,
    abort_code: int = 0x80004004,
    output_wait: float = 60.0,
) -> StreamResult:
    """Consume ``ring``'s dump into ``sinks`` and commit it.

    Drains until the producer's END record (verified against what arrived),
    then makes every sink durable, and commits through the ring: only then does
    the producer's ``finish``/``IoFinishCallback`` succeed.  ``timeout``: the
    longest time to wait with no data arriving (``None``: forever, still
    interruptible).  ``producer_failed`` is polled while idle: a producer in
    this process that failed without aborting the ring ends the drain with its
    exception.  On any failure the ring is aborted (if this handle is its
    consumer; a refused role changes nothing), the sinks are aborted and the
    exception propagates; a registered partial file a spilling producer may
    still copy is kept until it is released (at most ``output_wait`` seconds).
    """
    sink_list: list[Sink] = list(sinks) if isinstance(sinks, (list, tuple)) else [sinks]  # type: ignore[list-item]
    registered = _register_consumer_output(ring, sink_list)
    state = _DrainState()
    started = time.perf_counter()
    last_report = started
    idle_since = started
    # Built-in sinks only: the per-batch loop runs in Cython, and Python
    # comes back every POLL_INTERVAL for the timeout, the producer check and
    # progress.
    native = all(native_sink(s) for s in sink_list) and not ring.outstanding_batches

    def check_idle() -> None:
        """Nothing arrived for POLL_INTERVAL: a failed producer or the caller's timeout ends the drain."""
        failure = producer_failed() if producer_failed else None
        if failure is not None:
            raise failure
        if timeout is not None and time.perf_counter() - idle_since > timeout:
            raise errors.RingTimeoutError(f"no data from the producer for {timeout:g} s")

    try:
        while True:
            if native:
                records, nbytes, status = drain_ready(ring, sink_list, POLL_INTERVAL)
                state.records += records
                state.bytes += nbytes
                if status == DRAIN_END:
                    break
                if not records:
                    check_idle()
                    continue
            else:
                try:
                    batch = ring.read(timeout=POLL_INTERVAL)
                except errors.RingTimeoutError:
                    batch = _IDLE
                if batch is _IDLE:
                    check_idle()  # outside the except: its errors do not chain to the poll's timeout
                    continue
                if batch is None:
                    break
                with batch:
                    for sink in sink_list:
                        sink.consume(batch)
                    records, nbytes, _ = batch.summary()
                    state.records += records
                    state.bytes += nbytes
            idle_since = time.perf_counter()
            if progress is not None:
                now = time.perf_counter()
                if now - last_report >= PROGRESS_INTERVAL:
                    last_report = now
                    progress(Progress(state.bytes, state.records, writes() if writes else state.records,
                                      now - started, expected_bytes))
    except BaseException as exc:
        _fail(ring, sink_list, exc, abort_code, registered, output_wait)
        raise
    try:
        outputs, interrupts = _commit(ring, sink_list)
    except BaseException as exc:
        _fail(ring, sink_list, exc, abort_code, registered, output_wait)
        raise
    for signum in interrupts:  # the dump is committed and safe: now the interrupt may end the program
        signal.raise_signal(signum)
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(Progress(state.bytes, state.records, writes() if writes else state.records, seconds, expected_bytes))
    final_size = max((_sink_size(s) for s in sink_list), default=0)
    return StreamResult(
        status="ok",
        written_bytes=state.bytes,
        writes=writes() if writes else state.records,
        records=state.records,
        seconds=seconds,
        output_size=final_size,
        outputs=outputs,
        sinks=sink_list,
        extra={"committed": True, "dump_id": f"{ring.dump_id or 0:016x}"},
    )
