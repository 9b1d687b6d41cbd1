#!/usr/bin/env python3
"""Fuzz the MDTRACE1 reader, ``mdstream.trace.read_trace``, against a
reference parser written straight from the format (docs/trace-format.md).

The first input byte chooses how the rest is used (``m = byte % 32``):

* ``m < 12``: the bytes are the whole trace (magic included or not);
* ``m < 24``: ``MDTRACE1`` + the bytes;
* ``m < 31``: ``MDTRACE1`` + the bytes, with the lane parameters shrunk so
  the reader's speculative-lanes scan (windows, lanes, stitching) runs on
  small inputs;
* ``m == 31``: ``MDTRACE1`` + the bytes repeated past 256 KiB, so the lanes
  run with their real parameters -- when the second byte is a multiple of
  8; otherwise as ``m < 31``.  Such inputs take ~50 ms (a reference parse of
  ~15,000 records): libFuzzer keeps them for their coverage and then mutates
  them again and again, so under the fuzzer (``TILED = False`` in ``main``)
  they run as the shrunk-lanes mode; the corpus replay
  (tests/test_fuzz_smoke.py) and tests/test_trace.py run the real ones.

Whatever the reader answers must equal the reference parser's answer: the
same records (positions, offsets, lengths, final size), or a
``TraceFormatError`` naming the same record and byte.  Any other exception
type is a finding.

    python fuzz/fuzz_trace.py build/fuzz/trace fuzz/corpus/trace -runs=1000000
"""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Stats, run_main  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["mdstream.trace", "mdstream.schedules"]):
        import mdstream.trace as trace
else:
    import mdstream.trace as trace

import numpy as np  # noqa: E402

MAGIC = b"MDTRACE1"
MAX_OFFSET = (1 << 63) - 1
STATS = Stats("trace")

SMALL_LANES = {
    "_SERIAL_BELOW": 32,
    "_WINDOW": 1024,
    "_FIRST_WINDOW": 256,
    "_SKIP_AFTER_MISS": 1,
    "_LANES": 8,
    "_MARGIN": 48,
    "_PROBE": 2,
    "_DENSE": 192,
}
MAX_TILED = 300_000
TILED = True  # False under libFuzzer: see the module docstring


class RefError(Exception):
    def __init__(self, record, byte):
        super().__init__(record, byte)
        self.record = record
        self.byte = byte


def reference(buf: bytes):
    """Records as ``(position, offset, length)``, or RefError(record, byte)."""
    n = len(buf)
    if n < len(MAGIC) or buf[:len(MAGIC)] != MAGIC:
        raise RefError(None, 0)
    p, k, out = len(MAGIC), 0, []
    while p < n:
        if n - p < 16:
            raise RefError(k, p)
        offset, length, _reserved = struct.unpack_from("<QII", buf, p)
        if n - p - 16 < length:
            raise RefError(k, p)
        out.append((p, offset, length))
        p += 16 + length
        k += 1
    for k, (p, offset, length) in enumerate(out):
        if offset > MAX_OFFSET or offset + length > MAX_OFFSET:
            raise RefError(k, p)
    return out


def build(data: bytes) -> tuple[bytes, int]:
    if not data:
        return b"", 0
    m, body = data[0] % 32, data[1:]
    mode = 0 if m < 12 else 1 if m < 24 else 3 if m < 31 else 2
    if mode == 2:
        if len(data) < 2 or data[1] % 8 or not TILED:
            mode = 3
        else:
            body = body[1:]
    if mode == 0:
        return body, mode
    if mode == 2 and body:
        reps = min(MAX_TILED // len(body) + 1, (1 << 18) // len(body) + 2)
        return MAGIC + body * reps, mode
    return MAGIC + body, mode


def check(buf: bytes, mode: int) -> None:
    try:
        expected = reference(buf)
        ref_error = None
    except RefError as exc:
        expected, ref_error = None, exc
    try:
        plan = trace.read_trace(buf)
    except trace.TraceFormatError as exc:
        STATS.hit("error")
        if ref_error is None:
            raise AssertionError(f"reader refused a valid trace ({len(buf)} bytes, mode {mode}): {exc}") from exc
        if (exc.record, exc.byte) != (ref_error.record, ref_error.byte):
            raise AssertionError(f"reader blames record {exc.record} byte {exc.byte}, reference record "
                                 f"{ref_error.record} byte {ref_error.byte}: {exc}") from exc
        str(exc)
        return
    STATS.hit("ok")
    if ref_error is not None:
        raise AssertionError(f"reader accepted a trace the reference refuses at record {ref_error.record} "
                             f"byte {ref_error.byte} ({len(buf)} bytes, mode {mode}): {plan!r}")
    count = len(expected)
    assert plan.count == count, (plan.count, count)
    if count:
        pos = np.array([p for p, _, _ in expected], dtype=np.uint64)
        assert np.array_equal(plan.sources, pos + np.uint64(16)), "sources differ"
        assert np.array_equal(plan.offsets, np.array([o for _, o, _ in expected], dtype=np.uint64)), "offsets differ"
        assert np.array_equal(plan.lengths, np.array([n for _, _, n in expected], dtype=np.uint32)), "lengths differ"
        assert plan.size == max(o + n for _, o, n in expected), "size differs"
        # Every write's bytes lie inside the buffer.
        ends = plan.sources + plan.lengths.astype(np.uint64)
        assert int(ends.max()) <= plan.buffer.size
    else:
        assert plan.size == 0
    plan.total_bytes
    repr(plan)


def test_one_input(data: bytes) -> None:
    buf, mode = build(data)
    if mode == 3:
        saved = {k: getattr(trace, k) for k in SMALL_LANES}
        try:
            for k, v in SMALL_LANES.items():
                setattr(trace, k, v)
            check(buf, mode)
        finally:
            for k, v in saved.items():
                setattr(trace, k, v)
    else:
        check(buf, mode)


if __name__ == "__main__":
    TILED = False
    run_main(test_one_input, STATS)
