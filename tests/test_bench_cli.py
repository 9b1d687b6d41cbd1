"""``mdstream bench``'s command-line manners (no measuring here): usage errors, the exit-status epilogue,
peers that are not installed reported once, and targets that cannot be judged reading "not measured"."""

from __future__ import annotations

import json

from mdstream import bench
from mdstream.cli import main

PEERS = ["faster-fifo", "ringbuf", "tachyon-ipc", "shm-ring-buffer", "multiprocessing.Queue"]


def _results(measured_peers: set[str]) -> dict:
    workloads = {}
    for name in ("tiny", "1k", "64k", "1m"):
        cases = {
            "mdstream/memory": {"status": "ok", "label": "mdstream -> MemorySink", "median_s": 0.01, "gbps": 5.0,
                                "mwps": 50.0, "x_memcpy": 0.5},
            "mdstream/memory-prefaulted": {"status": "ok", "label": "mdstream -> MemorySink (prefaulted)",
                                           "median_s": 0.01, "gbps": 6.0, "mwps": 60.0, "x_memcpy": 0.6},
        }
        for peer in PEERS:
            if peer in measured_peers:
                cases[f"peer/{peer}"] = {"status": "ok", "label": f"peer: {peer}", "median_s": 0.1, "gbps": 0.5,
                                         "mwps": 2.0}
            else:
                cases[f"peer/{peer}"] = {"status": "missing", "label": f"peer: {peer}",
                                         "reason": f"{peer} is not installed (ImportError); pip install 'mdstream[bench]'"}
        workloads[name] = {"description": name, "writes": 1000, "bytes": 1 << 20, "cases": cases}
        bench.add_ratios(workloads[name])
    results = {"machine": {"cpu": "test", "cpus": 2}, "workloads": workloads}
    results["targets"] = bench.evaluate_targets(results)
    return results


def test_missing_peers_are_listed_once_not_in_every_table():
    table = bench.format_table(_results({"multiprocessing.Queue"}))
    for peer in PEERS[:4]:
        assert table.count(f"{peer} is not installed") == 1, peer
    assert table.count("not measured (not installed): peer: faster-fifo") == 4  # one short line per workload
    markdown = bench.format_markdown(_results({"multiprocessing.Queue"}))
    assert markdown.count("faster-fifo is not installed") == 1


def test_a_target_against_one_of_five_peers_is_not_measured():
    results = _results({"multiprocessing.Queue"})
    peer_targets = [t for t in results["targets"] if "best peer" in t["target"]]
    assert len(peer_targets) == 2
    for t in peer_targets:
        assert t["value"] is not None and t["value"] >= t["threshold"]  # it would have read "met"
        assert t["met"] is None and "1 of 5 peers" in t["note"]
    table = bench.format_table(results)
    line = next(x for x in table.splitlines() if "1k into MemorySink: x best peer" in x)
    assert line.strip().startswith("not measured") and "1 of 5 peers measured" in line
    every = _results(set(PEERS))
    assert all(t["met"] is True for t in every["targets"] if "best peer" in t["target"])


def test_bench_usage_errors_print_the_usage_line(capsys):
    assert main(["bench", "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mdstream bench") and err.splitlines()[-1] == \
        "mdstream bench: error: --rounds must be >= 1"
    assert main(["bench", "--workloads", "huge", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "usage: mdstream bench" in err
    report = json.loads(out)
    assert report["format"] == "mdstream-bench/1" and report["exit"] == 2 and "huge" in report["error"]


def test_bench_help_has_the_exit_status_epilogue(capsys):
    assert main(["bench", "--help"]) == 0
    assert "exit status: 0 success" in capsys.readouterr().out


def test_one_quick_workload_is_measured_end_to_end():
    """The default tier's run of the measuring code (the whole quick run is in the extended tier)."""
    results = bench.run(quick=True, workloads=["1k"], peers=False, rss=False, linux_full=False)
    cases = results["workloads"]["1k"]["cases"]
    for key in ("mdstream/null", "mdstream/memory", "mdstream/file", "memcpy/one-piece", "pwrite/new-file"):
        assert cases[key]["status"] == "ok" and cases[key]["gbps"] > 0, (key, cases[key])
    assert results["format"] == "mdstream-bench/1"
    assert "1k:" in bench.format_table(results)
