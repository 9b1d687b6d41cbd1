"""Windows crash capture, the consumer's half.

A watcher on Windows (``examples/native_watcher.c``, or any program using the
``mds_watch_*`` C API) calls ``MiniDumpWriteDump`` on the crashed process
with mdstream's callback; the dump streams through a ring.  This drains that
ring into the crash database as one report, with the metadata Linux reports
have (``pid``, ``code``, ``address``, ``crashing_thread``, ...), read from the
dump's own Exception stream rather than from anything the watcher says.  See
docs/windows.md ("Crash capture").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from mdstream.crash._report import open_database
from mdstream.errors import MdstreamError

__all__ = ["WindowsCrashError", "report_from_ring"]


class WindowsCrashError(MdstreamError):
    """The dump a Windows watcher streamed is not a crash report (no Exception stream)."""


def report_from_ring(
    ring: Any,
    database: Any = None,
    *,
    pid: int | None = None,
    executable: str | None = None,
    annotations: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
    producer_failed: Callable[[], BaseException | None] | None = None,
    crash_time: str | None = None,
) -> Any:
    """Drain ``ring`` (a watcher's dump of a crashed Windows process) into a published report.

    ``pid`` / ``executable``: what the caller knows of the process (the
    watcher's word; optional).  ``timeout`` and ``producer_failed`` are
    :func:`mdstream.drain`'s.  The code, address and crashing thread come
    from the dump's Exception stream; a dump without one raises
    :class:`WindowsCrashError`.  Nothing is published if anything fails (the
    pending report is discarded and the exception propagates).
    """
    from mdstream import FileSink, drain, reports
    from mdstream.minidump import read_summary

    db = open_database(database)
    metadata: dict[str, Any] = {
        "time": crash_time or reports.format_time(),
        "annotations": {str(k): str(v) for k, v in dict(annotations or {}).items()},
        "platform": "windows",
    }
    if pid is not None:
        metadata["pid"] = int(pid)
    if executable is not None:
        metadata["executable"] = str(executable)
    pending = db.new_report(**metadata)
    try:
        drain(ring, [FileSink(pending.dump_path)], timeout=timeout, producer_failed=producer_failed)
        summary = read_summary(pending.dump_path)
        exception = summary.exception
        if exception is None:
            raise WindowsCrashError("the watcher's dump has no Exception stream: not a crash report")
        more: dict[str, Any] = {
            "code": exception.code,
            "address": exception.address,
            "crashing_thread": exception.thread_id,
            "exception_name": exception.code_name,
            "signal": None,
        }
        if summary.system is not None:
            more["cpu"] = summary.system.cpu
        report = pending.publish(**more)
    except BaseException:
        pending.discard()
        raise
    return report
