"""The ring: round trips, views and their lifetime, endings, bad input."""

import gc
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mdstream
from mdstream import (
    DumpCallback,
    Ring,
    RingAbortedError,
    RingBusyError,
    RingCorruptError,
    RingExistsError,
    RingFinishedError,
    RingFormatError,
    RingNotFoundError,
    RingPermissionError,
    RingTimeoutError,
    Simulation,
)

HEADER = 4096


def expected_records(writes, max_payload):
    """Each write as the records the ring must deliver (large writes split)."""
    out = []
    for offset, data in writes:
        if len(data) == 0:
            out.append((offset, b""))
        pos = 0
        while pos < len(data):
            piece = data[pos:pos + max_payload]
            out.append((offset + pos, piece))
            pos += len(piece)
    return out


def drain_records(ring, timeout=30):
    got = []
    while True:
        batch = ring.read(timeout=timeout)
        if batch is None:
            ring.commit()  # everything is in `got`: the producer's finish() may return
            return got
        with batch:
            # A comprehension: no loop variable keeps a view (and the space) alive.
            got.extend((offset, view.tobytes()) for offset, view in batch)


def make_writes(seed, count, max_size):
    rng = np.random.default_rng(seed)
    writes = []
    for _ in range(count):
        size = int(rng.integers(0, max_size + 1)) if rng.random() < 0.9 else int(rng.integers(0, 16))
        offset = int(rng.integers(0, 1 << 40))
        writes.append((offset, rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
    return writes


write_lists = st.builds(
    make_writes,
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 40),
    max_size=st.sampled_from([0, 16, 1000, 5000, 70000, 3 << 20]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=write_lists, capacity=st.sampled_from([4096, 8192, 65536, 1 << 20]))
def test_round_trip_from_python_thread(writes, capacity):
    ring = Ring.create(None, capacity)

    def produce():
        for offset, data in writes:
            ring.write(offset, data, timeout=30)
        ring.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    got = drain_records(ring)
    producer.join()
    assert got == expected_records(writes, ring.max_payload)
    assert ring.read_position == ring.write_position


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=write_lists, capacity=st.sampled_from([4096, 16384, 1 << 20]))
def test_round_trip_from_native_thread(writes, capacity):
    """The callback routine called from a C thread (no Python thread, no GIL)."""
    ring = Ring.create(None, capacity)
    callback = DumpCallback(ring, coalesce=False, publish_bytes=0)
    buffer = b"".join(data for _, data in writes)
    lengths = [len(data) for _, data in writes]
    sources = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if writes else []
    sim = Simulation(callback.routine_address, callback.param_address, buffer or b"\0",
                     [o for o, _ in writes], lengths, sources, keepalive=callback)
    sim.start()
    got = drain_records(ring)
    assert sim.wait(30)
    assert sim.succeeded
    assert got == expected_records(writes, ring.max_payload)


def test_capacity_rounds_up_to_power_of_two():
    assert Ring.create(None, 5000).capacity == 8192
    assert Ring.create(None, 1).capacity == 4096
    assert Ring.create(None, 1 << 20).capacity == 1 << 20


def test_write_larger_than_ring_is_split_and_never_deadlocks():
    ring = Ring.create(None, 4096)
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    t = threading.Thread(target=lambda: (ring.write(123, data, timeout=30), ring.finish()))
    t.start()
    got = drain_records(ring)
    t.join()
    assert b"".join(d for _, d in got) == data
    assert got[0][0] == 123
    assert all(len(d) <= ring.max_payload for _, d in got)
    assert [o for o, _ in got] == [123 + i * ring.max_payload for i in range(len(got))]


def test_views_are_zero_copy_into_the_mapping():
    ring = Ring.create(None, 1 << 16)
    ring.write(7, b"x" * 100)
    ring.write(9, b"y" * 10)
    batch = ring.read(timeout=1)
    lo, hi = ring.data_address, ring.data_address + ring.capacity
    buf = batch.buffer
    assert lo <= buf.__array_interface__["data"][0] < hi
    for i, (offset, view) in enumerate(batch):
        address = view.__array_interface__["data"][0]
        assert lo <= address and address + len(view) <= hi
        assert view.dtype == np.uint8 and not view.flags.writeable
        assert view.base is not None
    assert batch.view(0).tobytes() == b"x" * 100
    assert list(batch.offsets) == [7, 9] and list(batch.lengths) == [100, 10]
    assert batch.offsets.dtype == np.uint64 and batch.lengths.dtype == np.uint32
    del buf, view
    batch.release()


def test_release_is_deferred_while_a_view_is_alive():
    ring = Ring.create(None, 4096)
    ring.write(0, b"A" * 1000)
    batch = ring.read(timeout=1)
    view = batch.view(0)
    assert batch.pending_views == 1
    batch.release()
    assert not batch.released
    assert ring.read_position == 0  # the space is still held
    # The producer cannot reuse the bytes the view shows: it has to wait.
    ring.write(1, b"B" * 2000)
    with pytest.raises(RingTimeoutError):
        ring.write(2, b"C" * 2000, timeout=0.2)
    assert view.tobytes() == b"A" * 1000
    del view
    gc.collect()
    assert batch.released
    assert ring.read_position > 0
    ring.read(timeout=1).release()
    ring.write(2, b"C" * 2000, timeout=1)
    with pytest.raises(ValueError):
        batch.buffer


def test_numpy_views_hold_an_export():
    """np.frombuffer must take a buffer export (the trap with np.ndarray(buffer=))."""
    ring = Ring.create(None, 4096)
    ring.write(0, b"abc")
    batch = ring.read(timeout=1)
    arr = batch.buffer
    assert batch.pending_views == 1
    sliced = arr[16:19]
    del arr
    assert batch.pending_views == 1
    assert sliced.tobytes() == b"abc"
    del sliced
    assert batch.pending_views == 0
    batch.release()
    assert batch.released


def test_batches_may_be_released_out_of_order():
    ring = Ring.create(None, 1 << 16)
    ring.write(0, b"1" * 100)
    first = ring.read(timeout=1)
    ring.write(1, b"2" * 100)
    second = ring.read(timeout=1)
    ring.write(2, b"3" * 100)
    third = ring.read(timeout=1)
    second.release()
    assert ring.read_position == 0
    third.release()
    assert ring.read_position == 0
    first.release()
    assert ring.read_position == ring.write_position


def test_wraparound_pads_and_keeps_records_contiguous():
    ring = Ring.create(None, 4096)
    got = []
    for i in range(200):
        ring.write(i * 1000, bytes([i % 256]) * (300 + i % 700))
        batch = ring.read(timeout=1)
        with batch:
            got.extend((offset, view.tobytes()) for offset, view in batch)
    assert got == [(i * 1000, bytes([i % 256]) * (300 + i % 700)) for i in range(200)]


def test_finish_then_end_and_no_more_writes():
    ring = Ring.create(None, 4096)
    ring.write(0, b"last")
    ring.seal()  # this thread consumes itself: it cannot wait for its own commit
    assert ring.state == "finished"
    with pytest.raises(RingFinishedError):
        ring.write(4, b"more")
    assert drain_records(ring) == [(0, b"last")]
    assert ring.read(timeout=0) is None


def test_abort_reaches_the_consumer_with_code_and_reason():
    ring = Ring.create(None, 4096)
    ring.write(0, b"x")
    assert ring.abort(0x80004005, "disk on fire")
    with pytest.raises(RingAbortedError) as info:
        ring.read(timeout=1)
    assert info.value.code == 0x80004005 and info.value.reason == "disk on fire"
    assert not ring.abort(1, "second abort loses")
    with pytest.raises(RingAbortedError):
        ring.write(0, b"y")


def test_consumer_abort_stops_a_waiting_producer():
    ring = Ring.create(None, 4096)
    ring.write(0, b"a" * 3000)
    errors = []

    def produce():
        try:
            ring.write(1, b"b" * 3000, timeout=30)
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.2)
    ring.abort(0x80004004, "consumer gave up")
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], RingAbortedError) and errors[0].reason == "consumer gave up"


def test_read_timeout_raises_and_blocked_wait_sleeps():
    ring = Ring.create(None, 4096)
    cpu = time.process_time()
    with pytest.raises(RingTimeoutError):
        ring.read(timeout=1.0)
    # Sleeping, not spinning: far less CPU than the wall time waited.
    assert time.process_time() - cpu < 0.5


def test_full_ring_producer_times_out_without_dropping():
    ring = Ring.create(None, 4096)
    ring.write(0, b"a" * 3000)  # two records: 2048 + 976 bytes of the ring
    cpu = time.process_time()
    with pytest.raises(RingTimeoutError) as info:
        ring.write(1, b"b" * 1500, timeout=1.0)
    assert info.value.bytes_written == 0
    assert time.process_time() - cpu < 0.5
    assert drain_records_now(ring) == expected_records([(0, b"a" * 3000)], ring.max_payload)


def test_partial_delivery_of_a_split_write_is_reported():
    ring = Ring.create(None, 4096)
    ring.write(0, b"a" * 1900)  # after the 48-byte BEGIN record: room for one more max_payload record
    with pytest.raises(RingTimeoutError) as info:
        ring.write(5000, b"b" * 2500, timeout=0.2)
    assert info.value.bytes_written == ring.max_payload
    got = drain_records_now(ring)
    assert got == [(0, b"a" * 1900), (5000, b"b" * ring.max_payload)]


def drain_records_now(ring):
    got = []
    while True:
        try:
            batch = ring.read(timeout=0)
        except RingTimeoutError:
            return got
        with batch:
            got.extend((o, v.tobytes()) for o, v in batch)


def test_blocked_read_is_interruptible():
    ring = Ring.create(None, 4096)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ring.read()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < 5


def test_close_with_live_views_raises():
    ring = Ring.create(None, 4096)
    ring.write(0, b"abc")
    batch = ring.read(timeout=1)
    view = batch.view(0)
    with pytest.raises(BufferError):
        ring.close()
    del view
    batch.release()
    ring.close()
    assert ring.closed
    with pytest.raises(ValueError):
        ring.write(0, b"x")


# ---- named rings, other processes --------------------------------------------

def test_named_ring_is_private_and_exclusive(ring_name, tmp_path):
    ring = Ring.create(ring_name, 8192)
    st = os.stat(f"/dev/shm/{ring_name}")
    assert st.st_mode & 0o777 == 0o600
    with pytest.raises(RingExistsError):
        Ring.create(ring_name, 8192)
    path = tmp_path / "ring.bin"
    file_ring = Ring.create(str(path), 8192)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.path.getsize(path) == HEADER + 8192
    file_ring.close()
    assert not path.exists()  # the creator removes the name
    ring.close()
    assert not os.path.exists(f"/dev/shm/{ring_name}")


def test_create_never_follows_a_planted_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    link = tmp_path / "ring"
    link.symlink_to(target)
    with pytest.raises(RingExistsError):
        Ring.create(str(link), 8192)
    assert target.read_bytes() == b"precious"


def test_attach_refuses_symlinks_and_shared_files(tmp_path):
    path = tmp_path / "ring"
    ring = Ring.create(str(path), 8192, unlink_on_close=False)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(RingPermissionError):
        Ring.attach(str(link))
    os.chmod(path, 0o644)
    with pytest.raises(RingPermissionError, match="other users"):
        Ring.attach(str(path))
    os.chmod(path, 0o600)
    Ring.attach(str(path)).close()
    ring.close()


def _corrupt_copy(tmp_path, mutate):
    src = tmp_path / "good"
    ring = Ring.create(str(src), 8192, unlink_on_close=False)
    ring.close()
    data = bytearray(src.read_bytes())
    mutate(data)
    bad = tmp_path / "bad"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, bytes(data))
    os.close(fd)
    return str(bad)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.__setitem__(slice(0, 8), b"NOTARING"), "bad magic"),
        (lambda d: d.__setitem__(slice(8, 12), struct.pack("<I", 99)), "version 99"),
        (lambda d: d.__setitem__(slice(16, 24), struct.pack("<Q", 1 << 60)), "absurd capacity"),
        (lambda d: d.__setitem__(slice(16, 24), struct.pack("<Q", 12345)), "absurd capacity"),
        (lambda d: d.__delitem__(slice(6000, None)), "truncated"),
        (lambda d: d.__delitem__(slice(100, None)), "truncated"),
        (lambda d: d.__setitem__(slice(128, 136), struct.pack("<Q", 1 << 20)), "inconsistent positions"),
    ],
    ids=["magic", "version", "huge-capacity", "odd-capacity", "truncated-data", "truncated-header", "positions"],
)
def test_attach_validates_the_header(tmp_path, mutate, match):
    path = _corrupt_copy(tmp_path, mutate)
    with pytest.raises(RingFormatError, match=match):
        Ring.attach(path)


def test_attach_errors(tmp_path):
    with pytest.raises(RingNotFoundError):
        Ring.attach(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    fd = os.open(empty, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(RingFormatError, match="truncated"):
        Ring.attach(str(empty))


def test_attach_to_finished_or_aborted_ring(tmp_path):
    done = Ring.create(str(tmp_path / "done"), 8192)
    done.write(0, b"x")
    done.seal()
    reader = Ring.attach(str(tmp_path / "done"))  # data left: attach works, drains
    assert drain_records(reader) == [(0, b"x")]
    reader.close()
    with pytest.raises(RingFinishedError, match="already finished"):
        Ring.attach(str(tmp_path / "done"))
    gone = Ring.create(str(tmp_path / "gone"), 8192)
    gone.abort(0x80004004, "nope")
    with pytest.raises(RingAbortedError, match="nope"):
        Ring.attach(str(tmp_path / "gone"))


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda r: r.write(-1, b"x"), ValueError),
        (lambda r: r.write(2**64, b"x"), ValueError),
        (lambda r: r.write(2**64 - 2, b"xyz"), ValueError),
        (lambda r: r.write(1.5, b"x"), TypeError),
        (lambda r: r.write(0, "text"), TypeError),
        (lambda r: r.write(0, 12), TypeError),
        (lambda r: r.write(0, None), TypeError),
        (lambda r: r.read(timeout=-1), ValueError),
        (lambda r: r.abort(2**40, "x"), ValueError),
    ],
)
def test_bad_arguments(call, exc):
    ring = Ring.create(None, 4096)
    with pytest.raises(exc):
        call(ring)
    assert ring.write_position == 0


@pytest.mark.parametrize("capacity", [0, -5, 1 << 40])
def test_absurd_capacity_on_create(capacity):
    with pytest.raises(ValueError):
        Ring.create(None, capacity)


def test_a_second_consumer_or_producer_is_refused(ring_name):
    owner = Ring.create(ring_name, 8192)
    owner.write(0, b"mine")
    other = Ring.attach(ring_name)
    with pytest.raises(RingBusyError, match="producer"):
        other.write(0, b"theirs")
    owner.read(timeout=1).release()
    with pytest.raises(RingBusyError, match="consumer"):
        other.read(timeout=0)
    other.close()
    owner.close()


def test_corrupt_record_raises_not_crashes(tmp_path):
    path = str(tmp_path / "r")
    ring = Ring.create(path, 8192)
    producer = Ring.attach(path)
    producer.write(0, b"hello")
    # Rewrite the record header under the consumer: a wrong kind, then a huge length.
    with open(path, "r+b") as f:
        f.seek(HEADER + 12)
        f.write(struct.pack("<I", 0xDEADBEEF))
    with pytest.raises(RingCorruptError, match="kind"):
        ring.read(timeout=1)
    producer.close()


def _run_child(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args])


def test_child_process_produces_parent_consumes(ring_name):
    ring = Ring.create(ring_name, 65536)
    child = _run_child(
        """
        import sys, numpy as np
        from mdstream import Ring
        ring = Ring.attach(sys.argv[1])
        rng = np.random.default_rng(5)
        for i in range(2000):
            ring.write(i * 4096, rng.integers(0, 256, int(rng.integers(0, 9000)), dtype=np.uint8).tobytes(), timeout=30)
        ring.finish()
        """,
        ring_name,
    )
    got = drain_records(ring)
    assert child.wait(30) == 0
    rng = np.random.default_rng(5)
    expected = [(i * 4096, rng.integers(0, 256, int(rng.integers(0, 9000)), dtype=np.uint8).tobytes())
                for i in range(2000)]
    assert got == expected_records(expected, ring.max_payload)
    assert ring.producer_pid == child.pid


def test_parent_produces_child_consumes(ring_name, tmp_path):
    ring = Ring.create(ring_name, 16384)
    out = tmp_path / "out.bin"
    child = _run_child(
        """
        import sys
        from mdstream import Ring, FileSink, drain
        ring = Ring.attach(sys.argv[1])
        drain(ring, [FileSink(sys.argv[2])], timeout=30)
        """,
        ring_name,
        str(out),
    )
    rng = np.random.default_rng(9)
    expected = np.zeros(1 << 20, dtype=np.uint8)
    for _ in range(500):
        off = int(rng.integers(0, (1 << 20) - 5000))
        data = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8)
        expected[off:off + len(data)] = data
        ring.write(off, data, timeout=30)
    ring.write(len(expected) - 1, expected[-1:].tobytes(), timeout=30)
    ring.finish()
    assert child.wait(30) == 0
    assert out.read_bytes() == expected.tobytes()


def test_no_reference_or_memory_leak_over_a_million_records():
    import tracemalloc

    ring = Ring.create(None, 1 << 20)
    callback = DumpCallback(ring, coalesce=False, publish_bytes=0)
    n = 1_000_000
    offsets = np.arange(n, dtype=np.uint64) * 16
    lengths = np.full(n, 8, dtype=np.uint32)
    sources = np.zeros(n, dtype=np.uint64)
    buffer = np.arange(8, dtype=np.uint8)

    def run_once(count):
        sim = Simulation(callback.routine_address, callback.param_address, buffer, offsets[:count],
                         lengths[:count], sources[:count], keepalive=callback)
        callback.reset()
        sim.start()
        seen = 0
        while True:
            batch = ring.read(timeout=30)
            if batch is None:
                ring.commit()
                break
            with batch:
                seen += len(batch)
                batch.offsets, batch.lengths, batch.buffer
                for _ in zip(range(10), batch):
                    pass
        sim.wait()
        return seen

    # Warm up caches, then measure a full million (a ring carries one dump).
    ring2 = ring
    assert run_once(1000) == 1000
    ring = Ring.create(None, 1 << 20)
    callback.reset(ring=ring)
    gc.collect()
    refs_ring = sys.getrefcount(ring)
    objects = len(gc.get_objects())
    tracemalloc.start()
    assert run_once(n) == n
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sys.getrefcount(ring) == refs_ring
    assert len(gc.get_objects()) - objects < 100
    assert current < 1 << 20
    del ring2


def test_a_view_left_alive_while_the_producer_waits_is_diagnosed():
    """The classic trap: a loop variable keeps the last view (and its space) alive."""
    ring = Ring.create(None, 4096)
    two_written = threading.Event()

    def produce():
        try:
            ring.write(0, b"z" * 1500, timeout=10)
            ring.write(1, b"z" * 1500, timeout=10)
            two_written.set()
            ring.write(2, b"z" * 1500, timeout=10)  # needs space the first batch holds
        except Exception:
            pass

    t = threading.Thread(target=produce)
    t.start()
    assert two_written.wait(10)
    batch = ring.read(timeout=10)
    assert len(batch) == 2
    with batch:
        for offset, view in batch:
            pass
    assert not batch.released  # deferred: `view` is still alive
    with pytest.raises(BufferError, match="live numpy views"):
        ring.read(timeout=10)
    ring.abort(0x80004004, "test over")
    t.join(15)
    assert not t.is_alive()
    del view
    assert batch.released


@pytest.mark.parametrize("how", ["exit-without-finish", "sigkill"])
def test_a_dead_producer_is_noticed_even_before_it_is_reaped(ring_name, how):
    from mdstream import ProducerGoneError

    ring = Ring.create(ring_name, 65536)
    child = _run_child(
        """
        import os, signal, sys, time
        from mdstream import Ring
        ring = Ring.attach(sys.argv[1])
        ring.write(0, b"partial", timeout=10)
        if sys.argv[2] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)   # no close(): the ring is not marked detached
        """,
        ring_name,
        how,
    )
    got = []
    start = time.monotonic()
    with pytest.raises(ProducerGoneError, match=str(child.pid)):
        while True:
            batch = ring.read(timeout=20)
            with batch:
                got.extend((o, v.tobytes()) for o, v in batch)
    assert time.monotonic() - start < 10
    assert got == [(0, b"partial")]
    child.wait()  # reaped only now: the zombie was detected
