"""Minidump header and stream directory reader (``mdstream info``) and region map.

Only what a streaming consumer needs to describe or re-cut a dump: the
32-byte ``MINIDUMP_HEADER``, the ``MINIDUMP_DIRECTORY`` entries and, for the
writer schedule (:mod:`mdstream.schedules`), the byte ranges every structure
occupies and the ranges it points at.  Everything is bounds-checked against
the file: a file that is not a minidump raises :class:`NotAMinidumpError`, one
whose directory does not fit raises :class:`MinidumpFormatError`, and a stream
(or a sub-range) that points past the end of the file is reported, not fatal.

Layouts follow Microsoft's ``minidumpapiset.h`` (little-endian, ``pack(4)``)
and Breakpad/Crashpad/Mozilla extension stream numbers.
"""

from __future__ import annotations

import datetime as _dt
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Union

import numpy as np
import numpy.typing as npt

from mdstream._files import map_file
from mdstream.errors import MinidumpFormatError, NotAMinidumpError

__all__ = [
    "HEADER_SIZE",
    "DIRECTORY_ENTRY_SIZE",
    "MINIDUMP_SIGNATURE",
    "MINIDUMP_VERSION",
    "STREAM_TYPE_NAMES",
    "MinidumpFormatError",
    "MinidumpInfo",
    "NotAMinidumpError",
    "Region",
    "StreamInfo",
    "check_header",
    "iter_regions",
    "read_info",
    "read_summary",
    "register_stream_type",
    "stream_type_name",
    "vendor_tag",
    "DumpSummary",
    "ExceptionSummary",
    "ModuleSummary",
    "SystemSummary",
    "ThreadSummary",
]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "npt.NDArray[np.uint8]"]

HEADER_SIZE = 32
DIRECTORY_ENTRY_SIZE = 12
MINIDUMP_SIGNATURE = 0x504D444D  # b"MDMP"
MINIDUMP_VERSION = 0xA793        # low word of Version

#: Stream type names: the SDK's ``MINIDUMP_STREAM_TYPE`` and the Breakpad,
#: Crashpad and Mozilla extensions.  Unknown types format as ``0x%08x``.
STREAM_TYPE_NAMES: dict[int, str] = {
    0: "UnusedStream",
    1: "ReservedStream0",
    2: "ReservedStream1",
    3: "ThreadListStream",
    4: "ModuleListStream",
    5: "MemoryListStream",
    6: "ExceptionStream",
    7: "SystemInfoStream",
    8: "ThreadExListStream",
    9: "Memory64ListStream",
    10: "CommentStreamA",
    11: "CommentStreamW",
    12: "HandleDataStream",
    13: "FunctionTableStream",
    14: "UnloadedModuleListStream",
    15: "MiscInfoStream",
    16: "MemoryInfoListStream",
    17: "ThreadInfoListStream",
    18: "HandleOperationListStream",
    19: "TokenStream",
    20: "JavaScriptDataStream",
    21: "SystemMemoryInfoStream",
    22: "ProcessVmCountersStream",
    23: "IptTraceStream",
    24: "ThreadNamesStream",
    0x8000: "ceStreamNull",
    0x8001: "ceStreamSystemInfo",
    0x8002: "ceStreamException",
    0x8003: "ceStreamModuleList",
    0x8004: "ceStreamProcessList",
    0x8005: "ceStreamThreadList",
    0x8006: "ceStreamThreadContextList",
    0x8007: "ceStreamThreadCallStackList",
    0x8008: "ceStreamMemoryVirtualList",
    0x8009: "ceStreamMemoryPhysicalList",
    0x800A: "ceStreamBucketParameters",
    0x800B: "ceStreamProcessModuleMap",
    0x800C: "ceStreamDiagnosisList",
    0xFFFF: "LastReservedStream",
    # Breakpad ("Gg")
    0x47670001: "BreakpadInfo",
    0x47670002: "AssertionInfo",
    0x47670003: "LinuxCpuInfo",
    0x47670004: "LinuxProcStatus",
    0x47670005: "LinuxLsbRelease",
    0x47670006: "LinuxCmdLine",
    0x47670007: "LinuxEnviron",
    0x47670008: "LinuxAuxv",
    0x47670009: "LinuxMaps",
    0x4767000A: "LinuxDsoDebug",
    # LLVM's additions to Breakpad's Linux range
    0x4767000B: "LinuxProcStat",
    0x4767000C: "LinuxProcUptime",
    0x4767000D: "LinuxProcFD",
    # Crashpad ("CP")
    0x43500001: "CrashpadInfo",
    # Chromium
    0x4B6B0002: "StabilityReport",
    # mdstream ("Md"): docs/crash-reporting.md
    0x4D640001: "MdstreamPythonTracebacks",
    0x4D640002: "MdstreamAnnotations",
    # Mozilla ("Mz")
    0x4D7A0001: "MozMacosCrashInfo",
    0x4D7A0002: "MozMacosBootargs",
    0x4D7A0003: "MozLinuxLimits",
    0x4D7A0004: "MozSoftErrors",
    # Wine's dbghelp: its private list of ELF modules (winedbg's minidumps)
    0xFFF0: "WineElfModuleList",
    # Facebook (LLVM's MinidumpConstants.def)
    0xFACE0000: "FacebookStreamMarkers",
    0xFACE1CA7: "FacebookLogcat",
    0xFACECAF0: "FacebookUnwindStackSymbols",
    0xFACECAFA: "FacebookAppCustomData",
    0xFACECAFB: "FacebookAppBuildID",
    0xFACECAFC: "FacebookAppVersionName",
    0xFACECAFD: "FacebookJavaStack",
    0xFACECAFE: "FacebookDalvikInfo",
    0xFACECAFF: "FacebookUnwindSymbols",
    0xFACECB00: "FacebookDumpErrorLog",
    0xFACECCCC: "FacebookAppStateLog",
    0xFACEDEAD: "FacebookAbortReason",
    0xFACEE000: "FacebookThreadName",
}

# Streams holding text (written whole by a writer).
_TEXT_STREAMS = {10, 11, 0x47670003, 0x47670004, 0x47670005, 0x47670006, 0x47670007,
                 0x47670009, 0x4767000B, 0x4767000C, 0x4D7A0002, 0x4D7A0003, 0x4D7A0004, 0x4D640001, 0x4D640002}

_THREAD_SIZE = 48
_THREAD_FIELDS = (4, 4, 4, 4, 8, 8, 8, 8)  # Id, Suspend, PriorityClass, Priority, Teb, Stack.Start, Stack.Loc, Context
_THREAD_EX_SIZE = 64
_THREAD_EX_FIELDS = _THREAD_FIELDS + (8, 8)  # + BackingStore
_MODULE_SIZE = 108
_MODULE_FIELDS = (8, 4, 4, 4, 4, 16, 16, 16, 4, 8, 8, 8, 8)  # Base, Size, CheckSum, Time, NameRva, VS_FIXEDFILEINFO, Cv, Misc, Reserved0/1
_MEMDESC_SIZE = 16
_MEMDESC_FIELDS = (8, 8)
_THREAD_NAME_SIZE = 12
_THREAD_NAME_FIELDS = (4, 8)
_EXCEPTION_SIZE = 168
_EXCEPTION_FIELDS = (4, 4, 4, 4, 8, 8, 4, 4, 16, 16, 16, 16, 16, 16, 16, 8, 8)
_SYSTEM_INFO_SIZE = 56
_SYSTEM_INFO_FIELDS = (4, 4, 4, 4, 4, 4, 4, 4, 12, 4, 4, 4)


def stream_type_name(stream_type: int) -> str:
    """The SDK (or Breakpad/Crashpad/Mozilla/...) name of a stream type, else ``"0x%08x"``."""
    return STREAM_TYPE_NAMES.get(stream_type, f"0x{stream_type:08x}")


def register_stream_type(stream_type: int, name: str, *, text: bool = False) -> None:
    """Name a vendor stream type for ``mdstream info`` and the region map (e.g. a crash
    reporter's own stream).  ``text=True`` marks a stream a writer emits in one piece.

    Re-registering a type under the same name is a no-op; a different name for a
    known type raises ``ValueError`` (two vendors claiming one number is a bug).
    """
    stream_type = int(stream_type)
    if not 0 < stream_type <= 0xFFFFFFFF:
        raise ValueError(f"stream type {stream_type:#x} does not fit 32 bits (0 is UnusedStream)")
    known = STREAM_TYPE_NAMES.get(stream_type)
    if known is not None and known != name:
        raise ValueError(f"stream type 0x{stream_type:08x} is already named {known!r}")
    STREAM_TYPE_NAMES[stream_type] = name
    if text:
        _TEXT_STREAMS.add(stream_type)


def vendor_tag(stream_type: int) -> str | None:
    """The two ASCII letters vendors put in a stream type's high word (``0x47670003`` -> ``"Gg"``), if any."""
    high = (stream_type >> 16) & 0xFFFF
    letters = bytes((high >> 8, high & 0xFF))
    return letters.decode("ascii") if all(0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A for b in letters) else None


@dataclass(frozen=True)
class StreamInfo:
    """One ``MINIDUMP_DIRECTORY`` entry.

    ``problem`` is ``None`` for a sound entry, else a one-line description
    (data past the end of the file, a repeated stream type).
    """

    index: int
    type: int
    type_name: str
    data_size: int
    rva: int
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class MinidumpInfo:
    """What ``mdstream info`` reports about a minidump: the header and the directory."""

    path: str
    file_size: int
    signature: int
    version: int
    number_of_streams: int
    stream_directory_rva: int
    checksum: int
    timestamp: int
    flags: int
    flag_names: list[str] = field(default_factory=list)
    streams: list[StreamInfo] = field(default_factory=list)

    @property
    def version_low(self) -> int:
        """Low word of Version: the format version, 0xA793."""
        return self.version & 0xFFFF

    @property
    def version_high(self) -> int:
        """High word of Version: implementation-specific (DbgHelp's build value; 0 for most other writers)."""
        return self.version >> 16

    @property
    def timestamp_iso(self) -> str:
        """TimeDateStamp as ISO-8601 UTC, e.g. ``2021-07-13T21:11:16Z``."""
        return _iso_utc(self.timestamp)

    @property
    def problems(self) -> list[str]:
        """Every stream problem, prefixed with the entry index."""
        return [f"stream {s.index} ({s.type_name}): {s.problem}" for s in self.streams if s.problem]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (ints stay ints; hex strings are added for readability)."""
        return {
            "path": self.path,
            "file_size": self.file_size,
            "signature": self.signature,
            "signature_text": self.signature.to_bytes(4, "little").decode("latin-1"),
            "version": self.version,
            "version_hex": f"0x{self.version:08x}",
            "version_low": self.version_low,
            "version_high": self.version_high,
            "number_of_streams": self.number_of_streams,
            "stream_directory_rva": self.stream_directory_rva,
            "checksum": self.checksum,
            "timestamp": self.timestamp,
            "timestamp_iso": self.timestamp_iso,
            "flags": self.flags,
            "flags_hex": f"0x{self.flags:x}",
            "flag_names": list(self.flag_names),
            "streams": [s.to_dict() for s in self.streams],
            "problems": self.problems,
        }

    def format_text(self) -> str:
        """A readable report: header fields, then one table row per directory entry."""
        sig = self.signature.to_bytes(4, "little").decode("latin-1")
        version_note = "" if self.version_low == MINIDUMP_VERSION else f"  (expected low word 0x{MINIDUMP_VERSION:04x})"
        lines = [
            f"file        {self.path} ({self.file_size} bytes)",
            f"signature   {sig!r} (0x{self.signature:08x})",
            f"version     0x{self.version:08x} (format 0x{self.version_low:04x}, "
            f"implementation 0x{self.version_high:04x}){version_note}",
            f"streams     {self.number_of_streams} (directory at rva 0x{self.stream_directory_rva:x})",
            f"checksum    0x{self.checksum:08x}",
            f"timestamp   {self.timestamp} ({self.timestamp_iso})",
            f"flags       0x{self.flags:x} ({' | '.join(self.flag_names) if self.flag_names else '-'})",
            "",
        ]
        rows = [("#", "type", "name", "size", "rva", "problem")]
        for s in self.streams:
            name = s.type_name
            if s.type not in STREAM_TYPE_NAMES:
                tag = vendor_tag(s.type)
                name = f"unknown (vendor {tag!r})" if tag else "unknown"
            rows.append((str(s.index), f"0x{s.type:08x}", name, str(s.data_size), f"0x{s.rva:08x}",
                         s.problem or ""))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        for r in rows:
            cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                     r[3].rjust(widths[3]), r[4].ljust(widths[4])]
            lines.append(("  ".join(cells) + ("  " + r[5] if r[5] else "")).rstrip())
        return "\n".join(lines)


@dataclass(frozen=True)
class Region:
    """A byte range of a minidump and how a writer would emit it.

    Attributes:
        start, end: the range ``[start, end)`` as the file describes it (``end``
            may lie past the end of the file; ``problem`` then says so).
        kind: ``header``, ``directory``, ``stream``, ``list-header``, ``entry``,
            ``memory``, ``context``, ``string``, ``codeview``, ``misc-record``.
        label: a human-readable path, e.g. ``ThreadListStream[1].Stack``.
        stream_index: directory index of the stream it belongs to (``None``
            for the header and the directory).
        fields: field sizes of a structure (they sum to the size); empty when
            the range is not a structure of known layout.
        piece: how a writer emits it: ``struct`` (small fields), ``memory``
            (fixed-size chunks) or ``whole`` (one write).
        refs: in-file ranges ``(start, end)`` this structure points at.
        problem: ``None``, or why the range is not (fully) inside the file.
    """

    start: int
    end: int
    kind: str
    label: str
    stream_index: int | None = None
    fields: tuple[int, ...] = ()
    piece: str = "struct"
    refs: tuple[tuple[int, int], ...] = ()
    problem: str | None = None

    @property
    def size(self) -> int:
        """``end - start``."""
        return self.end - self.start


def _iso_utc(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_flags(flags: int) -> list[str]:
    """SDK names of the MINIDUMP_TYPE bits, via :mod:`mdstream.dbghelp` (imported lazily).

    The header's Flags field is 64-bit while MINIDUMP_TYPE is 32-bit: bits
    above 31 are reported as one hex value.
    """
    describe: Any = None
    try:
        from mdstream import dbghelp
    except ImportError:
        dbghelp = None  # type: ignore[assignment]
    if dbghelp is not None:
        describe = getattr(dbghelp, "describe", None)
        if describe is None:
            describe = getattr(getattr(dbghelp, "MinidumpType", None), "describe", None)
    low, high = flags & 0xFFFFFFFF, flags >> 32
    if describe is None:  # not available: name the bits by value
        names = ["MiniDumpNormal"] if low == 0 and high == 0 else \
            [f"0x{1 << b:08X}" for b in range(32) if low >> b & 1]
    else:
        names = [] if low == 0 and high else [str(x) for x in describe(low)]
    if high:
        names.append(f"0x{high << 32:016X}")
    return names


def _as_array(source: Source) -> tuple[npt.NDArray[np.uint8], str]:
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 1:
            raise TypeError("a minidump given as an array must be 1-D uint8")
        return source, "<buffer>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return np.frombuffer(source, dtype=np.uint8), "<buffer>"
    return map_file(source, "minidump"), os.fspath(source)


def check_header(data: npt.NDArray[np.uint8], name: str = "<buffer>") -> tuple[int, ...]:
    """Check the signature and size; return the header fields
    ``(signature, version, streams, directory_rva, checksum, timestamp, flags)``.

    Raises :class:`NotAMinidumpError` with a one-line message.
    """
    if data.size < HEADER_SIZE:
        what = "empty file" if data.size == 0 else f"file is {data.size} bytes"
        raise NotAMinidumpError(f"{name}: not a minidump: {what}, shorter than the {HEADER_SIZE}-byte MINIDUMP_HEADER")
    fields = struct.unpack("<IIIIIIQ", data[:HEADER_SIZE].tobytes())
    if fields[0] != MINIDUMP_SIGNATURE:
        raise NotAMinidumpError(f"{name}: not a minidump: signature {bytes(data[:4])!r} (expected b'MDMP')")
    return fields


def _directory(data: npt.NDArray[np.uint8], name: str) -> tuple[tuple[int, ...], npt.NDArray[np.uint32]]:
    header = check_header(data, name)
    count, rva = header[2], header[3]
    end = rva + count * DIRECTORY_ENTRY_SIZE
    if end > data.size:
        raise MinidumpFormatError(
            f"{name}: stream directory [{rva}, {end}) ({count} entries) ends past end of file (size {data.size})")
    entries = np.frombuffer(data, dtype="<u4", count=3 * count, offset=rva).reshape(count, 3) if count else \
        np.zeros((0, 3), dtype="<u4")
    return header, entries


def read_info(path: Source) -> MinidumpInfo:
    """Read a minidump's header and stream directory.

    Raises :class:`NotAMinidumpError` (wrong signature, shorter than 32 bytes)
    or :class:`MinidumpFormatError` (directory past the end of the file).
    Streams whose data lies (partly) outside the file, and repeated stream
    types, are reported in :attr:`StreamInfo.problem`.
    """
    data, name = _as_array(path)
    header, entries = _directory(data, name)
    signature, version, count, rva, checksum, timestamp, flags = header
    size = data.size
    seen: dict[int, int] = {}
    streams: list[StreamInfo] = []
    for i, (stype, dsize, srva) in enumerate(entries.tolist()):
        problems = []
        if srva + dsize > size:
            problems.append(f"stream data [{srva}, {srva + dsize}) ends past end of file (size {size})")
        if stype != 0:
            if stype in seen:
                problems.append(f"stream type repeats entry {seen[stype]}")
            else:
                seen[stype] = i
        streams.append(StreamInfo(i, stype, stream_type_name(stype), dsize, srva, "; ".join(problems) or None))
    shown = os.fspath(path) if isinstance(path, (str, os.PathLike)) else name
    return MinidumpInfo(shown, size, signature, version, count, rva, checksum, timestamp, flags,
                        _describe_flags(flags), streams)


# --------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------


class _Reader:
    """Bounds-checked little-endian reads from the dump."""

    def __init__(self, data: npt.NDArray[np.uint8]) -> None:
        self.data = data
        self.size = data.size

    def u32(self, at: int) -> int | None:
        if at < 0 or at + 4 > self.size:
            return None
        return int.from_bytes(self.data[at:at + 4].tobytes(), "little")

    def u64(self, at: int) -> int | None:
        if at < 0 or at + 8 > self.size:
            return None
        return int.from_bytes(self.data[at:at + 8].tobytes(), "little")


def _past_end(start: int, end: int, size: int) -> str | None:
    return None if end <= size else f"[{start}, {end}) ends past end of file (size {size})"


def iter_regions(source: Source, *, name: str | None = None) -> Iterator[Region]:
    """The byte ranges of a minidump, bounds-checked.

    Yields the header, the directory, each stream's data and, for
    ThreadList/ThreadExList, ModuleList, MemoryList, Memory64List,
    ThreadNames, Exception and SystemInfo streams, their count fields and
    entries (with field layouts) and the ranges they point at (memory ranges,
    thread contexts and stacks, module names, CodeView and misc records,
    thread names, the CSD version string).  A range that does not fit in the
    file carries a ``problem``; entries whose own bytes are outside the file
    (or outside their stream) are not read.

    Raises :class:`NotAMinidumpError` / :class:`MinidumpFormatError` like :func:`read_info`.
    """
    data, default_name = _as_array(source)
    name = name or default_name
    header, entries = _directory(data, name)
    size = data.size
    rd = _Reader(data)
    yield Region(0, HEADER_SIZE, "header", "MINIDUMP_HEADER", None, (4, 4, 4, 4, 4, 4, 8))
    count, drva = header[2], header[3]
    yield Region(drva, drva + count * DIRECTORY_ENTRY_SIZE, "directory", "MINIDUMP_DIRECTORY", None, (4, 4, 4) * count)
    for i, (stype, dsize, srva) in enumerate(entries.tolist()):
        if stype == 0 and dsize == 0:
            continue
        tname = stream_type_name(stype)
        piece = "whole" if stype in _TEXT_STREAMS else "struct"
        problem = _past_end(srva, srva + dsize, size)
        yield Region(srva, srva + dsize, "stream", tname, i, (), piece, (), problem)
        if problem is not None or dsize == 0:
            continue
        yield from _stream_parts(rd, i, stype, tname, srva, dsize)


def _target(rd: _Reader, kind: str, label: str, index: int, start: int, length: int, piece: str,
            out: list[Region]) -> tuple[tuple[int, int], ...]:
    """Record a pointed-at range; return it as a ref when it lies inside the file."""
    if length <= 0:
        return ()
    end = start + length
    problem = _past_end(start, end, rd.size)
    out.append(Region(start, end, kind, label, index, (), piece, (), problem))
    return () if problem else ((start, end),)


def _string_target(rd: _Reader, label: str, index: int, rva: int, out: list[Region]) -> tuple[tuple[int, int], ...]:
    """A MINIDUMP_STRING: Length (bytes, without the NUL), UTF-16LE text, NUL."""
    if rva == 0:
        return ()
    length = rd.u32(rva)
    if length is None:
        out.append(Region(rva, rva + 4, "string", label, index, (), "whole", (),
                          f"string length [{rva}, {rva + 4}) ends past end of file (size {rd.size})"))
        return ()
    return _target(rd, "string", label, index, rva, 4 + length + 2, "whole", out)


def _list_layout(count: int | None, rva: int, dsize: int, entry: int, count_size: int = 4) -> tuple[int, int]:
    """Where entries start and how many fit: some writers pad the count to 8 bytes."""
    if count is None:
        return rva + count_size, 0
    first = rva + count_size
    if count_size == 4 and dsize == 8 + count * entry:
        first = rva + 8
    fit = max(0, (rva + dsize - first) // entry)
    return first, min(count, fit)


def _stream_parts(rd: _Reader, i: int, stype: int, tname: str, rva: int, dsize: int) -> Iterator[Region]:
    out: list[Region] = []
    if (stype in (3, 4, 5, 8, 24) and dsize < 4) or (stype == 9 and dsize < 16):
        return  # too short to hold its count: nothing to describe
    if stype in (3, 8):  # ThreadList / ThreadExList
        esize, fields = (_THREAD_SIZE, _THREAD_FIELDS) if stype == 3 else (_THREAD_EX_SIZE, _THREAD_EX_FIELDS)
        count = rd.u32(rva)
        first, n = _list_layout(count, rva, dsize, esize)
        out.append(Region(rva, first, "list-header", f"{tname}.NumberOfThreads", i, (4,) * ((first - rva) // 4)))
        for k in range(n):
            e = first + k * esize
            refs: tuple[tuple[int, int], ...] = ()
            stack_size, stack_rva = rd.u32(e + 32), rd.u32(e + 36)
            ctx_size, ctx_rva = rd.u32(e + 40), rd.u32(e + 44)
            refs += _target(rd, "memory", f"{tname}[{k}].Stack", i, stack_rva or 0, stack_size or 0, "memory", out)
            refs += _target(rd, "context", f"{tname}[{k}].ThreadContext", i, ctx_rva or 0, ctx_size or 0, "whole", out)
            if stype == 8:
                bs_size, bs_rva = rd.u32(e + 56), rd.u32(e + 60)
                refs += _target(rd, "memory", f"{tname}[{k}].BackingStore", i, bs_rva or 0, bs_size or 0, "memory", out)
            out.append(Region(e, e + esize, "entry", f"{tname}[{k}]", i, fields, "struct", refs))
    elif stype == 4:  # ModuleList
        count = rd.u32(rva)
        first, n = _list_layout(count, rva, dsize, _MODULE_SIZE)
        out.append(Region(rva, first, "list-header", f"{tname}.NumberOfModules", i, (4,) * ((first - rva) // 4)))
        for k in range(n):
            e = first + k * _MODULE_SIZE
            refs = _string_target(rd, f"{tname}[{k}].ModuleName", i, rd.u32(e + 20) or 0, out)
            cv_size, cv_rva = rd.u32(e + 76) or 0, rd.u32(e + 80) or 0
            refs += _target(rd, "codeview", f"{tname}[{k}].CvRecord", i, cv_rva, cv_size, "whole", out)
            misc_size, misc_rva = rd.u32(e + 84) or 0, rd.u32(e + 88) or 0
            refs += _target(rd, "misc-record", f"{tname}[{k}].MiscRecord", i, misc_rva, misc_size, "whole", out)
            out.append(Region(e, e + _MODULE_SIZE, "entry", f"{tname}[{k}]", i, _MODULE_FIELDS, "struct", refs))
    elif stype == 5:  # MemoryList
        count = rd.u32(rva)
        first, n = _list_layout(count, rva, dsize, _MEMDESC_SIZE)
        out.append(Region(rva, first, "list-header", f"{tname}.NumberOfMemoryRanges", i, (4,) * ((first - rva) // 4)))
        for k in range(n):
            e = first + k * _MEMDESC_SIZE
            msize, mrva = rd.u32(e + 8) or 0, rd.u32(e + 12) or 0
            refs = _target(rd, "memory", f"{tname}[{k}].Memory", i, mrva, msize, "memory", out)
            out.append(Region(e, e + _MEMDESC_SIZE, "entry", f"{tname}[{k}]", i, _MEMDESC_FIELDS, "struct", refs))
    elif stype == 9:  # Memory64List
        count, base = rd.u64(rva), rd.u64(rva + 8)
        if count is not None and base is not None:
            n = min(count, max(0, (dsize - 16) // _MEMDESC_SIZE))
            sizes = np.frombuffer(rd.data, dtype="<u8", count=2 * n, offset=rva + 16).reshape(n, 2)[:, 1] \
                if n else np.zeros(0, "<u8")
            total = int(sizes.sum(dtype=np.uint64)) if n else 0
            out.append(Region(rva, rva + 8, "list-header", f"{tname}.NumberOfMemoryRanges", i, (8,)))
            block = ((base, base + total),) if total and base + total <= rd.size else ()
            out.append(Region(rva + 8, rva + 16, "list-header", f"{tname}.BaseRva", i, (8,), "struct", block))
            at = base
            for k, sz in enumerate(sizes.tolist()):
                e = rva + 16 + k * _MEMDESC_SIZE
                out.append(Region(e, e + _MEMDESC_SIZE, "entry", f"{tname}[{k}]", i, _MEMDESC_FIELDS))
                _target(rd, "memory", f"{tname}[{k}].Memory", i, at, sz, "memory", out)
                at += sz
    elif stype == 24:  # ThreadNamesStream
        count = rd.u32(rva)
        first, n = _list_layout(count, rva, dsize, _THREAD_NAME_SIZE)
        out.append(Region(rva, first, "list-header", f"{tname}.NumberOfThreadNames", i, (4,) * ((first - rva) // 4)))
        for k in range(n):
            e = first + k * _THREAD_NAME_SIZE
            refs = _string_target(rd, f"{tname}[{k}].ThreadName", i, rd.u64(e + 4) or 0, out)
            out.append(Region(e, e + _THREAD_NAME_SIZE, "entry", f"{tname}[{k}]", i, _THREAD_NAME_FIELDS,
                              "struct", refs))
    elif stype == 6 and dsize >= _EXCEPTION_SIZE:  # ExceptionStream
        ctx_size, ctx_rva = rd.u32(rva + 160) or 0, rd.u32(rva + 164) or 0
        refs = _target(rd, "context", f"{tname}.ThreadContext", i, ctx_rva, ctx_size, "whole", out)
        out.append(Region(rva, rva + _EXCEPTION_SIZE, "entry", f"{tname}.MINIDUMP_EXCEPTION_STREAM", i,
                          _EXCEPTION_FIELDS, "struct", refs))
    elif stype == 7 and dsize >= _SYSTEM_INFO_SIZE:  # SystemInfoStream
        refs = _string_target(rd, f"{tname}.CSDVersion", i, rd.u32(rva + 24) or 0, out)
        out.append(Region(rva, rva + _SYSTEM_INFO_SIZE, "entry", f"{tname}.MINIDUMP_SYSTEM_INFO", i,
                          _SYSTEM_INFO_FIELDS, "struct", refs))
    yield from out


# --------------------------------------------------------------------------
# Summary: what a user looks for first (minidump-stackwalk's summary, without unwinding)
# --------------------------------------------------------------------------

#: MINIDUMP_SYSTEM_INFO.ProcessorArchitecture (Windows SDK and Breakpad's 0x8000 range).
CPU_ARCHITECTURES: dict[int, str] = {
    0: "x86", 1: "MIPS", 2: "Alpha", 3: "PPC", 4: "SHX", 5: "ARM", 6: "IA64", 7: "Alpha64", 8: "MSIL",
    9: "amd64", 10: "x86 on Win64", 12: "arm64", 0x8001: "SPARC", 0x8002: "PPC64", 0x8003: "arm64",
    0x8004: "MIPS64", 0x8005: "RISC-V", 0x8006: "RISC-V 64", 0xFFFF: "unknown",
}
#: MINIDUMP_SYSTEM_INFO.PlatformId (Windows SDK and Breakpad's 0x8000 range).
PLATFORMS: dict[int, str] = {
    0: "Win32s", 1: "Windows 9x", 2: "Windows NT", 3: "Windows CE", 0x8000: "Unix", 0x8101: "macOS",
    0x8102: "iOS", 0x8201: "Linux", 0x8202: "Solaris", 0x8203: "Android", 0x8204: "PS3", 0x8205: "NaCl",
    0x8206: "Fuchsia",
}
_POSIX_PLATFORMS = frozenset({0x8000, 0x8101, 0x8102, 0x8201, 0x8202, 0x8203, 0x8204, 0x8205, 0x8206})
#: Exception codes of Windows dumps (NTSTATUS values a crash reports).
WINDOWS_EXCEPTION_CODES: dict[int, str] = {
    0x80000003: "EXCEPTION_BREAKPOINT", 0x80000004: "EXCEPTION_SINGLE_STEP",
    0xC0000005: "EXCEPTION_ACCESS_VIOLATION", 0xC0000006: "EXCEPTION_IN_PAGE_ERROR",
    0xC0000008: "EXCEPTION_INVALID_HANDLE", 0xC000001D: "EXCEPTION_ILLEGAL_INSTRUCTION",
    0xC0000025: "EXCEPTION_NONCONTINUABLE_EXCEPTION", 0xC000008C: "EXCEPTION_ARRAY_BOUNDS_EXCEEDED",
    0xC000008E: "EXCEPTION_FLT_DIVIDE_BY_ZERO", 0xC0000094: "EXCEPTION_INT_DIVIDE_BY_ZERO",
    0xC0000095: "EXCEPTION_INT_OVERFLOW", 0xC0000096: "EXCEPTION_PRIV_INSTRUCTION",
    0xC00000FD: "EXCEPTION_STACK_OVERFLOW", 0xC0000374: "STATUS_HEAP_CORRUPTION",
    0xC0000409: "STATUS_STACK_BUFFER_OVERRUN (fast fail)", 0xC0000420: "STATUS_ASSERTION_FAILURE",
    0xE06D7363: "C++ exception (0xE06D7363)",
}
#: Exception codes of POSIX dumps (Breakpad/Crashpad/mdstream write the signal number).
POSIX_SIGNALS: dict[int, str] = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
    9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
    24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS", 0xFFFFFFFF: "DUMP_REQUESTED",
}
# Bounds on what a summary lists (a hostile count must not make it slow).
_MAX_SUMMARY_ENTRIES = 100_000
_MAX_STRING_BYTES = 64 * 1024


@dataclass(frozen=True)
class SystemSummary:
    """``MINIDUMP_SYSTEM_INFO``: CPU, processor count and operating system."""

    cpu: str
    cpu_count: int
    os: str
    os_version: str
    csd_version: str | None
    cpu_vendor: str | None = None


@dataclass(frozen=True)
class ExceptionSummary:
    """The Exception stream: the crashing thread, what happened and where."""

    thread_id: int
    code: int
    code_name: str | None
    flags: int
    address: int


@dataclass(frozen=True)
class ThreadSummary:
    """A thread of the ThreadList (or ThreadExList) and its name from the ThreadNames stream."""

    id: int
    name: str | None = None


@dataclass(frozen=True)
class ModuleSummary:
    """A module of the ModuleList, with the identifiers symbol servers match on.

    ``debug_id``: Breakpad's debug identifier (PDB GUID + age, or the ELF
    build id folded into a GUID + ``0``); ``build_id``: the ELF GNU build id in
    hex (CodeView ``BpEL`` records, bytes ``LEpB`` in the file); ``debug_file``: the PDB name of a
    ``RSDS`` record.
    """

    base: int
    size: int
    name: str | None
    debug_id: str | None = None
    build_id: str | None = None
    debug_file: str | None = None


@dataclass(frozen=True)
class DumpSummary:
    """What ``mdstream info`` shows above the stream table."""

    system: SystemSummary | None
    exception: ExceptionSummary | None
    threads: list[ThreadSummary] = field(default_factory=list)
    modules: list[ModuleSummary] = field(default_factory=list)
    thread_count: int | None = None
    module_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.exception is not None:
            out["exception"]["code_hex"] = f"0x{self.exception.code:08x}"
            out["exception"]["address_hex"] = f"0x{self.exception.address:x}"
        for m, d in zip(self.modules, out["modules"]):
            d["base_hex"] = f"0x{m.base:x}"
        return out

    def format_text(self) -> list[str]:
        lines: list[str] = []
        if self.system is not None:
            s = self.system
            cpu = f"{s.cpu}, {_plural(s.cpu_count, 'CPU')}" + (f" ({s.cpu_vendor})" if s.cpu_vendor else "")
            os_text = " ".join(x for x in (s.os, s.os_version) if x) + (f" ({s.csd_version})" if s.csd_version else "")
            lines.append(f"system      {os_text}; {cpu}")
        if self.exception is not None:
            e = self.exception
            what = e.code_name or f"0x{e.code:08x}"
            lines.append(f"exception   {what} (code 0x{e.code:08x}, flags 0x{e.flags:x}) at 0x{e.address:x} "
                         f"in thread {e.thread_id}")
        if self.thread_count is not None:
            named = [t for t in self.threads if t.name]
            shown = ", ".join(f"{t.id} {t.name!r}" for t in named[:8]) + (", ..." if len(named) > 8 else "")
            lines.append(f"threads     {self.thread_count:,}" + (f": {shown}" if shown else ""))
        if self.module_count is not None:
            lines.append(f"modules     {self.module_count:,}")
            for m in self.modules:
                ident = (f"build id {m.build_id}" if m.build_id else
                         f"debug id {m.debug_id}" + (f" ({m.debug_file})" if m.debug_file else "") if m.debug_id
                         else "no build id")
                lines.append(f"  0x{m.base:016x} {m.size:>11,}  {m.name or '?'}  [{ident}]")
        return lines


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _read_string(rd: _Reader, rva: int) -> str | None:
    """A MINIDUMP_STRING (u32 byte length, UTF-16LE), bounds-checked; None if it does not fit."""
    if not rva:
        return None
    length = rd.u32(rva)
    if length is None or length > _MAX_STRING_BYTES or rva + 4 + length > rd.size:
        return None
    return rd.data[rva + 4:rva + 4 + length].tobytes().decode("utf-16-le", "replace")


def _guid_text(raw: bytes) -> str:
    d1, d2, d3 = struct.unpack("<IHH", raw[:8])
    return f"{d1:08X}{d2:04X}{d3:04X}" + raw[8:16].hex().upper()


def _codeview(rd: _Reader, rva: int, size: int) -> tuple[str | None, str | None, str | None]:
    """(debug_id, build_id, debug_file) of a CodeView record."""
    if not rva or size < 4 or rva + size > rd.size:
        return None, None, None
    raw = rd.data[rva:rva + min(size, 4096)].tobytes()
    sig = raw[:4]
    if sig == b"RSDS" and len(raw) >= 24:
        age = struct.unpack_from("<I", raw, 20)[0]
        name = raw[24:].split(b"\0", 1)[0].decode("utf-8", "replace") or None
        return _guid_text(raw[4:20]) + f"{age:X}", None, name
    if sig == b"LEpB" and len(raw) > 4:  # 'BpEL' as a little-endian u32
        build = raw[4:]
        folded = (build + bytes(16))[:16]   # Breakpad: the first 16 bytes as a GUID, age 0
        return _guid_text(folded) + "0", build.hex(), None
    if sig == b"NB10" and len(raw) >= 16:
        signature, age = struct.unpack_from("<II", raw, 8)
        name = raw[16:].split(b"\0", 1)[0].decode("utf-8", "replace") or None
        return f"{signature:08X}{age:X}", None, name
    return None, None, None


def read_summary(source: Source) -> DumpSummary:
    """System info, the exception, threads with their names and modules with their build ids.

    Reads only what the directory points at, bounds-checked: a stream that is
    missing, too short or points outside the file leaves its part empty
    (``None`` or no entries) instead of failing; lists are cut at 100,000
    entries.  Raises :class:`NotAMinidumpError` / :class:`MinidumpFormatError`
    like :func:`read_info`.
    """
    data, name = _as_array(source)
    _, entries = _directory(data, name)
    rd = _Reader(data)
    first: dict[int, tuple[int, int]] = {}
    for stype, dsize, srva in entries.tolist():
        if stype not in first and srva + dsize <= rd.size:
            first[stype] = (srva, dsize)

    system = None
    platform = None
    if 7 in first and first[7][1] >= _SYSTEM_INFO_SIZE:
        rva, _ = first[7]
        raw = data[rva:rva + _SYSTEM_INFO_SIZE].tobytes()
        arch, _level, _rev, ncpu = struct.unpack_from("<HHHB", raw, 0)
        major, minor, build, platform = struct.unpack_from("<IIII", raw, 8)
        vendor_raw = raw[32:44]
        # CPU_INFORMATION holds a cpuid vendor string only for x86 dumps (some amd64 writers fill it too).
        vendor = vendor_raw.decode("ascii") if vendor_raw.isalpha() and vendor_raw.isascii() else None
        system = SystemSummary(
            cpu=CPU_ARCHITECTURES.get(arch, f"architecture 0x{arch:04x}"), cpu_count=ncpu,
            os=PLATFORMS.get(platform, f"platform 0x{platform:x}"),
            os_version=f"{major}.{minor}.{build}" if major or minor or build else "",
            csd_version=_read_string(rd, rd.u32(rva + 24) or 0) or None, cpu_vendor=vendor or None)

    exception = None
    if 6 in first and first[6][1] >= _EXCEPTION_SIZE:
        rva, _ = first[6]
        raw = data[rva:rva + 32].tobytes()
        thread_id, = struct.unpack_from("<I", raw, 0)
        code, flags = struct.unpack_from("<II", raw, 8)
        address, = struct.unpack_from("<Q", raw, 24)
        table = POSIX_SIGNALS if platform in _POSIX_PLATFORMS else WINDOWS_EXCEPTION_CODES
        exception = ExceptionSummary(thread_id, code, table.get(code), flags, address)

    names: dict[int, str] = {}
    if 24 in first and first[24][1] >= 4:
        rva, dsize = first[24]
        count = rd.u32(rva)
        at, n = _list_layout(count, rva, dsize, _THREAD_NAME_SIZE)
        for k in range(min(n, _MAX_SUMMARY_ENTRIES)):
            e = at + k * _THREAD_NAME_SIZE
            text = _read_string(rd, rd.u64(e + 4) or 0)
            if text:
                names[rd.u32(e) or 0] = text
    threads: list[ThreadSummary] = []
    thread_count = None
    for stype, esize in ((3, _THREAD_SIZE), (8, _THREAD_EX_SIZE)):
        if stype in first and first[stype][1] >= 4:
            rva, dsize = first[stype]
            count = rd.u32(rva)
            at, n = _list_layout(count, rva, dsize, esize)
            thread_count = n
            for k in range(min(n, _MAX_SUMMARY_ENTRIES)):
                tid = rd.u32(at + k * esize) or 0
                threads.append(ThreadSummary(tid, names.get(tid)))
            break

    modules: list[ModuleSummary] = []
    module_count = None
    if 4 in first and first[4][1] >= 4:
        rva, dsize = first[4]
        at, n = _list_layout(rd.u32(rva), rva, dsize, _MODULE_SIZE)
        module_count = n
        for k in range(min(n, _MAX_SUMMARY_ENTRIES)):
            e = at + k * _MODULE_SIZE
            debug_id, build_id, debug_file = _codeview(rd, rd.u32(e + 80) or 0, rd.u32(e + 76) or 0)
            modules.append(ModuleSummary(rd.u64(e) or 0, rd.u32(e + 8) or 0, _read_string(rd, rd.u32(e + 20) or 0),
                                         debug_id, build_id, debug_file))
    return DumpSummary(system, exception, threads, modules, thread_count, module_count)
