"""Opening and reading input files (shared by the formats and the schedules).

Nothing here knows any file format.  :func:`open_input` opens a file the user
named as an input and refuses what mdstream cannot read as a file: a missing
path, a directory, a pipe, a socket or a device (a FIFO such as ``<(cat x.dmp)``
could be read only once and would hang a second open; ``/dev/zero`` never
ends).  Errors name the path as it was given, never a resolved or temporary
name.  :func:`map_file` gives a file's bytes as a read-only array,
:func:`read_with_room` gives a file's bytes as a writable (copy-on-write)
array with scratch space after it.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from typing import Union

import numpy as np
import numpy.typing as npt

from mdstream.errors import InputFileError, InputIsADirectoryError, InputNotFoundError, NotARegularFileError

__all__ = ["map_file", "open_input", "read_with_room"]

PathLike = Union[str, "os.PathLike[str]"]

# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
# before we could even look at what it is.  It changes nothing for regular files.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def open_input(path: PathLike, what: str = "file") -> int:
    """Open ``path`` for reading and return the descriptor; it must be a regular file.

    Raises :class:`~mdstream.errors.InputNotFoundError` (no such file),
    :class:`~mdstream.errors.InputIsADirectoryError` or
    :class:`~mdstream.errors.NotARegularFileError` (a pipe, socket or device),
    each naming ``path`` as given; other ``OSError`` (e.g. permission denied)
    propagate with that name too.
    """
    shown = os.fspath(path)
    if isinstance(shown, bytes):
        shown = os.fsdecode(shown)
    if shown == "":
        raise InputNotFoundError(errno.ENOENT, f"no {what} given (an empty path)", shown)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise InputNotFoundError(errno.ENOENT, f"{shown}: no such {what}", shown) from None
    except IsADirectoryError:
        raise InputIsADirectoryError(errno.EISDIR, f"{shown}: is a directory, not a {what}", shown) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputIsADirectoryError(errno.EISDIR, f"{shown}: is a directory, not a {what}", shown)
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(
                errno.EINVAL, f"{shown}: {_kind(mode)}, not a regular file; mdstream reads its inputs from "
                              f"regular files (save it to a file first)", shown)
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_file(path: PathLike, what: str = "file") -> npt.NDArray[np.uint8]:
    """The file's bytes as a read-only uint8 array (memory-mapped; empty array for an empty file)."""
    fd = open_input(path, what)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return np.zeros(0, dtype=np.uint8)
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=np.uint8)


def read_with_room(path: PathLike, extra: int, what: str = "file") -> tuple[npt.NDArray[np.uint8], int]:
    """The file's bytes in a writable array with ``extra`` zero bytes of scratch after it.

    Returns the array and the file size (where the scratch starts).  Where the
    system can, the file is mapped privately (copy-on-write: writing the array
    never changes the file, and nothing is copied until a page is read), so a
    multi-GB dump is ready at once; elsewhere it is read straight into place.
    As with :func:`map_file`, a file truncated by another process while it is
    mapped is outside what mdstream guards against.
    """
    fd = open_input(path, what)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        if size:
            try:
                from mdstream._mapping import map_private_with_room

                return np.frombuffer(memoryview(map_private_with_room(fd, size, extra)), dtype=np.uint8), size
            except OSError:
                pass  # not mappable here (Windows, a file system without mmap): read it
        buf = np.empty(size + extra, dtype=np.uint8)
        view = buf.data
        got = 0
        while got < size:
            n = f.readinto(view[got:size])
            if not n:
                shown = os.fspath(path)
                raise InputFileError(errno.EIO, f"{shown}: the file shrank while being read "
                                                f"({got} of {size} bytes)", shown)
            got += n
    buf[size:] = 0
    return buf, size
