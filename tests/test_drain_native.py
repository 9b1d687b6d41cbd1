"""drain()'s native loop for the built-in sinks (mdstream._sinks.drain_ready)
against the per-batch Python loop it replaces."""

from __future__ import annotations

import time

import numpy as np
import pytest

import mdstream
from mdstream._sinks import DRAIN_END, DRAIN_MORE, drain_ready
from mdstream.schedules import synthetic_plan
from mdstream.simulator import run_plan


class PythonMemory:
    """A Python sink: forces drain() onto the per-batch Python loop."""

    def __init__(self) -> None:
        self.data = bytearray()

    def consume(self, batch) -> None:
        buf = batch.buffer
        for off, n, pos in zip(batch.offsets.tolist(), batch.lengths.tolist(), batch.positions.tolist()):
            if off + n > len(self.data):
                self.data.extend(bytes(off + n - len(self.data)))
            self.data[off:off + n] = buf[pos:pos + n].tobytes()

    def finish(self):
        return None

    def abort(self, error) -> None:
        pass


@pytest.mark.parametrize("kind", ["tiny", "sized"])
def test_native_and_python_loops_reassemble_the_same_dump(kind: str) -> None:
    plan = (synthetic_plan("tiny", seed=5, count=20000) if kind == "tiny"
            else synthetic_plan("sized", seed=5, write_size=3000, total_bytes=3 << 20))
    expected = plan.apply().tobytes()
    native = mdstream.MemorySink()
    result = run_plan(plan, mdstream.DumpCallback(mdstream.Ring.create(None, 64 << 10)), [native])
    assert native.tobytes() == expected
    both = [mdstream.MemorySink(), PythonMemory()]
    result2 = run_plan(plan, mdstream.DumpCallback(mdstream.Ring.create(None, 64 << 10)), both)
    assert both[0].tobytes() == bytes(both[1].data) == expected
    assert result.written_bytes == result2.written_bytes == plan.total_bytes


def test_drain_ready_returns_when_idle_and_at_the_end() -> None:
    ring = mdstream.Ring.create(None, 64 << 10)
    sink = mdstream.MemorySink()
    t0 = time.monotonic()
    assert drain_ready(ring, [sink], 0.05) == (0, 0, DRAIN_MORE)  # nothing yet: back after the budget
    assert time.monotonic() - t0 < 5  # a hang guard, not a speed claim
    ring.write(10, b"abc")
    ring.write(0, b"0123456789")
    ring.seal()
    records, nbytes, status = drain_ready(ring, [sink], 5.0)
    assert (nbytes, status) == (13, DRAIN_END) and records >= 1
    assert sink.tobytes() == b"0123456789abc"


def test_drain_ready_refuses_a_ring_with_a_batch_outstanding_and_drain_falls_back() -> None:
    ring = mdstream.Ring.create(None, 64 << 10)
    ring.write(0, b"first")
    ring.flush()
    held = ring.read(timeout=1)
    assert ring.outstanding_batches == 1
    with pytest.raises(ValueError, match="outstanding"):
        drain_ready(ring, [mdstream.MemorySink()], 0.01)
    ring.write(5, b"second")
    ring.seal()
    sink = mdstream.MemorySink()
    mdstream.drain(ring, [sink])  # the Python loop, which can release out of order
    held.release()
    assert ring.outstanding_batches == 0
    assert sink.tobytes() == bytes(5) + b"second"


def test_drain_ready_raises_an_abort_and_keeps_counts_consistent() -> None:
    ring = mdstream.Ring.create(None, 64 << 10)
    ring.write(0, np.arange(100, dtype=np.uint8).tobytes())
    ring.abort(0x80004004, "writer gave up")
    with pytest.raises(mdstream.RingAbortedError, match="writer gave up"):
        drain_ready(ring, [mdstream.NullSink()], 1.0)
    assert ring.outstanding_batches == 0
