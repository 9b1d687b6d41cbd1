# The one-dimensional byte buffer every exporter here hands out (a ring batch,
# a MemorySink, a mapped input file): numpy and memoryview see uint8 ("B"),
# contiguous, zero-copy.  `shape` and `strides` live in the exporting object,
# because the buffer points at them for as long as it is held.

cdef inline void export_bytes(Py_buffer *buffer, object owner, void *data, Py_ssize_t length, bint readonly,
                              Py_ssize_t *shape, Py_ssize_t *strides):
    shape[0] = length
    strides[0] = 1
    buffer.buf = data
    buffer.obj = owner
    buffer.len = length
    buffer.readonly = readonly
    buffer.itemsize = 1
    buffer.format = "B"
    buffer.ndim = 1
    buffer.shape = shape
    buffer.strides = strides
    buffer.suboffsets = NULL
    buffer.internal = NULL
