"""Issue 5's workloads and baselines as pytest-benchmarks.

Each test is one (workload, case) pair from :mod:`mdstream.bench`: mdstream
through the real callback driven from a native thread into NullSink,
MemorySink and FileSink (/dev/shm); numpy memcpy in one piece and in the
writes' pieces; ``os.pwrite``; and the IPC peers.  Tests are ordered workload
by workload so only one plan is alive at a time.  A peer that is not installed
is a skipped test whose reason says so.  Nothing here asserts a speed: the
targets are printed at the end of the session.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mdstream import bench

CASE_KEYS = [c.key for c in bench.cases_for(quick=True)]
PARAMS = [pytest.param(w, k, id=f"{w}-{k}") for w in bench.WORKLOADS for k in CASE_KEYS]


def _seconds(benchmark: Any) -> list[float] | None:
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", None)
    data = getattr(inner, "data", None)
    return list(data) if data else None


@pytest.mark.parametrize("workload,key", PARAMS)
def test_throughput(benchmark: Any, bench_env: Any, workload: str, key: str) -> None:
    case = bench_env.case(workload, key)
    nbytes, writes = case.volume()
    benchmark.group = f"{workload}: {bench.WORKLOADS[workload].description}"
    benchmark.extra_info.update({
        "workload": workload, "case": key, "label": case.label, "bytes": nbytes, "writes": writes,
        "write_size": bench.WORKLOADS[workload].write_size, "quick": bench_env.quick,
    })
    metrics: list[dict[str, float]] = []

    def teardown(state: Any) -> None:
        if isinstance(state, dict) and isinstance(state.get("metrics"), dict):
            metrics.append(state["metrics"])  # producer/consumer CPU shares, before teardown clears them
        case.teardown(state)

    try:
        benchmark.pedantic(case.run, setup=lambda: ((case.setup_round(),), {}), teardown=teardown,
                           rounds=case.rounds(), iterations=1, warmup_rounds=0)
    except Exception as exc:
        bench_env.record_failure(workload, case, exc)
        if case.family == "peer":
            pytest.skip(f"{key} failed here: {type(exc).__name__}: {exc}")
        raise
    seconds = _seconds(benchmark)
    if seconds:
        bench_env.record(workload, case, seconds, metrics)
        med = sorted(seconds)[len(seconds) // 2]
        benchmark.extra_info["gbps"] = nbytes / med / 1e9
        benchmark.extra_info["mwps"] = writes / med / 1e6


def test_peak_rss(benchmark: Any, bench_env: Any) -> None:
    """Stream a 1 GiB dump (64 MiB quick) through a 4 MiB ring into FileSink in a subprocess;
    report its peak RSS (resource.getrusage) against ring + 64 MiB."""
    result = benchmark.pedantic(bench.measure_rss, kwargs={"quick": bench_env.quick}, rounds=1, iterations=1)
    bench_env.results["rss"] = result
    benchmark.group = "peak RSS"
    benchmark.extra_info.update({k: v for k, v in result.items() if isinstance(v, (int, float, bool))})
    assert result["dump_bytes"] == result["file_bytes"] > 0  # the dump arrived whole (not a speed check)


def test_linux_full_dump(benchmark: Any, bench_env: Any) -> None:
    """The Linux writer's --full dump of a process with 500 MiB touched (32 MiB quick) into
    FileSink, beside one process_vm_readv pass over the same ranges and the target's stopped time."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the Linux writer needs Linux")
    result = benchmark.pedantic(bench.measure_linux_full, kwargs={"quick": bench_env.quick}, rounds=1, iterations=1)
    bench_env.results["linux_full"] = result
    benchmark.group = "Linux writer --full"
    benchmark.extra_info.update({k: v for k, v in result.items() if isinstance(v, (int, float, bool))})
    assert result["readv_bytes"] == result["memory_bytes"] > 0  # the pass read what the dump holds (not a speed check)
