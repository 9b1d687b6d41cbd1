"""``mdstream reports list|show|prune`` and ``mdstream upload``: the crash database on the command line.

Registered by :func:`add_parsers` from ``mdstream/cli.py``.  Errors are one
line on stderr and a non-zero exit; under ``--json`` they are
``{"status": "error", "error": ..., "exit": N}`` on stdout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import re
import sys
from typing import Any, Callable

__all__ = ["add_parsers"]

PROG = "mdstream"
_EPILOG = "exit status: 0 success, 1 failure (one 'mdstream: error: ...' line on stderr; with --json an error " \
          "object on stdout), 2 usage error."


class _Failure(Exception):
    """A failure reported as one line (``code`` is the exit status)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def _size(text: str) -> int:
    match = _SIZE_RE.match(text)
    if not match or (match.group(3) and not match.group(2) and match.group(3).lower() != "b"):
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use bytes or a suffix: 64K, 20M, 1G)")
    value = int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[
        match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError("the size must be at least 1 byte")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("the count must be at least 1")
    return value


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("retries must be >= 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be a non-negative number, not {text!r}")
    return value


def _field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno \d+\] ", "", text)
    return " ".join(text.split())


def _expected(exc: BaseException) -> bool:
    from mdstream.errors import MdstreamError

    return isinstance(exc, (_Failure, MdstreamError, OSError)) or (
        isinstance(exc, ValueError) and type(exc).__module__.startswith("mdstream"))


def _json_errors(format_name: str) -> Callable[[Callable[[argparse.Namespace], int]],
                                               Callable[[argparse.Namespace], int]]:
    """Under --json, an expected failure becomes an error object on stdout; otherwise it reaches
    ``mdstream``'s main, which prints one line."""

    def decorate(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except KeyboardInterrupt:
                if not args.json:
                    raise
                print(json.dumps({"format": format_name, "status": "error", "error": "interrupted", "exit": 130}))
                return 130
            except Exception as exc:
                if not _expected(exc):
                    raise
                code = exc.code if isinstance(exc, _Failure) else 1
                if not args.json:
                    print(f"{PROG}: error: {_describe(exc)}", file=sys.stderr)
                    return code
                print(json.dumps({"format": format_name, "status": "error", "error": _describe(exc), "exit": code},
                                 sort_keys=True))
                return code

        return run

    return decorate


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _short_time(text: str | None) -> str:
    if not text:
        return "?"
    from mdstream.reports import parse_time

    try:
        return parse_time(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text[:19]


def _warn(problems: Any) -> None:
    for problem in problems:
        print(f"{PROG}: warning: {problem}", file=sys.stderr)


def _database_dir(args: argparse.Namespace) -> str | None:
    positional = getattr(args, "dir", None)
    option = getattr(args, "database", None)
    if positional and option and os.path.abspath(positional) != os.path.abspath(option):
        raise _Failure(f"two databases given: {positional} and -d {option}", 2)
    return positional or option


def _open(args: argparse.Namespace, *, missing_ok: bool = False) -> Any:
    """The database named on the command line (or the default); None if it does not exist and
    ``missing_ok`` and none was named."""
    from mdstream import reports

    directory = _database_dir(args)
    try:
        return reports.Database(directory, create=False)
    except reports.DatabaseNotFoundError:
        if missing_ok and directory is None:
            return None
        raise


# --------------------------------------------------------------------------
# reports list / show / prune
# --------------------------------------------------------------------------


@_json_errors("mdstream-reports-list/1")
def cmd_list(args: argparse.Namespace) -> int:
    from mdstream import reports

    db = _open(args, missing_ok=True)
    if db is None:
        directory = reports.default_directory()
        if args.json:
            print(json.dumps({"format": "mdstream-reports-list/1", "status": "ok", "database": directory,
                              "exists": False, "reports": [], "problems": []}, sort_keys=True))
        else:
            print(f"no reports (no crash database at {directory})")
        return 0
    scan = db.scan(args.state)
    if args.json:
        print(json.dumps({"format": "mdstream-reports-list/1", "status": "ok", "database": db.directory,
                          "exists": True, "reports": [r.to_dict() for r in scan.reports],
                          "problems": [p._asdict() for p in scan.problems]}, sort_keys=True))
        return 0
    _warn(scan.problems)
    if scan.reports:
        print(f"{'ID':32}  {'STATE':8}  {'TIME (UTC)':19}  {'SIGNAL':8}  {'PID':>7}  {'SIZE':>9}  EXECUTABLE")
    for r in scan.reports:
        md = r.metadata
        signal = md.get("signal_name") or (str(md["signal"]) if md.get("signal") is not None else "-")
        pid = str(md["pid"]) if md.get("pid") is not None else "-"
        flag = " (!)" if r.problems else ""
        print(f"{r.id}  {r.state:8}  {_short_time(r.time):19}  {signal:8}  {pid:>7}  "
              f"{_human_bytes(r.dump_bytes):>9}  {md.get('executable') or '-'}{flag}")
    counts = {state: sum(1 for r in scan.reports if r.state == state) for state in reports.STATES}
    total = sum(r.size_on_disk for r in scan.reports)
    what = f"{args.state} " if args.state else ""
    print(f"{len(scan.reports)} {what}report{'s' if len(scan.reports) != 1 else ''} in {db.directory} "
          f"({', '.join(f'{n} {s}' for s, n in counts.items())}; {_human_bytes(total)})")
    if any(r.problems for r in scan.reports):
        print("(!) the report has problems: see 'mdstream reports show ID'")
    return 0


def _resolve(db: Any, given: str) -> Any:
    return db.get(db.resolve(given))


@_json_errors("mdstream-reports-show/1")
def cmd_show(args: argparse.Namespace) -> int:
    db = _open(args)
    report = _resolve(db, args.id)
    if args.json:
        print(json.dumps({"format": "mdstream-reports-show/1", "status": "ok", "database": db.directory,
                          "report": report.to_dict()}, sort_keys=True))
        return 0
    md = report.metadata

    def line(label: str, value: Any) -> None:
        print(f"  {label:17} {'-' if value is None else value}")

    print(f"report {report.id}")
    line("state", report.state)
    line("time", md.get("time"))
    line("pid", md.get("pid"))
    line("executable", md.get("executable"))
    signal = md.get("signal")
    line("signal", f"{md.get('signal_name') or '?'} ({signal})" if signal is not None else None)
    line("code", md.get("code"))
    address = md.get("address")
    line("address", f"0x{address:x}" if isinstance(address, int) else address)
    line("crashing thread", md.get("crashing_thread"))
    line("dump", f"{report.dump_path} ({md.get('dump_bytes'):,} bytes)" if isinstance(md.get("dump_bytes"), int)
         else report.dump_path)
    line("sha256", md.get("sha256"))
    line("mdstream version", md.get("mdstream_version"))
    annotations = report.annotations
    print(f"  annotations       {len(annotations) or 'none'}")
    for key, value in sorted(annotations.items()):
        print(f"    {key} = {value}")
    upload = report.upload
    print("  upload")
    for key, value in upload.items():
        if value not in (None, 0) or key == "attempts":
            print(f"    {key:15} {value}")
    standard = {"id", "format", "time", "state", "pid", "executable", "signal", "signal_name", "code", "address",
                "crashing_thread", "annotations", "python_tracebacks", "dump_bytes", "sha256", "mdstream_version",
                "upload"}
    for key in sorted(k for k in md if k not in standard):
        line(key, json.dumps(md[key]))
    tracebacks = md.get("python_tracebacks")
    if tracebacks:
        print("  python tracebacks")
        text = tracebacks if isinstance(tracebacks, str) else json.dumps(tracebacks, indent=2)
        for row in text.splitlines():
            print(f"    {row}")
    for problem in report.problems:
        print(f"  problem           {problem}")
    return 0


@_json_errors("mdstream-reports-prune/1")
def cmd_prune(args: argparse.Namespace) -> int:
    db = _open(args)
    result = db.prune(max_reports=args.max_reports, max_bytes=args.max_bytes)
    if args.json:
        print(json.dumps({"format": "mdstream-reports-prune/1", "status": "ok", "database": db.directory,
                          "removed": list(result.reports), "abandoned": list(result.abandoned),
                          "busy": list(result.busy), "removed_bytes": result.removed_bytes,
                          "problems": [p._asdict() for p in result.problems]}, sort_keys=True))
        return 0
    _warn(result.problems)
    print(f"removed {len(result.reports)} report{'s' if len(result.reports) != 1 else ''} "
          f"({_human_bytes(result.removed_bytes)}) and {len(result.abandoned)} abandoned staging "
          f"area{'s' if len(result.abandoned) != 1 else ''} in {db.directory}")
    for report_id in result.reports:
        print(f"  removed {report_id}")
    for report_id in result.abandoned:
        print(f"  removed the staging area of {report_id} (its writer died)")
    if result.busy:
        print(f"  skipped {len(result.busy)} locked report{'s' if len(result.busy) != 1 else ''} "
              f"(being uploaded or updated): {', '.join(result.busy)}")
    return 0


# --------------------------------------------------------------------------
# upload
# --------------------------------------------------------------------------


def _uploader_options(args: argparse.Namespace) -> dict[str, Any]:
    annotations: Any = "all" if args.all_annotations else (args.annotation or None)
    return dict(url=args.url, protocol=args.protocol, dsn=args.dsn, annotations=annotations, product=args.product,
                version=args.product_version, guid=args.guid, fields=dict(args.field or []),
                environment=args.env or (), python_tracebacks=args.python_tracebacks, compression=args.compress,
                max_upload_bytes=args.max_upload_size, max_dump_bytes=args.max_dump_size, timeout=args.timeout,
                connect_timeout=args.connect_timeout, retries=args.retries, backoff_factor=args.backoff,
                max_retry_after=args.max_retry_after, force=args.force, retry_rejected=args.retry_rejected,
                ca_certs=args.ca_certs, proxy=args.proxy,
                progress=False if (args.json or args.quiet) else None)


def _print_request(result: Any) -> None:
    request = result.request
    print(f"would upload {result.id} ({result.state}) with {request['protocol']}:")
    print(f"  POST {request['url']}")
    for name, value in request["headers"].items():
        print(f"  {name}: {value if value != '' else '(empty)'}")
    for field in request["fields"]:
        print(f"  field {field['name']} = {field['value']}")
    info = request["file"]
    compression = f", {info['compression']}-compressed" if info["compression"] else ""
    print(f"  file {info['field']}: {info['filename']} ({info['content_type']}, {info['bytes']:,} bytes{compression}; "
          f"dump {info['dump_bytes']:,} bytes, sha256 {info['sha256']})")
    encoding = f", {request['content_encoding']}-encoded" if request["content_encoding"] else ""
    print(f"  body {request['body_bytes']:,} bytes{encoding}")


def _result_line(result: Any) -> str:
    if result.outcome == "uploaded":
        return f"uploaded {result.id}: crash id {result.server_crash_id or '(none given)'}" + (
            f" after {result.attempts} attempts" if result.attempts > 1 else "")
    if result.outcome == "failed":
        return f"failed   {result.id}: {result.error} (still pending" + (
            f"; {result.attempts} attempts)" if result.attempts else ")")
    if result.outcome == "deferred":
        return f"deferred {result.id}: {result.error}"
    return f"{result.outcome:8} {result.id}: {result.error or ''}".rstrip(": ")


@_json_errors("mdstream-upload/1")
def cmd_upload(args: argparse.Namespace) -> int:
    from mdstream import reports

    options = _uploader_options(args)
    with reports.Uploader(**options) as uploader:
        db = _open(args)
        started = _dt.datetime.now(_dt.timezone.utc)
        results = uploader.upload(db, ids=args.id, dry_run=args.dry_run)
    failed = [r for r in results if not r.ok]
    counts = {outcome: sum(1 for r in results if r.outcome == outcome) for outcome in reports.OUTCOMES}
    if args.json:
        print(json.dumps({"format": "mdstream-upload/1", "status": "failed" if failed else "ok",
                          "database": db.directory, "url": uploader.display_url, "protocol": uploader.protocol,
                          "dry_run": args.dry_run, "started": reports.format_time(started),
                          "results": [r.to_dict() for r in results], "counts": counts,
                          "exit": 1 if failed else 0}, sort_keys=True))
        return 1 if failed else 0
    if not args.quiet:
        for result in results:
            if result.outcome == "dry_run":
                _print_request(result)
            else:
                print(_result_line(result))
        summary = ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in counts.items() if n)
        print(f"{len(results)} report{'s' if len(results) != 1 else ''} to {uploader.display_url} "
              f"({uploader.protocol}): {summary or 'nothing pending'}")
    return 1 if failed else 0


# --------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Add ``reports`` (list, show, prune) and ``upload`` to ``mdstream``'s subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    def database_opts(p: argparse.ArgumentParser, positional: bool = True) -> None:
        if positional:
            p.add_argument("dir", metavar="DIR", nargs="?",
                           help="the crash database (default: ~/.local/share/mdstream/crashes, per platformdirs)")
        p.add_argument("-d", "--database", metavar="DIR", help="the crash database (same as DIR)")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")

    p = subparsers.add_parser(
        "reports", help="list, show and prune the crash reports in a crash database",
        description="A crash database holds one report per crash: the minidump and its JSON metadata "
                    "(docs/crash-reporting.md, 'The crash database').", epilog=_EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="reports_command", metavar="ACTION", required=True)

    sp = sub.add_parser("list", help="the reports, newest first",
                        description="List the published reports (newest first); unreadable ones are warned about "
                                    "on stderr (or listed under 'problems' with --json).",
                        epilog=_EPILOG, formatter_class=fmt)
    database_opts(sp)
    sp.add_argument("--state", choices=("pending", "uploaded", "rejected"), help="only reports in this state")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("show", help="one report's metadata",
                        description="Show report ID (the full id or a unique prefix of at least 4 hex digits): its "
                                    "metadata, annotations, upload state and Python tracebacks.",
                        epilog=_EPILOG, formatter_class=fmt)
    sp.add_argument("id", metavar="ID")
    database_opts(sp, positional=False)
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("prune", help="remove leftovers, and the oldest reports beyond the limits",
                        description="Remove what crashed writers left (staging areas, half-removed reports), and "
                                    "with --max-reports/--max-bytes the oldest reports beyond them: uploaded and "
                                    "rejected ones first, then pending ones.  A report being written or uploaded "
                                    "is never removed.", epilog=_EPILOG, formatter_class=fmt)
    database_opts(sp)
    sp.add_argument("--max-reports", type=_count, metavar="N", help="keep at most N reports")
    sp.add_argument("--max-bytes", type=_size, metavar="SIZE", help="keep at most SIZE bytes (suffixes K, M, G)")
    sp.set_defaults(func=cmd_prune)

    p = subparsers.add_parser(
        "upload", help="send pending crash reports to a collector (Breakpad/Socorro, Crashpad, Sentry)",
        description="Upload the pending reports of the crash database DIR to URL.  A report becomes 'uploaded' "
                    "(the collector's crash id stored) once the collector acknowledges it, 'rejected' on a 4xx "
                    "answer other than 408/429, and otherwise stays pending with the error, to be retried.  "
                    "Only the annotations named by --annotation are sent (or all with --all-annotations), and "
                    "nothing from the environment unless named by --env.  --dry-run prints what would be sent.",
        epilog=_EPILOG + "  A report that was not uploaded (failed, rejected, missing) makes the exit status 1.",
        formatter_class=fmt)
    database_opts(p)
    p.add_argument("--url", metavar="URL", help="the collector's submit URL (Sentry: the minidump endpoint URL, "
                                                "or give --dsn)")
    p.add_argument("--protocol", choices=("breakpad", "crashpad", "sentry"), default=None,
                   help="the collector's protocol (default: breakpad; sentry with --dsn)")
    p.add_argument("--dsn", metavar="DSN", help="Sentry DSN (https://<key>@<host>/<project>)")
    p.add_argument("--id", action="append", metavar="ID", help="only this report (repeatable; a unique prefix)")
    p.add_argument("--annotation", action="append", metavar="KEY",
                   help="send this report annotation (repeatable; the allow-list)")
    p.add_argument("--all-annotations", action="store_true", help="send every report annotation")
    p.add_argument("--field", action="append", type=_field, metavar="NAME=VALUE",
                   help="send an extra field (repeatable)")
    p.add_argument("--env", action="append", metavar="NAME",
                   help="send this environment variable of the uploader as a field (repeatable)")
    p.add_argument("--python-tracebacks", action="store_true",
                   help="also send the report's Python tracebacks as a field")
    p.add_argument("--product", metavar="NAME",
                   help="ProductName (default: the ProductName annotation, else the executable's name)")
    p.add_argument("--product-version", metavar="VERSION",
                   help="Version (default: the Version annotation, else 'unknown')")
    p.add_argument("--guid", metavar="GUID", help="the client id sent as 'guid' (default: the database's client id)")
    p.add_argument("--compress", choices=("auto", "none", "gzip", "zstd"), default="auto",
                   help="auto: Crashpad gzips the body, the others compress only to fit the size limit; gzip "
                        "forces it; zstd (Sentry, needs zstandard) compresses the minidump")
    p.add_argument("--max-upload-size", type=_size, metavar="SIZE",
                   help="the collector's request size limit (Sentry default 20M); larger uploads are compressed, "
                        "then refused")
    p.add_argument("--max-dump-size", type=_size, metavar="SIZE",
                   help="the largest uncompressed minidump to send (Sentry default 100M)")
    p.add_argument("--timeout", type=_seconds, default=60.0, metavar="S", help="read timeout per request (60)")
    p.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="S", help="connect timeout (10)")
    p.add_argument("--retries", type=_retries, default=3, metavar="N", help="retries per report in this run (3)")
    p.add_argument("--backoff", type=_seconds, default=0.5, metavar="S",
                   help="exponential backoff factor between retries, with as much random jitter (0.5)")
    p.add_argument("--max-retry-after", type=_seconds, default=60.0, metavar="S",
                   help="wait for a 429/503 Retry-After up to S seconds; a longer one defers the report (60)")
    p.add_argument("--force", action="store_true", help="ignore a deferral the collector asked for earlier")
    p.add_argument("--retry-rejected", action="store_true", help="also send reports the collector rejected")
    p.add_argument("--ca-certs", metavar="FILE", help="CA bundle for an https collector")
    p.add_argument("--proxy", metavar="URL", help="an HTTP(S) proxy")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing, change nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=cmd_upload)
