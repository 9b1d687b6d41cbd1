"""Private output files: created 0600 beside their final name, exclusively and
never through a symlink, then fsynced and renamed into place.  Shared by the
sinks (FileSink, TraceSink) and ``mdstream spill finish``."""

from __future__ import annotations

import errno
import os
import secrets
from typing import Callable

from mdstream.errors import OutputExistsError

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
        except OSError as exc:
            # Name the output the caller asked for, not our hidden temporary name.
            raise type(exc)(exc.errno, f"cannot create {given}: {exc.strerror}", given) from None
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


def exists_error(final: str) -> OutputExistsError:
    """The error for an output that exists and may not be replaced."""
    return OutputExistsError(errno.EEXIST, f"{final} exists; pass overwrite=True to replace it", final)


def check_new_output(final: str, overwrite: bool) -> None:
    """Refuse an existing output up front (before any work) unless ``overwrite``."""
    if not overwrite and os.path.lexists(final):
        raise exists_error(final)


def publish(temp: str, final: str, overwrite: bool) -> None:
    """Move the finished temporary file to ``final``; without ``overwrite``, never replace anything.

    Raises :class:`~mdstream.errors.OutputExistsError` if ``final`` exists (it
    may have appeared while the output was written); ``temp`` is then left in
    place for the caller to keep or remove.
    """
    if overwrite:
        os.replace(temp, final)  # replaces a symlink at ``final`` itself, never its target
        return
    try:
        # link() fails if ``final`` exists, atomically: no window for a file or symlink to appear.
        os.link(temp, final, follow_symlinks=False)
    except FileExistsError:
        raise exists_error(final) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # A file system without hard links: the best left is check, then rename.
        if os.path.lexists(final):
            raise exists_error(final) from None
        os.replace(temp, final)
        return
    os.unlink(temp)
