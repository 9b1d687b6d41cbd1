"""Issue 6: never lose a dump, never hang the dumped process.

Two groups:

1. A 4 GiB stream through a 1 MiB ring, produced by the real callback
   (``DumpCallback``) from the simulator's native thread and drained here into
   a sink that checks every record arrives at exactly the next offset and
   hashes the payload views (zero-copy) in offset order.  The digest must equal
   one computed independently from the write plan, and the process's memory
   must stay flat (peak RSS, refcounts, gc objects).

2. The consumer process dies or stalls mid-dump.  The producer (the callback on
   the simulator's native thread, as DbgHelp drives it) must end its wait: with
   FALSE and ``HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE)`` when the consumer was
   killed (SIGKILL, reaped or left a zombie), and with FALSE and
   ``HRESULT_FROM_WIN32(ERROR_TIMEOUT)`` at the user's deadline when the
   consumer is alive but stopped (SIGSTOP).  A killed consumer's ``FileSink``
   leaves nothing under the final name.

Timeouts below are hang guards only; nothing asserts a speed.
"""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mdstream import DumpCallback, Ring, Simulation, drain
from mdstream.dbghelp import CallbackType
from mdstream.errors import ConsumerGoneError, RingTimeoutError
from mdstream.schedules import WritePlan
from mdstream.simulator import run_plan

SANITIZED = os.environ.get("MDSTREAM_SANITIZED") == "1"

HRESULT_TIMEOUT = 0x800705B4  # HRESULT_FROM_WIN32(ERROR_TIMEOUT)
HRESULT_BROKEN_PIPE = 0x8007006D  # HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE)
E_ABORT = 0x80004004

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RING_CAPACITY = 1 * MiB
RING_HEADER_SIZE = 4096  # docs/ring-format.md: the header page precedes the data area
RECORDS_WRITTEN_FIELD = 168  # docs/ring-format.md: header offset of `records_written`

# Under scripts/sanitize.sh (ASan+UBSan, MDSTREAM_SANITIZED=1) every memcpy into
# the ring and every byte hashed here is instrumented and the whole suite runs
# again on the same two cores: 256 MiB still wraps the 1 MiB ring hundreds of
# times (all the wrap, padding, split and coalescing paths) and keeps that run
# quick.  The full 4 GiB is the unsanitized run.
STREAM_BYTES = 256 * MiB if SANITIZED else 4 * GiB
POOL_BYTES = 64 * MiB

HANG_GUARD = 60.0  # seconds; only to turn a hang into a failure


# ---------------------------------------------------------------------------
# Plans and oracles
# ---------------------------------------------------------------------------


def stream_plan(total: int, pool_bytes: int, seed: int) -> WritePlan:
    """``total`` bytes as contiguous writes at increasing dump offsets.

    Write sizes are drawn from a seeded mix (half small: 0..4 KiB, zero-length
    included; 45 % medium: 4..128 KiB; 5 % large: 128 KiB..1.5 MiB, larger than
    the 1 MiB ring's max_payload so they are split), and every write takes its
    bytes from a random position of a ``pool_bytes`` random pool.  The stream
    is therefore not periodic, while the plan costs only the pool and three
    index arrays however large ``total`` is.
    """
    rng = np.random.default_rng(seed)
    pool = np.frombuffer(rng.bytes(pool_bytes), dtype=np.uint8)
    estimate = total // (16 * KiB) + 64  # well above the count the ~70 KiB mean needs
    kind = rng.random(estimate)
    lengths = np.where(
        kind < 0.5,
        rng.integers(0, 4 * KiB, estimate),
        np.where(kind < 0.95, rng.integers(4 * KiB, 128 * KiB, estimate), rng.integers(128 * KiB, 1536 * KiB, estimate)),
    ).astype(np.int64)
    ends = np.cumsum(lengths)
    count = int(np.searchsorted(ends, total)) + 1
    assert count <= estimate
    lengths = lengths[:count].copy()
    lengths[-1] -= int(ends[count - 1]) - total  # the last write ends exactly at `total`
    assert lengths[-1] >= 0 and int(lengths.sum()) == total
    offsets = np.zeros(count, dtype=np.uint64)
    offsets[1:] = np.cumsum(lengths)[:-1].astype(np.uint64)
    sources = (rng.random(count) * (pool_bytes - lengths + 1)).astype(np.uint64)
    plan = WritePlan(pool, offsets, lengths.astype(np.uint32), sources, total, f"stream ({total} B, seed {seed})")
    plan.validate()
    return plan


def expected_digest(plan: WritePlan) -> str:
    """sha256 of the dump, straight from the plan: the pool slices in plan order
    (the writes are contiguous and increasing, so that is the dump's bytes)."""
    h = hashlib.sha256()
    pool = plan.buffer.data  # a memoryview: slices are zero-copy
    for source, length in zip(plan.sources.tolist(), plan.lengths.tolist()):
        h.update(pool[source:source + length])
    return h.hexdigest()


def expected_prefix(plan: WritePlan, size: int) -> bytes:
    """The first ``size`` bytes of the dump, from the plan."""
    out = bytearray()
    pool = plan.buffer.data  # a memoryview: slices are zero-copy
    for source, length in zip(plan.sources.tolist(), plan.lengths.tolist()):
        if len(out) >= size:
            break
        out += pool[source:source + length]
    assert len(out) >= size
    return bytes(out[:size])


def proc_status(key: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class OrderedHashSink:
    """A sink (``mdstream.pipeline.Sink``) that hashes the stream in dump-offset order.

    Every record must start exactly where the previous one ended (a lost,
    repeated or reordered record fails at once), and its payload view, a numpy
    view into the ring's mapping, goes to sha256 without a copy.  Every
    ``sample_every`` bytes it records VmRSS.
    """

    def __init__(self, ring: Ring, sample_every: int = 128 * MiB) -> None:
        self.hash = hashlib.sha256()
        self.next_offset = 0
        self.records = 0
        self.batches = 0
        self.data_lo = ring.data_address
        self.data_hi = ring.data_address + ring.capacity
        self.sample_every = sample_every
        self.next_sample = 0
        self.rss: list[tuple[int, int]] = []  # (bytes so far, VmRSS)
        self.error: BaseException | None = None

    def consume(self, batch) -> None:
        buf = batch.buffer  # read-only uint8 view of the batch's span of the mapping
        address = buf.__array_interface__["data"][0]
        if not (self.data_lo <= address and address + buf.size <= self.data_hi):
            raise AssertionError(f"batch buffer at {address:#x}+{buf.size} is not inside the ring's data area: a copy")
        error = None
        for offset, length, position in zip(batch.offsets.tolist(), batch.lengths.tolist(), batch.positions.tolist()):
            if offset != self.next_offset:
                error = (f"record {self.records} (batch {self.batches}) is at offset {offset}, expected "
                         f"{self.next_offset}: a record was lost, repeated or reordered")
                break
            self.hash.update(buf[position:position + length])  # zero-copy: the buffer protocol of a view
            self.next_offset += length
            self.records += 1
        # No view of the ring may outlive the call, not even in a traceback's frame.
        del buf
        if error is not None:
            raise AssertionError(error)
        self.batches += 1
        if self.next_offset >= self.next_sample:
            self.rss.append((self.next_offset, proc_status("VmRSS")))
            self.next_sample = self.next_offset + self.sample_every

    def finish(self) -> str:
        return self.hash.hexdigest()

    def abort(self, error: BaseException) -> None:
        self.error = error


def records_written(ring: Ring) -> int:
    """The producer's ``records_written`` statistic from the ring header."""
    import ctypes

    return ctypes.c_uint64.from_address(ring.data_address - RING_HEADER_SIZE + RECORDS_WRITTEN_FIELD).value


# ---------------------------------------------------------------------------
# 1. A 4 GiB stream through a 1 MiB ring arrives intact with flat memory
# ---------------------------------------------------------------------------


def test_the_checking_sink_catches_a_lost_a_repeated_and_a_changed_record():
    """The oracle of the big test can fail: a gap, a repeat and a changed byte are all caught."""
    data = np.frombuffer(np.random.default_rng(1).bytes(3000), dtype=np.uint8)

    def run(writes):
        ring = Ring.create(None, 64 * KiB)
        for offset, piece in writes:
            ring.write(offset, piece, timeout=5)
        ring.seal()
        sink = OrderedHashSink(ring)
        try:
            result = drain(ring, [sink], timeout=5)
        finally:
            ring.close()
        return result.outputs[0]

    good = hashlib.sha256(data.tobytes()).hexdigest()
    assert run([(0, data[:1000]), (1000, data[1000:2000]), (2000, data[2000:])]) == good
    with pytest.raises(AssertionError, match="offset 2000, expected 1000"):
        run([(0, data[:1000]), (2000, data[2000:])])
    with pytest.raises(AssertionError, match="offset 0, expected 1000"):
        run([(0, data[:1000]), (0, data[:1000]), (1000, data[1000:])])
    changed = data.copy()
    changed[1500] ^= 1
    assert run([(0, changed[:1000]), (1000, changed[1000:2000]), (2000, changed[2000:])]) != good


@pytest.mark.slow
def test_4gib_through_a_1mib_ring_arrives_intact_with_flat_memory():
    plan = stream_plan(STREAM_BYTES, POOL_BYTES, seed=20240606)
    want = expected_digest(plan)
    ring = Ring.create(None, RING_CAPACITY)
    callback = DumpCallback(ring)  # the defaults: coalescing, lazy publication, 30 s deadline
    sink = OrderedHashSink(ring)
    try:
        gc.collect()
        held = {"ring": ring, "callback": callback, "sink": sink, "plan": plan, "pool": plan.buffer}
        refs_before = {name: sys.getrefcount(obj) for name, obj in held.items()}
        objects_before = len(gc.get_objects())
        rss_before = proc_status("VmRSS")
        try:  # reset the high-water mark so VmHWM is the peak during the stream alone
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            hwm_reset = True
        except OSError:
            hwm_reset = False

        result = run_plan(plan, callback, [sink], timeout=HANG_GUARD)

        peak = proc_status("VmHWM") if hwm_reset else max(rss for _, rss in sink.rss)
        rss_after = proc_status("VmRSS")
        digest = result.outputs[0]
        del result
        gc.collect()
        refs_after = {name: sys.getrefcount(obj) for name, obj in held.items()}
        objects_after = len(gc.get_objects())

        # Intact: every byte, in order, exactly once.
        assert sink.error is None
        assert sink.next_offset == STREAM_BYTES
        assert digest == want, "the drained stream's sha256 differs from the plan's"

        # The callback's view of the same stream.
        counters = callback.counters
        assert not callback.failed and callback.failure is None and callback.finished
        assert counters["writes"] == plan.count
        assert counters["bytes"] == STREAM_BYTES == counters["highest_end"]
        assert counters["calls"] == {"IoStartCallback": 1, "IoWriteAllCallback": plan.count, "IoFinishCallback": 1}

        # The ring's statistics: everything published was consumed, records were
        # coalesced and split as the format says, and the ring wrapped thousands
        # of times (hundreds under the sanitizer).
        assert ring.state == "committed" and ring.outcome == "committed"
        assert ring.read_position == ring.write_position
        assert records_written(ring) == sink.records + 2  # the BEGIN and END records frame the dump
        assert STREAM_BYTES // ring.max_payload <= sink.records <= plan.count
        # Each record costs a 16-byte header plus padding to 16 (PADs at the wrap on top).
        assert ring.write_position >= STREAM_BYTES + 16 * sink.records
        laps = ring.write_position // ring.capacity
        assert laps >= STREAM_BYTES // RING_CAPACITY >= (256 if SANITIZED else 4096)

        # Flat memory: the peak over the stream is far below the stream (a
        # leak of one copy per record or per batch would be gigabytes), and
        # RSS did not drift upwards between the first and the last samples.
        growth = peak - rss_before
        assert growth < 16 * MiB + RING_CAPACITY, f"RSS peaked {growth / MiB:.1f} MiB above the start"
        assert len(sink.rss) >= 2
        drift = sink.rss[-1][1] - sink.rss[0][1]
        assert drift < 8 * MiB, f"RSS grew {drift / MiB:.1f} MiB during the stream: {sink.rss}"
        assert rss_after - rss_before < 16 * MiB + RING_CAPACITY
        assert refs_after == refs_before
        assert objects_after - objects_before < 100, f"{objects_after - objects_before} more gc objects"
    finally:
        ring.close()


# ---------------------------------------------------------------------------
# 2. The consumer process is killed or stalled mid-dump
# ---------------------------------------------------------------------------

# A deliberately slow consumer: drains into a FileSink, but no faster than
# RATE bytes per second (a busy disk), so the dump is certainly in flight when
# the test kills it.
THROTTLED_CONSUMER = textwrap.dedent("""
    import sys, time
    from mdstream import FileSink, Ring, drain

    ring = Ring.attach(sys.argv[1])
    rate = float(sys.argv[3])

    class Throttle:
        def __init__(self):
            self.bytes = 0
            self.start = time.monotonic()

        def consume(self, batch):
            self.bytes += batch.summary()[1]
            ahead = self.bytes / rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)

        def finish(self):
            return None

        def abort(self, error):
            pass

    drain(ring, [FileSink(sys.argv[2]), Throttle()])
""")

FAULT_PLAN_BYTES = 1 * GiB  # never reached: each test kills or stalls the consumer after a few MiB
FAULT_POOL_BYTES = 16 * MiB
PROGRESS_BEFORE_FAULT = 4 * RING_CAPACITY  # the consumer has drained (and written) at least 3 MiB


def wait_until(predicate, what: str, timeout: float = HANG_GUARD, interval: float = 0.002) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"hang guard: {what} did not happen within {timeout} s")
        time.sleep(interval)


def proc_state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat ('' if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return ""
    return stat[stat.rindex(b")") + 2:][:1].decode()


class Fault:
    """A named ring, a consumer process draining it into a FileSink, and the
    producer: ``DumpCallback`` driven by the simulator's native thread.

    ``cleanup()`` (call it in ``finally``) never leaves anything behind: it
    aborts the ring so a still-waiting producer thread returns, joins it,
    resumes and kills the consumer if it still runs, reaps it and closes the
    ring (which removes its name).
    """

    def __init__(self, ring_name: str, tmp_path: Path, *, deadline: float | None) -> None:
        self.tmp_path = tmp_path
        self.out_dir = tmp_path / "out"
        self.out_dir.mkdir()
        self.out = self.out_dir / "dump.dmp"
        self.plan = stream_plan(FAULT_PLAN_BYTES, FAULT_POOL_BYTES, seed=6)
        self.ring = Ring.create(ring_name, RING_CAPACITY)
        self.callback = DumpCallback(self.ring, deadline=deadline)
        self.sim: Simulation | None = None
        self.child: subprocess.Popen | None = None
        self.stderr_path = tmp_path / "consumer.stderr"

    def start_consumer(self, argv: list[str]) -> None:
        with open(self.stderr_path, "wb") as err:
            self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        child = self.child

        def attached() -> bool:
            if child.poll() is not None:
                raise AssertionError(f"the consumer exited with {child.returncode} before attaching: {self.stderr()}")
            return self.ring.consumer_pid == child.pid

        wait_until(attached, "the consumer claiming the ring")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def start_producer(self) -> None:
        plan = self.plan
        self.sim = Simulation(self.callback.routine_address, self.callback.param_address, plan.buffer,
                              plan.offsets, plan.lengths, plan.sources, keepalive=self.callback)
        self.sim.start()

    def wait_for_progress(self, nbytes: int) -> int:
        sim = self.sim
        assert sim is not None

        def progressed() -> bool:
            if sim.done:
                raise AssertionError(f"the dump ended before the fault was injected: {sim.failure} "
                                     f"{self.callback.failure}")
            return self.callback.bytes_written >= nbytes

        wait_until(progressed, f"the producer writing {nbytes} bytes")
        return self.callback.bytes_written

    def stop_consumer_and_wait_until_the_producer_blocks(self) -> int:
        """SIGSTOP the consumer; return the producer's byte count once it stopped advancing (ring full)."""
        assert self.child is not None and self.sim is not None
        os.kill(self.child.pid, signal.SIGSTOP)
        wait_until(lambda: proc_state(self.child.pid) in ("T", "t"), "the consumer stopping")
        last, still = (-1, -1), 0
        end = time.monotonic() + HANG_GUARD
        while still < 3:  # 0.3 s without a byte accepted or a record published
            now = (self.callback.bytes_written, self.ring.write_position)
            still = still + 1 if now == last else 0
            if time.monotonic() > end:
                raise AssertionError("hang guard: the producer kept writing into a ring nobody drains")
            last = now
            time.sleep(0.1)
        assert not self.sim.done, f"the producer gave up already: {self.callback.failure}"
        assert self.ring.write_position > self.ring.read_position, "the producer is blocked on an empty ring?"
        return last[0]

    def wait_for_the_producer(self) -> Simulation:
        sim = self.sim
        assert sim is not None
        if not sim.wait(HANG_GUARD):
            raise AssertionError(f"hang guard: the dump callback was still blocked {HANG_GUARD} s after the fault "
                                 f"({self.callback.bytes_written} bytes written)")
        return sim

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.out_dir.iterdir())

    def cleanup(self) -> None:
        try:
            if self.sim is not None and not self.sim.done:
                if not self.ring.closed and self.ring.state == "open":
                    self.ring.abort(E_ABORT, "test cleanup")
                self.sim.wait(HANG_GUARD)
        finally:
            child = self.child
            if child is not None:
                if child.poll() is None:
                    try:
                        os.kill(child.pid, signal.SIGCONT)
                        child.kill()
                    except ProcessLookupError:
                        pass
                child.wait(HANG_GUARD)
            if not self.ring.closed:
                self.ring.close()

    def check_the_failure(self, sim: Simulation, hresult: int) -> tuple[int, str]:
        """The failed IoWriteAll answered FALSE with ``hresult``; nothing accepted was dropped silently."""
        assert not sim.succeeded
        failure = sim.failure
        assert failure is not None
        assert failure["callback_type"] == CallbackType.IoWriteAllCallback
        assert failure["returned"] is False, "the callback must answer FALSE"
        assert failure["status"] == hresult, f"Status {failure['status']:#010x}, wanted {hresult:#010x}"
        index = failure["index"]
        assert 0 < index < self.plan.count
        # Writes before the failed one were accepted (TRUE/S_OK), none after it was attempted.
        assert sim.completed == index == self.callback.writes
        assert self.callback.bytes_written == int(self.plan.lengths[:index].sum(dtype=np.uint64))
        assert self.callback.failed and not self.callback.finished
        assert self.callback.failure is not None
        status, reason = self.callback.failure
        assert status == hresult
        # A failed dump ends as aborted, with the callback's HRESULT: no consumer
        # may publish what it got, and the ring never carries a second dump.
        assert self.ring.state == "aborted"
        code, why = self.ring.abort_info
        assert code == hresult and why.startswith("the dump failed: ")
        assert self.ring.outcome == "failed"
        return index, reason

    def check_partial_output(self, failed_index: int) -> None:
        """A killed consumer left nothing under the final name; what its FileSink
        had written (in its private temporary file) is a correct prefix."""
        assert not self.out.exists(), "a killed consumer's FileSink left a file under the final name"
        partial = [p for p in self.out_dir.iterdir() if p.name.endswith(".mdstream-partial")]
        assert len(partial) == 1 and self.leftovers() == [partial[0].name], self.leftovers()
        data = partial[0].read_bytes()
        # The consumer writes a batch before releasing it and the ring holds at
        # most its capacity, so it got all but the last ring-full of what was
        # accepted; it may also have got the first pieces of the failed write
        # (a write larger than max_payload is several records), nothing later.
        accepted = self.callback.bytes_written
        failed_end = int(self.plan.offsets[failed_index]) + int(self.plan.lengths[failed_index])
        assert accepted - RING_CAPACITY <= len(data) <= failed_end
        assert data == expected_prefix(self.plan, len(data)), "the partial output is not the dump's prefix"


def test_consumer_killed_while_the_ring_is_full_fails_the_write_with_broken_pipe(ring_name, tmp_path):
    """The consumer stalls (ring full, producer waiting), then is SIGKILLed and
    left unreaped (a zombie): the wait ends with FALSE / 0x8007006D, not at the
    (120 s) deadline."""
    fault = Fault(ring_name, tmp_path, deadline=HANG_GUARD * 2)
    try:
        fault.start_consumer([sys.executable, "-m", "mdstream", "drain", ring_name, "-o", str(fault.out)])
        fault.start_producer()
        fault.wait_for_progress(PROGRESS_BEFORE_FAULT)
        accepted = fault.stop_consumer_and_wait_until_the_producer_blocks()
        pid = fault.child.pid
        os.kill(pid, signal.SIGKILL)  # not reaped: a zombie still answers kill(pid, 0)
        sim = fault.wait_for_the_producer()
        # (The producer may see the thread-group leader as a zombie while the
        # consumer's other threads are still exiting, so reap with a wait.)
        assert fault.child.wait(HANG_GUARD) == -signal.SIGKILL
        index, reason = fault.check_the_failure(sim, HRESULT_BROKEN_PIPE)
        assert "consumer" in reason and str(pid) in reason, reason
        assert isinstance(fault.callback.failure_exception, ConsumerGoneError)
        assert fault.callback.bytes_written == accepted  # nothing was accepted after the consumer stopped
        fault.check_partial_output(index)
    finally:
        fault.cleanup()


def test_consumer_killed_while_draining_fails_the_write_with_broken_pipe(ring_name, tmp_path):
    """A slow consumer is SIGKILLed (and reaped) in the middle of the dump: the
    producer fills the ring, notices, and answers FALSE / 0x8007006D."""
    fault = Fault(ring_name, tmp_path, deadline=HANG_GUARD * 2)
    try:
        fault.start_consumer([sys.executable, "-c", THROTTLED_CONSUMER, ring_name, str(fault.out), str(32 * MiB)])
        fault.start_producer()
        fault.wait_for_progress(PROGRESS_BEFORE_FAULT)
        assert not fault.sim.done
        pid = fault.child.pid
        fault.child.kill()
        assert fault.child.wait(HANG_GUARD) == -signal.SIGKILL  # reaped: kill(pid, 0) says ESRCH
        sim = fault.wait_for_the_producer()
        index, reason = fault.check_the_failure(sim, HRESULT_BROKEN_PIPE)
        assert "consumer" in reason and str(pid) in reason, reason
        assert isinstance(fault.callback.failure_exception, ConsumerGoneError)
        fault.check_partial_output(index)
    finally:
        fault.cleanup()


# The stalled consumer's deadline.  Shorter would do (0.5 s), but before the
# SIGSTOP the consumer really drains, and on a shared 2-core machine a live
# consumer can be descheduled for a good fraction of a second: the deadline
# must only fire because of the stop.
STALL_DEADLINE = 1.0


def test_consumer_stalled_mid_dump_fails_the_write_at_the_deadline(ring_name, tmp_path):
    """The consumer is alive but stopped (SIGSTOP): the producer's wait ends at
    the user's deadline (not before) with FALSE / 0x800705B4.
    The agent then aborts the ring, and the resumed consumer gives up cleanly:
    nothing under the final name, no temporary file left."""
    fault = Fault(ring_name, tmp_path, deadline=STALL_DEADLINE)
    try:
        fault.start_consumer([sys.executable, "-m", "mdstream", "drain", ring_name, "-o", str(fault.out)])
        pid = fault.child.pid
        fault.start_producer()
        sim = fault.sim
        assert sim is not None
        # Watch the producer's byte count (the time is taken before each read);
        # stop the consumer once a few MiB went through.
        samples: list[tuple[float, int]] = []
        stopped = False
        guard = time.monotonic() + HANG_GUARD
        while not sim.done:
            now = time.monotonic()
            samples.append((now, fault.callback.bytes_written))
            if not stopped and samples[-1][1] >= PROGRESS_BEFORE_FAULT:
                os.kill(pid, signal.SIGSTOP)
                stopped = True
            if now > guard:
                raise AssertionError(f"hang guard: the dump callback was still blocked after {HANG_GUARD} s "
                                     f"({fault.callback.bytes_written} bytes written)")
            time.sleep(0.002)
        ended = time.monotonic()
        assert stopped, f"the dump ended before the consumer was stopped: {fault.callback.failure}"
        # The consumer was alive the whole time: this is a stall, not a death.
        assert proc_state(pid) in ("T", "t") and fault.child.poll() is None
        index, reason = fault.check_the_failure(sim, HRESULT_TIMEOUT)
        assert "deadline" in reason, reason
        assert isinstance(fault.callback.failure_exception, RingTimeoutError)
        # Not before the deadline: the failed write started after the last write
        # that succeeded, which had not returned yet when a sample still saw the
        # smaller count; from then on, the failed write waited at least the deadline.
        accepted = fault.callback.bytes_written
        last_seen_before = max(t for t, nbytes in samples if nbytes != accepted)
        assert ended - last_seen_before >= STALL_DEADLINE - 1e-3, (
            f"the write failed {ended - last_seen_before:.3f} s after it started, before the {STALL_DEADLINE} s deadline")

        # The failed dump aborted the ring itself (no agent action needed): the
        # consumer, woken, stops at once and publishes nothing.
        assert not fault.ring.abort(HRESULT_TIMEOUT, "an agent's abort comes too late")
        os.kill(pid, signal.SIGCONT)
        assert fault.child.wait(HANG_GUARD) == 1
        err = fault.stderr()
        assert "mdstream: error:" in err and "the dump failed" in err, err
        assert not fault.out.exists() and fault.leftovers() == []
    finally:
        fault.cleanup()
