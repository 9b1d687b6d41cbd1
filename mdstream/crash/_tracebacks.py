"""Parse the Python tracebacks ``faulthandler`` prints (what CPython's
``_Py_DumpTracebackThreads`` writes from a signal handler) into the crash
report's ``python_tracebacks`` metadata.  Pure Python, no imports of mdstream."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

__all__ = ["parse_tracebacks"]

_HEADER = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[(.*)\])? \(most recent call first\):$")
_FRAME = re.compile(r'^  File "(.*)", line (\d+|\?\?\?) in (.*)$')


def parse_tracebacks(text: bytes | str, threads: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """``[{"thread_id", "tid", "current", "name", "frames": [{"file", "line", "function"}], "notes"}]``.

    Frames are listed most recent call first, as faulthandler prints them.
    ``thread_id`` is Python's thread identifier (the ``pthread_t``); ``tid``
    the kernel thread id it belongs to, found in ``threads`` (the snapshot's
    thread list: on x86-64 glibc a ``pthread_t`` is the thread's ``fs_base``),
    or None.  Lines of a thread that are not frames (``<no Python frame>``,
    ``...`` for a truncated stack, a traceback cut short) go into ``notes``;
    lines before the first thread are ignored.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    by_base = {int(t["fs_base"]): t for t in threads if t.get("fs_base")}
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        header = _HEADER.match(line)
        if header:
            ident = int(header.group(2), 16)
            owner = by_base.get(ident)
            current = {
                "thread_id": f"0x{ident:016x}",
                "tid": int(owner["tid"]) if owner else None,
                "current": header.group(1) == "Current thread",
                "name": header.group(3) if header.group(3) is not None else (owner or {}).get("name"),
                "frames": [],
                "notes": [],
            }
            out.append(current)
            continue
        frame = _FRAME.match(line)
        if current is None:
            if not frame:
                continue  # a preamble ("Fatal Python error: ...") belongs to no thread
            current = {"thread_id": None, "tid": None, "current": False, "name": None, "frames": [], "notes": []}
            out.append(current)
        if frame:
            current["frames"].append({
                "file": frame.group(1),
                "line": int(frame.group(2)) if frame.group(2).isdigit() else None,
                "function": frame.group(3),
            })
        else:
            current["notes"].append(line.strip())
    for entry in out:
        if not entry["notes"]:
            del entry["notes"]
    return out
