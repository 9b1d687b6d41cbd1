"""The crash database: one directory per report (minidump + JSON metadata),
made visible atomically, shared safely by many processes.

Layout (``docs/crash-reporting.md``, "The crash database")::

    DIR/                                  0700
      mdstream-crash-database.json        marker: format, client_id, created
      reports/<id>/minidump.dmp           0600, published reports only
      reports/<id>/metadata.json          0600
      staging/<id>/                       a report being written (invisible)
      locks/<id>.lock                     flock: held while a report is written, updated, uploaded or removed
      trash/<id>.<random>/                a report being removed (invisible)

A report becomes visible by renaming its finished staging directory into
``reports/`` (one atomic rename, after the dump and metadata were fsynced), so
a reader never sees half a report, whatever process is killed when.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import signal as _signal
import stat
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from mdstream.reports import _fs
from mdstream.reports._errors import (
    AmbiguousReportIdError,
    CorruptReportError,
    DatabaseNotFoundError,
    DatabasePermissionError,
    DumpMissingError,
    InvalidDumpError,
    MetadataError,
    NotADatabaseError,
    ReportBusyError,
    ReportNotFoundError,
    ReportStateError,
)

__all__ = [
    "DATABASE_FORMAT",
    "REPORT_FORMAT",
    "STATES",
    "STANDARD_KEYS",
    "Database",
    "PendingReport",
    "Problem",
    "PruneResult",
    "Report",
    "ReportLock",
    "ScanResult",
    "default_directory",
    "format_time",
    "parse_time",
    "validate_metadata",
]

DATABASE_FORMAT = "mdstream-crash-database/1"
REPORT_FORMAT = "mdstream-crash-report/1"
MARKER_NAME = "mdstream-crash-database.json"
DUMP_NAME = "minidump.dmp"
METADATA_NAME = "metadata.json"
REPORTS_DIR, STAGING_DIR, LOCKS_DIR, TRASH_DIR = "reports", "staging", "locks", "trash"
SUBDIRS = (REPORTS_DIR, STAGING_DIR, LOCKS_DIR, TRASH_DIR)
#: locks/prune.lock serializes the pruners that enforce limits (they wait for it at most this long).
PRUNE_LOCK_NAME = "prune.lock"
PRUNE_LOCK_WAIT = 30.0
STATES = ("pending", "uploaded", "rejected")
#: A metadata file larger than this is refused as corrupt (Python tracebacks fit easily).
MAX_METADATA_BYTES = 16 << 20
MAX_ANNOTATION_KEY = 256
MAX_ANNOTATION_VALUE = 1 << 20
MAX_ANNOTATIONS = 10_000

#: The keys every report's metadata has (``python_tracebacks`` only where there are any).
STANDARD_KEYS = ("id", "format", "time", "state", "pid", "executable", "signal", "signal_name", "code", "address",
                 "crashing_thread", "annotations", "python_tracebacks", "dump_bytes", "sha256", "mdstream_version",
                 "upload")
#: Set by the database, never by a caller.
RESERVED_KEYS = frozenset({"id", "format", "state", "dump_bytes", "sha256", "mdstream_version", "upload"})
UPLOAD_KEYS = ("attempts", "last_attempt", "last_error", "last_status", "next_attempt", "protocol", "url",
               "server_crash_id", "uploaded_at", "rejected_reason", "rejected_at")

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def default_directory() -> str:
    """The per-user default database: ``<platformdirs user data dir>/mdstream/crashes``
    (``~/.local/share/mdstream/crashes`` on Linux, honouring ``XDG_DATA_HOME``)."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("mdstream", appauthor=False), "crashes")


def _mdstream_version() -> str:
    import mdstream

    return str(getattr(mdstream, "__version__", "unknown"))


# --------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------


def format_time(when: _dt.datetime | None = None) -> str:
    """ISO 8601 UTC with microseconds and a ``Z``: ``2024-05-01T12:34:56.789012Z``."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        raise MetadataError("a naive datetime has no time zone; give an aware one (UTC)")
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> _dt.datetime:
    """Parse an ISO 8601 time with a zone (``Z`` or an offset) into an aware UTC datetime."""
    if not isinstance(text, str):
        raise MetadataError(f"time must be an ISO 8601 string, not {type(text).__name__}")
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        when = _dt.datetime.fromisoformat(candidate)
    except ValueError:
        raise MetadataError(f"time {text!r} is not ISO 8601 (e.g. 2024-05-01T12:34:56Z)") from None
    if when.tzinfo is None:
        raise MetadataError(f"time {text!r} has no time zone (append Z for UTC)")
    return when.astimezone(_dt.timezone.utc)


# --------------------------------------------------------------------------
# Metadata validation
# --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(md: dict[str, Any], key: str, low: int, high: int) -> None:
    value = md.get(key)
    if value is None:
        return
    if not _is_int(value):
        raise MetadataError(f"{key} must be an integer, not {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise MetadataError(f"{key} {value} is out of range [{low}, {high}]")


def _check_annotations(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MetadataError(f"annotations must be a mapping of str to str, not {type(value).__name__}")
    if len(value) > MAX_ANNOTATIONS:
        raise MetadataError(f"{len(value):,} annotations; at most {MAX_ANNOTATIONS:,}")
    result: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not key:
            raise MetadataError(f"annotation names must be non-empty strings, not {key!r}")
        if len(key) > MAX_ANNOTATION_KEY or _CONTROL_RE.search(key):
            raise MetadataError(f"annotation name {key[:40]!r} is too long or holds control characters")
        if not isinstance(text, str):
            raise MetadataError(f"annotation {key!r} must be a string, not {type(text).__name__}")
        if len(text) > MAX_ANNOTATION_VALUE:
            raise MetadataError(f"annotation {key!r} is {len(text):,} characters; at most {MAX_ANNOTATION_VALUE:,}")
        result[key] = text
    return result


def _json_safe(key: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"{key} is not JSON-serializable: {exc}") from None


def validate_metadata(metadata: Mapping[str, Any], *, allow_reserved: bool = False) -> dict[str, Any]:
    """Check and normalize what a caller gives for a report; returns a new dict.

    Standard keys are type-checked (see ``docs/crash-reporting.md``); a
    ``datetime`` time becomes ISO 8601 UTC; ``signal_name`` is filled in from
    ``signal``; unknown extra keys are kept if they are JSON-serializable.
    Keys the database sets (``id``, ``state``, ``dump_bytes``, ``sha256``,
    ``upload``...) are refused unless ``allow_reserved``.
    """
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata must be a mapping, not {type(metadata).__name__}")
    md: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise MetadataError(f"metadata keys must be non-empty strings, not {key!r}")
        if key in RESERVED_KEYS and not allow_reserved:
            raise MetadataError(f"{key!r} is set by the crash database, not by the caller")
        md[key] = value
    when = md.get("time")
    if isinstance(when, _dt.datetime):
        md["time"] = format_time(when)
    elif when is not None:
        md["time"] = format_time(parse_time(when))
    _check_int(md, "pid", 1, 0xFFFFFFFF)
    _check_int(md, "signal", 1, 255)
    _check_int(md, "code", -(1 << 63), (1 << 64) - 1)
    _check_int(md, "address", 0, (1 << 64) - 1)
    _check_int(md, "crashing_thread", 0, 0xFFFFFFFF)
    for key in ("executable", "signal_name"):
        if md.get(key) is not None and not isinstance(md[key], str):
            raise MetadataError(f"{key} must be a string, not {type(md[key]).__name__}")
    if md.get("signal") is not None and md.get("signal_name") is None:
        try:
            md["signal_name"] = _signal.Signals(md["signal"]).name
        except ValueError:
            md["signal_name"] = None
    if "annotations" in md:
        md["annotations"] = _check_annotations(md["annotations"])
    tracebacks = md.get("python_tracebacks")
    if tracebacks is not None and not isinstance(tracebacks, (list, str)):
        raise MetadataError(f"python_tracebacks must be a list (one entry per thread) or a string, "
                            f"not {type(tracebacks).__name__}")
    for key, value in md.items():
        _json_safe(key, value)
    return md


def _new_upload_section() -> dict[str, Any]:
    return {key: (0 if key == "attempts" else None) for key in UPLOAD_KEYS}


def _ordered(md: Mapping[str, Any]) -> dict[str, Any]:
    """Standard keys first, in the documented order, then extra keys sorted."""
    out = {key: md[key] for key in STANDARD_KEYS if key in md}
    for key in sorted(k for k in md if k not in out):
        out[key] = md[key]
    return out


def _encode(md: Mapping[str, Any]) -> bytes:
    return (json.dumps(_ordered(md), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------


class Problem(NamedTuple):
    """Something in the database that is not a sound report (it is left alone and reported)."""

    id: str | None
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Report:
    """A published report: a snapshot of its metadata when it was read.

    ``problems`` lists what is wrong but not fatal (a hand-edited field, a
    missing or resized dump); a report whose metadata cannot be read at all is
    a :class:`Problem` instead.
    """

    __slots__ = ("database", "id", "directory", "dump_path", "metadata_path", "metadata", "problems",
                 "size_on_disk", "_sort_time")

    def __init__(self, database: str, report_id: str, metadata: dict[str, Any], *,
                 problems: Iterable[str] = (), size_on_disk: int = 0, sort_time: float = 0.0) -> None:
        self.database = database
        self.id = report_id
        self.directory = os.path.join(database, REPORTS_DIR, report_id)
        self.dump_path = os.path.join(self.directory, DUMP_NAME)
        self.metadata_path = os.path.join(self.directory, METADATA_NAME)
        self.metadata = metadata
        self.problems: tuple[str, ...] = tuple(problems)
        self.size_on_disk = size_on_disk
        self._sort_time = sort_time

    @property
    def state(self) -> str:
        return str(self.metadata["state"])

    @property
    def time(self) -> str | None:
        value = self.metadata.get("time")
        return value if isinstance(value, str) else None

    @property
    def dump_bytes(self) -> int | None:
        value = self.metadata.get("dump_bytes")
        return value if _is_int(value) else None

    @property
    def sha256(self) -> str | None:
        value = self.metadata.get("sha256")
        return value if isinstance(value, str) else None

    @property
    def annotations(self) -> dict[str, str]:
        """The annotations (only text names and values: a hand-edited other entry is left out)."""
        value = self.metadata.get("annotations")
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    @property
    def upload(self) -> dict[str, Any]:
        value = self.metadata.get("upload")
        return dict(value) if isinstance(value, dict) else _new_upload_section()

    def to_dict(self) -> dict[str, Any]:
        """The metadata plus absolute paths and problems (what ``--json`` prints)."""
        out = _ordered(self.metadata)
        out.update(directory=self.directory, dump_path=self.dump_path, metadata_path=self.metadata_path,
                   size_on_disk=self.size_on_disk, problems=list(self.problems))
        return out

    def __repr__(self) -> str:
        return f"<Report {self.id} {self.state} {self.time or '?'}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Report) and (self.database, self.id, self.metadata) == (
            other.database, other.id, other.metadata)

    __hash__ = None  # type: ignore[assignment]


class ScanResult(NamedTuple):
    reports: list[Report]
    problems: list[Problem]


class PruneResult(list[str]):
    """The removed ids (a list); ``reports`` were published reports removed for the limits,
    ``abandoned`` staging areas of writers that died, ``busy`` reports skipped because locked."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[str] = []
        self.abandoned: list[str] = []
        self.busy: list[str] = []
        self.removed_bytes = 0
        self.problems: list[Problem] = []


class _Dirs:
    """Open descriptors of the database root and its subdirectories, for one operation."""

    def __init__(self, root: int, fds: dict[str, int]) -> None:
        self.root = root
        self.reports = fds[REPORTS_DIR]
        self.staging = fds[STAGING_DIR]
        self.locks = fds[LOCKS_DIR]
        self.trash = fds[TRASH_DIR]


def _lock_name(report_id: str) -> str:
    return f"{report_id}.lock"


class Database:
    """A crash database in ``directory`` (default :func:`default_directory`).

    ``max_reports`` / ``max_bytes`` bound it: every :meth:`PendingReport.publish`
    and :meth:`prune` removes the oldest reports beyond them (uploaded and
    rejected ones before pending ones; never one that is being written or
    uploaded).  ``create=False`` refuses to create a database that does not
    exist.  Safe to share between threads and processes.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, max_reports: int | None = None,
                 max_bytes: int | None = None, create: bool = True) -> None:
        _fs.require_posix()
        for name, value in (("max_reports", max_reports), ("max_bytes", max_bytes)):
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        given = default_directory() if directory is None else os.fspath(directory)
        self.directory = os.path.abspath(os.path.expanduser(given))
        self.client_id: str | None = None
        self.problems: list[Problem] = []
        self._open_root(create)

    def __repr__(self) -> str:
        return f"<mdstream.reports.Database {self.directory!r}>"

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    # -- opening ------------------------------------------------------------

    def _open_root(self, create: bool) -> None:
        if not os.path.lexists(self.directory):
            if not create:
                raise DatabaseNotFoundError(f"no crash database at {self.directory}")
            parent = os.path.dirname(self.directory)
            os.makedirs(parent, mode=0o700, exist_ok=True)
            try:
                os.mkdir(self.directory, 0o700)
            except FileExistsError:
                pass
        root = self._root_fd()
        try:
            self._check_marker(root, create)
            for name in SUBDIRS:
                os.close(_fs.open_dir(name, root, create=True, dir_path=self.directory))
        finally:
            os.close(root)

    def _root_fd(self) -> int:
        try:
            fd = os.open(self.directory, _fs.DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise DatabaseNotFoundError(f"no crash database at {self.directory}") from None
        except NotADirectoryError:
            raise NotADatabaseError(f"{self.directory} is not a directory") from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise DatabasePermissionError(f"{self.directory} is owned by uid {st.st_uid}, not by this user")
        return fd

    def _check_marker(self, root: int, create: bool) -> None:
        try:
            raw: bytes | None = _fs.read_file(root, MARKER_NAME, 1 << 16, dir_path=self.directory)
        except FileNotFoundError:
            raw = None
        if raw is None:
            # Our own names are not foreign: another process may be creating this database right now.
            foreign = [n for n in os.listdir(root) if n not in SUBDIRS and n != MARKER_NAME
                       and not (n.startswith(f".{MARKER_NAME}.") and _fs.is_temp_name(n))]
            if foreign:
                shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
                raise NotADatabaseError(f"{self.directory} is not an mdstream crash database (no {MARKER_NAME}, "
                                        f"and it holds other files: {shown})")
            if not create:
                raise NotADatabaseError(f"{self.directory} is not an mdstream crash database (no {MARKER_NAME})")
            st = os.fstat(root)
            if st.st_mode & 0o077:
                os.fchmod(root, 0o700)  # a fresh database: it will hold secrets
            marker = {"format": DATABASE_FORMAT, "client_id": uuid.uuid4().hex, "created": format_time()}
            _fs.write_file_exclusive(root, MARKER_NAME, (json.dumps(marker, indent=2) + "\n").encode())
            raw = _fs.read_file(root, MARKER_NAME, 1 << 16, dir_path=self.directory)
        else:
            st = os.fstat(root)
            if st.st_mode & 0o022:
                raise DatabasePermissionError(
                    f"{self.directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"it holds crash dumps: chmod 700 it")
        try:
            marker_data = json.loads(raw)
            if not isinstance(marker_data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self.problems.append(Problem(None, self.path(MARKER_NAME), f"unreadable marker ({exc}); using it anyway"))
            return
        fmt = marker_data.get("format")
        if fmt != DATABASE_FORMAT:
            if isinstance(fmt, str) and fmt.startswith("mdstream-crash-database/"):
                raise NotADatabaseError(f"{self.directory} is a crash database of format {fmt}; this mdstream "
                                        f"reads {DATABASE_FORMAT}")
            self.problems.append(Problem(None, self.path(MARKER_NAME), f"unexpected format {fmt!r}"))
        client_id = marker_data.get("client_id")
        if isinstance(client_id, str) and _ID_RE.match(client_id):
            self.client_id = client_id

    @contextmanager
    def _dirs(self) -> Iterator[_Dirs]:
        root = self._root_fd()
        fds: dict[str, int] = {}
        try:
            for name in SUBDIRS:
                fds[name] = _fs.open_dir(name, root, create=True, dir_path=self.directory)
            yield _Dirs(root, fds)
        finally:
            for fd in fds.values():
                os.close(fd)
            os.close(root)

    # -- writing ------------------------------------------------------------

    def new_report(self, **metadata: Any) -> PendingReport:
        """Reserve a report: a unique id (uuid4 hex) and a private staging directory.

        Write the minidump to ``pending.dump_path`` (it does not exist yet),
        then :meth:`PendingReport.publish`.  Metadata given here (``pid``,
        ``signal``, ``annotations``...) is validated now and merged with what
        ``publish`` adds.  ``time`` defaults to now.
        """
        md = validate_metadata(metadata)
        md.setdefault("time", format_time())
        with self._dirs() as d:
            for _ in range(100):
                report_id = uuid.uuid4().hex
                lock_fd = _fs.create_lock_file(d.locks, _lock_name(report_id), dir_path=self.path(LOCKS_DIR))
                if lock_fd is None:
                    continue
                try:
                    if os.path.lexists(self.path(REPORTS_DIR, report_id)):
                        raise FileExistsError
                    os.mkdir(report_id, 0o700, dir_fd=d.staging)
                except FileExistsError:
                    os.close(lock_fd)
                    continue
                except BaseException:
                    _unlink_quietly(d.locks, _lock_name(report_id))
                    os.close(lock_fd)
                    raise
                return PendingReport(self, report_id, lock_fd, md)
        raise FileExistsError(f"could not reserve a unique report id in {self.directory}")  # pragma: no cover

    # -- reading ------------------------------------------------------------

    def _load(self, d: _Dirs, name: str) -> Report | Problem | None:
        """The report in ``reports/<name>``; a Problem if it is not sound; None if it vanished."""
        try:
            return self._load_unchecked(d, name)
        except FileNotFoundError:
            if not os.path.lexists(self.path(REPORTS_DIR, name)):
                return None  # removed by a concurrent prune while we read it
            raise

    def _load_unchecked(self, d: _Dirs, name: str) -> Report | Problem | None:
        where = self.path(REPORTS_DIR, name)
        report_id = name if _ID_RE.match(name) else None
        try:
            st = os.stat(name, dir_fd=d.reports, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return Problem(report_id, where, "a symlink; the crash database never follows one (left alone)")
        if not stat.S_ISDIR(st.st_mode) or report_id is None:
            return Problem(report_id, where, "not a report (reports/ holds only <32 hex digit id> directories)")
        if st.st_uid != os.geteuid():
            return Problem(report_id, where, f"owned by uid {st.st_uid}, not by this user (left alone)")
        try:
            rfd = os.open(name, _fs.DIR_FLAGS, dir_fd=d.reports)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Problem(report_id, where, f"cannot open: {exc.strerror}")
        try:
            try:
                raw = _fs.read_file(rfd, METADATA_NAME, MAX_METADATA_BYTES, dir_path=where)
            except FileNotFoundError:
                if not os.path.exists(where):
                    return None
                return Problem(report_id, where, f"no {METADATA_NAME}")
            except (OSError, ValueError) as exc:
                return Problem(report_id, where, f"{METADATA_NAME}: {_reason(exc)}")
            try:
                md = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                return Problem(report_id, where, f"{METADATA_NAME} is not valid JSON ({exc})")
            if not isinstance(md, dict):
                return Problem(report_id, where, f"{METADATA_NAME} is not a JSON object")
            if md.get("id") != report_id:
                return Problem(report_id, where, f"{METADATA_NAME} names id {md.get('id')!r}, not its directory's")
            if md.get("state") not in STATES:
                return Problem(report_id, where, f"{METADATA_NAME} has state {md.get('state')!r}, not one of "
                                                 f"{', '.join(STATES)}")
            problems = _soft_problems(md)
            sort_time = st.st_mtime
            if isinstance(md.get("time"), str):
                try:
                    sort_time = parse_time(md["time"]).timestamp()
                except MetadataError:
                    pass
            try:
                dst = os.stat(DUMP_NAME, dir_fd=rfd, follow_symlinks=False)
                if not stat.S_ISREG(dst.st_mode):
                    problems.append(f"{DUMP_NAME} is not a regular file (not followed)")
                elif _is_int(md.get("dump_bytes")) and dst.st_size != md["dump_bytes"]:
                    problems.append(f"{DUMP_NAME} is {dst.st_size:,} bytes; the metadata says {md['dump_bytes']:,}")
            except FileNotFoundError:
                if not os.path.lexists(where):
                    return None  # removed (pruned) while we read it
                problems.append(f"{DUMP_NAME} is missing")
            size = sum(_fs.entry_size(rfd, n) for n in os.listdir(rfd))
            return Report(self.directory, report_id, md, problems=problems, size_on_disk=size, sort_time=sort_time)
        finally:
            os.close(rfd)

    def scan(self, state: str | None = None) -> ScanResult:
        """All published reports (newest first) and the problems found on the way."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        reports: list[Report] = []
        problems: list[Problem] = list(self.problems)
        with self._dirs() as d:
            for name in os.listdir(d.reports):
                if _fs.is_temp_name(name):
                    continue
                loaded = self._load(d, name)
                if isinstance(loaded, Report):
                    if state is None or loaded.state == state:
                        reports.append(loaded)
                elif loaded is not None:
                    problems.append(loaded)
        reports.sort(key=lambda r: (r._sort_time, r.id), reverse=True)
        return ScanResult(reports, problems)

    def reports(self, state: str | None = None) -> list[Report]:
        """Published reports, newest first (optionally only those in ``state``).
        Unreadable ones are left out; :meth:`scan` reports them."""
        return self.scan(state).reports

    def __iter__(self) -> Iterator[Report]:
        return iter(self.reports())

    def __len__(self) -> int:
        return len(self.reports())

    def get(self, report_id: str) -> Report:
        """The published report ``report_id`` (ReportNotFoundError, CorruptReportError)."""
        if not isinstance(report_id, str) or not _ID_RE.match(report_id):
            raise ReportNotFoundError(f"{report_id!r} is not a report id (32 lowercase hex digits)")
        with self._dirs() as d:
            loaded = self._load(d, report_id)
        if loaded is None:
            raise ReportNotFoundError(f"no report {report_id} in {self.directory}")
        if isinstance(loaded, Problem):
            raise CorruptReportError(f"report {report_id}: {loaded.message}")
        return loaded

    def resolve(self, prefix: str) -> str:
        """The full id of the one published report whose id starts with ``prefix`` (at least 4 hex digits)."""
        text = prefix.strip().lower()
        if not re.match(r"^[0-9a-f]{4,32}$", text):
            raise ReportNotFoundError(f"{prefix!r} is not a report id or a prefix of at least 4 hex digits")
        with self._dirs() as d:
            matches = sorted(n for n in os.listdir(d.reports) if _ID_RE.match(n) and n.startswith(text))
        if not matches:
            raise ReportNotFoundError(f"no report {prefix} in {self.directory}")
        if len(matches) > 1:
            raise AmbiguousReportIdError(f"{prefix} matches {len(matches)} reports: {', '.join(matches[:4])}"
                                         f"{', ...' if len(matches) > 4 else ''}")
        return matches[0]

    # -- locking and updating -------------------------------------------------

    def lock(self, report_id: str, *, wait: bool | float = False) -> ReportLock:
        """Hold the report's lock (ReportBusyError if another process holds it and ``wait`` is False;
        ``wait`` True waits, a number waits that many seconds).  Use as a context manager."""
        if not _ID_RE.match(report_id):
            raise ReportNotFoundError(f"{report_id!r} is not a report id")
        with self._dirs() as d:
            fd = _fs.lock_file(d.locks, _lock_name(report_id), wait=wait, dir_path=self.path(LOCKS_DIR),
                               what=f"report {report_id}")
        lock = ReportLock(self, report_id, fd)
        try:
            lock.report  # noqa: B018 - it must exist and be readable
        except BaseException:
            lock.release()
            raise
        return lock

    # -- removing -------------------------------------------------------------

    def _remove_report(self, d: _Dirs, report_id: str) -> int:
        """Remove ``reports/<id>`` while holding its lock: rename into trash/, delete, unlink the lock.
        Returns the bytes freed (0 if it vanished); ReportBusyError if locked."""
        fd = _fs.lock_file(d.locks, _lock_name(report_id), wait=False, dir_path=self.path(LOCKS_DIR),
                           what=f"report {report_id}")
        try:
            size = _fs.entry_size(d.reports, report_id)
            trash_name = f"{report_id}.{uuid.uuid4().hex[:12]}"
            try:
                _fs.rename_noreplace(d.reports, report_id, d.trash, trash_name)
            except FileNotFoundError:
                return 0
            _fs.fsync_fd(d.reports)
            _fs.remove_tree(d.trash, trash_name)
            _unlink_quietly(d.locks, _lock_name(report_id))
            return size
        finally:
            os.close(fd)

    def delete(self, report_id: str) -> None:
        """Remove one published report now (ReportBusyError if it is being uploaded or updated)."""
        if not _ID_RE.match(report_id):
            raise ReportNotFoundError(f"{report_id!r} is not a report id")
        with self._dirs() as d:
            if not os.path.lexists(self.path(REPORTS_DIR, report_id)):
                raise ReportNotFoundError(f"no report {report_id} in {self.directory}")
            self._remove_report(d, report_id)

    def prune(self, *, max_reports: int | None = None, max_bytes: int | None = None,
              keep: Iterable[str] = ()) -> PruneResult:
        """Clean up and enforce the limits; returns the removed ids.

        Always: staging areas whose writer died (its lock is free), half-removed
        reports in ``trash/``, stray temporary files, lock files of nothing.
        With limits (arguments, else the database's): the oldest reports beyond
        ``max_reports`` / ``max_bytes`` go, uploaded and rejected ones first,
        then pending and unreadable ones, oldest first; a locked report (being
        written, updated or uploaded) and the ids in ``keep`` are skipped.
        """
        max_reports = self.max_reports if max_reports is None else max_reports
        max_bytes = self.max_bytes if max_bytes is None else max_bytes
        result = PruneResult()
        keep_ids = set(keep)
        with self._dirs() as d:
            self._clean_trash(d)
            self._clean_staging(d, result)
            self._clean_locks(d)
            if max_reports is not None or max_bytes is not None:
                # One pruner at a time counts and removes: two counting at once would both remove the
                # excess and leave fewer reports than the limits require.
                fd = _fs.lock_file(d.locks, PRUNE_LOCK_NAME, wait=PRUNE_LOCK_WAIT, dir_path=self.path(LOCKS_DIR),
                                   what="the database's prune lock")
                try:
                    self._enforce_limits(d, max_reports, max_bytes, keep_ids, result)
                finally:
                    os.close(fd)
        return result

    def _clean_trash(self, d: _Dirs) -> None:
        for name in os.listdir(d.trash):
            try:
                _fs.remove_tree(d.trash, name)
            except OSError:
                pass

    def _clean_staging(self, d: _Dirs, result: PruneResult) -> None:
        for name in os.listdir(d.staging):
            if not _ID_RE.match(name):
                if _fs.is_temp_name(name):
                    _unlink_quietly(d.staging, name)
                continue
            try:
                fd = _fs.lock_file(d.locks, _lock_name(name), wait=False, dir_path=self.path(LOCKS_DIR))
            except ReportBusyError:
                continue  # its writer is alive
            try:
                if not os.path.lexists(self.path(STAGING_DIR, name)):
                    continue  # published or discarded meanwhile
                _fs.remove_tree(d.staging, name)
                if not os.path.lexists(self.path(REPORTS_DIR, name)):
                    _unlink_quietly(d.locks, _lock_name(name))
                result.append(name)
                result.abandoned.append(name)
            finally:
                os.close(fd)

    def _clean_locks(self, d: _Dirs) -> None:
        for name in os.listdir(d.locks):
            if _fs.is_temp_name(name):
                _unlink_quietly(d.locks, name)
                continue
            if not name.endswith(".lock") or not _ID_RE.match(name[:-5]):
                continue
            report_id = name[:-5]
            if os.path.lexists(self.path(REPORTS_DIR, report_id)) or os.path.lexists(self.path(STAGING_DIR, report_id)):
                continue
            try:
                fd = _fs.lock_file(d.locks, name, wait=False, dir_path=self.path(LOCKS_DIR))
            except (ReportBusyError, DatabasePermissionError):
                continue
            try:
                if not (os.path.lexists(self.path(REPORTS_DIR, report_id))
                        or os.path.lexists(self.path(STAGING_DIR, report_id))):
                    _unlink_quietly(d.locks, name)
            finally:
                os.close(fd)

    def _enforce_limits(self, d: _Dirs, max_reports: int | None, max_bytes: int | None, keep: set[str],
                        result: PruneResult) -> None:
        entries: list[tuple[int, float, str, int]] = []  # (group, time, id, bytes)
        for name in os.listdir(d.reports):
            if not _ID_RE.match(name):
                continue
            loaded = self._load(d, name)
            if loaded is None:
                continue
            if isinstance(loaded, Report):
                group = 0 if loaded.state in ("uploaded", "rejected") else 1
                entries.append((group, loaded._sort_time, name, loaded.size_on_disk))
            else:
                result.problems.append(loaded)
                try:
                    st = os.stat(name, dir_fd=d.reports, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                    entries.append((1, st.st_mtime, name, _fs.entry_size(d.reports, name)))
        count = len(entries)
        total = sum(e[3] for e in entries)
        for group, _, report_id, size in sorted(entries):
            over_count = max_reports is not None and count > max_reports
            over_bytes = max_bytes is not None and total > max_bytes
            if not (over_count or over_bytes):
                break
            if report_id in keep:
                continue
            try:
                freed = self._remove_report(d, report_id)
            except ReportBusyError:
                result.busy.append(report_id)
                continue
            count -= 1
            total -= size
            result.removed_bytes += freed
            result.append(report_id)
            result.reports.append(report_id)

    def stats(self) -> dict[str, Any]:
        """Counts per state, bytes on disk, problems."""
        scan = self.scan()
        counts = {state: 0 for state in STATES}
        for report in scan.reports:
            counts[report.state] += 1
        return {"reports": len(scan.reports), "bytes": sum(r.size_on_disk for r in scan.reports),
                "problems": len(scan.problems), **counts}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, DatabasePermissionError):
        return exc.strerror
    return str(exc)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _soft_problems(md: dict[str, Any]) -> list[str]:
    """What a hand edit may have broken without making the report unusable."""
    problems = []
    if not isinstance(md.get("time"), str):
        problems.append("time is missing")
    else:
        try:
            parse_time(md["time"])
        except MetadataError as exc:
            problems.append(str(exc))
    if not _is_int(md.get("dump_bytes")) or md["dump_bytes"] <= 0:
        problems.append("dump_bytes is missing or not a positive integer")
    if not isinstance(md.get("sha256"), str) or not _SHA256_RE.match(md["sha256"]):
        problems.append("sha256 is missing or not 64 lowercase hex digits")
    annotations = md.get("annotations")
    if annotations is not None:
        try:
            _check_annotations(annotations)
        except MetadataError as exc:
            problems.append(str(exc))
    if not isinstance(md.get("upload", {}), dict):
        problems.append("upload is not an object")
    return problems


# --------------------------------------------------------------------------
# Pending reports and locks
# --------------------------------------------------------------------------


class PendingReport:
    """A report being written: its id is reserved and ``dump_path`` is where the minidump goes.

    Invisible to readers until :meth:`publish`.  As a context manager it is
    discarded on exit unless it was published.  If the writing process dies,
    the next :meth:`Database.prune` removes what it left.
    """

    def __init__(self, database: Database, report_id: str, lock_fd: int, metadata: dict[str, Any]) -> None:
        self._db = database
        self.id = report_id
        self.database = database.directory
        self.directory = database.path(STAGING_DIR, report_id)
        self.dump_path = os.path.join(self.directory, DUMP_NAME)
        self._metadata = metadata
        self._lock_fd: int | None = lock_fd
        self._creator = os.getpid()
        self.report: Report | None = None
        # Dropped without publish or discard: release the lock (the staging area is pruned later).
        self._finalizer = weakref.finalize(self, _close_quietly, lock_fd)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @property
    def state(self) -> str:
        return "published" if self.report is not None else ("open" if self._lock_fd is not None else "discarded")

    def __repr__(self) -> str:
        return f"<PendingReport {self.id} {self.state}>"

    def __enter__(self) -> PendingReport:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.report is None and self._lock_fd is not None and os.getpid() == self._creator:
            self.discard()

    def _check_open(self) -> int:
        if self.report is not None:
            raise ReportStateError(f"report {self.id} is already published")
        if self._lock_fd is None:
            raise ReportStateError(f"report {self.id} was discarded")
        return self._lock_fd

    def publish(self, **metadata: Any) -> Report:
        """Make the report visible, atomically; returns it.

        Reads the dump (a regular file starting with ``MDMP``, not a symlink) to
        compute ``dump_bytes`` and ``sha256``, writes the metadata (0600, temp +
        rename, fsync), renames the staging directory into ``reports/``, then
        prunes to the database's limits (never removing this report).  On an
        error nothing is published and the pending report stays usable.
        """
        self._check_open()
        md = dict(self._metadata)
        md.update(validate_metadata(metadata))
        db = self._db
        with db._dirs() as d:
            try:
                sfd = os.open(self.id, _fs.DIR_FLAGS, dir_fd=d.staging)
            except FileNotFoundError:
                raise ReportStateError(f"the staging directory of report {self.id} is gone "
                                       f"(removed by hand, or by a prune that thought its writer dead)") from None
            try:
                dump_bytes, sha256 = _hash_dump(sfd, self.dump_path)
                for name in os.listdir(sfd):
                    if name != DUMP_NAME:  # a sink's leftover temporary, a stale metadata temp
                        _fs.remove_tree(sfd, name)
                md.update(id=self.id, format=REPORT_FORMAT, state="pending", dump_bytes=dump_bytes, sha256=sha256,
                          mdstream_version=_mdstream_version(), upload=_new_upload_section())
                md.setdefault("time", format_time())
                md.setdefault("annotations", {})
                for key in ("pid", "executable", "signal", "signal_name", "code", "address", "crashing_thread"):
                    md.setdefault(key, None)
                if not md.get("python_tracebacks"):
                    md.pop("python_tracebacks", None)
                _fs.write_file_atomic(sfd, METADATA_NAME, _encode(md))
            finally:
                os.close(sfd)
            _fs.rename_noreplace(d.staging, self.id, d.reports, self.id)
            _fs.fsync_fd(d.reports)
            _fs.fsync_fd(d.staging)
        size = dump_bytes + len(_encode(md))
        self.report = Report(db.directory, self.id, _ordered(md), size_on_disk=size,
                             sort_time=parse_time(md["time"]).timestamp())
        self._release()
        if db.max_reports is not None or db.max_bytes is not None:
            try:
                db.prune(keep=[self.id])
            except OSError:
                pass  # the report is published; a failed clean-up must not undo that
        return self.report

    def discard(self) -> None:
        """Remove the staging area and give up the id (idempotent; nothing after publish)."""
        if self._lock_fd is None or self.report is not None:
            return
        with self._db._dirs() as d:
            _fs.remove_tree(d.staging, self.id)
            _fs.fsync_fd(d.staging)
            _unlink_quietly(d.locks, _lock_name(self.id))
        self._release()

    def _release(self) -> None:
        self._lock_fd = None
        self._finalizer()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _hash_dump(staging_fd: int, where: str) -> tuple[int, str]:
    try:
        fd = os.open(DUMP_NAME, _fs.READ_FLAGS, dir_fd=staging_fd)
    except FileNotFoundError:
        raise DumpMissingError(f"no minidump at {where}: write it before publishing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidDumpError(f"{where} is a symlink; a report's dump must be a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidDumpError(f"{where} is not a regular file")
        if st.st_size == 0:
            raise InvalidDumpError(f"{where} is empty")
        if st.st_uid != os.geteuid():
            raise DatabasePermissionError(f"{where} is owned by uid {st.st_uid}, not by this user")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        digest = hashlib.sha256()
        total = 0
        first = b""
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            if total < 4:
                first = (first + block)[:4]
            digest.update(block)
            total += len(block)
        if first != b"MDMP":
            raise InvalidDumpError(f"{where} is not a minidump (it starts with {first!r}, not b'MDMP')")
        os.fsync(fd)
        return total, digest.hexdigest()
    finally:
        os.close(fd)


class ReportLock:
    """The lock of one published report (from :meth:`Database.lock`): while held,
    no other process writes, uploads or removes it."""

    def __init__(self, database: Database, report_id: str, fd: int) -> None:
        self._db = database
        self.id = report_id
        self._fd: int | None = fd
        self._finalizer = weakref.finalize(self, _close_quietly, fd)

    def __enter__(self) -> ReportLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def report(self) -> Report:
        """The report as it is on disk now."""
        if self._fd is None:
            raise ReportStateError(f"the lock of report {self.id} was released")
        return self._db.get(self.id)

    def update(self, changes: Mapping[str, Any]) -> Report:
        """Change top-level metadata keys (``state``, ``upload``, extra keys...) atomically; returns the report.

        ``id``, ``format``, ``dump_bytes`` and ``sha256`` cannot change; ``state``
        must be one of STATES; an ``upload`` mapping is merged into the
        existing upload section.
        """
        current = self.report
        md = dict(current.metadata)
        for key, value in changes.items():
            if key in ("id", "format", "dump_bytes", "sha256"):
                raise MetadataError(f"{key} of a published report cannot change")
            if key == "state":
                if value not in STATES:
                    raise MetadataError(f"state must be one of {', '.join(STATES)}, not {value!r}")
                md[key] = value
            elif key == "upload":
                if not isinstance(value, Mapping):
                    raise MetadataError("upload must be a mapping")
                section = current.upload
                section.update(value)
                _json_safe("upload", section)
                md["upload"] = section
            else:
                md.update(validate_metadata({key: value}, allow_reserved=key == "mdstream_version"))
        with self._db._dirs() as d:
            rfd = os.open(self.id, _fs.DIR_FLAGS, dir_fd=d.reports)
            try:
                _fs.write_file_atomic(rfd, METADATA_NAME, _encode(md))
            finally:
                os.close(rfd)
        return self._db.get(self.id)

    def release(self) -> None:
        if self._fd is not None:
            self._fd = None
            self._finalizer()
