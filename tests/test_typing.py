"""The public surface is typed: mypy passes on the package and on a user's code."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mdstream

ROOT = Path(__file__).resolve().parents[1]


def test_all_names_exist():
    for name in mdstream.__all__:
        assert hasattr(mdstream, name), name


def test_stubs_and_marker_ship_with_the_package():
    package = Path(mdstream.__file__).parent
    assert (package / "py.typed").exists()
    for module in ("_ring", "_callback", "_sinks", "_dbghelp_layout"):
        assert (package / f"{module}.pyi").exists(), module


@pytest.mark.skipif(shutil.which("mypy") is None and not any(
    (Path(p) / "mypy").exists() for p in sys.path), reason="mypy is not installed")
def test_mypy_accepts_the_package_and_a_user_program(tmp_path):
    user = tmp_path / "user.py"
    user.write_text(
        "import mdstream\n"
        "ring = mdstream.Ring.create(None, 1 << 20)\n"
        "callback = mdstream.DumpCallback(ring, deadline=5.0)\n"
        "address: int = callback.information_address\n"
        "ring.write(0, b'MDMP')\n"
        "ring.seal()\n"
        "for batch in ring:\n"
        "    offsets = batch.offsets\n"
        "    total: int = int(batch.lengths.sum())\n"
        "ring.commit()\n"
        "sink = mdstream.MemorySink()\n"
        "data: bytes = sink.tobytes()\n"
        "result = mdstream.replay('x.dmp', sinks=[sink])\n"
        "rate: float = result.gbps\n"
    )
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", str(ROOT / "mdstream"), str(user)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
