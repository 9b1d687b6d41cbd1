import importlib
import os
import secrets
import sys
import types
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "dumps"
#: The message of a test skipped because ../shared/fixtures is not there (a user's clone).
NO_FIXTURES = "fixture dumps not available (the real-world minidumps live outside the repository)"

# ---- test tiers -------------------------------------------------------------------
# ``python -m pytest`` (the README's command) runs the default tier: every feature,
# fast (under 3 minutes for the whole suite on a 2-core machine).  ``python -m pytest
# -m extended`` runs the slow tier, which CI (.ci/run) runs as well.  Mark a new slow
# test with ``@pytest.mark.extended`` where it is defined; these existing ones are
# marked here, each with why it is slow and what covers its feature in the default tier.
EXTENDED: dict[str, str] = {
    "test_sanitizers.py::test_suite_under_asan_and_ubsan":
        "rebuilds the extension with ASan+UBSan and re-runs the default tier under it (~4 min)",
    "test_wine.py": "Wine starts slowly (~12 s) and the MinGW builds take seconds each; "
                    "test_windows_api.py covers the Windows layer with a fake DbgHelp",
    "test_msvc_dialect.py": "cross compilers (clang in cl.exe's dialect, MinGW headers): ~25 s",
    "test_mingw_layout.py::test_mingw_header_layout": "MinGW cross compilers (the host-compiler checks stay)",
    "test_mingw_layout.py::test_mingw_rejects_mingw_dbghelp_first": "MinGW cross compilers",
    "test_mingw_layout.py::test_mingw_windows_h_does_not_pull_dbghelp": "MinGW cross compilers",
    "test_mingw_layout.py::test_aarch64_header_layout": "an AArch64 cross compiler",
    "test_native_stress.py::test_ring_stress_under_threadsanitizer":
        "a ThreadSanitizer build; test_ring_stress_checker_is_not_vacuous runs the stress program plainly",
    "test_native_stress.py::test_ring_stress_under_address_and_undefined_sanitizers":
        "an ASan+UBSan+LSan build of the stress program",
    "test_stream_faults.py::test_4gib_through_a_1mib_ring_arrives_intact_with_flat_memory":
        "4 GiB through the ring (past every 32-bit offset); the fault tests beside it stream small dumps",
    "test_bench_smoke.py": "measures every workload and peer; test_bench_cli.py runs one quick workload",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).name
        name = item.name.split("[", 1)[0]
        if path in EXTENDED or f"{path}::{name}" in EXTENDED:
            item.add_marker(pytest.mark.extended)


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


def fixture_params():
    """``fixture_dumps()`` for ``@pytest.mark.parametrize``: without them, one parameter skipped with
    :data:`NO_FIXTURES` (pytest would otherwise say "got empty parameter set")."""
    dumps = fixture_dumps()
    if dumps:
        return [pytest.param(d, id=d.name) for d in dumps]
    return [pytest.param(None, id="no-fixtures", marks=pytest.mark.skip(reason=NO_FIXTURES))]


@pytest.fixture
def ring_name():
    """A unique shared-memory ring name, removed afterwards if a test left it."""
    name = f"mdstream-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass
