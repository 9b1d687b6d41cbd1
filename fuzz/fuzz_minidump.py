#!/usr/bin/env python3
"""Fuzz the minidump ``info`` parser, ``mdstream.minidump.read_info`` (what
``mdstream info`` prints), and the region map built on the same directory,
``mdstream.minidump.iter_regions`` (what the writer schedule re-cuts dumps
with).

The first input byte chooses the mode:

* ``byte % 4 != 3``: the rest of the input is the file;
* ``byte % 4 == 3``: the built-in sample minidump
  (``mdstream.sample.build_sample_minidump()``) with patches from the input
  applied and cut to a length from the input: the fuzzer starts deep inside a
  real dump's structures without carrying the dump in every input.  The base
  is the sample's first 6304 bytes (header, directory and every structure;
  the memory they point at lies past the end) unless ``byte & 0x80``: then
  the whole 310 KiB sample (slower).  Layout: ``cut:u32`` then
  ``(at:u32, n:u8, bytes[n])*``.

Only ``NotAMinidumpError`` / ``MinidumpFormatError`` may escape the parser;
the results must be self-consistent (a stream or region reported without a
problem lies inside the file, structure field sizes add up, every text form
renders).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Bytes, Stats, run_main  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["mdstream.minidump"]):
        import mdstream.minidump as minidump
else:
    import mdstream.minidump as minidump

STATS = Stats("minidump")
_SAMPLE: bytes | None = None
STRUCTURES = 6304  # the sample's header, directory and structures; memory follows


def sample() -> bytes:
    global _SAMPLE
    if _SAMPLE is None:
        from mdstream.sample import build_sample_minidump

        _SAMPLE = build_sample_minidump()
    return _SAMPLE


def build(data: bytes) -> bytes:
    if not data or data[0] % 4 != 3:
        return data[1:]
    src = Bytes(data[1:])
    base = bytearray(sample() if data[0] & 0x80 else sample()[:STRUCTURES])
    cut = src.u32()
    while src.remaining() >= 5:
        at = src.u32() % len(base)
        n = src.u8() % 32
        patch = src.take(n)
        base[at:at + len(patch)] = patch
    if cut % 8 != 0:  # most inputs keep the whole file
        base = base[:cut % (len(base) + 1)]
    return bytes(base)


def check_info(buf: bytes) -> bool:
    try:
        info = minidump.read_info(buf)
    except (minidump.NotAMinidumpError, minidump.MinidumpFormatError) as exc:
        STATS.hit(type(exc).__name__)
        str(exc)
        return False
    STATS.hit("info-ok")
    size = len(buf)
    assert info.file_size == size
    assert len(info.streams) == info.number_of_streams
    for s in info.streams:
        past = s.rva + s.data_size > size
        assert past == ("past end of file" in (s.problem or "")), (s, size)
    d = info.to_dict()
    json.dumps(d)
    assert len(d["streams"]) == info.number_of_streams
    info.format_text()
    info.problems
    info.timestamp_iso
    return True


def check_regions(buf: bytes) -> None:
    size = len(buf)
    count = 0
    for r in minidump.iter_regions(buf):
        count += 1
        assert r.start >= 0 and r.end >= r.start, r
        if r.problem is None and r.kind not in ("directory",):
            assert r.end <= size, r
        if r.fields:
            assert sum(r.fields) == r.size, r
        for a, b in r.refs:
            assert 0 <= a <= b <= size, r
        r.size
    STATS.hit("regions", count)


def test_one_input(data: bytes) -> None:
    buf = build(data)
    if check_info(buf):
        check_regions(buf)


if __name__ == "__main__":
    run_main(test_one_input, STATS)
