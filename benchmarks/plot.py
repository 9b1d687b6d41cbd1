"""Plot throughput against write size: mdstream and every baseline, from one results file.

    python benchmarks/plot.py RESULTS.json [-o docs/benchmarks.png]

RESULTS.json is what ``mdstream bench --json`` (or ``-o PATH``) writes, what
``pytest benchmarks/ --bench-json PATH`` writes, or pytest-benchmark's own
``--benchmark-json`` file (rates come from each benchmark's ``extra_info`` and
median).  Needs matplotlib (``pip install 'mdstream[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "benchmarks.png")

# key -> (label, colour, line style, marker)
STYLE: dict[str, tuple[str, str, str, str]] = {
    "mdstream/null": ("mdstream, ring alone (NullSink)", "#08519c", "-", "o"),
    "mdstream/memory": ("mdstream -> MemorySink", "#3182bd", "-", "s"),
    "mdstream/memory-prefaulted": ("mdstream -> MemorySink (prefaulted)", "#1c9099", "-", "P"),
    "mdstream/file": ("mdstream -> FileSink (/dev/shm)", "#6baed6", "-", "D"),
    "memcpy/one-piece": ("numpy copy, one piece", "#000000", "--", ""),
    "memcpy/fresh": ("numpy copy, one piece, into fresh memory", "#969696", "--", "."),
    "memcpy/pieces": ("numpy copy, same-sized pieces", "#636363", "--", "x"),
    "pwrite/new-file": ("os.pwrite into /dev/shm", "#a63603", "-.", "v"),
    "pwrite/1m-pieces": ("os.pwrite in 1 MiB pieces + fsync", "#e6550d", "-.", "^"),
    "peer/multiprocessing.Queue": ("multiprocessing.Queue", "#d95f0e", ":", "^"),
    "peer/faster-fifo": ("faster-fifo", "#fe9929", ":", "<"),
    "peer/ringbuf": ("ringbuf", "#31a354", ":", ">"),
    "peer/tachyon-ipc": ("tachyon-ipc", "#756bb1", ":", "P"),
    "peer/shm-ring-buffer": ("shm-ring-buffer", "#c51b8a", ":", "*"),
}


def load(path: str) -> dict[str, Any]:
    """Results in ``mdstream-bench/1`` form, whichever of the three files ``path`` is."""
    with open(path) as f:
        data = json.load(f)
    if "workloads" in data:
        return dict(data)
    if "benchmarks" not in data:
        raise ValueError(f"{path}: neither mdstream bench results nor a pytest-benchmark JSON file")
    results: dict[str, Any] = {"format": "mdstream-bench/1", "machine": {}, "workloads": {}}
    info = data.get("machine_info") or {}
    results["machine"] = {"cpu": (info.get("cpu") or {}).get("brand_raw"), "cpus": (info.get("cpu") or {}).get("count"),
                          "python": info.get("python_version")}
    for b in data["benchmarks"]:
        extra = b.get("extra_info") or {}
        if "workload" not in extra or "case" not in extra:
            continue
        med = b["stats"]["median"]
        w = results["workloads"].setdefault(extra["workload"], {"write_size": extra.get("write_size"), "cases": {}})
        w["cases"][extra["case"]] = {
            "status": "ok", "label": extra.get("label", extra["case"]), "median_s": med,
            "gbps": extra["bytes"] / med / 1e9, "mwps": extra["writes"] / med / 1e6,
        }
        results["quick"] = bool(extra.get("quick"))
    return results


def plot(results: dict[str, Any], output: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted(results["workloads"].items(), key=lambda kv: float(kv[1].get("write_size") or 0))
    keys: list[str] = []
    for _, w in workloads:
        for k in w["cases"]:
            if k not in keys:
                keys.append(k)
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.2))
    for ax, field, ylabel in ((axes[0], "gbps", "GB/s (payload bytes, 1e9)"),
                              (axes[1], "mwps", "million writes (messages) per second")):
        for key in keys:
            xs, ys = [], []
            for _, w in workloads:
                c = w["cases"].get(key)
                if c and c.get("status") == "ok" and c.get(field):
                    xs.append(float(w["write_size"]))
                    ys.append(float(c[field]))
            if not xs:
                continue
            label, colour, style, marker = STYLE.get(key, (key, None, "-", "."))  # type: ignore[arg-type]
            width = 2.6 if key.startswith("mdstream/") else 1.4
            ax.plot(xs, ys, linestyle=style, marker=marker or None, color=colour, label=label, linewidth=width)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = [float(w["write_size"]) for _, w in workloads]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{name}\n({_size(float(w['write_size']))})" for name, w in workloads])
        ax.set_xlabel("write size (tiny: 4-16 B, mean 10 B)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    m = results.get("machine") or {}
    title = (f"mdstream throughput vs write size -- {m.get('cpu') or '?'} x{m.get('cpus') or '?'}, "
             f"Python {m.get('python') or '?'}, medians")
    if results.get("quick"):
        title += " (QUICK smoke run: not a measurement)"
    fig.suptitle(title)
    fig.tight_layout()
    output = os.path.abspath(output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _size(n: float) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):g} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):g} KiB"
    return f"{n:g} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="results JSON (mdstream bench --json, --bench-json or --benchmark-json)")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="PNG to write (default docs/benchmarks.png)")
    args = parser.parse_args(argv)
    try:
        path = plot(load(args.results), args.output)
    except ImportError as exc:
        print(f"plot.py: matplotlib is needed (pip install matplotlib): {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
