"""The streaming callback through the raw DbgHelp ABI, its defaults, and the simulator."""

import ctypes
import hashlib
import threading
import time

import numpy as np
import pytest

import dbghelp_ctypes as abi
from conftest import NO_FIXTURES, fixture_dumps, fixture_params
from mdstream import (
    DumpCallback,
    DumpFailedError,
    FileSink,
    MemorySink,
    Ring,
    RingAbortedError,
    Simulation,
    replay,
)
from mdstream.dbghelp import CallbackType as CT

S_OK, S_FALSE = 0, 1
E_NOTIMPL = ctypes.c_int32(0x80004001).value
E_ABORT = 0x80004004
HRESULT_TIMEOUT = 0x800705B4
HRESULT_BROKEN_PIPE = 0x8007006D


def u32(value):
    return value & 0xFFFFFFFF


def routine_of(callback):
    return abi.CALLBACK_ROUTINE(callback.routine_address)


def call(routine, param, callback_type, output_status=E_NOTIMPL, **fields):
    inp = abi.new_input(int(callback_type))
    for name, value in fields.items():
        if name.startswith("Io_"):
            setattr(inp.Io, name[3:], value)
        else:
            setattr(inp, name, value)
    out = abi.new_output(output_status)
    answer = routine(param, ctypes.byref(inp), ctypes.byref(out))
    return answer, out


def drain_memory(ring):
    sink = MemorySink()
    while (batch := ring.read(timeout=5)) is not None:
        with batch:
            sink.consume(batch)
    ring.commit()
    return sink.tobytes()


class Consumer(threading.Thread):
    """drain_memory on a thread: IoFinishCallback answers only once the dump is committed."""

    def __init__(self, ring):
        super().__init__(daemon=True)
        self.ring, self.data, self.error = ring, None, None
        self.start()

    def run(self):
        try:
            self.data = drain_memory(self.ring)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self):
        self.join(30)
        if self.error is not None:
            raise self.error
        return self.data


def test_information_structure_points_at_routine_and_context():
    ring = Ring.create(None, 8192)
    callback = DumpCallback(ring)
    info = abi.MINIDUMP_CALLBACK_INFORMATION.from_address(callback.information_address)
    assert ctypes.cast(info.CallbackRoutine, ctypes.c_void_p).value == callback.routine_address
    assert info.CallbackParam == callback.param_address
    assert callback.ring is ring


def test_io_protocol_through_the_raw_abi():
    ring = Ring.create(None, 1 << 16)
    callback = DumpCallback(ring)
    routine, param = routine_of(callback), callback.param_address

    answer, out = call(routine, param, CT.IoStartCallback, E_NOTIMPL, Io_Handle=None)
    assert answer == 1 and out.Status == S_FALSE
    answer, out = call(routine, param, CT.IoStartCallback, S_OK)  # whatever was preset
    assert answer == 1 and out.Status == S_FALSE
    consumer = Consumer(ring)

    pieces = [(32, b"B" * 100), (0, b"MDMP" + b"\0" * 28), (500, b""), (132, b"C" * 50), (10, b"patched")]
    keep = []
    for offset, data in pieces:
        buf = ctypes.create_string_buffer(data, len(data)) if data else None
        keep.append(buf)
        answer, out = call(routine, param, CT.IoWriteAllCallback, E_NOTIMPL, Io_Offset=offset,
                           Io_Buffer=ctypes.cast(buf, ctypes.c_void_p) if buf else None, Io_BufferBytes=len(data))
        assert answer == 1 and out.Status == S_OK
    answer, out = call(routine, param, CT.IoFinishCallback, E_NOTIMPL)
    assert answer == 1 and out.Status == S_OK

    expected = bytearray(500)
    for offset, data in pieces:
        expected[offset:offset + len(data)] = data
    assert consumer.result() == bytes(expected)
    counters = callback.counters
    assert counters["writes"] == 5 and counters["bytes"] == sum(len(d) for _, d in pieces)
    assert counters["highest_end"] == 500
    assert counters["calls"] == {"IoStartCallback": 2, "IoWriteAllCallback": 5, "IoFinishCallback": 1}
    assert callback.finished and not callback.failed


@pytest.mark.parametrize(
    "callback_type, preset, expected_answer, check",
    [
        (CT.IncludeModuleCallback, 0, 1, None),
        (CT.IncludeThreadCallback, 0, 1, None),
        (CT.ModuleCallback, 0, 1, lambda out: out.ModuleWriteFlags == 0x7F),
        (CT.ThreadCallback, 0, 1, lambda out: out.ThreadWriteFlags == 0x7F),
        (CT.ThreadExCallback, 0, 1, lambda out: out.ThreadWriteFlags == 0x7F),
        (CT.MemoryCallback, 0, 0, None),
        (CT.CancelCallback, 0, 1, lambda out: out.CheckCancel == 0 and out.Cancel == 0),
        (CT.ReadMemoryFailureCallback, E_NOTIMPL, 1, lambda out: out.Status == S_OK),
        (CT.IsProcessSnapshotCallback, E_NOTIMPL, 1, lambda out: out.Status == S_FALSE),
        (CT.VmStartCallback, E_NOTIMPL, 1, lambda out: out.Status == S_FALSE),
        (CT.SecondaryFlagsCallback, 0, 1, None),
        (CT.RemoveMemoryCallback, 0, 0, None),
        (CT.IncludeVmRegionCallback, 0, 0, None),
        (CT.WriteKernelMinidumpCallback, 0, 0, None),
        (CT.KernelMinidumpStatusCallback, 0, 0, None),
        (CT.VmQueryCallback, 0, 0, None),
        (CT.VmPreReadCallback, 0, 0, None),
        (CT.VmPostReadCallback, 0, 0, None),
    ],
)
def test_default_answers(callback_type, preset, expected_answer, check):
    callback = DumpCallback(Ring.create(None, 4096))
    inp = abi.new_input(int(callback_type))
    out = abi.new_output(preset)
    if callback_type in (CT.ModuleCallback,):
        out.ModuleWriteFlags = 0x7F
    if callback_type in (CT.ThreadCallback, CT.ThreadExCallback):
        out.ThreadWriteFlags = 0x7F
    if callback_type == CT.CancelCallback:
        out.CheckCancel = out.Cancel = 1
    answer = routine_of(callback)(callback.param_address, ctypes.byref(inp), ctypes.byref(out))
    assert answer == expected_answer
    if check:
        assert check(out)
    assert callback.counters["calls"] == {callback_type.name: 1}


def test_options_change_the_defaults_without_python_at_call_time():
    callback = DumpCallback(
        Ring.create(None, 4096),
        include_modules=False,
        include_threads=False,
        module_write_flags_mask=0x1,
        thread_write_flags_mask=0x3,
        read_memory_failure_status=0x80004005,
        extra_memory=[(0x1000, 0x200), (0x7FFF0000, 64)],
    )
    routine, param = routine_of(callback), callback.param_address
    assert call(routine, param, CT.IncludeModuleCallback)[0] == 0
    assert call(routine, param, CT.IncludeThreadCallback)[0] == 0
    inp, out = abi.new_input(int(CT.ModuleCallback)), abi.new_output(0)
    out.ModuleWriteFlags = 0xFF
    routine(param, ctypes.byref(inp), ctypes.byref(out))
    assert out.ModuleWriteFlags == 0x1
    inp, out = abi.new_input(int(CT.ThreadCallback)), abi.new_output(0)
    out.ThreadWriteFlags = 0xFF
    routine(param, ctypes.byref(inp), ctypes.byref(out))
    assert out.ThreadWriteFlags == 0x3
    answer, out = call(routine, param, CT.ReadMemoryFailureCallback)
    assert answer == 1 and u32(out.Status) == 0x80004005
    ranges = []
    while True:
        answer, out = call(routine, param, CT.MemoryCallback, 0)
        if not answer:
            break
        ranges.append((out.MemoryBase, out.MemorySize))
    assert ranges == [(0x1000, 0x200), (0x7FFF0000, 64)]


def test_python_hook_for_non_io_callbacks_and_its_exceptions():
    seen = []

    def hook(callback_type, input_address, output_address):
        seen.append((callback_type, threading.get_ident()))
        if callback_type == CT.IncludeModuleCallback:
            return False
        if callback_type == CT.CancelCallback:
            raise RuntimeError("hook blew up")
        return None

    ring = Ring.create(None, 8192)
    callback = DumpCallback(ring, hook=hook)
    routine, param = routine_of(callback), callback.param_address
    assert call(routine, param, CT.IncludeModuleCallback)[0] == 0
    assert call(routine, param, CT.IncludeThreadCallback)[0] == 1  # None: the default
    assert call(routine, param, CT.CancelCallback)[0] == 0  # exception: FALSE
    # I/O callbacks never reach the hook.
    call(routine, param, CT.IoStartCallback)
    buf = ctypes.create_string_buffer(b"abc", 3)
    call(routine, param, CT.IoWriteAllCallback, Io_Offset=0, Io_Buffer=ctypes.cast(buf, ctypes.c_void_p),
         Io_BufferBytes=3)
    assert [t for t, _ in seen] == [CT.IncludeModuleCallback, CT.IncludeThreadCallback, CT.CancelCallback]
    with pytest.raises(RuntimeError, match="hook blew up"):
        callback.raise_pending()
    callback.raise_pending()  # raised once


def test_hook_runs_on_the_native_thread_through_the_trampoline():
    threads = []
    callback = DumpCallback(Ring.create(None, 4096), hook=lambda t, i, o: threads.append(threading.get_ident()))
    # A native thread calling a non-I/O type: drive it with a one-off routine table.
    routine, param = routine_of(callback), callback.param_address
    worker = threading.Thread(target=lambda: call(routine, param, CT.ThreadCallback, 0))
    worker.start()
    worker.join()
    assert threads == [worker.ident]


def test_write_fails_with_e_abort_when_the_consumer_aborted():
    ring = Ring.create(None, 8192)
    callback = DumpCallback(ring)
    routine, param = routine_of(callback), callback.param_address
    call(routine, param, CT.IoStartCallback)
    ring.abort(0x80070070, "disk full on the consumer side")
    buf = ctypes.create_string_buffer(b"x" * 10, 10)
    answer, out = call(routine, param, CT.IoWriteAllCallback, Io_Offset=0,
                       Io_Buffer=ctypes.cast(buf, ctypes.c_void_p), Io_BufferBytes=10)
    assert answer == 0 and u32(out.Status) == E_ABORT
    hresult, reason = callback.failure
    assert hresult == E_ABORT and "disk full on the consumer side" in reason
    assert isinstance(callback.failure_exception, RingAbortedError)


def test_write_fails_at_the_deadline_when_nobody_drains():
    ring = Ring.create(None, 4096)
    callback = DumpCallback(ring, deadline=0.3)
    routine, param = routine_of(callback), callback.param_address
    call(routine, param, CT.IoStartCallback)
    buf = ctypes.create_string_buffer(b"y" * 1000, 1000)
    answers = []
    start = time.monotonic()
    for i in range(10):
        answer, out = call(routine, param, CT.IoWriteAllCallback, Io_Offset=i * 1000,
                           Io_Buffer=ctypes.cast(buf, ctypes.c_void_p), Io_BufferBytes=1000)
        answers.append((answer, u32(out.Status)))
        if not answer:
            break
    assert time.monotonic() - start < 10
    assert answers[-1] == (0, HRESULT_TIMEOUT)
    assert "deadline" in callback.failure[1]


def test_write_fails_fast_when_the_consumer_detached(ring_name):
    ring = Ring.create(ring_name, 4096)
    consumer = Ring.attach(ring_name)
    with pytest.raises(Exception):
        consumer.read(timeout=0)
    consumer.close()  # the consumer goes away
    callback = DumpCallback(ring, deadline=30)
    routine, param = routine_of(callback), callback.param_address
    call(routine, param, CT.IoStartCallback)
    buf = ctypes.create_string_buffer(b"z" * 1500, 1500)
    start = time.monotonic()
    for i in range(5):
        answer, out = call(routine, param, CT.IoWriteAllCallback, Io_Offset=0,
                           Io_Buffer=ctypes.cast(buf, ctypes.c_void_p), Io_BufferBytes=1500)
        if not answer:
            break
    assert answer == 0 and u32(out.Status) == HRESULT_BROKEN_PIPE
    assert time.monotonic() - start < 5


# ---- the simulator ----------------------------------------------------------------

def recording_routine(fail_at=None, fail_status=None):
    calls = []

    @abi.CALLBACK_ROUTINE
    def routine(param, inp, out):
        i = inp.contents
        o = out.contents
        data = ctypes.string_at(i.Io.Buffer, i.Io.BufferBytes) if i.CallbackType == CT.IoWriteAllCallback else None
        calls.append({
            "thread": threading.get_ident(),
            "type": i.CallbackType,
            "pid": i.ProcessId,
            "handle": i.ProcessHandle,
            "io_handle": i.Io.Handle,
            "preset": o.Status,
            "offset": i.Io.Offset,
            "data": data,
        })
        index = len(calls) - 2
        if i.CallbackType == CT.IoStartCallback:
            o.Status = S_FALSE
            return 1
        if fail_at is not None and index == fail_at:
            if fail_status is not None:
                o.Status = fail_status
                return 1
            o.Status = ctypes.c_int32(0x80004005).value
            return 0
        o.Status = S_OK
        return 1

    return routine, calls


def test_simulator_calls_the_routine_as_dbghelp_does():
    routine, calls = recording_routine()
    address = ctypes.cast(routine, ctypes.c_void_p).value
    buffer = b"0123456789abcdef"
    sim = Simulation(address, 0xC0FFEE, buffer, [100, 0, 50], [4, 10, 0], [0, 6, 3], io_handle=0x1234)
    sim.start()
    assert sim.wait(10)
    assert sim.succeeded and sim.failure is None and sim.completed == 3
    assert [c["type"] for c in calls] == [CT.IoStartCallback] + [CT.IoWriteAllCallback] * 3 + [CT.IoFinishCallback]
    assert all(c["preset"] == E_NOTIMPL for c in calls)
    assert all(c["pid"] == 0 and not c["handle"] for c in calls)
    assert all(c["io_handle"] == 0x1234 for c in calls)
    assert [(c["offset"], c["data"]) for c in calls[1:4]] == [(100, b"0123"), (0, b"6789abcdef"), (50, b"")]
    assert len({c["thread"] for c in calls}) == 1 and calls[0]["thread"] != threading.get_ident()


@pytest.mark.parametrize("fail_status", [None, S_FALSE])
def test_simulator_stops_at_the_first_failure(fail_status):
    routine, calls = recording_routine(fail_at=1, fail_status=fail_status)
    address = ctypes.cast(routine, ctypes.c_void_p).value
    sim = Simulation(address, 0, b"x" * 10, [0, 1, 2, 3], [1, 1, 1, 1], [0, 1, 2, 3])
    sim.start()
    sim.wait()
    assert not sim.succeeded
    assert sim.failure["callback_type"] == CT.IoWriteAllCallback and sim.failure["index"] == 1
    assert sim.failure["returned"] is (fail_status is not None)
    assert len(calls) == 3  # IoStart, write 0, write 1; nothing after, no IoFinish


def test_simulator_validates_the_plan():
    callback = DumpCallback(Ring.create(None, 4096))
    with pytest.raises(ValueError, match="outside"):
        Simulation(callback.routine_address, callback.param_address, b"abc", [0], [4], [0]).start()
    with pytest.raises(ValueError):
        Simulation(callback.routine_address, callback.param_address, b"abc", [0, 1], [1], [0])
    with pytest.raises(ValueError):
        Simulation(0, 0, b"abc", [0], [1], [0])


def test_replay_reports_a_consumer_abort_and_nothing_hangs(tmp_path):
    from mdstream.schedules import synthetic_plan

    plan = synthetic_plan("sized", write_size=1024, total_bytes=32 << 20)

    class FailingSink(MemorySink):
        def consume(self, batch):
            if self.size > 1 << 20:
                raise OSError(28, "No space left on device")
            super().consume(batch)

    start = time.monotonic()
    with pytest.raises(OSError, match="No space"):
        replay(plan, sinks=[FailingSink()], ring_capacity=1 << 16)
    assert time.monotonic() - start < 20

    ring = Ring.create(None, 1 << 16)
    callback = DumpCallback(ring)
    with pytest.raises(OSError, match="No space"):
        replay(plan, callback, sinks=[FailingSink()])
    # The callback saw the consumer's abort and answered FALSE with E_ABORT.
    hresult, reason = callback.failure
    assert hresult == E_ABORT and "No space left on device" in reason
    assert ring.state == "aborted"


def test_replay_failure_from_the_callback_side_raises_dump_failed():
    from mdstream.schedules import synthetic_plan

    plan = synthetic_plan("sized", write_size=1024, total_bytes=4 << 20)
    ring = Ring.create(None, 1 << 14)
    callback = DumpCallback(ring, deadline=0.2)
    with pytest.raises(DumpFailedError) as info:
        replay(plan, callback, drain_here=False)
    assert info.value.hresult == HRESULT_TIMEOUT
    assert info.value.callback_type == CT.IoWriteAllCallback
    assert "deadline" in info.value.reason


@pytest.mark.parametrize("schedule", ["sequential", "writer", "shuffled"])
@pytest.mark.parametrize("dump", fixture_params())
def test_replay_of_real_dumps_is_byte_identical(dump, schedule, tmp_path):
    original = dump.read_bytes()
    result = replay(dump, schedule=schedule, ring_capacity=8192)
    assert result.outputs[0].tobytes() == original
    out = tmp_path / "out.dmp"
    result = replay(dump, schedule=schedule, sinks=[FileSink(out)], ring_capacity=1 << 16, coalesce=False)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(original).hexdigest()
    assert result.output_size == len(original)
    assert result.writes >= result.records or schedule == "sequential"


def test_fixtures_present_or_skipped():
    if not fixture_dumps():
        pytest.skip(NO_FIXTURES)
    assert len(fixture_dumps()) >= 3
