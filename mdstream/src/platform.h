/* The few operating-system services the ring needs, behind one small
 * interface: a shared mapping, a futex-like wait on a 32-bit word, a clock and
 * a liveness check.  Linux uses futexes (cross-process, on the shared word);
 * elsewhere waits degrade to short sleeps, which the format allows because
 * every wait is bounded and re-checks the positions. */
#ifndef MDSTREAM_PLATFORM_H
#define MDSTREAM_PLATFORM_H

#include <stdint.h>
#include <stddef.h>
#include "mdstream/ring.h"

/* Sleep while *word == expected, at most timeout_ns.  Spurious returns are
 * fine: callers re-check. */
void mds_platform_wait_u32(uint32_t *word, uint32_t expected, uint64_t timeout_ns);
void mds_platform_wake_u32(uint32_t *word);
uint32_t mds_platform_pid(void);
uint64_t mds_platform_random64(void);

/* Create (exclusively, 0600, no symlinks) or attach a named mapping of
 * map_size bytes.  name NULL: anonymous shared mapping. */
int mds_platform_map_create(mds_ring *ring, const char *name, size_t map_size, mds_error *err);
/* Open an existing mapping: validates ownership and returns its size first
 * through *file_size; reads the header with read_header before mapping. */
int mds_platform_map_attach(mds_ring *ring, const char *name, mds_ring_header *header_copy,
                            uint64_t *file_size, mds_error *err);
int mds_platform_map_attach_finish(mds_ring *ring, size_t map_size, mds_error *err);
void mds_platform_unmap(mds_ring *ring);
/* File-backed rings: fail (MDS_ERR_CORRUPT) if the file no longer covers the mapping. */
int mds_platform_check_mapping(mds_ring *ring, mds_error *err);
int mds_platform_unlink(const char *name, mds_error *err);

int mds_set_error(mds_error *err, int status, int sys_errno, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#endif
