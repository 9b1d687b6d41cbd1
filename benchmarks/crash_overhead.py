"""Crash capture benchmarks (issue 15): what ``mdstream run`` and
``mdstream.crash.install()`` cost a program that never crashes, and how long
it takes from a fault to the report on disk.

    python benchmarks/crash_overhead.py [--quick] [--json results/crash-overhead.json]

1. Overhead on a thread-heavy and a fork-heavy program (wall time, median of
   ``--rounds`` runs, each against the same program run plainly):
   - C (tests/native/crashers.c): ``threads N`` creates and joins N threads one
     after another; ``forks N`` forks and reaps N children.  Under
     ``mdstream run`` (and ``--follow-forks``).
   - Python: the same loops with ``threading.Thread`` and ``os.fork()``, plain,
     with ``mdstream.crash`` only imported (a bigger process forks slower),
     under ``mdstream run``, and after ``install()`` (whose costs are one
     alternate signal stack per thread started, and one registration with the
     watcher per ``os.fork()``).  ``install()`` itself (it waits for the watcher
     it starts) is timed separately.
2. Fault to report on disk, for a process with 100 MB of private memory
   touched (a Python program: ``bytearray`` ballast): the program takes
   CLOCK_MONOTONIC just before ``ctypes.string_at(0)``; the harness polls the
   database and stops the clock when the report's metadata is there.  Normal
   and ``--full`` dumps, under ``run`` and ``install()``.

Nothing is asserted; the numbers depend on the machine (and on what else runs
on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CRASHERS = ROOT / "tests" / "native" / "crashers.c"
PY = sys.executable


def build(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("no C compiler")
    out = workdir / "crashers"
    subprocess.run([cc, "-O2", "-g", "-pthread", "-o", str(out), str(CRASHERS)], check=True)
    return out


PY_THREADS = """
import sys, threading, time
{setup}
n = int(sys.argv[1])
start = time.perf_counter()
for _ in range(n):
    t = threading.Thread(target=int)
    t.start()
    t.join()
print(time.perf_counter() - start, file=sys.stderr)
"""

PY_FORKS = """
import os, sys, time
{setup}
n = int(sys.argv[1])
start = time.perf_counter()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(time.perf_counter() - start, file=sys.stderr)
"""

INSTALL = "from mdstream import crash; crash.install({db!r})"


def loop_seconds(argv: list[str]) -> float:
    """The program's own timing of its loop (excludes interpreter start-up and install())."""
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return float(proc.stderr.decode().strip().splitlines()[-1])


def overhead(workdir: Path, crashers: Path, rounds: int, n_threads: int, n_forks: int) -> dict[str, Any]:
    db = workdir / "db"
    run = [PY, "-m", "mdstream", "run", "-d", str(db), "--"]
    out: dict[str, Any] = {}

    def row(name: str, plain: float, cases: dict[str, float], unit: int) -> None:
        entry = {"plain_s": plain, "per_op_us_plain": plain / unit * 1e6}
        for case, seconds in cases.items():
            entry[f"{case}_s"] = seconds
            entry[f"{case}_ratio"] = seconds / plain
            entry[f"{case}_per_op_us"] = seconds / unit * 1e6
        out[name] = entry
        print(f"{name:28s} plain {plain:7.3f} s ({plain / unit * 1e6:6.1f} us/op)  " + "  ".join(
            f"{case} {seconds:7.3f} s (x{seconds / plain:.2f})" for case, seconds in cases.items()), flush=True)

    # C programs (no install() for C): the loop as the program times it
    med = statistics.median
    plain = med(loop_seconds([str(crashers), "threads", str(n_threads)]) for _ in range(rounds))
    supervised = med(loop_seconds(run + [str(crashers), "threads", str(n_threads)]) for _ in range(rounds))
    row(f"C threads x{n_threads}", plain, {"run": supervised}, n_threads)
    plain = med(loop_seconds([str(crashers), "forks", str(n_forks)]) for _ in range(rounds))
    supervised = med(loop_seconds(run + [str(crashers), "forks", str(n_forks)]) for _ in range(rounds))
    followed = med(loop_seconds([PY, "-m", "mdstream", "run", "-d", str(db), "--follow-forks", "--",
                                 str(crashers), "forks", str(n_forks)]) for _ in range(rounds))
    row(f"C forks x{n_forks}", plain, {"run": supervised, "run_follow_forks": followed}, n_forks)

    # Python programs: the loop as the program times it
    for name, template, n in (("threads", PY_THREADS, n_threads), ("forks", PY_FORKS, n_forks)):
        bare = workdir / f"py_{name}.py"
        bare.write_text(textwrap.dedent(template.format(setup="")))
        imported = workdir / f"py_{name}_import.py"  # what importing mdstream (numpy) alone costs a fork
        imported.write_text(textwrap.dedent(template.format(setup="import mdstream.crash")))
        hooked = workdir / f"py_{name}_install.py"
        hooked.write_text(textwrap.dedent(template.format(setup=INSTALL.format(db=str(db)))))
        plain = statistics.median(loop_seconds([PY, str(bare), str(n)]) for _ in range(rounds))
        supervised = statistics.median(loop_seconds(run + [PY, str(bare), str(n)]) for _ in range(rounds))
        cases = {"import_only": statistics.median(loop_seconds([PY, str(imported), str(n)]) for _ in range(rounds)),
                 "run": supervised}
        if name == "forks":
            cases["run_follow_forks"] = statistics.median(
                loop_seconds([PY, "-m", "mdstream", "run", "-d", str(db), "--follow-forks", "--", PY, str(bare),
                              str(n)]) for _ in range(rounds))
        cases["install"] = statistics.median(loop_seconds([PY, str(hooked), str(n)]) for _ in range(rounds))
        row(f"Python {name} x{n}", plain, cases, n)

    # install() itself (starts the watcher and waits for it)
    timer = workdir / "install_time.py"
    timer.write_text(textwrap.dedent(f"""
        import sys, time
        import mdstream.crash
        start = time.perf_counter()
        handler = mdstream.crash.install({str(db)!r})
        print(time.perf_counter() - start, file=sys.stderr)
        handler.uninstall()
    """))
    seconds = statistics.median(loop_seconds([PY, str(timer)]) for _ in range(rounds))
    out["install_call_s"] = seconds
    print(f"{'install() call':28s} {seconds * 1e3:7.1f} ms (starts the watcher, waits for its READY)", flush=True)
    return out


CRASH_100MB = """
import ctypes, os, sys, time
{setup}
ballast = bytearray(os.urandom(1 << 20)) * 100        # 100 MiB of private, touched memory
sys.stdout.write(f"{{time.monotonic()!r}}\\n"); sys.stdout.flush()
ctypes.string_at(0)
"""


def wait_report(db: Path, timeout: float = 120.0) -> float:
    """CLOCK_MONOTONIC when a published report appeared in ``db``."""
    reports_dir = db / "reports"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for entry in os.scandir(reports_dir):
                if os.path.exists(os.path.join(entry.path, "metadata.json")):
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    raise TimeoutError("no report")


def fault_to_report(workdir: Path, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for way in ("run", "install"):
        for full in (False, True):
            samples = []
            sizes = []
            for i in range(rounds):
                db = workdir / f"crash-{way}-{full}-{i}"
                script = workdir / "crash100.py"
                setup = (f"from mdstream import crash; crash.install({str(db)!r}, full={full})"
                         if way == "install" else "")
                script.write_text(textwrap.dedent(CRASH_100MB.format(setup=setup)))
                argv = [PY, str(script)]
                if way == "run":
                    argv = [PY, "-m", "mdstream", "run", "-d", str(db)] + (["--full"] if full else []) + ["--"] + argv
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert proc.stdout is not None
                fault = float(proc.stdout.readline())
                seen = wait_report(db)
                proc.wait(120)
                samples.append(seen - fault)
                sizes.extend(p.stat().st_size for p in (db / "reports").glob("*/minidump.dmp"))
            key = f"{way}_{'full' if full else 'normal'}"
            out[key] = {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
                        "dump_bytes": int(statistics.median(sizes)) if sizes else None}
            print(f"fault -> report, 100 MiB, {key:16s} median {statistics.median(samples) * 1e3:7.1f} ms "
                  f"(min {min(samples) * 1e3:.1f}, max {max(samples) * 1e3:.1f}); dump "
                  f"{(statistics.median(sizes) if sizes else 0) / 1e3:,.0f} kB", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, 1 round (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", metavar="PATH", help="write the results there")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    n_threads, n_forks = (500, 200) if args.quick else (5000, 2000)
    load = os.getloadavg()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(a shared machine: other jobs run at the same time)", flush=True)
    with tempfile.TemporaryDirectory(prefix="mdstream-crash-bench-") as tmp:
        workdir = Path(tmp)
        crashers = build(workdir)
        results = {
            "machine": {"cpus": os.cpu_count(), "load_before": load, "python": platform.python_version(),
                        "kernel": platform.release()},
            "rounds": rounds,
            "overhead": overhead(workdir, crashers, rounds, n_threads, n_forks),
            "fault_to_report": fault_to_report(workdir, rounds),
        }
    results["machine"]["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
