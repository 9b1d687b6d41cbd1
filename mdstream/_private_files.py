"""Private output files: created 0600 beside their final name, exclusively and
never through a symlink, then fsynced and renamed into place.  Shared by the
sinks (FileSink, TraceSink) and ``mdstream spill finish``."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Callable

from mdstream import errors

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def temp_name(directory: str, base: str, suffix: str = ".mdstream-partial") -> str:
    """A candidate hidden temporary name beside ``base`` in ``directory``."""
    return os.path.join(directory, f".{base}.{secrets.token_hex(6)}{suffix}")


def create_private_temp(path: str | os.PathLike[str], suffix: str = ".mdstream-partial",
                        name: Callable[[str, str], str] | None = None) -> tuple[int, str, str]:
    """Create a 0600 temporary file beside ``path``; returns ``(fd, temp path, absolute final path)``.

    ``O_CREAT|O_EXCL|O_NOFOLLOW``: nothing planted at the temporary name is
    followed or reused.  ``name(directory, base)`` picks candidate names
    (default :func:`temp_name` with ``suffix``).
    """
    given = os.fspath(path)
    if not given:
        raise errors.OutputPathError("the output path is empty")
    final = os.path.abspath(given)
    directory, base = os.path.split(final)
    if not base or given.endswith(os.sep):
        raise errors.OutputPathError(f"{given} names a directory, not an output file")
    check_regular_target(final, given)
    for _ in range(100):
        temp = name(directory, base) if name else temp_name(directory, base, suffix)
        try:
            fd = os.open(temp, _CREATE, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)  # whatever the umask
        return fd, temp, final
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file beside it", given)


def check_regular_target(final: str, given: str | None = None) -> None:
    """Refuse an output path that exists and is not a regular file.

    A file sink replaces its target by renaming over it: that must never turn a
    device node, a FIFO or a directory into a dump (written as root,
    ``-o /dev/null`` would replace the device).  Streams go through
    :class:`mdstream.StreamSink` instead.
    """
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return
    shown = given or final
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return  # a symlink is replaced itself by the rename, never followed
    if stat.S_ISDIR(st.st_mode):
        raise errors.OutputPathError(f"{shown} is a directory, not an output file")
    kind = ("a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise errors.OutputPathError(f"{shown} is {kind}: a file sink never replaces it; write it as a stream "
                                 "(mdstream.StreamSink, or the CLI's -o)")


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
