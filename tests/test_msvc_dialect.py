"""The C core in the MSVC dialect, on Linux: clang in Microsoft mode, mingw-w64's headers for the SDK.

Issue 7 (setup.py builds on Windows with MSVC, x64 and x86).  There is no
cl.exe here; the closest honest stand-in is clang targeting
``x86_64-pc-windows-msvc`` / ``i686-pc-windows-msvc`` (Microsoft ABI, Microsoft
record layout and calling conventions, ``-fms-extensions -fms-compatibility
-fms-volatile``: the front end clang-cl uses) with the Windows SDK and UCRT
headers replaced by mingw-w64's.  What makes it a check of *cl.exe's* dialect
rather than of clang's:

* Project code sees exactly cl.exe's predefined macros and no others:
  ``-undef`` drops clang's (``__clang__``, ``__GNUC__``, ``__x86_64__``,
  ``__SIZEOF_POINTER__``, ...) and cl.exe's set is defined instead
  (``_MSC_VER`` 1938, ``_M_X64``/``_M_IX86``, ``_WIN32``/``_WIN64``,
  ``_MT``/``_DLL`` for setuptools' ``/MD``, ``__STDC_NO_VLA__``, ...), plus
  setup.py's ``NDEBUG`` and ``NPY_NO_DEPRECATED_API``.  So ``atomics.h`` takes
  its ``_MSC_VER && !__clang__`` branch (Interlocked*, ``_ReadWriteBarrier``,
  ``<intrin.h>``, the ``_M_IX86`` block), ``dbghelp.h`` its SDK branch, and
  every ``__GNUC__`` guard is off, as under cl.exe.  Every core compile has a
  forced-in ``#error``/``_Static_assert`` on that.
* System headers get the macros they are written for: each ``<header>`` the
  core includes is a generated shim that pushes the project's macros, defines
  clang's for the target plus GNU C / mingw-w64's identity (``__GNUC__``,
  ``__MINGW32__``; no ``_MSC_VER``, with which mingw-w64 10's headers break),
  ``#include_next``-s the real header and pops back.
* ``<dbghelp.h>`` is replaced, not wrapped: mingw-w64's is wrong for the
  callback types (see the top of ``mdstream/dbghelp.h``), so the shim holds a
  stand-in with the SDK's declarations (minidumpapiset.h: member names, types,
  order, ``pshpack4``; ``CONTEXT`` from winnt.h).  ``mdstream/dbghelp.h``'s
  static layout assertions then run against the Microsoft record layout of
  the SDK's shapes, for x64 and x86.
* ``-Wall -Wextra`` (clang-cl's ``/W4``) ``-Werror``, ``-Werror=vla``,
  ``-Werror=gnu`` (statement expressions, ``?:`` without middle operand, case
  ranges, ``void *`` arithmetic, zero-size arrays, empty initialisers, ...).
* A token scan: every token the compiler proper receives that was *spelled in
  the project's files* and is GCC/clang-only (``__attribute__``,
  ``__builtin_*``, ``__atomic_*``, ``__sync_*``, ``__asm__``, ``typeof``,
  ``__int128``, ...) is an error: clang accepts them in Microsoft mode,
  cl.exe does not.
* The objects are COFF for the right machine, ``mds_dump_callback`` is
  ``_mds_dump_callback@12`` (``__stdcall``) on x86, and no GCC runtime call
  (``__atomic_*`` libcalls, ``__udivdi3``, ...) is referenced.

What it cannot prove: that cl.exe itself accepts the code (clang's Microsoft
mode is more permissive in places and is not cl.exe's C11 implementation);
that the real SDK/UCRT headers declare what mingw-w64's do (types,
``InterlockedExchange64`` on x86, ...); the memory-ordering behaviour of the
generated code; linking (ucrt.lib, advapi32.lib via ``#pragma comment``);
setuptools' real cl.exe command line and the Cython-generated C.

``pytest -k "wine or mingw"`` (or ``-k msvc``) selects this module; it skips
with the package to install when clang or the mingw-w64 headers are missing.
``python tests/test_msvc_dialect.py [DIR]`` writes the shims to DIR and prints
the compile commands.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "mdstream" / "include"
SRC = ROOT / "mdstream" / "src"
PROJECT_DIRS = (INCLUDE, SRC)

# Visual Studio 2022 17.8 (cl.exe 19.38): has /std:c11 and /experimental:c11atomics, as setup.py asks.
MS_COMPAT_VERSION = "19.38.33130"
TARGETS = {"x64": "x86_64-pc-windows-msvc", "x86": "i686-pc-windows-msvc"}
MINGW_TARGETS = {"x64": "x86_64-w64-mingw32", "x86": "i686-w64-mingw32"}
COFF_MACHINE = {"x64": 0x8664, "x86": 0x014C}

# cl.exe's predefined macros for a C compile with setuptools' flags (/nologo
# /O2 /W3 /GL /DNDEBUG /MD) and setup.py's /W4 /std:c11 /experimental:c11atomics.
# Values clang predefines too (_MSC_VER, _M_*, ...) are clang's for
# -fms-compatibility-version; __STDC_VERSION__ & co. survive -undef.
CL_MACROS_FROM_CLANG = (
    "_MSC_VER", "_MSC_FULL_VER", "_MSC_BUILD", "_MSC_EXTENSIONS", "_WIN32", "_WIN64", "_M_X64", "_M_AMD64",
    "_M_IX86", "_M_IX86_FP", "_INTEGRAL_MAX_BITS", "_M_FP_PRECISE", "_MSVC_EXECUTION_CHARACTER_SET",
    "__STDC_NO_THREADS__",
)
CL_MACROS_EXTRA = {
    "_MT": "1",                # /MD
    "_DLL": "1",               # /MD
    "_MSVC_TRADITIONAL": "0",  # /std:c11 implies the conforming preprocessor (/Zc:preprocessor)
    "__STDC_NO_VLA__": "1",    # cl.exe has no VLAs
    "__STDC_NO_COMPLEX__": "1",
    # Not __STDC__: cl.exe defines it only with /Zc:__STDC__ (or /Za), not for /std:c11.
}
SETUP_PY_DEFINES = {"NDEBUG": "1", "NPY_NO_DEPRECATED_API": "NPY_1_7_API_VERSION"}
# Hidden from system headers, which are mingw-w64's and not cl.exe's: its
# headers (version 10) take broken paths when they see _MSC_VER.
MS_ONLY_MACROS = re.compile(r"^(_MSC_\w+|_MSVC_\w+|_M_FP_\w+|_ISO_VOLATILE|_MT|_DLL|__STDC_NO_VLA__|"
                            r"__STDC_NO_COMPLEX__)$")
# Given to system headers: GNU C's and mingw-w64's identity, as clang predefines
# them for *-w64-mingw32 (without __GNUC__, mingw-w64 defines __attribute__
# away, which breaks clang's own intrinsic headers).
MINGW_IDENTITY = re.compile(r"^(__GNUC__|__GNUC_MINOR__|__GNUC_PATCHLEVEL__|__GNUC_STDC_INLINE__|__MINGW32__|"
                            r"__MINGW64__|__MSVCRT__|__WIN32|__WIN32__|__WIN64|__WIN64__|__WINNT|__WINNT__|_X86_)$")

# The Windows build's policy is /W4 (clang-cl: -Wall -Wextra) without /WX;
# here every warning is an error, less the ones setup.py turns off elsewhere.
WARNINGS = [
    "-Wall", "-Wextra", "-Wno-unused-function", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
    "-Werror", "-Werror=vla", "-Werror=gnu", "-Werror=pointer-arith", "-Werror=implicit-function-declaration",
    "-Werror=int-conversion", "-Werror=incompatible-pointer-types", "-Werror=incompatible-function-pointer-types",
    "-Werror=c2x-extensions",  # C23 in a C11 build (empty initialisers, ...): not cl.exe's /std:c11
]

# Spelled in a project file and still there after cl.exe's preprocessing:
# GCC/clang-only, cl.exe rejects it.
GCC_ONLY_TOKEN = re.compile(
    r"^(__attribute__|__attribute|__builtin_\w+|__atomic_\w+|__sync_\w+|__c11_atomic_\w+|__asm__|asm|"
    r"__volatile__|__inline__|__typeof__|__typeof|typeof|__auto_type|__extension__|__label__|__int128|"
    r"__int128_t|__uint128_t|__thread|__real__|__imag__|__alignof__|_Complex|_Imaginary|__has_builtin)$"
)
TOKEN_LINE = re.compile(r"^\S+ '(?P<text>[^']*)'.*?Loc=<(?P<loc>[^>]*?)(?: <Spelling=(?P<spelling>[^>]*?)>)?>\s*$")
# Undefined symbols no MSVC object should have: GCC's atomic libcalls and libgcc helpers.
GCC_RUNTIME_SYMBOL = re.compile(r"^_{0,3}(atomic_\w+|sync_\w+|u?divdi3|u?moddi3|udivmoddi4|ashldi3|ashrdi3|"
                                r"lshrdi3|muldi3|popcount\w+|stack_chk_\w+|chkstk_ms|gcc_\w+)$")

CLANG_PACKAGE = "clang"
MINGW_HEADERS_PACKAGE = "mingw-w64-common"


# ---- finding the tools -------------------------------------------------------------------------------


def _clang_major(path: str) -> int:
    match = re.search(r"clang-(\d+)$|llvm-(\d+)/", path)
    return int(next(g for g in match.groups() if g)) if match else 0


def _find_clang() -> str | None:
    """$MDSTREAM_CLANG, else the newest clang-NN / clang / /usr/lib/llvm-NN/bin/clang that targets MSVC."""
    explicit = os.environ.get("MDSTREAM_CLANG")
    if explicit:
        return shutil.which(explicit)
    candidates = [p for p in (shutil.which(f"clang-{v}") for v in range(40, 13, -1)) if p]
    candidates += sorted((str(p) for p in Path("/usr/lib").glob("llvm-*/bin/clang")), key=_clang_major, reverse=True)
    unversioned = shutil.which("clang")
    if unversioned:
        candidates.append(unversioned)
    for path in candidates:
        probe = subprocess.run([path, "--target=x86_64-pc-windows-msvc", "-E", "-dM", "-x", "c", os.devnull],
                               capture_output=True, text=True)
        if probe.returncode == 0 and "#define _MSC_VER " in probe.stdout:
            return path
    return None


def _find_mingw_headers() -> Path | None:
    for candidate in ("/usr/share/mingw-w64/include", "/usr/x86_64-w64-mingw32/include",
                      "/usr/i686-w64-mingw32/include"):
        path = Path(candidate)
        if all((path / name).is_file() for name in ("windows.h", "winnt.h", "stdlib.h", "pshpack4.h")):
            return path
    return None


# ---- the dialect -------------------------------------------------------------------------------------


def _core_sources() -> list[Path]:
    """setup.py's C_CORE: every mdstream/src/*.c."""
    return sorted(SRC.glob("*.c"))


def _system_includes_of_project() -> set[str]:
    """Every <header> the core includes, whatever the branch: each gets a shim."""
    names = set()
    for path in [*SRC.glob("*.c"), *SRC.glob("*.h"), *INCLUDE.glob("mdstream/*.h")]:
        for match in re.finditer(r"^\s*#\s*include\s*<([^>]+)>", path.read_text(errors="replace"), re.M):
            names.add(match.group(1))
    return names | {"windows.h", "intrin.h", "dbghelp.h"}


def _clang_predefines(clang: str, argv: list[str]) -> dict[str, str]:
    """name (with its parameter list, if any) -> replacement."""
    proc = subprocess.run([clang, *argv, "-E", "-dM", "-x", "c", os.devnull], capture_output=True, text=True,
                          check=True)
    macros = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"#define (\w+(?:\([^)]*\))?) ?(.*)$", line)
        if match:
            macros[match.group(1)] = match.group(2)
    return macros


def _bare(name: str) -> str:
    return name.split("(", 1)[0]


SDK_DBGHELP_STAND_IN = r"""
/* Stand-in for the Windows SDK's <dbghelp.h> (generated by tests/test_msvc_dialect.py).
 * mingw-w64's is wrong for the minidump callback types; these are the SDK's
 * declarations from minidumpapiset.h, which the real dbghelp.h includes. */
#ifndef _DBGHELP_
#define _DBGHELP_
#define _MINIDUMP_H
#include <windows.h>
#include <pshpack4.h>
#ifdef __cplusplus
extern "C" {
#endif

typedef struct _MINIDUMP_MEMORY_INFO {
    ULONG64 BaseAddress;
    ULONG64 AllocationBase;
    ULONG32 AllocationProtect;
    ULONG32 __alignment1;
    ULONG64 RegionSize;
    ULONG32 State;
    ULONG32 Protect;
    ULONG32 Type;
    ULONG32 __alignment2;
} MINIDUMP_MEMORY_INFO, *PMINIDUMP_MEMORY_INFO;

typedef struct _MINIDUMP_EXCEPTION_INFORMATION {
    DWORD ThreadId;
    PEXCEPTION_POINTERS ExceptionPointers;
    BOOL ClientPointers;
} MINIDUMP_EXCEPTION_INFORMATION, *PMINIDUMP_EXCEPTION_INFORMATION;

typedef struct _MINIDUMP_USER_STREAM {
    ULONG32 Type;
    ULONG BufferSize;
    PVOID Buffer;
} MINIDUMP_USER_STREAM, *PMINIDUMP_USER_STREAM;

typedef struct _MINIDUMP_USER_STREAM_INFORMATION {
    ULONG UserStreamCount;
    PMINIDUMP_USER_STREAM UserStreamArray;
} MINIDUMP_USER_STREAM_INFORMATION, *PMINIDUMP_USER_STREAM_INFORMATION;

typedef enum _MINIDUMP_CALLBACK_TYPE {
    ModuleCallback, ThreadCallback, ThreadExCallback, IncludeThreadCallback, IncludeModuleCallback,
    MemoryCallback, CancelCallback, WriteKernelMinidumpCallback, KernelMinidumpStatusCallback,
    RemoveMemoryCallback, IncludeVmRegionCallback, IoStartCallback, IoWriteAllCallback, IoFinishCallback,
    ReadMemoryFailureCallback, SecondaryFlagsCallback, IsProcessSnapshotCallback, VmStartCallback,
    VmQueryCallback, VmPreReadCallback, VmPostReadCallback
} MINIDUMP_CALLBACK_TYPE;

typedef struct _MINIDUMP_THREAD_CALLBACK {
    ULONG ThreadId;
    HANDLE ThreadHandle;
#if defined(_ARM64_)
    ULONG Pad;
#endif
    CONTEXT Context;
    ULONG SizeOfContext;
    ULONG64 StackBase;
    ULONG64 StackEnd;
} MINIDUMP_THREAD_CALLBACK, *PMINIDUMP_THREAD_CALLBACK;

typedef struct _MINIDUMP_THREAD_EX_CALLBACK {
    ULONG ThreadId;
    HANDLE ThreadHandle;
#if defined(_ARM64_)
    ULONG Pad;
#endif
    CONTEXT Context;
    ULONG SizeOfContext;
    ULONG64 StackBase;
    ULONG64 StackEnd;
    ULONG64 BackingStoreBase;
    ULONG64 BackingStoreEnd;
} MINIDUMP_THREAD_EX_CALLBACK, *PMINIDUMP_THREAD_EX_CALLBACK;

typedef struct _MINIDUMP_INCLUDE_THREAD_CALLBACK {
    ULONG ThreadId;
} MINIDUMP_INCLUDE_THREAD_CALLBACK, *PMINIDUMP_INCLUDE_THREAD_CALLBACK;

typedef enum _THREAD_WRITE_FLAGS {
    ThreadWriteThread = 0x0001, ThreadWriteStack = 0x0002, ThreadWriteContext = 0x0004,
    ThreadWriteBackingStore = 0x0008, ThreadWriteInstructionWindow = 0x0010, ThreadWriteThreadData = 0x0020,
    ThreadWriteThreadInfo = 0x0040
} THREAD_WRITE_FLAGS;

typedef struct _MINIDUMP_MODULE_CALLBACK {
    PWCHAR FullPath;
    ULONG64 BaseOfImage;
    ULONG SizeOfImage;
    ULONG CheckSum;
    ULONG TimeDateStamp;
    VS_FIXEDFILEINFO VersionInfo;
    PVOID CvRecord;
    ULONG SizeOfCvRecord;
    PVOID MiscRecord;
    ULONG SizeOfMiscRecord;
} MINIDUMP_MODULE_CALLBACK, *PMINIDUMP_MODULE_CALLBACK;

typedef struct _MINIDUMP_INCLUDE_MODULE_CALLBACK {
    ULONG64 BaseOfImage;
} MINIDUMP_INCLUDE_MODULE_CALLBACK, *PMINIDUMP_INCLUDE_MODULE_CALLBACK;

typedef enum _MODULE_WRITE_FLAGS {
    ModuleWriteModule = 0x0001, ModuleWriteDataSeg = 0x0002, ModuleWriteMiscRecord = 0x0004,
    ModuleWriteCvRecord = 0x0008, ModuleReferencedByMemory = 0x0010, ModuleWriteTlsData = 0x0020,
    ModuleWriteCodeSegs = 0x0040
} MODULE_WRITE_FLAGS;

typedef struct _MINIDUMP_IO_CALLBACK {
    HANDLE Handle;
    ULONG64 Offset;
    PVOID Buffer;
    ULONG BufferBytes;
} MINIDUMP_IO_CALLBACK, *PMINIDUMP_IO_CALLBACK;

typedef struct _MINIDUMP_READ_MEMORY_FAILURE_CALLBACK {
    ULONG64 Offset;
    ULONG Bytes;
    HRESULT FailureStatus;
} MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, *PMINIDUMP_READ_MEMORY_FAILURE_CALLBACK;

typedef struct _MINIDUMP_VM_QUERY_CALLBACK {
    ULONG64 Offset;
} MINIDUMP_VM_QUERY_CALLBACK, *PMINIDUMP_VM_QUERY_CALLBACK;

typedef struct _MINIDUMP_VM_PRE_READ_CALLBACK {
    ULONG64 Offset;
    PVOID Buffer;
    ULONG Size;
} MINIDUMP_VM_PRE_READ_CALLBACK, *PMINIDUMP_VM_PRE_READ_CALLBACK;

typedef struct _MINIDUMP_VM_POST_READ_CALLBACK {
    ULONG64 Offset;
    PVOID Buffer;
    ULONG Size;
    ULONG Completed;
    HRESULT Status;
} MINIDUMP_VM_POST_READ_CALLBACK, *PMINIDUMP_VM_POST_READ_CALLBACK;

typedef struct _MINIDUMP_CALLBACK_INPUT {
    ULONG ProcessId;
    HANDLE ProcessHandle;
    ULONG CallbackType;
    union {
        HRESULT Status;
        MINIDUMP_THREAD_CALLBACK Thread;
        MINIDUMP_THREAD_EX_CALLBACK ThreadEx;
        MINIDUMP_MODULE_CALLBACK Module;
        MINIDUMP_INCLUDE_THREAD_CALLBACK IncludeThread;
        MINIDUMP_INCLUDE_MODULE_CALLBACK IncludeModule;
        MINIDUMP_IO_CALLBACK Io;
        MINIDUMP_READ_MEMORY_FAILURE_CALLBACK ReadMemoryFailure;
        ULONG SecondaryFlags;
        MINIDUMP_VM_QUERY_CALLBACK VmQuery;
        MINIDUMP_VM_PRE_READ_CALLBACK VmPreRead;
        MINIDUMP_VM_POST_READ_CALLBACK VmPostRead;
    };
} MINIDUMP_CALLBACK_INPUT, *PMINIDUMP_CALLBACK_INPUT;

typedef struct _MINIDUMP_CALLBACK_OUTPUT {
    union {
        ULONG ModuleWriteFlags;
        ULONG ThreadWriteFlags;
        ULONG SecondaryFlags;
        struct {
            ULONG64 MemoryBase;
            ULONG MemorySize;
        };
        struct {
            BOOL CheckCancel;
            BOOL Cancel;
        };
        HANDLE Handle;
        struct {
            MINIDUMP_MEMORY_INFO VmRegion;
            BOOL Continue;
        };
        struct {
            HRESULT VmQueryStatus;
            MINIDUMP_MEMORY_INFO VmQueryResult;
        };
        struct {
            HRESULT VmReadStatus;
            ULONG VmReadBytesCompleted;
        };
        HRESULT Status;
    };
} MINIDUMP_CALLBACK_OUTPUT, *PMINIDUMP_CALLBACK_OUTPUT;

typedef enum _MINIDUMP_TYPE {
    MiniDumpNormal = 0x00000000, MiniDumpWithDataSegs = 0x00000001, MiniDumpWithFullMemory = 0x00000002,
    MiniDumpWithHandleData = 0x00000004, MiniDumpFilterMemory = 0x00000008, MiniDumpScanMemory = 0x00000010,
    MiniDumpWithUnloadedModules = 0x00000020, MiniDumpWithIndirectlyReferencedMemory = 0x00000040,
    MiniDumpFilterModulePaths = 0x00000080, MiniDumpWithProcessThreadData = 0x00000100,
    MiniDumpWithPrivateReadWriteMemory = 0x00000200, MiniDumpWithoutOptionalData = 0x00000400,
    MiniDumpWithFullMemoryInfo = 0x00000800, MiniDumpWithThreadInfo = 0x00001000,
    MiniDumpWithCodeSegs = 0x00002000, MiniDumpWithoutAuxiliaryState = 0x00004000,
    MiniDumpWithFullAuxiliaryState = 0x00008000, MiniDumpWithPrivateWriteCopyMemory = 0x00010000,
    MiniDumpIgnoreInaccessibleMemory = 0x00020000, MiniDumpWithTokenInformation = 0x00040000,
    MiniDumpWithModuleHeaders = 0x00080000, MiniDumpFilterTriage = 0x00100000,
    MiniDumpWithAvxXStateContext = 0x00200000, MiniDumpWithIptTrace = 0x00400000,
    MiniDumpScanInaccessiblePartialPages = 0x00800000, MiniDumpFilterWriteCombinedMemory = 0x01000000,
    MiniDumpValidTypeFlags = 0x01ffffff
} MINIDUMP_TYPE;

typedef enum _MINIDUMP_SECONDARY_FLAGS {
    MiniSecondaryWithoutPowerInfo = 0x00000001,
    MiniSecondaryValidFlags = 0x00000001
} MINIDUMP_SECONDARY_FLAGS;

typedef BOOL(WINAPI *MINIDUMP_CALLBACK_ROUTINE)(PVOID CallbackParam, PMINIDUMP_CALLBACK_INPUT CallbackInput,
                                                PMINIDUMP_CALLBACK_OUTPUT CallbackOutput);

typedef struct _MINIDUMP_CALLBACK_INFORMATION {
    MINIDUMP_CALLBACK_ROUTINE CallbackRoutine;
    PVOID CallbackParam;
} MINIDUMP_CALLBACK_INFORMATION, *PMINIDUMP_CALLBACK_INFORMATION;

BOOL WINAPI MiniDumpWriteDump(HANDLE hProcess, DWORD ProcessId, HANDLE hFile, MINIDUMP_TYPE DumpType,
                              PMINIDUMP_EXCEPTION_INFORMATION ExceptionParam,
                              PMINIDUMP_USER_STREAM_INFORMATION UserStreamParam,
                              PMINIDUMP_CALLBACK_INFORMATION CallbackParam);

#ifdef __cplusplus
}
#endif
#include <poppack.h>
#endif /* _DBGHELP_ */
"""

# mingw-w64 10's winnt.h maps InterlockedExchange64/InterlockedExchangeAdd64
# to _InterlockedExchange64/_InterlockedExchangeAdd64 on x86 too, but defines
# those for x64 and ARM only.  The SDK has both on x86 (winnt.h: "implemented
# using a compiler intrinsic where possible") and clang's Microsoft-mode
# intrin0.h declares both for i386: declare them the same way.
MINGW_GAPS = r"""
#if defined(__i386__) && !defined(__INTRINSIC_DEFINED__InterlockedExchange64)
__int64 _InterlockedExchange64(__int64 volatile *_Target, __int64 _Value);
#endif
#if defined(__i386__) && !defined(__INTRINSIC_DEFINED__InterlockedExchangeAdd64)
__int64 _InterlockedExchangeAdd64(__int64 volatile *_Addend, __int64 _Value);
#endif
"""

# Forced into every core compile (-include): the translation unit is in cl.exe's dialect.
DIALECT_ASSERT = r"""/* generated by tests/test_msvc_dialect.py, forced in with -include */
#if !defined(_MSC_VER) || !defined(_WIN32) || defined(__clang__) || defined(__GNUC__) || defined(__MINGW32__)
#error "tests/test_msvc_dialect.py: this translation unit is not compiled in cl.exe's dialect"
#endif
_Static_assert(_MSC_VER >= 1938, "_MSC_VER is defined: cl.exe 19.38 (Visual Studio 2022 17.8) or later");
"""


@dataclass
class Dialect:
    """One target's compile lines (and the generated shim directory they use)."""

    abi: str
    clang: str
    argv: list[str]       # the compile line, less the source, -c/-o and per-call flags
    scan_argv: list[str]  # the same dialect with every system header empty (preprocessing only)
    forced: Path          # DIALECT_ASSERT

    def compile(self, source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [*self.argv, *extra, "-c", str(source), "-o", str(out)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "LC_ALL": "C"})

    def compile_core(self, source: Path, out: Path) -> subprocess.CompletedProcess[str]:
        return self.compile(source, out, "-include", str(self.forced))

    def tokens(self, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        """The tokens the compiler proper would receive, each with where it was spelled.

        System headers are empty here: what they contribute is not the
        project's to answer for (the SDK's own macros are cl.exe's), and
        windows.h would make the dump ~50 MB and the scan minutes long."""
        cmd = [*self.scan_argv, *extra, "-fsyntax-only", "-Xclang", "-dump-tokens", str(source)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "LC_ALL": "C"})

    def command_line(self, source: str = "SOURCE.c", out: str = "OUT.obj") -> str:
        return " ".join([*self.argv, "-include", str(self.forced), "-c", source, "-o", out])


def _make_dialect(abi: str, clang: str, mingw: Path, work: Path) -> Dialect:
    target = TARGETS[abi]
    base = [f"--target={target}", f"-fms-compatibility-version={MS_COMPAT_VERSION}", "-fms-extensions",
            "-fms-compatibility", "-Xclang", "-fms-volatile", "-std=c11", "-O2"]
    if abi == "x86":
        base.append("-msse2")  # cl.exe's default /arch:SSE2 (_M_IX86_FP 2)
    msvc_macros = _clang_predefines(clang, base)
    assert "_MSC_VER" in msvc_macros, f"{clang} does not predefine _MSC_VER for {target}"
    kept = _clang_predefines(clang, [*base, "-undef"])  # __STDC_VERSION__ and friends, in both contexts
    mingw_macros = _clang_predefines(clang, [f"--target={MINGW_TARGETS[abi]}", "-std=c11"])

    # Project code: cl.exe's predefined macros.
    project_macros = {name: msvc_macros[name] for name in CL_MACROS_FROM_CLANG if name in msvc_macros}
    project_macros.update(CL_MACROS_EXTRA)
    # System headers: clang's for this Microsoft target less the _MSC_* family,
    # plus the GNU C / mingw-w64 identity (not __STRICT_ANSI__: cl.exe's
    # headers know nothing of it) and clang >= 19's opt-out of the #warning
    # in <mm3dnow.h>, which mingw-w64 <= 11's <intrin.h> includes.
    system_macros = {name: value for name, value in msvc_macros.items() if not MS_ONLY_MACROS.match(name)}
    system_macros.update({name: value for name, value in mingw_macros.items() if MINGW_IDENTITY.match(name)})
    system_macros["_CLANG_DISABLE_CRT_DEPRECATION_WARNINGS"] = "1"
    for name in [*kept, *SETUP_PY_DEFINES]:
        project_macros.pop(name, None)
        system_macros.pop(name, None)
    system_by_bare = {_bare(name): name for name in system_macros}
    managed = sorted(name for name in set(project_macros) | set(system_by_bare)
                     if project_macros.get(name) != system_macros.get(system_by_bare.get(name, name)))

    shim = work / f"shim-{abi}"
    shim.mkdir(parents=True, exist_ok=True)
    enter = ["/* generated: leave cl.exe's predefined macros for the ones system headers are written for */"]
    # mingw-w64's _mingw.h defines __stdcall away on Win64, where cl.exe has it as a keyword.
    leave = ["/* generated: back to cl.exe's predefined macros */", "#undef __stdcall"]
    for name in managed:
        enter += [f'#pragma push_macro("{name}")', f"#undef {name}"]
        if name in system_by_bare:
            full = system_by_bare[name]
            enter.append(f"#define {full} {system_macros[full]}")
        leave.append(f'#pragma pop_macro("{name}")')
    (shim / "__mdstream_system_enter.h").write_text("\n".join(enter) + "\n")
    (shim / "__mdstream_system_leave.h").write_text("\n".join(leave) + "\n")
    stubs = work / f"empty-system-headers-{abi}"
    for header in sorted(_system_includes_of_project()):
        body = SDK_DBGHELP_STAND_IN if header == "dbghelp.h" else f"#include_next <{header}>\n"
        if header == "windows.h":
            body += MINGW_GAPS
        depth = "../" * header.count("/")
        path = shim / header
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"/* generated by tests/test_msvc_dialect.py: <{header}> as a system header */\n"
                        f'#include "{depth}__mdstream_system_enter.h"\n{body}'
                        f'#include "{depth}__mdstream_system_leave.h"\n')
        stub = stubs / header
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(f"/* <{header}>: empty for the token scan */\n")
    forced = work / "__mdstream_msvc_dialect_assert.h"
    forced.write_text(DIALECT_ASSERT)

    resource = Path(subprocess.run([clang, "-print-resource-dir"], capture_output=True, text=True,
                                   check=True).stdout.strip()) / "include"
    common = [clang, *base, "-undef"]
    common += [f"-D{name}={value}" for name, value in {**project_macros, **SETUP_PY_DEFINES}.items()]
    argv = [*common, "-nostdinc", "-isystem", str(shim), "-isystem", str(resource), "-isystem", str(mingw),
            "-I", str(INCLUDE), "-I", str(SRC), *WARNINGS]
    scan_argv = [*common, "-nostdinc", "-isystem", str(stubs), "-I", str(INCLUDE), "-I", str(SRC)]
    return Dialect(abi=abi, clang=clang, argv=argv, scan_argv=scan_argv, forced=forced)


# ---- reading the results -----------------------------------------------------------------------------


def _is_under(path: str, dirs: tuple[Path, ...]) -> bool:
    try:
        resolved = Path(path).resolve()
    except OSError:
        return False
    return any(resolved.is_relative_to(d.resolve()) for d in dirs)


def _spelled_tokens(dump: str, dirs: tuple[Path, ...] = PROJECT_DIRS) -> list[tuple[str, str, str]]:
    """(text, spelled at, used at) for every token spelled in a file under dirs, from -dump-tokens."""
    found = []
    for line in dump.splitlines():
        match = TOKEN_LINE.match(line)
        if not match:
            continue
        spelled = match.group("spelling") or match.group("loc")
        if _is_under(spelled.rsplit(":", 2)[0], dirs):
            found.append((match.group("text"), spelled, match.group("loc")))
    return found


def _gcc_only_tokens(dump: str, dirs: tuple[Path, ...] = PROJECT_DIRS) -> list[str]:
    """GCC-only tokens spelled in the project's files, one line per spelling location."""
    uses: dict[tuple[str, str], list[str]] = {}
    for text, spelled, used in _spelled_tokens(dump, dirs):
        if GCC_ONLY_TOKEN.match(text):
            uses.setdefault((spelled, text), []).append(used)
    return [f"{spelled}: '{text}' ({len(used)} use(s), first at {used[0]})"
            for (spelled, text), used in sorted(uses.items())]


def _coff_symbols(data: bytes) -> tuple[int, set[str], set[str]]:
    """(machine, defined external symbols, undefined external symbols) of a COFF object."""
    machine, _sections, _stamp, symtab, count, _opt, _flags = struct.unpack_from("<HHIIIHH", data, 0)
    assert not (machine == 0 and _sections == 0xFFFF), "bigobj COFF: not handled"
    strtab = symtab + 18 * count
    defined: set[str] = set()
    undefined: set[str] = set()
    index = 0
    while index < count:
        offset = symtab + 18 * index
        raw = data[offset:offset + 8]
        value, section, _type, storage, aux = struct.unpack_from("<IhHBB", data, offset + 8)
        if raw[:4] == b"\0\0\0\0":
            start = strtab + struct.unpack_from("<I", raw, 4)[0]
            name = data[start:data.index(b"\0", start)].decode()
        else:
            name = raw.rstrip(b"\0").decode()
        if storage == 2:  # IMAGE_SYM_CLASS_EXTERNAL
            (undefined if section == 0 and value == 0 else defined).add(name)
        index += 1 + aux
    return machine, defined, undefined


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dialects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dialect]:
    clang = _find_clang()
    if clang is None:
        pytest.skip(f"clang not installed (apt-get install {CLANG_PACKAGE})")
    mingw = _find_mingw_headers()
    if mingw is None:
        pytest.skip(f"mingw-w64 headers not installed (apt-get install {MINGW_HEADERS_PACKAGE})")
    work = tmp_path_factory.mktemp("msvc-dialect")
    return {abi: _make_dialect(abi, clang, mingw, work) for abi in TARGETS}


@dataclass
class CoreBuild:
    dialect: Dialect
    objects: dict[Path, Path]
    failures: list[str]


@pytest.fixture(scope="module")
def core_builds(dialects: dict[str, Dialect], tmp_path_factory: pytest.TempPathFactory) -> dict[str, CoreBuild]:
    """Every core source compiled once per target."""
    builds = {}
    for abi, dialect in dialects.items():
        out = tmp_path_factory.mktemp(f"msvc-core-{abi}")
        objects, failures = {}, []
        for source in _core_sources():
            obj = out / f"{source.stem}.obj"
            proc = dialect.compile_core(source, obj)
            if proc.returncode != 0 or proc.stderr.strip():
                failures.append(f"--- {source.relative_to(ROOT)} (exit {proc.returncode})\n{proc.stderr}")
            else:
                objects[source] = obj
        builds[abi] = CoreBuild(dialect, objects, failures)
    return builds


# ---- tests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("abi", sorted(TARGETS))
def test_mingw_headers_msvc_dialect_core_compiles(abi: str, core_builds: dict[str, CoreBuild]) -> None:
    """Every setup.py core source compiles in cl.exe's dialect, _MSC_VER asserted, warnings as errors."""
    build = core_builds[abi]
    assert build.objects, "no core source found"
    assert not build.failures, f"{abi}: {build.dialect.command_line()}\n" + "\n".join(build.failures)


@pytest.mark.parametrize("abi", sorted(TARGETS))
def test_mingw_headers_msvc_dialect_probe(abi: str, dialects: dict[str, Dialect], tmp_path: Path) -> None:
    """What the core's compiles saw: cl.exe's macros only, the SDK branch of dbghelp.h, the x64/x86
    column of the Microsoft layout table, and mds_dump_callback as a MINIDUMP_CALLBACK_ROUTINE."""
    x64 = int(abi == "x64")
    probe = tmp_path / "msvc_dialect_probe.c"
    probe.write_text(f"""/* tests/test_msvc_dialect.py: compiled, not run */
#define EXPECT_X64 {x64}
#include "mdstream/callback.h"
#include "mdstream/atomics.h"
#include "mdstream/span.h"
#include "platform.h"

#if !defined(_MSC_VER) || !defined(_WIN32) || !defined(_MSC_EXTENSIONS) || !defined(_MT) || !defined(_DLL)
#error "cl.exe's predefined macros missing"
#endif
#if defined(__clang__) || defined(__GNUC__) || defined(__MINGW32__) || defined(__x86_64__) || defined(__i386__) \\
    || defined(__SIZEOF_POINTER__) || defined(__STRICT_ANSI__) || defined(__declspec) || defined(__stdcall)
#error "project code sees a macro cl.exe does not predefine"
#endif
#if EXPECT_X64 && (!defined(_M_X64) || !defined(_M_AMD64) || !defined(_WIN64) || defined(_M_IX86))
#error "not cl.exe x64's macros"
#endif
#if !EXPECT_X64 && (!defined(_M_IX86) || _M_IX86_FP != 2 || defined(_WIN64) || defined(_M_X64))
#error "not cl.exe x86's macros"
#endif
_Static_assert(_MSC_VER >= 1938, "_MSC_VER is defined");
#ifndef MDSTREAM_DBGHELP_FROM_SDK
#error "mdstream/dbghelp.h did not take its MSVC branch (the SDK's <dbghelp.h>)"
#endif
#ifndef MDSTREAM_DBGHELP_STATIC_ASSERT
#error "mdstream/dbghelp.h's layout assertions were not compiled"
#endif
_Static_assert(MDSTREAM_DBGHELP_ABI == (EXPECT_X64 ? MDSTREAM_DBGHELP_ABI_X64 : MDSTREAM_DBGHELP_ABI_X86),
               "the Microsoft column checked is this target's");
_Static_assert(sizeof(void *) == (EXPECT_X64 ? 8 : 4) && sizeof(long) == 4, "LLP64 / ILP32");
_Static_assert(sizeof(MINIDUMP_CALLBACK_INPUT) == (EXPECT_X64 ? 1312 : 772), "sizeof MINIDUMP_CALLBACK_INPUT");
_Static_assert(_Alignof(MINIDUMP_CALLBACK_INPUT) == (EXPECT_X64 ? 16 : 4), "alignment of MINIDUMP_CALLBACK_INPUT");
_Static_assert(offsetof(MINIDUMP_CALLBACK_INPUT, Io.BufferBytes) == (EXPECT_X64 ? 40 : 28), "Io.BufferBytes");
_Static_assert(sizeof(MINIDUMP_CALLBACK_OUTPUT) == 52, "sizeof MINIDUMP_CALLBACK_OUTPUT");
_Static_assert(sizeof(CONTEXT) == (EXPECT_X64 ? 1232 : 716), "the SDK's CONTEXT");

/* Same prototype and calling convention (WINAPI: __stdcall on x86) as the SDK's routine type. */
MINIDUMP_CALLBACK_ROUTINE mdstream_probe_routine = mds_dump_callback;
""")
    proc = dialects[abi].compile(probe, tmp_path / "probe.obj")
    assert proc.returncode == 0 and not proc.stderr.strip(), f"{dialects[abi].command_line(str(probe))}\n{proc.stderr}"


@pytest.mark.parametrize("abi", sorted(TARGETS))
def test_mingw_headers_msvc_dialect_objects(abi: str, core_builds: dict[str, CoreBuild]) -> None:
    """COFF for the target, __stdcall-decorated routine on x86, no GCC runtime calls."""
    build = core_builds[abi]
    if build.failures:
        pytest.skip("the core did not compile (see test_mingw_headers_msvc_dialect_core_compiles)")
    defined_all, problems = set(), []
    for source, obj in build.objects.items():
        machine, defined, undefined = _coff_symbols(obj.read_bytes())
        if machine != COFF_MACHINE[abi]:
            problems.append(f"{source.name}: COFF machine {machine:#x}, expected {COFF_MACHINE[abi]:#x}")
        gcc = sorted(name for name in undefined if GCC_RUNTIME_SYMBOL.match(name))
        if gcc:
            problems.append(f"{source.name}: calls GCC runtime functions {gcc}")
        defined_all |= defined
    routine = "mds_dump_callback" if abi == "x64" else "_mds_dump_callback@12"
    if routine not in defined_all:
        problems.append(f"{routine} not defined; callback symbols: {sorted(n for n in defined_all if 'callback' in n)}")
    # Windows crash capture (crash_win32.c) is part of the core: the handler and the watcher's API.
    prefix = "" if abi == "x64" else "_"
    for name in ("mds_crash_install", "mds_crash_uninstall", "mds_watch_attach", "mds_watch_wait",
                 "mds_watch_write_dump", "mds_watch_release"):
        if prefix + name not in defined_all:
            problems.append(f"{prefix + name} not defined (mdstream/src/crash_win32.c)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("abi", sorted(TARGETS))
def test_mingw_headers_msvc_dialect_no_gcc_only_tokens(abi: str, dialects: dict[str, Dialect]) -> None:
    """No GCC-only spelling in the project's code reaches cl.exe; atomics.h's cl.exe branch is what does."""
    dialect = dialects[abi]
    findings, atomics_used = [], set()
    for source in _core_sources():
        proc = dialect.tokens(source)
        if proc.returncode != 0:
            findings.append(f"--- {source.name}: preprocessing failed\n{proc.stderr[-3000:]}")
            continue
        findings += [f"{source.name}: {line}" for line in _gcc_only_tokens(proc.stderr)]
        atomics_used |= {text for text, spelled, _ in _spelled_tokens(proc.stderr)
                         if spelled.startswith(str(INCLUDE / "mdstream" / "atomics.h"))}
    assert not findings, "GCC-only code in cl.exe's dialect:\n" + "\n".join(findings)
    msvc_api = {t for t in atomics_used if re.match(r"^(_?Interlocked\w+|_ReadWriteBarrier|MemoryBarrier)$", t)}
    assert msvc_api, f"atomics.h's cl.exe branch not used; identifiers from it: {sorted(atomics_used)[:40]}"


def test_mingw_headers_msvc_dialect_catches_gcc_dialect(dialects: dict[str, Dialect], tmp_path: Path) -> None:
    """The checks bite: GCC-only code is rejected or flagged in this dialect."""
    dialect = dialects["x64"]
    # atomics.h's GCC branch, selected by pretending to be clang, is flagged by the scan.
    flagged = _gcc_only_tokens(dialect.tokens(SRC / "ring.c", "-D__clang__=1").stderr)
    assert any("atomics.h" in line and "__atomic_" in line for line in flagged), flagged
    # Extensions cl.exe rejects fail the compile.
    cases = {
        "vla": "int f(int n) { int a[n]; a[0] = n; return a[0]; }\n",
        "statement expression": "int f(int n) { return ({ int m = n; m; }); }\n",
        "void pointer arithmetic": "void *f(void *p) { return p + 1; }\n",
        "omitted ?: operand": "int f(int n) { return n ?: 1; }\n",
        "empty initializer": "struct s { int a; }; struct s v = {};\n",
    }
    for name, code in cases.items():
        source = tmp_path / "case.c"
        source.write_text(code)
        proc = dialect.compile(source, tmp_path / "case.obj")
        assert proc.returncode != 0, f"{name} compiled in the MSVC dialect"
    # And GCC-only spellings in project-like code are flagged by the scan.
    source = tmp_path / "spellings.c"
    source.write_text("static int __attribute__((unused)) x;\n"
                      "int f(int v) { return __builtin_expect(v, 0) + __atomic_load_n(&v, 0); }\n")
    found = {text for text, _, _ in _spelled_tokens(dialect.tokens(source).stderr, (tmp_path,))
             if GCC_ONLY_TOKEN.match(text)}
    assert {"__attribute__", "__builtin_expect", "__atomic_load_n"} <= found, found


def test_mingw_headers_msvc_dialect_rejects_mingw_dbghelp(dialects: dict[str, Dialect], tmp_path: Path) -> None:
    """With mingw-w64's own dbghelp.h in the SDK's place, mdstream/dbghelp.h's assertions fail the build:
    the layout checks are live in this dialect, and the SDK stand-in is what they pass against."""
    dialect = dialects["x64"]
    shim = Path(dialect.argv[dialect.argv.index("-nostdinc") + 2])
    mingw = Path(dialect.argv[dialect.argv.index("-nostdinc") + 6])
    override = tmp_path / "override"
    override.mkdir()
    (override / "dbghelp.h").write_text(f'#include "{shim}/__mdstream_system_enter.h"\n'
                                        f'#include "{mingw}/dbghelp.h"\n'
                                        f'#include "{shim}/__mdstream_system_leave.h"\n')
    source = tmp_path / "uses_callback_h.c"
    source.write_text('#include "mdstream/callback.h"\nint mdstream_probe;\n')
    proc = dialect.compile(source, tmp_path / "out.obj", "-I", str(override))
    assert proc.returncode != 0
    assert "differs from the Microsoft layout" in proc.stderr or "no member named" in proc.stderr, proc.stderr[-3000:]


if __name__ == "__main__":
    # python tests/test_msvc_dialect.py [DIR]: write the shims to DIR, print the compile lines.
    clang_path, mingw_path = _find_clang(), _find_mingw_headers()
    if clang_path is None or mingw_path is None:
        sys.exit(f"need clang ({CLANG_PACKAGE}) and the mingw-w64 headers ({MINGW_HEADERS_PACKAGE})")
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="msvc-dialect-")).resolve()
    for target_abi in TARGETS:
        print(f"# {target_abi}: {TARGETS[target_abi]}")
        print(_make_dialect(target_abi, clang_path, mingw_path, out_dir).command_line())
