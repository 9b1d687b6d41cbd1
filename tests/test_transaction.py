"""A dump is a transaction (issue 12, docs/reliability.md, docs/ring-format.md).

The producer is the real callback routine on a native thread (the simulator
drives it exactly as DbgHelp does); the consumer is the real ``mdstream drain``
in another process.  Every test tries to break one promise:

* success means committed: whatever happens to the consumer, a dump that
  reports success exists under its final name with the right bytes, or in a
  spill that ``mdstream spill finish`` turns into the right bytes;
* a consumer that fails never destroys what the spill needs;
* dumps never merge, and a forged end never publishes a truncated dump;
* close, a second consumer, fork, a dead creator, another PID namespace and
  a trickling consumer neither crash nor hang nor lose the dump.

The kill loops run a few rounds in the default tier and ``KILL_ROUNDS`` (at
40 by default: 20 per kill point) in the extended tier; each prints its counts, which
docs/reliability.md reports.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mdstream
import mdstream.spill
from mdstream import errors
from mdstream._callback import Simulation
from mdstream.sample import build_sample_minidump
from mdstream.schedules import WritePlan, sized_plan

HANG_GUARD = 120.0  # seconds: only a guard against hangs, never a speed claim
DUMP_BYTES = 24 << 20
RING_BYTES = 1 << 20
E_FAIL_CODES = {0x8007001E, 0x80004004, 0x800700AA, 0x8007006D, 0x80070070, 0x800705B4}
KILL_ROUNDS = int(os.environ.get("MDSTREAM_KILL_ROUNDS", "40"))  # 20 per kill point
STATE_OFFSET, FLAGS_OFFSET = 384, 392
STATE_FINISHED = 1


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def finished_digest(spill: Path, tmp_path: Path) -> str:
    out = tmp_path / f"finished-{spill.name}-{random.getrandbits(32):08x}"
    mdstream.spill.finish(spill, out)
    try:
        return sha256_of(out)
    finally:
        out.unlink()


@pytest.fixture(scope="module")
def plan_and_digest():
    plan = sized_plan(1024, DUMP_BYTES, seed=12)
    return plan, hashlib.sha256(plan.apply()).hexdigest()


def start_simulation(callback: mdstream.DumpCallback, plan: WritePlan, **kw) -> Simulation:
    sim = Simulation(callback.routine_address, callback.param_address, plan.buffer, plan.offsets, plan.lengths,
                     plan.sources, keepalive=callback, **kw)
    sim.start()
    return sim


def drain_process(ring: str | Path, output: str | Path, *extra: str, prefix: list[str] | None = None,
                  **kw) -> subprocess.Popen:
    argv = [*(prefix or []), sys.executable, "-m", "mdstream", "drain", str(ring), "-o", str(output), "-q",
            "--timeout", "60", *extra]
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(argv, **kw)


def finish_consumer(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """Let a consumer end on its own (a failed one waits until the producer released its output)."""
    try:
        return proc.communicate(timeout=HANG_GUARD)
    finally:
        reap(proc)


def reap(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        return proc.communicate(timeout=HANG_GUARD)
    except ValueError:  # already communicated
        proc.wait(HANG_GUARD)
        return b"", b""


def wait_until(predicate, what: str, guard: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + guard
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


def wait_for_consumer(ring: mdstream.Ring, proc: subprocess.Popen) -> None:
    wait_until(lambda: ring.consumer_pid != 0 or proc.poll() is not None, "the consumer to attach")
    assert proc.poll() is None, proc.communicate()


def check_invariant(sim: Simulation, callback: mdstream.DumpCallback, ring: mdstream.Ring, output: Path,
                    spill: Path | None, expected: str, tmp_path: Path) -> str:
    """success => the exact dump under its final name, or a spill that finishes into it.  Returns the outcome."""
    assert sim.done, "the dumped process hung"
    if not sim.succeeded:
        code, reason = callback.failure
        assert code & 0x80000000, (hex(code), reason)  # FALSE + a failure HRESULT, never a silent S_OK
        assert ring.outcome in ("failed", None), ring.outcome
        if spill is not None:
            # With a spill the producer may only fail if the spill itself could not be completed.
            info = callback.spill
            assert info is not None and (info["failed"] or not info["complete"]), (hex(code), reason, info)
        return "failed"
    outcome = ring.outcome
    if outcome == "committed":
        assert output.exists(), "success was reported, but the output is not under its final name"
        assert sha256_of(output) == expected
        assert stat.S_IMODE(output.stat().st_mode) == 0o600
        return "committed"
    assert outcome == "spilled", outcome
    assert spill is not None
    info = callback.spill
    assert info["finished"] and info["complete"] and not info["failed"], info
    assert finished_digest(spill, tmp_path) == expected
    return "spilled"


# --------------------------------------------------------------------------
# 1. success only after the consumer committed: kill it at random points
# --------------------------------------------------------------------------


def kill_round(tmp_path: Path, plan: WritePlan, expected: str, *, sig: int, with_spill: bool,
               rng: random.Random, round_no: int, phase: str) -> tuple[str, str]:
    work = tmp_path / f"r{round_no}"
    work.mkdir()
    ring_path, output = work / "ring", work / "out.dmp"
    spill = work / "spill.dmp" if with_spill else None
    ring = mdstream.Ring.create(str(ring_path), RING_BYTES)
    consumer = drain_process(ring_path, output)
    try:
        wait_for_consumer(ring, consumer)
        # A stopped consumer is alive: only the deadline (or the spill's stall budget) ends the wait.
        deadline = 2.0 if sig == signal.SIGSTOP else 20
        callback = mdstream.DumpCallback(ring, deadline=deadline, spill_path=spill,
                                         spill_after=(1.0 if sig == signal.SIGSTOP else 2.0) if spill else None)
        sim = start_simulation(callback, plan)
        if phase == "streaming":
            share = rng.uniform(0.05, 0.95)
            wait_until(lambda: callback.bytes_written >= plan.total_bytes * share or sim.done, "the kill point")
        else:
            wait_until(lambda: callback.bytes_written >= plan.total_bytes or sim.done, "the last write")
            time.sleep(rng.uniform(0, 0.05))
        phase += "-after-exit" if consumer.poll() is not None else ""
        # send_signal skips a consumer already reaped (the after-exit rounds: poll() above reaped it),
        # where a bare os.kill would raise ProcessLookupError or hit a recycled pid.
        consumer.send_signal(sig)
        sim.wait(HANG_GUARD)
        if sig == signal.SIGSTOP:
            consumer.send_signal(signal.SIGCONT)
        _, err = finish_consumer(consumer)
        outcome = check_invariant(sim, callback, ring, output, spill, expected, work)
        if sig == signal.SIGTERM and consumer.returncode not in (0,):
            # drain handles SIGTERM like Ctrl-C: one line, exit 143, no traceback.
            assert consumer.returncode in (143, -signal.SIGTERM), (consumer.returncode, err)
            assert b"Traceback" not in err, err
        ring.close(timeout=5)
    finally:
        reap(consumer)
    shutil.rmtree(work, ignore_errors=True)
    return phase.split("-")[0], outcome


def run_kill_loop(tmp_path, plan_and_digest, sig, with_spill, rounds):
    plan, expected = plan_and_digest
    rng = random.Random(f"{sig}-{with_spill}-{os.getpid()}")
    counts: collections.Counter = collections.Counter()
    # Half the rounds kill while the dump streams, half once the last write is in (the consumer
    # is verifying, fsyncing or renaming: the window where "success" used to come too early).
    phases = ["streaming", "finishing"]
    first = rng.randrange(2)
    for i in range(rounds):
        phase, outcome = kill_round(tmp_path, plan, expected, sig=sig, with_spill=with_spill, rng=rng, round_no=i,
                                    phase=phases[(first + i) % 2])
        counts[(phase, outcome)] += 1
    name = signal.Signals(sig).name
    print(f"\nkill loop {name} spill={'yes' if with_spill else 'no'}: {rounds} rounds, "
          + ", ".join(f"{p}/{o}={n}" for (p, o), n in sorted(counts.items())))
    # No dump was lost while claimed safe (check_invariant), and the loop really hit both phases.
    return counts


@pytest.mark.parametrize("with_spill", [True, False], ids=["spill", "no-spill"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP], ids=["SIGKILL", "SIGTERM", "SIGSTOP"])
def test_success_means_committed_consumer_killed(tmp_path, plan_and_digest, sig, with_spill):
    counts = run_kill_loop(tmp_path, plan_and_digest, sig, with_spill, rounds=2)
    assert sum(counts.values()) == 2


@pytest.mark.extended
@pytest.mark.parametrize("with_spill", [True, False], ids=["spill", "no-spill"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP], ids=["SIGKILL", "SIGTERM", "SIGSTOP"])
def test_success_means_committed_kill_loop(tmp_path, plan_and_digest, sig, with_spill):
    counts = run_kill_loop(tmp_path, plan_and_digest, sig, with_spill, rounds=KILL_ROUNDS)
    phases = {p for p, _ in counts}
    assert phases == {"streaming", "finishing"}, counts
    # A stopped consumer may have renamed its output just before it stopped: the spill cannot prove
    # that copy is this dump's, so the producer may answer failure (the dump is under its final name).
    if with_spill and sig != signal.SIGSTOP:
        assert all(o != "failed" for _, o in counts), counts


# --------------------------------------------------------------------------
# 1 (other side). the producer killed or stopped at random points
# --------------------------------------------------------------------------


PRODUCER = """
import json, sys, time
import mdstream
from mdstream._callback import Simulation
from mdstream.schedules import sized_plan
ring = mdstream.Ring.attach(sys.argv[1])
plan = sized_plan(1024, int(sys.argv[2]), seed=12)
callback = mdstream.DumpCallback(ring, deadline=float(sys.argv[3]))
sim = Simulation(callback.routine_address, callback.param_address, plan.buffer, plan.offsets, plan.lengths,
                 plan.sources, keepalive=callback)
print("attached", flush=True)
sim.start()
sim.wait(120)
print(json.dumps({"succeeded": bool(sim.succeeded), "failure": callback.failure and hex(callback.failure[0])}),
      flush=True)
"""


def producer_kill_round(tmp_path: Path, expected: str, *, sig: int, rng: random.Random,
                        round_no: int, phase: str) -> str:
    """Kill (or stop) the dumped process's side; the consumer must publish the exact dump or nothing."""
    work = tmp_path / f"p{round_no}"
    work.mkdir()
    ring_path, output = work / "ring", work / "out.dmp"
    ring = mdstream.Ring.create(str(ring_path), RING_BYTES)
    # A stopped producer is alive: the consumer's idle timeout is what ends the wait.
    consumer = drain_process(ring_path, output, "--timeout", "2")
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(ring_path), str(DUMP_BYTES), "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_consumer(ring, consumer)
        assert producer.stdout.readline().strip() == b"attached", producer.communicate()
        if phase == "streaming":
            share = rng.uniform(0.02, 0.9)
            wait_until(lambda: ring.write_position >= DUMP_BYTES * share or producer.poll() is not None
                       or consumer.poll() is not None, "the kill point")
        else:  # around the END record: the consumer verifies, fsyncs and renames
            wait_until(lambda: ring.write_position >= DUMP_BYTES or producer.poll() is not None
                       or consumer.poll() is not None, "the last write")
            time.sleep(rng.uniform(0, 0.02))
        # send_signal skips a producer the wait above already reaped.
        producer.send_signal(sig)
        out, err = finish_consumer(consumer)
        assert b"Traceback" not in err, err
        if sig == signal.SIGSTOP:
            producer.send_signal(signal.SIGCONT)
        p_out, p_err = producer.communicate(timeout=HANG_GUARD)
        leftovers = sorted(p.name for p in work.iterdir() if p.name not in ("ring", "out.dmp"))
        assert not leftovers, f"the consumer left {leftovers}"
        if output.exists():
            # Published means the whole dump, verified against its END record: never a prefix.
            assert consumer.returncode == 0, err
            assert sha256_of(output) == expected, "a partial or wrong dump was published"
            assert stat.S_IMODE(output.stat().st_mode) == 0o600
            outcome = "published"
        else:
            assert consumer.returncode != 0, (out, err)
            outcome = "nothing"
        if p_out.strip().startswith(b"{"):
            told = json.loads(p_out.strip().splitlines()[-1])
            # A producer that survived (stopped, then continued) heard success only if the dump is there.
            if told["succeeded"]:
                assert outcome == "published", (told, err)
        ring.close(timeout=5)
    finally:
        reap(consumer)
        reap(producer)
    shutil.rmtree(work, ignore_errors=True)
    return outcome


def run_producer_kill_loop(tmp_path, plan_and_digest, sig, rounds):
    _, expected = plan_and_digest
    rng = random.Random(f"producer-{sig}-{os.getpid()}")
    counts: collections.Counter = collections.Counter()
    first = rng.randrange(2)
    for i in range(rounds):
        phase = ["streaming", "finishing"][(first + i) % 2]
        counts[(phase, producer_kill_round(tmp_path, expected, sig=sig, rng=rng, round_no=i, phase=phase))] += 1
    print(f"\nproducer kill loop {signal.Signals(sig).name}: {rounds} rounds, "
          + ", ".join(f"{p}/{o}={n}" for (p, o), n in sorted(counts.items())))
    return counts


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP], ids=["SIGKILL", "SIGTERM", "SIGSTOP"])
def test_producer_killed_publishes_the_dump_or_nothing(tmp_path, plan_and_digest, sig):
    counts = run_producer_kill_loop(tmp_path, plan_and_digest, sig, rounds=2)
    assert sum(counts.values()) == 2


@pytest.mark.extended
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP], ids=["SIGKILL", "SIGTERM", "SIGSTOP"])
def test_producer_kill_loop(tmp_path, plan_and_digest, sig):
    counts = run_producer_kill_loop(tmp_path, plan_and_digest, sig, rounds=KILL_ROUNDS)
    assert {p for p, _ in counts} == {"streaming", "finishing"}, counts


def test_rename_failure_is_not_success(tmp_path, plan_and_digest):
    """A directory appears at the final name: the consumer cannot publish, so it must not commit."""
    plan, expected = plan_and_digest
    for with_spill in (True, False):
        work = tmp_path / ("spill" if with_spill else "nospill")
        work.mkdir()
        ring = mdstream.Ring.create(str(work / "ring"), RING_BYTES)
        output = work / "out.dmp"
        spill = work / "spill.dmp" if with_spill else None
        consumer = drain_process(work / "ring", output)
        try:
            wait_for_consumer(ring, consumer)
            callback = mdstream.DumpCallback(ring, deadline=20, spill_path=spill)
            sim = start_simulation(callback, plan)
            wait_until(lambda: callback.bytes_written >= plan.total_bytes // 2 or sim.done, "half the dump")
            output.mkdir()
            sim.wait(HANG_GUARD)
            _, err = finish_consumer(consumer)
        finally:
            reap(consumer)
        assert consumer.returncode == 1 and b"Traceback" not in err, err
        assert str(output).encode() in err, err  # the error names the final path, not the temp file
        outcome = check_invariant(sim, callback, ring, output, spill, expected, work)
        assert outcome == ("spilled" if with_spill else "failed")
        assert output.is_dir()
        ring.close(timeout=5)


def _small_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_full_disk_consumer_keeps_what_the_spill_needs(tmp_path, plan_and_digest):
    """The consumer's disk fills mid-dump: it fails, but keeps its partial file until the spill took it."""
    plan, expected = plan_and_digest
    small = tmp_path / "small"
    _small_tmpfs(small, "8m")
    try:
        for round_no in range(3):
            work = tmp_path / f"w{round_no}"
            work.mkdir()
            ring = mdstream.Ring.create(str(work / "ring"), RING_BYTES)
            output, spill = small / f"out{round_no}.dmp", work / "spill.dmp"
            consumer = drain_process(work / "ring", output)
            try:
                wait_for_consumer(ring, consumer)
                callback = mdstream.DumpCallback(ring, deadline=20, spill_path=spill)
                sim = start_simulation(callback, plan)
                sim.wait(HANG_GUARD)
                _, err = finish_consumer(consumer)
            finally:
                reap(consumer)
            assert consumer.returncode == 1 and b"Traceback" not in err, err
            assert b"space" in err.lower(), err
            assert check_invariant(sim, callback, ring, output, spill, expected, work) == "spilled"
            info = callback.spill
            assert info["base_bytes"] > 0, info  # the consumer's stored prefix was used, not lost
            assert not output.exists()
            ring.close(timeout=5)
            for leftover in small.iterdir():  # nothing left behind once the producer released the output
                leftover.unlink()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# --------------------------------------------------------------------------
# 3. one dump per ring; a forged end publishes nothing
# --------------------------------------------------------------------------


def test_a_failed_dump_never_merges_with_the_next(tmp_path, plan_and_digest):
    plan, _ = plan_and_digest
    small = sized_plan(1024, 256 << 10, seed=3)
    ring = mdstream.Ring.create(str(tmp_path / "ring"), 64 << 10)
    callback = mdstream.DumpCallback(ring, deadline=0.2)
    sim = start_simulation(callback, small)
    assert sim.wait(HANG_GUARD) and not sim.succeeded  # nobody drains: it fails at its deadline
    assert ring.state == "aborted" and ring.outcome == "failed"
    callback.reset()
    sim = start_simulation(callback, small)
    assert sim.wait(HANG_GUARD) and not sim.succeeded
    assert callback.failure[0] == 0x800700AA, callback.failure  # the ring is used: a new ring per dump
    consumer = drain_process(tmp_path / "ring", tmp_path / "out.dmp")
    _, err = consumer.communicate(timeout=HANG_GUARD)
    assert consumer.returncode == 1 and b"Traceback" not in err, err
    assert not (tmp_path / "out.dmp").exists()
    assert [p.name for p in tmp_path.iterdir() if "mdstream-partial" in p.name] == []
    ring.close(timeout=5)
    # The same callback on a new ring works.
    ring2 = mdstream.Ring.create(str(tmp_path / "ring2"), 64 << 10)
    callback.reset(ring=ring2)
    result = mdstream.simulator.run_plan(small, callback, sinks=[mdstream.MemorySink()]) \
        if hasattr(mdstream.simulator, "run_plan") else None
    if result is not None:
        assert callback.finished and not callback.failed


def _poke(path: Path, offset: int, fmt: str, *values: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            struct.pack_into(fmt, m, offset, *values)
    finally:
        os.close(fd)


def test_forged_finished_state_publishes_nothing(tmp_path):
    """A peer sets state=FINISHED mid-dump: the consumer sees no END record and publishes nothing."""
    ring_path = tmp_path / "ring"
    ring = mdstream.Ring.create(str(ring_path), 1 << 20)
    consumer = drain_process(ring_path, tmp_path / "out.dmp")
    try:
        wait_for_consumer(ring, consumer)
        for i in range(64):
            ring.write(i * 1024, bytes([i]) * 1024)
        ring.flush()
        _poke(ring_path, STATE_OFFSET, "<I", STATE_FINISHED)
        out, err = consumer.communicate(timeout=HANG_GUARD)
    finally:
        reap(consumer)
    assert consumer.returncode == 1 and b"Traceback" not in err, err
    assert not (tmp_path / "out.dmp").exists()
    with pytest.raises(errors.MdstreamError):
        ring.finish(timeout=1)
    ring.close(timeout=5)


# --------------------------------------------------------------------------
# 4. close while another thread is inside the ring
# --------------------------------------------------------------------------


def _take_consumer_role(ring: mdstream.Ring) -> None:
    try:
        ring.read(timeout=0.01)  # claims the consumer role; nothing to read yet
    except errors.RingTimeoutError:
        pass


def _in_thread(fn) -> tuple[threading.Thread, list]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, outcome


def test_close_while_a_reader_is_blocked_wakes_it(ring_name):
    ring = mdstream.Ring.create(ring_name, 64 << 10)
    reader = mdstream.Ring.attach(ring_name)
    t, outcome = _in_thread(lambda: reader.read(timeout=None))
    time.sleep(0.1)
    assert t.is_alive()
    reader.close(timeout=5)  # wakes the reader, waits for it to leave, then unmaps: never a crash
    t.join(HANG_GUARD)
    assert not t.is_alive() and isinstance(outcome[0], errors.RingClosedError), outcome
    assert reader.closed
    ring.close(timeout=5)


def test_close_while_a_writer_waits_for_space(ring_name):
    ring = mdstream.Ring.create(ring_name, 4096)
    consumer = mdstream.Ring.attach(ring_name)
    _take_consumer_role(consumer)

    def write() -> str:
        for i in range(64):
            ring.write(i * 1024, b"x" * 1024, timeout=None)
        return "wrote"

    t, outcome = _in_thread(write)
    wait_until(lambda: ring.write_position - ring.read_position > 2048, "a full ring")
    time.sleep(0.05)
    ring.close(timeout=5)
    t.join(HANG_GUARD)
    assert isinstance(outcome[0], errors.RingClosedError), outcome
    consumer.close(timeout=5)


def test_close_while_the_native_callback_waits(tmp_path):
    ring = mdstream.Ring.create(str(tmp_path / "ring"), 64 << 10)
    callback = mdstream.DumpCallback(ring, deadline=30.0)
    sim = start_simulation(callback, sized_plan(1024, 4 << 20, seed=1))
    wait_until(lambda: callback.bytes_written > 0, "the first write")
    time.sleep(0.05)  # the callback now sleeps for space nobody frees
    ring.close(timeout=5)
    assert sim.wait(HANG_GUARD) and not sim.succeeded  # woken: the dump fails at once, not at its deadline
    assert callback.failure[0] & 0x80000000, callback.failure


def test_two_threads_cannot_produce_through_one_handle(ring_name):
    ring = mdstream.Ring.create(ring_name, 4096)
    reader = mdstream.Ring.attach(ring_name)
    _take_consumer_role(reader)

    def blocked_writer() -> None:
        for i in range(64):
            ring.write(i * 1024, b"y" * 1024, timeout=None)

    t, outcome = _in_thread(blocked_writer)
    wait_until(lambda: ring.write_position - ring.read_position > 2048, "a full ring")
    time.sleep(0.05)
    with pytest.raises(errors.RingBusyError):
        ring.write(1 << 30, b"z", timeout=0.1)
    reader.abort(0x80004004, "done")
    t.join(HANG_GUARD)
    assert isinstance(outcome[0], errors.RingAbortedError), outcome
    ring.close(timeout=5)
    reader.close(timeout=5)


# --------------------------------------------------------------------------
# 5. a second consumer is refused and changes nothing
# --------------------------------------------------------------------------


def test_second_drain_is_refused_and_the_dump_goes_on(tmp_path, plan_and_digest):
    plan, expected = plan_and_digest
    ring = mdstream.Ring.create(str(tmp_path / "ring"), RING_BYTES)
    first = drain_process(tmp_path / "ring", tmp_path / "one.dmp")
    try:
        wait_for_consumer(ring, first)
        callback = mdstream.DumpCallback(ring, deadline=20)
        sim = start_simulation(callback, plan)
        wait_until(lambda: callback.bytes_written > 0, "the first write")
        os.kill(first.pid, signal.SIGSTOP)  # the dump cannot end while the second consumer tries
        try:
            second = drain_process(tmp_path / "ring", tmp_path / "two.dmp")
            _, err = second.communicate(timeout=HANG_GUARD)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 1 and b"Traceback" not in err and b"consumer" in err, err
        assert sim.wait(HANG_GUARD) and sim.succeeded, callback.failure
        first.communicate(timeout=HANG_GUARD)
    finally:
        reap(first)
    assert first.returncode == 0
    assert ring.outcome == "committed" and sha256_of(tmp_path / "one.dmp") == expected
    assert not (tmp_path / "two.dmp").exists()
    ring.close(timeout=5)


# --------------------------------------------------------------------------
# 6 and 13. a creator that dies: noticed, reclaimable
# --------------------------------------------------------------------------


DIE_AFTER_CREATE = """
import os, sys
from mdstream import Ring
ring = Ring.create(sys.argv[1], 65536)
print("created", flush=True)
os.kill(os.getpid(), int(sys.argv[2]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_creator_dead_before_the_first_write(tmp_path, ring_name, sig):
    done = subprocess.run([sys.executable, "-c", DIE_AFTER_CREATE, ring_name, str(int(sig))], capture_output=True,
                          timeout=HANG_GUARD)
    assert done.stdout.strip() == b"created", done.stderr
    assert os.path.exists(f"/dev/shm/{ring_name}")
    # drain without --timeout must not wait forever for a producer that can no longer come.
    consumer = subprocess.Popen([sys.executable, "-m", "mdstream", "drain", ring_name, "-o",
                                 str(tmp_path / "out.dmp")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = consumer.communicate(timeout=30)
    finally:
        reap(consumer)
    assert consumer.returncode == 1 and b"Traceback" not in err and err.count(b"\n") == 1, err
    assert not (tmp_path / "out.dmp").exists()
    with pytest.raises(errors.RingExistsError) as info:
        mdstream.Ring.create(ring_name, 65536)
    message = str(info.value)
    assert "stale" in message and ("replace_stale" in message or "ring clean" in message), message
    listed = subprocess.run([sys.executable, "-m", "mdstream", "ring", "list"], capture_output=True, text=True)
    assert listed.returncode == 0 and f"/dev/shm/{ring_name}" in listed.stdout and "stale" in listed.stdout
    live = mdstream.Ring.create(f"{ring_name}-live", 65536)
    try:
        cleaned = subprocess.run([sys.executable, "-m", "mdstream", "ring", "clean"], capture_output=True, text=True)
        assert cleaned.returncode == 0, cleaned.stderr
        assert not os.path.exists(f"/dev/shm/{ring_name}")
        assert os.path.exists(f"/dev/shm/{ring_name}-live"), "a live ring was removed"
    finally:
        live.close()
    mdstream.Ring.create(ring_name, 65536).close()


def test_replace_stale_reclaims_only_a_dead_creators_ring(ring_name):
    subprocess.run([sys.executable, "-c", DIE_AFTER_CREATE, ring_name, str(int(signal.SIGKILL))],
                   capture_output=True, timeout=HANG_GUARD)
    assert mdstream.Ring.probe_stale(ring_name)[0]
    ring = mdstream.Ring.create(ring_name, 65536, replace_stale=True)
    assert ring.creator_pid == os.getpid()
    with pytest.raises(errors.RingExistsError):  # a live ring is never replaced
        mdstream.Ring.create(ring_name, 65536, replace_stale=True)
    ring.close()


def test_remove_stale_removes_only_the_stale_file(tmp_path, ring_name):
    """`mdstream ring clean` removes through Ring.remove_stale: a ring reclaimed meanwhile stays."""
    subprocess.run([sys.executable, "-c", DIE_AFTER_CREATE, ring_name, str(int(signal.SIGKILL))],
                   capture_output=True, timeout=HANG_GUARD)
    reclaimed = mdstream.Ring.create(ring_name, 65536, replace_stale=True)
    try:
        assert mdstream.Ring.remove_stale(ring_name) is False
        assert os.path.exists(f"/dev/shm/{ring_name}")
        assert reclaimed.state == "open" and reclaimed.creator_pid == os.getpid()
    finally:
        reclaimed.close()
    subprocess.run([sys.executable, "-c", DIE_AFTER_CREATE, ring_name, str(int(signal.SIGKILL))],
                   capture_output=True, timeout=HANG_GUARD)
    assert mdstream.Ring.remove_stale(ring_name) is True
    assert not os.path.exists(f"/dev/shm/{ring_name}")
    with pytest.raises(errors.RingNotFoundError):
        mdstream.Ring.remove_stale(ring_name)
    not_a_ring = tmp_path / "plain"
    not_a_ring.write_bytes(b"x" * 8192)
    with pytest.raises(errors.RingFormatError):
        mdstream.Ring.remove_stale(str(not_a_ring))
    assert not_a_ring.exists()


# --------------------------------------------------------------------------
# 7. liveness across PID namespaces
# --------------------------------------------------------------------------


def _unshare_prefix() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]


@pytest.mark.parametrize("kill", [False, True], ids=["completes", "killed"])
def test_consumer_in_another_pid_namespace(tmp_path, plan_and_digest, kill):
    plan, expected = plan_and_digest
    prefix = _unshare_prefix()
    ring = mdstream.Ring.create(str(tmp_path / "ring"), RING_BYTES)
    spill = tmp_path / "spill.dmp"
    output = tmp_path / "out.dmp"
    consumer = drain_process(tmp_path / "ring", output, prefix=prefix, start_new_session=True)
    try:
        wait_for_consumer(ring, consumer)
        assert ring.consumer_pid != consumer.pid  # its pid is from its own namespace
        callback = mdstream.DumpCallback(ring, deadline=20, spill_path=spill, spill_after=10)
        sim = start_simulation(callback, plan)
        if kill:
            wait_until(lambda: callback.bytes_written >= plan.total_bytes // 3 or sim.done, "a third")
            os.killpg(consumer.pid, signal.SIGKILL)
        sim.wait(HANG_GUARD)
    finally:
        try:
            os.killpg(consumer.pid, signal.SIGKILL) if kill else None
        except ProcessLookupError:
            pass
        reap(consumer)
    outcome = check_invariant(sim, callback, ring, output, spill, expected, tmp_path)
    # Killed: noticed by its lock (its pid means nothing here), long before the 10 s stall budget.
    assert outcome == ("spilled" if kill else "committed")
    if kill:
        assert callback.spill["trigger"] == "consumer gone", callback.spill
    ring.close(timeout=5)


# --------------------------------------------------------------------------
# 8. fork: roles belong to a process
# --------------------------------------------------------------------------


def test_forked_child_does_not_act_on_its_parents_ring(tmp_path, plan_and_digest):
    plan, expected = plan_and_digest
    ring = mdstream.Ring.create(str(tmp_path / "ring"), RING_BYTES)
    ring.write(0, b"")  # the parent holds the producer role
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            try:
                ring.write(0, b"child")
                code = 3
            except errors.RingClosedError:
                pass
            assert ring.inherited
            ring.close()
        except BaseException:
            code = 4
        os.write(write_fd, bytes([code]))
        os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_fd, 1) == b"\x00" and os.waitstatus_to_exitcode(status) == 0
    os.close(read_fd)
    assert (tmp_path / "ring").exists() and ring.state == "open"  # the child's exit changed nothing
    ring.close()


def test_forked_child_with_a_callback_in_flight(tmp_path, plan_and_digest):
    """A child forked while the dump streams exits normally; the parent's dump still commits."""
    plan, expected = plan_and_digest
    ring = mdstream.Ring.create(str(tmp_path / "ring"), RING_BYTES)
    consumer = drain_process(tmp_path / "ring", tmp_path / "out.dmp")
    try:
        wait_for_consumer(ring, consumer)
        callback = mdstream.DumpCallback(ring, deadline=20)
        sim = start_simulation(callback, plan)
        wait_until(lambda: callback.bytes_written >= plan.total_bytes // 4 or sim.done, "a quarter")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                ring.close()
            finally:
                os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        sim.wait(HANG_GUARD)
        consumer.communicate(timeout=HANG_GUARD)
    finally:
        reap(consumer)
    assert check_invariant(sim, callback, ring, tmp_path / "out.dmp", None, expected, tmp_path) == "committed"
    ring.close(timeout=5)


# --------------------------------------------------------------------------
# 9 and 10. a trickling consumer; the spill inside the deadline
# --------------------------------------------------------------------------


TRICKLING_CONSUMER = """
import sys, time
from mdstream import FileSink, Ring, drain

class Trickle:
    # Each batch waits a little less than the producer's per-write deadline.
    def consume(self, batch):
        time.sleep(0.4)
    def finish(self):
        return None
    def abort(self, error=None):
        pass

ring = Ring.attach(sys.argv[1])
try:
    drain(ring, [FileSink(sys.argv[2]), Trickle()], timeout=60)
except Exception as exc:
    print(type(exc).__name__, exc, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.parametrize("with_spill", [True, False], ids=["spill", "no-spill"])
def test_trickling_consumer_meets_the_dump_deadline(tmp_path, plan_and_digest, with_spill):
    plan, expected = plan_and_digest
    ring = mdstream.Ring.create(str(tmp_path / "ring"), 64 << 10)
    spill = tmp_path / "spill.dmp" if with_spill else None
    consumer = subprocess.Popen([sys.executable, "-c", TRICKLING_CONSUMER, str(tmp_path / "ring"),
                                 str(tmp_path / "out.dmp")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_consumer(ring, consumer)
        callback = mdstream.DumpCallback(ring, deadline=1.0, dump_deadline=3.0, spill_path=spill)
        sim = start_simulation(callback, plan, time_calls=True)
        started = time.monotonic()
        sim.wait(HANG_GUARD)
        took = time.monotonic() - started
        finish_consumer(consumer)
    finally:
        reap(consumer)
    # A bound on hanging, not a speed claim: the budget plus slack for a loaded machine.
    assert took < 3.0 + 10.0, took
    outcome = check_invariant(sim, callback, ring, tmp_path / "out.dmp", spill, expected, tmp_path)
    assert outcome == ("spilled" if with_spill else "failed")
    assert sim.longest_call[0] < 1.0 + 5.0, sim.longest_call  # no single callback outlived its deadline (+slack)
    ring.close(timeout=5)


# --------------------------------------------------------------------------
# 11. outputs that are not regular files are streamed, never replaced
# --------------------------------------------------------------------------


def _producer_then_drain(tmp_path: Path, plan: WritePlan, output: str, **popen) -> tuple[subprocess.Popen, bytes,
                                                                                          bytes, Simulation]:
    ring = mdstream.Ring.create(str(tmp_path / "ring"), RING_BYTES)
    consumer = drain_process(tmp_path / "ring", output, **popen)
    try:
        wait_for_consumer(ring, consumer)
        callback = mdstream.DumpCallback(ring, deadline=20)
        sim = start_simulation(callback, plan)
        out, err = consumer.communicate(timeout=HANG_GUARD)
        sim.wait(HANG_GUARD)
    finally:
        reap(consumer)
    assert ring.outcome == "committed" and sim.succeeded, callback.failure
    ring.close(timeout=5)
    return consumer, out, err, sim


def test_drain_to_standard_output(tmp_path, plan_and_digest):
    plan, expected = plan_and_digest
    consumer, out, err, _ = _producer_then_drain(tmp_path, plan, "-")
    assert consumer.returncode == 0, err
    assert hashlib.sha256(out).hexdigest() == expected


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_drain_to_dev_null_never_replaces_it(tmp_path, plan_and_digest):
    plan, _ = plan_and_digest
    before = os.stat("/dev/null")
    consumer, _, err, _ = _producer_then_drain(tmp_path, plan, "/dev/null")
    assert consumer.returncode == 0, err
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


def test_drain_into_a_fifo(tmp_path, plan_and_digest):
    plan, expected = plan_and_digest
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    got = hashlib.sha256()

    def read_fifo() -> None:
        with open(fifo, "rb") as f:
            while chunk := f.read(1 << 20):
                got.update(chunk)

    reader = threading.Thread(target=read_fifo)
    reader.start()
    consumer, _, err, _ = _producer_then_drain(tmp_path, plan, str(fifo))
    reader.join(HANG_GUARD)
    assert consumer.returncode == 0, err
    assert got.hexdigest() == expected and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_replay_to_a_device_is_refused_or_streamed(tmp_path):
    sample_path = tmp_path / "sample.dmp"
    sample_path.write_bytes(build_sample_minidump())
    done = subprocess.run([sys.executable, "-m", "mdstream", "replay", str(sample_path), "-o", "/dev/null", "-q"],
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --------------------------------------------------------------------------
# 12. a hostile consumer_output is never trusted, copied as complete, or deleted
# --------------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["old-file", "symlink"])
def test_planted_consumer_output_is_not_trusted(tmp_path, plant):
    ring_path = tmp_path / "ring"
    ring = mdstream.Ring.create(str(ring_path), 64 << 10)
    victim = tmp_path / "victim.dat"
    victim.write_bytes(b"precious" * 4096)
    victim.chmod(0o600)
    time.sleep(0.2)  # last changed before the dump began
    planted = victim if plant == "old-file" else tmp_path / "link"
    if plant == "symlink":
        planted.symlink_to(victim)
    spill = tmp_path / "spill.dmp"
    plan = sized_plan(1024, 1 << 20, seed=5)
    hostile = subprocess.Popen([sys.executable, "-c", HOSTILE_CONSUMER, str(ring_path), str(planted)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        callback = mdstream.DumpCallback(ring, deadline=5, spill_path=spill)
        sim = start_simulation(callback, plan)
        out, err = hostile.communicate(timeout=HANG_GUARD)
        assert hostile.returncode == 0 and out.strip() == "released", err
        sim.wait(HANG_GUARD)
    finally:
        reap(hostile)
    expected = hashlib.sha256(plan.apply()).hexdigest()
    assert victim.read_bytes() == b"precious" * 4096, "the planted file was changed"
    outcome = check_invariant(sim, callback, ring, tmp_path / "out.dmp", spill, expected, tmp_path)
    # The released prefix exists nowhere but in the planted file, which is not this dump's: the
    # spill cannot be complete, so the producer must not claim success.
    assert outcome == "failed", callback.spill
    assert callback.spill and not callback.spill["complete"]
    ring.close(timeout=5)


HOSTILE_CONSUMER = """
import sys
from mdstream import Ring
ring = Ring.attach(sys.argv[1])
try:
    ring.consumer_output = sys.argv[2]
except Exception as exc:
    print("refused:", exc, file=sys.stderr)
released = 0
while released < 256 << 10:
    batch = ring.read(timeout=30)
    released += batch.nbytes
    batch.release()
print("released", flush=True)
import os
os._exit(0)
"""


# --------------------------------------------------------------------------
# minor cases
# --------------------------------------------------------------------------


def test_durations_are_validated(tmp_path):
    ring = mdstream.Ring.create(str(tmp_path / "ring"), 4096)
    for bad in (-1, 0, float("nan"), float("-inf")):
        with pytest.raises(errors.DumpOptionError):
            mdstream.DumpCallback(ring, deadline=bad)
    mdstream.DumpCallback(ring, deadline=float("inf"))  # no deadline, explicitly, like None
    # Half a nanosecond is the shortest deadline there is, never "forever".
    callback = mdstream.DumpCallback(ring, deadline=5e-10)
    sim = start_simulation(callback, sized_plan(1024, 64 << 10, seed=2))
    assert sim.wait(HANG_GUARD) and not sim.succeeded
    ring.close(timeout=5)


@pytest.mark.parametrize("path", ["", "/tmp/", "."])
def test_file_sink_refuses_a_path_that_is_no_file_name(path):
    with pytest.raises(errors.OutputPathError):
        mdstream.FileSink(path)


def _mem_available() -> int:
    # What Ring.create checks an anonymous ring against (free pages alone would not count the page cache).
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no MemAvailable in /proc/meminfo")


def test_huge_anonymous_ring_is_checked_against_memory():
    if _mem_available() > (1 << 34):
        pytest.skip("this machine has more than 16 GiB available (MemAvailable)")
    with pytest.raises(errors.RingError) as info:
        mdstream.Ring.create(None, 1 << 34)
    assert "memory" in str(info.value).lower()


def test_attach_during_creation_never_sees_a_bad_magic(ring_name):
    """Creation is atomic: an attacher sees no ring, or a whole one."""
    stop = threading.Event()
    seen: collections.Counter = collections.Counter()

    def attach_loop() -> None:
        while not stop.is_set():
            try:
                mdstream.Ring.attach(ring_name).close()
                seen["ring"] += 1
            except errors.RingNotFoundError:
                seen["none"] += 1
            except errors.MdstreamError as exc:
                seen[f"{type(exc).__name__}: {exc}"] += 1

    t = threading.Thread(target=attach_loop)
    t.start()
    try:
        for _ in range(5):
            ring = mdstream.Ring.create(ring_name, 64 << 20)
            time.sleep(0.01)
            ring.close()
            os.unlink(f"/dev/shm/{ring_name}") if os.path.exists(f"/dev/shm/{ring_name}") else None
    finally:
        stop.set()
        t.join()
    assert set(seen) <= {"ring", "none", "RingBusyError"} or all("magic" not in k for k in seen), seen
    assert all("magic" not in k for k in seen), seen


def test_the_sigbus_guard_covers_more_than_256_rings(tmp_path):
    code = f"""
import os, sys
from mdstream import Ring, errors
rings = [Ring.create({str(tmp_path)!r} + f"/r{{i}}", 65536) for i in range(300)]
last = rings[-1]
os.truncate(last.path, 4096)
try:
    last.write(0, b"x" * 1024)
    last.flush()
    print("no error")
except errors.MdstreamError as exc:
    print("error", type(exc).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.startswith("error"), done.stdout


def test_an_interrupt_while_publishing_is_held_until_the_commit(tmp_path):
    """Ctrl-C/SIGTERM between begin_commit and commit would publish the output while the producer,
    told of a failure, spills without it.  drain() holds the interrupt for that window and delivers
    it once the dump is committed."""
    ring = mdstream.Ring.create(None, 1 << 16)
    out = tmp_path / "out.dmp"
    told: dict = {}

    class InterruptedWhilePublishing:
        def __init__(self) -> None:
            self.inner = mdstream.FileSink(str(out))

        def consume(self, batch):
            self.inner.consume(batch)

        def prepare(self):
            return self.inner.prepare()

        def publish(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here unless it is held
            return self.inner.publish()

        def finish(self):
            return self.inner.finish()

        def abort(self, exc=None):
            self.inner.abort(exc)

    def produce():
        try:
            ring.write(0, b"MDMP" + bytes(4092))
            ring.finish(timeout=30)
            told["result"] = "committed"
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            told["result"] = repr(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    with pytest.raises(KeyboardInterrupt):
        mdstream.drain(ring, [InterruptedWhilePublishing()], timeout=30)
    producer.join(30)
    assert told["result"] == "committed", told
    assert ring.state == "committed"
    assert out.read_bytes() == b"MDMP" + bytes(4092)
    ring.close()


DIES_AFTER_PUBLISHING = """
import os, signal, sys
import mdstream

class DiesAfterPublishing(mdstream.FileSink):
    def publish(self, *, keep_temp=False):
        path = super().publish(keep_temp=keep_temp)
        os.kill(os.getpid(), signal.SIGKILL)  # the output is in place, the commit never comes
        return path

ring = mdstream.Ring.attach(sys.argv[1])
mdstream.drain(ring, [DiesAfterPublishing(sys.argv[2])], timeout=60)
"""


def test_consumer_dead_between_publishing_and_commit_leaves_a_complete_spill(tmp_path, plan_and_digest):
    """The output is under its final name but the commit never came: the producer must not fail.
    The partial file keeps its temporary name until the commit, so the spill copies it and is complete."""
    plan, expected = plan_and_digest
    ring_path, output, spill = tmp_path / "ring", tmp_path / "out.dmp", tmp_path / "spill.dmp"
    ring = mdstream.Ring.create(str(ring_path), RING_BYTES)
    consumer = subprocess.Popen([sys.executable, "-c", DIES_AFTER_PUBLISHING, str(ring_path), str(output)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_consumer(ring, consumer)
        callback = mdstream.DumpCallback(ring, deadline=20, spill_path=spill, spill_after=2.0)
        sim = start_simulation(callback, plan)
        sim.wait(HANG_GUARD)
        finish_consumer(consumer)
        assert consumer.returncode == -signal.SIGKILL
        assert check_invariant(sim, callback, ring, output, spill, expected, tmp_path) == "spilled"
        assert sha256_of(output) == expected  # and the published copy is whole too
        ring.close(timeout=5)
    finally:
        reap(consumer)
