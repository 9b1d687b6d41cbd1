"""Smoke test of the throughput benchmarks (issue 5): the quick mode runs every workload and
baseline end to end and reports them.  No speed is asserted -- CI machines are shared."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from mdstream import bench

ROOT = Path(__file__).resolve().parents[1]
PEER_KEYS = {f"peer/{p.package}" for p in bench.PEERS} | {"peer/multiprocessing.Queue"}


@pytest.fixture(scope="module")
def quick_results() -> dict:
    return bench.run(quick=True)


def test_quick_run_covers_every_workload_and_baseline(quick_results):
    assert set(quick_results["workloads"]) == set(bench.WORKLOADS)
    for name, w in quick_results["workloads"].items():
        cases = w["cases"]
        for key in ("mdstream/null", "mdstream/memory", "mdstream/file", "memcpy/one-piece", "memcpy/pieces",
                    "pwrite/new-file"):
            assert cases[key]["status"] == "ok", (name, key, cases[key])
            assert cases[key]["gbps"] > 0 and cases[key]["median_s"] > 0
            assert cases[key]["x_memcpy"] is not None
        # A peer is measured, or reported missing/failed with a reason -- never dropped.
        for key in PEER_KEYS:
            assert key in cases, (name, key)
            assert cases[key]["status"] in ("ok", "missing", "failed")
            if cases[key]["status"] != "ok":
                assert cases[key]["reason"]
        assert cases["peer/multiprocessing.Queue"]["status"] == "ok"  # the standard library is always there


def test_quick_run_reports_rss_and_targets(quick_results):
    rss = quick_results["rss"]
    assert rss["dump_bytes"] == rss["file_bytes"] == bench.RSS_DUMP_BYTES[1]
    assert rss["peak_rss"] > 0 and rss["budget"] == bench.RING_CAPACITY + bench.RSS_BUDGET_EXTRA
    names = [t["target"] for t in quick_results["targets"]]
    # issue 5's 7, and issue 14's FileSink (4), fresh MemorySink (3), Linux --full (1) and replay (2) targets
    assert len(names) == 17
    assert "replay of the --full dump: first write after starting it, s" in names
    assert "Linux writer --full into FileSink: x one process_vm_readv pass" in names
    assert "1k into MemorySink (prefaulted): x best peer" in names
    assert "tiny into FileSink: M writes/s" in names
    assert any(n.startswith("1m into FileSink (fsync included)") for n in names)
    assert "64k into MemorySink (no size hint): x numpy fresh-memory copy" in names
    assert all(t["met"] in (True, False, None) for t in quick_results["targets"])
    json.dumps(quick_results)  # JSON-ready


def test_quick_run_measures_the_linux_full_dump_against_one_read_pass(quick_results):
    full = quick_results["linux_full"]
    assert full["status"] == "ok", full
    rounds = bench.LINUX_FULL_ROUNDS[1]
    assert len(full["end_to_end_seconds"]) == len(full["stopped_seconds"]) == len(full["readv_seconds"]) == rounds
    # The pass reads the very ranges the dump holds, and they include the touched buffer.
    assert full["readv_bytes"] == full["memory_bytes"] >= full["touched_bytes"]
    assert full["dump_bytes"] > full["memory_bytes"]
    assert 0 < full["median_stopped_s"] <= full["median_end_to_end_s"]
    # The dump was replayed each round: planned, and its first write timed after the planning.
    assert len(full["replay"]) == rounds and full["replay_writes"] > 0
    assert all(0 < r["plan_s"] <= r["first_write_s"] <= r["replay_s"] for r in full["replay"])


def test_table_names_every_case_and_target(quick_results):
    table = bench.format_table(quick_results)
    for name in bench.WORKLOADS:
        assert f"\n{name}:" in table
    for label in ("ring alone (NullSink)", "MemorySink", "FileSink", "one piece", "os.pwrite", "multiprocessing.Queue",
                  "faster-fifo", "ringbuf", "tachyon-ipc", "shm-ring-buffer", "peak RSS", "Linux writer --full", "targets"):
        assert label in table, label


def test_cli_command_prints_json(capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bench.add_parser(sub)
    args = parser.parse_args(["bench", "--quick", "--json", "--workloads", "tiny,1k", "--rounds", "1", "--no-peers",
                              "--no-rss", "-q"])
    assert args.func is bench.command
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["workloads"]) == {"tiny", "1k"}
    assert out["workloads"]["1k"]["cases"]["mdstream/memory"]["rounds"] == 1


def test_cli_rejects_unknown_workload(capsys):
    args = argparse.Namespace(quick=True, json=False, output=None, workloads="huge", rounds=None, no_peers=True,
                              no_rss=True, dir=None, quiet=True)
    assert bench.command(args) == 2
    assert "unknown workload" in capsys.readouterr().err


def test_plot_script_reads_the_results(quick_results, tmp_path):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("mdstream_bench_plot", ROOT / "benchmarks" / "plot.py")
    assert spec and spec.loader
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(quick_results))
    png = tmp_path / "plot.png"
    assert plot.main([str(results), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _full_targets_alive() -> list[int]:
    """Pids of the processes measure_linux_full starts (recognised by their -c code)."""
    marker = b"until the benchmark closes our stdin"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux writer needs Linux")
def test_a_killed_bench_leaves_no_full_dump_target_behind(tmp_path):
    """SIGKILL the benchmark at random points of the --full measurement: its target process
    (which waits on its stdin) must end by itself, never stay behind."""
    import random
    import signal
    import subprocess
    import time

    assert _full_targets_alive() == []
    code = ("from mdstream import bench; import sys; "
            f"bench.measure_linux_full(True, directory={str(tmp_path)!r}, rounds=50, "
            "log=lambda m: print(m, flush=True))")
    rng = random.Random(14)
    rounds = int(os.environ.get("MDSTREAM_KILL_ROUNDS", "8"))
    killed_mid_measure = 0
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.0))
        started = bool(_full_targets_alive())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        killed_mid_measure += started
        deadline = time.monotonic() + 10
        while _full_targets_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _full_targets_alive() == [], "the --full target outlived the benchmark"
    assert killed_mid_measure >= rounds // 2  # most kills landed while the target was running
