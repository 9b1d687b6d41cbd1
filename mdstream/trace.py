"""MDTRACE1: a recorded sequence of offset-addressed writes (the trace format mdstream records and replays;
``docs/trace-format.md`` describes it in full).

::

    file    := magic record*
    magic   := "MDTRACE1"                      8 bytes, ASCII
    record  := offset:u64le length:u32le reserved:u32le data[length]

Records follow each other with no padding and the file ends exactly after
the last record's data.  ``reserved`` is written as 0 and ignored when read.
Replaying a trace applies ``pwrite(offset, data)`` for every record in order.

:func:`read_trace` memory-maps a trace and returns a
:class:`~mdstream.plan.WritePlan` whose ``buffer`` *is* the mapping:
``sources`` point at each record's data, nothing is copied.  Finding the
records is a chain (each header says where the next one starts); for large
traces of small records the chain is followed by many speculative "lanes" in
lockstep with numpy and stitched together, every accepted record being proven
part of the chain (see :func:`_scan`).  :class:`TraceWriter` writes traces
privately (mode 0600) and atomically.
"""

from __future__ import annotations

import errno
import os
import struct
from array import array
from types import TracebackType
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from mdstream._files import map_file, open_input
from mdstream.errors import TraceFormatError, UnsafePathError
from mdstream.plan import WritePlan

__all__ = ["MAGIC", "RECORD_HEADER_SIZE", "TraceFormatError", "TraceWriter", "is_trace", "read_trace"]

MAGIC = b"MDTRACE1"
RECORD_HEADER_SIZE = 16
_HEADER = struct.Struct("<QII")
_LENGTH = struct.Struct("<8xI")
_MAX_FILE_OFFSET = (1 << 63) - 1

PathLike = Union[str, "os.PathLike[str]"]
TraceSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "npt.NDArray[np.uint8]"]


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def is_trace(path: PathLike) -> bool:
    """True when the file starts with the MDTRACE1 magic.

    Raises :class:`~mdstream.errors.InputFileError` (missing, a directory, a
    pipe or device) or ``OSError`` if it cannot be read.
    """
    with os.fdopen(open_input(path), "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _load(source: TraceSource) -> tuple[npt.NDArray[np.uint8], str]:
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 1 or not source.flags.c_contiguous:
            raise TypeError("a trace given as an array must be 1-D C-contiguous uint8")
        return source, "<buffer>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return np.frombuffer(source, dtype=np.uint8), "<buffer>"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"read_trace() wants a path or a bytes-like object, not {type(source).__name__}")
    return map_file(source, "trace"), os.fspath(source)


def read_trace(path_or_buffer: TraceSource) -> WritePlan:
    """Read an MDTRACE1 trace into a :class:`~mdstream.plan.WritePlan` (the records, in order).

    A path is memory-mapped read-only and the plan's ``buffer`` is the
    mapping; bytes-like objects and uint8 arrays are used in place.  Raises
    :class:`TraceFormatError` for an empty file, a cut header, a wrong magic,
    a record header or data cut short by the end of the file, or a record
    whose destination does not fit a file offset (>= 2**63).
    """
    buf, name = _load(path_or_buffer)
    n = buf.size
    if n == 0:
        raise TraceFormatError(f"{name}: empty file, not an MDTRACE1 trace", byte=0)
    if n < len(MAGIC):
        head = bytes(buf[:n])
        if MAGIC.startswith(head):
            raise TraceFormatError(f"{name}: header cut short ({n} of {len(MAGIC)} bytes)", byte=0)
        raise TraceFormatError(f"{name}: not an MDTRACE1 trace: magic {head!r}", byte=0)
    magic = bytes(buf[:len(MAGIC)])
    if magic != MAGIC:
        raise TraceFormatError(f"{name}: not an MDTRACE1 trace: magic {magic!r}", byte=0)
    pos = _scan(buf, name)
    count = pos.size
    if count:
        offsets = np.ndarray((n - 7,), dtype="<u8", buffer=buf, strides=(1,))[pos]
        lengths = np.ndarray((n - 11,), dtype="<u4", buffer=buf, offset=8, strides=(1,))[pos]
        ends = offsets + lengths.astype(np.uint64)
        bad = (offsets > np.uint64(_MAX_FILE_OFFSET)) | (ends > np.uint64(_MAX_FILE_OFFSET)) | (ends < offsets)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise TraceFormatError(
                f"{name}: record {k} at byte {int(pos[k])}: write of {int(lengths[k])} bytes at offset "
                f"{int(offsets[k])} does not fit a file offset (2**63)", record=k, byte=int(pos[k]))
        size = int(ends.max())
        sources = (pos + RECORD_HEADER_SIZE).astype(np.uint64)
    else:
        offsets = np.zeros(0, np.uint64)
        lengths = np.zeros(0, np.uint32)
        sources = np.zeros(0, np.uint64)
        size = 0
    label = os.path.basename(name) if isinstance(path_or_buffer, (str, os.PathLike)) else name
    return WritePlan(buf, np.ascontiguousarray(offsets, dtype=np.uint64), np.ascontiguousarray(lengths, dtype=np.uint32),
                     sources, size, label)


# --- the record scan ----------------------------------------------------------
#
# Record k starts at p_k; p_0 = 8 and p_{k+1} = p_k + 16 + length(p_k).  That
# chain is serial, so:
#
# * small traces, and traces whose records are large on average (few records
#   per byte), are followed with a tight struct loop;
# * otherwise a window of the file is split into K segments and a "lane"
#   starts at the first byte of each.  All lanes step in lockstep (numpy over
#   the lanes): from p a lane jumps to p + 16 + length(p) when the header at p
#   and the one it leads to both look plausible (reserved == 0, inside the
#   file), else it creeps to p + 1.  Once a lane lands on a true record start
#   it stays on the chain (a followed jump from a true record is the true next
#   record), so each lane soon merges with the chain.
# * Stitching follows the true chain from the window's start: where the
#   frontier is a position some lane visited, the lane's run of followed jumps
#   from there is accepted wholesale (each is proven: true start + real jump);
#   elsewhere one serial step is taken.  Errors (cut headers or data) are only
#   ever raised by the serial step at the true frontier, so messages name the
#   exact record and byte.

_SERIAL_BELOW = 1 << 18        # traces shorter than this are scanned serially
_WINDOW = 32 << 20             # largest lane window (bytes)
_FIRST_WINDOW = 32 << 20       # first lane window
_RETRY_WINDOW = 8 << 20        # lane window when trying again after a miss
_SKIP_AFTER_MISS = 4           # serial windows after lanes did not pay off
_LANES = 1024
_MARGIN = 4096                 # lanes run this far into the next segment
_PROBE = 256                   # records parsed serially to estimate density
_DENSE = 192                   # average record size (bytes) below which lanes pay off


class _Cut(Exception):
    """Internal: the true chain reaches a record cut short at ``pos``."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class _Positions:
    """Record positions found so far: numpy runs plus a growing ``array('q')``."""

    def __init__(self) -> None:
        self.chunks: list[npt.NDArray[np.int64]] = []
        self.cur = array("q")
        self._done = 0

    def _flush(self) -> None:
        if len(self.cur):
            self.chunks.append(np.frombuffer(self.cur, dtype=np.int64))
            self._done += len(self.cur)
            self.cur = array("q")

    def add_run(self, run: npt.NDArray[np.int64]) -> None:
        self._flush()
        self.chunks.append(run)
        self._done += run.size

    def count(self) -> int:
        return self._done + len(self.cur)

    def result(self) -> npt.NDArray[np.int64]:
        self._flush()
        if not self.chunks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.chunks)


def _scan(buf: npt.NDArray[np.uint8], name: str) -> npt.NDArray[np.int64]:
    """Positions of all record headers (int64); raises TraceFormatError on a cut record."""
    n = buf.size
    found = _Positions()
    mv = buf.data  # a memoryview of the bytes (struct reads in the serial loop)
    t = len(MAGIC)
    try:
        if n - t < _SERIAL_BELOW:
            _serial(mv, n, t, n, found, -1)
        else:
            window = _FIRST_WINDOW
            skip = 0
            while t < n:
                before = found.count()
                t_probe = t
                t = _serial(mv, n, t, n, found, _PROBE)
                if t >= n:
                    break
                w_end = min(n, t + window)
                probed = found.count() - before
                dense = probed > 0 and (t - t_probe) / probed <= _DENSE
                if dense and skip == 0:
                    before = found.count()
                    t, serial_steps = _lanes(buf, mv, n, t, w_end, found)
                    if 2 * serial_steps > found.count() - before:
                        # The lanes rarely merged with the chain (headers that look
                        # like data and data that looks like headers): go serial
                        # for a while, then try again with a small window.
                        skip, window = _SKIP_AFTER_MISS, _RETRY_WINDOW
                    else:
                        window = min(2 * window, _WINDOW)
                else:
                    skip = max(0, skip - 1)
                    t = _serial(mv, n, t, w_end, found, -1)
    except _Cut as cut:
        raise _cut_error(buf, name, n, cut.pos, found.count()) from None
    return found.result()


def _cut_error(buf: npt.NDArray[np.uint8], name: str, n: int, p: int, k: int) -> TraceFormatError:
    left = n - p
    if left < RECORD_HEADER_SIZE:
        return TraceFormatError(
            f"{name}: record {k} at byte {p}: record header cut short (need {RECORD_HEADER_SIZE} bytes, {left} left)",
            record=k, byte=p)
    length = int.from_bytes(bytes(buf[p + 8:p + 12]), "little")
    return TraceFormatError(
        f"{name}: record {k} at byte {p}: data cut short (need {length} bytes, {left - RECORD_HEADER_SIZE} left)",
        record=k, byte=p)


def _serial(mv: memoryview, n: int, t: int, stop: int, found: _Positions, limit: int) -> int:
    """Follow the chain from ``t`` while ``t < stop`` (at most ``limit`` records when >= 0)."""
    unpack = _LENGTH.unpack_from
    out = found.cur
    append = out.append
    hdr_lim = n - RECORD_HEADER_SIZE
    k = 0
    while t < stop and k != limit:
        if t > hdr_lim:
            raise _Cut(t)
        q = t + RECORD_HEADER_SIZE + unpack(mv, t)[0]
        if q > n:
            raise _Cut(t)
        append(t)
        t = q
        k += 1
    return t


def _lanes(buf: npt.NDArray[np.uint8], mv: memoryview, n: int, t0: int, w_end: int, found: _Positions
           ) -> tuple[int, int]:
    """Scan ``[t0, w_end)`` (``t0`` a true record start) with lockstep lanes.

    Returns the new frontier and how many records needed a serial step.
    """
    hdr_lim = n - RECORD_HEADER_SIZE
    span = w_end - t0
    k_lanes = max(1, min(_LANES, span // 8192))
    seg = -(-span // k_lanes)
    margin = min(_MARGIN, seg)
    starts = t0 + np.arange(k_lanes, dtype=np.int64) * seg
    # Lanes never stand past hdr_lim: the last few bytes are left to the serial step.
    stop = min(w_end, hdr_lim + 1)
    starts = starts[starts < stop]
    k_lanes = starts.size
    if k_lanes == 0:
        before = found.count()
        t = _serial(mv, n, t0, w_end, found, -1)
        return t, found.count() - before
    lane_end = np.minimum(starts + seg + margin, stop)
    max_steps = (seg + margin) // RECORD_HEADER_SIZE + 2
    # view[p] = the u64 at p + 8 = length | reserved << 32, for every p <= n - 16.
    view = np.ndarray((hdr_lim + 1,), dtype="<u8", buffer=buf, offset=8, strides=(1,))
    # A plausible header at p: reserved == 0 and the record fits in the file, i.e.
    # view[p] <= min(hdr_lim - p, 2**32 - 1) as unsigned numbers.  For files under
    # 4 GiB the first bound implies the second.
    big = hdr_lim >= 0xFFFFFFFF
    cap32 = np.uint64(0xFFFFFFFF)
    lim_u = np.uint64(hdr_lim)
    P = np.full((max_steps, k_lanes), -1, dtype=np.int64)
    cnt = np.zeros(k_lanes, dtype=np.int64)
    act = np.arange(k_lanes)
    p = starts.copy()
    le = lane_end.copy()
    step = 0
    all_active = True
    while act.size and step < max_steps:
        if all_active:
            P[step] = p
        else:
            P[step, act] = p
        pu = p.view(np.uint64)
        v = view[p].astype(np.uint64, copy=False)  # no copy on little-endian hosts
        rem = lim_u - pu          # >= 0: lanes stand at p <= hdr_lim
        if big:
            np.minimum(rem, cap32, out=rem)
        ok = v <= rem
        q = v.view(np.int64)
        q += p + RECORD_HEADER_SIZE   # garbage where not ok; masked below
        # ... and the header it leads to is plausible too (two in a row).  q may be
        # garbage (or past hdr_lim); the clamp keeps the read in bounds and "q < le"
        # (le <= hdr_lim + 1) rejects those lanes.
        qu = q.view(np.uint64)
        v2 = view[np.minimum(qu, lim_u)].astype(np.uint64, copy=False)
        rem = lim_u - qu
        if big:
            np.minimum(rem, cap32, out=rem)
        ok &= v2 <= rem
        ok &= q < le
        newp = np.where(ok, q, p + 1)
        keep = newp < le
        step += 1
        if keep.all():
            p = newp
        else:
            all_active = False
            cnt[act[~keep]] = step
            act, p, le = act[keep], newp[keep], le[keep]
    cnt[act] = step
    # Which byte positions some lane visited (relative to t0).
    visited = np.zeros(span + 1, dtype=np.uint8)
    flat = P[:step]
    visited[flat[flat >= 0] - t0] = 1
    vis = visited.data

    unpack = _LENGTH.unpack_from
    t = t0
    serial_steps = 0
    while t < w_end:
        # Serial steps until the frontier meets a position some lane visited.
        append = found.cur.append
        before = len(found.cur)
        while t < w_end and not vis[t - t0]:
            if t > hdr_lim:
                raise _Cut(t)
            q = t + RECORD_HEADER_SIZE + unpack(mv, t)[0]
            if q > n:
                raise _Cut(t)
            append(t)
            t = q
        serial_steps += len(found.cur) - before
        if t >= w_end:
            break
        # Accept the run of followed jumps of a lane that visited t: each one
        # leads from a true record start to the next, so all are true.
        j = int(np.searchsorted(starts, t, side="right")) - 1
        lo = j
        while lo > 0 and lane_end[lo - 1] > t:
            lo -= 1
        run = None
        for jj in range(lo, j + 1):
            if lane_end[jj] <= t:
                continue
            col = P[:cnt[jj], jj]
            idx = int(np.searchsorted(col, t))
            if idx < col.size and col[idx] == t:
                tail = col[idx:]
                creep = np.flatnonzero(tail[1:] - tail[:-1] == 1)
                run = tail[:int(creep[0]) + 1] if creep.size else tail
                break
        if run is None:  # pragma: no cover - a visited position is in some lane
            raise AssertionError("trace scan: visited position not found in any lane")
        last = int(run[-1])
        found.add_run(run[:-1].copy())
        # The run's last record is checked by an ordinary serial step.
        if last > hdr_lim:
            raise _Cut(last)
        q = last + RECORD_HEADER_SIZE + unpack(mv, last)[0]
        if q > n:
            raise _Cut(last)
        found.cur.append(last)
        t = q
    return t, serial_steps


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


class TraceWriter:
    """Write an MDTRACE1 trace, privately and atomically.

    * A new file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600.
    * If ``path`` exists, the trace goes to a temporary file in the same
      directory (``O_EXCL``, 0600) that replaces ``path`` atomically on
      :meth:`close`; until then the old file is untouched.
    * ``path`` being a symbolic link is refused (:class:`~mdstream.errors.UnsafePathError`,
      an ``OSError`` with ``errno.ELOOP``).

    Records are buffered (``buffer_size`` bytes) and written with ``os.write``.
    Used as a context manager the trace is closed on success and aborted (the
    file this writer created is removed) when the block raises.
    """

    def __init__(self, path: PathLike, *, buffer_size: int = 1 << 20, fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self._fsync = fsync
        self._buffer_size = max(RECORD_HEADER_SIZE, int(buffer_size))
        self._pending = bytearray()
        self._fd: int | None = None
        self._temp: str | None = None  # the file we created (temp file, or the new file itself)
        self._replace = False
        self.records = 0
        self.data_bytes = 0
        self._open()
        try:
            self._pending += MAGIC
        except BaseException:  # pragma: no cover
            self.abort()
            raise

    # -- opening -----------------------------------------------------------

    def _refuse_symlink(self) -> None:
        raise UnsafePathError(errno.ELOOP, f"{self.path}: a symbolic link; refusing to write a trace through it",
                              self.path)

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
        for _attempt in range(2):
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                st = None
            if st is None:
                try:
                    fd = os.open(self.path, flags, 0o600)
                except FileExistsError:
                    continue  # appeared meanwhile: go round again and replace it
                self._fd, self._temp, self._replace = fd, self.path, False
                break
            import stat as _stat

            if _stat.S_ISLNK(st.st_mode):
                self._refuse_symlink()
            if _stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
            directory = os.path.dirname(os.path.abspath(self.path))
            base = os.path.basename(self.path)
            for _ in range(100):
                temp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
                try:
                    fd = os.open(temp, flags, 0o600)
                except FileExistsError:
                    continue
                break
            else:  # pragma: no cover
                raise FileExistsError(errno.EEXIST, "could not create a temporary file", directory)
            self._fd, self._temp, self._replace = fd, temp, True
            break
        else:  # pragma: no cover - lost the race twice
            raise FileExistsError(errno.EEXIST, "file keeps appearing while creating it", self.path)
        if hasattr(os, "fchmod"):
            os.fchmod(self._fd, 0o600)  # exact, whatever the umask

    # -- writing -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True after :meth:`close` or :meth:`abort`."""
        return self._fd is None

    def _check_open(self) -> int:
        if self._fd is None:
            raise ValueError("write to a closed TraceWriter")
        return self._fd

    def _flush(self) -> None:
        fd = self._check_open()
        view = memoryview(self._pending)
        while view:
            done = os.write(fd, view)
            view = view[done:]
        view.release()
        self._pending.clear()

    def _write_raw(self, data: Any) -> None:
        fd = self._check_open()
        view = memoryview(data).cast("B")
        while view:
            done = os.write(fd, view)
            view = view[done:]

    def write(self, offset: int, data: Any) -> None:
        """Append one record: ``pwrite(offset, data)``; ``data`` is any bytes-like object."""
        self._check_open()
        view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
        length = view.nbytes
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        offset = int(offset)
        if offset < 0 or offset + length > _MAX_FILE_OFFSET:
            raise ValueError(f"write of {length} bytes at offset {offset} does not fit a file offset (2**63)")
        if length > 0xFFFFFFFF:
            raise ValueError(f"a record holds at most 2**32-1 bytes, not {length}")
        self._pending += _HEADER.pack(offset, length, 0)
        if length >= self._buffer_size:
            self._flush()
            self._write_raw(view)
        else:
            self._pending += view
            if len(self._pending) >= self._buffer_size:
                self._flush()
        self.records += 1
        self.data_bytes += length

    def write_many(self, offsets: Any, lengths: Any, data_buffer: Any, positions: Any) -> None:
        """Append many records at once: record *i* is ``(offsets[i], data_buffer[positions[i]:][:lengths[i]])``.

        Vectorised with numpy (headers and data are assembled in batches of
        about ``buffer_size`` bytes).  Raises ``ValueError`` if the arrays
        differ in length or a range lies outside ``data_buffer``.
        """
        self._check_open()
        offs = np.asarray(offsets)
        lens = np.asarray(lengths)
        poss = np.asarray(positions)
        data = np.frombuffer(data_buffer, dtype=np.uint8) if not isinstance(data_buffer, np.ndarray) \
            else data_buffer.reshape(-1).view(np.uint8)
        if not (offs.ndim == lens.ndim == poss.ndim == 1) or not (offs.size == lens.size == poss.size):
            raise ValueError(f"offsets, lengths and positions must be 1-D of one length "
                             f"({offs.shape}, {lens.shape}, {poss.shape})")
        for label, arr in (("offsets", offs), ("lengths", lens), ("positions", poss)):
            if arr.size and (arr.dtype.kind not in "iu"):
                raise TypeError(f"{label} must hold integers, not {arr.dtype}")
            if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
                raise ValueError(f"{label} must not be negative")
        if offs.size == 0:
            return
        offs = offs.astype(np.uint64)
        lens64 = lens.astype(np.uint64)
        poss = poss.astype(np.uint64)
        if int(lens64.max()) > 0xFFFFFFFF:
            raise ValueError("a record holds at most 2**32-1 bytes")
        dsize = np.uint64(data.size)
        bad = (poss > dsize) | (lens64 > dsize - np.minimum(poss, dsize))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"write {i}: data range [{int(poss[i])}, {int(poss[i]) + int(lens64[i])}) "
                             f"is outside the data buffer ({data.size} bytes)")
        limit = np.uint64(_MAX_FILE_OFFSET)
        bad = (offs > limit) | (lens64 > limit - np.minimum(offs, limit))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"write {i}: {int(lens64[i])} bytes at offset {int(offs[i])} do not fit a file offset")
        self._flush()
        rec = lens64.astype(np.int64) + RECORD_HEADER_SIZE
        csum = np.cumsum(rec)
        # Batches of about buffer_size output bytes (at least one record each).
        cuts = np.searchsorted(csum, np.arange(self._buffer_size, int(csum[-1]), self._buffer_size), side="left") + 1
        edges = np.unique(np.concatenate(([0], cuts, [offs.size])))
        hdr_dtype = np.dtype([("offset", "<u8"), ("length", "<u4"), ("reserved", "<u4")])
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
            if b <= a:
                continue
            r = rec[a:b]
            base = csum[a - 1] if a else 0
            starts = csum[a:b] - r - base
            total = int(csum[b - 1] - base)
            outb = np.empty(total, dtype=np.uint8)
            hdr = np.zeros(b - a, dtype=hdr_dtype)
            hdr["offset"] = offs[a:b]
            hdr["length"] = lens64[a:b]
            hidx = (starts[:, None] + np.arange(RECORD_HEADER_SIZE, dtype=np.int64)).ravel()
            outb[hidx] = hdr.view(np.uint8)
            ln = lens64[a:b].astype(np.int64)
            if int(ln.sum()):
                big = np.flatnonzero(ln >= 4096)
                for i in big.tolist():
                    s = int(poss[a + i])
                    d = int(starts[i]) + RECORD_HEADER_SIZE
                    outb[d:d + int(ln[i])] = data[s:s + int(ln[i])]
                small = np.flatnonzero((ln > 0) & (ln < 4096))
                if small.size:
                    sl = ln[small]
                    rel = np.arange(int(sl.sum()), dtype=np.int64) - np.repeat(np.cumsum(sl) - sl, sl)
                    dst = np.repeat(starts[small] + RECORD_HEADER_SIZE, sl) + rel
                    src = np.repeat(poss[a:b][small].astype(np.int64), sl) + rel
                    outb[dst] = data[src]
            self._write_raw(outb)
        self.records += int(offs.size)
        self.data_bytes += int(lens64.sum())

    def write_plan(self, plan: WritePlan) -> None:
        """Append every write of ``plan`` in order."""
        self.write_many(plan.offsets, plan.lengths, plan.buffer, plan.sources)

    # -- finishing ---------------------------------------------------------

    def close(self) -> None:
        """Flush, close and publish the trace (rename over ``path`` when replacing).  Idempotent."""
        if self._fd is None:
            return
        try:
            self._flush()
            if self._fsync:
                os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        fd, self._fd = self._fd, None
        os.close(fd)
        if self._replace and self._temp is not None:
            try:
                os.replace(self._temp, self.path)
            except BaseException:
                _unlink_quietly(self._temp)
                self._temp = None
                raise
        self._temp = None

    def abort(self) -> None:
        """Discard the trace: close and remove the file this writer created.  Idempotent.

        When replacing an existing file, that file is left as it was.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass
        if self._temp is not None:
            _unlink_quietly(self._temp)
            self._temp = None
        self._pending.clear()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.abort()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

