"""DbgHelp's minidump callback vocabulary for Python: enums, HRESULTs and layouts.

Pure Python, importable without the compiled extension.  It mirrors the C
header ``mdstream/include/mdstream/dbghelp.h``: the enum values are checked
against the compiled constants, and ``REFERENCE_LAYOUT_*`` (what the Microsoft
compiler produces) against the compiled sizes and offsets, by
``tests/test_dbghelp_layout.py``.

Layout keys are ``"sizeof NAME"`` and ``"NAME.Member"`` / ``"NAME.Member.Field"``
with the SDK's names, e.g. ``"MINIDUMP_CALLBACK_INPUT.Io.Offset"``.
"""

from __future__ import annotations

import enum
import importlib
import re
from types import MappingProxyType, ModuleType
from typing import Iterable, Mapping, Union

from mdstream.errors import DumpTypeError

__all__ = [
    "CallbackType",
    "MinidumpType",
    "ThreadWriteFlags",
    "ModuleWriteFlags",
    "SecondaryFlags",
    "HResult",
    "Win32Error",
    "hresult_name",
    "hresult_from_win32",
    "hresult_to_signed",
    "hresult_to_unsigned",
    "succeeded",
    "failed",
    "layout",
    "compiled_abi",
    "reference_layout",
    "REFERENCE_LAYOUT_X64",
    "REFERENCE_LAYOUT_X86",
    "REFERENCE_LAYOUT_ARM64",
]


class CallbackType(enum.IntEnum):
    """``MINIDUMP_CALLBACK_TYPE``: why DbgHelp called the callback (``CallbackInput->CallbackType``)."""

    ModuleCallback = 0
    ThreadCallback = 1
    ThreadExCallback = 2
    IncludeThreadCallback = 3
    IncludeModuleCallback = 4
    MemoryCallback = 5
    CancelCallback = 6
    WriteKernelMinidumpCallback = 7
    KernelMinidumpStatusCallback = 8
    RemoveMemoryCallback = 9
    IncludeVmRegionCallback = 10
    IoStartCallback = 11
    IoWriteAllCallback = 12
    IoFinishCallback = 13
    ReadMemoryFailureCallback = 14
    SecondaryFlagsCallback = 15
    IsProcessSnapshotCallback = 16
    VmStartCallback = 17
    VmQueryCallback = 18
    VmPreReadCallback = 19
    VmPostReadCallback = 20


_FlagInput = Union[int, str, Iterable[Union[int, str]]]
_TOKEN_SPLIT = re.compile(r"[|,+\s]+")


class MinidumpType(enum.IntFlag):
    """``MINIDUMP_TYPE``: what ``MiniDumpWriteDump`` puts in the dump (the ``DumpType`` argument)."""

    MiniDumpNormal = 0x00000000
    MiniDumpWithDataSegs = 0x00000001
    MiniDumpWithFullMemory = 0x00000002
    MiniDumpWithHandleData = 0x00000004
    MiniDumpFilterMemory = 0x00000008
    MiniDumpScanMemory = 0x00000010
    MiniDumpWithUnloadedModules = 0x00000020
    MiniDumpWithIndirectlyReferencedMemory = 0x00000040
    MiniDumpFilterModulePaths = 0x00000080
    MiniDumpWithProcessThreadData = 0x00000100
    MiniDumpWithPrivateReadWriteMemory = 0x00000200
    MiniDumpWithoutOptionalData = 0x00000400
    MiniDumpWithFullMemoryInfo = 0x00000800
    MiniDumpWithThreadInfo = 0x00001000
    MiniDumpWithCodeSegs = 0x00002000
    MiniDumpWithoutAuxiliaryState = 0x00004000
    MiniDumpWithFullAuxiliaryState = 0x00008000
    MiniDumpWithPrivateWriteCopyMemory = 0x00010000
    MiniDumpIgnoreInaccessibleMemory = 0x00020000
    MiniDumpWithTokenInformation = 0x00040000
    MiniDumpWithModuleHeaders = 0x00080000
    MiniDumpFilterTriage = 0x00100000
    MiniDumpWithAvxXStateContext = 0x00200000
    MiniDumpWithIptTrace = 0x00400000
    MiniDumpScanInaccessiblePartialPages = 0x00800000
    MiniDumpFilterWriteCombinedMemory = 0x01000000
    MiniDumpValidTypeFlags = 0x01FFFFFF

    @classmethod
    def parse(cls, value: _FlagInput) -> MinidumpType:
        """Read dump flags from text, an int, or an iterable of either.

        Text is split on ``|``, ``,``, ``+`` and whitespace; each token is an SDK
        name with or without its ``MiniDump`` prefix (any case:
        ``"WithFullMemory|WithHandleData"``, ``"MiniDumpWithFullMemory,..."``)
        or a number (``"0x2"``, ``"2"``).  Bits this module does not name are
        kept (newer SDKs add flags), but values must fit 32 bits unsigned.

        Raises :class:`~mdstream.errors.DumpTypeError` (a ``ValueError``) for an
        unknown name, an empty string, or an out-of-range number; TypeError for
        other types.
        """
        if isinstance(value, bool):
            raise TypeError("MinidumpType.parse() takes an int, a str or an iterable of them, not bool")
        if isinstance(value, int):
            return cls(_check_u32(int(value), "dump type"))
        if isinstance(value, str):
            tokens = [t for t in _TOKEN_SPLIT.split(value.strip()) if t]
            if not tokens:
                raise DumpTypeError("empty dump type; use 'Normal' (0) for a normal minidump")
            return cls(_or_all(_parse_flag_token(t) for t in tokens))
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"cannot parse a dump type from {type(value).__name__}") from None
        return cls(_or_all(int(cls.parse(item)) for item in items))

    @classmethod
    def describe(cls, flags: int) -> list[str]:
        """Return the SDK names of the flags set in ``flags``, lowest bit first.

        ``0`` gives ``["MiniDumpNormal"]``; bits without a name are reported
        together as one hex string (``"0x80000000"``).  Round-trips through
        :meth:`parse` with ``"|".join(...)``.
        """
        value = _check_u32(int(flags), "dump type")
        if value == 0:
            return ["MiniDumpNormal"]
        names: list[str] = []
        for bit, name in _MINIDUMP_TYPE_BITS:
            if value & bit:
                names.append(name)
                value &= ~bit
        if value:
            names.append(f"0x{value:08X}")
        return names


def _check_u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise DumpTypeError(f"{what} {value:#x} does not fit 32 bits unsigned")
    return value


def _or_all(values: Iterable[int]) -> int:
    result = 0
    for v in values:
        result |= v
    return result


# Single-bit members in value order; the iteration rules of IntFlag differ
# between Python 3.10 and 3.11 (aliases, composite members), so describe()
# and parse() use these tables instead.
_MINIDUMP_TYPE_BITS: tuple[tuple[int, str], ...] = tuple(
    sorted(
        (int(m), name)
        for name, m in MinidumpType.__members__.items()
        if int(m) and int(m) & (int(m) - 1) == 0
    )
)
_MINIDUMP_TYPE_BY_NAME: dict[str, int] = {}
for _name, _member in MinidumpType.__members__.items():
    _MINIDUMP_TYPE_BY_NAME[_name.lower()] = int(_member)
    _MINIDUMP_TYPE_BY_NAME[_name[len("MiniDump"):].lower()] = int(_member)
del _name, _member


def _parse_flag_token(token: str) -> int:
    key = token.lower()
    if key in _MINIDUMP_TYPE_BY_NAME:
        return _MINIDUMP_TYPE_BY_NAME[key]
    try:
        number = int(token, 0)
    except ValueError:
        known = ", ".join(name[len("MiniDump"):] for name in MinidumpType.__members__)
        raise DumpTypeError(f"unknown dump type flag {token!r}; known: {known}") from None
    return _check_u32(number, "dump type")


class ThreadWriteFlags(enum.IntFlag):
    """``THREAD_WRITE_FLAGS``: what to write for a thread (``CallbackOutput->ThreadWriteFlags``)."""

    ThreadWriteThread = 0x0001
    ThreadWriteStack = 0x0002
    ThreadWriteContext = 0x0004
    ThreadWriteBackingStore = 0x0008
    ThreadWriteInstructionWindow = 0x0010
    ThreadWriteThreadData = 0x0020
    ThreadWriteThreadInfo = 0x0040


class ModuleWriteFlags(enum.IntFlag):
    """``MODULE_WRITE_FLAGS``: what to write for a module (``CallbackOutput->ModuleWriteFlags``)."""

    ModuleWriteModule = 0x0001
    ModuleWriteDataSeg = 0x0002
    ModuleWriteMiscRecord = 0x0004
    ModuleWriteCvRecord = 0x0008
    ModuleReferencedByMemory = 0x0010
    ModuleWriteTlsData = 0x0020
    ModuleWriteCodeSegs = 0x0040


class SecondaryFlags(enum.IntFlag):
    """``MINIDUMP_SECONDARY_FLAGS``: answered to ``SecondaryFlagsCallback``."""

    MiniSecondaryWithoutPowerInfo = 0x00000001
    MiniSecondaryValidFlags = 0x00000001  # SDK alias: every flag defined so far


class Win32Error(enum.IntEnum):
    """Win32 error codes (``GetLastError()``) the dump path reports, wrapped or not in an HRESULT."""

    ERROR_SUCCESS = 0
    ERROR_ACCESS_DENIED = 5
    ERROR_INVALID_HANDLE = 6
    ERROR_NOT_ENOUGH_MEMORY = 8
    ERROR_OUTOFMEMORY = 14
    ERROR_WRITE_FAULT = 29
    ERROR_HANDLE_DISK_FULL = 39
    ERROR_NOT_SUPPORTED = 50
    ERROR_INVALID_PARAMETER = 87
    ERROR_BROKEN_PIPE = 109
    ERROR_DISK_FULL = 112
    ERROR_NO_DATA = 232
    ERROR_PARTIAL_COPY = 299
    ERROR_OPERATION_ABORTED = 995
    ERROR_TIMEOUT = 1460


_FACILITY_WIN32 = 7


def hresult_to_signed(code: int) -> int:
    """Return a 32-bit HRESULT as the signed value C's ``HRESULT`` holds (``0x80004005`` -> ``-2147467259``).

    Accepts either representation; raises ValueError outside ``-2**31 .. 2**32-1``.
    """
    code = int(code)
    if not -(1 << 31) <= code <= 0xFFFFFFFF:
        raise ValueError(f"{code:#x} is not a 32-bit HRESULT")
    return code - (1 << 32) if code >= (1 << 31) else code


def hresult_to_unsigned(code: int) -> int:
    """Return a 32-bit HRESULT as the unsigned value ``GetLastError()`` / a ``DWORD`` holds (``-2147467259`` -> ``0x80004005``).

    Accepts either representation; raises ValueError outside ``-2**31 .. 2**32-1``.
    """
    return hresult_to_signed(code) & 0xFFFFFFFF


def hresult_from_win32(code: int) -> int:
    """``HRESULT_FROM_WIN32``: wrap a Win32 error code (``0..0xFFFF``) in a failure HRESULT, signed.

    ``0`` (``ERROR_SUCCESS``) stays ``S_OK``, and values that are already
    HRESULTs (negative / bit 31 set) pass through, as in the SDK macro.
    """
    code = int(code)
    if code >= (1 << 31) or code <= 0:
        return hresult_to_signed(code)
    return hresult_to_signed(0x80000000 | (_FACILITY_WIN32 << 16) | (code & 0xFFFF))


class HResult(enum.IntEnum):
    """HRESULTs of the callback protocol, as signed values (C's ``HRESULT`` is a signed 32-bit ``LONG``).

    Unsigned spellings are accepted: ``HResult(0x80004005) is HResult.E_FAIL``.
    Members named ``E_WIN32_X`` are ``HRESULT_FROM_WIN32(ERROR_X)`` (the SDK has
    no names for them); :func:`hresult_name` spells them that way.
    """

    S_OK = 0
    S_FALSE = 1
    E_NOTIMPL = hresult_to_signed(0x80004001)
    E_POINTER = hresult_to_signed(0x80004003)
    E_ABORT = hresult_to_signed(0x80004004)
    E_FAIL = hresult_to_signed(0x80004005)
    E_UNEXPECTED = hresult_to_signed(0x8000FFFF)
    E_ACCESSDENIED = hresult_to_signed(0x80070005)
    E_HANDLE = hresult_to_signed(0x80070006)
    E_OUTOFMEMORY = hresult_to_signed(0x8007000E)
    E_INVALIDARG = hresult_to_signed(0x80070057)
    E_WIN32_WRITE_FAULT = hresult_from_win32(Win32Error.ERROR_WRITE_FAULT)
    E_WIN32_HANDLE_DISK_FULL = hresult_from_win32(Win32Error.ERROR_HANDLE_DISK_FULL)
    E_WIN32_NOT_SUPPORTED = hresult_from_win32(Win32Error.ERROR_NOT_SUPPORTED)
    E_WIN32_BROKEN_PIPE = hresult_from_win32(Win32Error.ERROR_BROKEN_PIPE)
    E_WIN32_DISK_FULL = hresult_from_win32(Win32Error.ERROR_DISK_FULL)
    E_WIN32_NO_DATA = hresult_from_win32(Win32Error.ERROR_NO_DATA)
    E_WIN32_PARTIAL_COPY = hresult_from_win32(Win32Error.ERROR_PARTIAL_COPY)
    E_WIN32_OPERATION_ABORTED = hresult_from_win32(Win32Error.ERROR_OPERATION_ABORTED)
    E_WIN32_TIMEOUT = hresult_from_win32(Win32Error.ERROR_TIMEOUT)

    @classmethod
    def _missing_(cls, value: object) -> HResult | None:
        # The unsigned spelling (GetLastError(), ctypes DWORD) of a known member.
        if isinstance(value, int) and (1 << 31) <= value <= 0xFFFFFFFF:
            signed = value - (1 << 32)
            for member in cls:
                if member.value == signed:
                    return member
        return None

    @property
    def unsigned(self) -> int:
        """The value as an unsigned 32-bit number (``0x80004005`` for ``E_FAIL``)."""
        return int(self) & 0xFFFFFFFF

    @property
    def c_name(self) -> str:
        """The C spelling: the SDK name, or ``HRESULT_FROM_WIN32(ERROR_X)`` for ``E_WIN32_X``."""
        name = self.name or ""
        if name.startswith("E_WIN32_"):
            return f"HRESULT_FROM_WIN32(ERROR_{name[len('E_WIN32_'):]})"
        return name


def hresult_name(code: int) -> str:
    """Name an HRESULT for messages, signed or unsigned input.

    Known values give their C spelling (``"E_FAIL"``,
    ``"HRESULT_FROM_WIN32(ERROR_TIMEOUT)"``); other Win32-facility failures give
    ``"HRESULT_FROM_WIN32(1234)"``; anything else ``"0x8XXXXXXX"``.
    """
    try:
        unsigned = hresult_to_unsigned(code)
    except (TypeError, ValueError):
        return repr(code)
    try:
        return HResult(unsigned).c_name
    except ValueError:
        pass
    if unsigned & 0x80000000 and ((unsigned >> 16) & 0x1FFF) == _FACILITY_WIN32:
        low = unsigned & 0xFFFF
        try:
            return f"HRESULT_FROM_WIN32({Win32Error(low).name})"
        except ValueError:
            return f"HRESULT_FROM_WIN32({low})"
    return f"0x{unsigned:08X}"


def succeeded(code: int) -> bool:
    """``SUCCEEDED(hr)``: true for S_OK, S_FALSE and every other non-negative HRESULT."""
    return hresult_to_signed(code) >= 0


def failed(code: int) -> bool:
    """``FAILED(hr)``: true when bit 31 is set."""
    return hresult_to_signed(code) < 0


# ---- layouts --------------------------------------------------------------

# (key, x64, x86, ARM64) in bytes, as the Microsoft compiler lays the SDK's
# declarations out (pack 4; CONTEXT 16-aligned on x64 and ARM64), checked
# against PDB-derived layouts.  None: the member does not exist there.  The
# same numbers are static assertions in mdstream/dbghelp.h.
_LAYOUT_ROWS: tuple[tuple[str, int | None, int | None, int | None], ...] = (
    ("sizeof VS_FIXEDFILEINFO", 52, 52, 52),
    ("sizeof MINIDUMP_THREAD_CALLBACK", 1280, 744, 960),
    ("MINIDUMP_THREAD_CALLBACK.ThreadId", 0, 0, 0),
    ("MINIDUMP_THREAD_CALLBACK.ThreadHandle", 4, 4, 4),
    ("MINIDUMP_THREAD_CALLBACK.Pad", None, None, 12),
    ("MINIDUMP_THREAD_CALLBACK.Context", 16, 8, 16),
    ("MINIDUMP_THREAD_CALLBACK.SizeOfContext", 1248, 724, 928),
    ("MINIDUMP_THREAD_CALLBACK.StackBase", 1252, 728, 932),
    ("MINIDUMP_THREAD_CALLBACK.StackEnd", 1260, 736, 940),
    ("sizeof MINIDUMP_THREAD_EX_CALLBACK", 1296, 760, 976),
    ("MINIDUMP_THREAD_EX_CALLBACK.ThreadId", 0, 0, 0),
    ("MINIDUMP_THREAD_EX_CALLBACK.ThreadHandle", 4, 4, 4),
    ("MINIDUMP_THREAD_EX_CALLBACK.Pad", None, None, 12),
    ("MINIDUMP_THREAD_EX_CALLBACK.Context", 16, 8, 16),
    ("MINIDUMP_THREAD_EX_CALLBACK.SizeOfContext", 1248, 724, 928),
    ("MINIDUMP_THREAD_EX_CALLBACK.StackBase", 1252, 728, 932),
    ("MINIDUMP_THREAD_EX_CALLBACK.StackEnd", 1260, 736, 940),
    ("MINIDUMP_THREAD_EX_CALLBACK.BackingStoreBase", 1268, 744, 948),
    ("MINIDUMP_THREAD_EX_CALLBACK.BackingStoreEnd", 1276, 752, 956),
    ("sizeof MINIDUMP_MODULE_CALLBACK", 104, 92, 104),
    ("MINIDUMP_MODULE_CALLBACK.FullPath", 0, 0, 0),
    ("MINIDUMP_MODULE_CALLBACK.BaseOfImage", 8, 4, 8),
    ("MINIDUMP_MODULE_CALLBACK.SizeOfImage", 16, 12, 16),
    ("MINIDUMP_MODULE_CALLBACK.CheckSum", 20, 16, 20),
    ("MINIDUMP_MODULE_CALLBACK.TimeDateStamp", 24, 20, 24),
    ("MINIDUMP_MODULE_CALLBACK.VersionInfo", 28, 24, 28),
    ("MINIDUMP_MODULE_CALLBACK.CvRecord", 80, 76, 80),
    ("MINIDUMP_MODULE_CALLBACK.SizeOfCvRecord", 88, 80, 88),
    ("MINIDUMP_MODULE_CALLBACK.MiscRecord", 92, 84, 92),
    ("MINIDUMP_MODULE_CALLBACK.SizeOfMiscRecord", 100, 88, 100),
    ("sizeof MINIDUMP_INCLUDE_THREAD_CALLBACK", 4, 4, 4),
    ("MINIDUMP_INCLUDE_THREAD_CALLBACK.ThreadId", 0, 0, 0),
    ("sizeof MINIDUMP_INCLUDE_MODULE_CALLBACK", 8, 8, 8),
    ("MINIDUMP_INCLUDE_MODULE_CALLBACK.BaseOfImage", 0, 0, 0),
    ("sizeof MINIDUMP_IO_CALLBACK", 28, 20, 28),
    ("MINIDUMP_IO_CALLBACK.Handle", 0, 0, 0),
    ("MINIDUMP_IO_CALLBACK.Offset", 8, 4, 8),
    ("MINIDUMP_IO_CALLBACK.Buffer", 16, 12, 16),
    ("MINIDUMP_IO_CALLBACK.BufferBytes", 24, 16, 24),
    ("sizeof MINIDUMP_READ_MEMORY_FAILURE_CALLBACK", 16, 16, 16),
    ("MINIDUMP_READ_MEMORY_FAILURE_CALLBACK.Offset", 0, 0, 0),
    ("MINIDUMP_READ_MEMORY_FAILURE_CALLBACK.Bytes", 8, 8, 8),
    ("MINIDUMP_READ_MEMORY_FAILURE_CALLBACK.FailureStatus", 12, 12, 12),
    ("sizeof MINIDUMP_VM_QUERY_CALLBACK", 8, 8, 8),
    ("MINIDUMP_VM_QUERY_CALLBACK.Offset", 0, 0, 0),
    ("sizeof MINIDUMP_VM_PRE_READ_CALLBACK", 20, 16, 20),
    ("MINIDUMP_VM_PRE_READ_CALLBACK.Offset", 0, 0, 0),
    ("MINIDUMP_VM_PRE_READ_CALLBACK.Buffer", 8, 8, 8),
    ("MINIDUMP_VM_PRE_READ_CALLBACK.Size", 16, 12, 16),
    ("sizeof MINIDUMP_VM_POST_READ_CALLBACK", 28, 24, 28),
    ("MINIDUMP_VM_POST_READ_CALLBACK.Offset", 0, 0, 0),
    ("MINIDUMP_VM_POST_READ_CALLBACK.Buffer", 8, 8, 8),
    ("MINIDUMP_VM_POST_READ_CALLBACK.Size", 16, 12, 16),
    ("MINIDUMP_VM_POST_READ_CALLBACK.Completed", 20, 16, 20),
    ("MINIDUMP_VM_POST_READ_CALLBACK.Status", 24, 20, 24),
    ("sizeof MINIDUMP_MEMORY_INFO", 48, 48, 48),
    ("MINIDUMP_MEMORY_INFO.BaseAddress", 0, 0, 0),
    ("MINIDUMP_MEMORY_INFO.AllocationBase", 8, 8, 8),
    ("MINIDUMP_MEMORY_INFO.AllocationProtect", 16, 16, 16),
    ("MINIDUMP_MEMORY_INFO.RegionSize", 24, 24, 24),
    ("MINIDUMP_MEMORY_INFO.State", 32, 32, 32),
    ("MINIDUMP_MEMORY_INFO.Protect", 36, 36, 36),
    ("MINIDUMP_MEMORY_INFO.Type", 40, 40, 40),
    ("sizeof MINIDUMP_CALLBACK_INPUT", 1312, 772, 992),
    ("MINIDUMP_CALLBACK_INPUT.ProcessId", 0, 0, 0),
    ("MINIDUMP_CALLBACK_INPUT.ProcessHandle", 4, 4, 4),
    ("MINIDUMP_CALLBACK_INPUT.CallbackType", 12, 8, 12),
    ("MINIDUMP_CALLBACK_INPUT.Status", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.Thread", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.ThreadEx", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.Module", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.IncludeThread", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.IncludeModule", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.Io", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.ReadMemoryFailure", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.SecondaryFlags", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.VmQuery", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.VmPreRead", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.VmPostRead", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.Io.Handle", 16, 12, 16),
    ("MINIDUMP_CALLBACK_INPUT.Io.Offset", 24, 16, 24),
    ("MINIDUMP_CALLBACK_INPUT.Io.Buffer", 32, 24, 32),
    ("MINIDUMP_CALLBACK_INPUT.Io.BufferBytes", 40, 28, 40),
    ("sizeof MINIDUMP_CALLBACK_OUTPUT", 52, 52, 52),
    ("MINIDUMP_CALLBACK_OUTPUT.ModuleWriteFlags", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.ThreadWriteFlags", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.SecondaryFlags", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.MemoryBase", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.MemorySize", 8, 8, 8),
    ("MINIDUMP_CALLBACK_OUTPUT.CheckCancel", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.Cancel", 4, 4, 4),
    ("MINIDUMP_CALLBACK_OUTPUT.Handle", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.VmRegion", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.Continue", 48, 48, 48),
    ("MINIDUMP_CALLBACK_OUTPUT.VmQueryStatus", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.VmQueryResult", 4, 4, 4),
    ("MINIDUMP_CALLBACK_OUTPUT.VmReadStatus", 0, 0, 0),
    ("MINIDUMP_CALLBACK_OUTPUT.VmReadBytesCompleted", 4, 4, 4),
    ("MINIDUMP_CALLBACK_OUTPUT.Status", 0, 0, 0),
    ("sizeof MINIDUMP_CALLBACK_INFORMATION", 16, 8, 16),
    ("MINIDUMP_CALLBACK_INFORMATION.CallbackRoutine", 0, 0, 0),
    ("MINIDUMP_CALLBACK_INFORMATION.CallbackParam", 8, 4, 8),
    ("sizeof MINIDUMP_EXCEPTION_INFORMATION", 16, 12, 16),
    ("MINIDUMP_EXCEPTION_INFORMATION.ThreadId", 0, 0, 0),
    ("MINIDUMP_EXCEPTION_INFORMATION.ExceptionPointers", 4, 4, 4),
    ("MINIDUMP_EXCEPTION_INFORMATION.ClientPointers", 12, 8, 12),
    ("sizeof MINIDUMP_USER_STREAM", 16, 12, 16),
    ("MINIDUMP_USER_STREAM.Type", 0, 0, 0),
    ("MINIDUMP_USER_STREAM.BufferSize", 4, 4, 4),
    ("MINIDUMP_USER_STREAM.Buffer", 8, 8, 8),
    ("sizeof MINIDUMP_USER_STREAM_INFORMATION", 12, 8, 12),
    ("MINIDUMP_USER_STREAM_INFORMATION.UserStreamCount", 0, 0, 0),
    ("MINIDUMP_USER_STREAM_INFORMATION.UserStreamArray", 4, 4, 4),
)


def _column(index: int) -> Mapping[str, int]:
    table: dict[str, int] = {}
    for key, x64, x86, arm64 in _LAYOUT_ROWS:
        value = (x64, x86, arm64)[index]
        if value is not None:
            table[key] = value
    return MappingProxyType(table)


#: Sizes and offsets on x64 (AMD64), as MSVC compiles the SDK.  Read-only.
REFERENCE_LAYOUT_X64: Mapping[str, int] = _column(0)
#: Sizes and offsets on 32-bit x86, as MSVC compiles the SDK.  Read-only.
REFERENCE_LAYOUT_X86: Mapping[str, int] = _column(1)
#: Sizes and offsets on ARM64, as MSVC compiles the SDK.  Read-only.
REFERENCE_LAYOUT_ARM64: Mapping[str, int] = _column(2)

_REFERENCE_BY_ABI: dict[str, Mapping[str, int]] = {
    "x64": REFERENCE_LAYOUT_X64,
    "x86": REFERENCE_LAYOUT_X86,
    "arm64": REFERENCE_LAYOUT_ARM64,
}


def _layout_module() -> ModuleType:
    # Imported on first use so that this module works without the extension.
    return importlib.import_module("mdstream._dbghelp_layout")


def layout() -> dict[str, int]:
    """Return the sizes and offsets this build's C compiler produced (imports ``mdstream._dbghelp_layout``).

    Same keys as the ``REFERENCE_LAYOUT_*`` table of :func:`compiled_abi`.
    Raises ImportError when the extension is not built.
    """
    return dict(_layout_module().layout())


def compiled_abi() -> str:
    """Return which Microsoft layout the built extension has: ``"x64"``, ``"x86"`` or ``"arm64"``."""
    return str(_layout_module().abi())


def reference_layout(abi: str | None = None) -> Mapping[str, int]:
    """Return the Microsoft reference layout for ``abi`` (default: :func:`compiled_abi`)."""
    key = compiled_abi() if abi is None else abi.lower()
    try:
        return _REFERENCE_BY_ABI[key]
    except KeyError:
        raise ValueError(f"unknown ABI {abi!r}; expected one of {sorted(_REFERENCE_BY_ABI)}") from None
