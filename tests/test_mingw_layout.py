"""Compile mdstream/dbghelp.h for Windows targets (and other ABIs) to prove their layouts.

The static assertions in the header (and the independent ones in
tests/native/dbghelp_layout_check.c) are the test: a clean ``-Werror`` compile
with x86_64-w64-mingw32-gcc checks the x64 column of the Microsoft reference
table, i686-w64-mingw32-gcc the x86 column (with WINAPI = __stdcall).  Compilers
that are missing skip with the package that provides them.

``pytest -k mingw`` selects this module.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "mdstream" / "include"
CHECK_SOURCE = ROOT / "tests" / "native" / "dbghelp_layout_check.c"
STRICT = ["-Wall", "-Wextra", "-Wconversion", "-Wsign-conversion", "-Werror"]

MINGW = {
    "x86_64-w64-mingw32-gcc": "gcc-mingw-w64-x86-64",
    "i686-w64-mingw32-gcc": "gcc-mingw-w64-i686",
}


def _compile(argv: list[str], tmp_path: Path, source: Path = CHECK_SOURCE) -> subprocess.CompletedProcess[str]:
    obj = tmp_path / "check.o"
    cmd = [*argv, *STRICT, "-I", str(INCLUDE), "-c", str(source), "-o", str(obj)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})


def _assert_compiles(argv: list[str], tmp_path: Path) -> None:
    proc = _compile(argv, tmp_path)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stderr}"


def _require(compiler: str, package: str) -> str:
    path = shutil.which(compiler)
    if path is None:
        pytest.skip(f"{compiler} not installed (apt-get install {package})")
    return path


@pytest.mark.parametrize("compiler", sorted(MINGW))
def test_mingw_header_layout(compiler: str, tmp_path: Path) -> None:
    """The x64 / x86 columns of the reference table hold under mingw-w64, warning-free."""
    cc = _require(compiler, MINGW[compiler])
    _assert_compiles([cc, "-std=gnu11"], tmp_path)


@pytest.mark.parametrize("compiler", sorted(MINGW))
def test_mingw_rejects_mingw_dbghelp_first(compiler: str, tmp_path: Path) -> None:
    """Including mingw's own (wrong) dbghelp.h first is a clear #error, not a silent mix."""
    cc = _require(compiler, MINGW[compiler])
    source = tmp_path / "conflict.c"
    source.write_text('#include <windows.h>\n#include <dbghelp.h>\n#include "mdstream/dbghelp.h"\n')
    proc = _compile([cc, "-std=gnu11"], tmp_path, source)
    assert proc.returncode != 0
    assert "must not share a translation unit with mingw's dbghelp.h" in proc.stderr


@pytest.mark.parametrize("compiler", sorted(MINGW))
def test_mingw_windows_h_does_not_pull_dbghelp(compiler: str, tmp_path: Path) -> None:
    """The header relies on mingw's <windows.h> not including dbghelp.h (it would clash)."""
    cc = _require(compiler, MINGW[compiler])
    source = tmp_path / "windows_only.c"
    source.write_text(
        "#include <windows.h>\n"
        "#if defined(_DBGHELP_) || defined(_IMAGEHLP_)\n#error windows.h pulled in dbghelp.h\n#endif\n"
        "int mdstream_probe;\n"
    )
    proc = _compile([cc, "-std=gnu11"], tmp_path, source)
    assert proc.returncode == 0, proc.stderr


def _m32_argv(tmp_path: Path) -> list[str]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    probe = tmp_path / "probe.c"
    probe.write_text("#include <stdint.h>\n#include <stddef.h>\nint32_t mdstream_probe;\n")
    # With multilib (gcc-multilib / libc6-dev-i386) a hosted compile works;
    # without it, -ffreestanding still has stddef.h and stdint.h, all the
    # header needs.
    for extra in ([], ["-ffreestanding"]):
        argv = [gcc, "-m32", "-std=gnu11", *extra]
        proc = subprocess.run([*argv, "-c", str(probe), "-o", str(tmp_path / "probe.o")], capture_output=True)
        if proc.returncode == 0:
            return argv
    pytest.skip("gcc -m32 cannot compile even freestanding code (no 32-bit support in this gcc)")


def test_gcc_m32_header_layout(tmp_path: Path) -> None:
    """The x86 column under GCC's i386 ABI (no mingw), warning-free."""
    _assert_compiles(_m32_argv(tmp_path), tmp_path)


def test_aarch64_header_layout(tmp_path: Path) -> None:
    """The ARM64 column (extra Pad, 912-byte CONTEXT, 992-byte input) with an AArch64 cross gcc.

    Freestanding: the check needs only the compiler's own stddef.h/stdint.h, so a cross gcc
    installed without its target's libc headers compiles it too (hosted, its stdint.h would
    #include_next the missing libc one)."""
    cc = _require("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    _assert_compiles([cc, "-std=gnu11", "-ffreestanding"], tmp_path)


def test_layout_check_needs_no_libc(tmp_path: Path) -> None:
    """What a cross compiler without its libc has: only the compiler's own headers (-nostdinc).
    The header and the check compile freestanding with exactly those, so no layout check can
    fail for want of a target libc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    own = subprocess.run([gcc, "-print-file-name=include"], capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(os.path.join(own, "stdint-gcc.h")):
        pytest.skip(f"gcc's own include directory not found ({own!r})")
    argv = [gcc, "-std=gnu11", "-ffreestanding", "-nostdinc", "-isystem", own]
    _assert_compiles(argv, tmp_path)
    # The same flags do refuse a libc header: the compile really had no libc.
    libc_only = tmp_path / "libc.c"
    libc_only.write_text("#include <stdio.h>\n")
    assert _compile(argv, tmp_path, libc_only).returncode != 0


def test_host_header_layout_c_and_cxx(tmp_path: Path) -> None:
    """The host column, as strict C11 and as C++11 (native agents may be C++)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "aarch64", "arm64"):
        pytest.skip(f"no Microsoft reference column for {platform.machine()}")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    _assert_compiles([gcc, "-std=c11", "-Wpedantic"], tmp_path)
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    _assert_compiles([gxx, "-x", "c++", "-std=c++11"], tmp_path)
