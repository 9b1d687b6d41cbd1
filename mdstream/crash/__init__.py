"""Catch the crash (Linux): write a minidump and a report when a fatal signal
kills a process.

Two ways, both writing into a crash database (:mod:`mdstream.reports`):

- :func:`run` (``mdstream run -- CMD``): run a program under a ptrace
  supervisor; no change to the program.
- :func:`install` (in-process): signal handlers that hand the crash to an
  out-of-process watcher (``mdstream watch``), with the Python tracebacks of
  every thread.

See docs/crash-reporting.md.
"""

from __future__ import annotations

from mdstream.crash._report import ANNOTATIONS_STREAM, PYTHON_TRACEBACKS_STREAM, DumpOptions
from mdstream.crash._signals import FATAL_SIGNALS, code_name, crash_reason, signal_name
from mdstream.crash._tracebacks import parse_tracebacks
from mdstream.crash._install import CrashHandler, CrashHandlerError, WatcherUnavailableError, install, installed
from mdstream.crash.supervisor import RunResult, run

__all__ = [
    "ANNOTATIONS_STREAM",
    "CrashHandler",
    "CrashHandlerError",
    "DumpOptions",
    "FATAL_SIGNALS",
    "PYTHON_TRACEBACKS_STREAM",
    "RunResult",
    "WatcherUnavailableError",
    "code_name",
    "crash_reason",
    "install",
    "installed",
    "parse_tracebacks",
    "run",
    "signal_name",
]
