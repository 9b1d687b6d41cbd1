"""Input files mapped into memory instead of copied (the C core's platform layer).

A replay needs the source's bytes plus some scratch after them (the writer
schedule's placeholder header, the shuffled schedule's garbage), as one
buffer.  Reading a 1.6 GB dump into new memory costs seconds before the first
write; a private mapping costs nothing until a page is touched.
"""

from libc.stdint cimport intptr_t, uint64_t

from mdstream._core cimport MDS_OK, mds_error
from mdstream._buffers cimport export_bytes

cdef extern from "platform.h" nogil:
    int mds_platform_map_private_with_room(intptr_t file, uint64_t size, uint64_t room, void **mapping,
                                           uint64_t *mapping_size, mds_error *err)
    void mds_platform_unmap_private(void *mapping, uint64_t mapping_size)


cdef class PrivateMapping:
    """``size`` bytes of a file, copy-on-write, then ``room`` zero bytes: one writable buffer.

    Writes never reach the file.  The mapping lives as long as this object and
    every view of it (a numpy array made with ``np.frombuffer`` keeps it alive).
    """
    cdef void *mapping
    cdef uint64_t mapping_size
    cdef readonly Py_ssize_t length
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self):
        self.mapping = NULL
        self.mapping_size = 0
        self.length = 0

    def __dealloc__(self):
        mds_platform_unmap_private(self.mapping, self.mapping_size)
        self.mapping = NULL

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        export_bytes(buffer, self, self.mapping, self.length, False, self.shape, self.strides)


def map_private_with_room(int fd, size, room):
    """Map the first ``size`` bytes of the open file ``fd`` privately, with ``room``
    zero bytes after them.  Raises ``OSError`` where the system cannot (the caller
    then reads the file instead)."""
    cdef mds_error err
    cdef void *mapping = NULL
    cdef uint64_t mapping_size = 0
    cdef uint64_t c_size = size
    cdef uint64_t c_room = room
    cdef int rc
    with nogil:
        rc = mds_platform_map_private_with_room(<intptr_t>fd, c_size, c_room, &mapping, &mapping_size, &err)
    if rc != MDS_OK:
        raise OSError(err.sys_errno, err.message.decode("utf-8", "replace"))
    result = PrivateMapping()
    result.mapping = mapping
    result.mapping_size = mapping_size
    result.length = <Py_ssize_t>(c_size + c_room)
    return result
