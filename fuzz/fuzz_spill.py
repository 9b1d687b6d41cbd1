#!/usr/bin/env python3
"""Fuzz the spill manifest reader, ``mdstream.spill.parse_manifest`` /
``read_manifest`` (what ``mdstream spill inspect`` and ``finish`` trust), and
``mdstream.spill.finish`` against a reference overlay.

The first input byte chooses the mode:

* ``byte % 2 == 0``: the rest of the input is the manifest, byte for byte;
* ``byte % 2 == 1``: structured: a valid version-1 header (so inputs shorter
  than 4 KiB still get past the header checks) with ``flags:u8``,
  ``trigger:u8``, ``dump_size:u16``, ``count:u8 % 24`` extents of
  ``(offset:u16, length:u8)``, then patches ``(at:u16, n:u8, bytes[n])*``
  laid over the whole manifest, header and extents alike.

Only ``SpillFormatError`` may escape the parser.  What parses must be
self-consistent (extent table inside the file, no extent overflowing, none
past ``dump_size`` when FINISHED, ``pack_manifest`` round-trips, the report
is JSON).  A FINISHED, not FAILED manifest of a small dump is then finished
for real, in a private scratch directory, from a spill file and a base made
from the input, and the output must equal the overlay computed naively.
"""

from __future__ import annotations

import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Bytes, Stats, private_dir, run_main, write_private  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["mdstream.spill"]):
        import mdstream.spill as spill
else:
    import mdstream.spill as spill

from mdstream.errors import SpillFormatError  # noqa: E402

STATS = Stats("spill")
MAX_FINISH = 1 << 16  # dumps finished for real are at most this big
_DIR: str | None = None


def scratch() -> str:
    global _DIR
    if _DIR is None:
        _DIR = private_dir("mds-fuzz-spill-")
    return _DIR


def build(data: bytes) -> bytes:
    if not data or data[0] % 2 == 0:
        return data[1:]
    src = Bytes(data[1:])
    flags, trigger, dump_size = src.u8() & 0x7, 1 + src.u8() % 3, src.u16()
    extents = [(src.u16(), src.u8()) for _ in range(src.u8() % 24)]
    raw = bytearray(spill.pack_manifest(spill.SpillManifest(
        flags=flags, trigger=trigger, dump_size=dump_size, extents=extents, reason="fuzz", base_path="/b")))
    while src.remaining() >= 4:
        at = src.u16() % len(raw)
        patch = src.take(src.u8() % 16)
        raw[at:at + len(patch)] = patch
    return bytes(raw)


def check_manifest(raw: bytes) -> spill.SpillManifest | None:
    try:
        m = spill.parse_manifest(raw)
    except SpillFormatError as exc:
        STATS.hit("format-error")
        str(exc)
        return None
    STATS.hit("parsed")
    assert m.extents.shape == (m.extent_count, 2)
    assert spill.HEADER_SIZE + spill.EXTENT_SIZE * (m.extent_count or 0) <= len(raw)
    for offset, length in m.extents.tolist():
        assert offset + length < 1 << 64
        if m.finished:
            assert offset + length <= m.dump_size, (offset, length, m.dump_size)
    assert spill.parse_manifest(spill.pack_manifest(m)) == m
    json.dumps(m.to_dict())
    merged = spill.merge_extents(m.extents).tolist()
    assert all(a < b for a, b in merged) and all(x[1] < y[0] for x, y in zip(merged, merged[1:]))
    return m


def check_finish(m: spill.SpillManifest, seed: bytes) -> None:
    """Finish the spill for real and compare with the overlay done byte by byte."""
    if not m.finished or m.failed or m.dump_size > MAX_FINISH:
        return
    d = scratch()
    spill_path = os.path.join(d, "s")
    fill = (seed or b"\x5a") * (MAX_FINISH // max(1, len(seed)) + 2)
    spill_bytes = bytes(b ^ 0xA5 for b in fill[:m.dump_size])
    base = fill[: (len(seed) * 7) % (m.dump_size + 9)]
    write_private(spill_path, spill_bytes)
    write_private(spill_path + ".mdspill", spill.pack_manifest(m))
    write_private(os.path.join(d, "base"), base)
    expected = bytearray(base[:m.dump_size].ljust(m.dump_size, b"\0"))
    for offset, length in m.extents.tolist():
        expected[offset:offset + length] = spill_bytes[offset:offset + length]
    if m.base_complete:
        expected = bytearray(spill_bytes)
    result = spill.finish(spill_path, os.path.join(d, "out"), os.path.join(d, "base"), overwrite=True, fsync=False)
    with open(os.path.join(d, "out"), "rb") as f:
        assert f.read() == expected
    assert result["size"] == m.dump_size
    STATS.hit("finished-" + result["method"])


def test_one_input(data: bytes) -> None:
    raw = build(data)
    m = check_manifest(raw)
    if m is not None:
        check_finish(m, data[-32:])


def seeds() -> dict[str, bytes]:
    """Seed inputs (fuzz/corpus/spill)."""
    valid = spill.pack_manifest(spill.SpillManifest(
        flags=spill.FLAG_FINISHED, trigger=2, dump_size=300, extents=[(0, 32), (100, 50), (40, 10), (120, 60)],
        reason="consumer stalled past spill_after", base_path="/dev/shm/.crash.dmp.0a1b.mdstream-partial",
        resume_pos=4096, ring_end_pos=8192, replayed_records=3, replayed_bytes=92, direct_writes=1,
        direct_bytes=60, spilled_unix_ns=1_700_000_000_000_000_000, producer_pid=4242))
    complete = spill.pack_manifest(spill.SpillManifest(
        flags=spill.FLAG_FINISHED | spill.FLAG_BASE_COMPLETE, trigger=1, dump_size=64, base_bytes=40,
        extents=[(40, 24)]))
    structured = struct.pack("<BBHB", 1, 1, 400, 4) + b"".join(struct.pack("<HB", o, n)
                                                                for o, n in [(0, 32), (350, 50), (10, 5), (11, 200)])
    return {
        "raw-valid": b"\x00" + valid,
        "raw-complete": b"\x00" + complete,
        "raw-trailing": b"\x00" + valid + b"\x01\x02\x03",
        "raw-cut-table": b"\x00" + valid[:-5],
        "raw-header-only": b"\x00" + valid[:4096],
        "raw-short": b"\x00" + valid[:200],
        "structured-finished": b"\x01" + structured,
        "structured-complete": b"\x01" + struct.pack("<BBHB", 3, 2, 100, 1) + struct.pack("<HB", 0, 100),
        "structured-patched": b"\x01" + structured + struct.pack("<HB", 88, 8) + b"\xff" * 8,
        "structured-unfinished": b"\x01" + struct.pack("<BBHB", 0, 3, 0, 2) + struct.pack("<HBHB", 7, 9, 60000, 255),
    }


if __name__ == "__main__":
    run_main(test_one_input, STATS)
