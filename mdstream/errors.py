"""Exceptions raised by mdstream.

Every failure the C core reports maps to one specific class here, so callers
can tell a timeout from an aborted dump from a corrupt ring without parsing
messages.  Every error mdstream raises for bad input (a file that is not a
minidump or a trace, a bad schedule, a missing or unusable input file, an
output that already exists, a dump option the system cannot honour) derives
from :class:`MdstreamError` *and* keeps its natural built-in base, so both
``except MdstreamError`` and ``except ValueError`` / ``except FileNotFoundError``
work.  The format modules re-export their own (``mdstream.minidump.NotAMinidumpError``
is ``mdstream.errors.NotAMinidumpError``).
"""

from __future__ import annotations

__all__ = [
    "MdstreamError",
    "RingError",
    "RingFormatError",
    "RingCorruptError",
    "RingPermissionError",
    "RingNotFoundError",
    "RingExistsError",
    "RingTimeoutError",
    "RingAbortedError",
    "RingFinishedError",
    "RingBusyError",
    "RingClosedError",
    "RingUsedError",
    "OutputPathError",
    "PeerGoneError",
    "ProducerGoneError",
    "ConsumerGoneError",
    "DumpFailedError",
    "LinuxDumpError",
    "ProcessNotFoundError",
    "PtracePermissionError",
    "ProcessExitedError",
    "ZombieProcessError",
    "SnapshotTimeoutError",
    "UnsupportedPlatformError",
    "DumpSpilledError",
    "SpillFormatError",
    "NotAMinidumpError",
    "MinidumpFormatError",
    "TraceFormatError",
    "ScheduleError",
    "WritePlanError",
    "DumpTypeError",
    "DumpOptionError",
    "InputFileError",
    "InputNotFoundError",
    "InputIsADirectoryError",
    "NotARegularFileError",
    "OutputExistsError",
    "UnsafePathError",
    "SPILL_ABORT_CODE",
    "aborted_error",
]

#: Abort code a producer leaves in the ring when it spilled the rest of the dump
#: to its fallback file (customer bit set, severity success: the dump is not lost).
SPILL_ABORT_CODE = 0x20D50001
#: The abort reason of a spilled ring starts with this, followed by the spill file's path.
SPILL_REASON_PREFIX = "dump spilled to "


class MdstreamError(Exception):
    """Base class of every mdstream error."""


class RingError(MdstreamError):
    """A ring operation failed."""


class RingFormatError(RingError, ValueError):
    """The file or shared-memory object is not a valid ring (magic, version, sizes, truncation)."""


class RingCorruptError(RingError):
    """A position or record in a live ring violates the format (a broken or hostile producer)."""


class RingPermissionError(RingError, PermissionError):
    """The ring is not private to this user, or is reached through a symlink."""


class RingNotFoundError(RingError, FileNotFoundError):
    """No ring exists under that name or path."""


class RingExistsError(RingError, FileExistsError):
    """A ring (or any file) already exists under that name or path."""


class RingTimeoutError(RingError, TimeoutError):
    """A wait for space or data passed its deadline."""


class RingAbortedError(RingError):
    """The ring was aborted; ``code`` is the HRESULT-like code and ``reason`` the text."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code & 0xFFFFFFFF
        self.reason = reason
        super().__init__(f"ring aborted (code 0x{self.code:08X}): {reason}")

    def __reduce__(self):  # keep both fields across pickling (multiprocessing)
        return (type(self), (self.code, self.reason))


class DumpSpilledError(RingAbortedError):
    """The producer stopped streaming and wrote the rest of the dump to its spill file.

    Raised on the consumer side when a stalled or vanished consumer made the
    callback fall back to its spill file (see ``docs/reliability.md``). Nothing
    is lost: ``spill_path`` names the file (``None`` if the reason was
    truncated), which ``mdstream spill inspect`` / ``mdstream spill finish`` read.
    """

    @property
    def spill_path(self) -> str | None:
        if not self.reason.startswith(SPILL_REASON_PREFIX):
            return None
        path = self.reason[len(SPILL_REASON_PREFIX):]
        return path or None


def aborted_error(code: int, reason: str) -> RingAbortedError:
    """The exception for a ring aborted with ``code`` and ``reason``."""
    if code & 0xFFFFFFFF == SPILL_ABORT_CODE:
        return DumpSpilledError(code, reason)
    return RingAbortedError(code, reason)


class SpillFormatError(MdstreamError, ValueError):
    """A spill manifest (``*.mdspill``) is not valid: magic, version, sizes or extents out of bounds."""


# ---- bad input files and data ---------------------------------------------------


class NotAMinidumpError(MdstreamError, ValueError):
    """The file is not a minidump (wrong signature, or shorter than the 32-byte header)."""


class MinidumpFormatError(MdstreamError, ValueError):
    """The file claims to be a minidump but its stream directory does not fit in it."""


class TraceFormatError(MdstreamError, ValueError):
    """An MDTRACE1 trace is malformed (``docs/trace-format.md``).

    Attributes:
        record: index of the offending record, or ``None`` for the file header.
        byte: file position of the offending record (or of the header).
    """

    def __init__(self, message: str, *, record: int | None = None, byte: int = 0) -> None:
        super().__init__(message)
        self.record = record
        self.byte = byte

    def __reduce__(self):  # keep record and byte across pickling
        return (_rebuild_trace_error, (str(self), self.record, self.byte))


def _rebuild_trace_error(message: str, record: int | None, byte: int) -> TraceFormatError:
    return TraceFormatError(message, record=record, byte=byte)


class ScheduleError(MdstreamError, ValueError):
    """A schedule or synthetic plan was asked for with bad parameters
    (unknown name, ``chunk <= 0``, a missing or nonsensical size, ...)."""


class WritePlanError(MdstreamError, ValueError):
    """A :class:`~mdstream.plan.WritePlan` is inconsistent (types, shapes, a write outside its buffer,
    a destination past 2**63, a size that does not match its writes)."""


class DumpTypeError(MdstreamError, ValueError):
    """A ``MINIDUMP_TYPE`` given by name or number is not valid (unknown flag name, bits out of range)."""


class DumpOptionError(MdstreamError, ValueError):
    """A dump option that is invalid (a negative or NaN deadline, ``spill_after`` without a spill) or
    that this system's writer cannot honour (a ``MINIDUMP_TYPE`` flag the Linux writer does not
    implement, a Linux-only option on Windows)."""


class InputFileError(MdstreamError, OSError):
    """An input file cannot be used: missing, a directory, not a regular file, or changed while read.

    Built like an ``OSError``: ``InputFileError(errno, message, filename)``; ``filename``
    is the path as the caller gave it.
    """

    def __str__(self) -> str:  # the message names the file already: no "[Errno N]" prefix
        return self.strerror or super().__str__()


class InputNotFoundError(InputFileError, FileNotFoundError):
    """The input file does not exist."""


class InputIsADirectoryError(InputFileError, IsADirectoryError):
    """The input names a directory, not a file."""


class NotARegularFileError(InputFileError):
    """The input is a pipe, a socket or a device: mdstream reads dumps, traces and spills
    from regular files only (a pipe could be read only once, a device never ends)."""


class OutputExistsError(MdstreamError, FileExistsError):
    """The output already exists and the caller did not ask to replace it (``overwrite=True``,
    the CLI's ``--force``): a dump you already have is worth more than the new one."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class UnsafePathError(MdstreamError, PermissionError):
    """A path is a symbolic link (or not a regular file) where mdstream refuses to follow one."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class RingFinishedError(RingError):
    """The ring is already finished: nothing more can be written (or read)."""


class RingBusyError(RingError):
    """The producer or consumer role is already held by another handle (or thread), or the ring is still in use."""


class RingClosedError(RingError, ValueError):
    """The ring handle is closed, being closed by another thread, or was inherited across ``fork()``."""


class RingUsedError(RingError):
    """The ring already carries a dump: a ring carries exactly one; use a new ring."""


class OutputPathError(MdstreamError, ValueError):
    """An output path a sink cannot write: empty, a directory, a symlink, a device or FIFO for a file sink."""


class PeerGoneError(RingError):
    """The process on the other side of the ring died or detached."""


class ProducerGoneError(PeerGoneError):
    """The producer died or closed the ring without finishing it."""


class ConsumerGoneError(PeerGoneError):
    """The consumer died or closed the ring."""


class DumpFailedError(MdstreamError):
    """A dump did not complete: the callback or the writer reported a failure.

    ``hresult`` is the status DbgHelp saw (unsigned 32-bit), ``reason`` the text,
    ``callback_type`` the callback that failed (if known).
    """

    def __init__(self, message: str, hresult: int = 0, reason: str = "", callback_type: int | None = None) -> None:
        super().__init__(message)
        self.hresult = hresult & 0xFFFFFFFF
        self.reason = reason
        self.callback_type = callback_type


class UnsupportedPlatformError(MdstreamError, NotImplementedError):
    """The function needs another system: ``mdstream.windows.write_dump`` off Windows,
    ``mdstream.linux.write_dump`` off Linux x86-64."""


class LinuxDumpError(MdstreamError):
    """Dumping a live Linux process failed; ``sys_errno`` is the system error when there was one."""

    def __init__(self, message: str, sys_errno: int = 0) -> None:
        super().__init__(message)
        self.sys_errno = sys_errno

    def __reduce__(self):  # keep sys_errno across pickling
        return (type(self), (str(self), self.sys_errno))


class ProcessNotFoundError(LinuxDumpError, ProcessLookupError):
    """No process has that pid."""


class PtracePermissionError(LinuxDumpError, PermissionError):
    """ptrace refused to attach (other user, ptrace_scope, no CAP_SYS_PTRACE, or already traced)."""


class ProcessExitedError(LinuxDumpError):
    """The process exited while it was being snapshotted."""


class ZombieProcessError(LinuxDumpError):
    """The process has exited and is waiting to be reaped: nothing is left to dump."""


class SnapshotTimeoutError(LinuxDumpError, TimeoutError):
    """Some threads did not stop before the deadline (the process was resumed)."""


_LINUX_DUMP_ERRORS: dict[int, type[MdstreamError]] = {
    3: ProcessNotFoundError,
    4: PtracePermissionError,
    5: ProcessExitedError,
    6: ZombieProcessError,
    7: SnapshotTimeoutError,
}


def linux_dump_error(status: int, sys_errno: int, message: str) -> BaseException:
    """The exception for a status of the Linux writer's C core (``MDL_ERR_*``; used by ``mdstream._linux``)."""
    if status == 1:
        return ValueError(message)
    if status == 8:
        return UnsupportedPlatformError(message)
    cls = _LINUX_DUMP_ERRORS.get(status, LinuxDumpError)
    return cls(message, sys_errno)  # type: ignore[call-arg]
