"""The spill policy: a dump whose consumer dies or stalls is finished in a
private fallback file, complete and byte-identical (docs/reliability.md).

These tests kill and stop real consumer processes.  The producer is the real
callback routine driven by the native-thread simulator, exactly as DbgHelp
drives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mdstream
import mdstream.spill
from mdstream import errors
from mdstream._callback import Simulation
from mdstream.schedules import WritePlan, sized_plan
from mdstream.simulator import run_plan

SANITIZED = os.environ.get("MDSTREAM_SANITIZED") == "1"
# 256 MiB is the size the issue asks for; the sanitized re-run of the suite
# checks the same paths on a smaller dump to stay quick.
DUMP_BYTES = (32 << 20) if SANITIZED else (256 << 20)
HANG_GUARD = 120.0  # seconds: only a guard against hangs, never a speed claim
SPILL_HRESULT = 0x8007001D


def patched_plan(total: int, *, seed: int = 1) -> WritePlan:
    """1 KiB writes at increasing offsets (a full dump's memory) with a 16-byte
    patch 1 MiB back after every 997th write, as DbgHelp patches directories."""
    base = sized_plan(1024, total, seed=seed)
    rng = np.random.default_rng(seed + 1)
    where = np.arange(0, base.count, 997)
    patch_offsets = np.maximum(base.offsets[where].astype(np.int64) - (1 << 20), 0).astype(np.uint64)
    offsets = np.insert(base.offsets, where + 1, patch_offsets)
    lengths = np.insert(base.lengths, where + 1, np.uint64(16))
    sources = np.insert(base.sources, where + 1,
                        rng.integers(0, len(base.buffer) - 16, len(where)).astype(np.uint64))
    lengths = lengths.astype(np.uint32)
    size = int((offsets + lengths.astype(np.uint64)).max())
    return WritePlan(base.buffer, offsets, lengths, sources, size, "patched 1 KiB writes")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def start_simulation(callback: mdstream.DumpCallback, plan: WritePlan) -> Simulation:
    sim = Simulation(callback.routine_address, callback.param_address, plan.buffer, plan.offsets, plan.lengths,
                     plan.sources, keepalive=callback)
    callback.reset()
    sim.start()
    return sim


def finished_digest(spill: Path, tmp_path: Path) -> str:
    """sha256 of the dump `mdstream spill finish` makes of a complete spill (with its base copy)."""
    out = tmp_path / f"finished-{spill.name}"
    mdstream.spill.finish(spill, out)
    try:
        return sha256_of(out)
    finally:
        out.unlink()


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def wait_for_share(callback: mdstream.DumpCallback, sim: Simulation, plan: WritePlan, share: int) -> None:
    """Until 1/share of the plan's bytes went through the callback; the dump must still be running."""
    wait_until(lambda: callback.bytes_written >= plan.total_bytes // share or sim.done, f"1/{share} of the dump")
    assert not sim.done, "the dump ended before the consumer could be stopped or killed"


def consumer_process(ring_path: Path, output: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mdstream.cli", "drain", str(ring_path), "-o", str(output), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reap(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    out, err = proc.communicate(timeout=HANG_GUARD)
    return out, err


@pytest.fixture(scope="module")
def plan_and_digest():
    plan = patched_plan(DUMP_BYTES)
    return plan, hashlib.sha256(plan.apply()).hexdigest()


def test_consumer_killed_halfway_spill_is_the_whole_dump(tmp_path: Path, plan_and_digest) -> None:
    plan, expected = plan_and_digest
    ring_path = tmp_path / "ring"
    output = tmp_path / "out.dmp"
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(str(ring_path), 4 << 20)
    consumer = consumer_process(ring_path, output)
    try:
        callback = mdstream.DumpCallback(ring, deadline=30, spill_path=spill, spill_after=5.0)
        sim = start_simulation(callback, plan)
        wait_for_share(callback, sim, plan, 2)
        consumer.kill()
        sim.wait(HANG_GUARD)
        assert sim.done, "the producer hung after its consumer died"
    finally:
        reap(consumer)
    assert sim.succeeded, callback.failure
    info = callback.spill
    assert info is not None and info["trigger"] == "consumer gone"
    assert info["finished"] and info["complete"] and not info["failed"], info
    assert 0 < info["base_bytes"] == info["base_length"] < plan.total_bytes  # the consumer's half, from its file
    assert info["direct_writes"] > 0
    assert spill.stat().st_size == plan.apply().size
    for path in (spill, Path(str(spill) + ".mdspill"), Path(str(spill) + ".mdspill-base")):
        assert path.stat().st_mode & 0o777 == 0o600
    # Nothing under the final name; the dead consumer's partial file is not
    # the producer's to delete (it only copied it): spill finish cleans it up.
    assert not output.exists()
    partials = [p for p in tmp_path.iterdir() if p.name.endswith(".mdstream-partial")]
    assert len(partials) == 1
    assert finished_digest(spill, tmp_path) == expected
    assert not partials[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring", "spill.dmp", "spill.dmp.mdspill",
                                                          "spill.dmp.mdspill-base"]
    assert ring.abort_info == (errors.SPILL_ABORT_CODE, f"dump spilled to {spill}")
    assert ring.outcome == "spilled"
    ring.close()


def test_stalled_consumer_spills_after_spill_after_and_learns_why(tmp_path: Path, plan_and_digest) -> None:
    plan, expected = plan_and_digest
    ring_path = tmp_path / "ring"
    output = tmp_path / "out.dmp"
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(str(ring_path), 1 << 20)
    consumer = consumer_process(ring_path, output)
    try:
        callback = mdstream.DumpCallback(ring, deadline=60, spill_path=spill, spill_after=0.5)
        sim = start_simulation(callback, plan)
        wait_for_share(callback, sim, plan, 4)
        consumer.send_signal(signal.SIGSTOP)
        sim.wait(HANG_GUARD)
        assert sim.done, "the producer waited on a stopped consumer past spill_after"
        consumer.send_signal(signal.SIGCONT)
        _, err = consumer.communicate(timeout=HANG_GUARD)
    finally:
        reap(consumer)
    assert sim.succeeded, callback.failure
    info = callback.spill
    assert info["trigger"] == "stalled" and info["complete"], info
    # The consumer woke up to a clear error naming the spill file and cleaned up.
    assert consumer.returncode == 1
    assert f"dump spilled to {spill}" in err
    assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    assert finished_digest(spill, tmp_path) == expected
    ring.close()


def test_consumer_that_never_came_spills_everything(tmp_path: Path) -> None:
    plan = patched_plan(8 << 20)
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(None, 64 << 10)
    callback = mdstream.DumpCallback(ring, deadline=30, spill_path=spill, spill_after=0.2)
    sim = start_simulation(callback, plan)
    sim.wait(HANG_GUARD)
    assert sim.succeeded, callback.failure
    info = callback.spill
    assert info["trigger"] == "stalled" and info["complete"] and info["base_bytes"] == 0
    assert info["replayed_bytes"] > 0  # what filled the ring was not lost
    assert spill.read_bytes() == plan.apply().tobytes()


class SlowSink:
    """A consumer-side sink that stalls once (a wedged upload, a full disk)."""

    def __init__(self, stall_after: int, stall: threading.Event) -> None:
        self.seen = 0
        self.stall_after = stall_after
        self.stall = stall

    def consume(self, batch) -> None:
        self.seen += batch.summary()[1]
        if self.seen >= self.stall_after and not self.stall.is_set():
            self.stall.set()
            time.sleep(1.5)

    def finish(self):
        return None

    def abort(self, error) -> None:
        pass


def test_in_process_consumer_gets_dump_spilled_error(tmp_path: Path) -> None:
    plan = patched_plan(24 << 20)
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(None, 1 << 20)
    callback = mdstream.DumpCallback(ring, deadline=30, spill_path=spill, spill_after=0.3)
    stalled = threading.Event()
    sinks = [mdstream.FileSink(tmp_path / "out.dmp"), SlowSink(4 << 20, stalled)]
    sim = start_simulation(callback, plan)
    with pytest.raises(errors.DumpSpilledError) as caught:
        mdstream.drain(ring, sinks)
    sim.wait(HANG_GUARD)
    assert stalled.is_set()
    assert caught.value.spill_path == str(spill)
    assert isinstance(caught.value, errors.RingAbortedError)
    assert sim.succeeded, callback.failure
    info = callback.spill
    assert info["complete"] and info["base_bytes"] > 0, info  # drain registered the FileSink's file
    assert finished_digest(spill, tmp_path) == hashlib.sha256(plan.apply()).hexdigest()
    assert not (tmp_path / "out.dmp").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_spill_path_is_checked_up_front(tmp_path: Path) -> None:
    ring = mdstream.Ring.create(None, 64 << 10)
    existing = tmp_path / "taken.dmp"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        mdstream.DumpCallback(ring, spill_path=existing)
    (tmp_path / "m.dmp.mdspill").write_bytes(b"")
    with pytest.raises(FileExistsError):
        mdstream.DumpCallback(ring, spill_path=tmp_path / "m.dmp")
    with pytest.raises(FileNotFoundError):
        mdstream.DumpCallback(ring, spill_path=tmp_path / "missing" / "s.dmp")
    with pytest.raises(ValueError):
        mdstream.DumpCallback(ring, spill_path=tmp_path / ("x" * 1100))
    with pytest.raises(ValueError):
        mdstream.DumpCallback(ring, spill_after=1.0)
    with pytest.raises(ValueError):
        mdstream.DumpCallback(ring, spill_path=tmp_path / "s.dmp", spill_after=0)
    assert existing.read_bytes() == b"keep me"
    callback = mdstream.DumpCallback(ring, spill_path=tmp_path / "s.dmp")
    assert callback.spill_path == str(tmp_path / "s.dmp") and callback.spill is None


def test_symlink_planted_at_the_spill_path_is_never_followed(tmp_path: Path) -> None:
    plan = patched_plan(2 << 20)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(None, 64 << 10)
    callback = mdstream.DumpCallback(ring, deadline=30, spill_path=spill, spill_after=0.2)
    spill.symlink_to(victim)  # planted after the up-front check, before the spill
    sim = start_simulation(callback, plan)
    sim.wait(HANG_GUARD)
    assert not sim.succeeded
    hresult, reason = callback.failure
    assert hresult == SPILL_HRESULT
    assert "already exists" in reason and str(spill) in reason
    assert victim.read_bytes() == b"precious"
    assert not Path(str(spill) + ".mdspill").exists()


def test_no_spill_when_the_consumer_keeps_up(tmp_path: Path) -> None:
    plan = patched_plan(8 << 20)
    ring = mdstream.Ring.create(None, 1 << 20)
    callback = mdstream.DumpCallback(ring, spill_path=tmp_path / "spill.dmp", spill_after=30)
    sink = mdstream.MemorySink()
    run_plan(plan, callback, [sink])
    assert callback.spill is None
    assert not (tmp_path / "spill.dmp").exists()
    assert sink.tobytes() == plan.apply().tobytes()


def test_reusing_a_callback_after_a_spill_needs_a_new_path(tmp_path: Path) -> None:
    plan = patched_plan(1 << 20)
    ring = mdstream.Ring.create(None, 64 << 10)
    first = tmp_path / "first.dmp"
    callback = mdstream.DumpCallback(ring, deadline=30, spill_path=first, spill_after=0.1)
    sim = start_simulation(callback, plan)
    sim.wait(HANG_GUARD)
    assert sim.succeeded and callback.spill["complete"]
    ring.close()
    ring2 = mdstream.Ring.create(None, 64 << 10)
    with pytest.raises(FileExistsError):
        callback.reset(spill_path=first)
    second = tmp_path / "second.dmp"
    callback2 = mdstream.DumpCallback(ring2, deadline=30, spill_path=second, spill_after=0.1)
    sim = start_simulation(callback2, plan)
    sim.wait(HANG_GUARD)
    assert sim.succeeded and callback2.spill["complete"]
    assert first.read_bytes() == second.read_bytes() == plan.apply().tobytes()


CUSTOM_SINK_CONSUMER = r"""
import os, sys
import mdstream
import mdstream.spill
ring = mdstream.Ring.attach(sys.argv[1])
fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

class PwriteSink:
    # A sink the spill cannot know about (an upload, say): it registers nothing.
    def consume(self, batch):
        buf = batch.buffer
        for off, n, pos in zip(batch.offsets.tolist(), batch.lengths.tolist(), batch.positions.tolist()):
            os.pwrite(fd, buf[pos:pos + n], off)
    def finish(self):
        return None
    def abort(self, error):
        pass

mdstream.drain(ring, [PwriteSink()])
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdstream.cli", *args], capture_output=True, text=True,
                          timeout=HANG_GUARD)


def test_spill_without_the_consumers_file_is_finished_over_its_partial_output(tmp_path: Path) -> None:
    plan = patched_plan(64 << 20)
    expected = hashlib.sha256(plan.apply()).hexdigest()
    ring_path = tmp_path / "ring"
    partial = tmp_path / "partial.bin"
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(str(ring_path), 1 << 20)
    consumer = subprocess.Popen([sys.executable, "-c", CUSTOM_SINK_CONSUMER, str(ring_path), str(partial)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        callback = mdstream.DumpCallback(ring, deadline=30, spill_path=spill, spill_after=5.0)
        sim = start_simulation(callback, plan)
        wait_for_share(callback, sim, plan, 2)
        consumer.kill()
        sim.wait(HANG_GUARD)
    finally:
        reap(consumer)
    # A spill without the consumer's half is not the dump: the dumped process
    # hears failure, never S_OK (the spill is still finishable by hand).
    assert not sim.succeeded
    hresult, reason = callback.failure
    assert hresult == 0x8007001E and "incomplete" in reason, reason
    info = callback.spill
    assert info["finished"] and not info["complete"] and info["base_bytes"] == 0, info
    assert sha256_of(spill) != expected  # the consumer's half is not in it

    report = json.loads(run_cli("spill", "inspect", str(spill), "--json").stdout)
    assert report["needs_base"] and report["finishable"] and report["trigger"] == 1
    assert report["dump_size"] == plan.apply().size
    assert report["extent_count"] == info["extents"]

    refused = run_cli("spill", "finish", str(spill), "-o", str(tmp_path / "x.dmp"))
    assert refused.returncode == 1 and "--base" in refused.stderr
    done = run_cli("spill", "finish", str(spill), "-o", str(tmp_path / "whole.dmp"), "--base", str(partial))
    assert done.returncode == 0, done.stderr
    assert sha256_of(tmp_path / "whole.dmp") == expected
    assert (tmp_path / "whole.dmp").stat().st_mode & 0o777 == 0o600
    ring.close()


def test_a_complete_spill_inspects_and_finishes_as_the_dump_itself(tmp_path: Path) -> None:
    plan = patched_plan(4 << 20)
    spill = tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(None, 64 << 10)
    callback = mdstream.DumpCallback(ring, deadline=30, spill_path=spill, spill_after=0.1)
    sim = start_simulation(callback, plan)
    sim.wait(HANG_GUARD)
    assert sim.succeeded and callback.spill["complete"]
    report = json.loads(run_cli("spill", "inspect", str(spill), "--json").stdout)
    assert report["complete"] and not report["needs_base"] and not report["problems"], report
    assert report["replayed_bytes"] == callback.spill["replayed_bytes"]
    done = run_cli("spill", "finish", str(spill), "-o", str(tmp_path / "out.dmp"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.dmp").read_bytes() == plan.apply().tobytes()
