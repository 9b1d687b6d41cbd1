"""mdstream: stream DbgHelp minidump I/O callbacks through a memory-mapped ring.

The callback (:class:`DumpCallback`) copies every ``IoWriteAllCallback`` into a
:class:`Ring` without the GIL; a consumer drains the ring as zero-copy numpy
batches into sinks that reassemble the dump (:class:`FileSink`,
:class:`MemorySink`, :class:`TraceSink`).  :func:`write_dump` dumps a live
process on Windows or Linux.

Everything here is loaded on first use: ``import mdstream`` imports neither
numpy nor the compiled extension, and the submodules (``mdstream.dbghelp``,
``mdstream.linux``, ``mdstream.windows``, ``mdstream.spill``, ``mdstream.trace``,
``mdstream.minidump``, ...) are reachable as attributes without importing them
first.
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_LAZY_NAMES: dict[str, str] = {
    "DumpCallback": "mdstream._callback",
    "Simulation": "mdstream._callback",
    "Batch": "mdstream._ring",
    "Ring": "mdstream._ring",
    "FileSink": "mdstream._sinks",
    "MemorySink": "mdstream._sinks",
    "NullSink": "mdstream._sinks",
    "TraceSink": "mdstream._sinks",
    "Progress": "mdstream.pipeline",
    "Sink": "mdstream.pipeline",
    "StreamResult": "mdstream.pipeline",
    "StreamSink": "mdstream.pipeline",
    "Tee": "mdstream.pipeline",
    "drain": "mdstream.pipeline",
    "replay": "mdstream.simulator",
    "write_dump": "mdstream.dump",
    "WritePlan": "mdstream.plan",
    "ConsumerGoneError": "mdstream.errors",
    "DumpFailedError": "mdstream.errors",
    "DumpOptionError": "mdstream.errors",
    "DumpSpilledError": "mdstream.errors",
    "DumpTypeError": "mdstream.errors",
    "InputFileError": "mdstream.errors",
    "InputNotFoundError": "mdstream.errors",
    "MdstreamError": "mdstream.errors",
    "MinidumpFormatError": "mdstream.errors",
    "NotAMinidumpError": "mdstream.errors",
    "OutputExistsError": "mdstream.errors",
    "OutputPathError": "mdstream.errors",
    "PeerGoneError": "mdstream.errors",
    "ProducerGoneError": "mdstream.errors",
    "RingAbortedError": "mdstream.errors",
    "RingBusyError": "mdstream.errors",
    "RingClosedError": "mdstream.errors",
    "RingCorruptError": "mdstream.errors",
    "RingError": "mdstream.errors",
    "RingExistsError": "mdstream.errors",
    "RingFinishedError": "mdstream.errors",
    "RingFormatError": "mdstream.errors",
    "RingNotFoundError": "mdstream.errors",
    "RingPermissionError": "mdstream.errors",
    "RingTimeoutError": "mdstream.errors",
    "RingUsedError": "mdstream.errors",
    "ScheduleError": "mdstream.errors",
    "SpillFormatError": "mdstream.errors",
    "TraceFormatError": "mdstream.errors",
    "UnsupportedPlatformError": "mdstream.errors",
}

#: Submodules reachable as attributes (``mdstream.dbghelp.MinidumpType`` after a bare ``import mdstream``).
_SUBMODULES: frozenset[str] = frozenset({
    "bench", "cli", "dbghelp", "dump", "errors", "linux", "minidump", "pipeline", "plan", "sample",
    "schedules", "simulator", "spill", "trace", "windows",
})

__all__ = sorted(_LAZY_NAMES) + ["get_include", "get_source_files", "__version__"]

if TYPE_CHECKING:  # what the lazy attributes are, for type checkers
    from mdstream import (  # not bench and cli: they import this module (the command line sits on top)
        dbghelp, dump, errors, linux, minidump, pipeline, plan, sample, schedules, simulator, spill, trace,
        windows,
    )
    from mdstream._callback import DumpCallback, Simulation
    from mdstream._ring import Batch, Ring
    from mdstream._sinks import FileSink, MemorySink, NullSink, TraceSink
    from mdstream.dump import write_dump
    from mdstream.errors import (
        ConsumerGoneError,
        DumpFailedError,
        DumpOptionError,
        DumpSpilledError,
        DumpTypeError,
        InputFileError,
        InputNotFoundError,
        MdstreamError,
        MinidumpFormatError,
        NotAMinidumpError,
        OutputExistsError,
        OutputPathError,
        PeerGoneError,
        ProducerGoneError,
        RingAbortedError,
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
        ScheduleError,
        SpillFormatError,
        TraceFormatError,
        UnsupportedPlatformError,
    )
    from mdstream.pipeline import Progress, Sink, StreamResult, StreamSink, Tee, drain
    from mdstream.plan import WritePlan
    from mdstream.simulator import replay


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return _importlib.import_module(f"mdstream.{name}")
    raise AttributeError(f"module 'mdstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES) | _SUBMODULES)


def get_include() -> str:
    """Directory holding ``mdstream/ring.h``, ``mdstream/callback.h`` and ``mdstream/dbghelp.h``.

    Native agents compile ``get_source_files()`` with this include path.
    """
    return _os.path.join(_os.path.dirname(__file__), "include")


def get_source_files() -> list[str]:
    """The C core's source files, for native agents that embed the ring and callback."""
    src = _os.path.join(_os.path.dirname(__file__), "src")
    return sorted(_os.path.join(src, f) for f in _os.listdir(src) if f.endswith(".c"))
