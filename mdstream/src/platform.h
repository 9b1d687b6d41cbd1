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

/* ---- Private files (the spill) ---------------------------------------------
 * Handles are intptr_t (a file descriptor, or a HANDLE on Windows); -1 = none.
 * Creation is exclusive, private to this user (0600 / owner-only DACL) and
 * never follows a symlink or reparse point. */
int mds_platform_file_create(const char *path, intptr_t *file, mds_error *err);
/* Write all of data at offset (retries short writes and EINTR). */
int mds_platform_file_pwrite(intptr_t file, const void *data, uint64_t length, uint64_t offset, mds_error *err);
/* Extend (never shrink) the file to size bytes. */
int mds_platform_file_extend(intptr_t file, uint64_t size, mds_error *err);
int mds_platform_file_sync(intptr_t file, mds_error *err);
void mds_platform_file_close(intptr_t file);
/* Copy the regular file at src_path, which must belong to this user and not be
 * reached through a symlink, into dst from offset 0.  *copied: bytes copied
 * (also on failure).  Uses only stack memory. */
int mds_platform_file_copy_private(const char *src_path, intptr_t dst, uint64_t *copied, mds_error *err);
/* An absolute path on this system? */
int mds_platform_path_is_absolute(const char *path);
/* Remove a file (not through a symlink in its last component); 0 on success. */
int mds_platform_file_remove(const char *path);
uint64_t mds_platform_realtime_ns(void); /* ns since the Unix epoch */

int mds_set_error(mds_error *err, int status, int sys_errno, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#endif
