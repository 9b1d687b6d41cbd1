"""File-system primitives of the crash database: everything relative to an open
directory descriptor (``*at`` calls), nothing ever followed through a symlink,
files created ``0600`` with ``O_EXCL|O_NOFOLLOW``, directories ``0700``.

POSIX only (the database needs ``flock``); :func:`require_posix` says so clearly
elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import stat
import time
from typing import Any, Callable

from mdstream.reports._errors import DatabasePermissionError, ReportBusyError, UnsupportedPlatformError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "require_posix",
    "open_dir",
    "read_file",
    "write_file_atomic",
    "rename_noreplace",
    "remove_tree",
    "fsync_fd",
    "entry_size",
    "lock_file",
    "create_lock_file",
    "try_flock",
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
#: O_NONBLOCK: a FIFO planted where a file should be must not hang open().
READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC


def require_posix() -> None:
    if fcntl is None or not {os.open, os.stat, os.unlink, os.rename, os.mkdir} <= os.supports_dir_fd:
        raise UnsupportedPlatformError(
            "the crash database needs POSIX file locks and *at system calls (Linux, macOS, BSD)")


def _euid() -> int:
    return os.geteuid()


def _where(dir_path: str | None, name: str) -> str:
    return os.path.join(dir_path, name) if dir_path else name


def open_dir(name: str, dir_fd: int | None = None, *, create: bool = False, dir_path: str | None = None,
             follow: bool = False) -> int:
    """Open the directory ``name`` (relative to ``dir_fd``) and check it is ours and private.

    A symlink is refused (unless ``follow``: only for the database root the user
    named).  With ``create`` a missing directory is made ``0700``.  A directory
    of ours that is open to the group or others is tightened to ``0700``; one
    owned by another user is refused.
    """
    where = _where(dir_path, name)
    flags = DIR_FLAGS & ~_O_NOFOLLOW if follow else DIR_FLAGS
    while True:
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
            break
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                pass
            create = False  # one attempt: if it vanishes again, report that
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    raise exc from None
                if stat.S_ISLNK(st.st_mode):
                    raise DatabasePermissionError(f"{where} is a symlink; the crash database never follows one") \
                        from None
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", where) from None
            raise
    try:
        st = os.fstat(fd)
        if st.st_uid != _euid():
            raise DatabasePermissionError(f"{where} is owned by uid {st.st_uid}, not by this user ({_euid()})")
        if st.st_mode & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(dir_fd: int, name: str, limit: int, *, dir_path: str | None = None) -> bytes:
    """The contents of the regular file ``name`` (not a symlink, not a FIFO), at most ``limit`` bytes."""
    where = _where(dir_path, name)
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DatabasePermissionError(f"{where} is a symlink; not followed") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DatabasePermissionError(f"{where} is not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{where} is {st.st_size:,} bytes, more than the {limit:,} allowed")
        chunks = []
        total = 0
        while True:
            block = os.read(fd, min(1 << 20, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
            if total > limit:
                raise ValueError(f"{where} grew beyond the {limit:,} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_fd(fd: int) -> None:
    """fsync, tolerating file systems that cannot sync a directory."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", -1)):
            raise


def temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(6)}.tmp"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def write_file_atomic(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``name`` in ``dir_fd`` as a whole: a 0600 temporary beside it
    (``O_EXCL|O_NOFOLLOW``), fsync, rename over ``name``, fsync the directory.

    Replacing ``name`` is intended (our own metadata file, under the report's
    lock); a symlink planted at ``name`` is replaced, never followed.
    """
    for _ in range(100):
        temp = temp_name(name)
        try:
            fd = os.open(temp, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(errno.EEXIST, "cannot create a temporary file", name)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    fsync_fd(dir_fd)


def write_file_exclusive(dir_fd: int, name: str, data: bytes) -> bool:
    """Create ``name`` with ``data`` only if nothing exists there (atomically: temp + link).

    Returns False if ``name`` already existed.
    """
    temp = temp_name(name)
    fd = os.open(temp, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        fsync_fd(dir_fd)
        return True
    finally:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass


# --------------------------------------------------------------------------
# rename without replacing (renameat2 RENAME_NOREPLACE where the kernel has it)
# --------------------------------------------------------------------------

_RENAME_NOREPLACE = 1
_renameat2: Any = None
_renameat2_checked = False


def _load_renameat2() -> Any:
    global _renameat2, _renameat2_checked
    if not _renameat2_checked:
        _renameat2_checked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            func = libc.renameat2
            func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
            func.restype = ctypes.c_int
            _renameat2 = func
        except (OSError, AttributeError):
            _renameat2 = None
    return _renameat2


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists.

    ``renameat2(RENAME_NOREPLACE)`` makes the check atomic; where the kernel or
    file system lacks it the check is made just before a plain rename (the
    database's directories are private to this user, so only its own processes
    could race, and they never create a name another one picked).
    """
    func = _load_renameat2()
    if func is not None:
        if func(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", -1)):
            raise OSError(err, os.strerror(err), dst)
    try:
        os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


# --------------------------------------------------------------------------
# removal
# --------------------------------------------------------------------------


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a file, a symlink itself, or a directory tree) without following any symlink.

    Entries that vanish meanwhile (another pruner) are fine.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        return
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        if os.fstat(fd).st_uid != _euid():
            raise DatabasePermissionError(f"{name} is owned by another user; not removed")
        for entry in os.listdir(fd):
            remove_tree(fd, entry)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def entry_size(dir_fd: int, name: str) -> int:
    """Bytes used by ``name`` (a directory's files summed; symlinks count as themselves)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        return sum(entry_size(fd, entry) for entry in os.listdir(fd))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# per-report locks: flock on locks/<id>.lock, checked against the path after locking
# --------------------------------------------------------------------------


def try_flock(fd: int) -> bool:
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _still_named(fd: int, dir_fd: int, name: str) -> bool:
    """After flock: is the locked file still the one at ``name``?  A remover
    unlinks a lock file while holding it; whoever waited on the old inode must
    not believe it holds the lock of the new one."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _open_lock(dir_fd: int, name: str, extra: int, dir_path: str | None) -> int:
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK | extra, 0o600,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DatabasePermissionError(f"{_where(dir_path, name)} is a symlink; not followed") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != _euid():
        os.close(fd)
        raise DatabasePermissionError(f"{_where(dir_path, name)} is not a regular file of this user")
    return fd


def create_lock_file(dir_fd: int, name: str, *, dir_path: str | None = None) -> int | None:
    """Create ``name`` exclusively and lock it; None if it existed or someone else got it first."""
    try:
        fd = _open_lock(dir_fd, name, os.O_EXCL, dir_path)
    except FileExistsError:
        return None
    if try_flock(fd) and _still_named(fd, dir_fd, name):
        return fd
    os.close(fd)
    return None


def lock_file(dir_fd: int, name: str, *, wait: bool | float = False, dir_path: str | None = None,
              what: str = "the report", sleep: Callable[[float], None] = time.sleep) -> int:
    """Lock ``name`` (created 0600 if missing); returns the descriptor holding the lock.

    ``wait``: False fails at once with ReportBusyError, True waits for as long
    as it takes, a number waits at most that many seconds.
    """
    deadline = None if wait is True or wait is False else time.monotonic() + float(wait)
    delay = 0.005
    while True:
        fd = _open_lock(dir_fd, name, 0, dir_path)
        try:
            if wait is True:
                assert fcntl is not None
                fcntl.flock(fd, fcntl.LOCK_EX)
                got = True
            else:
                got = try_flock(fd)
            if got and _still_named(fd, dir_fd, name):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if got:
            continue  # the file was replaced while we waited: lock the new one
        if deadline is None and wait is not True:
            raise ReportBusyError(f"{what} is locked by another process (being written, uploaded or removed)")
        if deadline is not None and time.monotonic() >= deadline:
            raise ReportBusyError(f"{what} stayed locked by another process for {float(wait):g} s")
        sleep(delay)
        delay = min(delay * 2, 0.1)
