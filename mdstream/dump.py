"""Dump a live process on whichever system this is: :func:`write_dump` (also ``mdstream.write_dump``).

On Windows DbgHelp's ``MiniDumpWriteDump`` writes the dump
(:func:`mdstream.windows.write_dump`); on Linux x86-64 mdstream's own writer
does (:func:`mdstream.linux.write_dump`).  Either way every byte streams
through the same callback and ring.  ``mdstream dump PID -o OUT`` is this
function.

A ``MINIDUMP_TYPE`` means the same on both systems.  The Linux writer honours
the flags in :data:`LINUX_DUMP_TYPE_OPTIONS` (``WithFullMemory`` is its
``full=True``, ``FilterMemory`` its ``sanitize_stacks=True``,
``IgnoreInaccessibleMemory`` is what it always does) and refuses every other
flag with :class:`~mdstream.errors.DumpOptionError` rather than ignoring it.
The Linux-only options (:data:`LINUX_ONLY_OPTIONS`) are refused on Windows the
same way.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Union

from mdstream.dbghelp import MinidumpType
from mdstream.errors import DumpOptionError, UnsupportedPlatformError

__all__ = [
    "LINUX_DUMP_TYPE_OPTIONS",
    "LINUX_ONLY_OPTIONS",
    "WINDOWS_ONLY_OPTIONS",
    "linux_options_for",
    "system_writer",
    "write_dump",
]

DumpTypeArg = Union[int, str, Iterable[Union[int, str]], None]

#: What each MINIDUMP_TYPE flag the Linux writer can honour turns into (its keyword arguments).
LINUX_DUMP_TYPE_OPTIONS: dict[int, dict[str, Any]] = {
    int(MinidumpType.MiniDumpWithFullMemory): {"full": True},        # every readable private mapping
    int(MinidumpType.MiniDumpFilterMemory): {"sanitize_stacks": True},  # stacks keep only pointer-like words
    int(MinidumpType.MiniDumpIgnoreInaccessibleMemory): {},          # unreadable pages are always skipped
}

#: Options only the Linux writer has (an error on Windows).
LINUX_ONLY_OPTIONS: tuple[str, ...] = ("include_environ", "include_cmdline", "max_stack", "ip_context",
                                       "stop_timeout", "max_write")
#: Options only the Windows writer has (an error on Linux).
WINDOWS_ONLY_OPTIONS: tuple[str, ...] = ("user_streams", "lock_timeout")


def system_writer() -> str:
    """``"windows"``, ``"linux"``, or raise :class:`~mdstream.errors.UnsupportedPlatformError`."""
    if sys.platform == "win32":
        return "windows"
    if sys.platform.startswith("linux"):
        return "linux"
    raise UnsupportedPlatformError(
        f"mdstream dumps live processes on Windows (DbgHelp) and Linux x86-64; this is {sys.platform}")


def linux_options_for(dump_type: DumpTypeArg) -> dict[str, Any]:
    """The Linux writer's keyword arguments for a ``MINIDUMP_TYPE`` (``None``: a normal dump).

    Raises :class:`~mdstream.errors.DumpOptionError` naming every flag the
    Linux writer cannot honour, and :class:`~mdstream.errors.DumpTypeError` for
    a name that is no flag at all.
    """
    if dump_type is None:
        return {}
    flags = int(MinidumpType.parse(dump_type))
    options: dict[str, Any] = {}
    unsupported = flags
    for bit, meaning in LINUX_DUMP_TYPE_OPTIONS.items():
        if flags & bit:
            options.update(meaning)
            unsupported &= ~bit
    if unsupported:
        names = " | ".join(MinidumpType.describe(unsupported))
        honoured = ", ".join(MinidumpType.describe(bit)[0] for bit in LINUX_DUMP_TYPE_OPTIONS)
        raise DumpOptionError(
            f"the Linux writer cannot honour {names}; it supports MiniDumpNormal, {honoured} "
            f"(its own options: full, sanitize_stacks, include_environ, include_cmdline)")
    return options


def write_dump(
    pid: int,
    output: Any,
    *,
    dump_type: DumpTypeArg = None,
    full: bool = False,
    sanitize_stacks: bool = False,
    overwrite: bool = False,
    progress: Callable[[Any], None] | None = None,
    timeout: float | None = None,
    **options: Any,
) -> Any:
    """Write a minidump of the live process ``pid`` into ``output``, on Windows or Linux.

    ``output``: a path (written privately and renamed into place; an existing
    file is an :class:`~mdstream.errors.OutputExistsError` unless
    ``overwrite=True``), a sink, a list of sinks, or a :class:`~mdstream.Ring`
    another process drains.  ``dump_type``: ``MINIDUMP_TYPE`` flags (an int,
    ``"WithFullMemory|WithHandleData"``, a list); ``None`` is the system's
    default (:data:`mdstream.windows.DEFAULT_DUMP_TYPE` on Windows, a normal
    dump on Linux).  ``full=True`` adds ``WithFullMemory`` and ``sanitize_stacks=True``
    adds ``FilterMemory`` on either system.  Other ``options`` go to the
    system's writer (:func:`mdstream.windows.write_dump`,
    :func:`mdstream.linux.write_dump`); one the other system's writer only has
    is a :class:`~mdstream.errors.DumpOptionError`.

    Returns the :class:`~mdstream.StreamResult`.  Raises
    :class:`~mdstream.errors.UnsupportedPlatformError` elsewhere, and what the
    system's writer raises.
    """
    system = system_writer()
    foreign = WINDOWS_ONLY_OPTIONS if system == "linux" else LINUX_ONLY_OPTIONS
    wrong = sorted(k for k in options if k in foreign)
    if wrong:
        other = "Windows" if system == "linux" else "Linux"
        raise DumpOptionError(f"{', '.join(wrong)}: {other}-only option{'s' if len(wrong) > 1 else ''}; "
                              f"this is {'Linux' if system == 'linux' else 'Windows'}")
    if system == "linux":
        from mdstream import linux

        linux_options = linux_options_for(dump_type)
        linux_options["full"] = bool(full or linux_options.get("full", False))
        linux_options["sanitize_stacks"] = bool(sanitize_stacks or linux_options.get("sanitize_stacks", False))
        return linux.write_dump(pid, output, overwrite=overwrite, progress=progress, timeout=timeout,
                                **linux_options, **options)
    from mdstream import windows

    flags = MinidumpType.parse(windows.DEFAULT_DUMP_TYPE if dump_type is None else dump_type)
    if full:
        flags |= MinidumpType.MiniDumpWithFullMemory
    if sanitize_stacks:
        flags |= MinidumpType.MiniDumpFilterMemory
    return windows.write_dump(pid, output, int(flags), overwrite=overwrite, progress=progress, timeout=timeout,
                              **options)
