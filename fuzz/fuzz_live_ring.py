#!/usr/bin/env python3
"""Fuzz a live ring: a consumer reads while a fuzzed, hostile producer writes
arbitrary bytes over the data area and the header fields of the mapping it
shares, interleaved with legitimate writes through a real producer handle.

Each input is a program of operations on one fresh named ring (4 or 8 KiB,
in a private 0700 directory): legitimate ``write``/``flush``/``seal``/
``abort``/``close`` from an attached producer handle; pokes of any header
field or of raw bytes / record-shaped bytes anywhere in the data area
through a separate writable mapping of the file (the hostile producer); and
consumer ``read`` (held batches), every batch accessor *after* further pokes
(the bytes change between the C core's scan and its index or copy), releases
in any order, and the C sink loops (``MemorySink``, ``NullSink``).

The consumer must raise ``RingCorruptError`` / ``RingFormatError`` / the other
``mdstream`` exceptions (or ``ValueError``/``OSError``; ``MemoryError`` from a
``MemorySink`` asked to hold an absurd offset) and must never crash or read
outside the mapping: run it under the ASan build (``scripts/fuzz.sh
live_ring``), with the consumer's mapping below a PROT_NONE guard page.

The bugs it found (a producer writing past the data area from positions
rewritten after attach, a NULL memcpy in the memory sink) are fixed; their
inputs are replayed from fuzz/regressions/live_ring/.  The ring file is never
truncated here: shrinking it is still fatal (SIGBUS), see fuzz/known_bugs.py.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    BEGIN,
    DATA,
    END,
    FIELD_NAMES,
    FIELDS,
    PAD,
    RING_HEADER,
    Bytes,
    GuardPage,
    Stats,
    classify,
    private_dir,
    set_field,
    sink_consume,
)

from mdstream import MemorySink, NullSink, Ring  # noqa: E402
from mdstream.errors import MdstreamError  # noqa: E402

EXPECTED = (MdstreamError, ValueError, OSError)
STATS = Stats("live_ring")
_DIR: str | None = None
_COUNTER = [0]

INTERESTING = [0, 1, 2, 3, 15, 16, 17, 4080, 4096, 4112, 8192, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 16,
               2**64 - 1]


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
        bytes(view[:4])
        bytes(view[-4:])
    for _off, view in batch:
        len(view)
    batch.summary()
    batch.nbytes
    repr(batch)


class Session:
    def __init__(self, src: Bytes) -> None:
        global _DIR
        if _DIR is None:
            _DIR = private_dir("mds-fuzz-live-")
        _COUNTER[0] += 1
        self.path = os.path.join(_DIR, f"ring{_COUNTER[0]}")
        self.src = src
        capacity = 4096 if src.below(4) else 8192
        self.guard = GuardPage(RING_HEADER + capacity)
        self.consumer = Ring.create(self.path, capacity)
        self.guarded = self.guard.guards(self.consumer.data_address - RING_HEADER, RING_HEADER + capacity)
        self.capacity = capacity
        self.producer_guard = GuardPage(RING_HEADER + capacity)
        self.producer = Ring.attach(self.path)
        if self.producer_guard.guards(self.producer.data_address - RING_HEADER, RING_HEADER + capacity):
            STATS.hit("producer-guarded")
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.map = mmap.mmap(fd, RING_HEADER + capacity)
        finally:
            os.close(fd)
        self.batches: list = []
        self.sink = MemorySink() if src.flag() else NullSink()
        self.next_offset = 0
        self.producer_claimed = False

    # -- hostile producer --------------------------------------------------
    def poke_field(self) -> None:
        name = self.src.pick(FIELD_NAMES)
        if FIELDS[name][1].endswith("s"):
            set_field(self.map, name, self.src.take(self.src.below(20)))
            return
        s = self.src
        choice = s.below(4)
        if choice == 0:
            value = s.pick(INTERESTING)
        elif choice == 1:  # near the current value
            off, fmt = FIELDS[name]
            cur = struct.unpack_from(fmt, self.map, off)[0]
            value = cur + s.pick([-32, -16, -1, 1, 16, 32, self.capacity, -self.capacity])
        elif choice == 2 and name in ("write_pos", "read_pos"):
            other = struct.unpack_from("<Q", self.map, FIELDS["read_pos" if name == "write_pos" else "write_pos"][0])[0]
            value = other + s.below(self.capacity // 16 + 2) * 16
        else:
            value = s.u64()
        set_field(self.map, name, value)
        STATS.hit("poke-field")

    def poke_data(self) -> None:
        s = self.src
        at = s.below(self.capacity)
        kind = s.below(6)
        if kind == 0:
            raw = s.take(s.below(48) + 1)
        else:
            at &= ~15
            if kind == 1:
                raw = struct.pack("<QII", s.u64(), s.below(self.capacity + 64), DATA)
            elif kind == 2:
                raw = struct.pack("<QII", 0, (self.capacity - at - 16 + s.pick([0, 0, -16, 16, 1])) & 0xFFFFFFFF, PAD)
            elif kind == 4:
                # A forged BEGIN (a second dump in the ring).
                raw = struct.pack("<QIIQQQQ", 0, s.pick([32, 31, 48]), BEGIN, s.u64(), 0, 0, 0)
            elif kind == 5:
                # A forged END: counts and checksum that may or may not match.
                raw = struct.pack("<QII6Q", 0, s.pick([48, 47, 64]), END, s.u64(), s.below(64), s.u64() & 0xFFFF,
                                  s.u64() & 0xFFFF, s.u64(), 0)
            else:
                raw = struct.pack("<QII", s.u64(), s.u32(), s.u32())
        raw = raw[:self.capacity - at]
        self.map[RING_HEADER + at:RING_HEADER + at + len(raw)] = raw
        STATS.hit("poke-data")

    # -- legitimate producer -----------------------------------------------
    def claiming(self, call) -> None:
        try:
            call()
        except Exception as exc:
            if type(exc).__name__ != "RingBusyError":
                self.producer_claimed = True
            raise
        self.producer_claimed = True

    def write(self) -> None:
        s = self.src
        n = s.pick([0, 1, 16, 100, 1000, 2032, 2033, 4000, 5000])
        offset = self.next_offset if s.flag() else s.u64() & ((1 << 63) - 1)
        payload = bytes([s.u8()]) * n
        self.claiming(lambda: self.producer.write(offset, payload, timeout=0))
        self.next_offset = offset + n
        STATS.hit("write")

    # -- consumer -----------------------------------------------------------
    def read(self) -> None:
        if len(self.batches) >= 3:
            self.batches.pop(0).release()
        batch = self.consumer.read(timeout=self.src.pick([0, 0, 0, 0, 0, 0, 0, 0.0005]))
        if batch is None:
            STATS.hit("end")
            return
        self.batches.append(batch)
        STATS.hit("batch")

    def held(self):
        return self.batches[self.src.below(len(self.batches))] if self.batches else None

    def step(self) -> None:
        s = self.src
        op = s.below(16)
        if op <= 2:
            self.poke_field()
        elif op <= 5:
            self.poke_data()
        elif op <= 7:
            self.write()
        elif op <= 10:
            self.read()
        elif op == 11:
            b = self.held()
            if b is not None:
                touch(b)
                STATS.hit("touch")
        elif op == 12:
            b = self.held()
            if b is not None:
                sink_consume(self.sink, b, STATS)
        elif op == 13:
            if self.batches:
                self.batches.pop(s.below(len(self.batches))).release()
        elif op == 14:
            what = s.below(6)
            if what == 0:
                self.producer.flush()
            elif what == 1:
                self.claiming(lambda: self.producer.seal(timeout=0))
            elif what == 2:
                self.producer.abort(s.u32(), "fuzz producer abort")
            elif what == 3:
                self.consumer.abort(s.u32(), "fuzz consumer abort")
            elif what == 4:
                self.producer.close()
            else:
                self.consumer.state, self.consumer.abort_info, repr(self.consumer)
        else:
            if self.batches and s.below(4) == 0:
                # A batch touched after its ring was closed must raise
                # (fuzz/known_bugs.py batch_after_close, fixed since).
                b = self.batches[-1]
                self.consumer.close()
                touch(b)
            else:
                self.poke_field()

    def close(self) -> None:
        for b in self.batches:
            b.release()
        self.batches.clear()
        try:
            self.map.close()
        except BufferError:
            pass
        self.producer.close()
        try:
            self.consumer.close()
        finally:
            self.guard.release()
            self.producer_guard.release()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def test_one_input(data: bytes) -> None:
    src = Bytes(data)
    session = Session(src)
    if session.guarded:
        STATS.hit("guarded")
    try:
        for _ in range(32):
            if src.remaining() == 0:
                break
            try:
                session.step()
            except EXPECTED as exc:
                STATS.hit("raised:" + type(exc).__name__)
                classify(exc)
    finally:
        session.close()


def seeds() -> dict[str, bytes]:
    out = {}
    # Mostly legitimate traffic: writes then reads.
    out["writes-reads"] = bytes([1, 0]) + bytes([6, 1, 3, 7] * 4 + [8, 0, 8, 0, 11, 12, 13] * 3)
    out["pokes"] = bytes(range(256))
    out["mixed"] = bytes((i * 73 + 11) & 0xFF for i in range(400))
    out["positions"] = bytes([1, 0] + [0, 18, 2, 5, 8, 0, 11, 0] * 8)
    return out


if __name__ == "__main__":
    from _common import run_main

    run_main(test_one_input, STATS, instrument=[sys.modules[__name__]])
