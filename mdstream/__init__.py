"""mdstream: stream DbgHelp minidump I/O callbacks through a memory-mapped ring.

The callback (:class:`DumpCallback`) copies every ``IoWriteAllCallback`` into a
:class:`Ring` without the GIL; a consumer drains the ring as zero-copy numpy
batches into sinks that reassemble the dump (:class:`FileSink`,
:class:`MemorySink`, :class:`TraceSink`).
"""

from __future__ import annotations

import os as _os

from mdstream._callback import DumpCallback, Simulation
from mdstream._ring import Batch, Ring
from mdstream._sinks import FileSink, MemorySink, NullSink, TraceSink
from mdstream.errors import (
    ConsumerGoneError,
    DumpFailedError,
    DumpSpilledError,
    MdstreamError,
    PeerGoneError,
    ProducerGoneError,
    RingAbortedError,
    OutputPathError,
    RingBusyError,
    RingClosedError,
    RingCorruptError,
    RingError,
    RingExistsError,
    RingFinishedError,
    RingFormatError,
    RingNotFoundError,
    RingPermissionError,
    RingTimeoutError,
    RingUsedError,
    SpillFormatError,
)
from mdstream.pipeline import Progress, Sink, StreamResult, StreamSink, Tee, drain
from mdstream.simulator import replay

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "ConsumerGoneError",
    "DumpCallback",
    "DumpFailedError",
    "DumpSpilledError",
    "FileSink",
    "MdstreamError",
    "MemorySink",
    "NullSink",
    "OutputPathError",
    "PeerGoneError",
    "ProducerGoneError",
    "Progress",
    "Ring",
    "RingAbortedError",
    "RingBusyError",
    "RingClosedError",
    "RingCorruptError",
    "RingError",
    "RingExistsError",
    "RingFinishedError",
    "RingFormatError",
    "RingNotFoundError",
    "RingPermissionError",
    "RingTimeoutError",
    "RingUsedError",
    "Simulation",
    "Sink",
    "SpillFormatError",
    "StreamResult",
    "StreamSink",
    "Tee",
    "TraceSink",
    "drain",
    "get_include",
    "replay",
    "__version__",
]


def get_include() -> str:
    """Directory holding ``mdstream/ring.h``, ``mdstream/callback.h`` and ``mdstream/dbghelp.h``.

    Native agents compile ``get_source_files()`` with this include path.
    """
    return _os.path.join(_os.path.dirname(__file__), "include")


def get_source_files() -> list[str]:
    """The C core's source files, for native agents that embed the ring and callback."""
    src = _os.path.join(_os.path.dirname(__file__), "src")
    return sorted(_os.path.join(src, f) for f in _os.listdir(src) if f.endswith(".c"))
