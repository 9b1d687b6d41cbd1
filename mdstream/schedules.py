"""Turning a source into the ordered list of writes the DbgHelp simulator replays.

A :class:`~mdstream.plan.WritePlan` (defined in :mod:`mdstream.plan`, re-exported
here) is a sequence of ``pwrite(offset, data)`` calls held as
whole numpy arrays: ``offsets[i]`` (destination), ``lengths[i]`` and
``sources[i]`` (where write *i*'s bytes start in ``buffer``).  Plans come from

* an MDTRACE1 trace (:func:`mdstream.trace.read_trace`: the recorded order),
* a minidump cut by a *schedule* (:func:`plan_for`):

  ``sequential``
      fixed-size chunks (64 KiB by default) at increasing offsets;
  ``writer``
      what a real dump writer does: the header with placeholder zeros first,
      then the streams in file order in small pieces (a list's count, then
      each entry's 4-16-byte fields, an entry written only once the data it
      points at has been written, memory in 1 KiB chunks, strings whole),
      finally seeking back to rewrite the header and directory in 4-8-byte
      pieces;
  ``shuffled``
      a seeded permutation of 4 KiB chunks, about 10 % of them first written
      with garbage and later with the right bytes;

* synthetic generators for benchmarks (:func:`synthetic_plan`, :func:`tiny_plan`,
  :func:`sized_plan`), built with numpy only, deterministic from a seed.

For every plan built from a file, :meth:`WritePlan.apply` (the pure-numpy
oracle of "pwrite every write in order") reproduces the file byte for byte.
"""

from __future__ import annotations

import errno
import heapq
import os
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from mdstream._files import map_file, read_with_room
from mdstream.errors import InputFileError, ScheduleError
from mdstream.minidump import HEADER_SIZE, Region, check_header, iter_regions
from mdstream.plan import WritePlan, backward_writes
from mdstream.trace import is_trace, read_trace

__all__ = [
    "SCHEDULES",
    "SYNTHETIC_KINDS",
    "ScheduleError",
    "WritePlan",
    "backward_writes",
    "plan_for",
    "sized_plan",
    "synthetic_plan",
    "tiny_plan",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Schedule names accepted by :func:`plan_for`.
SCHEDULES: tuple[str, ...] = ("writer", "sequential", "shuffled")
#: Kinds accepted by :func:`synthetic_plan`.
SYNTHETIC_KINDS: tuple[str, ...] = ("tiny", "sized")

#: Default chunk sizes: the sequential piece, the shuffled piece and the
#: writer's memory piece.
DEFAULT_CHUNK: dict[str, int] = {"sequential": 64 * 1024, "shuffled": 4 * 1024, "writer": 1024}

#: Fraction of chunks the ``shuffled`` schedule first writes with garbage.
GARBAGE_FRACTION = 0.10

# --------------------------------------------------------------------------
# Helpers shared by the builders
# --------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ScheduleError(f"{name} must be an int, not {type(value).__name__}")
    if int(value) < minimum:
        raise ScheduleError(f"{name} must be >= {minimum}, not {int(value)}")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ScheduleError(f"seed must be a non-negative int, not {seed!r}")
    return int(seed)


def _plan(buffer: npt.NDArray[np.uint8], offsets: Any, lengths: Any, sources: Any, name: str) -> WritePlan:
    offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
    lengths = np.ascontiguousarray(lengths, dtype=np.uint32)
    sources = np.ascontiguousarray(sources, dtype=np.uint64)
    size = int((offsets + lengths.astype(np.uint64)).max()) if offsets.size else 0
    return WritePlan(np.ascontiguousarray(buffer, dtype=np.uint8), offsets, lengths, sources, size, name)


# --------------------------------------------------------------------------
# Schedules over a minidump
# --------------------------------------------------------------------------


def plan_for(source_path: PathLike, schedule: str = "writer", chunk: int | None = None, seed: int = 0) -> WritePlan:
    """The writes that reproduce ``source_path``.

    An MDTRACE1 trace (recognised by its magic) is returned in its own order
    and ``schedule``, ``chunk`` and ``seed`` are ignored.  Anything else must be
    a minidump (:class:`~mdstream.minidump.NotAMinidumpError` otherwise) and is
    cut by ``schedule``:

    * ``"sequential"``: ``chunk``-byte writes (default 64 KiB) at increasing offsets;
    * ``"writer"``: a real writer's pattern (see the module docstring); ``chunk``
      is the memory piece size (default 1 KiB);
    * ``"shuffled"``: ``chunk``-byte pieces (default 4 KiB) in a permutation seeded
      with ``seed``; about 10 % are first written with garbage (appended to the
      plan's buffer) and later, still in the shuffled order, with the right bytes.

    Raises :class:`ScheduleError` for an unknown schedule, ``chunk <= 0`` or a bad seed.
    ``plan.apply()`` equals the file byte for byte.
    """
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if chunk is not None:
        chunk = _check_int("chunk", chunk)
    seed = _check_seed(seed)
    if is_trace(source_path):
        return read_trace(source_path)
    data = map_file(source_path, "minidump")
    check_header(data, os.fspath(source_path))   # errors name the path as given
    name = os.path.basename(os.fspath(source_path))  # plans are labelled with the file's name
    if schedule == "sequential":
        return _sequential(data, chunk or DEFAULT_CHUNK["sequential"], name)
    if schedule == "shuffled":
        return _shuffled(source_path, data.size, chunk or DEFAULT_CHUNK["shuffled"], seed, name)
    return _writer(source_path, chunk or DEFAULT_CHUNK["writer"], name)


def _sequential(data: npt.NDArray[np.uint8], chunk: int, name: str) -> WritePlan:
    size = data.size
    offsets = np.arange(0, size, chunk, dtype=np.uint64)
    lengths = np.minimum(np.uint64(chunk), np.uint64(size) - offsets)
    return _plan(data, offsets, lengths, offsets, f"{name} (sequential, {chunk} B)")


def _shuffled(path: PathLike, size: int, chunk: int, seed: int, name: str) -> WritePlan:
    rng = np.random.default_rng(seed)
    starts = np.arange(0, size, chunk, dtype=np.int64)
    lens = np.minimum(chunk, size - starts)
    nchunks = starts.size
    perm = rng.permutation(nchunks)
    # Chunks first written with garbage: about 10 %, at least one.
    ngarbage = max(1, int(round(nchunks * GARBAGE_FRACTION))) if nchunks else 0
    garbage = np.sort(rng.choice(nchunks, size=ngarbage, replace=False)) if ngarbage else np.zeros(0, np.int64)
    rank = np.empty(nchunks, dtype=np.int64)
    rank[perm] = np.arange(nchunks)
    # Event keys: the right bytes of the chunk of rank r at 2r+1; the garbage of
    # chunk g at 2k with k drawn from [0, rank(g)], i.e. before its right bytes.
    g_rank = rank[garbage]
    g_slot = np.floor(rng.random(ngarbage) * (g_rank + 1)).astype(np.int64)
    keys = np.concatenate((2 * np.arange(nchunks, dtype=np.int64) + 1, 2 * g_slot))
    chunk_of = np.concatenate((perm, garbage))
    is_garbage = np.concatenate((np.zeros(nchunks, bool), np.ones(ngarbage, bool)))
    order = np.argsort(keys, kind="stable")
    chunk_of, is_garbage = chunk_of[order], is_garbage[order]
    # Garbage bytes: the right bytes XOR a non-zero byte, so every garbage byte is wrong.
    g_lens = lens[garbage]
    buf, scratch = read_with_room(path, int(g_lens.sum()))
    if scratch != size:
        raise InputFileError(errno.EIO, f"{os.fspath(path)}: the file changed size while being read", os.fspath(path))
    data = buf[:size]
    g_src = scratch + np.cumsum(g_lens) - g_lens
    # One non-zero key per chunk, all chunks at once: full chunks are rows of
    # the file seen as (nchunks, chunk); only the file's last chunk can be short.
    keys_x = rng.integers(1, 256, ngarbage, dtype=np.uint8)
    full = g_lens == chunk
    nfull = int(np.count_nonzero(full))
    if nfull:
        rows = data[:(size // chunk) * chunk].reshape(-1, chunk)
        out = buf[scratch:scratch + nfull * chunk].reshape(nfull, chunk)  # full chunks' garbage comes first
        g_full, k_full = garbage[full], keys_x[full, None]
        step = max(1, (4 << 20) // chunk)  # gather a few MiB at a time, not one chunk-sized copy of it all
        for i in range(0, nfull, step):
            np.bitwise_xor(rows[g_full[i:i + step]], k_full[i:i + step], out=out[i:i + step])
    for gs, c, ln, k in zip(g_src[~full], garbage[~full], g_lens[~full], keys_x[~full]):
        o = int(starts[c])
        buf[int(gs):int(gs) + int(ln)] = data[o:o + int(ln)] ^ k
    g_src_of_chunk = np.zeros(nchunks, dtype=np.int64)
    g_src_of_chunk[garbage] = g_src
    offsets = starts[chunk_of]
    lengths = lens[chunk_of]
    sources = np.where(is_garbage, g_src_of_chunk[chunk_of], offsets)
    return _plan(buf, offsets, lengths, sources, f"{name} (shuffled, {chunk} B, seed {seed})")


# -- the writer schedule ----------------------------------------------------

# Piece kinds used by _writer
_KIND_STRUCT = "struct"     # 4-16-byte fields
_KIND_MEMORY = "memory"     # chunk-sized pieces
_KIND_WHOLE = "whole"       # one write (strings, contexts, CodeView records, text)


def _writer(path: PathLike, chunk: int, name: str) -> WritePlan:
    buf, size = read_with_room(path, HEADER_SIZE)
    data = buf[:size]
    regions = list(iter_regions(data, name=name))
    directory = next(r for r in regions if r.kind == "directory")
    # Final rewrite: the header, then the directory (each entry: type, then location).
    tail_units: list[tuple[int, int]] = []
    pos = 0
    for f in (8, 8, 4, 4, 8):  # Signature+Version, NumberOfStreams+Rva, CheckSum, TimeDateStamp, Flags
        tail_units.append((pos, f))
        pos += f
    d0, d1 = directory.start, min(directory.end, size)
    for e in range(d0, d1, 12):
        tail_units.append((e, min(4, d1 - e)))
        if e + 4 < d1:
            tail_units.append((e + 4, min(8, d1 - e - 4)))
    reserved = [(0, HEADER_SIZE), (d0, d1)]

    # Content regions (everything but header and directory), clipped to the file.
    content = [r for r in regions if r.kind not in ("header", "directory") and r.start < size and r.end > r.start]
    pieces = _cut_pieces(content, reserved, size, chunk)
    # pieces: arrays (offset, length, dep_end) in file order.  A structure that
    # points at data lying after it (dep_end > offset) is written only once the
    # file has been written up to dep_end: reserve, write the data, fill in.
    p_off, p_len, p_dep = pieces
    p_end = p_off + p_len
    deferred = p_dep > p_off  # data pointed at lies after the structure
    fwd = np.flatnonzero(~deferred)
    # Position in the forward sequence after which each deferred piece is emitted:
    # after the first forward piece that reaches dep_end (or at the end).
    fwd_end_max = np.maximum.accumulate(p_end[fwd]) if fwd.size else np.zeros(0, np.int64)
    dpos = np.flatnonzero(deferred)
    after = np.searchsorted(fwd_end_max, p_dep[dpos], side="left")
    # Sort key: forward piece k at 2k; deferred pieces at 2*after+1, then by offset.
    keys_f = 2 * np.arange(fwd.size, dtype=np.int64)
    keys_d = 2 * after.astype(np.int64) + 1
    all_idx = np.concatenate((fwd, dpos))
    all_keys = np.concatenate((keys_f, keys_d))
    order = np.lexsort((p_off[all_idx], all_keys))
    body = all_idx[order]

    scratch = size
    buf[scratch:scratch + HEADER_SIZE] = data[:HEADER_SIZE]
    buf[scratch + 8:scratch + 16] = 0  # NumberOfStreams and StreamDirectoryRva: placeholders
    t_off = np.array([u[0] for u in tail_units], dtype=np.int64)
    t_len = np.array([u[1] for u in tail_units], dtype=np.int64)
    offsets = np.concatenate(([0], p_off[body], t_off))
    lengths = np.concatenate(([HEADER_SIZE], p_len[body], t_len))
    sources = np.concatenate(([scratch], p_off[body], t_off))
    return _plan(buf, offsets, lengths, sources, f"{name} (writer)")


def _cut_pieces(regions: list[Region], reserved: list[tuple[int, int]], size: int, chunk: int
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Cut ``[0, size)`` minus ``reserved`` into writer pieces.

    Every byte goes to the innermost region covering it (ties: the later
    region); bytes of no region are padding, written in ``chunk`` pieces.
    Returns arrays ``(offset, length, dep_end)`` sorted by offset, where
    ``dep_end`` is the end of the data the piece's region points at (0 if none).
    """
    bounds = {0, size}
    for a, b in reserved:
        bounds.update((max(0, min(a, size)), max(0, min(b, size))))
    for r in regions:
        bounds.update((r.start, min(r.end, size)))
    edges = sorted(bounds)
    # Sweep: owner of each elementary interval = smallest active region (ties: later).
    by_start = sorted(range(len(regions)), key=lambda i: regions[i].start)
    heap: list[tuple[int, int, int]] = []
    j = 0
    owners: list[int] = []
    for a in edges[:-1]:
        while j < len(by_start) and regions[by_start[j]].start <= a:
            i = by_start[j]
            heapq.heappush(heap, (min(regions[i].end, size) - regions[i].start, -i, i))
            j += 1
        # Lazy deletion: a region that ended only matters once it is on top.
        while heap and min(regions[heap[0][2]].end, size) <= a:
            heapq.heappop(heap)
        owners.append(heap[0][2] if heap else -1)
    res_mask = []
    for a in edges[:-1]:
        res_mask.append(any(r0 <= a < r1 for r0, r1 in reserved))

    parts: list[Any] = []      # piece starts per interval (lists, or arrays for long ones)
    ends: list[int] = []
    deps: list[int] = []
    counts: list[int] = []
    # Merge consecutive elementary intervals with the same owner.
    k = 0
    nint = len(edges) - 1
    while k < nint:
        a = edges[k]
        own = owners[k]
        res = res_mask[k]
        m = k + 1
        while m < nint and owners[m] == own and res_mask[m] == res:
            m += 1
        b = edges[m]
        k = m
        if res or b <= a:
            continue
        if own < 0:
            cuts = _grid(a, a, b, chunk)
            dep = 0
        else:
            r = regions[own]
            cuts = _region_cuts(r, a, b, chunk)
            dep = min(max((e for _, e in r.refs), default=0), size)
        parts.append(cuts)
        ends.append(b)
        deps.append(dep)
        counts.append(len(cuts))
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z, z
    starts = np.concatenate([np.asarray(c, dtype=np.int64) for c in parts])
    rep = np.asarray(counts, dtype=np.int64)
    piece_end = np.repeat(np.asarray(ends, dtype=np.int64), rep)
    nxt = np.append(starts[1:], np.int64(size))
    return starts, np.minimum(nxt, piece_end) - starts, np.repeat(np.asarray(deps, dtype=np.int64), rep)


def _grid(origin: int, a: int, b: int, step: int) -> Any:
    """``[a]`` plus every ``origin + k*step`` strictly inside ``(a, b)`` (a list, or an array when long)."""
    first = origin + ((a - origin) // step + 1) * step
    if (b - first) // step < 64:
        return [a, *range(first, b, step)]
    return np.concatenate(([a], np.arange(first, b, step, dtype=np.int64)))


def _region_cuts(r: Region, a: int, b: int, chunk: int) -> Any:
    """Piece starts for the part ``[a, b)`` of region ``r``."""
    if r.fields:
        cuts = [a]
        at = r.start
        for f in r.fields:
            at += f
            if at >= b:
                break
            if at > a:
                cuts.append(at)
        return cuts
    if r.piece == _KIND_MEMORY:
        return _grid(r.start, a, b, chunk)
    if r.piece == _KIND_WHOLE:
        return [a]
    return _grid(r.start, a, b, 8)  # a structure of unknown layout: 8-byte fields


# --------------------------------------------------------------------------
# Synthetic plans for benchmarks
# --------------------------------------------------------------------------


def tiny_plan(count: int, *, seed: int = 0, min_size: int = 4, max_size: int = 16,
              backward_fraction: float = 0.5) -> WritePlan:
    """``count`` writes of ``min_size``-``max_size`` bytes, like a writer emitting structure fields.

    About ``backward_fraction`` of them seek back and patch bytes written
    earlier (below the current end); the others append.  Content and order
    are a function of ``seed``; built with numpy only (10 M writes in well
    under a second).
    """
    count = _check_int("count", count, minimum=0)
    seed = _check_seed(seed)
    min_size = _check_int("min_size", min_size)
    max_size = _check_int("max_size", max_size)
    if max_size < min_size:
        raise ScheduleError(f"max_size ({max_size}) is smaller than min_size ({min_size})")
    if isinstance(backward_fraction, bool) or not (0.0 <= float(backward_fraction) < 1.0):
        raise ScheduleError(f"backward_fraction must be in [0, 1), not {backward_fraction!r}")
    rng = np.random.default_rng(seed)
    name = f"tiny ({count} writes, {min_size}-{max_size} B, seed {seed})"
    if count == 0:
        return _plan(np.zeros(0, np.uint8), [], [], [], name)
    lengths = rng.integers(min_size, max_size + 1, count, dtype=np.int64)
    patch = rng.random(count) < float(backward_fraction)
    patch[0] = False
    fwd_len = np.where(patch, 0, lengths)
    written_after = np.cumsum(fwd_len)
    written_before = written_after - fwd_len
    # A patch never exceeds what has been written (the first write appends >= min_size).
    lengths = np.where(patch, np.minimum(lengths, written_before), lengths)
    room = written_before - lengths + 1
    patch_at = np.floor(rng.random(count) * room).astype(np.int64)
    offsets = np.where(patch, patch_at, written_before)
    sources = np.cumsum(lengths) - lengths
    buffer = np.frombuffer(rng.bytes(int(lengths.sum())), dtype=np.uint8)
    return _plan(buffer, offsets, lengths, sources, name)


def sized_plan(write_size: int, total_bytes: int, *, seed: int = 0, pool_bytes: int = 64 << 20) -> WritePlan:
    """Writes of ``write_size`` bytes at increasing offsets covering ``total_bytes``.

    Every write is ``write_size`` long except a shorter last one when
    ``total_bytes`` is not a multiple.  The bytes come from a seeded random
    pool of at most ``pool_bytes`` (writes reuse it when the output is larger),
    so a multi-GB plan costs only the pool and the index arrays.
    """
    write_size = _check_int("write_size", write_size)
    total_bytes = _check_int("total_bytes", total_bytes, minimum=0)
    seed = _check_seed(seed)
    pool_bytes = _check_int("pool_bytes", pool_bytes)
    if write_size > 0xFFFFFFFF:
        raise ScheduleError(f"write_size must fit 32 bits (BufferBytes), not {write_size}")
    rng = np.random.default_rng(seed)
    name = f"sized ({write_size} B writes, {total_bytes} B, seed {seed})"
    pool = max(min(total_bytes, pool_bytes), min(write_size, total_bytes))
    buffer = np.frombuffer(rng.bytes(pool), dtype=np.uint8)
    offsets = np.arange(0, total_bytes, write_size, dtype=np.uint64)
    lengths = np.minimum(np.uint64(write_size), np.uint64(total_bytes) - offsets)
    if total_bytes <= pool:
        sources = offsets
    else:
        sources = offsets % np.uint64(pool - write_size + 1)
    return _plan(buffer, offsets, lengths, sources, name)


def synthetic_plan(kind: str, *, seed: int = 0, **params: Any) -> WritePlan:
    """A synthetic plan for benchmarks: ``kind`` is ``"tiny"`` or ``"sized"``.

    ``synthetic_plan("tiny", count=N, ...)`` calls :func:`tiny_plan`;
    ``synthetic_plan("sized", write_size=W, total_bytes=T, ...)`` calls
    :func:`sized_plan`.  Deterministic from ``seed``.
    """
    if kind == "tiny":
        if "count" not in params:
            raise ScheduleError("synthetic_plan('tiny') needs count=")
        allowed = {"count", "min_size", "max_size", "backward_fraction"}
        fn: Any = tiny_plan
    elif kind == "sized":
        if "write_size" not in params or "total_bytes" not in params:
            raise ScheduleError("synthetic_plan('sized') needs write_size= and total_bytes=")
        allowed = {"write_size", "total_bytes", "pool_bytes"}
        fn = sized_plan
    else:
        raise ScheduleError(f"unknown synthetic plan kind {kind!r}; choose one of {', '.join(SYNTHETIC_KINDS)}")
    extra = set(params) - allowed
    if extra:
        raise ScheduleError(f"synthetic_plan({kind!r}) got unexpected parameters: {', '.join(sorted(extra))}")
    return fn(seed=seed, **params)  # type: ignore[no-any-return]

