"""``mdstream run`` and ``mdstream watch``: catch crashes into the crash database.

Registered from :mod:`mdstream.cli` by :func:`add_parsers`.  Exit status of
``run``: the program's (128+N if signal N killed it); 125 when mdstream could
not supervise it, 126 when the command is not executable, 127 when it is not
found (the conventions of ``env``, ``timeout`` and ``nice``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["add_parsers", "cmd_run"]

PROG = "mdstream"
EXIT_CANNOT_SUPERVISE = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


def _annotation(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"invalid annotation {text!r} (use KEY=VALUE)")
    return key.strip(), value


def _privacy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true",
                   help="every readable private mapping (the whole heap: large, and holds every secret in memory)")
    p.add_argument("--include-environ", action="store_true",
                   help="keep the environment (left out by default: it often holds secrets)")
    p.add_argument("--no-cmdline", action="store_true", help="leave the command line out")
    p.add_argument("--sanitize-stacks", action="store_true",
                   help="blank stack words that do not look like pointers (Breakpad's rule)")
    p.add_argument("--annotate", action="append", type=_annotation, default=[], metavar="KEY=VALUE",
                   help="add an annotation to every report (repeatable)")


def _report_summary(report: Any) -> dict[str, Any]:
    """The fields of a published report the CLI prints (whatever the report object offers)."""
    meta = dict(getattr(report, "metadata", None) or {})
    out: dict[str, Any] = {"id": getattr(report, "id", meta.get("id"))}
    for key in ("pid", "executable", "signal", "signal_name", "code", "address", "crashing_thread", "dump_bytes",
                "sha256"):
        if key in meta:
            out[key] = meta[key]
    dump_path = getattr(report, "dump_path", None)
    if dump_path is not None:
        out["dump_path"] = os.fspath(dump_path)
    return out


def _describe(report: Any) -> str:
    from mdstream.crash import crash_reason

    s = _report_summary(report)
    reason = crash_reason(s.get("signal", 0) or 0, s.get("code", 0) or 0) if s.get("signal") else "crash"
    where = f" at 0x{int(s['address']):x}" if s.get("address") is not None else ""
    return (f"{PROG}: process {s.get('pid')} ({os.path.basename(str(s.get('executable') or '?'))}) crashed: "
            f"{reason}{where} in thread {s.get('crashing_thread')}; report {s.get('id')}"
            + (f" ({s['dump_path']})" if s.get("dump_path") else ""))


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("["):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


def after_report(args: argparse.Namespace, report: Any) -> None:
    """Called once a report is published: the hook where uploading (``--upload-url``,
    mdstream.reports) plugs in."""
    if not args.json:
        print(_describe(report), file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from mdstream import linux
    from mdstream.crash import run

    command = list(args.program)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(f"{PROG}: error: run: no command given (mdstream run [options] -- CMD [ARGS...])", file=sys.stderr)
        return 2
    failures: list[str] = []

    def failed(pid: int, exc: BaseException) -> None:
        line = f"process {pid} crashed, but its report could not be written: {exc}"
        failures.append(line)
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    from mdstream.crash._report import open_database

    try:
        database = open_database(args.database)
    except Exception as exc:
        where = args.database if args.database is not None else "the default crash database"
        print(f"{PROG}: error: cannot open {where}: {_describe_error(exc)}", file=sys.stderr)
        return EXIT_CANNOT_SUPERVISE
    try:
        result = run(command, database, full=args.full, annotations=dict(args.annotate),
                     follow_forks=args.follow_forks, include_environ=args.include_environ,
                     include_cmdline=not args.no_cmdline, sanitize_stacks=args.sanitize_stacks,
                     on_report=lambda report: after_report(args, report), on_failure=failed)
    except FileNotFoundError as exc:
        print(f"{PROG}: error: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError as exc:
        if isinstance(exc, linux.LinuxDumpError):
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_CANNOT_SUPERVISE
        print(f"{PROG}: error: cannot run {command[0]}: permission denied", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE
    except OSError as exc:
        if isinstance(exc, linux.LinuxDumpError):
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_CANNOT_SUPERVISE
        print(f"{PROG}: error: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE
    except Exception as exc:
        from mdstream import errors

        if isinstance(exc, (errors.MdstreamError, ValueError)):
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_CANNOT_SUPERVISE
        raise
    if args.json:
        payload = {"exit_status": result.exit_status, "reports": [_report_summary(r) for r in result.reports],
                   "failures": result.failures}
        print(json.dumps(payload, sort_keys=True), flush=True)
    return result.exit_status


def add_parsers(sub: Any, epilog: str = "") -> None:
    """Register ``run`` (and ``watch``) on the ``mdstream`` command's sub-parsers."""
    p = sub.add_parser(
        "run", help="run a program and write a crash report if a fatal signal kills it",
        description="Run CMD under a ptrace supervisor (no change to the program, no syscall tracing).  When a "
                    "fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS) kills one of its "
                    "processes, write a minidump of it at the crash (the faulting thread's registers at the "
                    "faulting instruction) and its metadata into the crash database.  A signal the program "
                    "handles and survives, and a clean exit, write nothing.  Signals, stdin/stdout/stderr and "
                    "the terminal pass through; Ctrl-C reaches the program, not mdstream.",
        epilog="exit status: the program's (128+N if signal N killed it); 125 mdstream could not supervise it, "
               "126 CMD is not executable, 127 CMD not found, 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--database", metavar="DIR", default=None,
                   help="the crash database (default: the user's data directory)")
    _privacy_options(p)
    p.add_argument("--follow-forks", action="store_true",
                   help="also supervise the processes CMD forks (and wait for them)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line when CMD has ended: its exit status and the reports written")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_run)
