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

__all__ = ["add_parsers", "cmd_run", "cmd_watch"]

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


def _upload_options(p: argparse.ArgumentParser) -> None:
    from mdstream.reports import PROTOCOLS

    p.add_argument("--upload-url", metavar="URL",
                   help="send each report to this collector as soon as it is written (in a background process; "
                        "a report that could not be sent stays pending for 'mdstream upload')")
    p.add_argument("--upload-protocol", choices=PROTOCOLS, default=None,
                   help="the collector's protocol (default: breakpad)")


def _check_upload(args: argparse.Namespace) -> str | None:
    """The upload options' problem, if any (checked before anything runs)."""
    if not getattr(args, "upload_url", None):
        return None
    from mdstream import reports

    try:
        reports.Uploader(url=args.upload_url, protocol=args.upload_protocol).close()
    except reports.UploadError as exc:
        return str(exc)
    return None


def after_report(args: argparse.Namespace, report: Any) -> None:
    """Called once a report is published: says so (``run``) and uploads it with ``--upload-url``."""
    if args.command == "run" and not args.json:
        print(_describe(report), file=sys.stderr, flush=True)
    if getattr(args, "upload_url", None):
        from mdstream import reports

        try:  # its own process: it outlives this one, and the URL stays off its command line
            reports.upload_in_background(report, process=True, url=args.upload_url, protocol=args.upload_protocol)
        except Exception as exc:
            print(f"{PROG}: report {getattr(report, 'id', '?')} stays pending: cannot start its upload: {exc}",
                  file=sys.stderr, flush=True)


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

    problem = _check_upload(args)
    if problem:
        print(f"{PROG}: error: run: {problem}", file=sys.stderr)
        return 2
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


def _listener(args: argparse.Namespace) -> Any:
    import socket

    from mdstream.crash import _protocol as proto
    from mdstream.crash.watcher import listen

    if args.listen_fd is not None:
        return socket.socket(fileno=args.listen_fd)
    if args.socket is not None:
        return listen(proto.socket_address(args.socket))
    # systemd socket activation: LISTEN_PID is us, the socket is fd 3
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0") or 0) >= 1:
        return socket.socket(fileno=3)
    raise ValueError("give --socket PATH (or @NAME), --listen-fd N, or start it by socket activation")


def cmd_watch(args: argparse.Namespace) -> int:
    import signal

    from mdstream.crash import DumpOptions
    from mdstream.crash._report import open_database
    from mdstream.crash.watcher import Watcher

    problem = _check_upload(args)
    if problem:
        print(f"{PROG}: error: watch: {problem}", file=sys.stderr)
        return 2
    try:
        database = open_database(args.database)
    except Exception as exc:
        where = args.database if args.database is not None else "the default crash database"
        print(f"{PROG}: error: cannot open {where}: {_describe_error(exc)}", file=sys.stderr)
        return 1
    try:
        listener = _listener(args)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: watch: {_describe_error(exc)}", file=sys.stderr)
        return 1 if not isinstance(exc, ValueError) else 2
    options = DumpOptions(full=args.full, include_environ=args.include_environ, include_cmdline=not args.no_cmdline,
                          sanitize_stacks=args.sanitize_stacks, annotations=dict(args.annotate))
    path = listener.getsockname() if args.socket is not None and not args.socket.startswith("@") else None
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    watcher = Watcher(database, listener, options=options, allowed_uids=args.allow_uid or None,
                      exit_when_idle=args.exit_when_idle, log=log, json_lines=args.json,
                      on_report=lambda report: after_report(args, report))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: watcher.stop())
    if not args.quiet and not args.json:
        print(f"{PROG} watch: serving crash reports (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        watcher.serve()
    finally:
        listener.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
    return 0


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
    _upload_options(p)
    p.add_argument("--follow-forks", action="store_true",
                   help="also supervise the processes CMD forks (and wait for them)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line when CMD has ended: its exit status and the reports written")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "watch", help="write crash reports for processes that called mdstream.crash.install()",
        description="Serve the processes that connect to the watcher's Unix socket (mdstream.crash.install() "
                    "starts one by itself; this runs one under a service manager): when one of them crashes, its "
                    "signal handler hands the crash context and the Python tracebacks over, and the watcher "
                    "snapshots it with ptrace and writes the report into the crash database.  Only processes of "
                    "the watcher's own user are served (--allow-uid adds others).  SIGTERM, SIGINT and SIGHUP end "
                    "it after the reports in progress.",
        epilog="exit status: 0 stopped by a signal or idle; 1 cannot open the database or the socket; 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--database", metavar="DIR", default=None,
                   help="the crash database (default: the user's data directory)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH",
                       help="listen on this Unix socket path (created 0600; a stale socket of ours is replaced), "
                            "or @NAME for an abstract socket")
    where.add_argument("--listen-fd", type=int, metavar="N", help="serve an inherited listening socket")
    _privacy_options(p)
    p.add_argument("--allow-uid", type=int, action="append", default=[], metavar="UID",
                   help="also serve processes of this user (repeatable; default: only the watcher's own)")
    _upload_options(p)
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                   help="exit after S seconds without any connected process")
    p.add_argument("--json", action="store_true", help="one JSON line per report on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    p.set_defaults(func=cmd_watch)
