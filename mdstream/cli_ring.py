"""``mdstream ring list|clean``: the named rings in a directory, and reclaiming the stale ones.

A ring whose creator was killed (SIGKILL, SIGTERM, a crash) stays under its
name, and creating it again fails with ``RingExistsError``.  ``clean`` removes
the rings of this user that no live process holds (creator, producer and
consumer all gone; docs/ring-format.md, "Liveness"), and nothing else: not a
ring any process still holds, not a file that is not a ring, not another
user's.  Registered by :func:`add_parsers` from ``mdstream/cli.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from typing import Any

from mdstream import errors

__all__ = ["add_parsers", "find_rings"]

DEFAULT_DIR = "/dev/shm"
_MAGIC = b"MDSRING1"


def emit(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> None:
    """The CLI's convention: the lines, or with ``--json`` one object (``format``, ``status``, payload)."""
    if getattr(args, "json", False):
        out = {"format": f"mdstream-ring-{args.ring_command}/1", "status": "ok"}
        out.update(payload)
        print(json.dumps(out, sort_keys=True))
    else:
        for line in lines:
            print(line)


def find_rings(directory: str = DEFAULT_DIR) -> list[dict[str, Any]]:
    """Every mdstream ring file of this user directly in ``directory``: path, size, stale, creator pid."""
    from mdstream._ring import Ring

    found: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:  # the CLI reports it in one line: "DIR: No such file or directory"
        raise OSError(exc.errno, exc.strerror, directory) from None
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size < len(_MAGIC):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            head = os.pread(fd, len(_MAGIC), 0)
        finally:
            os.close(fd)
        if head != _MAGIC:
            continue
        try:
            stale, creator = Ring.probe_stale(path)
        except errors.MdstreamError as exc:
            found.append({"path": path, "size": st.st_size, "stale": False, "creator_pid": None, "problem": str(exc)})
            continue
        found.append({"path": path, "size": st.st_size, "stale": stale, "creator_pid": creator, "problem": None})
    return found


def cmd_list(args: argparse.Namespace) -> int:
    rings = find_rings(args.dir)
    lines = [f"{r['path']}: {r['size']:,} bytes, creator pid {r['creator_pid']}, "
             f"{'stale' if r['stale'] else 'in use'}{'; ' + r['problem'] if r['problem'] else ''}" for r in rings]
    emit(args, {"directory": os.path.abspath(args.dir), "rings": rings},
         lines or [f"no mdstream rings of this user in {args.dir}"])
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from mdstream._ring import Ring

    removed: list[str] = []
    kept: list[str] = []
    for ring in find_rings(args.dir):
        if not ring["stale"]:
            kept.append(ring["path"])
            continue
        if not args.dry_run:
            # Only the very file that was found stale, re-checked under its creator lock.
            try:
                if not Ring.remove_stale(ring["path"]):
                    if os.path.lexists(ring["path"]):
                        kept.append(ring["path"])
                    continue
            except errors.MdstreamError:
                continue
        removed.append(ring["path"])
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} stale ring {path}" for path in removed]
    lines.append(f"{verb} {len(removed)} stale ring{'s' if len(removed) != 1 else ''}; "
                 f"{len(kept)} in use left alone")
    emit(args, {"directory": os.path.abspath(args.dir), "removed": removed, "in_use": kept,
                "dry_run": bool(args.dry_run)}, lines)
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add ``ring`` (list, clean) to ``mdstream``'s subparsers."""
    p = subparsers.add_parser("ring", help="list named rings, reclaim the stale ones",
                              description="Named rings (POSIX shared memory lives in /dev/shm) and the stale ones "
                                          "their killed creators left behind.")
    sub = p.add_subparsers(dest="ring_command", metavar="ACTION", required=True)
    sp = sub.add_parser("list", help="this user's rings in DIR, stale or in use")
    sp.add_argument("dir", metavar="DIR", nargs="?", default=DEFAULT_DIR, help=f"where to look (default {DEFAULT_DIR})")
    sp.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    sp.set_defaults(func=cmd_list)
    sp = sub.add_parser("clean", help="remove this user's rings that no live process holds")
    sp.add_argument("dir", metavar="DIR", nargs="?", default=DEFAULT_DIR, help=f"where to look (default {DEFAULT_DIR})")
    sp.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    sp.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    sp.set_defaults(func=cmd_clean)
