"""The crash database and uploading (``docs/crash-reporting.md``).

>>> from mdstream import reports
>>> db = reports.Database()                         # ~/.local/share/mdstream/crashes
>>> pending = db.new_report(pid=1234, signal=11)
>>> mdstream.linux.write_dump(1234, pending.dump_path)  # or FileSink(pending.dump_path)
>>> report = pending.publish(crashing_thread=1234)
>>> reports.upload(db, url="https://crash.example.com/submit", protocol="breakpad")
"""

from __future__ import annotations

from mdstream.reports._database import (
    DATABASE_FORMAT,
    REPORT_FORMAT,
    STATES,
    Database,
    PendingReport,
    Problem,
    PruneResult,
    Report,
    ReportLock,
    ScanResult,
    default_directory,
    format_time,
    parse_time,
    validate_metadata,
)
from mdstream.reports._upload import (
    COMPRESSIONS,
    OUTCOMES,
    PROTOCOLS,
    PreparedUpload,
    UploadResult,
    Uploader,
    redact_url,
    sentry_endpoint,
    upload,
    upload_in_background,
    upload_report,
)
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
    ReportsError,
    ReportStateError,
    ReportTooLargeError,
    UnsupportedPlatformError,
    UploadConfigError,
    UploadError,
)

__all__ = [
    "AmbiguousReportIdError",
    "COMPRESSIONS",
    "OUTCOMES",
    "PROTOCOLS",
    "PreparedUpload",
    "UploadResult",
    "Uploader",
    "redact_url",
    "sentry_endpoint",
    "upload",
    "upload_in_background",
    "upload_report",
    "CorruptReportError",
    "DATABASE_FORMAT",
    "Database",
    "DatabaseNotFoundError",
    "DatabasePermissionError",
    "DumpMissingError",
    "InvalidDumpError",
    "MetadataError",
    "NotADatabaseError",
    "PendingReport",
    "Problem",
    "PruneResult",
    "REPORT_FORMAT",
    "Report",
    "ReportBusyError",
    "ReportLock",
    "ReportNotFoundError",
    "ReportStateError",
    "ReportTooLargeError",
    "ReportsError",
    "STATES",
    "ScanResult",
    "UnsupportedPlatformError",
    "UploadConfigError",
    "UploadError",
    "default_directory",
    "format_time",
    "parse_time",
    "validate_metadata",
]
