"""ctypes re-declarations of the DbgHelp callback ABI, for tests that call a
``MINIDUMP_CALLBACK_ROUTINE`` through the raw ABI exactly as DbgHelp would.

Independent of mdstream's C header on purpose: the layout comes from ctypes'
own ``_pack_ = 4`` rules plus MSVC's padding around CONTEXT spelled out, so
agreeing with ``mdstream.dbghelp.layout()`` is evidence, not a tautology
(tests/test_dbghelp_layout.py checks that they agree).

Use :func:`new_input` / :func:`new_output` rather than instantiating the
structures directly: DbgHelp hands the routine a 16-byte aligned input on x64
and ARM64, and C code compiled against the header may rely on it.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from ctypes import POINTER, Structure, Union, c_int32, c_ubyte, c_uint32, c_uint64, c_void_p
from typing import Any, TypeVar

__all__ = [
    "ABI",
    "BOOL",
    "HANDLE",
    "HRESULT",
    "PVOID",
    "ULONG",
    "ULONG64",
    "CONTEXT_SIZE",
    "INPUT_ALIGNMENT",
    "VS_FIXEDFILEINFO",
    "MINIDUMP_THREAD_CALLBACK",
    "MINIDUMP_THREAD_EX_CALLBACK",
    "MINIDUMP_MODULE_CALLBACK",
    "MINIDUMP_INCLUDE_THREAD_CALLBACK",
    "MINIDUMP_INCLUDE_MODULE_CALLBACK",
    "MINIDUMP_IO_CALLBACK",
    "MINIDUMP_READ_MEMORY_FAILURE_CALLBACK",
    "MINIDUMP_VM_QUERY_CALLBACK",
    "MINIDUMP_VM_PRE_READ_CALLBACK",
    "MINIDUMP_VM_POST_READ_CALLBACK",
    "MINIDUMP_MEMORY_INFO",
    "MINIDUMP_CALLBACK_INPUT",
    "MINIDUMP_CALLBACK_OUTPUT",
    "MINIDUMP_CALLBACK_INFORMATION",
    "CALLBACK_ROUTINE",
    "new_input",
    "new_output",
    "ctypes_layout",
]

BOOL = c_int32
HRESULT = c_int32  # a Windows LONG: 32-bit everywhere
ULONG = c_uint32
ULONG64 = c_uint64
HANDLE = c_void_p
PVOID = c_void_p


def _abi() -> str:
    if ctypes.sizeof(c_void_p) == 4:
        return "x86"
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    return "x64"


#: Which Microsoft layout these declarations follow: "x64", "x86" or "arm64".
ABI = _abi()
#: sizeof(CONTEXT) as MSVC lays it out on this ABI.
CONTEXT_SIZE = {"x64": 1232, "x86": 716, "arm64": 912}[ABI]
#: MSVC's alignment of MINIDUMP_CALLBACK_INPUT (CONTEXT's) on this ABI.
INPUT_ALIGNMENT = 4 if ABI == "x86" else 16

# MSVC pads before the 16-aligned CONTEXT on x64 (ARM64 has the SDK's own
# ``Pad`` member there instead) and after the last member up to a multiple of
# 16 on both; ctypes caps alignment at _pack_, so the padding is explicit.
_HEAD: list[tuple[str, Any]] = [("ThreadId", ULONG), ("ThreadHandle", HANDLE)]
if ABI == "x64":
    _HEAD.append(("_context_pad", c_uint32))
elif ABI == "arm64":
    _HEAD.append(("Pad", ULONG))
_TAIL_PAD: list[tuple[str, Any]] = [] if ABI == "x86" else [("_tail_pad", c_ubyte * 12)]


class VS_FIXEDFILEINFO(Structure):
    """``VS_FIXEDFILEINFO`` (13 DWORDs)."""

    _pack_ = 4
    _fields_ = [
        (name, c_uint32)
        for name in (
            "dwSignature",
            "dwStrucVersion",
            "dwFileVersionMS",
            "dwFileVersionLS",
            "dwProductVersionMS",
            "dwProductVersionLS",
            "dwFileFlagsMask",
            "dwFileFlags",
            "dwFileOS",
            "dwFileType",
            "dwFileSubtype",
            "dwFileDateMS",
            "dwFileDateLS",
        )
    ]


class MINIDUMP_THREAD_CALLBACK(Structure):
    """``MINIDUMP_THREAD_CALLBACK``; ``Context`` is the CONTEXT's bytes."""

    _pack_ = 4
    _fields_ = [
        *_HEAD,
        ("Context", c_ubyte * CONTEXT_SIZE),
        ("SizeOfContext", ULONG),
        ("StackBase", ULONG64),
        ("StackEnd", ULONG64),
        *_TAIL_PAD,
    ]


class MINIDUMP_THREAD_EX_CALLBACK(Structure):
    """``MINIDUMP_THREAD_EX_CALLBACK``: the largest input member, so it sets the union size."""

    _pack_ = 4
    _fields_ = [
        *_HEAD,
        ("Context", c_ubyte * CONTEXT_SIZE),
        ("SizeOfContext", ULONG),
        ("StackBase", ULONG64),
        ("StackEnd", ULONG64),
        ("BackingStoreBase", ULONG64),
        ("BackingStoreEnd", ULONG64),
        *_TAIL_PAD,
    ]


class MINIDUMP_MODULE_CALLBACK(Structure):
    """``MINIDUMP_MODULE_CALLBACK``."""

    _pack_ = 4
    _fields_ = [
        ("FullPath", c_void_p),  # PWCHAR (UTF-16)
        ("BaseOfImage", ULONG64),
        ("SizeOfImage", ULONG),
        ("CheckSum", ULONG),
        ("TimeDateStamp", ULONG),
        ("VersionInfo", VS_FIXEDFILEINFO),
        ("CvRecord", PVOID),
        ("SizeOfCvRecord", ULONG),
        ("MiscRecord", PVOID),
        ("SizeOfMiscRecord", ULONG),
    ]


class MINIDUMP_INCLUDE_THREAD_CALLBACK(Structure):
    """``MINIDUMP_INCLUDE_THREAD_CALLBACK``."""

    _pack_ = 4
    _fields_ = [("ThreadId", ULONG)]


class MINIDUMP_INCLUDE_MODULE_CALLBACK(Structure):
    """``MINIDUMP_INCLUDE_MODULE_CALLBACK``."""

    _pack_ = 4
    _fields_ = [("BaseOfImage", ULONG64)]


class MINIDUMP_IO_CALLBACK(Structure):
    """``MINIDUMP_IO_CALLBACK``: one write of the dump (``pwrite(Offset, Buffer, BufferBytes)``)."""

    _pack_ = 4
    _fields_ = [
        ("Handle", HANDLE),
        ("Offset", ULONG64),
        ("Buffer", PVOID),
        ("BufferBytes", ULONG),
    ]


class MINIDUMP_READ_MEMORY_FAILURE_CALLBACK(Structure):
    """``MINIDUMP_READ_MEMORY_FAILURE_CALLBACK``."""

    _pack_ = 4
    _fields_ = [("Offset", ULONG64), ("Bytes", ULONG), ("FailureStatus", HRESULT)]


class MINIDUMP_VM_QUERY_CALLBACK(Structure):
    """``MINIDUMP_VM_QUERY_CALLBACK``."""

    _pack_ = 4
    _fields_ = [("Offset", ULONG64)]


class MINIDUMP_VM_PRE_READ_CALLBACK(Structure):
    """``MINIDUMP_VM_PRE_READ_CALLBACK``."""

    _pack_ = 4
    _fields_ = [("Offset", ULONG64), ("Buffer", PVOID), ("Size", ULONG)]


class MINIDUMP_VM_POST_READ_CALLBACK(Structure):
    """``MINIDUMP_VM_POST_READ_CALLBACK``."""

    _pack_ = 4
    _fields_ = [
        ("Offset", ULONG64),
        ("Buffer", PVOID),
        ("Size", ULONG),
        ("Completed", ULONG),
        ("Status", HRESULT),
    ]


class MINIDUMP_MEMORY_INFO(Structure):
    """``MINIDUMP_MEMORY_INFO``."""

    _pack_ = 4
    _fields_ = [
        ("BaseAddress", ULONG64),
        ("AllocationBase", ULONG64),
        ("AllocationProtect", c_uint32),
        ("__alignment1", c_uint32),
        ("RegionSize", ULONG64),
        ("State", c_uint32),
        ("Protect", c_uint32),
        ("Type", c_uint32),
        ("__alignment2", c_uint32),
    ]


class _INPUT_UNION(Union):
    _pack_ = 4
    _fields_ = [
        ("Status", HRESULT),
        ("Thread", MINIDUMP_THREAD_CALLBACK),
        ("ThreadEx", MINIDUMP_THREAD_EX_CALLBACK),
        ("Module", MINIDUMP_MODULE_CALLBACK),
        ("IncludeThread", MINIDUMP_INCLUDE_THREAD_CALLBACK),
        ("IncludeModule", MINIDUMP_INCLUDE_MODULE_CALLBACK),
        ("Io", MINIDUMP_IO_CALLBACK),
        ("ReadMemoryFailure", MINIDUMP_READ_MEMORY_FAILURE_CALLBACK),
        ("SecondaryFlags", ULONG),
        ("VmQuery", MINIDUMP_VM_QUERY_CALLBACK),
        ("VmPreRead", MINIDUMP_VM_PRE_READ_CALLBACK),
        ("VmPostRead", MINIDUMP_VM_POST_READ_CALLBACK),
        # Pins the union at MSVC's size even if a member above is trimmed.
        ("_bytes", c_ubyte * ctypes.sizeof(MINIDUMP_THREAD_EX_CALLBACK)),
    ]


class MINIDUMP_CALLBACK_INPUT(Structure):
    """``MINIDUMP_CALLBACK_INPUT`` at its full size (1312 bytes on x64, 772 on x86, 992 on ARM64)."""

    _pack_ = 4
    _anonymous_ = ("u",)
    _fields_ = [
        ("ProcessId", ULONG),
        ("ProcessHandle", HANDLE),
        ("CallbackType", ULONG),
        ("u", _INPUT_UNION),
    ]


class _OUT_MEMORY(Structure):
    _pack_ = 4
    _fields_ = [("MemoryBase", ULONG64), ("MemorySize", ULONG)]


class _OUT_CANCEL(Structure):
    _pack_ = 4
    _fields_ = [("CheckCancel", BOOL), ("Cancel", BOOL)]


class _OUT_VM_REGION(Structure):
    _pack_ = 4
    _fields_ = [("VmRegion", MINIDUMP_MEMORY_INFO), ("Continue", BOOL)]


class _OUT_VM_QUERY(Structure):
    _pack_ = 4
    _fields_ = [("VmQueryStatus", HRESULT), ("VmQueryResult", MINIDUMP_MEMORY_INFO)]


class _OUT_VM_READ(Structure):
    _pack_ = 4
    _fields_ = [("VmReadStatus", HRESULT), ("VmReadBytesCompleted", ULONG)]


class MINIDUMP_CALLBACK_OUTPUT(Union):
    """``MINIDUMP_CALLBACK_OUTPUT``: one union, ``Status`` at offset 0, 52 bytes."""

    _pack_ = 4
    _anonymous_ = ("_memory", "_cancel", "_vm_region", "_vm_query", "_vm_read")
    _fields_ = [
        ("ModuleWriteFlags", ULONG),
        ("ThreadWriteFlags", ULONG),
        ("SecondaryFlags", ULONG),
        ("_memory", _OUT_MEMORY),
        ("_cancel", _OUT_CANCEL),
        ("Handle", HANDLE),
        ("_vm_region", _OUT_VM_REGION),
        ("_vm_query", _OUT_VM_QUERY),
        ("_vm_read", _OUT_VM_READ),
        ("Status", HRESULT),
    ]


# WINAPI: __stdcall on 32-bit Windows, the one C convention elsewhere.
_FUNCTYPE = ctypes.WINFUNCTYPE if sys.platform == "win32" and ABI == "x86" else ctypes.CFUNCTYPE  # type: ignore[attr-defined]

#: ``MINIDUMP_CALLBACK_ROUTINE``: ``BOOL (PVOID, PMINIDUMP_CALLBACK_INPUT, PMINIDUMP_CALLBACK_OUTPUT)``.
CALLBACK_ROUTINE = _FUNCTYPE(ctypes.c_int, c_void_p, POINTER(MINIDUMP_CALLBACK_INPUT), POINTER(MINIDUMP_CALLBACK_OUTPUT))


class MINIDUMP_CALLBACK_INFORMATION(Structure):
    """``MINIDUMP_CALLBACK_INFORMATION``."""

    _pack_ = 4
    _fields_ = [("CallbackRoutine", CALLBACK_ROUTINE), ("CallbackParam", PVOID)]


_S = TypeVar("_S", bound=ctypes.Structure)


def _aligned(cls: type[_S], alignment: int) -> _S:
    # ctypes cannot state an alignment above _pack_ (before Python 3.13), so
    # over-allocate and place the struct; from_buffer keeps the storage alive.
    storage = (c_ubyte * (ctypes.sizeof(cls) + alignment - 1))()
    shift = -ctypes.addressof(storage) % alignment
    return cls.from_buffer(storage, shift)


def new_input(callback_type: int = 0, **fields: object) -> MINIDUMP_CALLBACK_INPUT:
    """Return a zeroed ``MINIDUMP_CALLBACK_INPUT`` at DbgHelp's alignment, with ``CallbackType`` set.

    Extra keyword arguments set top-level or union members (``Status=...``).
    """
    inp = _aligned(MINIDUMP_CALLBACK_INPUT, INPUT_ALIGNMENT)
    inp.CallbackType = int(callback_type)
    for name, value in fields.items():
        setattr(inp, name, value)
    return inp


def new_output(status: int = 0) -> MINIDUMP_CALLBACK_OUTPUT:
    """Return a zeroed ``MINIDUMP_CALLBACK_OUTPUT`` with ``Status`` preset (DbgHelp presets E_NOTIMPL for IoStart)."""
    out = MINIDUMP_CALLBACK_OUTPUT()
    out.Status = int(status)
    return out


def _offset(cls: type, path: str) -> int:
    total = 0
    for part in path.split("."):
        field = getattr(cls, part)
        total += field.offset
        cls = _field_type(cls, part)
    return total


def _field_type(cls: type, name: str) -> type:
    for owner in (cls, *[t for n, t in getattr(cls, "_fields_", ()) if n in getattr(cls, "_anonymous_", ())]):
        for n, t in owner._fields_:
            if n == name:
                return t  # type: ignore[no-any-return]
    raise AttributeError(name)


_LAYOUT_SPEC: dict[type, tuple[str, ...]] = {
    MINIDUMP_IO_CALLBACK: ("Handle", "Offset", "Buffer", "BufferBytes"),
    MINIDUMP_THREAD_CALLBACK: ("ThreadId", "ThreadHandle", "Context", "SizeOfContext", "StackBase", "StackEnd"),
    MINIDUMP_THREAD_EX_CALLBACK: (
        "ThreadId",
        "ThreadHandle",
        "Context",
        "SizeOfContext",
        "StackBase",
        "StackEnd",
        "BackingStoreBase",
        "BackingStoreEnd",
    ),
    MINIDUMP_MODULE_CALLBACK: (
        "FullPath",
        "BaseOfImage",
        "SizeOfImage",
        "CheckSum",
        "TimeDateStamp",
        "VersionInfo",
        "CvRecord",
        "SizeOfCvRecord",
        "MiscRecord",
        "SizeOfMiscRecord",
    ),
    MINIDUMP_READ_MEMORY_FAILURE_CALLBACK: ("Offset", "Bytes", "FailureStatus"),
    MINIDUMP_VM_PRE_READ_CALLBACK: ("Offset", "Buffer", "Size"),
    MINIDUMP_VM_POST_READ_CALLBACK: ("Offset", "Buffer", "Size", "Completed", "Status"),
    MINIDUMP_MEMORY_INFO: ("BaseAddress", "AllocationBase", "AllocationProtect", "RegionSize", "State", "Protect", "Type"),
    MINIDUMP_CALLBACK_INPUT: (
        "ProcessId",
        "ProcessHandle",
        "CallbackType",
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
        "Io.Handle",
        "Io.Offset",
        "Io.Buffer",
        "Io.BufferBytes",
    ),
    MINIDUMP_CALLBACK_OUTPUT: (
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
    ),
    MINIDUMP_CALLBACK_INFORMATION: ("CallbackRoutine", "CallbackParam"),
}


def ctypes_layout() -> dict[str, int]:
    """Sizes and offsets of these ctypes declarations, keyed like ``mdstream.dbghelp.layout()``."""
    result: dict[str, int] = {}
    for cls, fields in _LAYOUT_SPEC.items():
        result[f"sizeof {cls.__name__}"] = ctypes.sizeof(cls)
        for path in fields:
            result[f"{cls.__name__}.{path}"] = _offset(cls, path)
    if ABI == "arm64":
        for cls in (MINIDUMP_THREAD_CALLBACK, MINIDUMP_THREAD_EX_CALLBACK):
            result[f"{cls.__name__}.Pad"] = _offset(cls, "Pad")
    return result
