"""Shared helpers of the crash capture tests (test_crash_run.py, test_crash_install.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
CRASHERS = HERE / "native" / "crashers.c"
#: ``mdstream`` as a command
CLI = ["-m", "mdstream"]


def load_reports(directory: Path) -> list[dict[str, Any]]:
    """Every published report of the crash database at ``directory`` (its ``to_dict()``), oldest first."""
    from mdstream import reports

    if not Path(directory).is_dir():
        return []
    return [r.to_dict() for r in reversed(reports.Database(directory).reports())]


def compile_crashers(out_dir: Path) -> tuple[Path, Path]:
    """(program, shared library) built from tests/native/crashers.c."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    program, library = out_dir / "crashers", out_dir / "libcrashers.so"
    flags = ["-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wl,--build-id"]
    subprocess.run([cc, *flags, "-o", str(program), str(CRASHERS)], check=True)
    subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(library), str(CRASHERS)], check=True)
    return program, library


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of the programs these tests crash (and of mdstream run/watch).

    Inside the sanitized run (scripts/sanitize.sh) the ASan runtime stays
    preloaded, so mdstream's C code in those processes is checked too, but ASan
    must not take the fatal signals over (it would print its own report and exit
    with its exit code instead of letting the program die of the signal)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += (":handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_sigill=0:handle_abort=0"
                                ":allow_user_segv_handler=1:detect_stack_use_after_return=0")
    env.update(extra)
    return env


def mdstream_run(database: Path, *command: str, options: tuple[str, ...] = (), timeout: float = 60,
                 **kwargs: Any) -> subprocess.CompletedProcess:
    """``mdstream run -d DATABASE OPTIONS -- COMMAND``."""
    argv = [sys.executable, *CLI, "run", "-d", str(database), *options, "--", *command]
    kwargs.setdefault("capture_output", True)
    return subprocess.run(argv, timeout=timeout, env=clean_env(), **kwargs)


def stackwalk(tools: tuple[Path, Path], dump: str | Path, binaries: tuple[Path, ...] = (),
              tmp: Path | None = None) -> dict[str, Any]:
    """minidump-stackwalk --json, with dump-syms symbols of ``binaries``."""
    walker, dump_syms = tools
    argv = [str(walker), "--json"]
    if binaries:
        assert tmp is not None
        syms = tmp / "syms"
        for b in binaries:
            subprocess.run([str(dump_syms), "-s", str(syms), str(b)], check=True, capture_output=True)
        argv += ["--symbols-path", str(syms)]
    proc = subprocess.run(argv + [str(dump)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def crashing_thread(report: dict[str, Any]) -> dict[str, Any]:
    return report["threads"][report["crash_info"]["crashing_thread"]]


def functions(thread: dict[str, Any]) -> list[str | None]:
    return [f.get("function") for f in thread["frames"]]


def parse_minidump(path: str | Path) -> Any:
    minidumpfile = pytest.importorskip("minidump.minidumpfile")
    return minidumpfile.MinidumpFile.parse(str(path))
