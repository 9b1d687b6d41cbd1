"""Catch the crash: write a minidump and a report when a fatal signal (Linux)
or an unhandled exception (Windows) kills a process.

Two ways, both writing into a crash database (:mod:`mdstream.reports`):

- :func:`run` (``mdstream run -- CMD``): run a program under a ptrace
  supervisor; no change to the program.
- :func:`install` (in-process): signal handlers that hand the crash to an
  out-of-process watcher (``mdstream watch``), with the Python tracebacks of
  every thread.

On Windows the crashing process's handler is the C core's
(``mds_crash_install``) and the dump is written by a watcher process with
``MiniDumpWriteDump`` (``mds_watch_*``); :func:`report_from_ring` drains such a
watcher's ring into the crash database (docs/windows.md, "Crash capture").

See docs/crash-reporting.md.
"""

from __future__ import annotations

from mdstream.crash._report import ANNOTATIONS_STREAM, PYTHON_TRACEBACKS_STREAM, DumpOptions
from mdstream.crash._signals import FATAL_SIGNALS, code_name, crash_reason, signal_name
from mdstream.crash._tracebacks import parse_tracebacks
from mdstream.crash._install import CrashHandler, CrashHandlerError, WatcherUnavailableError, install, installed
from mdstream.crash.supervisor import RunResult, run
from mdstream.crash._windows import WindowsCrashError, report_from_ring

__all__ = [
    "ANNOTATIONS_STREAM",
    "CrashHandler",
    "CrashHandlerError",
    "DumpOptions",
    "FATAL_SIGNALS",
    "PYTHON_TRACEBACKS_STREAM",
    "RunResult",
    "WatcherUnavailableError",
    "WindowsCrashError",
    "code_name",
    "crash_reason",
    "install",
    "installed",
    "parse_tracebacks",
    "report_from_ring",
    "run",
    "signal_name",
]
