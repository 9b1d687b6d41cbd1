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
    final = check_output_name(given)
    directory, base = os.path.split(final)
    check_regular_target(final, given)
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


def check_output_name(given: str) -> str:
    """Refuse a path that cannot name an output file (empty, ``dir/``, ``.``); returns it made absolute."""
    if not given:
        raise errors.OutputPathError("the output path is empty")
    final = os.path.abspath(given)
    base = os.path.basename(final)
    if not base or given.endswith(os.sep) or os.path.basename(given) in (os.curdir, os.pardir) or os.path.isdir(final):
        raise errors.OutputPathError(f"{given} names a directory, not an output file")
    return final


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


def exists_error(final: str) -> OutputExistsError:
    """The error for an output that exists and may not be replaced."""
    return OutputExistsError(errno.EEXIST, f"{final} exists; pass overwrite=True to replace it", final)


def check_new_output(final: str, overwrite: bool) -> None:
    """Refuse an existing output up front (before any work) unless ``overwrite``."""
    if not overwrite and os.path.lexists(final):
        raise exists_error(final)


def publish(temp: str, final: str, overwrite: bool, keep_temp: bool = False) -> bool:
    """Move the finished temporary file to ``final``; without ``overwrite``, never replace anything.

    ``keep_temp``: leave ``temp`` linked beside ``final`` (the caller removes it
    later); returns whether it is still there.

    Raises :class:`~mdstream.errors.OutputExistsError` if ``final`` exists (it
    may have appeared while the output was written); ``temp`` is then left in
    place for the caller to keep or remove.
    """
    if overwrite:
        os.replace(temp, final)  # replaces a symlink at ``final`` itself, never its target
        return False
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
        return False
    if keep_temp:
        return True
    os.unlink(temp)
    return False
