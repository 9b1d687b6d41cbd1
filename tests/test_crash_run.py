"""``mdstream run -- CMD``: the ptrace supervisor writes a crash report exactly
when a fatal signal kills a process, with the faulting thread's context at the
faulting instruction.

Real programs crash (tests/native/crashers.c and Python programs); each dump
is checked with software we did not write: rust-minidump's
``minidump-stackwalk`` (crash reason, address, crashing thread, the memory the
crashing instruction accessed, and with ``dump-syms`` symbols the faulting
function) and the PyPI ``minidump`` parser.  The default tier runs a few
cases; the rest is ``extended``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
    mdstream_run,
    parse_minidump,
    stackwalk,
)
from test_linux_writer import rust_minidump  # noqa: F401  (fixture)

from mdstream import linux

pytestmark = pytest.mark.skipif(not linux.supported(), reason="the supervisor needs Linux x86-64")


@pytest.fixture(scope="session")
def crashers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_crashers(tmp_path_factory.mktemp("crashers"))[0]


def one_report(database: Path) -> dict:
    reports = load_reports(database)
    assert len(reports) == 1, reports
    return reports[0]


def check_metadata(meta: dict, signo: int, code_name: str | None = None) -> None:
    assert meta["signal"] == signo
    assert meta["signal_name"] == signal.Signals(signo).name
    assert meta["state"] == "pending" and meta["format"] == "mdstream-crash-report/1"
    assert meta["dump_bytes"] == os.path.getsize(meta["dump_path"])
    assert oct(os.stat(meta["dump_path"]).st_mode & 0o777) == "0o600"
    assert meta["mdstream_version"]


# ---- default tier: a C fault, a Python fault behind faulthandler, no report when none is due ----


def test_nested_c_fault(crashers: Path, tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    proc = mdstream_run(db, str(crashers), "segv", options=("--annotate", "build=42", "--json"))
    assert proc.returncode == 128 + signal.SIGSEGV, proc.stderr
    summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert summary["exit_status"] == 139 and len(summary["reports"]) == 1
    meta = one_report(db)
    check_metadata(meta, signal.SIGSEGV)
    assert meta["code"] == 1 and meta["address"] == 0x10
    assert meta["crashing_thread"] == meta["pid"] == summary["reports"][0]["pid"]
    assert meta["executable"] == str(crashers)
    assert meta["annotations"] == {"build": "42"}

    report = stackwalk(rust_minidump, meta["dump_path"], (crashers,), tmp_path)
    info = report["crash_info"]
    assert info["type"] == "SIGSEGV / SEGV_MAPERR"
    assert int(info["address"], 16) == 0x10
    # the context is the faulting instruction's: it writes the fault address
    assert [int(a["address"], 16) for a in info["memory_accesses"]] == [0x10]
    thread = crashing_thread(report)
    assert thread["thread_id"] == meta["crashing_thread"]
    assert functions(thread)[:4] == ["crash_leaf", "crash_middle", "crash_outer", "main"]
    md = parse_minidump(meta["dump_path"])
    assert md.exception.exception_records[0].ThreadId == meta["crashing_thread"]
    assert md.exception.exception_records[0].ExceptionRecord.ExceptionAddress == 0x10


def test_python_fault_behind_faulthandler_keeps_the_original_context(tmp_path: Path, rust_minidump) -> None:
    """faulthandler catches the SIGSEGV, prints, and re-raises it with raise():
    the report still shows the faulting instruction (a read of address 0 in
    libc's strlen), not raise()."""
    db = tmp_path / "db"
    proc = mdstream_run(db, sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)")
    assert proc.returncode == 139
    assert b"Fatal Python error: Segmentation fault" in proc.stderr  # faulthandler ran
    meta = one_report(db)
    check_metadata(meta, signal.SIGSEGV)
    assert meta["code"] == 1 and meta["address"] == 0
    info = stackwalk(rust_minidump, meta["dump_path"])["crash_info"]
    assert info["type"] == "SIGSEGV / SEGV_MAPERR"
    assert [int(a["address"], 16) for a in info["memory_accesses"]] == [0]


def test_exit_codes_pass_through_and_no_report(crashers: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    assert mdstream_run(db, str(crashers), "exit", "0").returncode == 0
    assert mdstream_run(db, str(crashers), "exit", "3").returncode == 3
    assert mdstream_run(db, str(crashers), "raise", str(int(signal.SIGTERM))).returncode == 128 + signal.SIGTERM
    handled = mdstream_run(db, str(crashers), "handled")
    assert handled.returncode == 0 and handled.stdout == b"recovered\n"
    assert load_reports(db) == []


def test_command_not_found_or_not_executable(tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc = mdstream_run(db, "mdstream-no-such-command-7f3a")
    assert proc.returncode == 127
    assert proc.stderr.decode().count("\n") == 1 and "not found" in proc.stderr.decode()
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    proc = mdstream_run(db, str(script))
    assert proc.returncode == 126 and "ermission denied" in proc.stderr.decode()
    proc = subprocess.run([sys.executable, *CLI, "run", "-d", str(db)], capture_output=True, env=clean_env())
    assert proc.returncode == 2 and b"no command" in proc.stderr


# ---- extended tier: the other crashes, threads, forks, exec, signals ----------------


@pytest.mark.extended
def test_abort(crashers: Path, tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    assert mdstream_run(db, str(crashers), "abort").returncode == 128 + signal.SIGABRT
    meta = one_report(db)
    check_metadata(meta, signal.SIGABRT)
    assert meta["code"] == -6  # SI_TKILL: abort() raised it
    report = stackwalk(rust_minidump, meta["dump_path"], (crashers,), tmp_path)
    assert report["crash_info"]["type"] == "SIGABRT / SI_TKILL"
    thread = crashing_thread(report)
    assert thread["thread_id"] == meta["crashing_thread"] == meta["pid"]
    # a signal a process sent has no fault address: the instruction pointer is written
    assert int(report["crash_info"]["address"], 16) == meta["address"] == int(thread["frames"][0]["offset"], 16)
    names = functions(thread)
    assert "abort_leaf" in names and names.index("abort_outer") == names.index("abort_leaf") + 1


@pytest.mark.extended
def test_stack_overflow(crashers: Path, tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    assert mdstream_run(db, str(crashers), "overflow").returncode == 128 + signal.SIGSEGV
    meta = one_report(db)
    check_metadata(meta, signal.SIGSEGV)
    report = stackwalk(rust_minidump, meta["dump_path"], (crashers,), tmp_path)
    assert report["crash_info"]["type"].startswith("SIGSEGV / SEGV_")
    assert int(report["crash_info"]["address"], 16) == meta["address"]
    thread = crashing_thread(report)
    assert functions(thread)[:3] == ["overflow_recurse"] * 3
    md = parse_minidump(meta["dump_path"])
    (t,) = [t for t in md.threads.threads if t.ThreadId == meta["crashing_thread"]]
    assert t.Stack.DataSize > 0


@pytest.mark.extended
def test_fault_in_a_thread_while_others_run(crashers: Path, tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    assert mdstream_run(db, str(crashers), "thread-segv").returncode == 128 + signal.SIGSEGV
    meta = one_report(db)
    check_metadata(meta, signal.SIGSEGV)
    assert meta["address"] == 0x18 and meta["crashing_thread"] != meta["pid"]
    report = stackwalk(rust_minidump, meta["dump_path"], (crashers,), tmp_path)
    assert report["crash_info"]["type"] == "SIGSEGV / SEGV_MAPERR"
    assert int(report["crash_info"]["address"], 16) == 0x18
    assert report["thread_count"] == 5  # main, three spinners, the crasher
    thread = crashing_thread(report)
    assert thread["thread_id"] == meta["crashing_thread"]
    assert thread.get("thread_name") == "crasher"
    assert functions(thread)[:2] == ["thread_crash_leaf", "crasher"]


@pytest.mark.extended
def test_python_os_abort_from_a_thread(tmp_path: Path, rust_minidump) -> None:
    db = tmp_path / "db"
    code = ("import os, threading\n"
            "t = threading.Thread(target=os.abort, name='aborter'); t.start(); t.join()\n")
    assert mdstream_run(db, sys.executable, "-c", code).returncode == 128 + signal.SIGABRT
    meta = one_report(db)
    check_metadata(meta, signal.SIGABRT)
    assert meta["crashing_thread"] != meta["pid"]
    report = stackwalk(rust_minidump, meta["dump_path"])
    assert report["crash_info"]["type"] == "SIGABRT / SI_TKILL"
    assert crashing_thread(report)["thread_id"] == meta["crashing_thread"]


@pytest.mark.extended
def test_follow_forks_and_exec(crashers: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    # the forked child dies of SIGSEGV; the parent exits 100 + 11
    assert mdstream_run(plain, str(crashers), "fork-segv").returncode == 111
    assert load_reports(plain) == []  # not followed
    followed = tmp_path / "followed"
    proc = mdstream_run(followed, str(crashers), "fork-segv", options=("--follow-forks", "--json"))
    assert proc.returncode == 111
    meta = one_report(followed)
    summary = json.loads(proc.stdout.decode().splitlines()[-1])
    assert summary["reports"][0]["pid"] == meta["pid"] == meta["crashing_thread"]
    assert meta["address"] == 0x10
    execd = tmp_path / "exec"
    assert mdstream_run(execd, str(crashers), "exec-segv").returncode == 139
    assert one_report(execd)["address"] == 0x10


def start_waiting(crashers: Path, db: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, *CLI, "run", "-d", str(db), "--", str(crashers), "wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().split()
    assert line and line[0] == "WAITING", line
    return proc, int(line[1])


@pytest.mark.extended
def test_signals_are_forwarded_and_ctrl_c_reaches_the_child(crashers: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc, child = start_waiting(crashers, db)
    os.kill(proc.pid, signal.SIGUSR1)  # forwarded: the child exits 42
    assert proc.wait(30) == 42
    proc, child = start_waiting(crashers, db)
    os.kill(proc.pid, signal.SIGTERM)  # forwarded: the child dies of it
    assert proc.wait(30) == 128 + signal.SIGTERM
    proc, child = start_waiting(crashers, db)
    os.kill(proc.pid, signal.SIGINT)  # the supervisor alone ignores it
    time.sleep(0.3)
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
    assert proc.wait(30) == 128 + signal.SIGINT
    assert load_reports(db) == []


def task_state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


@pytest.mark.extended
def test_job_control_stop_and_continue(crashers: Path, tmp_path: Path) -> None:
    """Ctrl-Z (SIGTSTP to the foreground group) stops mdstream and the program;
    fg (SIGCONT to the group) continues both; a SIGSTOP sent to the program
    alone stops it until SIGCONT."""
    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, *CLI, "run", "-d", str(db), "--", str(crashers), "wait"],
                            stdout=subprocess.PIPE, env=clean_env(), process_group=0)
    assert proc.stdout is not None
    child = int(proc.stdout.readline().split()[1])

    def wait_for(pid: int, states: str) -> None:
        deadline = time.monotonic() + 10
        while task_state(pid) not in states:
            assert time.monotonic() < deadline, (pid, task_state(pid))
            time.sleep(0.01)

    try:
        os.killpg(proc.pid, signal.SIGTSTP)
        wait_for(proc.pid, "T")
        wait_for(child, "Tt")
        os.killpg(proc.pid, signal.SIGCONT)
        wait_for(proc.pid, "SR")
        wait_for(child, "SR")
        os.kill(child, signal.SIGSTOP)
        wait_for(child, "Tt")
        os.kill(child, signal.SIGCONT)
        wait_for(child, "SR")
        os.kill(child, signal.SIGUSR1)
        assert proc.wait(30) == 42
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.extended
def test_a_crash_whose_report_cannot_be_written_still_dies(crashers: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    proc = mdstream_run(blocked / "db", str(crashers), "segv")
    # the database cannot be opened: a one-line error, the program does not run
    assert proc.returncode == 125 and proc.stderr.decode().count("\n") == 1
    assert "cannot open" in proc.stderr.decode()
    # the database goes away while the program runs: the crash is reported as
    # not written, and the program dies of its signal as it would have
    db = tmp_path / "db"
    proc, child = start_waiting(crashers, db)
    os.rename(db, tmp_path / "moved")
    db.write_text("in the way")
    os.kill(child, signal.SIGSEGV)  # sent by a process: SI_USER
    assert proc.wait(30) == 128 + signal.SIGSEGV
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert f"process {child} crashed, but its report could not be written" in err


@pytest.mark.extended
def test_upload_url_sends_each_report(crashers: Path, tmp_path: Path) -> None:
    import http.server
    import threading

    received: list[bytes] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            body = b"CrashID=bp-6fa8a7b0-0000-4000-8000-000000000015\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        db = tmp_path / "db"
        url = f"http://127.0.0.1:{server.server_address[1]}/submit"
        bad = mdstream_run(db, str(crashers), "segv", options=("--upload-url", "ftp://nowhere"))
        assert bad.returncode == 2 and load_reports(db) == []  # refused before the program runs
        assert mdstream_run(db, str(crashers), "segv", options=("--upload-url", url)).returncode == 139
        deadline = time.monotonic() + 60
        while not (load_reports(db) and load_reports(db)[0]["state"] == "uploaded"):
            assert time.monotonic() < deadline, load_reports(db)
            time.sleep(0.1)
        meta = load_reports(db)[0]
        assert meta["upload"]["server_crash_id"] == "bp-6fa8a7b0-0000-4000-8000-000000000015"
        assert len(received) == 1 and b"upload_file_minidump" in received[0] and b"MDMP" in received[0]
    finally:
        server.shutdown()
