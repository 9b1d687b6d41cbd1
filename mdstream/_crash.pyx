# cython: freethreading_compatible = False
"""The in-process crash handler's native face (``mdstream/crash/handler.c``,
header ``mdstream/crash.h``).  Use :func:`mdstream.crash.install`."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset


cdef extern from "mdstream/crash.h" nogil:
    enum:
        MDS_CRASH_VERSION
        MDS_CRASH_HELLO_MAGIC
        MDS_CRASH_READY_MAGIC
        MDS_CRASH_REPORT_MAGIC
        MDS_CRASH_ACK_MAGIC
        MDS_CRASH_HELLO_TRACEBACKS
        MDS_CRASH_MAX_ANNOTATIONS
        MDS_CRASH_FPREGS
        MDS_CRASH_LATE_HELLO
        MDS_CRASH_ALTSTACK_SIZE
        MDS_TB_NONE
        MDS_TB_COMPLETE
        MDS_TB_FAILED
        MDS_TB_UNAVAILABLE
        MDS_CRASH_OK
        MDS_CRASH_ERR_ARG
        MDS_CRASH_ERR_SYS
        MDS_CRASH_ERR_UNSUPPORTED

    ctypedef struct mds_crash_hello:
        pass
    ctypedef struct mds_crash_message:
        pass
    ctypedef struct mds_crash_ack:
        pass

    ctypedef struct mds_crash_config:
        int sock
        int memfd
        uint32_t watcher_pid
        uint32_t peer_pid
        uint64_t timeout_ns
        uint64_t hard_timeout_ns
        const char *address
        uint32_t address_len
        const uint8_t *annotations
        uint32_t annotations_size
        int python_tracebacks
        int quiet
        const char *rendezvous
        uint32_t windows_flags

    int mds_crash_install(const mds_crash_config *config, char *error, size_t error_size)
    int mds_crash_uninstall()
    int mds_crash_is_installed()
    void mds_crash_set_connection(int sock, int memfd)
    int mds_crash_altstack_enter(void **stack, size_t *size)
    void mds_crash_altstack_leave(void *stack, size_t size)
    int mds_crash_altstack_all_threads(uint32_t timeout_ms, uint32_t *covered, uint32_t *total)
    uint32_t mds_crash_altstack_release_all(uint32_t timeout_ms)
    uint32_t mds_crash_altstack_count()


VERSION = MDS_CRASH_VERSION
HELLO_MAGIC = MDS_CRASH_HELLO_MAGIC
READY_MAGIC = MDS_CRASH_READY_MAGIC
REPORT_MAGIC = MDS_CRASH_REPORT_MAGIC
ACK_MAGIC = MDS_CRASH_ACK_MAGIC
HELLO_TRACEBACKS = MDS_CRASH_HELLO_TRACEBACKS
MAX_ANNOTATIONS = MDS_CRASH_MAX_ANNOTATIONS
FLAG_FPREGS = MDS_CRASH_FPREGS
FLAG_LATE_HELLO = MDS_CRASH_LATE_HELLO
ALTSTACK_SIZE = MDS_CRASH_ALTSTACK_SIZE
TB_NONE = MDS_TB_NONE
TB_COMPLETE = MDS_TB_COMPLETE
TB_FAILED = MDS_TB_FAILED
TB_UNAVAILABLE = MDS_TB_UNAVAILABLE
HELLO_SIZE = sizeof(mds_crash_hello)
MESSAGE_SIZE = sizeof(mds_crash_message)
ACK_SIZE = sizeof(mds_crash_ack)


def install(int sock, int memfd, uint32_t watcher_pid, uint32_t peer_pid, double timeout, double hard_timeout,
            bytes address, bytes annotations, bint python_tracebacks, bint quiet=False):
    """Install the handlers; takes ownership of ``sock`` and ``memfd`` (-1: none)."""
    cdef mds_crash_config c
    cdef char error[256]
    cdef int rc
    if len(address) > 107:
        raise ValueError("the watcher's address is longer than a sockaddr_un path")
    if len(annotations) > MDS_CRASH_MAX_ANNOTATIONS:
        raise ValueError(f"annotations take {len(annotations)} bytes; at most {MDS_CRASH_MAX_ANNOTATIONS}")
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    memset(&c, 0, sizeof(c))
    memset(error, 0, sizeof(error))
    c.sock = sock
    c.memfd = memfd
    c.watcher_pid = watcher_pid
    c.peer_pid = peer_pid
    c.timeout_ns = <uint64_t>(timeout * 1e9)
    c.hard_timeout_ns = <uint64_t>(max(hard_timeout, timeout) * 1e9)
    c.address = <const char *>address
    c.address_len = <uint32_t>len(address)
    c.annotations = <const uint8_t *><const char *>annotations
    c.annotations_size = <uint32_t>len(annotations)
    c.python_tracebacks = 1 if python_tracebacks else 0
    c.quiet = 1 if quiet else 0
    rc = mds_crash_install(&c, error, sizeof(error))
    if rc == MDS_CRASH_ERR_UNSUPPORTED:
        raise NotImplementedError(error.decode("utf-8", "replace"))
    if rc != MDS_CRASH_OK:
        raise OSError(error.decode("utf-8", "replace"))


def uninstall():
    """Restore the previous handlers; returns how many signals still had ours."""
    return mds_crash_uninstall()


def is_installed():
    return bool(mds_crash_is_installed())


def set_connection(int sock, int memfd):
    """After fork, in the child: its own registered connection and tracebacks file."""
    mds_crash_set_connection(sock, memfd)


def altstack_enter():
    """Give this thread an alternate signal stack if it has none: ``(address, size)`` to hand back, or (0, 0)."""
    cdef void *stack = NULL
    cdef size_t size = 0
    if mds_crash_altstack_enter(&stack, &size) != MDS_CRASH_OK:
        return (0, 0)
    return (<size_t>stack, size)


def altstack_leave(size_t address, size_t size):
    if address:
        mds_crash_altstack_leave(<void *>address, size)


def altstack_all_threads(uint32_t timeout_ms=1000):
    """Alternate stacks for every existing thread: ``(covered, total)``."""
    cdef uint32_t covered = 0, total = 0
    with nogil:
        mds_crash_altstack_all_threads(timeout_ms, &covered, &total)
    return covered, total


def altstack_release_all(uint32_t timeout_ms=1000):
    """Give those stacks back; returns how many stay mapped (threads that did not answer)."""
    cdef uint32_t kept
    with nogil:
        kept = mds_crash_altstack_release_all(timeout_ms)
    return kept


def altstack_count():
    """Stacks given to threads by altstack_all_threads and still mapped."""
    return mds_crash_altstack_count()


def install_windows(rendezvous, double timeout, uint32_t flags=0, bint quiet=False):
    """Windows: install mdstream/src/crash_win32.c's handlers (a watcher attaches with mds_watch_attach).

    ``rendezvous``: bytes naming the objects a watcher opens, or None (the pid).  Only called on Windows
    (on Linux the same C entry point is the signal handler and needs a watcher connection)."""
    cdef mds_crash_config c
    cdef char error[256]
    cdef int rc
    cdef bytes name = rendezvous if rendezvous is not None else b""
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    memset(&c, 0, sizeof(c))
    memset(error, 0, sizeof(error))
    c.sock = -1
    c.memfd = -1
    c.timeout_ns = <uint64_t>(timeout * 1e9)
    c.rendezvous = <const char *>name if rendezvous is not None else NULL
    c.windows_flags = flags
    c.quiet = 1 if quiet else 0
    rc = mds_crash_install(&c, error, sizeof(error))
    if rc == MDS_CRASH_ERR_UNSUPPORTED:
        raise NotImplementedError(error.decode("utf-8", "replace"))
    if rc != MDS_CRASH_OK:
        raise OSError(error.decode("utf-8", "replace"))
