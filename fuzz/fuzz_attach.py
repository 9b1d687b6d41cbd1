#!/usr/bin/env python3
"""Fuzz the ring attach path: bytes from the fuzzer become a ring file
(private 0600 file in a 0700 directory), ``Ring.attach`` opens it, and if it
attaches the harness reads every batch it can and touches every accessor
(offsets, lengths, positions, buffer, views, iteration, summary, the sinks'
C loops).

The first input byte chooses the mode:

* ``byte % 2 == 0``: the rest is the file, byte for byte (header validation);
* ``byte % 2 == 1``: structured: a valid header for a 4 KiB or 8 KiB ring
  whose fields the input may override one by one, positions chosen inside or
  around the data area, and a data area filled from the input with records
  that are often almost right (real kinds, lengths near the span, PADs that
  nearly reach the wrap).  The C core is not coverage-instrumented (gcc), so
  this is how the fuzzer gets past the header checks into the record walk.

Expected: the ``mdstream`` exception classes, ``ValueError``, ``OSError``
(and ``MemoryError`` from ``MemorySink`` asked to hold an absurd offset).
Anything else escaping, a sanitizer report or a crash is a finding.  Run
under the ASan build (``scripts/fuzz.sh attach``); the mapping is placed
below a PROT_NONE guard page whenever possible so a read past the data area
faults.
"""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    DATA,
    FIELD_NAMES,
    PAD,
    RING_HEADER,
    Bytes,
    GuardPage,
    Stats,
    classify,
    private_dir,
    record,
    ring_header,
    run_main,
    set_field,
    sink_consume,
    write_private,
)

import mdstream  # noqa: E402
from mdstream import MemorySink, NullSink, Ring  # noqa: E402
from mdstream.errors import MdstreamError  # noqa: E402

EXPECTED = (MdstreamError, ValueError, OSError)
STATS = Stats("attach")
_DIR: str | None = None


def ring_path() -> str:
    global _DIR
    if _DIR is None:
        _DIR = private_dir("mds-fuzz-attach-")
    return os.path.join(_DIR, "ring")


def fuzzed_records(src: Bytes, capacity: int, span: int) -> bytes:
    """Up to ``span`` bytes of records that are often nearly valid."""
    out = bytearray()
    while len(out) < span and src.remaining() > 0:
        choice = src.below(8)
        pos = len(out)
        room = span - pos
        if choice <= 2:       # a plausible DATA record
            n = src.below(max(1, min(room, 600)))
            out += record(src.u64() if src.flag() else src.below(1 << 20), src.take(n))
        elif choice == 3:     # a PAD that may or may not end at the wrap
            to_wrap = capacity - (pos % capacity) - 16
            length = to_wrap + src.pick([0, 0, 0, -16, 16, 1, -1, 1 << 20])
            out += struct.pack("<QII", 0, length & 0xFFFFFFFF, PAD)
            out += b"\0" * max(0, min(room - 16, to_wrap))
        elif choice == 4:     # a DATA record whose length lies
            length = room - 16 + src.pick([0, 1, -1, 15, 16, 17, 1 << 31, -32])
            out += struct.pack("<QII", src.u64(), length & 0xFFFFFFFF, DATA)
        elif choice == 5:     # an offset that overflows with its length
            n = src.below(64) + 1
            out += record(2**64 - src.below(n + 1), src.take(n))
        elif choice == 6:     # garbage kind
            out += struct.pack("<QII", src.u64(), src.below(64), src.u32())
        else:                 # raw bytes
            out += src.take(src.below(64) + 1)
    return bytes(out[:span])


def structured(src: Bytes) -> bytes:
    capacity = src.pick([4096, 4096, 8192])
    # Positions: mostly valid, sometimes just outside what attach accepts.
    base = src.below(4) * capacity + src.below(capacity // 16) * 16
    fill = src.pick([0, 16, 32, 64, capacity // 2, capacity - 16, capacity, capacity + 16, src.below(capacity + 64)])
    read_pos = base if src.below(8) else base + src.below(16)
    write_pos = read_pos + fill
    state = src.pick([0, 0, 0, 1, 1, 2, 3, 4])
    h = ring_header(capacity, write_pos=write_pos, read_pos=read_pos, state=state)
    # A few fields overridden with fuzz values.
    for _ in range(src.below(4)):
        name = src.pick(FIELD_NAMES)
        if name in ("magic", "abort_reason"):
            set_field(h, name, src.take(src.below(12)))
        else:
            set_field(h, name, src.pick([0, 1, 2, 3, 16, 4096, 8192, 2**31, 2**32 - 1, 2**63, 2**64 - 1, src.u64()]))
    # The data area: records laid from read_pos (where the consumer starts).
    data = bytearray(capacity)
    start = read_pos % capacity
    recs = fuzzed_records(src, capacity, min(max(fill, 0), capacity - start) if fill else src.below(256))
    data[start:start + len(recs)] = recs[:capacity - start]
    if start + len(recs) > capacity:
        rest = recs[capacity - start:]
        data[:len(rest)] = rest
    body = bytes(h) + bytes(data)
    # Sometimes truncate or extend the file.
    cut = src.below(16)
    if cut == 0:
        body = body[:src.below(len(body) + 1)]
    elif cut == 1:
        body += src.take(src.below(64))
    return body


def touch(batch) -> None:
    """Every accessor of a batch; views die when this returns."""
    n = len(batch)
    offsets, lengths, positions = batch.offsets, batch.lengths, batch.positions
    buf = batch.buffer
    assert len(offsets) == len(lengths) == len(positions) == n
    for i in range(n):
        view = batch.view(i)
        assert len(view) == int(lengths[i])
        assert int(positions[i]) + int(lengths[i]) <= buf.size
        bytes(view[:8])
    for _off, view in batch:
        len(view)
    batch.summary()
    batch.nbytes
    repr(batch)


def consume(ring: Ring, src: Bytes) -> None:
    """Read everything readable, touching every accessor and a C sink loop."""
    sink = MemorySink() if src.flag() else NullSink()
    for _ in range(64):
        batch = ring.read(timeout=0)
        if batch is None:
            STATS.hit("end")
            return
        STATS.hit("batch")
        with batch:
            touch(batch)
            sink_consume(sink, batch, STATS)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    src = Bytes(data[1:])
    body = structured(src) if data[0] % 2 else data[1:]
    path = ring_path()
    write_private(path, body)
    cap = int.from_bytes(body[16:24], "little") if len(body) >= 24 else 0
    guard = GuardPage(RING_HEADER + (cap if 4096 <= cap <= 1 << 20 else 4096))
    ring = None
    try:
        try:
            ring = Ring.attach(path)
        except EXPECTED as exc:
            STATS.hit("refused:" + type(exc).__name__)
            classify(exc)
            return
        STATS.hit("attached")
        if guard.guards(ring.data_address - RING_HEADER, RING_HEADER + ring.capacity):
            STATS.hit("guarded")
        repr(ring)
        ring.state, ring.abort_info, ring.write_position, ring.read_position
        try:
            consume(ring, src)
        except EXPECTED as exc:
            STATS.hit("read:" + type(exc).__name__)
            classify(exc)
    finally:
        if ring is not None:
            try:
                ring.close()
            except BufferError:
                if sys.exc_info()[0] is None:
                    raise AssertionError("a view outlived its batch in the harness") from None
        guard.release()


def seeds() -> dict[str, bytes]:
    """Seed inputs (written to fuzz/corpus/attach by scripts/make_corpora.py)."""
    out = {}
    for cap in (4096, 8192):
        # A real ring file with a few records, raw mode.
        path = os.path.join(private_dir("mds-seed-"), "r")
        ring = Ring.create(path, cap, unlink_on_close=False)
        ring.write(0, b"MDMP" + bytes(28))
        ring.write(4096, bytes(range(200)))
        ring.write(7, b"")
        ring.flush()
        with open(path, "rb") as f:
            out[f"raw-{cap}-open"] = b"\x00" + f.read()
        ring.seal()
        with open(path, "rb") as f:
            out[f"raw-{cap}-finished"] = b"\x00" + f.read()
        ring.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    out["structured-a"] = b"\x01" + bytes(range(256))
    out["structured-b"] = b"\x01" + b"\x00\x01\x02\x03" * 40
    out["structured-c"] = b"\x01" + bytes((i * 37) & 0xFF for i in range(512))
    return out


if __name__ == "__main__":
    run_main(test_one_input, STATS, instrument=[sys.modules[__name__]])
