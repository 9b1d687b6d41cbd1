"""One crash report: snapshot the crashed process with the Linux writer, emit
the minidump through the callback -> ring -> FileSink into the crash
database's pending report, and publish it with its metadata.  Shared by the
``mdstream run`` supervisor and the ``mdstream watch`` watcher."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

from mdstream import linux, reports
from mdstream.crash._signals import fault_address, signal_name

__all__ = ["DumpOptions", "PYTHON_TRACEBACKS_STREAM", "ANNOTATIONS_STREAM", "open_database", "write_report",
           "context_from_regs"]

#: User stream (``"Md"`` + 1): the Python tracebacks of every thread, UTF-8
#: text exactly as ``faulthandler`` prints them (docs/crash-reporting.md).
PYTHON_TRACEBACKS_STREAM = 0x4D640001
#: User stream (``"Md"`` + 2): the report's annotations, a UTF-8 JSON object.
ANNOTATIONS_STREAM = 0x4D640002

_RIP_WORD = 16  # struct user_regs_struct


@dataclass(frozen=True)
class DumpOptions:
    """What a crash dump holds (the Linux writer's privacy options; see docs/linux.md)."""

    full: bool = False
    include_environ: bool = False
    include_cmdline: bool = True
    sanitize_stacks: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)

    def writer_kwargs(self) -> dict[str, Any]:
        return {"full": self.full, "include_environ": self.include_environ,
                "include_cmdline": self.include_cmdline, "sanitize_stacks": self.sanitize_stacks}


def open_database(database: Any = None) -> reports.Database:
    """A :class:`mdstream.reports.Database` (``database`` is one already, a directory, or None: the default)."""
    if isinstance(database, reports.Database):
        return database
    return reports.Database(database)


def context_from_regs(signo: int, code: int, si_addr: int, tid: int, regs: bytes | None,
                      fpregs: bytes | None) -> linux.CrashContext:
    """A crash context from registers ptrace read at a signal-delivery-stop."""
    if regs is None:
        return linux.CrashContext(signo, code, fault_address(signo, code, si_addr, 0), tid)
    rip = struct.unpack_from("<Q", regs, _RIP_WORD * 8)[0]
    return linux.CrashContext(signo, code, fault_address(signo, code, si_addr, rip), tid, regs=regs, fpregs=fpregs)


def _executable(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def write_report(
    db: reports.Database,
    pid: int,
    crash: linux.CrashContext,
    options: DumpOptions,
    *,
    attached: bool = False,
    traceback_text: bytes | None = None,
    crash_time: str | None = None,
) -> reports.Report:
    """Write one report of process ``pid`` crashed with ``crash``; returns the published report.

    ``traceback_text``: the Python tracebacks of every thread as
    ``faulthandler`` prints them; written as the MdstreamPythonTracebacks
    stream, and parsed (with each thread's tid, found through the snapshot)
    into the metadata's ``python_tracebacks``.  The dump is discarded if
    anything fails; the exception propagates.
    """
    from mdstream.crash._tracebacks import parse_tracebacks

    annotations = {str(k): str(v) for k, v in dict(options.annotations).items()}
    metadata: dict[str, Any] = {
        "time": crash_time or reports.format_time(),
        "pid": int(pid),
        "executable": _executable(pid),
        "signal": int(crash.signal),
        "signal_name": signal_name(crash.signal),
        "code": int(crash.code),
        "address": int(crash.address),
        "crashing_thread": int(crash.tid or pid),
        "annotations": annotations,
    }  # the database adds id, dump_bytes, sha256, mdstream_version and state
    pending = db.new_report(**metadata)
    try:
        streams: list[tuple[int, bytes]] = []
        if annotations:
            streams.append((ANNOTATIONS_STREAM, json.dumps(annotations, sort_keys=True).encode()))
        if traceback_text:
            streams.append((PYTHON_TRACEBACKS_STREAM, bytes(traceback_text)))
        seen: list[Any] = []
        linux.write_dump(pid, os.fspath(pending.dump_path), crash=crash, attached=attached, user_streams=streams,
                         on_snapshot=seen.append, **options.writer_kwargs())
        more: dict[str, Any] = {}
        if traceback_text:
            more["python_tracebacks"] = parse_tracebacks(bytes(traceback_text), seen[0].threads if seen else [])
        report = pending.publish(**more)
    except BaseException:
        pending.discard()
        raise
    return report
