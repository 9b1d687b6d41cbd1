"""The spill manifest (``*.mdspill``, docs/spill-format.md): reading it strictly,
``mdstream.spill.inspect`` / ``finish`` and the ``mdstream spill`` command."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdstream import spill
from mdstream.cli import main
from mdstream.errors import MdstreamError, SpillFormatError
from mdstream.sample import build_sample_minidump
from mdstream.spill import SpillError, SpillManifest

U64 = (1 << 64) - 1
FINISHED, BASE_COMPLETE, FAILED = 0x1, 0x2, 0x4


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def hand_built(*, flags=0, trigger=1, dump_size=0, base_bytes=0, resume_pos=0, ring_end_pos=0,
               replayed_records=0, replayed_bytes=0, direct_writes=0, direct_bytes=0, extents=(),
               extent_count=None, spilled_unix_ns=0, producer_pid=0, reserved=0, base_path=b"", reason=b"",
               magic=b"MDSPILL1", version=1, header_size=4096) -> bytearray:
    """A manifest laid out field by field from the spec's table (independently of mdstream.spill)."""
    h = bytearray(4096)
    h[0:8] = magic
    struct.pack_into("<I", h, 8, version)
    struct.pack_into("<I", h, 12, header_size)
    struct.pack_into("<I", h, 16, flags)
    struct.pack_into("<I", h, 20, trigger)
    struct.pack_into("<Q", h, 24, dump_size)
    struct.pack_into("<Q", h, 32, base_bytes)
    struct.pack_into("<Q", h, 40, resume_pos)
    struct.pack_into("<Q", h, 48, ring_end_pos)
    struct.pack_into("<Q", h, 56, replayed_records)
    struct.pack_into("<Q", h, 64, replayed_bytes)
    struct.pack_into("<Q", h, 72, direct_writes)
    struct.pack_into("<Q", h, 80, direct_bytes)
    struct.pack_into("<Q", h, 88, len(extents) if extent_count is None else extent_count)
    struct.pack_into("<Q", h, 96, spilled_unix_ns)
    struct.pack_into("<I", h, 104, producer_pid)
    struct.pack_into("<I", h, 108, reserved)
    h[112:112 + len(base_path)] = base_path
    h[1136:1136 + len(reason)] = reason
    for offset, length in extents:
        h += struct.pack("<QQ", offset, length)
    return h


def put(path: Path, data: bytes) -> Path:
    path.write_bytes(bytes(data))
    return path


def apply(writes, size=None) -> bytearray:
    """Apply ``(offset, data)`` writes in order to a zero-filled buffer (what a writer's file holds)."""
    end = max((o + len(d) for o, d in writes), default=0)
    buf = bytearray(end if size is None else size)
    for offset, data in writes:
        buf[offset:offset + len(data)] = data
    return buf


def make_spill(directory: Path, writes, split: int, *, base_extra: bytes = b"", name="crash.spill"):
    """A spill of a dump made of ``writes``: the consumer applied the first ``split`` (the base),
    the producer spilled the rest.  Returns (spill path, base path, the expected dump)."""
    dump = apply(writes)
    base = apply(writes[:split]) + base_extra
    spilled = writes[split:]
    spill_path = directory / name
    put(spill_path, apply(spilled))  # S holds only the spilled bytes, each at its offset
    spill.write_manifest(spill.manifest_path(spill_path), flags=FINISHED, trigger=2, dump_size=len(dump),
                         extents=[(o, len(d)) for o, d in spilled], base_path=str(directory / "consumer.dmp"),
                         reason="consumer stalled past spill_after")
    base_path = put(directory / "partial.dmp", base)
    return spill_path, base_path, bytes(dump)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()
                  if p.name.startswith(".") or ("partial" in p.name and p.name != "partial.dmp"))


@contextlib.contextmanager
def chunk_size(n: int):
    old = spill.CHUNK
    spill.CHUNK = n
    try:
        yield
    finally:
        spill.CHUNK = old


@pytest.fixture
def sample() -> bytes:
    return build_sample_minidump(0)


@pytest.fixture
def complete_spill(tmp_path, sample) -> Path:
    path = put(tmp_path / "crash.spill", sample)
    spill.write_manifest(spill.manifest_path(path), flags=FINISHED | BASE_COMPLETE, trigger=1,
                         dump_size=len(sample), base_bytes=len(sample) - 5000,
                         extents=[(len(sample) - 5000, 5000), (0, 32)], reason="consumer gone (pid 4242 died)",
                         base_path="/dev/shm/.crash.dmp.abc.mdstream-partial", producer_pid=77,
                         spilled_unix_ns=1_700_000_000 * 10**9)
    return path


# --------------------------------------------------------------------------
# the format
# --------------------------------------------------------------------------

FULL = dict(flags=FINISHED | FAILED, trigger=3, dump_size=1 << 40, base_bytes=12345, resume_pos=4096 * 7,
            ring_end_pos=4096 * 9, replayed_records=3, replayed_bytes=999, direct_writes=11, direct_bytes=1 << 33,
            spilled_unix_ns=U64, producer_pid=0xFFFFFFFF)


def test_round_trip(tmp_path):
    m = spill.write_manifest(tmp_path / "a.mdspill", **FULL, base_path="/tmp/é/out.dmp", reason="r" * 255,
                             extents=[(5, 0), (0, 1 << 40)])
    got = spill.read_manifest(tmp_path / "a.mdspill")
    assert got == m
    assert got.extents.dtype == np.uint64 and got.extents.shape == (2, 2)
    assert got.extents.tolist() == [[5, 0], [0, 1 << 40]]
    assert not got.extents.flags.writeable
    assert got.extent_count == 2 and got.base_path == "/tmp/é/out.dmp" and got.reason == "r" * 255
    assert (got.finished, got.base_complete, got.failed, got.complete) == (True, False, True, False)
    assert got.flag_names == ["FINISHED", "FAILED"] and got.trigger_name == "ring aborted"
    assert spill.pack_manifest(got) == (tmp_path / "a.mdspill").read_bytes()
    assert got != SpillManifest(**{**FULL, "extents": [(5, 0)]})


def test_empty_manifest_round_trip(tmp_path):
    m = spill.write_manifest(tmp_path / "e.mdspill")
    assert (tmp_path / "e.mdspill").stat().st_size == 4096
    assert stat.S_IMODE((tmp_path / "e.mdspill").stat().st_mode) == 0o600
    got = spill.read_manifest(tmp_path / "e.mdspill")
    assert got == m and got.extent_count == 0 and got.extents.shape == (0, 2)
    assert (got.finished, got.base_complete, got.failed, got.complete) == (False, False, False, False)


def test_hand_built_manifest_reads_as_the_spec_says(tmp_path):
    extents = [(4096, 100), (0, 32), (50, 10), (U64 - 7, 7)]
    raw = hand_built(**{**FULL, "flags": BASE_COMPLETE}, extents=extents, base_path="/srv/agent/ü.dmp".encode(),
                     reason=b"stalled 2.0 s")  # not FINISHED: the last extent may pass dump_size
    put(tmp_path / "h.spill.mdspill", raw)
    got = spill.read_manifest(tmp_path / "h.spill")
    expected = {**FULL, "flags": BASE_COMPLETE}
    for name, value in expected.items():
        assert getattr(got, name) == value, name
    assert got.magic == b"MDSPILL1" and got.version == 1 and got.header_size == 4096 and got.reserved == 0
    assert got.extent_count == 4 and got.extents.tolist() == [list(e) for e in extents]
    assert got.base_path == "/srv/agent/ü.dmp" and got.reason == "stalled 2.0 s"
    assert (got.finished, got.base_complete, got.complete) == (False, True, False)
    # and the writer used by the tests produces exactly those bytes
    assert spill.pack_manifest(got) == bytes(raw)
    assert spill.parse_manifest(raw) == got


def test_complete_means_finished_and_base_complete():
    assert SpillManifest(flags=FINISHED | BASE_COMPLETE).complete
    assert not SpillManifest(flags=BASE_COMPLETE).complete
    assert not SpillManifest(flags=FINISHED).complete
    assert SpillManifest(flags=FINISHED | BASE_COMPLETE | FAILED).failed


def test_manifest_object_checks_its_extents():
    with pytest.raises(ValueError, match="extent_count 3 does not match 1"):
        SpillManifest(extents=[(0, 1)], extent_count=3)
    with pytest.raises(ValueError, match="shape"):
        SpillManifest(extents=[1, 2, 3])
    mine = np.array([[1, 2]], dtype=np.uint64)
    m = SpillManifest(extents=mine)
    mine[0, 0] = 9  # the manifest holds its own frozen copy
    assert m.extents.tolist() == [[1, 2]] and mine.flags.writeable


def test_manifest_path_and_either_path_is_accepted(tmp_path):
    assert spill.manifest_path("/a/b.spill") == "/a/b.spill.mdspill"
    assert spill.manifest_path(Path("x")) == "x.mdspill"
    m = spill.write_manifest(spill.manifest_path(tmp_path / "s"), reason="x")
    assert spill.read_manifest(tmp_path / "s") == m
    assert spill.read_manifest(str(tmp_path / "s.mdspill")) == m


def test_pack_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="base_path"):
        spill.pack_manifest(SpillManifest(base_path="x" * 1024))
    with pytest.raises(ValueError, match="reason"):
        spill.pack_manifest(SpillManifest(reason="a\0b"))
    with pytest.raises(ValueError, match="does not fit"):
        spill.pack_manifest(SpillManifest(producer_pid=1 << 32))
    assert len(spill.pack_manifest(SpillManifest(base_path="x" * 1023))) == 4096


def _patch(offset, fmt, *values):
    def change(raw: bytearray) -> bytearray:
        struct.pack_into(fmt, raw, offset, *values)
        return raw
    return change


def _valid() -> bytearray:
    return hand_built(flags=FINISHED, dump_size=1000, extents=[(0, 10), (990, 10), (500, 0)], reason=b"why",
                      base_path=b"/x")


BAD = {
    "magic": (lambda r: r.__setitem__(slice(0, 8), b"MDSPILL2") or r, "magic b'MDSPILL2'"),
    "ring-magic": (lambda r: r.__setitem__(slice(0, 8), b"MDSRING1") or r, "not a spill manifest"),
    "version-0": (_patch(8, "<I", 0), "unsupported manifest version 0"),
    "version-3": (_patch(8, "<I", 3), "unsupported manifest version 3"),
    "header-size": (_patch(12, "<I", 4095), "header_size is 4095"),
    "header-size-big": (_patch(12, "<I", 8192), "header_size is 8192"),
    "empty": (lambda r: bytearray(), "empty file"),
    "cut-magic": (lambda r: r[:5], "truncated header: 5 bytes"),
    "cut-header": (lambda r: r[:4095], "truncated header: 4095 bytes"),
    "cut-strings": (lambda r: r[:1000], "truncated header: 1000 bytes"),
    "count-one-too-many": (_patch(88, "<Q", 4), "extent_count 4 claims more extents than the file holds"),
    "count-huge": (_patch(88, "<Q", U64), "claims more extents"),
    "count-cut-extent": (lambda r: r[:-1], "extent_count 3 claims more extents"),
    "extent-overflow": (_patch(4096 + 16, "<QQ", U64, 1), "extent 1 (offset 18446744073709551615, length 1) "
                                                            "overflows 64 bits"),
    "extent-overflow-big": (_patch(4096, "<QQ", 1 << 63, 1 << 63), "extent 0 "),
    "extent-past-dump": (_patch(4096 + 16, "<QQ", 991, 10), "extent 1 [991, 1001) lies beyond dump_size 1000"),
    "dump-size-shrunk": (_patch(24, "<Q", 999), "lies beyond dump_size 999"),
    "base-path-unterminated": (lambda r: r.__setitem__(slice(112, 1136), b"a" * 1024) or r,
                               "base_path is not NUL-terminated within its 1024 bytes"),
    "reason-unterminated": (lambda r: r.__setitem__(slice(1136, 1392), b"b" * 256) or r,
                            "reason is not NUL-terminated within its 256 bytes"),
    "reserved": (_patch(108, "<I", 1), "reserved field (offset 108) is 0x1"),
    "zero-area": (_patch(4000, "<B", 7), "byte 4000 of the zero area"),
    "zero-area-first": (_patch(1392, "<B", 1), "byte 1392 of the zero area"),
    "unknown-flag": (_patch(16, "<I", 0x9), "unknown flags 0x8"),
    "trigger-0": (_patch(20, "<I", 0), "unknown trigger 0"),
    "trigger-4": (_patch(20, "<I", 4), "unknown trigger 4"),
}


def test_texts_cut_inside_a_character_and_non_utf8_paths_are_read(tmp_path):
    """The C writer cuts the reason at a byte limit and copies paths as bytes."""
    raw = _valid()
    raw[1136:1140] = b"ab\xe2\0"                  # "ab" + the first byte of a 3-byte character
    raw[112:117] = b"/x\xff/\0"                   # not UTF-8, a valid Linux path
    m = spill.parse_manifest(bytes(raw))
    assert m.reason == "ab\ufffd"
    assert os.fsencode(m.base_path) == b"/x\xff/"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_is_a_spill_format_error(tmp_path, case):
    change, message = BAD[case]
    raw = change(_valid())
    path = put(tmp_path / "bad.mdspill", raw)
    with pytest.raises(SpillFormatError) as info:
        spill.read_manifest(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(SpillFormatError, match="<buffer>"):
        spill.parse_manifest(raw)
    assert isinstance(info.value, MdstreamError) and isinstance(info.value, ValueError)


def test_the_valid_base_of_the_bad_cases_parses():
    m = spill.parse_manifest(_valid())
    assert m.extent_count == 3 and m.dump_size == 1000


def test_extents_past_dump_size_are_fine_until_finished():
    raw = hand_built(flags=0, dump_size=0, extents=[(0, 10), (1 << 40, 5)])
    assert spill.parse_manifest(raw).extents.tolist() == [[0, 10], [1 << 40, 5]]
    raw[16] = FINISHED
    with pytest.raises(SpillFormatError, match="extent 0 .* beyond dump_size 0"):
        spill.parse_manifest(raw)


def test_trailing_bytes_of_an_interrupted_append_are_ignored(tmp_path):
    raw = _valid() + struct.pack("<Q", 77)  # half an extent the writer did not count yet
    assert spill.parse_manifest(raw).extent_count == 3
    spill_path = put(tmp_path / "s", bytes(1000))
    put(tmp_path / "s.mdspill", raw)
    assert spill.inspect(spill_path)["trailing_bytes"] == 8


def test_extent_count_is_capped_before_allocating(monkeypatch):
    monkeypatch.setattr(spill, "MAX_EXTENTS", 2)
    with pytest.raises(SpillFormatError, match="extent_count 3 is beyond the limit of 2"):
        spill.parse_manifest(_valid())


def test_bytes_after_a_string_nul_are_ignored():
    raw = _valid()
    raw[1136:1146] = b"why\0junk!!"  # a C writer reusing a buffer
    assert spill.parse_manifest(raw).reason == "why"


def test_symlinked_manifest_is_refused(tmp_path):
    real = tmp_path / "elsewhere.mdspill"
    put(real, _valid())
    (tmp_path / "s.mdspill").symlink_to(real)
    with pytest.raises(PermissionError, match="symlink") as info:
        spill.read_manifest(tmp_path / "s")
    assert info.value.filename == str(tmp_path / "s.mdspill")
    with pytest.raises(PermissionError, match="symlink"):
        spill.inspect(tmp_path / "s")


def test_manifest_that_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "f.mdspill")  # must not hang opening it
    with pytest.raises(SpillFormatError, match="not a regular file"):
        spill.read_manifest(tmp_path / "f")
    (tmp_path / "d.mdspill").mkdir()
    with pytest.raises((SpillFormatError, IsADirectoryError)):
        spill.read_manifest(tmp_path / "d")
    with pytest.raises(FileNotFoundError):
        spill.read_manifest(tmp_path / "none")


def _outcome(raw: bytes):
    try:
        return spill.parse_manifest(raw)
    except SpillFormatError as exc:
        return ("error", str(exc).split(": ", 1)[1])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.binary(min_size=4080, max_size=4200).map(lambda b: b"MDSPILL1" + b[8:]),
                 st.binary(min_size=4090, max_size=4200).map(lambda b: bytes(hand_built()[:112]) + b[112:])))
def test_random_bytes_parse_or_raise_spill_format_error(raw):
    result = _outcome(raw)
    if isinstance(result, SpillManifest):
        assert 4096 + 16 * result.extent_count <= len(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patches=st.lists(st.tuples(st.integers(0, 4096 + 3 * 16 + 8), st.binary(min_size=1, max_size=8)),
                        max_size=4),
       fields=st.lists(st.tuples(st.sampled_from([8, 12, 16, 20, 24, 88, 104, 108, 4096, 4104, 4112, 4120]),
                                 st.sampled_from([0, 1, 2, 3, 4, 7, 999, 1000, 1001, 4096, 1 << 32, 1 << 63, U64])),
                       max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 4096 + 3 * 16 + 16)))
def test_mutated_manifest_parses_or_raises_spill_format_error(patches, fields, cut):
    raw = _valid()
    for offset, value in fields:
        raw[offset:offset + 8] = struct.pack("<Q", value)[: 4 if offset < 24 or offset in (104, 108) else 8]
    for offset, data in patches:
        raw[offset:offset + len(data)] = data
    if cut is not None:
        raw = raw[:cut]
    result = _outcome(bytes(raw))
    if isinstance(result, SpillManifest):
        # whatever parses is self-consistent
        assert result.extents.shape == (result.extent_count, 2)
        assert 4096 + 16 * result.extent_count <= len(raw)
        ends = [int(o) + int(n) for o, n in result.extents.tolist()]
        assert all(e <= U64 for e in ends)
        if result.finished:
            assert all(e <= result.dump_size for e in ends)
        assert spill.parse_manifest(spill.pack_manifest(result)) == result


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4200), st.binary(max_size=8)), max_size=6), st.integers(0, 4300))
def test_file_and_buffer_readers_agree(patches, cut):
    raw = _valid()
    for offset, data in patches:
        raw[offset:offset + len(data)] = data
    raw = bytes(raw[:cut])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.mdspill")
        put(Path(path), raw)
        try:
            from_file = spill.read_manifest(path)
        except SpillFormatError as exc:
            from_file = ("error", str(exc).split(": ", 1)[1])
    assert _outcome(raw) == from_file


# --------------------------------------------------------------------------
# merging extents
# --------------------------------------------------------------------------


def test_merge_extents_examples():
    assert spill.merge_extents([]).shape == (0, 2)
    assert spill.merge_extents([(5, 0)]).shape == (0, 2)
    assert spill.merge_extents([(10, 5), (0, 3), (3, 2), (12, 10), (100, 1), (0, 0)]).tolist() == \
        [[0, 5], [10, 22], [100, 101]]
    assert spill.merge_extents([(U64 - 1, 1), (0, U64 - 1)]).tolist() == [[0, U64]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 20)), max_size=30))
def test_merge_extents_is_the_union(extents):
    covered = set()
    for offset, length in extents:
        covered.update(range(offset, offset + length))
    merged = spill.merge_extents(extents).tolist()
    got = set()
    for start, end in merged:
        assert start < end
        got.update(range(start, end))
    assert got == covered
    assert all(a[1] < b[0] for a, b in zip(merged, merged[1:])), "sorted, disjoint, not touching"


# --------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------


def test_inspect_complete_spill(complete_spill, sample):
    report = spill.inspect(complete_spill)
    json.dumps(report)
    assert report["spill"] == str(complete_spill) and report["manifest"] == str(complete_spill) + ".mdspill"
    for name in ("version", "header_size", "flags", "trigger", "dump_size", "base_bytes", "resume_pos",
                 "ring_end_pos", "replayed_records", "replayed_bytes", "direct_writes", "direct_bytes",
                 "extent_count", "spilled_unix_ns", "producer_pid", "reserved", "base_path", "reason"):
        assert name in report, name
    assert report["magic"] == "MDSPILL1"
    assert report["complete"] and report["finished"] and report["base_complete"] and not report["failed"]
    assert report["flag_names"] == ["FINISHED", "BASE_COMPLETE"] and report["trigger_name"] == "consumer gone"
    assert report["dump_size"] == len(sample) and report["producer_pid"] == 77
    assert report["extent_count"] == 2 and report["covered_bytes"] == 5032 and report["covered_ranges"] == 2
    assert report["covered_end"] == len(sample)
    assert report["spill_exists"] and report["spill_size"] == len(sample)
    assert report["spill_is_minidump"] and report["spill_minidump_problem"] is None
    assert report["spilled_iso"] == "2023-11-14T22:13:20Z"
    assert report["finishable"] and not report["needs_base"] and report["problems"] == []
    assert spill.inspect(str(complete_spill) + ".mdspill") == report


def test_inspect_partial_spill_reports_problems(tmp_path):
    writes = [(0, b"MDMP" + bytes(28)), (100, b"x" * 50), (40, b"y" * 10)]
    spill_path, _, _ = make_spill(tmp_path, writes, 1)
    report = spill.inspect(spill_path)
    assert report["covered_bytes"] == 60 and report["covered_ranges"] == 2 and report["covered_end"] == 150
    assert report["needs_base"] and report["finishable"] and not report["complete"]
    assert not report["spill_is_minidump"] and "not a minidump" in report["spill_minidump_problem"]
    assert report["problems"] == []
    os.truncate(spill_path, 120)
    assert spill.inspect(spill_path)["problems"] == ["the spill file is 120 bytes but the extents reach byte 150"]
    os.unlink(spill_path)
    report = spill.inspect(spill_path)
    assert report["problems"] == ["the spill file does not exist"] and report["spill_size"] is None


def test_inspect_complete_spill_of_the_wrong_size(complete_spill):
    with open(complete_spill, "ab") as f:
        f.write(b"extra")
    report = spill.inspect(complete_spill)
    assert report["problems"] == [f"the spill file is {report['dump_size'] + 5} bytes but dump_size is "
                                  f"{report['dump_size']}"]


def test_inspect_refuses_a_symlinked_spill_file(complete_spill, tmp_path):
    target = tmp_path / "real.spill"
    os.rename(complete_spill, target)
    complete_spill.symlink_to(target)
    with pytest.raises(PermissionError, match="spill file is a symlink"):
        spill.inspect(complete_spill)


# --------------------------------------------------------------------------
# finish
# --------------------------------------------------------------------------


def test_finish_base_complete_copies_the_spill(complete_spill, sample, tmp_path):
    out = tmp_path / "dump.dmp"
    with chunk_size(4093):  # many chunks, a ragged last one
        result = spill.finish(complete_spill, out)
    assert out.read_bytes() == sample
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and result["mode"] == "0600"
    assert result["sha256"] == hashlib.sha256(sample).hexdigest() and result["size"] == len(sample)
    assert result["is_minidump"] and result["minidump_problem"] is None
    assert result["method"] == "copy" and result["base"] is None and result["bytes_from_spill"] == len(sample)
    assert result["output"] == str(out)
    json.dumps(result)
    assert leftovers(tmp_path) == []


def test_finish_base_complete_ignores_a_base(complete_spill, sample, tmp_path):
    other = put(tmp_path / "junk", b"junk")
    result = spill.finish(complete_spill, tmp_path / "dump.dmp", other)
    assert (tmp_path / "dump.dmp").read_bytes() == sample and result["base"] is None


def test_finish_base_complete_of_the_wrong_size(complete_spill, tmp_path):
    os.truncate(complete_spill, 1000)
    with pytest.raises(SpillFormatError, match="is 1000 bytes but the manifest's dump_size is"):
        spill.finish(complete_spill, tmp_path / "dump.dmp")
    assert not (tmp_path / "dump.dmp").exists() and leftovers(tmp_path) == []


def test_finish_overlays_tiny_overlapping_unsorted_extents(tmp_path, sample):
    # The consumer applied the first writes; the spilled ones overlap them, each other and
    # go backwards, as a writer patching its header and directory does.
    writes = [(0, sample[:4000]), (4000, sample[4000:9000]), (9000, sample[9000:20000])]
    writes += [(20000, sample[20000:])]
    writes += [(7, b"A"), (6, b"BC"), (3000, b"D" * 2000), (3500, b"E" * 10), (19999, b"FG"), (0, b"MDMP"),
               (len(sample) - 1, b"Z"), (3001, b""), (12, b"\x01\x02"), (13, b"\x03")]
    spill_path, base_path, expected = make_spill(tmp_path, writes, 2)
    for chunk in (1 << 20, 3):
        out = tmp_path / f"dump-{chunk}.dmp"
        with chunk_size(chunk):
            result = spill.finish(spill_path, out, base_path)
        assert out.read_bytes() == expected
        assert result["sha256"] == hashlib.sha256(expected).hexdigest() and result["size"] == len(expected)
        assert result["method"] == "overlay" and result["base"] == str(base_path)
        assert result["base_size"] == 9000
        assert result["zero_filled_bytes"] == 0  # the spill covers everything past the base
        assert result["bytes_from_spill"] + result["bytes_from_base"] == len(expected)
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_finish_zero_fills_bytes_nobody_wrote_and_truncates_a_long_base(tmp_path):
    writes = [(0, b"a" * 10), (20, b"b" * 5), (40, b"c" * 3)]
    spill_path, base_path, expected = make_spill(tmp_path, writes, 1, base_extra=b"Q" * 100)
    assert len(base_path.read_bytes()) == 110
    assert expected == b"a" * 10 + bytes(10) + b"b" * 5 + bytes(15) + b"c" * 3
    result = spill.finish(spill_path, tmp_path / "o", base_path)
    # bytes no extent covers are the base's, whatever they are; past dump_size they are cut
    assert (tmp_path / "o").read_bytes() == b"a" * 10 + b"Q" * 10 + b"b" * 5 + b"Q" * 15 + b"c" * 3
    assert result["bytes_from_base"] == 35 and result["bytes_from_spill"] == 8 and result["zero_filled_bytes"] == 0
    base_path.write_bytes(b"a" * 10)  # a base that stops early: the gap is zero-filled and counted
    result = spill.finish(spill_path, tmp_path / "o2", base_path)
    assert (tmp_path / "o2").read_bytes() == b"a" * 10 + bytes(10) + b"b" * 5 + bytes(15) + b"c" * 3
    assert result["zero_filled_bytes"] == 25 and not result["is_minidump"]


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=24)), min_size=1, max_size=40),
       split=st.integers(0, 40), chunk=st.sampled_from([1, 5, 1 << 20]))
def test_finish_equals_applying_every_write_in_order(writes, split, chunk):
    split = min(split, len(writes))
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        spill_path, base_path, expected = make_spill(directory, writes, split)
        with chunk_size(chunk):
            result = spill.finish(spill_path, directory / "out.dmp", base_path)
        assert (directory / "out.dmp").read_bytes() == expected
        spilled = set()
        for offset, data in writes[split:]:
            spilled.update(range(offset, offset + len(data)))
        assert result["bytes_from_spill"] == len(spilled)
        assert result["size"] == len(expected) and result["sha256"] == hashlib.sha256(expected).hexdigest()


def test_finish_refuses_an_unfinished_spill(tmp_path):
    spill_path, base_path, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def")], 1)
    put(tmp_path / "crash.spill.mdspill", hand_built(flags=BASE_COMPLETE, extents=[(3, 3)]))
    with pytest.raises(SpillError, match="not FINISHED"):
        spill.finish(spill_path, tmp_path / "o", base_path)
    assert not (tmp_path / "o").exists()


def test_finish_refuses_a_failed_spill(tmp_path):
    spill_path, base_path, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def")], 1)
    put(tmp_path / "crash.spill.mdspill", hand_built(flags=FINISHED | BASE_COMPLETE | FAILED, dump_size=6,
                                                     reason=b"pwrite: No space left on device"))
    with pytest.raises(SpillError, match="FAILED .pwrite: No space left on device"):
        spill.finish(spill_path, tmp_path / "o", base_path)
    assert not (tmp_path / "o").exists()


def test_finish_without_a_base_names_the_option(tmp_path):
    spill_path, _, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def")], 1)
    with pytest.raises(SpillError, match="--base PARTIAL") as info:
        spill.finish(spill_path, tmp_path / "o")
    assert str(tmp_path / "consumer.dmp") in str(info.value)  # where the consumer wrote


def test_finish_never_overwrites_unless_asked(complete_spill, sample, tmp_path):
    out = put(tmp_path / "dump.dmp", b"precious")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True") as e:
        spill.finish(complete_spill, out)
    assert isinstance(e.value, MdstreamError) and e.value.filename == str(out)
    assert out.read_bytes() == b"precious"
    spill.finish(complete_spill, out, overwrite=True)
    assert out.read_bytes() == sample and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_finish_checks_the_output_before_any_work(complete_spill, tmp_path, monkeypatch):
    out = put(tmp_path / "dump.dmp", b"precious")

    def no_work(final):
        raise AssertionError("started writing although the output exists")

    monkeypatch.setattr(spill, "_create_private", no_work)
    os.unlink(complete_spill)  # not even the spill file is opened
    with pytest.raises(FileExistsError):
        spill.finish(complete_spill, out)


def test_finish_output_appearing_meanwhile_is_not_clobbered(complete_spill, tmp_path, monkeypatch):
    out = tmp_path / "dump.dmp"
    check = spill._minidump_check

    def intruder(fd, size):
        out.write_bytes(b"appeared while finishing")
        return check(fd, size)

    monkeypatch.setattr(spill, "_minidump_check", intruder)
    with pytest.raises(FileExistsError):
        spill.finish(complete_spill, out)
    assert out.read_bytes() == b"appeared while finishing"
    assert leftovers(tmp_path) == []


def test_finish_refuses_to_write_over_its_inputs(complete_spill, tmp_path):
    for victim in (complete_spill, Path(str(complete_spill) + ".mdspill")):
        before = victim.read_bytes()
        with pytest.raises(SpillError, match="must not be the spill file"):
            spill.finish(complete_spill, victim, overwrite=True)
        assert victim.read_bytes() == before
    spill_path, base_path, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def")], 1, name="other.spill")
    with pytest.raises(SpillError, match="must not be"):
        spill.finish(spill_path, base_path, base_path, overwrite=True)
    assert base_path.read_bytes() == b"abc"


def test_finish_symlink_at_output_is_not_followed(complete_spill, sample, tmp_path):
    victim = put(tmp_path / "victim", b"do not touch")
    out = tmp_path / "dump.dmp"
    out.symlink_to(victim)
    with pytest.raises(FileExistsError):
        spill.finish(complete_spill, out)
    spill.finish(complete_spill, out, overwrite=True)  # replaces the link itself
    assert victim.read_bytes() == b"do not touch"
    assert not out.is_symlink() and out.read_bytes() == sample


def test_finish_symlink_planted_at_the_temporary_name(complete_spill, sample, tmp_path, monkeypatch):
    victim = put(tmp_path / "victim", b"do not touch")
    planted = tmp_path / ".dump.dmp.planted.mdstream-partial"
    planted.symlink_to(victim)
    dangling = tmp_path / ".dump.dmp.dangling.mdstream-partial"
    dangling.symlink_to(tmp_path / "would-be-created")
    names = iter([str(planted), str(dangling), str(tmp_path / ".dump.dmp.free.mdstream-partial")])
    monkeypatch.setattr(spill, "_temp_name", lambda directory, base: next(names))
    result = spill.finish(complete_spill, tmp_path / "dump.dmp")
    assert (tmp_path / "dump.dmp").read_bytes() == sample and result["size"] == len(sample)
    assert victim.read_bytes() == b"do not touch" and not (tmp_path / "would-be-created").exists()
    assert planted.is_symlink() and dangling.is_symlink()
    assert not (tmp_path / ".dump.dmp.free.mdstream-partial").exists()


def test_finish_refuses_a_symlinked_spill_file(complete_spill, tmp_path):
    target = tmp_path / "real.spill"
    os.rename(complete_spill, target)
    complete_spill.symlink_to(target)
    with pytest.raises(PermissionError, match="symlink"):
        spill.finish(complete_spill, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_finish_truncated_spill_file_leaves_nothing(tmp_path):
    spill_path, base_path, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def" * 10)], 1)
    os.truncate(spill_path, 20)
    with pytest.raises(SpillFormatError, match="the extents reach byte 33"):
        spill.finish(spill_path, tmp_path / "o", base_path)
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_finish_reports_a_file_shrinking_while_copied(tmp_path, monkeypatch):
    spill_path, base_path, _ = make_spill(tmp_path, [(0, b"a" * 100), (100, b"b" * 100)], 1)
    assert spill_path.stat().st_size == 200
    real = os.pread

    def shrinking(fd, n, offset):  # the spill file (200 bytes; the others differ) ends at 150
        if os.fstat(fd).st_size == 200:
            n = max(0, min(n, 150 - offset))
        return real(fd, n, offset)

    monkeypatch.setattr(spill.os, "pread", shrinking)
    with pytest.raises(SpillError, match="ended at byte 150"):
        spill.finish(spill_path, tmp_path / "o", base_path)
    monkeypatch.undo()
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_a_spill_written_by_the_c_callback_reads_and_finishes(tmp_path, sample):
    """The real writer: nobody drains a small ring, so the callback spills the whole dump."""
    import mdstream
    from mdstream.simulator import replay

    source = put(tmp_path / "source.dmp", sample)
    ring = mdstream.Ring.create(None, 64 * 1024)
    try:
        callback = mdstream.DumpCallback(ring, spill_path=str(tmp_path / "crash.spill"), spill_after=0.2,
                                         deadline=30.0)
    except TypeError:
        pytest.skip("this build's DumpCallback has no spill_path")
    replay(str(source), callback, drain_here=False, schedule="writer", timeout=60)
    m = spill.read_manifest(tmp_path / "crash.spill")
    assert m.finished and not m.failed and m.trigger == 2 and m.dump_size == len(sample)
    assert m.producer_pid == os.getpid() and m.reason
    assert m.direct_writes >= 1 and m.replayed_bytes + m.direct_bytes >= len(sample) - m.base_bytes
    assert stat.S_IMODE((tmp_path / "crash.spill.mdspill").stat().st_mode) == 0o600
    assert m.resume_pos == 0  # nothing was consumed: the spill alone must hold every byte
    nothing = put(tmp_path / "nothing-consumed", b"")
    result = spill.finish(tmp_path / "crash.spill", tmp_path / "out.dmp", nothing)
    assert (tmp_path / "out.dmp").read_bytes() == sample and result["is_minidump"]


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------


def run_module(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mdstream", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mdstream: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_inspect_and_finish_in_a_subprocess(complete_spill, sample, tmp_path):
    done = run_module("spill", "inspect", str(complete_spill))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "FINISHED | BASE_COMPLETE" in done.stdout and "the spill file is the dump" in done.stdout
    assert "consumer gone (pid 4242 died)" in done.stdout and "parses as a minidump" in done.stdout

    done = run_module("spill", "inspect", str(complete_spill), "--json")
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    report = json.loads(done.stdout)
    assert report.pop("format") == "mdstream-spill-inspect/1" and report.pop("status") == "ok"
    assert report == json.loads(json.dumps(spill.inspect(complete_spill)))

    out = tmp_path / "dump.dmp"
    done = run_module("spill", "finish", str(complete_spill), "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == hashlib.sha256(sample).hexdigest()
    assert out.read_bytes() == sample

    done = run_module("spill", "finish", str(complete_spill), "-o", str(out))
    assert done.returncode == 1 and done.stdout == ""
    assert_one_error_line(done.stderr, str(out), "exists", "--force")
    done = run_module("spill", "finish", str(complete_spill), "-o", str(out), "--force")
    assert done.returncode == 0 and "wrote" in done.stdout and "mode 0600" in done.stdout


def test_cli_finish_overlay_and_its_errors(capsys, tmp_path):
    writes = [(0, b"MDMP" + bytes(60)), (64, b"x" * 64), (8, b"\x07" * 4)]
    spill_path, base_path, expected = make_spill(tmp_path, writes, 2)
    assert main(["spill", "finish", str(spill_path), "-o", str(tmp_path / "o")]) == 1
    assert_one_error_line(capsys.readouterr().err, "--base PARTIAL")
    assert main(["spill", "finish", str(spill_path), "-o", str(tmp_path / "o"), "--base",
                 str(tmp_path / "nope")]) == 1
    assert_one_error_line(capsys.readouterr().err, "nope")
    assert main(["spill", "finish", str(spill_path), "-o", str(tmp_path / "o"), "--base", str(base_path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "4 bytes from the spill" in out and str(base_path) in out
    assert (tmp_path / "o").read_bytes() == expected


@pytest.mark.parametrize("raw, needle", [
    (hand_built(magic=b"NOTSPILL"), "not a spill manifest"),
    (hand_built()[:100], "truncated header"),
    (hand_built(extent_count=5), "extent_count 5 claims more extents"),
    (hand_built(reserved=3), "reserved field"),
])
def test_cli_bad_manifest_is_one_error_line(capsys, tmp_path, raw, needle):
    put(tmp_path / "s.mdspill", raw)
    for argv in (["spill", "inspect", str(tmp_path / "s")],
                 ["spill", "finish", str(tmp_path / "s"), "-o", str(tmp_path / "o")]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert_one_error_line(err, needle, str(tmp_path / "s.mdspill"))


def test_cli_refusals(capsys, tmp_path):
    spill_path, base_path, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def")], 1)
    (tmp_path / "link.spill.mdspill").symlink_to(tmp_path / "crash.spill.mdspill")
    assert main(["spill", "inspect", str(tmp_path / "link.spill")]) == 1
    assert_one_error_line(capsys.readouterr().err, "link.spill.mdspill", "symlink")
    put(tmp_path / "crash.spill.mdspill", hand_built(flags=FINISHED | FAILED, dump_size=6, reason=b"disk full"))
    assert main(["spill", "finish", str(spill_path), "-o", str(tmp_path / "o"), "--base", str(base_path)]) == 1
    assert_one_error_line(capsys.readouterr().err, "FAILED", "disk full")
    put(tmp_path / "crash.spill.mdspill", hand_built(flags=0))
    assert main(["spill", "finish", str(spill_path), "-o", str(tmp_path / "o"), "--base", str(base_path)]) == 1
    assert_one_error_line(capsys.readouterr().err, "not FINISHED")
    assert main(["spill", "inspect", str(tmp_path / "missing")]) == 1
    assert_one_error_line(capsys.readouterr().err, "missing.mdspill")


def test_cli_inspect_exit_status_reports_problems(capsys, tmp_path):
    spill_path, _, _ = make_spill(tmp_path, [(0, b"abc"), (3, b"def")], 1)
    assert main(["spill", "inspect", str(spill_path)]) == 0
    out, err = capsys.readouterr()
    assert "finished: run mdstream spill finish" in out and "--base PARTIAL" in out and err == ""
    os.unlink(spill_path)
    assert main(["spill", "inspect", str(spill_path), "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["problems"] == ["the spill file does not exist"]
    assert_one_error_line(err, "the spill file does not exist")


@pytest.mark.parametrize("argv", [
    ["spill"],
    ["spill", "frobnicate"],
    ["spill", "inspect"],
    ["spill", "finish", "s"],                     # -o missing
    ["spill", "finish", "-o", "x"],               # SPILL missing
    ["spill", "inspect", "s", "--force"],
])
def test_cli_usage_errors(capsys, argv):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err
