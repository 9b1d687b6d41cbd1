"""Exceptions of the crash database and the uploader.

Each keeps the natural built-in base (``LookupError`` for an unknown id,
``PermissionError`` for an unsafe directory, ...) next to
:class:`mdstream.errors.MdstreamError`, so callers can catch either.
"""

from __future__ import annotations

from mdstream.errors import MdstreamError

__all__ = [
    "ReportsError",
    "DatabaseNotFoundError",
    "NotADatabaseError",
    "DatabasePermissionError",
    "UnsupportedPlatformError",
    "ReportNotFoundError",
    "AmbiguousReportIdError",
    "CorruptReportError",
    "MetadataError",
    "DumpMissingError",
    "InvalidDumpError",
    "ReportBusyError",
    "ReportStateError",
    "UploadError",
    "UploadConfigError",
    "ReportTooLargeError",
]


class ReportsError(MdstreamError):
    """Base class of the crash database's and the uploader's errors."""


class DatabaseNotFoundError(ReportsError, FileNotFoundError):
    """No crash database exists at that directory (and it was not to be created)."""


class NotADatabaseError(ReportsError, ValueError):
    """The directory holds other files and no crash-database marker: it is not a crash database.

    Refusing protects a user's files from ``mdstream reports prune ~``.
    """


class DatabasePermissionError(ReportsError, PermissionError):
    """The database (or a directory or file inside it) is not private to this user, or is a symlink."""


class UnsupportedPlatformError(ReportsError, NotImplementedError):
    """The crash database needs POSIX file locks (``fcntl.flock``) and ``*at`` system calls."""


class ReportNotFoundError(ReportsError, LookupError):
    """No published report has that id."""


class AmbiguousReportIdError(ReportsError, LookupError):
    """An id prefix matches more than one report."""


class CorruptReportError(ReportsError, ValueError):
    """A report's metadata file cannot be read or does not describe the report (hand-edited or damaged)."""


class MetadataError(ReportsError, ValueError):
    """Metadata given for a report is invalid (wrong type, reserved key, bad time, not JSON-serializable)."""


class DumpMissingError(ReportsError, FileNotFoundError):
    """``publish()`` found no minidump at the pending report's ``dump_path``."""


class InvalidDumpError(ReportsError, ValueError):
    """The file at ``dump_path`` is empty, not a regular file, or does not start with ``MDMP``."""


class ReportBusyError(ReportsError, BlockingIOError):
    """Another process (or handle) holds the report's lock: it is being written, uploaded or removed."""


class ReportStateError(ReportsError, RuntimeError):
    """The operation does not fit the report's state (publish twice, upload a pending report that is not on disk)."""


class UploadError(ReportsError):
    """An upload could not be prepared or sent."""


class UploadConfigError(UploadError, ValueError):
    """The upload's URL, DSN, protocol or options are invalid."""


class ReportTooLargeError(UploadError, ValueError):
    """The report exceeds the collector's size limit even after compression."""
