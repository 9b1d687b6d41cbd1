"""``mdstream run -- CMD``: run a program under a ptrace supervisor and write a
crash report exactly when a fatal signal kills one of its processes.

The supervisor (C, ``mdstream/linuxdump/supervise.c``) traces the program
without syscall tracing, so it runs at full speed: it only sees clone, exec
and exit events and signal deliveries.  At the signal-delivery-stop of a
fatal-class signal it records the thread's siginfo and registers (the first
such fault of the thread, so a ``faulthandler`` that prints and re-raises does
not hide the original fault) and delivers the signal; when the process then
dies of it, every thread is held at its exit stop with memory and registers
intact, the Linux writer snapshots it (attached: on this thread, which is the
tracer), the dump goes through the callback, the ring and a FileSink into the
crash database, the report is published, and only then is the process let go.
See docs/crash-reporting.md.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mdstream import linux
from mdstream.crash._report import DumpOptions, context_from_regs, open_database, write_report

__all__ = ["RunResult", "run", "resolve_command"]


@dataclass
class RunResult:
    """How a supervised run ended."""

    exit_status: int
    """The child's exit code, or 128+N if signal N killed it (as a shell reports it)."""
    wait_status: int
    reports: list[Any] = field(default_factory=list)
    """Published crash reports, in order."""
    failures: list[str] = field(default_factory=list)
    """Crashes whose report could not be written (one line each)."""
    counts: dict[str, int] = field(default_factory=dict)


def resolve_command(name: str) -> str:
    """The file ``execvp`` would run for ``name``; raises FileNotFoundError or PermissionError."""
    if not name:
        raise FileNotFoundError(errno.ENOENT, "empty command name")
    if "/" in name:
        return name
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in os.get_exec_path():
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            raise PermissionError(errno.EACCES, f"{name}: permission denied", candidate)
    raise FileNotFoundError(errno.ENOENT, f"{name}: command not found", name)


def exit_status_of(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 1


def run(
    command: Sequence[str],
    database: Any = None,
    *,
    full: bool = False,
    annotations: Mapping[str, str] | None = None,
    follow_forks: bool = False,
    include_environ: bool = False,
    include_cmdline: bool = True,
    sanitize_stacks: bool = False,
    exit_stop_timeout: float = 2.0,
    on_report: Callable[[Any], None] | None = None,
    on_failure: Callable[[int, BaseException], None] | None = None,
) -> RunResult:
    """Run ``command`` supervised; write a report into ``database`` for each process a fatal signal kills.

    Returns when the program (and, with ``follow_forks``, every process it
    forked) has ended.  ``on_report(report)`` is called after each report is
    published (the upload hook), ``on_failure(pid, exc)`` when one could not
    be written (the process still dies as it would have).  While it runs,
    SIGINT and SIGQUIT are ignored (the terminal sends them to the program),
    SIGTERM, SIGHUP, SIGUSR1, SIGUSR2 and SIGWINCH are forwarded to the
    program.  Raises FileNotFoundError / PermissionError when the command
    cannot be executed, :class:`~mdstream.linux.PtracePermissionError` when
    it cannot be traced.
    """
    linux._check_platform()
    from mdstream._linux import Supervisor

    argv = [os.fsdecode(a) for a in command]
    if not argv:
        raise ValueError("no command to run")
    path = resolve_command(argv[0])
    db = open_database(database)
    options = DumpOptions(full=full, include_environ=include_environ, include_cmdline=include_cmdline,
                          sanitize_stacks=sanitize_stacks, annotations=dict(annotations or {}))
    # Python ignores these; a program expects them at their defaults (as subprocess does)
    reset = [int(signal.SIGPIPE), int(getattr(signal, "SIGXFSZ", 25))]
    supervisor = Supervisor.start(path, argv, follow_forks=follow_forks, reset_signals=reset,
                                  exit_stop_timeout=exit_stop_timeout)
    result = RunResult(exit_status=1, wait_status=0)
    try:
        while True:
            event = supervisor.next()
            if event["kind"] == "done":
                result.wait_status = int(event["status"])
                result.exit_status = exit_status_of(result.wait_status)
                break
            pid = int(event["pid"])
            try:
                fault = event["fault"]
                if fault is not None:
                    crash = context_from_regs(fault["signal"], fault["code"], fault["address"], fault["tid"],
                                              fault["regs"], fault["fpregs"])
                else:  # no signal-delivery-stop seen for it: the signal, without a context
                    crash = linux.CrashContext(int(event["death_signal"]), 0, 0, pid)
                report = write_report(db, pid, crash, options, attached=True)
            except Exception as exc:  # the process dies anyway; say why there is no report
                result.failures.append(f"process {pid}: {exc}")
                if on_failure is not None:
                    on_failure(pid, exc)
            else:
                result.reports.append(report)
                if on_report is not None:
                    on_report(report)
            finally:
                supervisor.release(pid)
    finally:
        result.counts = dict(supervisor.counts)
        supervisor.close()
    return result

