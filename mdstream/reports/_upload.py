"""Uploading reports to crash collectors: Breakpad/Socorro, Crashpad, Sentry.

Built on urllib3 (``encode_multipart_formdata``, ``Retry`` with exponential
backoff, jitter and ``Retry-After``, ``Timeout``).  A report's state changes
only under its lock and only after the collector answered: pending →
uploaded (the server's crash id stored) or rejected (a 4xx other than
408/429, with the reason); any other failure leaves it pending with the last
error.  Nothing is deleted here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mdstream.reports._database import (
    DUMP_NAME,
    REPORTS_DIR,
    Database,
    PendingReport,
    Report,
    format_time,
    parse_time,
)
from mdstream.reports._errors import (
    CorruptReportError,
    DumpMissingError,
    InvalidDumpError,
    MetadataError,
    ReportBusyError,
    ReportNotFoundError,
    ReportsError,
    ReportStateError,
    ReportTooLargeError,
    UploadConfigError,
)

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "PROTOCOLS",
    "COMPRESSIONS",
    "OUTCOMES",
    "PreparedUpload",
    "UploadResult",
    "Uploader",
    "sentry_endpoint",
    "upload",
    "upload_in_background",
    "upload_report",
]

PROTOCOLS = ("breakpad", "crashpad", "sentry")
COMPRESSIONS = ("auto", "none", "gzip", "zstd")
#: uploaded: the collector acknowledged it; rejected: a 4xx (not 408/429), never resent unless asked;
#: failed: it stays pending with the error; deferred: the collector asked to wait (Retry-After) or
#: the report's next attempt is later; busy: another uploader holds it; skipped: not pending any more;
#: missing: no such report; dry_run: nothing sent.
OUTCOMES = ("uploaded", "rejected", "failed", "deferred", "busy", "skipped", "missing", "dry_run")

DUMP_FIELD = "upload_file_minidump"
#: Sentry's defaults (Relay): 20 MB for the compressed upload, 100 MB for the minidump itself
#: (decimal megabytes: the conservative reading).
SENTRY_MAX_UPLOAD_BYTES = 20_000_000
SENTRY_MAX_DUMP_BYTES = 100_000_000
#: Bodies at least this large get a progress bar (on a terminal).
PROGRESS_MIN_BYTES = 1 << 20
#: How much of a collector's answer is read (crash id or error text).
MAX_RESPONSE_BYTES = 64 << 10
_RETRY_STATUSES = frozenset({408, 429} | set(range(500, 600)))


def _mdstream_version() -> str:
    import mdstream

    return str(getattr(mdstream, "__version__", "unknown"))


# --------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------


def sentry_endpoint(dsn: str) -> str:
    """The minidump endpoint of a Sentry DSN: ``https://<key>@<host>/<project>`` →
    ``https://<host>/api/<project>/minidump/?sentry_key=<key>`` (a path before the
    project is kept, as Sentry does)."""
    parts = urllib.parse.urlsplit(dsn.strip())
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        raise UploadConfigError(f"invalid Sentry DSN {redact_url(dsn)!r}: expected https://<key>@<host>/<project>")
    key = urllib.parse.unquote(parts.username or "")
    host = parts.netloc.rsplit("@", 1)[1]
    prefix, _, project = parts.path.rstrip("/").rpartition("/")
    if not key or not host or not project.isdigit():
        raise UploadConfigError(f"invalid Sentry DSN {redact_url(dsn)!r}: expected https://<key>@<host>/<project> "
                                f"with a public key and a numeric project id")
    query = urllib.parse.urlencode({"sentry_key": key})
    return f"{parts.scheme}://{host}{prefix}/api/{project}/minidump/?{query}"


def redact_url(url: str) -> str:
    """``url`` without credentials: no user:password, ``sentry_key=***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(
        f"{k}=***" if k in ("sentry_key", "sentry_secret", "key", "token", "api_key") else
        f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}"
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _check_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise UploadConfigError(f"invalid URL {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadConfigError(f"invalid URL {redact_url(url)!r}: expected http:// or https:// and a host")
    return parts


def _add_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    parts = urllib.parse.urlsplit(url)
    extra = urllib.parse.urlencode(list(params))
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------
# Results and prepared requests
# --------------------------------------------------------------------------


@dataclasses.dataclass
class UploadResult:
    """What happened to one report.  ``ok`` is False for ``failed``, ``rejected`` and ``missing``."""

    id: str
    outcome: str
    state: str | None = None
    server_crash_id: str | None = None
    status: int | None = None
    error: str | None = None
    attempts: int = 0
    body_bytes: int = 0
    retry_after: float | None = None
    waits: list[float] = dataclasses.field(default_factory=list)
    request: dict[str, Any] | None = None
    dump_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome not in ("failed", "rejected", "missing")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out


@dataclasses.dataclass
class PreparedUpload:
    """One request, built and checked, not sent: what ``--dry-run`` shows."""

    report_id: str
    protocol: str
    url: str
    display_url: str
    headers: dict[str, str]
    fields: list[tuple[str, str]]
    file: dict[str, Any]
    body: bytes
    content_encoding: str | None

    def describe(self) -> dict[str, Any]:
        """Everything that would be sent except the dump's bytes (credentials redacted)."""
        headers = {k: ("***" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        return {"method": "POST", "url": self.display_url, "protocol": self.protocol, "headers": headers,
                "fields": [{"name": n, "value": v} for n, v in self.fields], "file": dict(self.file),
                "content_encoding": self.content_encoding, "body_bytes": len(self.body)}


class _RetryLater(Exception):
    """The collector asked for a longer wait (Retry-After) than this run is willing to make."""

    def __init__(self, seconds: float, status: int) -> None:
        super().__init__(f"HTTP {status}: the collector asked to retry after {seconds:g} s")
        self.seconds = seconds
        self.status = status


def _make_retry_class() -> type:
    from urllib3.exceptions import InvalidHeader
    from urllib3.util.retry import Retry

    class UploadRetry(Retry):
        """urllib3's Retry with: only 429/503 honour Retry-After (not 413: too large is final),
        a Retry-After longer than ``max_retry_after`` ends the run (the report is deferred),
        an injectable sleep, and a log of every failed attempt and every wait."""

        RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

        def __init__(self, *args: Any, max_retry_after: float = 60.0, sleeper: Callable[[float], None] = time.sleep,
                     log: list[Any] | None = None, waits: list[float] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.max_retry_after = max_retry_after
            self.sleeper = sleeper
            self.log: list[Any] = [] if log is None else log
            self.waits: list[float] = [] if waits is None else waits

        def new(self, **kw: Any) -> UploadRetry:
            kw.setdefault("max_retry_after", self.max_retry_after)
            kw.setdefault("sleeper", self.sleeper)
            kw.setdefault("log", self.log)
            kw.setdefault("waits", self.waits)
            return super().new(**kw)  # type: ignore[no-any-return]

        def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                      error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> UploadRetry:
            self.log.append(response if response is not None else error)
            return super().increment(method, url, response, error, _pool, _stacktrace)  # type: ignore[no-any-return]

        def sleep_for_retry(self, response: Any) -> bool:
            try:
                retry_after = self.get_retry_after(response)
            except InvalidHeader:
                return False
            if retry_after is None:
                return False
            if retry_after > self.max_retry_after:
                raise _RetryLater(retry_after, int(response.status))
            self.waits.append(retry_after)
            if retry_after > 0:
                self.sleeper(retry_after)
            return True

        def _sleep_backoff(self) -> None:
            backoff = self.get_backoff_time()
            if backoff > 0:
                self.waits.append(backoff)
                self.sleeper(backoff)

    return UploadRetry


_retry_class: type | None = None
_retry_lock = threading.Lock()


def _retry_type() -> type:
    global _retry_class
    with _retry_lock:
        if _retry_class is None:
            _retry_class = _make_retry_class()
        return _retry_class


class _BodyReader(io.BytesIO):
    """The request body as a seekable file (urllib3 rewinds it for a retry), feeding a progress bar."""

    def __init__(self, data: bytes, bar: Any = None) -> None:
        super().__init__(data)
        self.bar = bar

    def read(self, size: int | None = -1) -> bytes:
        block = super().read(size)
        if self.bar is not None and block:
            self.bar.update(len(block))
        return block

    def seek(self, pos: int, whence: int = 0) -> int:
        where = super().seek(pos, whence)
        if self.bar is not None:
            self.bar.reset(total=len(self.getbuffer()))
            self.bar.update(where)
        return where


# --------------------------------------------------------------------------
# The uploader
# --------------------------------------------------------------------------


def _positive(name: str, value: Any, *, allow_none: bool = True, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not value > 0 or value != value or value == float("inf"):
        raise UploadConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, not {value!r}")


class Uploader:
    """Sends reports to one collector.  Thread-safe to share; one urllib3 PoolManager.

    Privacy: only the annotations named in ``annotations`` are sent (``"all"``
    sends every annotation); the report's executable path, pid, tracebacks and
    other metadata are not sent (``python_tracebacks=True`` adds the
    tracebacks); nothing from the environment unless named in ``environment``.
    ``fields`` adds fixed extra fields.  Breakpad and Crashpad also send
    ``ProductName``, ``Version`` and ``guid``: from ``product``/``version``/
    ``guid``, else the report's ``ProductName``/``Version`` annotations (else the
    executable's base name and ``unknown``) and the database's client id.
    """

    def __init__(self, url: str | None = None, *, protocol: str | None = None, dsn: str | None = None,
                 annotations: Iterable[str] | str | None = None, product: str | None = None,
                 version: str | None = None, guid: str | None = None, fields: Mapping[str, str] | None = None,
                 environment: Iterable[str] = (), python_tracebacks: bool = False, compression: str = "auto",
                 max_upload_bytes: int | None = None, max_dump_bytes: int | None = None, timeout: float = 60.0,
                 connect_timeout: float = 10.0, retries: int = 3, backoff_factor: float = 0.5,
                 backoff_jitter: float | None = None, max_retry_after: float = 60.0, force: bool = False,
                 retry_rejected: bool = False, progress: bool | None = None, ca_certs: str | None = None,
                 proxy: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if protocol is None:
            protocol = "sentry" if dsn else "breakpad"
        if protocol not in PROTOCOLS:
            raise UploadConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if dsn is not None and protocol != "sentry":
            raise UploadConfigError("a DSN is for --protocol sentry")
        if dsn is not None and url is not None:
            raise UploadConfigError("give the Sentry DSN or the minidump endpoint URL, not both")
        if protocol == "sentry":
            if dsn is not None:
                url = sentry_endpoint(dsn)
            elif url is not None and "sentry_key=" not in urllib.parse.urlsplit(url).query:
                raise UploadConfigError("a Sentry URL needs ?sentry_key=<public key> (the project's minidump "
                                        "endpoint); or give the DSN")
        if not url:
            raise UploadConfigError("no collector URL given (--url, or --dsn for Sentry)")
        parts = _check_url(url)
        self.protocol = protocol
        self.headers: dict[str, str] = {}
        if parts.username is not None:  # basic auth from the URL, sent as a header, never logged
            import urllib3

            auth = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.headers.update(urllib3.make_headers(basic_auth=auth))
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query,
                                           parts.fragment))
        self.url = url
        self.display_url = redact_url(url)
        if compression not in COMPRESSIONS:
            raise UploadConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
        if compression == "zstd":
            if protocol != "sentry":
                raise UploadConfigError("zstd compresses the minidump inside a Sentry upload; Breakpad and "
                                        "Crashpad collectors take gzip (Content-Encoding)")
            if _zstd() is None:
                raise UploadConfigError("zstd compression needs the zstandard package (pip install 'mdstream[zstd]')")
        self.compression = compression
        if annotations is None:
            self.annotations: frozenset[str] | None = frozenset()
        elif isinstance(annotations, str):
            if annotations != "all":
                raise UploadConfigError("annotations is a list of names, or 'all'")
            self.annotations = None
        else:
            self.annotations = frozenset(annotations)
        self.product, self.version, self.guid = product, version, guid
        self.fields = dict(fields or {})
        for key, value in self.fields.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise UploadConfigError(f"extra fields map non-empty names to strings, not {key!r}: {value!r}")
            if key in (DUMP_FIELD, "sentry", "ProductName", "Version", "guid"):
                raise UploadConfigError(f"field {key!r} is set by the uploader (use product=/version=/guid=)")
        self.environment = tuple(environment)
        self.python_tracebacks = bool(python_tracebacks)
        if protocol == "sentry":
            max_upload_bytes = SENTRY_MAX_UPLOAD_BYTES if max_upload_bytes is None else max_upload_bytes
            max_dump_bytes = SENTRY_MAX_DUMP_BYTES if max_dump_bytes is None else max_dump_bytes
        _positive("max_upload_bytes", max_upload_bytes, integer=True)
        _positive("max_dump_bytes", max_dump_bytes, integer=True)
        self.max_upload_bytes = max_upload_bytes
        self.max_dump_bytes = max_dump_bytes
        _positive("timeout", timeout, allow_none=False)
        _positive("connect_timeout", connect_timeout, allow_none=False)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise UploadConfigError(f"retries must be a non-negative integer, not {retries!r}")
        if not backoff_factor >= 0 or not max_retry_after >= 0:
            raise UploadConfigError("backoff_factor and max_retry_after must be >= 0")
        self.timeout, self.connect_timeout, self.retries = float(timeout), float(connect_timeout), retries
        self.backoff_factor = float(backoff_factor)
        self.backoff_jitter = self.backoff_factor if backoff_jitter is None else float(backoff_jitter)
        self.max_retry_after = float(max_retry_after)
        self.force, self.retry_rejected, self.progress = force, retry_rejected, progress
        self.ca_certs, self.proxy = ca_certs, proxy
        if proxy is not None:
            _check_url(proxy)
        self.sleep = sleep
        self._pool: Any = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Uploader {self.protocol} {self.display_url}>"

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.clear()
                self._pool = None

    def _manager(self) -> urllib3.PoolManager:
        import urllib3

        with self._pool_lock:
            if self._pool is None:
                kw: dict[str, Any] = {"blocksize": 64 << 10, "retries": False}
                if self.ca_certs:
                    kw["ca_certs"] = self.ca_certs
                if self.proxy:
                    self._pool = urllib3.ProxyManager(self.proxy, **kw)
                else:
                    self._pool = urllib3.PoolManager(**kw)
            return self._pool  # type: ignore[no-any-return]

    # -- building requests ------------------------------------------------

    def _identity(self, report: Report, client_id: str | None) -> tuple[str, str, str]:
        annotations = report.annotations
        product = self.product or annotations.get("ProductName") or annotations.get("prod")
        if not product:
            executable = report.metadata.get("executable")
            product = os.path.basename(executable) if isinstance(executable, str) and executable else "unknown"
        version = self.version or annotations.get("Version") or annotations.get("ver") or "unknown"
        guid = self.guid or client_id or report.id
        return product, version, guid

    def _selected(self, report: Report) -> list[tuple[str, str]]:
        """The allow-listed annotations, extra fields and named environment variables, in that order."""
        chosen: dict[str, str] = {}
        for key, value in sorted(report.annotations.items()):  # text only (Report.annotations filters)
            if self.annotations is None or key in self.annotations:
                chosen[key] = value
        chosen.update(self.fields)
        for name in self.environment:
            if name in os.environ:
                chosen[name] = os.environ[name]
        if self.python_tracebacks and report.metadata.get("python_tracebacks"):
            tracebacks = report.metadata["python_tracebacks"]
            chosen["python_tracebacks"] = tracebacks if isinstance(tracebacks, str) else json.dumps(tracebacks)
        return list(chosen.items())

    def prepare(self, report: Report, *, client_id: str | None = None) -> PreparedUpload:
        """Read and check the dump (its sha256 must match), build the request, apply the size limits.

        ``client_id`` is the Breakpad/Crashpad ``guid`` unless ``guid`` was given
        (default: the report's database's client id)."""
        import urllib3

        if client_id is None and self.guid is None and self.protocol != "sentry":
            client_id = _client_id(report)
        dump = _read_dump(report)
        if self.max_dump_bytes is not None and len(dump) > self.max_dump_bytes:
            raise ReportTooLargeError(f"report {report.id}: the minidump is {len(dump):,} bytes; the collector "
                                      f"accepts at most {self.max_dump_bytes:,} uncompressed")
        selected = self._selected(report)
        url = self.url
        fields: list[tuple[str, str]] = []
        if self.protocol in ("breakpad", "crashpad"):
            product, version, guid = self._identity(report, client_id)
            fields = [("ProductName", product), ("Version", version), ("guid", guid)]
            fields += [(k, v) for k, v in selected if k not in ("ProductName", "Version", "guid", DUMP_FIELD)]
            if self.protocol == "crashpad":
                url = _add_query(url, [("product", product), ("version", version), ("guid", guid)])
        else:
            event: dict[str, Any] = {"event_id": report.id, "platform": "native", "level": "fatal",
                                     "sdk": {"name": "mdstream", "version": _mdstream_version()}}
            if report.time:
                event["timestamp"] = report.time
            sentry_product = self.product or report.annotations.get("ProductName")
            release = self.version or report.annotations.get("Version")
            if release:
                event["release"] = f"{sentry_product}@{release}" if sentry_product else release
            extra = {k: v for k, v in selected if k not in ("sentry", DUMP_FIELD)}
            if extra:
                event["extra"] = extra
            fields = [("sentry", json.dumps(event, sort_keys=True))]

        def build(payload: bytes, dump_compression: str | None, body_gzip: bool) -> tuple[bytes, str, dict[str, Any]]:
            filename = f"{report.id}.dmp" + {None: "", "gzip": ".gz", "zstd": ".zst"}[dump_compression]
            body, content_type = urllib3.encode_multipart_formdata(
                list(fields) + [(DUMP_FIELD, (filename, payload, "application/octet-stream"))])
            file_info = {"field": DUMP_FIELD, "filename": filename, "content_type": "application/octet-stream",
                         "bytes": len(payload), "dump_bytes": len(dump), "sha256": report.sha256,
                         "compression": dump_compression}
            if body_gzip:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            return body, content_type, file_info

        limit = self.max_upload_bytes
        choice = self.compression
        if self.protocol == "sentry":
            plain = choice in ("none", "auto")
            body, ctype, info = build(dump, None, False) if plain else build(*_compress(dump, choice), False)
            if choice == "auto" and limit is not None and len(body) > limit:
                body, ctype, info = build(*_compress(dump, "zstd" if _zstd() else "gzip"), False)
            encoding = None
        else:
            gzip_body = self.protocol == "crashpad" and choice != "none" or choice == "gzip"
            body, ctype, info = build(dump, None, gzip_body)
            if choice == "auto" and not gzip_body and limit is not None and len(body) > limit:
                body, ctype, info = build(dump, None, True)
                gzip_body = True
            encoding = "gzip" if gzip_body else None
        if limit is not None and len(body) > limit:
            how = f" with {info['compression'] or encoding} compression" if (info["compression"] or encoding) else ""
            raise ReportTooLargeError(f"report {report.id}: the upload is {len(body):,} bytes{how}; the collector "
                                      f"accepts at most {limit:,}")
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "Expect": "",
                   "User-Agent": f"mdstream/{_mdstream_version()}", **self.headers}
        if encoding:
            headers["Content-Encoding"] = encoding
        return PreparedUpload(report.id, self.protocol, url, redact_url(url), headers, fields, info, body, encoding)

    # -- sending ------------------------------------------------------------

    def _progress_bar(self, size: int, report_id: str) -> Any:
        show = self.progress
        if show is None:  # automatic: a large upload, on a terminal, drawn once it lasts half a second
            show = _isatty(sys.stderr) and size >= PROGRESS_MIN_BYTES
            delay = 0.5
        else:
            delay = 0.0
        if not show:
            return None
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

        return tqdm(total=size, desc=f"upload {report_id[:8]}", unit="B", unit_scale=True, unit_divisor=1024,
                    leave=False, dynamic_ncols=True, file=sys.stderr, delay=delay)

    def _send(self, prepared: PreparedUpload) -> tuple[int | None, bytes, str | None, list[Any], list[float],
                                                       float | None]:
        """POST with retries.  Returns (status, body, error, attempt log, waits, retry_after)."""
        import urllib3
        from urllib3.exceptions import HTTPError, MaxRetryError

        log: list[Any] = []
        waits: list[float] = []
        retry = _retry_type()(total=self.retries, redirect=0, raise_on_redirect=False, raise_on_status=False,
                              status_forcelist=_RETRY_STATUSES, allowed_methods=None,
                              backoff_factor=self.backoff_factor, backoff_jitter=self.backoff_jitter,
                              backoff_max=120.0, respect_retry_after_header=True,
                              max_retry_after=self.max_retry_after, sleeper=self.sleep, log=log, waits=waits)
        bar = self._progress_bar(len(prepared.body), prepared.report_id)
        reader = _BodyReader(prepared.body, bar)
        try:
            response = self._manager().request(
                "POST", prepared.url, body=reader, headers=prepared.headers, retries=retry, redirect=False,
                preload_content=False, timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.timeout))
        except _RetryLater as exc:
            return exc.status, b"", str(exc), log, waits, exc.seconds
        except MaxRetryError as exc:
            return None, b"", _describe(exc.reason or exc), log, waits, None
        except (HTTPError, OSError) as exc:
            return None, b"", _describe(exc), log, waits, None
        finally:
            if bar is not None:
                bar.close()
        try:
            data = response.read(MAX_RESPONSE_BYTES)
        except (HTTPError, OSError):
            data = b""
        finally:
            response.release_conn()
        if log and log[-1] is response:
            log = log[:-1]  # the final answer is counted below, once
        log.append(response)
        return int(response.status), data, None, log, waits, None

    def upload_report(self, report: Report | str, *, database: Database | str | None = None,
                      dry_run: bool = False) -> UploadResult:
        """Upload one published report (or its id, with ``database``); never raises for network or
        collector failures: they are in the result and in the report's metadata."""
        if isinstance(report, PendingReport):
            raise ReportStateError(f"report {report.id} is not published yet: publish it before uploading")
        db = _open_database(database if isinstance(report, str) else report.database)
        report_id = report if isinstance(report, str) else report.id
        if dry_run:
            try:
                current = db.get(report_id)
                prepared = self.prepare(current, client_id=db.client_id)
            except ReportNotFoundError as exc:
                return UploadResult(report_id, "missing", error=str(exc))
            except (ReportsError, OSError) as exc:
                return UploadResult(report_id, "failed", error=_describe(exc))
            return UploadResult(report_id, "dry_run", state=current.state, body_bytes=len(prepared.body),
                                request=prepared.describe(), dump_path=current.dump_path)
        try:
            lock = db.lock(report_id, wait=False)
        except ReportBusyError:
            return UploadResult(report_id, "busy", error="another process holds the report (writing, uploading "
                                                         "or removing it)")
        except ReportNotFoundError as exc:
            return UploadResult(report_id, "missing", error=str(exc))
        except CorruptReportError as exc:
            return UploadResult(report_id, "failed", error=str(exc))
        with lock:
            return self._upload_locked(lock, report_id, db.client_id)

    def _upload_locked(self, lock: Any, report_id: str, client_id: str | None) -> UploadResult:
        current: Report = lock.report
        upload = current.upload
        base = UploadResult(report_id, "skipped", state=current.state, server_crash_id=upload.get("server_crash_id"),
                            dump_path=current.dump_path)
        if current.state == "uploaded" or (current.state == "rejected" and not self.retry_rejected):
            base.error = (f"already uploaded ({upload.get('server_crash_id') or 'no crash id'})"
                          if current.state == "uploaded" else f"rejected earlier: {upload.get('rejected_reason')}")
            return base
        not_before = upload.get("next_attempt")
        if not self.force and isinstance(not_before, str):
            try:
                wait = (parse_time(not_before) - _dt.datetime.now(_dt.timezone.utc)).total_seconds()
            except MetadataError:
                wait = 0.0
            if wait > 0:
                base.outcome, base.retry_after = "deferred", wait
                base.error = f"the collector asked to wait until {not_before}"
                return base
        try:
            prepared = self.prepare(current, client_id=client_id)
        except (ReportsError, OSError) as exc:
            problem = _describe(exc)
            lock.update({"upload": {"last_error": problem, "protocol": self.protocol, "url": self.display_url}})
            return UploadResult(report_id, "failed", state=current.state, error=problem, dump_path=current.dump_path)
        started = format_time()
        status, data, error, log, waits, retry_after = self._send(prepared)
        attempts = len(log)
        changes: dict[str, Any] = {"attempts": int(upload.get("attempts") or 0) + attempts, "last_attempt": started,
                                   "last_status": status, "protocol": self.protocol, "url": self.display_url,
                                   "next_attempt": None}
        result = UploadResult(report_id, "failed", state=current.state, status=status, attempts=attempts,
                              body_bytes=len(prepared.body), waits=waits, dump_path=current.dump_path)
        text = data.decode("utf-8", "replace")
        new_state = None
        if error is None and status is not None and 200 <= status < 300:
            crash_id = _crash_id(self.protocol, text)
            new_state = "uploaded"
            changes.update(server_crash_id=crash_id, uploaded_at=format_time(), last_error=None)
            result.outcome, result.server_crash_id = "uploaded", crash_id
        elif error is None and status is not None and 400 <= status < 500 and status not in (408, 429):
            reason = _http_reason(status, text)
            new_state = "rejected"
            changes.update(rejected_reason=reason, rejected_at=format_time(), last_error=reason)
            result.outcome, result.error = "rejected", reason
        elif retry_after is not None:
            when = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=retry_after)
            changes.update(last_error=error, next_attempt=format_time(when))
            result.outcome, result.error, result.retry_after = "deferred", error, retry_after
        else:
            error = error or _http_reason(status or 0, text)
            changes["last_error"] = error
            result.error = error
        update: dict[str, Any] = {"upload": changes}
        if new_state is not None:
            update["state"] = new_state
        result.state = lock.update(update).state
        return result

    def upload(self, database: Database | str | os.PathLike[str] | None = None, *, ids: Iterable[str] | None = None,
               dry_run: bool = False) -> list[UploadResult]:
        """Upload every pending report of ``database`` (oldest first), or the reports ``ids``
        (full ids or unique prefixes).  Rejected reports too with ``retry_rejected``."""
        db = _open_database(database)
        if ids is not None:
            results: list[UploadResult] = []
            chosen: list[str] = []
            for given in ids:
                try:
                    chosen.append(db.resolve(given))
                except ReportsError as exc:
                    results.append(UploadResult(given, "missing", error=str(exc)))
            for report_id in dict.fromkeys(chosen):
                results.append(self.upload_report(report_id, database=db, dry_run=dry_run))
            return results
        wanted = ("pending", "rejected") if self.retry_rejected else ("pending",)
        candidates = [r for r in reversed(db.reports()) if r.state in wanted]
        return [self.upload_report(r.id, database=db, dry_run=dry_run) for r in candidates]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _compress(dump: bytes, how: str) -> tuple[bytes, str]:
    if how == "zstd":
        zstandard = _zstd()
        if zstandard is None:
            raise UploadConfigError("zstd compression needs the zstandard package")
        return zstandard.ZstdCompressor(level=10).compress(dump), "zstd"
    return gzip.compress(dump, compresslevel=6, mtime=0), "gzip"


def _open_database(database: Database | str | os.PathLike[str] | None) -> Database:
    if isinstance(database, Database):
        return database
    return Database(database, create=False)


def _client_id(report: Report) -> str | None:
    try:
        return _open_database(report.database).client_id
    except (ReportsError, OSError):
        return None


def _read_dump(report: Report) -> bytes:
    """The report's minidump, read without following symlinks, checked against its sha256."""
    from mdstream.reports import _fs

    where = report.dump_path
    try:
        dfd = os.open(os.path.join(report.database, REPORTS_DIR, report.id), _fs.DIR_FLAGS)
    except FileNotFoundError:
        raise ReportNotFoundError(f"report {report.id} is gone") from None
    try:
        try:
            data = _fs.read_file(dfd, DUMP_NAME, 1 << 40, dir_path=report.directory)
        except FileNotFoundError:
            raise DumpMissingError(f"{where}: the report's minidump is missing") from None
    finally:
        os.close(dfd)
    digest = hashlib.sha256(data).hexdigest()
    if not report.sha256:
        raise CorruptReportError(f"report {report.id} has no sha256 in its metadata: its dump cannot be checked; "
                                 f"not sent")
    if digest != report.sha256:
        raise CorruptReportError(f"{where} does not match the sha256 in its metadata (damaged or edited); "
                                 f"not sent")
    if not data.startswith(b"MDMP"):
        raise InvalidDumpError(f"{where} is not a minidump (no MDMP signature); not sent")
    return data


_CRASH_ID_RE = re.compile(r"CrashID=(\S+)")


def _crash_id(protocol: str, text: str) -> str | None:
    if protocol == "sentry":
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("id"), str):
            return str(answer["id"])[:200]
    match = _CRASH_ID_RE.search(text)
    if match:
        return match.group(1)[:200]
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:200] if line.isprintable() else None
    return None


def _http_reason(status: int, text: str) -> str:
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = "".join(ch if ch.isprintable() else "?" for ch in first[:200])
    return f"HTTP {status}{' ' + phrase if phrase else ''}{': ' + first if first else ''}"


def _describe(exc: BaseException) -> str:
    from urllib3.exceptions import NewConnectionError

    if isinstance(exc, NewConnectionError):
        return "cannot connect: " + re.sub(r"^\[Errno \d+\] ", "", str(exc).rsplit(": ", 1)[-1])
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno \d+\] ", "", text)
    text = re.sub(r"<urllib3\.[^>]*>: ?", "", text)
    return " ".join(text.split())[:500]


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------
# Module-level entry points
# --------------------------------------------------------------------------


def upload(database: Database | str | os.PathLike[str] | None = None, *, ids: Iterable[str] | None = None,
           dry_run: bool = False, **options: Any) -> list[UploadResult]:
    """Upload the pending reports of ``database`` (default: the per-user database).

    ``options`` are :class:`Uploader`'s (``url``, ``protocol``, ``dsn``,
    ``annotations``, ...).  Returns one :class:`UploadResult` per report tried.
    """
    with Uploader(**options) as uploader:
        return uploader.upload(database, ids=ids, dry_run=dry_run)


def upload_report(report: Report, *, dry_run: bool = False, **options: Any) -> UploadResult:
    """Upload one published report now (blocking).  Safe from any thread or process: the
    report's lock keeps a second uploader away, and a report already uploaded is skipped."""
    with Uploader(**options) as uploader:
        return uploader.upload_report(report, dry_run=dry_run)


def upload_in_background(report: Report, *, process: bool = False, daemon: bool = True,
                         **options: Any) -> _UploadThread | subprocess.Popen[bytes]:
    """Start uploading one published report without waiting; returns the thread or process.

    ``process=False``: a thread (``daemon`` by default: it does not hold up
    the interpreter's exit; an upload cut short leaves the report pending).
    Its ``result`` attribute is the :class:`UploadResult` once it ends (or
    ``error`` the exception).  ``process=True``: a new Python process in its
    own session that outlives the caller (for a watcher that must not block,
    or a process about to exit); it gets the options on stdin, never on its
    command line, and exits 0 if the report ended uploaded (or was already).  Never called
    for a report that is not on disk: a :class:`PendingReport` is refused.
    """
    if isinstance(report, PendingReport) or not isinstance(report, Report):
        raise ReportStateError("upload_in_background takes a published Report (publish the pending report first)")
    Uploader(**options).close()  # check the options now, in the caller
    if process:
        try:
            payload = json.dumps({"database": report.database, "id": report.id, "options": options})
        except (TypeError, ValueError) as exc:
            raise UploadConfigError(f"options for an uploader process must be JSON values: {exc}") from None
        # The options travel on stdin, not argv: a URL's credentials must not show in ps.
        proc = subprocess.Popen([sys.executable, "-c", "from mdstream.reports._upload import _background_main; "
                                                       "raise SystemExit(_background_main())"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        assert proc.stdin is not None
        try:
            proc.stdin.write(payload.encode())
        finally:
            proc.stdin.close()
        return proc
    thread = _UploadThread(report, options, daemon)
    thread.start()
    return thread


class _UploadThread(threading.Thread):
    """A background upload; ``result`` (an UploadResult) or ``error`` once it ended."""

    def __init__(self, report: Report, options: Mapping[str, Any], daemon: bool) -> None:
        super().__init__(name=f"mdstream-upload-{report.id[:8]}", daemon=daemon)
        self.report = report
        self.options = dict(options)
        self.result: UploadResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = upload_report(self.report, **self.options)
        except BaseException as exc:  # kept for the caller; a background upload must not print a traceback
            self.error = exc


def _background_main() -> int:
    """The process started by ``upload_in_background(process=True)``: options as JSON on stdin."""
    request = json.loads(sys.stdin.read())
    db = Database(request["database"], create=False)
    report = db.get(request["id"])
    result = upload_report(report, **request["options"])
    return 0 if result.ok else 1
