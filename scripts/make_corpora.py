#!/usr/bin/env python
"""Regenerate the fuzz seed corpora in fuzz/corpus/<target>/ (small files,
all generated here: no copies of real dumps).

    python scripts/make_corpora.py
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fuzz"))

import fuzz_attach  # noqa: E402
import fuzz_live_ring  # noqa: E402
import fuzz_spill  # noqa: E402

import mdstream  # noqa: E402
from mdstream.sample import build_sample_minidump  # noqa: E402

CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def rec(offset: int, data: bytes, reserved: int = 0) -> bytes:
    return struct.pack("<QII", offset, len(data), reserved) + data


def trace_via_sink() -> bytes:
    """A real MDTRACE1 file: writes through a ring drained into a TraceSink."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "seed.mdtrace")
        ring = mdstream.Ring.create(None, 1 << 16)
        for offset, data in [(0, b"MDMP\x93\xa7\0\0"), (32, bytes(range(40))), (8, b""), (4096, b"x" * 100),
                             (12, b"\x01\x02\x03\x04")]:
            ring.write(offset, data)
        ring.finish()
        sink = mdstream.TraceSink(path)
        for batch in ring:
            sink.consume(batch)
        sink.finish()
        with open(path, "rb") as f:
            return f.read()


def trace_seeds() -> dict[str, bytes]:
    real = trace_via_sink()
    body = real[8:]
    small = b"".join(rec(i * 7, bytes([i]) * (i % 5)) for i in range(24))
    return {
        "sink-raw": b"\x00" + real,                       # mode 0: the file as is
        "sink-magic": b"\x0c" + body,                     # mode 1: magic added
        "small-records-lanes": b"\x18" + small,           # mode 3: shrunk lanes
        "small-records-tiled": b"\x1f\x00" + small[:160],  # mode 2: tiled past 256 KiB
        "cut-header": b"\x0c" + rec(1, b"abc")[:-5],
        "cut-data": b"\x0c" + rec(1, b"abcdef")[:-2],
        "huge-offset": b"\x0c" + rec(2**63 - 2, b"abc"),
        "empty": b"\x00",
        "bad-magic": b"\x00MDTRACE2" + small[:32],
        "reserved-nonzero": b"\x18" + b"".join(rec(i, b"zz", reserved=7) for i in range(16)),
    }


def minidump_seeds() -> dict[str, bytes]:
    sample = build_sample_minidump()
    return {
        "sample-structures": b"\x00" + sample[:6304],  # header, directory and every structure; memory cut off
        "sample-header": b"\x00" + sample[:32],
        "sample-patched": b"\x03" + struct.pack("<I", 0) + struct.pack("<IB", 8, 4) + b"\xff\x00\x00\x00",
        "sample-cut": b"\x03" + struct.pack("<I", 5001),
        "sample-full-cut": b"\x83" + struct.pack("<I", 70001),  # the whole sample, cut inside its memory
        "not-a-dump": b"\x00" + b"PK\x03\x04" + bytes(60),
    }


def main() -> None:
    sets = {
        "trace": trace_seeds(),
        "minidump": minidump_seeds(),
        "attach": fuzz_attach.seeds(),
        "live_ring": fuzz_live_ring.seeds(),
        "spill": fuzz_spill.seeds(),
    }
    for target, seeds in sets.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, f"seed-{name}"), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
