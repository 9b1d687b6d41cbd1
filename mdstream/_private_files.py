"""Private output files: created 0600 beside their final name, exclusively and
never through a symlink, then fsynced and renamed into place.  Shared by the
sinks (FileSink, TraceSink) and ``mdstream spill finish``."""

from __future__ import annotations

import errno
import os
import secrets
from typing import Callable

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
    final = os.path.abspath(given)
    directory, base = os.path.split(final)
    if not base:
        raise IsADirectoryError(f"{given} names a directory")
    for _ in range(100):
        temp = name(directory, base) if name else temp_name(directory, base, suffix)
        try:
            fd = os.open(temp, _CREATE, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)  # whatever the umask
        return fd, temp, final
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file beside it", given)


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
