"""The whole test suite against an AddressSanitizer + UndefinedBehaviorSanitizer
build of the extension (scripts/sanitize.sh), so CI runs it.

Outside the sanitized run, ``test_suite_under_asan_and_ubsan`` builds the
sanitized copy in build/asan (about 50 s the first time, nothing when
unchanged; the in-place modules are never touched) and runs the default tier
(every test not marked ``extended``) against it with libasan preloaded (about
70 s): any sanitizer report or test failure fails this test.  It is itself in
the extended tier (tests/conftest.py).  Inside that run (MDSTREAM_SANITIZED=1) the other
tests here check that the sanitized modules really are the ones loaded.

MDSTREAM_SANITIZE_SUBSET=1 runs the documented subset instead;
MDSTREAM_SKIP_SANITIZE=1 skips the sanitized run (say why in the commit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SANITIZED = os.environ.get("MDSTREAM_SANITIZED") == "1"


def libasan() -> str | None:
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    path = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="this is the sanitized run itself")
def test_suite_under_asan_and_ubsan():
    if os.environ.get("MDSTREAM_SKIP_SANITIZE") == "1":
        pytest.skip("MDSTREAM_SKIP_SANITIZE=1")
    if sys.platform != "linux":
        pytest.skip("the sanitized run is set up for Linux (gcc, libasan, LD_PRELOAD)")
    if libasan() is None:
        pytest.skip("gcc with libasan is needed for the sanitized build")
    try:
        import Cython  # noqa: F401
    except ImportError:
        pytest.skip("Cython is needed in this environment to build the sanitized copy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(ROOT / "scripts/sanitize.sh")], capture_output=True, text=True, env=env,
                          timeout=1500)
    tail = (proc.stdout[-6000:] + "\n--- stderr\n" + proc.stderr[-12000:])
    assert proc.returncode == 0, f"sanitized suite failed (exit {proc.returncode}):\n{tail}"
    assert "sanitizer reports: 0" in proc.stderr, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout, tail


@pytest.mark.skipif(not SANITIZED, reason="only inside scripts/sanitize.sh")
def test_the_sanitized_modules_are_loaded():
    import mdstream._callback
    import mdstream._dbghelp_layout
    import mdstream._ring
    import mdstream._sinks

    tree = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve()
    for module in (mdstream._ring, mdstream._callback, mdstream._sinks, mdstream._dbghelp_layout):
        assert Path(module.__file__).resolve().is_relative_to(tree), module.__file__
    with open("/proc/self/maps") as f:
        maps = f.read()
    assert "libasan" in maps and "libubsan" in maps


@pytest.mark.skipif(not SANITIZED, reason="only inside scripts/sanitize.sh")
def test_child_processes_load_the_sanitized_modules_too():
    code = ("import mdstream._ring as r, sys; maps = open('/proc/self/maps').read(); "
            "print(r.__file__); print('libasan' in maps)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    tree = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve()
    assert Path(out[0]).resolve().is_relative_to(tree)
    assert out[1] == "True"
