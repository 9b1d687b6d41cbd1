"""FileSink's C storage (src/filesink.c): small writes through a shared mapping
of the output, runs of 4 KiB or more through pwritev.  Checked against a
bytearray that applies the same writes in order, on both paths, across the
mapping's segment boundaries; a record is in the file as soon as its batch was
consumed (the spill copies released records from the file); a full file system
is an OSError(ENOSPC), never SIGBUS; the file keeps its 0600 mode and exact size."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mdstream
from mdstream.schedules import tiny_plan
from mdstream.simulator import run_plan

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FileSink's C storage is POSIX-only")

SEGMENT = 4 << 20  # MDS_FILESINK_SEGMENT_SHIFT


def reference(writes: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for offset, data in writes:
        if not data:
            continue
        end = offset + len(data)
        if end > len(out):
            out.extend(bytes(end - len(out)))
        out[offset:end] = data
    return bytes(out)


# Offsets cluster near segment boundaries and near each other, so writes
# straddle segments, patch earlier bytes and continue each other into runs.
offsets = st.one_of(
    st.integers(0, 64 << 10),
    st.integers(SEGMENT - 8192, SEGMENT + 8192),
    st.integers(3 * SEGMENT - 100, 3 * SEGMENT + 100),
    st.integers(0, 40 << 20),
)
payloads = st.one_of(st.binary(min_size=0, max_size=24), st.binary(min_size=1000, max_size=9000))
write_lists = st.lists(st.tuples(offsets, payloads), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=write_lists, mapping=st.booleans())
def test_random_writes_match_a_bytearray(tmp_path, writes, mapping):
    path = tmp_path / f"out-{os.getpid()}-{id(writes)}.dmp"
    sink = mdstream.FileSink(path, fsync=False, _mapping=mapping)
    try:
        for offset, data in writes:
            sink.write(offset, data)
        expected = reference(writes)
        assert sink.size == len(expected)
        assert sink.finish() == str(path)
        assert path.read_bytes() == expected
    finally:
        sink.abort(None)
        if path.exists():
            path.unlink()


@pytest.mark.parametrize("mapping", [True, False])
def test_a_tiny_dump_through_the_ring(tmp_path, mapping):
    plan = tiny_plan(50_000, seed=3)
    sink = mdstream.FileSink(tmp_path / "tiny.dmp", _mapping=mapping)
    ring = mdstream.Ring.create(None, 64 << 10)  # small: many batches, each flushed on its own
    result = run_plan(plan, mdstream.DumpCallback(ring), [sink])
    assert result.ok
    data = (tmp_path / "tiny.dmp").read_bytes()
    assert data == plan.apply().tobytes()
    if mapping:
        assert sink.storage["mapped"] and sink.storage["mapped_bytes"] > 0
        assert sink.storage["direct_writes"] < plan.count // 100  # not one system call per write
    else:
        assert sink.storage["mapped_bytes"] == 0


def test_records_are_in_the_file_when_consume_returns(tmp_path):
    """released => in the file: the spill copies the consumer's output up to what was released."""
    sink = mdstream.FileSink(tmp_path / "o.dmp")
    reader = os.open(sink.temp_path, os.O_RDONLY)
    try:
        for offset, data in [(100, b"abc"), (SEGMENT - 2, b"wxyz"), (50, b"Q" * 5000), (102, b"!")]:
            sink.write(offset, data)
            assert os.pread(reader, len(data), offset) == data
        assert os.pread(reader, 3, 100) == b"QQ!"
    finally:
        os.close(reader)
        sink.abort(None)


def test_size_and_mode_are_exact(tmp_path):
    sink = mdstream.FileSink(tmp_path / "o.dmp")
    sink.write(10, b"x")  # a whole segment is allocated under the mapping
    assert os.stat(sink.temp_path).st_size >= 11
    path = sink.finish()
    st_ = os.stat(path)
    assert st_.st_size == 11
    assert stat.S_IMODE(st_.st_mode) == 0o600


def test_kept_partial_file_has_the_dump_size(tmp_path):
    sink = mdstream.FileSink(tmp_path / "o.dmp", keep_partial=True)
    sink.write(5, b"hello")
    sink.abort(RuntimeError("x"))
    partial = tmp_path / "o.dmp.partial"
    assert partial.read_bytes() == b"\0" * 5 + b"hello"
    assert not (tmp_path / "o.dmp").exists()


def test_symlink_target_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_bytes(b"keep")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link.dmp")
    with pytest.raises(mdstream.errors.OutputExistsError):
        mdstream.FileSink(tmp_path / "link.dmp")
    assert (tmp_path / "elsewhere").read_bytes() == b"keep"


def test_write_rejects_a_negative_offset(tmp_path):
    sink = mdstream.FileSink(tmp_path / "o.dmp")
    with pytest.raises(ValueError):
        sink.write(-1, b"x")
    sink.abort(None)


def test_offset_beyond_a_file_is_corrupt_input(tmp_path):
    sink = mdstream.FileSink(tmp_path / "o.dmp")
    with pytest.raises(mdstream.errors.MdstreamError):
        sink.write((1 << 63) - 2, b"abcd")
    sink.abort(None)


ENOSPC_CHILD = r"""
import errno, os, sys
import mdstream
directory, mapping = sys.argv[1], sys.argv[2] == "1"
sink = mdstream.FileSink(os.path.join(directory, "o.dmp"), _mapping=mapping)
try:
    for i in range(4096):
        sink.write(i * 1024 * 7, b"x" * 12)        # small writes: the mapping
        sink.write(64 << 20 | i << 16, b"y" * 65536)  # large: pwritev
except OSError as exc:
    print("ENOSPC" if exc.errno == errno.ENOSPC else f"errno {exc.errno}", flush=True)
    sink.abort(exc)
    sys.exit(0)
print("no error", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="mounts a small tmpfs (root)")
@pytest.mark.parametrize("mapping", ["1", "0"])
def test_a_full_file_system_is_enospc_not_sigbus(tmp_path, mapping):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = subprocess.run([sys.executable, "-c", ENOSPC_CHILD, str(mnt), mapping], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr  # a SIGBUS would be -7
        assert proc.stdout.strip() == "ENOSPC", proc.stdout + proc.stderr
        assert os.listdir(mnt) == []  # the partial file was removed
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_many_segments_stay_bounded(tmp_path):
    """Writes all over a large file: only a few segments are mapped at once, and the result is exact."""
    rng = np.random.default_rng(5)
    sink = mdstream.FileSink(tmp_path / "o.dmp", fsync=False)
    writes = [(int(o), rng.bytes(int(n))) for o, n in zip(rng.integers(0, 200 << 20, 300), rng.integers(1, 17, 300))]
    for o, d in writes:
        sink.write(o, d)
    path = sink.finish()
    with open(path, "rb") as f:
        expected = {}
        for o, d in writes:
            for i, b in enumerate(d):
                expected[o + i] = b
        for pos, b in list(expected.items())[:2000]:
            f.seek(pos)
            assert f.read(1)[0] == b
    assert os.stat(path).st_size == max(o + len(d) for o, d in writes)
