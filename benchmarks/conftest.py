"""pytest-benchmark suite for issue 5 (``pytest benchmarks/ --benchmark-only``).

The cases themselves live in :mod:`mdstream.bench` (so ``mdstream bench``
measures exactly the same things); this suite runs each as a pytest-benchmark
with ``benchmark.pedantic`` (setup and teardown untimed), groups them by
workload, and prints mdstream's own table -- rates, ratios to one-piece memcpy
and to the best peer, and the targets -- at the end of the session.

Options:
  --quick (or MDSTREAM_BENCH_QUICK=1)  small sizes, 1-2 rounds: a smoke test in well under a minute
  --bench-json PATH                    also write the results in ``mdstream bench --json`` format
                                       (what ``benchmarks/plot.py`` reads)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from mdstream import bench


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mdstream-bench")
    group.addoption("--quick", action="store_true", default=False,
                    help="mdstream benchmarks: small sizes and 1-2 rounds (a CI smoke test, no speed asserted)")
    group.addoption("--bench-json", metavar="PATH", default=None,
                    help="mdstream benchmarks: write the results in `mdstream bench --json` format to PATH")


def is_quick(config: pytest.Config) -> bool:
    env = os.environ.get("MDSTREAM_BENCH_QUICK", "")
    return bool(config.getoption("--quick")) or env not in ("", "0", "false", "no")


class BenchEnv:
    """Keeps one workload's plan and prepared cases alive at a time (1 GiB plans are big)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.workload: str | None = None
        self.plan: Any = None
        self.cases: dict[str, bench.Case] = {}
        self.prepare_errors: dict[str, str] = {}
        self.results: dict[str, Any] = {
            "format": "mdstream-bench/1",
            "quick": quick,
            "source": "pytest benchmarks/",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": bench.machine_info(),
            "config": {
                "ring_capacity": bench.RING_CAPACITY,
                "rounds": {k: (q if quick else f) for k, (f, q) in bench.ROUNDS.items()},
                "peer_max_messages": bench.PEER_MAX_MESSAGES[1 if quick else 0],
                "peer_max_bytes": bench.PEER_MAX_BYTES[1 if quick else 0],
                "pinned_cpus": list(bench.cpu_pair() or ()),
            },
            "loadavg_before": list(os.getloadavg()),
            "workloads": {},
        }

    def _switch(self, workload: str) -> None:
        if workload == self.workload:
            return
        self.close()
        self.plan = bench.build_plan(workload, self.quick)
        self.workload = workload
        w = bench.WORKLOADS[workload]
        self.results["workloads"].setdefault(workload, {
            "description": w.description, "write_size": w.write_size, "writes": int(self.plan.count),
            "bytes": int(self.plan.total_bytes), "size": int(self.plan.size), "cases": {},
        })

    def case(self, workload: str, key: str) -> bench.Case:
        """The prepared case, or a pytest skip naming why it cannot run (a missing peer)."""
        self._switch(workload)
        record = self.results["workloads"][workload]["cases"]
        if key in self.cases:
            return self.cases[key]
        case = next(c for c in bench.cases_for(self.quick) if c.key == key)
        reason = case.missing()
        if reason:
            record[key] = {"status": "missing", "reason": reason, "label": case.label}
            pytest.skip(f"{key} missing: {reason}")
        try:
            case.prepare(self.plan)
        except Exception as exc:
            record[key] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "label": case.label}
            raise
        self.cases[key] = case
        return case

    def record(self, workload: str, case: bench.Case, seconds: list[float],
               metrics: list[dict[str, float]] | None = None) -> None:
        nbytes, writes = case.volume()
        self.results["workloads"][workload]["cases"][case.key] = dict(
            bench.summarize(seconds, nbytes, writes, metrics or ()), label=case.label)

    def record_failure(self, workload: str, case: bench.Case, exc: BaseException) -> None:
        self.results["workloads"][workload]["cases"][case.key] = {
            "status": "failed", "reason": f"{type(exc).__name__}: {exc}", "label": case.label}

    def close(self) -> None:
        for case in self.cases.values():
            case.release()
        self.cases = {}
        self.plan = None
        self.workload = None

    def finish(self) -> dict[str, Any]:
        self.close()
        for w in self.results["workloads"].values():
            bench.add_ratios(w)
        self.results["loadavg_after"] = list(os.getloadavg())
        self.results["targets"] = bench.evaluate_targets(self.results)
        return self.results


_ENV: BenchEnv | None = None


@pytest.fixture(scope="session")
def bench_env(request: pytest.FixtureRequest) -> Any:
    global _ENV
    _ENV = BenchEnv(is_quick(request.config))
    yield _ENV
    _ENV.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _ENV is None or not _ENV.results["workloads"] and "rss" not in _ENV.results:
        return
    results = _ENV.finish()
    terminalreporter.write_sep("=", "mdstream throughput (medians; ratios measured in this run)")
    terminalreporter.write_line(bench.format_table(results))
    path = config.getoption("--bench-json")
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        terminalreporter.write_line(f"results written to {path}")
