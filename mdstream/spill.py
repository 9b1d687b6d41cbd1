"""Spill files: read their ``.mdspill`` manifest, report on them, turn them into the dump.

When the consumer of a ring dies or stalls, the dump callback stops streaming
and writes the rest of the dump straight into a *spill file* ``S`` at the
dump's offsets, described by the manifest ``S + ".mdspill"`` (binary format
and semantics: ``docs/spill-format.md``).  If the consumer's output was copied
into ``S`` first (flag ``BASE_COMPLETE``), ``S`` is the dump; otherwise the
manifest's extents say which bytes of ``S`` are authoritative and
:func:`finish` overlays them onto the consumer's partial output.

Everything read here may come from a crashed or hostile writer: the manifest
is bounds-checked before anything is allocated, files are opened without
following symlinks, and outputs are written privately (0600) beside their
final name and renamed into place.  Large files are streamed in chunks, never
read whole.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np
import numpy.typing as npt

from mdstream._private_files import check_new_output, create_private_temp, fsync_directory, publish, temp_name
from mdstream.errors import (
    InputIsADirectoryError,
    InputNotFoundError,
    MdstreamError,
    SpillFormatError,
    UnsafePathError,
)

__all__ = [
    "BASE_PATH_SIZE",
    "EXTENT_SIZE",
    "BASE_SUFFIX",
    "FLAG_BASE_COMPLETE",
    "FLAG_BASE_COPY",
    "FLAG_FAILED",
    "FLAG_FINISHED",
    "HEADER_SIZE",
    "MAGIC",
    "MANIFEST_SUFFIX",
    "MAX_EXTENTS",
    "REASON_SIZE",
    "TRIGGERS",
    "VERSION",
    "SpillError",
    "SpillFormatError",
    "SpillManifest",
    "finish",
    "inspect",
    "manifest_path",
    "merge_extents",
    "pack_manifest",
    "parse_manifest",
    "read_manifest",
    "write_manifest",
]

PathLike = Union[str, "os.PathLike[str]"]
Extents = npt.NDArray[np.uint64]

MANIFEST_SUFFIX = ".mdspill"
BASE_SUFFIX = ".mdspill-base"
MAGIC = b"MDSPILL1"
VERSION = 2
_READABLE_VERSIONS = (1, 2)
HEADER_SIZE = 4096
EXTENT_SIZE = 16
BASE_PATH_SIZE = 1024
REASON_SIZE = 256

FLAG_FINISHED = 0x1
FLAG_BASE_COMPLETE = 0x2
FLAG_FAILED = 0x4
FLAG_BASE_COPY = 0x8
_FLAG_NAMES = ((FLAG_FINISHED, "FINISHED"), (FLAG_BASE_COMPLETE, "BASE_COMPLETE"), (FLAG_FAILED, "FAILED"),
               (FLAG_BASE_COPY, "BASE_COPY"))
_KNOWN_FLAGS = FLAG_FINISHED | FLAG_BASE_COMPLETE | FLAG_FAILED | FLAG_BASE_COPY

#: ``trigger`` values: why the callback stopped using the ring.
TRIGGERS = {1: "consumer gone", 2: "consumer stalled", 3: "ring aborted"}

#: Upper bound on ``extent_count`` (a 4 GiB extent table), checked on top of
#: the file size so that a sparse file claiming a huge table is refused before
#: anything is allocated.
MAX_EXTENTS = 1 << 28

# Offsets 0..112: magic, version, header_size, flags, trigger, ten u64
# (dump_size .. spilled_unix_ns), producer_pid, reserved.
_FIXED = struct.Struct("<8sIIIIQQQQQQQQQQII")
_BASE_PATH_AT = _FIXED.size                      # 112
_REASON_AT = _BASE_PATH_AT + BASE_PATH_SIZE      # 1136
_V2 = struct.Struct("<QQQ")                      # base_length, base_copied, dump_id (version 2)
_V2_AT = _REASON_AT + REASON_SIZE                # 1392
_ZERO_AT_V1 = _V2_AT
_ZERO_AT = _V2_AT + _V2.size                     # 1416
_U64_MAX = (1 << 64) - 1

#: Copy granularity of :func:`finish` (and its output write buffer).
CHUNK = 1 << 20

_OPEN_READ = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
              | getattr(os, "O_NONBLOCK", 0))  # O_NONBLOCK: a FIFO planted at the path must not hang the open


class SpillError(MdstreamError):
    """A spill cannot be finished as asked: the manifest is not FINISHED, it is
    FAILED, the consumer's partial output (``base``) is missing, or a file
    changed while it was being copied."""


def _no_extents() -> Extents:
    return _frozen_extents(np.zeros((0, 2), dtype=np.uint64))


def _frozen_extents(value: Any) -> Extents:
    if isinstance(value, np.ndarray) and value.dtype == np.uint64 and not value.flags.writeable:
        arr = value
    else:
        # A copy (never the caller's array), so freezing it affects nobody else.
        arr = np.array(value, dtype=np.uint64)
        if arr.size == 0:
            arr = arr.reshape(0, 2)
        arr.setflags(write=False)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"extents must have shape (n, 2) of (offset, length), not {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False, kw_only=True)
class SpillManifest:
    """The contents of a ``.mdspill`` manifest (version 2; version 1 is still read), every header field by name.

    ``extents`` is a read-only numpy array of shape ``(extent_count, 2)``,
    dtype ``uint64``: one ``(offset, length)`` row per extent, in the order
    the producer wrote them (they may overlap and are not sorted; see
    :func:`merge_extents`).  A list of ``(offset, length)`` tuples is accepted
    when constructing one.  ``extent_count`` is filled from ``extents`` when
    left ``None`` and must match it otherwise.  ``base_path`` and ``reason``
    are the decoded strings (without the NUL).
    """

    magic: bytes = MAGIC
    version: int = VERSION
    header_size: int = HEADER_SIZE
    flags: int = 0
    trigger: int = 1
    dump_size: int = 0
    base_bytes: int = 0
    resume_pos: int = 0
    ring_end_pos: int = 0
    replayed_records: int = 0
    replayed_bytes: int = 0
    direct_writes: int = 0
    direct_bytes: int = 0
    extent_count: int | None = None
    spilled_unix_ns: int = 0
    producer_pid: int = 0
    reserved: int = 0
    base_path: str = ""
    reason: str = ""
    base_length: int = 0
    base_copied: int = 0
    dump_id: int = 0
    extents: Extents = field(default_factory=_no_extents)

    def __post_init__(self) -> None:
        extents = _frozen_extents(self.extents)
        object.__setattr__(self, "extents", extents)
        if self.extent_count is None:
            object.__setattr__(self, "extent_count", int(extents.shape[0]))
        elif self.extent_count != extents.shape[0]:
            raise ValueError(f"extent_count {self.extent_count} does not match {extents.shape[0]} extents")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpillManifest):
            return NotImplemented
        return (self._scalars() == other._scalars()
                and bool(np.array_equal(self.extents, other.extents)))

    __hash__ = None  # type: ignore[assignment]  # equal manifests may hold different arrays

    def _scalars(self) -> tuple[Any, ...]:
        return (self.magic, self.version, self.header_size, self.flags, self.trigger, self.dump_size,
                self.base_bytes, self.resume_pos, self.ring_end_pos, self.replayed_records, self.replayed_bytes,
                self.direct_writes, self.direct_bytes, self.extent_count, self.spilled_unix_ns, self.producer_pid,
                self.reserved, self.base_path, self.reason, self.base_length, self.base_copied, self.dump_id)

    @property
    def finished(self) -> bool:
        """IoFinish was reached: every write of the dump is in the spill file."""
        return bool(self.flags & FLAG_FINISHED)

    @property
    def base_complete(self) -> bool:
        """The spill holds the consumer's released part too: nothing was released, or it was copied in full.

        (Version 1: into the spill file itself; version 2: into the base copy
        ``SPILL.mdspill-base`` when :attr:`has_base_copy`.)
        """
        return bool(self.flags & FLAG_BASE_COMPLETE)

    @property
    def has_base_copy(self) -> bool:
        """Version 2: the producer copied the consumer's part into ``SPILL.mdspill-base``."""
        return bool(self.flags & FLAG_BASE_COPY)

    @property
    def failed(self) -> bool:
        """A spill write failed (``reason`` says which)."""
        return bool(self.flags & FLAG_FAILED)

    @property
    def complete(self) -> bool:
        """``finished and base_complete``: the spill (with its base copy, if any) is the whole dump.

        (A FAILED spill is never usable; :func:`finish` checks that separately.)
        """
        return self.finished and self.base_complete

    @property
    def flag_names(self) -> list[str]:
        """``["FINISHED", "BASE_COMPLETE"]`` and so on."""
        return [name for bit, name in _FLAG_NAMES if self.flags & bit]

    @property
    def trigger_name(self) -> str:
        return TRIGGERS.get(self.trigger, f"unknown ({self.trigger})")

    def to_dict(self) -> dict[str, Any]:
        """Every header field, JSON-ready (the extents themselves are left out: there may be millions)."""
        return {
            "magic": self.magic.decode("latin-1"),
            "version": self.version,
            "header_size": self.header_size,
            "flags": self.flags,
            "flag_names": self.flag_names,
            "finished": self.finished,
            "base_complete": self.base_complete,
            "failed": self.failed,
            "complete": self.complete,
            "trigger": self.trigger,
            "trigger_name": self.trigger_name,
            "dump_size": self.dump_size,
            "base_bytes": self.base_bytes,
            "resume_pos": self.resume_pos,
            "ring_end_pos": self.ring_end_pos,
            "replayed_records": self.replayed_records,
            "replayed_bytes": self.replayed_bytes,
            "direct_writes": self.direct_writes,
            "direct_bytes": self.direct_bytes,
            "extent_count": self.extent_count,
            "spilled_unix_ns": self.spilled_unix_ns,
            "producer_pid": self.producer_pid,
            "reserved": self.reserved,
            "base_path": self.base_path,
            "reason": self.reason,
            "has_base_copy": self.has_base_copy,
            "base_length": self.base_length,
            "base_copied": self.base_copied,
            "dump_id": f"{self.dump_id:016x}",
        }


# --------------------------------------------------------------------------
# Paths and opening
# --------------------------------------------------------------------------


def manifest_path(spill_path: PathLike) -> str:
    """The manifest of the spill file ``spill_path``: ``spill_path + ".mdspill"``."""
    return os.fspath(spill_path) + MANIFEST_SUFFIX


def _paths(path: PathLike) -> tuple[str, str]:
    """``(spill, manifest)`` for a spill path or a manifest path (one ending in ``.mdspill``)."""
    p = os.fspath(path)
    if p.endswith(MANIFEST_SUFFIX):
        return p[:-len(MANIFEST_SUFFIX)], p
    return p, p + MANIFEST_SUFFIX


def _open_regular(path: str, what: str, *, follow: bool = False) -> int:
    """Open ``path`` read-only; refuse a symlink (unless ``follow``) and anything but a regular file."""
    flags = _OPEN_READ if not follow else _OPEN_READ & ~getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputNotFoundError(errno.ENOENT, f"{path}: no such file (the {what})", path) from None
    except OSError as exc:
        # ELOOP (EMLINK on some BSDs) is what O_NOFOLLOW answers for a symlink.
        if not follow and exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise UnsafePathError(errno.ELOOP, f"{path}: the {what} is a symlink; refusing to follow it",
                                  path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputIsADirectoryError(errno.EISDIR, f"{path}: is a directory, not the {what}", path)
        if not stat.S_ISREG(mode):
            raise SpillFormatError(f"{path}: the {what} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        block = os.pread(fd, min(length, CHUNK), offset)
        if not block:
            break
        parts.append(block)
        length -= len(block)
        offset += len(block)
    return b"".join(parts)


# --------------------------------------------------------------------------
# The manifest format
# --------------------------------------------------------------------------


def _c_string(raw: bytes, field_name: str, name: str, *, path: bool = False) -> str:
    """A NUL-terminated field.  The C writer cuts texts at a byte limit (maybe
    inside a character) and paths are whatever bytes the system allows, so
    neither is rejected for its encoding: paths decode like ``os.fsdecode``
    (and encode back to the same bytes), texts with replacement characters."""
    end = raw.find(b"\0")
    if end < 0:
        raise SpillFormatError(f"{name}: {field_name} is not NUL-terminated within its {len(raw)} bytes")
    if path:
        return os.fsdecode(raw[:end])
    return raw[:end].decode("utf-8", "replace")


def _parse(read: Callable[[int, int], bytes], size: int, name: str) -> SpillManifest:
    """Validate and decode a manifest of ``size`` bytes; ``read(offset, n)`` returns up to n bytes."""
    head = read(0, HEADER_SIZE)
    if len(head) >= len(MAGIC) and head[:len(MAGIC)] != MAGIC:
        raise SpillFormatError(f"{name}: not a spill manifest: magic {head[:len(MAGIC)]!r} (expected {MAGIC!r})")
    if size < HEADER_SIZE or len(head) < HEADER_SIZE:
        got = min(size, len(head))
        what = "empty file" if got == 0 else f"{got} bytes"
        raise SpillFormatError(f"{name}: truncated header: {what}, shorter than the {HEADER_SIZE}-byte header")
    (magic, version, header_size, flags, trigger, dump_size, base_bytes, resume_pos, ring_end_pos,
     replayed_records, replayed_bytes, direct_writes, direct_bytes, extent_count, spilled_unix_ns,
     producer_pid, reserved) = _FIXED.unpack_from(head, 0)
    if version not in _READABLE_VERSIONS:
        raise SpillFormatError(f"{name}: unsupported manifest version {version} "
                               f"(this mdstream reads {', '.join(map(str, _READABLE_VERSIONS))})")
    if header_size != HEADER_SIZE:
        raise SpillFormatError(f"{name}: header_size is {header_size}, expected {HEADER_SIZE}")
    if reserved != 0:
        raise SpillFormatError(f"{name}: reserved field (offset 108) is 0x{reserved:x}, must be 0")
    known = _KNOWN_FLAGS if version >= 2 else FLAG_FINISHED | FLAG_BASE_COMPLETE | FLAG_FAILED
    if flags & ~known:
        raise SpillFormatError(f"{name}: unknown flags 0x{flags & ~known:x} "
                               f"(known: FINISHED 0x1, BASE_COMPLETE 0x2, FAILED 0x4"
                               f"{', BASE_COPY 0x8' if version >= 2 else ''})")
    if trigger not in TRIGGERS:
        raise SpillFormatError(f"{name}: unknown trigger {trigger} "
                               f"(1 consumer gone, 2 consumer stalled, 3 ring aborted)")
    base_path = _c_string(head[_BASE_PATH_AT:_REASON_AT], "base_path", name, path=True)
    reason = _c_string(head[_REASON_AT:_V2_AT], "reason", name)
    base_length = base_copied = dump_id = 0
    zero_at = _ZERO_AT_V1
    if version >= 2:
        base_length, base_copied, dump_id = _V2.unpack_from(head, _V2_AT)
        zero_at = _ZERO_AT
        if base_copied > base_length:
            raise SpillFormatError(f"{name}: base_copied {base_copied} exceeds base_length {base_length}")
        if flags & FLAG_BASE_COPY and flags & FLAG_BASE_COMPLETE and base_copied != base_length:
            raise SpillFormatError(f"{name}: BASE_COMPLETE with a base copy of {base_copied} of {base_length} bytes")
    tail = head[zero_at:HEADER_SIZE]
    if tail.count(0) != len(tail):
        at = zero_at + next(i for i, b in enumerate(tail) if b)
        raise SpillFormatError(f"{name}: byte {at} of the zero area [{zero_at}, {HEADER_SIZE}) is not zero")

    # The file size bounds the table before anything is allocated.
    room = (size - HEADER_SIZE) // EXTENT_SIZE
    if extent_count > room:
        raise SpillFormatError(f"{name}: extent_count {extent_count} claims more extents than the file holds "
                               f"({size - HEADER_SIZE} bytes after the header: at most {room})")
    if extent_count > MAX_EXTENTS:
        raise SpillFormatError(f"{name}: extent_count {extent_count} is beyond the limit of {MAX_EXTENTS}")
    raw = read(HEADER_SIZE, extent_count * EXTENT_SIZE)
    if len(raw) != extent_count * EXTENT_SIZE:
        raise SpillFormatError(f"{name}: truncated extent table: {len(raw)} of {extent_count * EXTENT_SIZE} bytes "
                               f"(did the file shrink while being read?)")
    extents = np.frombuffer(raw, dtype="<u8").reshape(extent_count, 2).astype(np.uint64, copy=False)
    if extents.flags.writeable:  # only on a big-endian host, where astype copied
        extents.setflags(write=False)
    offsets, lengths = extents[:, 0], extents[:, 1]
    overflow = offsets > np.uint64(_U64_MAX) - lengths
    if overflow.any():
        i = int(np.argmax(overflow))
        raise SpillFormatError(f"{name}: extent {i} (offset {int(offsets[i])}, length {int(lengths[i])}) "
                               f"overflows 64 bits")
    if flags & FLAG_FINISHED:
        beyond = offsets + lengths > np.uint64(dump_size)
        if beyond.any():
            i = int(np.argmax(beyond))
            raise SpillFormatError(f"{name}: extent {i} [{int(offsets[i])}, {int(offsets[i] + lengths[i])}) "
                                   f"lies beyond dump_size {dump_size}")
    return SpillManifest(magic=magic, version=version, header_size=header_size, flags=flags, trigger=trigger,
                         dump_size=dump_size, base_bytes=base_bytes, resume_pos=resume_pos,
                         ring_end_pos=ring_end_pos, replayed_records=replayed_records,
                         replayed_bytes=replayed_bytes, direct_writes=direct_writes, direct_bytes=direct_bytes,
                         extent_count=extent_count, spilled_unix_ns=spilled_unix_ns, producer_pid=producer_pid,
                         reserved=reserved, base_path=base_path, reason=reason, base_length=base_length,
                         base_copied=base_copied, dump_id=dump_id, extents=extents)


def parse_manifest(data: bytes | bytearray | memoryview, name: str = "<buffer>") -> SpillManifest:
    """Decode a manifest held in memory; raises :class:`SpillFormatError` like :func:`read_manifest`."""
    buf = bytes(data)
    return _parse(lambda offset, n: buf[offset:offset + n], len(buf), name)


def read_manifest(path: PathLike) -> SpillManifest:
    """Read and validate the manifest of a spill file.

    ``path`` is the spill file (its manifest is ``path + ".mdspill"``) or the
    manifest itself (a path ending in ``.mdspill``).  Raises
    :class:`SpillFormatError` for anything that is not a valid version-1
    manifest (the message names the check), :class:`~mdstream.errors.UnsafePathError`
    (a ``PermissionError``) if the manifest's path is a symlink (never followed),
    :class:`~mdstream.errors.InputNotFoundError` (a ``FileNotFoundError``) if it
    does not exist, and ``OSError`` if it cannot be opened.
    """
    _, mpath = _paths(path)
    fd = _open_regular(mpath, "spill manifest")
    try:
        size = os.fstat(fd).st_size
        return _parse(lambda offset, n: _pread_exact(fd, n, offset), size, mpath)
    finally:
        os.close(fd)


def pack_manifest(manifest: SpillManifest) -> bytes:
    """The manifest's bytes, exactly as the C side writes them (no validation: tests build bad ones too).

    Raises ``ValueError`` if a string does not fit its field with its NUL, or
    a number does not fit its field.
    """
    head = bytearray(HEADER_SIZE)
    try:
        _FIXED.pack_into(head, 0, manifest.magic, manifest.version, manifest.header_size, manifest.flags,
                         manifest.trigger, manifest.dump_size, manifest.base_bytes, manifest.resume_pos,
                         manifest.ring_end_pos, manifest.replayed_records, manifest.replayed_bytes,
                         manifest.direct_writes, manifest.direct_bytes, manifest.extent_count,
                         manifest.spilled_unix_ns, manifest.producer_pid, manifest.reserved)
    except struct.error as exc:
        raise ValueError(f"a manifest field does not fit: {exc}") from None
    for at, size, field_name, text in ((_BASE_PATH_AT, BASE_PATH_SIZE, "base_path", manifest.base_path),
                                       (_REASON_AT, REASON_SIZE, "reason", manifest.reason)):
        # Paths round-trip through os.fsencode (bytes that are not UTF-8 included).
        raw = os.fsencode(text) if field_name == "base_path" else text.encode("utf-8")
        if len(raw) >= size or b"\0" in raw:
            raise ValueError(f"{field_name} must be at most {size - 1} UTF-8 bytes without NUL, not {len(raw)}")
        head[at:at + len(raw)] = raw
    if manifest.version >= 2:
        try:
            _V2.pack_into(head, _V2_AT, manifest.base_length, manifest.base_copied, manifest.dump_id)
        except struct.error as exc:
            raise ValueError(f"a manifest field does not fit: {exc}") from None
    return bytes(head) + manifest.extents.astype("<u8", copy=False).tobytes()


def write_manifest(path: PathLike, manifest: SpillManifest | None = None, **fields: Any) -> SpillManifest:
    """Write a manifest file at ``path`` (a new file, 0600, never through a symlink).

    Either pass a :class:`SpillManifest` or its fields as keywords (the
    defaults make a valid, empty, unfinished manifest).  ``path`` is the
    manifest's own path (use :func:`manifest_path` for a spill file's).
    Returns the manifest written.
    """
    if manifest is None:
        manifest = SpillManifest(**fields)
    elif fields:
        raise TypeError("pass a SpillManifest or its fields, not both")
    data = pack_manifest(manifest)
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return manifest


def merge_extents(extents: Any) -> Extents:
    """The union of ``(offset, length)`` extents as sorted, disjoint ``[start, end)`` ranges.

    Returns a ``(m, 2)`` uint64 array of ``(start, end)``; empty extents
    vanish, overlapping and touching ones merge.  Extents must not overflow
    64 bits (:func:`read_manifest` guarantees it).
    """
    ext = _frozen_extents(extents)
    ext = ext[ext[:, 1] > 0]
    if ext.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    order = np.argsort(ext[:, 0], kind="stable")
    starts = ext[order, 0]
    ends = starts + ext[order, 1]
    reach = np.maximum.accumulate(ends)
    # A new range starts where an extent begins past everything before it.
    first = np.ones(starts.shape[0], dtype=bool)
    first[1:] = starts[1:] > reach[:-1]
    heads = np.flatnonzero(first)
    lasts = np.append(heads[1:] - 1, starts.shape[0] - 1)
    return np.stack([starts[heads], reach[lasts]], axis=1).astype(np.uint64)


# --------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------


def _minidump_check(fd: int, size: int) -> tuple[bool, str | None]:
    """Whether the open file parses as a minidump (``mdstream info``'s reader): ``(ok, first problem)``."""
    from mdstream.minidump import MinidumpFormatError, NotAMinidumpError, read_info

    if size == 0:
        return False, "empty file"
    try:
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # e.g. the file shrank since its size was taken
        return False, f"cannot map it: {exc}"
    try:
        data = np.frombuffer(mm, dtype=np.uint8)
        try:
            problems = read_info(data).problems
        except (NotAMinidumpError, MinidumpFormatError) as exc:
            # The reader names its input "<buffer>"; the caller knows the file.
            return False, str(exc).removeprefix("<buffer>: ")
        finally:
            del data
        return (not problems), (problems[0] if problems else None)
    finally:
        try:
            mm.close()
        except BufferError:  # pragma: no cover - a view outlived the check; the GC unmaps it
            pass


def _iso_ns(ns: int) -> str | None:
    """``spilled_unix_ns`` as ISO-8601 UTC to the second (None for 0, the "unknown" a writer may leave)."""
    if not ns:
        return None
    import datetime

    when = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=ns // 10**9)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def inspect(spill_path: PathLike) -> dict[str, Any]:
    """A JSON-ready report on a spill: every manifest field and what the files hold.

    Keys: every :meth:`SpillManifest.to_dict` field, plus ``spill`` and
    ``manifest`` (absolute paths), ``manifest_size``, ``trailing_bytes``
    (manifest bytes past the extent table: a writer that crashed mid-append),
    ``covered_bytes`` / ``covered_ranges`` / ``covered_end`` (the union of the
    extents), ``spilled_iso``, ``spill_exists``, ``spill_size``,
    ``spill_is_minidump`` and ``spill_minidump_problem`` (``mdstream info``'s reader on the spill file),
    ``finishable`` (FINISHED and not FAILED), ``needs_base`` and
    ``problems`` (inconsistencies between the manifest and the spill file).

    ``spill_path`` may also be the manifest's path.  Raises what
    :func:`read_manifest` raises; a missing spill file is reported, not raised.
    """
    spill, mpath = _paths(spill_path)
    manifest = read_manifest(mpath)
    merged = merge_extents(manifest.extents)
    covered = int((merged[:, 1] - merged[:, 0]).sum(dtype=np.uint64)) if merged.shape[0] else 0
    covered_end = int(merged[-1, 1]) if merged.shape[0] else 0
    report = manifest.to_dict()
    manifest_size = os.lstat(mpath).st_size
    report.update({
        "spill": os.path.abspath(spill),
        "manifest": os.path.abspath(mpath),
        "manifest_size": manifest_size,
        "trailing_bytes": max(0, manifest_size - HEADER_SIZE - EXTENT_SIZE * int(manifest.extent_count or 0)),
        "covered_bytes": covered,
        "covered_ranges": int(merged.shape[0]),
        "covered_end": covered_end,
        "spilled_iso": _iso_ns(manifest.spilled_unix_ns),
        "finishable": manifest.finished and not manifest.failed,
        "needs_base": not manifest.base_complete,
    })
    problems: list[str] = []
    try:
        fd = _open_regular(spill, "spill file")
    except FileNotFoundError:
        report.update(spill_exists=False, spill_size=None, spill_is_minidump=False, spill_minidump_problem=None)
        problems.append("the spill file does not exist")
    else:
        try:
            size = os.fstat(fd).st_size
            ok, why = _minidump_check(fd, size)
        finally:
            os.close(fd)
        report.update(spill_exists=True, spill_size=size, spill_is_minidump=ok, spill_minidump_problem=why)
        if manifest.complete and size != manifest.dump_size:
            problems.append(f"the spill file is {size} bytes but dump_size is {manifest.dump_size}")
        if manifest.has_base_copy:
            try:
                copy_size = os.lstat(spill + BASE_SUFFIX).st_size
            except FileNotFoundError:
                problems.append(f"the base copy {spill + BASE_SUFFIX} is missing")
            else:
                if copy_size < manifest.base_copied:
                    problems.append(f"the base copy is {copy_size} bytes but {manifest.base_copied} were copied")
        if size < covered_end:
            problems.append(f"the spill file is {size} bytes but the extents reach byte {covered_end}")
    report["problems"] = problems
    return report


# --------------------------------------------------------------------------
# finish
# --------------------------------------------------------------------------


def _temp_name(directory: str, base: str) -> str:
    """A candidate temporary name beside the output (tests replace this to plant symlinks)."""
    return temp_name(directory, base)


def _create_private(final: str) -> tuple[int, str]:
    """A new 0600 file beside ``final``: O_CREAT|O_EXCL|O_NOFOLLOW, so nothing planted there is followed."""
    fd, temp, _ = create_private_temp(final, name=_temp_name)
    return fd, temp


class _Output:
    """Sequential, buffered writes into the temporary output, hashed as they go."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.pending = bytearray()
        self.mode = 0

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)
        self.pending += data
        if len(self.pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        with memoryview(self.pending) as view:
            done = 0
            while done < len(view):
                done += os.write(self.fd, view[done:])
        self.pending.clear()

    def copy(self, src: int, offset: int, length: int, what: str) -> None:
        while length > 0:
            block = os.pread(src, min(length, CHUNK), offset)
            if not block:
                raise SpillError(f"{what} ended at byte {offset} while being copied (did it shrink?)")
            self.write(block)
            offset += len(block)
            length -= len(block)

    def zeros(self, length: int) -> None:
        while length > 0:
            n = min(length, CHUNK)
            self.write(bytes(n))
            length -= n


def _same_file(path: str, others: list[os.stat_result]) -> bool:
    """Whether the name ``path`` (not following a symlink) is one of the files ``others``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return any((st.st_dev, st.st_ino) == (o.st_dev, o.st_ino) for o in others)


def _write_private(final: str, overwrite: bool, fsync: bool,
                   fill: Callable[[_Output], None]) -> tuple[_Output, bool, str | None]:
    """Create a private temporary file beside ``final``, ``fill`` it, check it, fsync and publish it.

    Returns the output's writer (size, sha256) and whether it parses as a
    minidump.  On any failure the temporary file is removed.
    """
    fd, temp = _create_private(final)
    try:
        out = _Output(fd)
        fill(out)
        out.flush()
        if fsync:
            os.fsync(fd)
        out.mode = os.fstat(fd).st_mode & 0o777
        is_minidump, problem = _minidump_check(fd, out.size)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    try:
        publish(temp, final, overwrite)
    except BaseException:
        os.unlink(temp)
        raise
    if fsync:
        fsync_directory(os.path.dirname(final))
    return out, is_minidump, problem


def _remove_consumer_partial(manifest: SpillManifest) -> str | None:
    """After a complete spill was finished: remove the dead consumer's leftover partial file.

    The producer never deletes a file it did not create; the user finishing the
    spill asked for the dump, and the leftover is a second copy of its secrets.
    Only a regular file of this user with one link and the name mdstream gives
    partial files (``*.mdstream-partial``) is removed.
    """
    path = manifest.base_path
    if not (manifest.has_base_copy and manifest.base_complete and path.endswith(".mdstream-partial")):
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        return None
    try:
        os.unlink(path)
    except OSError:
        return None
    return path


def finish(spill_path: PathLike, output: PathLike, base: PathLike | None = None, *,
           overwrite: bool = False, fsync: bool = True, clean_partial: bool = True) -> dict[str, Any]:
    """Write the dump a finished spill describes to ``output``; returns a summary.

    * The manifest must be FINISHED and not FAILED (else :class:`SpillError`).
    * BASE_COMPLETE: the spill file is the dump; its size must equal
      ``dump_size`` (else :class:`SpillFormatError`) and it is copied.
      ``base`` is then not needed and ignored.
    * Otherwise ``base`` (the consumer's partial output) is required (else
      :class:`SpillError`): the output is its bytes, cut or zero-extended to
      ``dump_size``, with every extent's bytes taken from the spill file.

    ``output`` is written privately (0600, a new temporary file beside it
    that no symlink can redirect), fsynced and moved into place; an existing
    ``output`` is an error (:class:`~mdstream.errors.OutputExistsError`, a
    ``FileExistsError``) unless ``overwrite``.  The
    spill and manifest are opened without following symlinks; ``base``, which
    the caller names explicitly, may be one.  Everything is streamed in
    chunks of :data:`CHUNK` bytes.

    Summary keys: ``output``, ``size``, ``mode``, ``sha256``, ``is_minidump``,
    ``minidump_problem``, ``method`` (``"copy"`` or ``"overlay"``), ``spill``,
    ``base``, ``base_size``, ``bytes_from_spill``, ``bytes_from_base``,
    ``zero_filled_bytes`` (past the end of ``base`` and in no extent: nobody
    wrote them, a sign the wrong base was given), ``dump_size``,
    ``extent_count``, ``covered_ranges``, ``removed_partial``.

    Version 2 spills that copied the consumer's part (``SPILL.mdspill-base``)
    need no ``base``.  With ``clean_partial`` (default), the dead consumer's
    leftover partial file named in the manifest is removed once the output is
    in place (see :func:`_remove_consumer_partial`).
    """
    spill, mpath = _paths(spill_path)
    manifest = read_manifest(mpath)
    if manifest.failed:
        raise SpillError(f"{spill}: the spill FAILED ({manifest.reason or 'no reason given'}); "
                         f"it does not hold the whole dump")
    if not manifest.finished:
        raise SpillError(f"{spill}: the spill is not FINISHED (the producer is still writing it, or died "
                         f"before IoFinish): it does not hold the whole dump")
    final = os.path.abspath(os.fspath(output))
    check_new_output(final, overwrite)
    if not manifest.base_complete and base is None:
        hint = f"; the consumer wrote to {manifest.base_path}" if manifest.base_path else ""
        raise SpillError(f"{spill}: the consumer's output was not copied into the spill (no BASE_COMPLETE): "
                         f"give the consumer's partial output with --base PARTIAL (base=...){hint}")
    # Version 2: the producer's own copy of the consumer's part, beside the spill.
    use_copy = manifest.base_complete and manifest.has_base_copy
    if use_copy:
        base = spill + BASE_SUFFIX

    dump_size = manifest.dump_size
    merged = merge_extents(manifest.extents)
    counts = {"spill": 0, "base": 0, "zero": 0}
    spill_fd = _open_regular(spill, "spill file")
    base_fd = -1
    try:
        spill_size = os.fstat(spill_fd).st_size
        inputs = [os.fstat(spill_fd), os.lstat(mpath)]
        if manifest.base_complete and not use_copy:
            if spill_size != dump_size:
                raise SpillFormatError(f"{spill}: the spill file is {spill_size} bytes but the manifest's "
                                       f"dump_size is {dump_size} (BASE_COMPLETE: it should be the dump)")
            base_name = None
            base_size = None
        else:
            base_name = os.fspath(base or "")
            base_fd = _open_regular(base_name, "the spill's base copy" if use_copy
                                    else "base (the consumer's partial output)", follow=not use_copy)
            inputs.append(os.fstat(base_fd))
            base_size = inputs[-1].st_size
            if use_copy and base_size != manifest.base_length:
                raise SpillFormatError(f"{base_name}: the base copy is {base_size} bytes but the manifest says "
                                       f"{manifest.base_length}")
            end = int(merged[-1, 1]) if merged.shape[0] else 0
            if spill_size < end:
                raise SpillFormatError(f"{spill}: the spill file is {spill_size} bytes but the extents reach "
                                       f"byte {end} (truncated)")
        if _same_file(final, inputs):
            raise SpillError(f"{final}: the output must not be the spill file, its manifest or the base")

        def from_base(out: _Output, start: int, stop: int) -> None:
            # Bytes no extent covers: the consumer's, or zeros past the end of what it wrote.
            have = max(0, min(stop, base_size or 0) - start)
            out.copy(base_fd, start, have, base_name or "")
            out.zeros(stop - start - have)
            counts["base"] += have
            counts["zero"] += stop - start - have

        def fill(out: _Output) -> None:
            if manifest.base_complete and not use_copy:
                out.copy(spill_fd, 0, dump_size, spill)
                counts["spill"] = dump_size
                return
            pos = 0
            for start, stop in merged.tolist():
                from_base(out, pos, start)
                out.copy(spill_fd, start, stop - start, spill)
                counts["spill"] += stop - start
                pos = stop
            from_base(out, pos, dump_size)

        out, is_minidump, problem = _write_private(final, overwrite, fsync, fill)
    finally:
        os.close(spill_fd)
        if base_fd >= 0:
            os.close(base_fd)
    removed = _remove_consumer_partial(manifest) if clean_partial else None
    return {
        "removed_partial": removed,
        "output": final,
        "size": out.size,
        "mode": f"{out.mode:04o}",
        "sha256": out.sha256.hexdigest(),
        "is_minidump": is_minidump,
        "minidump_problem": problem,
        "method": "copy" if manifest.base_complete and not use_copy else "overlay",
        "spill": os.path.abspath(spill),
        "base": None if base_name is None else os.path.abspath(base_name),
        "base_size": base_size,
        "bytes_from_spill": counts["spill"],
        "bytes_from_base": counts["base"],
        "zero_filled_bytes": counts["zero"],
        "dump_size": dump_size,
        "extent_count": manifest.extent_count,
        "covered_ranges": int(merged.shape[0]),
    }


