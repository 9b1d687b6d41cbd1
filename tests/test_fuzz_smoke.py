"""Replay the fuzz corpora (fuzz/corpus/<target>/, plus the inputs that once
found bugs, fuzz/regressions/<target>/) through the harness functions, and a
short deterministic burst of mutations of each.  No atheris needed: the
harnesses only import it when run as fuzzers (``make fuzz``).  In the
sanitized run (scripts/sanitize.sh) this is the corpus replayed under
ASan+UBSan."""

from __future__ import annotations

import importlib
import os
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
TARGETS = ["trace", "minidump", "attach", "live_ring", "spill"]
MUTATIONS = int(os.environ.get("MDSTREAM_FUZZ_SMOKE_MUTATIONS", "150"))


@pytest.fixture(scope="module", autouse=True)
def fuzz_on_path():
    sys.path.insert(0, str(FUZZ))
    yield
    sys.path.remove(str(FUZZ))


def harness(target):
    return importlib.import_module(f"fuzz_{target}")


def inputs(target):
    files = []
    for sub in ("corpus", "regressions"):
        d = FUZZ / sub / target
        if d.is_dir():
            files += sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    return files


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_is_present(target):
    assert len([p for p in inputs(target) if p.parent.name == target and p.parent.parent.name == "corpus"]) >= 4


@pytest.mark.parametrize("target", TARGETS)
def test_replay_corpus(target):
    h = harness(target)
    for path in inputs(target):
        data = path.read_bytes()
        try:
            h.test_one_input(data)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{path.relative_to(ROOT)}: {type(exc).__name__}: {exc}") from exc


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and len(b) > 1:
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 17)]
        elif b:
            i = rng.randrange(max(1, len(b) - 8))
            b[i:i + 8] = rng.choice([b"\xff" * 8, b"\0" * 8, (1 << 63).to_bytes(8, "little"), b"\x10" + b"\0" * 7])
    return bytes(b)


@pytest.mark.parametrize("target", TARGETS)
def test_mutation_burst(target):
    h = harness(target)
    seeds = [p.read_bytes() for p in inputs(target)]
    rng = random.Random(f"mdstream-fuzz-smoke-{target}")
    count = MUTATIONS if target != "live_ring" else max(1, MUTATIONS // 3)
    for i in range(count):
        data = mutate(rng, rng.choice(seeds))
        try:
            h.test_one_input(data)
        except Exception as exc:
            raise AssertionError(f"mutation {i} of the {target} corpus ({data[:64]!r}...): "
                                 f"{type(exc).__name__}: {exc}") from exc


def known_bugs():
    return importlib.import_module("known_bugs")


FIXED = ["producer_claim_unchecked_positions", "batch_after_close", "memory_sink_null_memcpy",
         "ring_file_truncated_under_consumer", "ring_file_truncated_after_read", "ring_file_truncated_under_producer"]
OPEN: list[str] = []


@pytest.mark.parametrize("name", FIXED)
def test_fixed_bug_stays_fixed(name):
    """Bugs the fuzzers found (fuzz/known_bugs.py says where), fixed since: each
    reproducer runs in a child process and must end cleanly."""
    kb = known_bugs()
    assert name in kb.FIXED
    fixed, what = kb.run(name)
    assert fixed, f"{name} is back: {what}\n{kb.ALL[name][0]}"


@pytest.mark.parametrize("name", OPEN or [pytest.param(None, id="none", marks=pytest.mark.skip(
    reason="no open fuzz findings: every known one is fixed (FIXED above)"))])
def test_open_bug_reproducer(name):
    """Still open (docs/reliability.md, Known gaps): expected to fail until
    fixed; once it passes, move it to FIXED here and in fuzz/known_bugs.py."""
    kb = known_bugs()
    assert name in kb.BUGS
    fixed, what = kb.run(name)
    if not fixed:
        pytest.xfail(f"known bug {name}: {what[:200]}")
