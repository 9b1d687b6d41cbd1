import importlib
import os
import secrets
import sys
import types
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "dumps"


def pure_module(name: str) -> types.ModuleType:
    """Import a pure-Python mdstream module even when the compiled extension is
    not built (the trace and minidump readers need no C)."""
    try:
        return importlib.import_module(f"mdstream.{name}")
    except ImportError:
        if "mdstream" in sys.modules and hasattr(sys.modules["mdstream"], "__file__"):
            raise
        pkg = types.ModuleType("mdstream")
        pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "mdstream")]
        sys.modules["mdstream"] = pkg
        return importlib.import_module(f"mdstream.{name}")


def fixture_dumps():
    """The real minidumps in ../shared/fixtures (empty when absent: a user's clone)."""
    if not FIXTURES.is_dir():
        return []
    return sorted(FIXTURES.glob("*.dmp"))


@pytest.fixture
def ring_name():
    """A unique shared-memory ring name, removed afterwards if a test left it."""
    name = f"mdstream-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass
