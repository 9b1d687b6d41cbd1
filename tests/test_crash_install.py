"""``mdstream.crash.install()``: in-process handlers hand the crash to a watcher
that writes the report out of process.

Real Python programs crash (a NULL read through ctypes, ``os.abort()`` in a
thread, and the C faults of tests/native/crashers.c through ctypes: a nested
fault, ``abort()``, a stack overflow on threads that existed before and
started after ``install()``, a fault in a native thread).  Each dump is
checked with rust-minidump's ``minidump-stackwalk`` (crash reason, address,
crashing thread, the memory the crashing instruction accessed, and with
``dump-syms`` symbols the faulting function) and the PyPI ``minidump``
parser; the reports carry the Python tracebacks.  The crashing process is
never left hanging: the watcher is killed or stopped at random points while
it writes the dump.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crash_support import (
    CLI,
    clean_env,
    compile_crashers,
    crashing_thread,
    functions,
    load_reports,
    parse_minidump,
    stackwalk,
)
from test_linux_writer import rust_minidump  # noqa: F401  (fixture)

from mdstream import linux
from mdstream.minidump import read_info

pytestmark = pytest.mark.skipif(not linux.supported(), reason="the crash handler needs Linux x86-64")

PYTHON_TRACEBACKS = 0x4D640001
ANNOTATIONS = 0x4D640002

PRELUDE = """\
import os, sys, ctypes, threading, time
from mdstream import crash
"""


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return compile_crashers(tmp_path_factory.mktemp("crashers"))


def run_program(tmp_path: Path, body: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = tmp_path / "program.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, timeout=timeout,
                          env=clean_env())


def one_report(database: Path) -> dict:
    reports = load_reports(database)
    assert len(reports) == 1, reports
    return reports[0]


def stream(path: str, stype: int) -> bytes | None:
    data = Path(path).read_bytes()
    for s in read_info(path).streams:
        if s.type == stype:
            return data[s.rva:s.rva + s.data_size]
    return None


# ---- default tier ---------------------------------------------------------------------


def test_python_null_read_report_with_tracebacks(tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        handler = crash.install({str(db)!r}, annotations={{"service": "demo"}}, timeout=10)
        assert crash.install({str(db)!r}) is handler  # twice is harmless
        def inner():
            ctypes.string_at(0)
        def outer():
            inner()
        outer()
    """)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr  # dies as it would have
    assert b"crash report" in proc.stderr and b"written" in proc.stderr
    meta = one_report(db)
    assert meta["signal"] == signal.SIGSEGV and meta["signal_name"] == "SIGSEGV"
    assert meta["code"] == 1 and meta["address"] == 0
    assert meta["crashing_thread"] == meta["pid"]
    assert meta["annotations"] == {"service": "demo"}
    (main,) = meta["python_tracebacks"]
    assert main["current"] and main["tid"] == meta["pid"]
    names = [(f["function"], f["line"]) for f in main["frames"]]
    assert names[0][0] == "string_at"
    assert [n for n, _ in names[1:]] == ["inner", "outer", "<module>"]
    lines = (tmp_path / "program.py").read_text().splitlines()
    assert names[1][1] == 1 + next(i for i, text in enumerate(lines) if "ctypes.string_at(0)" in text)

    text = stream(meta["dump_path"], PYTHON_TRACEBACKS)
    assert text is not None and b"Current thread 0x" in text and b'line ' in text and b"in inner" in text
    assert stream(meta["dump_path"], ANNOTATIONS) == b'{"service": "demo"}'
    info_text = subprocess.run([sys.executable, *CLI, "info", meta["dump_path"]], capture_output=True, text=True,
                               env=clean_env()).stdout
    assert "MdstreamPythonTracebacks" in info_text and "MdstreamAnnotations" in info_text
    report = stackwalk(rust_minidump, meta["dump_path"])
    info = report["crash_info"]
    assert info["type"] == "SIGSEGV / SEGV_MAPERR"
    assert int(info["address"], 16) == 0
    # the context is the faulting instruction's (a read of address 0), not the handler's
    assert [int(a["address"], 16) for a in info["memory_accesses"]] == [0]
    assert crashing_thread(report)["thread_id"] == meta["crashing_thread"]
    md = parse_minidump(meta["dump_path"])
    assert md.exception.exception_records[0].ThreadId == meta["crashing_thread"]


def test_chains_to_faulthandler_and_uninstall_restores(tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        import faulthandler
        faulthandler.enable()
        crash.install({str(db)!r}).uninstall()
        crash.install({str(db)!r}).uninstall()  # again: harmless
        handler = crash.install({str(db)!r})
        ctypes.string_at(0)
    """)
    assert proc.returncode == -signal.SIGSEGV
    assert b"Fatal Python error: Segmentation fault" in proc.stderr  # faulthandler ran after the report
    assert b"written" in proc.stderr
    assert len(load_reports(db)) == 1

    db2 = tmp_path / "db2"
    proc = run_program(tmp_path, f"""
        import faulthandler
        faulthandler.enable()
        crash.install({str(db2)!r}).uninstall()
        ctypes.string_at(0)
    """)
    assert proc.returncode == -signal.SIGSEGV
    assert b"Fatal Python error: Segmentation fault" in proc.stderr and b"crash report" not in proc.stderr
    assert load_reports(db2) == []


def test_uninstall_gives_the_stacks_back(tmp_path: Path) -> None:
    proc = run_program(tmp_path, f"""
        from mdstream import _crash
        stop = threading.Event()
        threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(5)]
        for t in threads:
            t.start()
        handler = crash.install({str(tmp_path / "db")!r})
        covered, total = handler.threads_covered
        assert covered == total == len(os.listdir("/proc/self/task")), handler.threads_covered
        # ours, not the ones threads already had (under ASan, its own)
        assert _crash.altstack_count() == total or os.environ.get("MDSTREAM_SANITIZED") == "1"
        handler.uninstall()
        assert handler.stacks_kept == 0 and _crash.altstack_count() == 0
        assert not _crash.is_installed() and crash.installed() is None
        stop.set()
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ok\n"


def test_a_dead_watcher_does_not_keep_the_process(tmp_path: Path) -> None:
    db = tmp_path / "db"
    started = time.monotonic()
    proc = run_program(tmp_path, f"""
        handler = crash.install({str(db)!r}, timeout=2)
        os.kill(handler.watcher_pid, 9)
        time.sleep(0.2)
        ctypes.string_at(0)
    """)
    assert proc.returncode == -signal.SIGSEGV
    assert time.monotonic() - started < 30
    err = proc.stderr.decode()
    assert "mdstream: the crash watcher" in err and "no crash report; the process dies as it would have" in err
    assert load_reports(db) == []


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="pokes at CPython 3.11's frame layout")
def test_a_corrupted_interpreter_still_gives_a_report(tmp_path: Path, rust_minidump) -> None:
    """The traceback dumper faults on a frame whose code pointer is garbage:
    the handler catches its own fault, and the report is still written (with
    the tracebacks written so far, marked incomplete)."""
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        handler = crash.install({str(db)!r})
        ready = threading.Event()
        def parked():
            ready.set()
            time.sleep(3600)
        t = threading.Thread(target=parked, daemon=True); t.start(); ready.wait(); time.sleep(0.1)
        frame = sys._current_frames()[t.ident]
        interpreter_frame = ctypes.c_void_p.from_address(id(frame) + 24).value   # PyFrameObject.f_frame
        ctypes.c_void_p.from_address(interpreter_frame + 32).value = 0x10         # _PyInterpreterFrame.f_code
        ctypes.string_at(0)
    """)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    meta = one_report(db)
    assert meta["annotations"]["mdstream.python_tracebacks"].startswith("incomplete")
    assert meta["address"] == 0 and meta["crashing_thread"] == meta["pid"]
    info = stackwalk(rust_minidump, meta["dump_path"])["crash_info"]
    assert info["type"] == "SIGSEGV / SEGV_MAPERR"  # the crash, not the dumper's fault
    assert [int(a["address"], 16) for a in info["memory_accesses"]] == [0]


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    """SIGTRAP ignored before install(): a kill -TRAP is still ignored (no report, the
    program carries on); abort() with SIGABRT ignored still dies, with a report."""
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        import signal
        signal.signal(signal.SIGTRAP, signal.SIG_IGN)
        signal.signal(signal.SIGABRT, signal.SIG_IGN)
        crash.install({str(db)!r})
        os.kill(os.getpid(), signal.SIGTRAP)
        time.sleep(0.2)
        print("still here", flush=True)
        os.abort()
    """)
    assert proc.returncode == -signal.SIGABRT, proc.stderr
    assert proc.stdout == b"still here\n"
    (meta,) = load_reports(db)
    assert meta["signal"] == signal.SIGABRT


def test_handled_segv_after_install_is_not_reported(built, tmp_path: Path) -> None:
    program, library = built
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        crash.install({str(db)!r})
        lib = ctypes.CDLL({str(library)!r})
        assert lib.handle_and_carry_on() == 1  # its own handler, installed after ours, recovers
        print("carried on")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"carried on\n"
    assert load_reports(db) == []


# ---- extended tier ---------------------------------------------------------------------------


@pytest.mark.extended
@pytest.mark.parametrize("function, signo, leaf", [
    ("crash_outer", signal.SIGSEGV, ["crash_leaf", "crash_middle", "crash_outer"]),
    ("abort_outer", signal.SIGABRT, None),
    ("crash_overflow", signal.SIGSEGV, ["overflow_recurse"] * 3),
])
def test_c_faults_through_ctypes(built, tmp_path: Path, rust_minidump, function: str, signo: int,
                                 leaf: list[str] | None) -> None:
    program, library = built
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        crash.install({str(db)!r})
        ctypes.CDLL({str(library)!r}).{function}()
    """)
    assert proc.returncode == -signo, proc.stderr
    meta = one_report(db)
    assert meta["signal"] == signo and meta["crashing_thread"] == meta["pid"]
    report = stackwalk(rust_minidump, meta["dump_path"], (library,), tmp_path)
    thread = crashing_thread(report)
    assert thread["thread_id"] == meta["crashing_thread"]
    assert int(report["crash_info"]["address"], 16) == meta["address"]
    names = functions(thread)
    if leaf is not None:
        assert report["crash_info"]["type"].startswith("SIGSEGV / SEGV_")
        assert names[:len(leaf)] == leaf, names
    else:
        assert report["crash_info"]["type"] == "SIGABRT / SI_TKILL"
        assert "abort_leaf" in names and names.index("abort_outer") == names.index("abort_leaf") + 1
    (main,) = meta["python_tracebacks"]
    assert main["frames"][-1]["function"] == "<module>"


@pytest.mark.extended
def test_native_thread_fault_while_others_run(built, tmp_path: Path, rust_minidump) -> None:
    program, library = built
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        crash.install({str(db)!r})
        ctypes.CDLL({str(library)!r}).crash_in_thread()
    """)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    meta = one_report(db)
    assert meta["address"] == 0x18 and meta["crashing_thread"] != meta["pid"]
    report = stackwalk(rust_minidump, meta["dump_path"], (library,), tmp_path)
    thread = crashing_thread(report)
    assert thread["thread_id"] == meta["crashing_thread"] and thread.get("thread_name") == "crasher"
    assert functions(thread)[:2] == ["thread_crash_leaf", "crasher"]
    assert report["thread_count"] >= 5
    # the crashing thread runs no Python; the main thread's traceback is there
    assert any(t["tid"] == meta["pid"] for t in meta["python_tracebacks"])


@pytest.mark.extended
@pytest.mark.parametrize("when", ["before", "after"])
def test_stack_overflow_in_python_threads(built, tmp_path: Path, rust_minidump, when: str) -> None:
    """Alternate stacks: a thread that existed at install() (given one by a
    signal) and one started after (given one when it starts)."""
    program, library = built
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        lib = ctypes.CDLL({str(library)!r})
        go = threading.Event()
        def overflow():
            go.wait()
            lib.crash_overflow()
        if {when!r} == "before":
            t = threading.Thread(target=overflow, name="overflower", daemon=True); t.start()
            handler = crash.install({str(db)!r})
            covered, total = handler.threads_covered
            assert covered == total == len(os.listdir("/proc/self/task")), handler.threads_covered
        else:
            handler = crash.install({str(db)!r})
            t = threading.Thread(target=overflow, name="overflower", daemon=True); t.start()
        go.set()
        t.join()
    """)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    meta = one_report(db)
    assert meta["crashing_thread"] != meta["pid"]
    report = stackwalk(rust_minidump, meta["dump_path"], (library,), tmp_path)
    thread = crashing_thread(report)
    assert thread["thread_id"] == meta["crashing_thread"]
    assert functions(thread)[:3] == ["overflow_recurse"] * 3
    current = [t for t in meta["python_tracebacks"] if t["current"]]
    assert current and current[0]["tid"] == meta["crashing_thread"]
    assert current[0]["frames"][0]["function"] == "overflow"


@pytest.mark.extended
def test_os_abort_in_a_thread(tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        crash.install({str(db)!r})
        def worker():
            os.abort()
        t = threading.Thread(target=worker, name="aborter"); t.start(); t.join()
    """)
    assert proc.returncode == -signal.SIGABRT, proc.stderr
    meta = one_report(db)
    assert meta["signal"] == signal.SIGABRT and meta["code"] == -6
    assert meta["crashing_thread"] != meta["pid"]
    report = stackwalk(rust_minidump, meta["dump_path"])
    assert report["crash_info"]["type"] == "SIGABRT / SI_TKILL"
    assert crashing_thread(report)["thread_id"] == meta["crashing_thread"]
    current = [t for t in meta["python_tracebacks"] if t["current"]]
    assert len(current) == 1 and current[0]["tid"] == meta["crashing_thread"]
    assert current[0]["frames"][0]["function"] == "worker"
    others = [t for t in meta["python_tracebacks"] if not t["current"]]
    assert any(t["tid"] == meta["pid"] for t in others)  # the main thread, waiting in join()


@pytest.mark.extended
def test_forked_children_register_themselves(built, tmp_path: Path) -> None:
    """os.fork() children register through the at-fork hook; a fork from C
    (no Python hook) registers from the signal handler at the crash."""
    program, library = built
    db = tmp_path / "db"
    proc = run_program(tmp_path, f"""
        handler = crash.install({str(db)!r})
        lib = ctypes.CDLL({str(library)!r})
        child = os.fork()
        if child == 0:
            ctypes.string_at(0)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 11, status
        libc = ctypes.CDLL(None)
        child = libc.fork()
        if child == 0:
            lib.crash_leaf(1)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 11, status
        print("parent survived", child)
    """)
    assert proc.returncode == 0, proc.stderr
    reports = sorted(load_reports(db), key=lambda m: m["time"])
    assert len(reports) == 2, proc.stderr
    pids = {m["pid"] for m in reports}
    assert len(pids) == 2
    assert reports[0]["python_tracebacks"][0]["frames"][0]["function"] == "string_at"
    assert reports[1]["address"] == 0x10


@pytest.mark.extended
def test_a_watcher_run_as_a_service(tmp_path: Path) -> None:
    db = tmp_path / "db"
    sock = tmp_path / "watch.sock"
    watcher = subprocess.Popen([sys.executable, *CLI, "watch", "-d", str(db), "--socket", str(sock),
                                "--annotate", "host=ci"], stderr=subprocess.PIPE, env=clean_env())
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline and watcher.poll() is None
            time.sleep(0.02)
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        for _ in range(2):
            proc = run_program(tmp_path, f"""
                handler = crash.install(watcher={str(sock)!r}, annotations={{"app": "one"}})
                assert handler.watcher_pid == {watcher.pid}
                ctypes.string_at(0)
            """)
            assert proc.returncode == -signal.SIGSEGV, proc.stderr
        reports = load_reports(db)
        assert len(reports) == 2
        assert all(m["annotations"] == {"host": "ci", "app": "one"} for m in reports)
        # a second watcher on the same socket is refused, the first one keeps it
        second = subprocess.run([sys.executable, *CLI, "watch", "-d", str(db), "--socket", str(sock)],
                                capture_output=True, timeout=30, env=clean_env())
        assert second.returncode == 1 and b"already listens" in second.stderr
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(30) == 0
    assert not sock.exists()
    assert watcher.stderr is not None and b"crashed: SIGSEGV / SEGV_MAPERR" in watcher.stderr.read()


KILL_PROGRAM = """
    handler = crash.install({db!r}, timeout={timeout}, full=True)
    ballast = bytearray(os.urandom(1 << 20)) * 48  # a 48 MiB heap: the full dump takes a while
    print(handler.watcher_pid, flush=True)
    sys.stdin.readline()
    ctypes.string_at(0)
"""


def process_state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return text[text.rindex(")") + 2]


def kill_watcher_mid_dump(tmp_path: Path, how: signal.Signals, delay: float, timeout: float = 2.0
                          ) -> tuple[str, float]:
    """Crash a process, hit its watcher with ``how`` ``delay`` s later; returns
    (outcome, seconds from the crash to the process's end).

    The process has ended when it is reaped, or is a zombie: a process the
    watcher was holding in a ptrace-stop when it was stopped is killed by the
    hard deadline's timer, but stays a (traced) zombie its parent can reap
    only once the stopped watcher continues or dies."""
    db = tmp_path / f"db-{how.name}-{delay:.3f}"
    script = tmp_path / "kill_program.py"
    script.write_text(PRELUDE + textwrap.dedent(KILL_PROGRAM.format(db=str(db), timeout=timeout)))
    hard = timeout + min(5.0, max(1.0, timeout / 2))  # install()'s default hard deadline
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    assert proc.stdout is not None and proc.stdin is not None
    watcher = int(proc.stdout.readline())
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    crashed = time.monotonic()
    time.sleep(delay)
    zombie = False
    try:
        os.kill(watcher, how)
        deadline = crashed + hard + 5  # the hard deadline + slack
        while proc.poll() is None:
            if process_state(proc.pid) in "ZX?":
                zombie = True
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the crashing process was left hanging ({how.name} after {delay:.3f} s)")
            time.sleep(0.005)
        took = time.monotonic() - crashed
    finally:
        if how == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):  # not our child: it may be gone and reaped already
                os.kill(watcher, signal.SIGKILL)
        code = proc.wait(30)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if code == -signal.SIGKILL:
        outcome = "killed by the hard deadline" + (" (a traced zombie until the watcher died)" if zombie else "")
    elif "written" in err:
        outcome = "report written"
    elif "no crash report" in err:
        outcome = "no report, said so"
    else:
        outcome = f"exit {code}: {err.strip()[-200:]}"
    assert code in (-signal.SIGSEGV, -signal.SIGKILL), (code, err)
    return outcome, took


OUTCOMES = ("report written", "no report, said so", "killed by the hard deadline",
            "killed by the hard deadline (a traced zombie until the watcher died)")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_watcher_killed_or_stopped_mid_dump_once(tmp_path: Path, how: signal.Signals) -> None:
    outcome, took = kill_watcher_mid_dump(tmp_path, how, 0.02, timeout=0.5)
    assert took < 1.5 + 5, (outcome, took)
    assert outcome in OUTCOMES, outcome


@pytest.mark.extended
def test_watcher_killed_or_stopped_mid_dump_repeatedly(tmp_path: Path) -> None:
    """24 crashes; the watcher is SIGKILLed or SIGSTOPped at a random point
    (half of them within the first 80 ms: the snapshot, while it holds the
    process stopped; the others up to 600 ms: the emission and publishing)."""
    rng = random.Random(1515)
    counts: dict[str, int] = {}
    worst = 0.0
    for i in range(24):
        how = signal.SIGKILL if i % 2 == 0 else signal.SIGSTOP
        delay = rng.uniform(0.0, 0.08) if i % 4 < 2 else rng.uniform(0.0, 0.6)
        outcome, took = kill_watcher_mid_dump(tmp_path, how, delay)
        key = f"{how.name}: {outcome}"
        counts[key] = counts.get(key, 0) + 1
        worst = max(worst, took)
        assert outcome in OUTCOMES, outcome
    print(f"\nwatcher hit mid-dump 24 times: {counts}; longest crash-to-end {worst:.2f} s (hard deadline 3 s)")
    assert worst < 3 + 5
