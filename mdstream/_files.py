"""Reading input files into numpy arrays (shared by the formats and the schedules).

Nothing here knows any file format: :func:`map_file` gives a file's bytes as a
read-only array, :func:`read_with_room` reads a file into a writable array with
scratch space after it.
"""

from __future__ import annotations

import mmap
import os
from typing import Union

import numpy as np
import numpy.typing as npt

__all__ = ["map_file", "read_with_room"]

PathLike = Union[str, "os.PathLike[str]"]


def map_file(path: PathLike) -> npt.NDArray[np.uint8]:
    """The file's bytes as a read-only uint8 array (memory-mapped; empty array for an empty file)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return np.zeros(0, dtype=np.uint8)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mm, dtype=np.uint8)


def read_with_room(path: PathLike, extra: int) -> tuple[npt.NDArray[np.uint8], int]:
    """Read the file into a new array with ``extra`` zero bytes of scratch after it.

    Returns the array and the file size (where the scratch starts).  The file
    is read straight into place: no second copy of a multi-GB dump.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.empty(size + extra, dtype=np.uint8)
        view = buf.data
        got = 0
        while got < size:
            n = f.readinto(view[got:size])
            if not n:
                raise OSError(f"{os.fspath(path)}: file shrank while being read")
            got += n
    buf[size:] = 0
    return buf, size

