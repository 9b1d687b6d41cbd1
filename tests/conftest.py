import os
import secrets
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "dumps"


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
