"""The DbgHelp callback ABI: compiled layout vs. the Microsoft reference, enums vs. the header.

Three independent statements of the same layout must agree: the C header as
compiled (``mdstream.dbghelp.layout()``), the reference tables in
``mdstream.dbghelp`` (what MSVC produces), and a ctypes re-declaration
(``tests/dbghelp_ctypes.py``).  The reference document's own table is restated
here once more so that editing the Python tables cannot quietly move it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mdstream import dbghelp
from mdstream.dbghelp import (
    REFERENCE_LAYOUT_ARM64,
    REFERENCE_LAYOUT_X64,
    REFERENCE_LAYOUT_X86,
    CallbackType,
    HResult,
    MinidumpType,
    ModuleWriteFlags,
    SecondaryFlags,
    ThreadWriteFlags,
    Win32Error,
    hresult_from_win32,
    hresult_name,
    hresult_to_signed,
    hresult_to_unsigned,
)

try:
    import dbghelp_ctypes as dc
except ImportError:  # tests/ imported as a package
    from tests import dbghelp_ctypes as dc  # type: ignore

_layout_module = pytest.importorskip("mdstream._dbghelp_layout", reason="extension not built")

ABIS = ("x64", "x86", "arm64")
REFERENCE = {"x64": REFERENCE_LAYOUT_X64, "x86": REFERENCE_LAYOUT_X86, "arm64": REFERENCE_LAYOUT_ARM64}

# The table of dbghelp-io-callbacks.md ("Offsets the Microsoft compiler
# produces") plus the pack(4) traps it names; None where it gives no value.
DOC_TABLE: dict[str, tuple[int | None, int | None, int | None]] = {
    "MINIDUMP_CALLBACK_INPUT.ProcessHandle": (4, 4, 4),
    "MINIDUMP_CALLBACK_INPUT.CallbackType": (12, 8, 12),
    "MINIDUMP_CALLBACK_INPUT.Status": (16, 12, 16),
    "MINIDUMP_CALLBACK_INPUT.Io": (16, 12, 16),
    "MINIDUMP_CALLBACK_INPUT.Io.Offset": (24, 16, 24),
    "MINIDUMP_CALLBACK_INPUT.Io.Buffer": (32, 24, 32),
    "MINIDUMP_CALLBACK_INPUT.Io.BufferBytes": (40, 28, 40),
    "sizeof MINIDUMP_IO_CALLBACK": (28, 20, 28),
    "sizeof MINIDUMP_CALLBACK_INPUT": (1312, 772, 992),
    "MINIDUMP_CALLBACK_OUTPUT.Status": (0, 0, 0),
    "sizeof MINIDUMP_CALLBACK_OUTPUT": (52, None, None),
    "sizeof MINIDUMP_EXCEPTION_INFORMATION": (16, None, None),
    "MINIDUMP_EXCEPTION_INFORMATION.ExceptionPointers": (4, None, None),
    "MINIDUMP_EXCEPTION_INFORMATION.ClientPointers": (12, None, None),
    "sizeof MINIDUMP_USER_STREAM_INFORMATION": (12, None, None),
    "MINIDUMP_USER_STREAM_INFORMATION.UserStreamArray": (4, None, None),
}

INPUT_UNION_MEMBERS = (
    "Status",
    "Thread",
    "ThreadEx",
    "Module",
    "IncludeThread",
    "IncludeModule",
    "Io",
    "ReadMemoryFailure",
    "SecondaryFlags",
    "VmQuery",
    "VmPreRead",
    "VmPostRead",
)

OUTPUT_MEMBERS = (
    "ModuleWriteFlags",
    "ThreadWriteFlags",
    "SecondaryFlags",
    "MemoryBase",
    "MemorySize",
    "CheckCancel",
    "Cancel",
    "Handle",
    "VmRegion",
    "Continue",
    "VmQueryStatus",
    "VmQueryResult",
    "VmReadStatus",
    "VmReadBytesCompleted",
    "Status",
)


def host_abi() -> str | None:
    """The Microsoft column this interpreter's build should match, or None when there is none."""
    bits = struct.calcsize("P") * 8
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x64" if bits == 64 else "x86"
    if machine in ("i386", "i486", "i586", "i686", "x86"):
        return "x86"
    if machine in ("aarch64", "arm64") and bits == 64:
        return "arm64"
    return None


def _diff(actual: dict[str, int], expected: dict[str, int]) -> str:
    lines = []
    for key in sorted(set(actual) | set(expected)):
        if actual.get(key) != expected.get(key):
            lines.append(f"  {key}: compiled {actual.get(key)!r}, reference {expected.get(key)!r}")
    return "\n".join(lines)


# ---- the reference tables themselves ---------------------------------------


@pytest.mark.parametrize("column", range(3), ids=ABIS)
def test_reference_tables_agree_with_the_document(column: int) -> None:
    table = REFERENCE[ABIS[column]]
    for key, values in DOC_TABLE.items():
        if values[column] is not None:
            assert table[key] == values[column], key
    for member in INPUT_UNION_MEMBERS:
        assert table[f"MINIDUMP_CALLBACK_INPUT.{member}"] == table["MINIDUMP_CALLBACK_INPUT.Status"], member


def test_reference_tables_have_the_same_keys() -> None:
    arm64_only = {"MINIDUMP_THREAD_CALLBACK.Pad", "MINIDUMP_THREAD_EX_CALLBACK.Pad"}
    assert set(REFERENCE_LAYOUT_X64) == set(REFERENCE_LAYOUT_X86)
    assert set(REFERENCE_LAYOUT_ARM64) == set(REFERENCE_LAYOUT_X64) | arm64_only


def test_reference_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        REFERENCE_LAYOUT_X64["sizeof MINIDUMP_CALLBACK_INPUT"] = 0  # type: ignore[index]


@pytest.mark.parametrize("abi", ABIS)
def test_reference_output_is_one_union(abi: str) -> None:
    """Every answer shares the output's storage; nothing sits past the 52 bytes."""
    table = REFERENCE[abi]
    size = table["sizeof MINIDUMP_CALLBACK_OUTPUT"]
    for member in OUTPUT_MEMBERS:
        assert 0 <= table[f"MINIDUMP_CALLBACK_OUTPUT.{member}"] < size


# ---- compiled vs. reference -------------------------------------------------


def test_compiled_abi_is_the_hosts() -> None:
    abi = host_abi()
    if abi is None:
        pytest.skip(f"no Microsoft layout for {platform.machine()}")
    assert dbghelp.compiled_abi() == abi


def test_compiled_layout_matches_reference() -> None:
    abi = host_abi()
    if abi is None:
        pytest.skip(f"no Microsoft layout for {platform.machine()}")
    compiled = dbghelp.layout()
    expected = dict(dbghelp.reference_layout(abi))
    assert compiled == expected, "layout differs from the Microsoft reference:\n" + _diff(compiled, expected)


def test_compiled_layout_covers_every_documented_key() -> None:
    abi = host_abi()
    if abi is None:
        pytest.skip(f"no Microsoft layout for {platform.machine()}")
    column = ABIS.index(abi)
    compiled = dbghelp.layout()
    for key, values in DOC_TABLE.items():
        assert key in compiled, key
        if values[column] is not None:
            assert compiled[key] == values[column], key


def test_compiled_layout_values_are_ints() -> None:
    assert all(type(v) is int for v in dbghelp.layout().values())


def test_compiled_input_alignment() -> None:
    """MSVC keeps CONTEXT's 16-byte alignment on the input; so must the C declaration."""
    abi = host_abi()
    if abi is None:
        pytest.skip(f"no Microsoft layout for {platform.machine()}")
    assert _layout_module.input_alignment() == (4 if abi == "x86" else 16)


def test_reference_layout_rejects_unknown_abi() -> None:
    with pytest.raises(ValueError, match="unknown ABI"):
        dbghelp.reference_layout("mips")


# ---- constants: header vs. Python enums -----------------------------------


def test_constants_match_python_enums() -> None:
    expected: dict[str, int] = {}
    for enum_cls in (CallbackType, MinidumpType, ThreadWriteFlags, ModuleWriteFlags, SecondaryFlags, Win32Error):
        for name, member in enum_cls.__members__.items():
            expected[name] = int(member)
    for member in HResult:
        expected[member.c_name] = int(member)
    compiled = _layout_module.constants()
    assert compiled == expected, _diff(compiled, expected)


def test_callback_type_has_the_21_sdk_values() -> None:
    assert [m.value for m in CallbackType] == list(range(21))
    assert CallbackType.ModuleCallback == 0
    assert CallbackType.IoStartCallback == 11
    assert CallbackType.IoWriteAllCallback == 12
    assert CallbackType.IoFinishCallback == 13
    assert CallbackType.VmPostReadCallback == 20


def test_valid_type_flags_is_the_union_of_all_flags() -> None:
    union = 0
    for name, member in MinidumpType.__members__.items():
        if name != "MiniDumpValidTypeFlags":
            union |= int(member)
    assert union == MinidumpType.MiniDumpValidTypeFlags == 0x01FFFFFF


# ---- MinidumpType.parse / describe ------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("WithFullMemory|WithHandleData", 0x6),
        ("MiniDumpWithFullMemory,MiniDumpWithHandleData", 0x6),
        ("withfullmemory + WITHHANDLEDATA", 0x6),
        (" WithDataSegs  WithThreadInfo ", 0x1001),
        ("Normal", 0),
        ("MiniDumpNormal|0x2", 0x2),
        ("0x80000000|WithFullMemory", 0x80000002),
        ("ValidTypeFlags", 0x01FFFFFF),
        (6, 0x6),
        (MinidumpType.MiniDumpWithFullMemory, 0x2),
        (["WithFullMemory", 4], 0x6),
    ],
)
def test_minidump_type_parse(text: object, expected: int) -> None:
    result = MinidumpType.parse(text)  # type: ignore[arg-type]
    assert isinstance(result, MinidumpType)
    assert int(result) == expected


@pytest.mark.parametrize(
    "bad, error",
    [
        ("WithFullMemroy", ValueError),
        ("", ValueError),
        ("|", ValueError),
        (-1, ValueError),
        (1 << 32, ValueError),
        ("0x100000000", ValueError),
        (True, TypeError),
        (1.5, TypeError),
    ],
)
def test_minidump_type_parse_rejects(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        MinidumpType.parse(bad)  # type: ignore[arg-type]


def test_minidump_type_parse_error_names_the_flags() -> None:
    with pytest.raises(ValueError, match="WithFullMemory"):
        MinidumpType.parse("WithFullMemroy")


def test_minidump_type_describe() -> None:
    assert MinidumpType.describe(0) == ["MiniDumpNormal"]
    assert MinidumpType.describe(0x6) == ["MiniDumpWithFullMemory", "MiniDumpWithHandleData"]
    assert MinidumpType.describe(0x86000001) == ["MiniDumpWithDataSegs", "0x86000000"]
    assert len(MinidumpType.describe(0x01FFFFFF)) == 25
    with pytest.raises(ValueError):
        MinidumpType.describe(-1)


@pytest.mark.parametrize("value", [0, 1, 0x2, 0x6, 0x1821, 0x01FFFFFF, 0x02000000, 0xFFFFFFFF, 0x80000006])
def test_minidump_type_describe_round_trips(value: int) -> None:
    assert int(MinidumpType.parse("|".join(MinidumpType.describe(value)))) == value


# ---- HRESULTs ----------------------------------------------------------------


def test_hresult_values() -> None:
    assert HResult.S_OK == 0 and HResult.S_FALSE == 1
    assert HResult.E_FAIL.unsigned == 0x80004005
    assert HResult.E_NOTIMPL.unsigned == 0x80004001
    assert HResult.E_ABORT.unsigned == 0x80004004
    assert HResult.E_OUTOFMEMORY.unsigned == 0x8007000E
    assert HResult.E_INVALIDARG.unsigned == 0x80070057
    assert HResult.E_UNEXPECTED.unsigned == 0x8000FFFF
    assert HResult.E_WIN32_TIMEOUT.unsigned == 0x800705B4
    assert HResult.E_WIN32_BROKEN_PIPE.unsigned == 0x8007006D
    assert HResult.E_WIN32_DISK_FULL.unsigned == 0x80070070
    assert int(HResult.E_FAIL) == -2147467259  # signed, as C's HRESULT


def test_hresult_accepts_both_spellings() -> None:
    assert HResult(0x80004005) is HResult.E_FAIL
    assert HResult(-2147467259) is HResult.E_FAIL
    with pytest.raises(ValueError):
        HResult(0x80004999)


def test_hresult_signed_unsigned_conversion() -> None:
    assert hresult_to_signed(0x80004005) == -2147467259
    assert hresult_to_signed(-2147467259) == -2147467259
    assert hresult_to_unsigned(-2147467259) == 0x80004005
    assert hresult_to_unsigned(1) == 1
    assert hresult_to_signed(0x7FFFFFFF) == 0x7FFFFFFF
    assert hresult_to_signed(0x80000000) == -(1 << 31)
    for bad in (1 << 32, -(1 << 31) - 1):
        with pytest.raises(ValueError):
            hresult_to_signed(bad)


def test_hresult_from_win32() -> None:
    assert hresult_from_win32(Win32Error.ERROR_TIMEOUT) == HResult.E_WIN32_TIMEOUT
    assert hresult_from_win32(Win32Error.ERROR_OUTOFMEMORY) == HResult.E_OUTOFMEMORY
    assert hresult_from_win32(Win32Error.ERROR_INVALID_PARAMETER) == HResult.E_INVALIDARG
    assert hresult_from_win32(Win32Error.ERROR_ACCESS_DENIED) == HResult.E_ACCESSDENIED
    assert hresult_from_win32(0) == HResult.S_OK
    assert hresult_from_win32(0x80004005) == HResult.E_FAIL  # already an HRESULT: unchanged


def test_hresult_name() -> None:
    assert hresult_name(0) == "S_OK"
    assert hresult_name(1) == "S_FALSE"
    assert hresult_name(0x80004005) == "E_FAIL"
    assert hresult_name(-2147467259) == "E_FAIL"
    assert hresult_name(0x800705B4) == "HRESULT_FROM_WIN32(ERROR_TIMEOUT)"
    assert hresult_name(0x8007006D) == "HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE)"
    assert hresult_name(0x80070008) == "HRESULT_FROM_WIN32(ERROR_NOT_ENOUGH_MEMORY)"
    assert hresult_name(0x800704D2) == "HRESULT_FROM_WIN32(1234)"
    assert hresult_name(0x887A0005) == "0x887A0005"
    assert hresult_name(1 << 40) == repr(1 << 40)


def test_succeeded_failed() -> None:
    assert dbghelp.succeeded(HResult.S_FALSE) and not dbghelp.failed(HResult.S_FALSE)
    assert dbghelp.failed(0x80004005) and not dbghelp.succeeded(-2147467259)


# ---- ctypes re-declaration ---------------------------------------------------


def test_ctypes_declarations_match_compiled_layout() -> None:
    compiled = dbghelp.layout()
    declared = dc.ctypes_layout()
    missing = set(declared) - set(compiled)
    assert not missing, f"ctypes keys the C layout does not have: {sorted(missing)}"
    assert {k: compiled[k] for k in declared} == declared, _diff(declared, {k: compiled[k] for k in declared})


def test_ctypes_sizes() -> None:
    compiled = dbghelp.layout()
    assert ctypes.sizeof(dc.MINIDUMP_IO_CALLBACK) == compiled["sizeof MINIDUMP_IO_CALLBACK"]
    assert ctypes.sizeof(dc.MINIDUMP_CALLBACK_INPUT) == compiled["sizeof MINIDUMP_CALLBACK_INPUT"]
    assert ctypes.sizeof(dc.MINIDUMP_CALLBACK_OUTPUT) == compiled["sizeof MINIDUMP_CALLBACK_OUTPUT"] == 52
    assert ctypes.sizeof(dc.MINIDUMP_CALLBACK_INFORMATION) == compiled["sizeof MINIDUMP_CALLBACK_INFORMATION"]
    if host_abi() == "x64":
        assert ctypes.sizeof(dc.MINIDUMP_CALLBACK_INPUT) == 1312


def test_ctypes_bytes_land_at_compiled_offsets() -> None:
    """Fields written through ctypes sit where the compiled C code reads them."""
    compiled = dbghelp.layout()
    inp = dc.new_input(CallbackType.IoWriteAllCallback)
    inp.ProcessId = 0x11223344
    inp.Io.Offset = 0x0102030405060708
    inp.Io.BufferBytes = 0xA0B0C0D0
    raw = bytes(inp)
    assert len(raw) == compiled["sizeof MINIDUMP_CALLBACK_INPUT"]

    def at(key: str, size: int) -> int:
        offset = compiled[key]
        return int.from_bytes(raw[offset : offset + size], sys.byteorder)

    assert at("MINIDUMP_CALLBACK_INPUT.ProcessId", 4) == 0x11223344
    assert at("MINIDUMP_CALLBACK_INPUT.CallbackType", 4) == CallbackType.IoWriteAllCallback
    assert at("MINIDUMP_CALLBACK_INPUT.Io.Offset", 8) == 0x0102030405060708
    assert at("MINIDUMP_CALLBACK_INPUT.Io.BufferBytes", 4) == 0xA0B0C0D0

    out = dc.new_output(HResult.E_NOTIMPL)
    assert bytes(out)[compiled["MINIDUMP_CALLBACK_OUTPUT.Status"] :][:4] == HResult.E_NOTIMPL.unsigned.to_bytes(
        4, sys.byteorder
    )
    out.Cancel = 1
    assert bytes(out)[compiled["MINIDUMP_CALLBACK_OUTPUT.Cancel"]] == 1


def test_ctypes_new_input_is_aligned_like_dbghelp() -> None:
    for _ in range(8):  # several allocations: alignment must not be luck
        inp = dc.new_input()
        assert ctypes.addressof(inp) % dc.INPUT_ALIGNMENT == 0
        assert bytes(inp) == bytes(ctypes.sizeof(inp))


def test_ctypes_routine_through_a_raw_function_pointer() -> None:
    """A routine reached through a bare code pointer sees the fields DbgHelp set and answers in Status."""
    seen: dict[str, int] = {}
    payload = (ctypes.c_ubyte * 5)(*b"hello")

    def routine(param: int | None, inp: object, out: object) -> int:
        i = inp.contents  # type: ignore[attr-defined]
        o = out.contents  # type: ignore[attr-defined]
        seen["param"] = param or 0
        seen["type"] = i.CallbackType
        seen["offset"] = i.Io.Offset
        seen["bytes"] = i.Io.BufferBytes
        seen["data"] = int.from_bytes(ctypes.string_at(i.Io.Buffer, i.Io.BufferBytes), "big")
        seen["preset"] = o.Status
        o.Status = HResult.S_OK
        return 1

    thunk = dc.CALLBACK_ROUTINE(routine)
    raw = ctypes.cast(thunk, ctypes.c_void_p).value
    assert raw is not None
    call = dc.CALLBACK_ROUTINE(raw)

    inp = dc.new_input(CallbackType.IoWriteAllCallback)
    inp.Io.Offset = 1 << 40
    inp.Io.Buffer = ctypes.addressof(payload)
    inp.Io.BufferBytes = len(payload)
    out = dc.new_output(HResult.E_NOTIMPL)

    assert call(0x1234, ctypes.byref(inp), ctypes.byref(out)) == 1
    assert seen == {
        "param": 0x1234,
        "type": CallbackType.IoWriteAllCallback,
        "offset": 1 << 40,
        "bytes": 5,
        "data": int.from_bytes(b"hello", "big"),
        "preset": HResult.E_NOTIMPL,
    }
    assert out.Status == HResult.S_OK

    info = dc.MINIDUMP_CALLBACK_INFORMATION(thunk, None)
    assert ctypes.cast(info.CallbackRoutine, ctypes.c_void_p).value == raw


# ---- the pure-Python module stands alone -----------------------------------


def test_dbghelp_module_imports_without_the_extension() -> None:
    """mdstream/dbghelp.py needs no compiled code until layout() is called (every extension module is blocked)."""
    path = Path(dbghelp.__file__).resolve()
    code = f"""
import importlib.abc, importlib.util, sys

EXTENSIONS = ("mdstream._ring", "mdstream._callback", "mdstream._sinks", "mdstream._linux", "mdstream._dbghelp_layout")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in EXTENSIONS:
            raise ImportError("blocked " + name)
        return None

sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("dbghelp_alone", {str(path)!r})
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
assert mod.CallbackType.IoWriteAllCallback == 12
assert mod.REFERENCE_LAYOUT_X64["sizeof MINIDUMP_CALLBACK_INPUT"] == 1312
assert mod.hresult_name(0x800705B4) == "HRESULT_FROM_WIN32(ERROR_TIMEOUT)"
try:
    mod.layout()
except ImportError:
    print("ok")
else:
    raise SystemExit("layout() worked without the extension")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_dbghelp_ctypes_helper_is_loadable_by_path() -> None:
    """Other tests import the ctypes helper by file; keep it importable on its own."""
    path = Path(dc.__file__).resolve()
    spec = importlib.util.spec_from_file_location("dbghelp_ctypes_by_path", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert ctypes.sizeof(module.MINIDUMP_CALLBACK_OUTPUT) == 52
