"""mdstream.windows: what can be checked without Windows.

- the module imports everywhere and ``write_dump`` names the platform it cannot run on;
- the ctypes declarations (``_pack_ = 4``) have Microsoft's layout for this ABI;
- the whole of ``write_dump`` (process resolution, worker thread, DbgHelp lock,
  concurrent drain, error mapping, the CLI's call) runs against a stand-in for
  kernel32/dbghelp whose ``MiniDumpWriteDump`` drives the real callback routine
  through the DbgHelp simulator (a native thread: IoStart with E_NOTIMPL preset,
  one IoWriteAll per write, IoFinish), reading the routine and parameter from the
  ``MINIDUMP_CALLBACK_INFORMATION`` it is handed, as DbgHelp does.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import mdstream
from mdstream import dbghelp, windows
from mdstream.dbghelp import MinidumpType
from mdstream.sample import build_sample_minidump
from mdstream.schedules import plan_for

not_windows = pytest.mark.skipif(sys.platform == "win32", reason="checks the behaviour off Windows")


# ---- import and platform errors --------------------------------------------------


@not_windows
def test_write_dump_names_the_platform() -> None:
    with pytest.raises(NotImplementedError) as info:
        windows.write_dump(1234, "out.dmp")
    assert sys.platform in str(info.value)
    assert "MiniDumpWriteDump" in str(info.value)


@not_windows
def test_is_supported_false_off_windows() -> None:
    assert windows.is_supported() is False


def test_module_surface() -> None:
    for name in windows.__all__:
        assert hasattr(windows, name), name
    assert windows.PROCESS_DUMP_ACCESS == 0x400 | 0x10 | 0x40
    assert windows.DEFAULT_DUMP_TYPE == MinidumpType.parse("WithDataSegs|WithHandleData|WithUnloadedModules|WithThreadInfo")


# ---- layouts ----------------------------------------------------------------------------


def _ctypes_layout() -> dict[str, int]:
    out: dict[str, int] = {}
    for struct in (windows.MINIDUMP_EXCEPTION_INFORMATION, windows.MINIDUMP_USER_STREAM,
                   windows.MINIDUMP_USER_STREAM_INFORMATION, windows.MINIDUMP_CALLBACK_INFORMATION):
        name = struct.__name__
        out[f"sizeof {name}"] = ctypes.sizeof(struct)
        for field, _ in struct._fields_:
            out[f"{name}.{field}"] = getattr(struct, field).offset
    return out


def _host_abi() -> str:
    if ctypes.sizeof(ctypes.c_void_p) == 4:
        return "x86"
    import platform

    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x64"


def test_ctypes_layout_matches_microsoft_reference() -> None:
    reference = dbghelp.reference_layout(_host_abi())
    layout = _ctypes_layout()
    assert layout, "no fields"
    for key, value in layout.items():
        assert reference[key] == value, f"{key}: ctypes {value}, Microsoft {reference[key]}"


def test_exception_information_x64_numbers() -> None:
    if _host_abi() != "x64":
        pytest.skip("the x64 numbers need a 64-bit x86 host")
    s = windows.MINIDUMP_EXCEPTION_INFORMATION
    assert (ctypes.sizeof(s), s.ExceptionPointers.offset, s.ClientPointers.offset) == (16, 4, 12)
    assert ctypes.sizeof(windows.MINIDUMP_USER_STREAM_INFORMATION) == 12
    assert windows.MINIDUMP_USER_STREAM_INFORMATION.UserStreamArray.offset == 4


def test_ctypes_layout_matches_compiled_header() -> None:
    compiled = dbghelp.layout()
    for key, value in _ctypes_layout().items():
        assert compiled[key] == value, f"{key}: ctypes {value}, C compiler {compiled[key]}"


def test_exception_argument_forms() -> None:
    info = windows._exception_info((7, 0x1000))
    assert (info.ThreadId, info.ExceptionPointers, info.ClientPointers) == (7, 0x1000, 1)
    info = windows._exception_info((7, 0x1000, False))
    assert info.ClientPointers == 0
    same = windows.MINIDUMP_EXCEPTION_INFORMATION(1, 2, 0)
    assert windows._exception_info(same) is same
    assert windows._exception_info(None) is None
    with pytest.raises(TypeError):
        windows._exception_info("nope")  # type: ignore[arg-type]


def test_user_streams_are_kept_alive_and_laid_out() -> None:
    info, keep = windows._user_streams([(0x10000, b"hello"), (0x10001, b"")])
    assert info.UserStreamCount == 2
    first = info.UserStreamArray[0]
    assert (first.Type, first.BufferSize) == (0x10000, 5)
    assert ctypes.string_at(first.Buffer, 5) == b"hello"
    assert keep
    assert windows._user_streams(None) == (None, [])


def test_error_is_an_oserror_and_a_dump_failure() -> None:
    err = windows.WriteDumpError("boom", 0x800705B4, "no space")
    assert isinstance(err, OSError) and isinstance(err, mdstream.DumpFailedError)
    assert err.hresult == 0x800705B4 and err.winerror == 1460 and str(err) == "boom"
    assert windows.WriteDumpError("x", -2147467259).hresult == 0x80004005
    assert windows.WriteDumpError("x", 0x80004005).winerror == 0x80004005
    assert windows._as_hresult(5) == 0x80070005
    assert windows._as_hresult(0) == 0x80004005
    assert windows._as_hresult(0x8007000E) == 0x8007000E
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert (again.hresult, again.reason, str(again)) == (err.hresult, err.reason, str(err))


# ---- write_dump against a simulated DbgHelp ------------------------------------------


class FakeApi:
    """kernel32 + dbghelp stand-in.  MiniDumpWriteDump drives the callback it is
    given with the DbgHelp simulator over a prepared write plan."""

    def __init__(self, plan: Any, *, fail_after: int | None = None, skip_io: bool = False,
                 last_error: int = 0, open_error: int | None = None, delay: float = 0.0) -> None:
        self.plan = plan
        self.fail_after = fail_after
        self.skip_io = skip_io
        self.last_error = last_error
        self.open_error = open_error
        self.delay = delay
        self.opened: list[tuple[int, int]] = []
        self.closed: list[int] = []
        self.calls: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def open_process(self, pid: int, access: int) -> int:
        if self.open_error is not None:
            raise windows.WriteDumpError(f"cannot open process {pid}", windows._as_hresult(self.open_error), "denied")
        self.opened.append((pid, access))
        return 0x4000 + pid

    def close_handle(self, handle: int) -> None:
        self.closed.append(handle)

    def process_id(self, handle: int) -> int:
        return 4242

    def message(self, code: int) -> str:
        return f"fake message for 0x{code & 0xFFFFFFFF:08X}"

    def minidump_write_dump(self, process: int, pid: int, dump_type: int, exception: Any, user_streams: Any,
                            callback_information: int) -> tuple[bool, int]:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.calls.append(dict(process=process, pid=pid, dump_type=dump_type, exception=exception,
                                   user_streams=user_streams, thread=threading.current_thread().name))
            if self.delay:
                time.sleep(self.delay)
            if self.skip_io:
                return True, 0
            info = windows.MINIDUMP_CALLBACK_INFORMATION.from_address(callback_information)
            plan = self.plan
            count = len(plan.offsets) if self.fail_after is None else self.fail_after
            # A DbgHelp that fails mid-dump stops calling: no IoFinishCallback.
            sim = mdstream.Simulation(info.CallbackRoutine, info.CallbackParam, plan.buffer, plan.offsets[:count],
                                      plan.lengths[:count], plan.sources[:count],
                                      abandon=self.fail_after is not None)
            sim.start()
            sim.wait()
            if self.fail_after is not None:
                return False, self.last_error
            if not sim.succeeded:
                return False, (sim.failure or {}).get("status", 0) & 0xFFFFFFFF
            return True, 0
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, bytes]:
    data = build_sample_minidump(3)
    path = tmp_path / "sample.dmp"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def fake(sample: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi(plan_for(sample[0], schedule="writer"))
    monkeypatch.setattr(windows, "_load_api", lambda: api)
    return api


def test_write_dump_to_a_path(fake: FakeApi, sample: tuple[Path, bytes], tmp_path: Path) -> None:
    out = tmp_path / "out.dmp"
    reports: list[mdstream.Progress] = []
    result = windows.write_dump(1234, str(out), dump_type="WithFullMemory", progress=reports.append)
    assert out.read_bytes() == sample[1]
    assert result.ok and result.written_bytes >= len(sample[1]) and result.writes == len(fake.plan.offsets)
    assert result.extra["pid"] == 1234 and result.extra["dump_type"] == MinidumpType.MiniDumpWithFullMemory
    assert fake.opened == [(1234, windows.PROCESS_DUMP_ACCESS)] and fake.closed == [0x4000 + 1234]
    (call,) = fake.calls
    assert call["process"] == 0x4000 + 1234 and call["pid"] == 1234
    assert call["thread"].startswith("mdstream-MiniDumpWriteDump")
    assert reports and reports[-1].bytes == result.written_bytes


def test_write_dump_to_sinks(fake: FakeApi, sample: tuple[Path, bytes]) -> None:
    memory = mdstream.MemorySink()
    result = windows.write_dump(windows.ProcessHandle(0x99, pid=77), memory, 0, (5, 0x1000),
                                user_streams=[(0x10000, b"x")], ring_capacity=64 << 10)
    assert memory.tobytes() == sample[1]
    assert fake.opened == [] and fake.closed == []  # a given handle is neither opened nor closed
    (call,) = fake.calls
    assert call["process"] == 0x99 and call["pid"] == 77
    assert call["exception"].ThreadId == 5 and call["user_streams"].UserStreamCount == 1
    assert result.outputs[0] is not None


def test_write_dump_handle_without_pid(fake: FakeApi) -> None:
    windows.write_dump(windows.ProcessHandle(0x99), [mdstream.NullSink()])
    assert fake.calls[0]["pid"] == 4242


def test_write_dump_popen_like(fake: FakeApi) -> None:
    class Popen:
        pid = 31
        _handle = 0x777

    windows.write_dump(Popen(), mdstream.NullSink())
    assert fake.calls[0]["process"] == 0x777 and fake.opened == []


def test_write_dump_failure_is_an_oserror(fake: FakeApi, tmp_path: Path) -> None:
    fake.fail_after, fake.last_error = 10, 0x8007001F  # ERROR_GEN_FAILURE
    out = tmp_path / "out.dmp"
    with pytest.raises(OSError) as info:
        windows.write_dump(1234, out)
    err = info.value
    assert isinstance(err, windows.WriteDumpError)
    assert err.hresult == 0x8007001F and err.winerror == 31
    assert "MiniDumpWriteDump failed for process 1234" in str(err) and "0x8007001F" in str(err)
    assert not out.exists()  # an aborted FileSink leaves nothing
    assert fake.closed == [0x4000 + 1234]


def test_open_failure(fake: FakeApi) -> None:
    fake.open_error = 5
    with pytest.raises(PermissionError if sys.platform == "win32" else OSError) as info:
        windows.write_dump(1234, mdstream.NullSink())
    assert info.value.winerror == 5  # type: ignore[attr-defined]


def test_callback_failure_reason_wins(fake: FakeApi) -> None:
    class Boom:
        def consume(self, batch: Any) -> None:
            raise RuntimeError("disk on fire")

        def finish(self) -> None:
            return None

        def abort(self, error: BaseException) -> None:
            pass

    with pytest.raises(RuntimeError, match="disk on fire"):
        windows.write_dump(1234, [Boom()], ring_capacity=16 << 10)
    # The consumer aborted the ring; the simulated DbgHelp's next write got E_ABORT and it returned.
    assert fake.closed == [0x4000 + 1234]


def test_true_without_io_is_an_error(fake: FakeApi) -> None:
    fake.skip_io = True
    with pytest.raises(windows.WriteDumpError, match="IoFinishCallback never came"):
        windows.write_dump(1234, mdstream.NullSink(), timeout=5)


def test_calls_are_serialised(fake: FakeApi) -> None:
    fake.delay = 0.05
    errors: list[BaseException] = []

    def one() -> None:
        try:
            windows.write_dump(1234, mdstream.NullSink())
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(fake.calls) == 4 and fake.max_active == 1


def test_lock_timeout(fake: FakeApi) -> None:
    with windows.DBGHELP_LOCK:
        with pytest.raises(mdstream.RingTimeoutError):
            windows.write_dump(1234, mdstream.NullSink(), lock_timeout=0.05)


def test_write_dump_into_a_ring_drained_elsewhere(fake: FakeApi, sample: tuple[Path, bytes], ring_name: str) -> None:
    ring = mdstream.Ring.create(ring_name, 64 << 10)
    consumer = mdstream.Ring.attach(ring_name)
    memory = mdstream.MemorySink()
    drained: list[Any] = []
    t = threading.Thread(target=lambda: drained.append(mdstream.drain(consumer, [memory], timeout=30)))
    t.start()
    result = windows.write_dump(1234, ring)
    t.join()
    assert memory.tobytes() == sample[1]
    assert result.writes == len(fake.plan.offsets) and result.output_size == len(sample[1])
    consumer.close()
    ring.close()


def test_cli_dump_uses_write_dump(fake: FakeApi, sample: tuple[Path, bytes], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mdstream import cli

    monkeypatch.setattr(sys, "platform", "win32")
    out = tmp_path / "cli.dmp"
    code = cli.main(["dump", "1234", "-o", str(out), "--type", "WithFullMemory", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert out.read_bytes() == sample[1]
    assert payload["pid"] == 1234 and payload["size"] == len(sample[1])
