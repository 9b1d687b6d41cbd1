"""Replay a dump or a trace through a real callback routine, the way DbgHelp
drives it, from a native thread, while this thread drains the ring."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from mdstream import errors
from mdstream._callback import DumpCallback, Simulation
from mdstream._ring import Ring
from mdstream.pipeline import DEFAULT_RING_CAPACITY, Progress, Sink, StreamResult, drain

__all__ = ["replay", "run_plan"]


def _failure_from(callback: DumpCallback | None, sim: Simulation) -> errors.DumpFailedError:
    from mdstream.dbghelp import CallbackType, hresult_name

    failure = sim.failure or {}
    status = failure.get("status", 0)
    ctype = failure.get("callback_type")
    try:
        ctype_name = CallbackType(int(ctype)).name if ctype is not None else "unknown callback"
    except ValueError:
        ctype_name = str(ctype)
    reason = ""
    if callback is not None and callback.failure is not None:
        status, reason = callback.failure
    if not reason:
        if ctype == CallbackType.IoStartCallback and status != 1:
            reason = "the callback did not take over the I/O (IoStartCallback must answer TRUE with S_FALSE)"
        else:
            reason = "the callback returned FALSE" if not failure.get("returned", True) else "unexpected Status"
    where = f"{ctype_name}" + (f" (write {failure.get('index')})" if ctype == CallbackType.IoWriteAllCallback else "")
    message = f"dump failed in {where}: {hresult_name(status)}: {reason}"
    return errors.DumpFailedError(message, status, reason, ctype)


def run_plan(
    plan: Any,
    callback: DumpCallback,
    sinks: Sequence[Sink] | None,
    *,
    progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
    io_handle: int = 0,
    started: Callable[[], None] | None = None,
) -> StreamResult:
    """Drive ``callback`` with ``plan`` (a :class:`~mdstream.plan.WritePlan`) from a
    native thread; drain its ring into ``sinks`` here (``None``: someone else
    drains it, e.g. another process attached to a named ring).  ``started`` is
    called once the native thread runs, before draining."""
    sim = Simulation(
        callback.routine_address,
        callback.param_address,
        plan.buffer,
        plan.offsets,
        plan.lengths,
        plan.sources,
        io_handle=io_handle,
        keepalive=callback,
    )
    callback.reset()
    sim.start()
    try:
        if started is not None:  # e.g. move this (consuming) thread to another CPU
            started()
        if sinks is None:
            sim.wait(timeout)
            if not sim.done:
                raise errors.RingTimeoutError(f"the replay did not end within {timeout} s")
            result = StreamResult("ok", callback.bytes_written, sim.completed, sim.completed, sim.elapsed,
                                  callback.highest_end)
        else:
            def producer_failed() -> BaseException | None:
                if sim.done and not sim.succeeded:
                    return _failure_from(callback, sim)
                return None

            result = drain(
                callback.ring,
                sinks,
                timeout=timeout,
                progress=progress,
                producer_failed=producer_failed,
                writes=lambda: sim.completed,
                expected_bytes=int(plan.total_bytes),
            )
    except BaseException:
        # The ring was aborted by drain (or the producer failed): the native
        # thread returns promptly; never leave it running.
        if not callback.ring.closed and callback.ring.state == "open":
            callback.ring.abort(0x80004004, "replay interrupted")
        sim.wait()
        callback.raise_pending()
        raise
    sim.wait()
    callback.raise_pending()
    if not sim.succeeded:
        raise _failure_from(callback, sim)
    result.writes = sim.completed
    result.extra["callbacks"] = callback.counters["calls"]
    return result


def replay(
    source: Any,
    callback: DumpCallback | None = None,
    *,
    sinks: Sequence[Sink] | Sink | None = None,
    schedule: str = "writer",
    chunk: int | None = None,
    seed: int = 0,
    ring_capacity: int = DEFAULT_RING_CAPACITY,
    deadline: float | None = 30.0,
    coalesce: bool = True,
    drain_here: bool = True,
    progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
) -> StreamResult:
    """Replay ``source`` through the real callback routine, as DbgHelp would.

    ``source`` is a minidump file, an MDTRACE1 trace (detected by its magic) or
    a :class:`~mdstream.plan.WritePlan`.  Dumps are cut into writes by
    ``schedule``: ``"sequential"`` (fixed ``chunk``-sized pieces),
    ``"writer"`` (header, streams, then seeking back to patch the header and
    directory in small pieces, memory in 1 KiB chunks) or ``"shuffled"`` (a
    seeded permutation with some regions first written with garbage); a trace
    replays in its own order.

    Without ``callback`` a private anonymous ring of ``ring_capacity`` bytes and
    a :class:`DumpCallback` are made.  The routine is called from a native
    thread (IoStart with Status preset to E_NOTIMPL, one IoWriteAll per write,
    IoFinish) while this thread drains the ring into ``sinks`` (default: one
    :class:`MemorySink`).  With ``drain_here=False`` nothing is drained here
    (another process consumes the callback's named ring).  Raises
    :class:`DumpFailedError` when the callback answers FALSE or an unexpected
    Status, as DbgHelp would fail.
    """
    from mdstream._sinks import MemorySink
    from mdstream.plan import WritePlan
    from mdstream.schedules import plan_for

    plan = source if isinstance(source, WritePlan) else plan_for(os.fspath(source), schedule=schedule, chunk=chunk, seed=seed)
    if callback is None:  # the private ring lives as long as the callback
        callback = DumpCallback(Ring.create(None, ring_capacity), deadline=deadline, coalesce=coalesce)
    sink_list: list[Sink] | None
    if not drain_here:
        sink_list = None
    elif sinks is None:
        sink_list = [MemorySink(size_hint=int(getattr(plan, "size", 0) or 0))]
    elif isinstance(sinks, (list, tuple)):
        sink_list = list(sinks)
    else:
        sink_list = [sinks]  # type: ignore[list-item]
    result = run_plan(plan, callback, sink_list, progress=progress, timeout=timeout)
    result.extra["source"] = getattr(plan, "name", str(source))
    return result
