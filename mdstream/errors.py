"""Exceptions raised by mdstream.

Every failure the C core reports maps to one specific class here, so callers
can tell a timeout from an aborted dump from a corrupt ring without parsing
messages.
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
    "DumpSpilledError",
    "SpillFormatError",
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
