"""The write plan: an ordered list of ``pwrite(offset, data)`` calls held as whole numpy arrays.

A :class:`WritePlan` is what the DbgHelp simulator replays and what a trace
reads back into.  It depends on nothing else in mdstream, so the formats that
produce plans (:mod:`mdstream.trace`) and the code that cuts files into plans
(:mod:`mdstream.schedules`) both sit above it.  :meth:`WritePlan.apply` is the
pure-numpy oracle of "pwrite every write in order".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mdstream.errors import WritePlanError

__all__ = ["WritePlan", "WritePlanError", "backward_writes"]

_MAX_FILE_OFFSET = (1 << 63) - 1  # pwrite's off_t

@dataclass(eq=False)
class WritePlan:
    """An ordered list of writes, as whole arrays.

    Write *i* is ``pwrite(offsets[i], buffer[sources[i] : sources[i] + lengths[i]])``.
    Writes are applied in array order; where they overlap the later one wins;
    bytes never written read as zero; the result is ``size`` bytes long
    (``max(offsets + lengths)``, 0 for no writes).

    Attributes:
        buffer: ``uint8``, 1-D, C-contiguous: the bytes writes are taken from
            (often a read-only memory map of the source file).
        offsets: ``uint64``: destination offset of each write.
        lengths: ``uint32``: byte count of each write (0 is allowed).
        sources: ``uint64``: position in ``buffer`` of each write's bytes.
        size: the expected final size of the output.
        name: a label for messages and reports (usually the source's file name).
    """

    buffer: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.uint64]
    lengths: npt.NDArray[np.uint32]
    sources: npt.NDArray[np.uint64]
    size: int
    name: str = ""

    @property
    def count(self) -> int:
        """Number of writes."""
        return int(self.offsets.shape[0])

    @property
    def total_bytes(self) -> int:
        """Sum of all write lengths (bytes handed to the callback, rewrites included)."""
        if self.lengths.size == 0:
            return 0
        return int(self.lengths.sum(dtype=np.uint64))

    @property
    def rewritten_bytes(self) -> int:
        """Bytes written again over bytes an earlier write of the plan already wrote
        (``total_bytes`` minus the size of the union of all writes)."""
        keep = np.flatnonzero(self.lengths != 0)
        if keep.size == 0:
            return 0
        offs = self.offsets[keep].astype(np.int64)
        ends = offs + self.lengths[keep].astype(np.int64)
        order = np.argsort(offs, kind="stable")
        offs, ends = offs[order], ends[order]
        reach = np.maximum.accumulate(ends)
        start = offs.copy()
        start[1:] = np.maximum(offs[1:], reach[:-1])       # what earlier writes have not covered yet
        covered = int(np.maximum(ends - start, 0).sum())
        return self.total_bytes - covered

    def __repr__(self) -> str:
        return (f"WritePlan(name={self.name!r}, count={self.count}, size={self.size}, "
                f"total_bytes={self.total_bytes}, buffer={self.buffer.size} bytes)")

    def validate(self) -> None:
        """Check types, shapes and bounds; raise :class:`~mdstream.errors.WritePlanError`
        (a ``ValueError``) naming the first problem.

        Checks: ``buffer`` is 1-D C-contiguous ``uint8``; ``offsets``/``sources``
        are 1-D C-contiguous ``uint64`` and ``lengths`` ``uint32``, all of one
        length; every ``[sources[i], sources[i] + lengths[i])`` lies inside
        ``buffer``; every destination end fits a file offset (< 2**63); and
        ``size == max(offsets + lengths)`` (0 with no writes).
        """
        arrays: list[tuple[str, Any, Any]] = [
            ("buffer", self.buffer, np.uint8),
            ("offsets", self.offsets, np.uint64),
            ("lengths", self.lengths, np.uint32),
            ("sources", self.sources, np.uint64),
        ]
        for label, arr, dtype in arrays:
            if not isinstance(arr, np.ndarray):
                raise WritePlanError(f"{self.name or 'plan'}: {label} must be a numpy array, not {type(arr).__name__}")
            if arr.dtype != np.dtype(dtype):
                raise WritePlanError(f"{self.name or 'plan'}: {label} must have dtype {np.dtype(dtype)}, not {arr.dtype}")
            if arr.ndim != 1:
                raise WritePlanError(f"{self.name or 'plan'}: {label} must be 1-D, not {arr.ndim}-D")
            if not arr.flags.c_contiguous:
                raise WritePlanError(f"{self.name or 'plan'}: {label} must be C-contiguous")
        n = self.offsets.shape[0]
        if self.lengths.shape[0] != n or self.sources.shape[0] != n:
            raise WritePlanError(f"{self.name or 'plan'}: offsets, lengths and sources differ in length "
                             f"({n}, {self.lengths.shape[0]}, {self.sources.shape[0]})")
        if not isinstance(self.size, (int, np.integer)) or isinstance(self.size, bool) or self.size < 0:
            raise WritePlanError(f"{self.name or 'plan'}: size must be a non-negative int, not {self.size!r}")
        if n == 0:
            if self.size != 0:
                raise WritePlanError(f"{self.name or 'plan'}: size is {self.size} but the plan has no writes")
            return
        bufsize = np.uint64(self.buffer.size)
        lengths64 = self.lengths.astype(np.uint64)
        bad = self.sources > bufsize
        bad |= lengths64 > bufsize - np.minimum(self.sources, bufsize)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            s, ln = int(self.sources[i]), int(self.lengths[i])
            raise WritePlanError(f"{self.name or 'plan'}: write {i}: source range [{s}, {s + ln}) "
                             f"is past the end of the buffer ({self.buffer.size} bytes)")
        limit = np.uint64(_MAX_FILE_OFFSET)
        bad = (self.offsets > limit) | (lengths64 > limit - np.minimum(self.offsets, limit))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise WritePlanError(f"{self.name or 'plan'}: write {i}: destination [{int(self.offsets[i])}, "
                             f"{int(self.offsets[i]) + int(self.lengths[i])}) does not fit a file offset (2**63)")
        end = int((self.offsets + lengths64).max())
        if int(self.size) != end:
            raise WritePlanError(f"{self.name or 'plan'}: size is {int(self.size)} but the writes end at {end}")

    def apply(self) -> npt.NDArray[np.uint8]:
        """The expected output: every write applied in order (later writes win, gaps are zero).

        Pure numpy, used by the tests as the oracle.  Writes are taken in plan
        order in batches of about 4 MiB (a larger write is a batch of its own);
        batches are applied one after the other.  Inside a batch, writes that
        overlap no other write of the batch are copied directly (runs that are
        contiguous in both the output and ``buffer`` become one slice copy);
        where writes overlap, each byte takes the value of the last one
        covering it (its owner, found with ``np.maximum.at``).
        """
        self.validate()
        out = np.zeros(int(self.size), dtype=np.uint8)
        keep = np.flatnonzero(self.lengths != 0)
        if keep.size == 0:
            return out
        offs = self.offsets[keep].astype(np.int64)
        lens = self.lengths[keep].astype(np.int64)
        srcs = self.sources[keep].astype(np.int64)
        for a, b in _batches(lens, _BATCH_BYTES):
            _apply_batch(out, self.buffer, offs[a:b], lens[a:b], srcs[a:b])
        return out


# Bytes per batch in apply(); bounds its temporary memory.
_BATCH_BYTES = 1 << 22
# Runs at least this long are copied with a slice instead of a gather.
_SLICE_MIN = 4096


def _ragged_arange(lens: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``concatenate([arange(n) for n in lens])`` without a Python loop."""
    total = int(lens.sum())
    starts = np.cumsum(lens) - lens
    return np.arange(total, dtype=np.int64) - np.repeat(starts, lens)


def _batches(lens: npt.NDArray[np.int64], budget: int) -> list[tuple[int, int]]:
    """Split ``range(len(lens))`` into consecutive runs whose lengths sum to about ``budget``
    (at most ``budget``, unless a single element is larger)."""
    if lens.size == 0:
        return []
    csum = np.cumsum(lens)
    edges = [0]
    while edges[-1] < lens.size:
        a = edges[-1]
        base = int(csum[a - 1]) if a else 0
        b = int(np.searchsorted(csum, base + budget, side="right"))
        edges.append(max(b, a + 1))
    return list(zip(edges[:-1], edges[1:]))


def _apply_batch(out: npt.NDArray[np.uint8], buffer: npt.NDArray[np.uint8], offs: npt.NDArray[np.int64],
                 lens: npt.NDArray[np.int64], srcs: npt.NDArray[np.int64]) -> None:
    """Apply writes given in plan order (all non-empty)."""
    if offs.size == 1:
        o, ln, s = int(offs[0]), int(lens[0]), int(srcs[0])
        out[o:o + ln] = buffer[s:s + ln]
        return
    order = np.argsort(offs, kind="stable")
    s_off = offs[order]
    reach = np.maximum.accumulate(s_off + lens[order])
    # Clusters of overlapping writes in offset order; a cluster of one overlaps nothing.
    head = np.ones(order.size, dtype=bool)
    head[1:] = s_off[1:] >= reach[:-1]
    cluster = np.cumsum(head) - 1
    alone = np.bincount(cluster)[cluster] == 1
    w = order[alone]
    _copy_disjoint(out, buffer, offs[w], lens[w], srcs[w])
    if alone.all():
        return
    # Overlapping writes: lay their clusters side by side in one owner array.
    w = np.sort(order[~alone])                       # plan order: a later write has a larger index
    cluster_of = np.empty_like(cluster)
    cluster_of[order] = cluster
    cl = cluster_of[w]
    ids = np.unique(cl)
    span_start = s_off[np.flatnonzero(head)][ids]
    span_end = reach[np.searchsorted(cluster, ids, side="right") - 1]
    spans = span_end - span_start
    base = np.cumsum(spans) - spans
    slot = np.searchsorted(ids, cl)
    local = offs[w] - span_start[slot] + base[slot]
    ln = lens[w]
    owner = np.full(int(spans.sum()), -1, dtype=np.int64)
    np.maximum.at(owner, np.repeat(local, ln) + _ragged_arange(ln), np.repeat(np.arange(w.size), ln))
    j = np.flatnonzero(owner >= 0)
    k = owner[j]
    dst = offs[w][k] + (j - local[k])
    out[dst] = buffer[srcs[w][k] + (j - local[k])]


def _copy_disjoint(out: npt.NDArray[np.uint8], buffer: npt.NDArray[np.uint8], offs: npt.NDArray[np.int64],
                   lens: npt.NDArray[np.int64], srcs: npt.NDArray[np.int64]) -> None:
    """Copy writes that overlap one another nowhere (their order does not matter)."""
    if offs.size == 0:
        return
    order = np.argsort(offs, kind="stable")
    offs, lens, srcs = offs[order], lens[order], srcs[order]
    # Coalesce writes contiguous in both the output and the buffer into runs.
    new_run = np.ones(offs.size, dtype=bool)
    new_run[1:] = (offs[1:] != offs[:-1] + lens[:-1]) | (srcs[1:] != srcs[:-1] + lens[:-1])
    heads = np.flatnonzero(new_run)
    r_off, r_src = offs[heads], srcs[heads]
    r_len = np.add.reduceat(lens, heads)
    for i in np.flatnonzero(r_len >= _SLICE_MIN).tolist():
        o, ln, s = int(r_off[i]), int(r_len[i]), int(r_src[i])
        out[o:o + ln] = buffer[s:s + ln]
    small = np.flatnonzero(r_len < _SLICE_MIN)
    if small.size == 0:
        return
    o_s, l_s, s_s = r_off[small], r_len[small], r_src[small]
    for a, b in _batches(l_s, _BATCH_BYTES):
        rel = _ragged_arange(l_s[a:b])
        out[np.repeat(o_s[a:b], l_s[a:b]) + rel] = buffer[np.repeat(s_s[a:b], l_s[a:b]) + rel]


def backward_writes(plan: WritePlan) -> tuple[int, int]:
    """Count the writes of ``plan`` that go backwards.

    Returns ``(below_high_water, seeks_back)``: writes that start before the
    highest end written so far (patches, not appends), and writes that start
    before the end of the write just before them (the file position moved back).
    """
    if plan.count < 2:
        return 0, 0
    offs = plan.offsets.astype(np.int64)
    ends = offs + plan.lengths.astype(np.int64)
    high = np.maximum.accumulate(ends)[:-1]
    return int(np.count_nonzero(offs[1:] < high)), int(np.count_nonzero(offs[1:] < ends[:-1]))

