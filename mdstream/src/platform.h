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
 * map_size bytes.  name NULL: anonymous shared mapping.  A named mapping is
 * created without its name (or under a hidden temporary one) and appears under
 * it only at mds_platform_map_publish, once the header is complete.  With
 * replace_stale, a stale ring already under the name is removed first. */
int mds_platform_map_create(mds_ring *ring, const char *name, size_t map_size, int replace_stale, mds_error *err);
int mds_platform_map_publish(mds_ring *ring, mds_error *err);
/* Open an existing mapping: validates ownership and returns its size first
 * through *file_size; reads the header with read_header before mapping. */
int mds_platform_map_attach(mds_ring *ring, const char *name, mds_ring_header *header_copy,
                            uint64_t *file_size, mds_error *err);
int mds_platform_map_attach_finish(mds_ring *ring, size_t map_size, mds_error *err);
void mds_platform_unmap(mds_ring *ring);
/* File-backed rings: fail (MDS_ERR_CORRUPT) if the file no longer covers the mapping. */
int mds_platform_check_mapping(mds_ring *ring, mds_error *err);
int mds_platform_unlink(const char *name, mds_error *err);

/* ---- Roles, fork and stale rings ---------------------------------------------
 * Role locks: OFD locks on byte MDS_LOCK_* of a file-backed ring, which the
 * kernel drops when the holder dies (any PID namespace).  Where there is no
 * file or no OFD lock, lock/unlock succeed doing nothing (*locked = 0) and
 * alive answers MDS_UNKNOWN, so callers fall back to the recorded pid. */
int mds_platform_role_lock(mds_ring *ring, unsigned lock_byte, int *locked, mds_error *err);
void mds_platform_role_unlock(mds_ring *ring, unsigned lock_byte);
int mds_platform_role_alive(const mds_ring *ring, unsigned lock_byte);
/* Bumped in every child of fork(): handles remember the value they were made
 * with, and a handle from an older generation was inherited. */
uint64_t mds_platform_fork_generation(void);
/* Inspect a ring file without mapping it (mds_ring_probe_stale). */
int mds_platform_probe_stale(const char *name, int *stale, uint32_t *creator_pid, mds_error *err);
/* Remove the ring file at name if it is stale, and only that file (mds_ring_remove_stale). */
int mds_platform_remove_stale(const char *name, int *removed, mds_error *err);

/* ---- Consumer output (the spill's base) -------------------------------------- */
/* Identity of the regular file at path (not through a symlink). */
int mds_platform_file_identity(const char *path, uint64_t *device, uint64_t *inode, mds_error *err);
/* Open the consumer's output for reading only if it is provably the one
 * registered for this dump: a regular file of this user, not a symlink, one
 * link, the registered device and inode, mode without group/other bits,
 * changed no earlier than not_before_unix_ns.  *size: its size now. */
int mds_platform_file_open_registered(const char *path, uint64_t device, uint64_t inode, uint64_t not_before_unix_ns,
                                      intptr_t *file, uint64_t *size, mds_error *err);
/* Copy [offset, offset+length) of src into dst at the same offset, stopping
 * (MDS_OK, *copied < length) once deadline_ns (CLOCK_MONOTONIC) passes.
 * Clones extents where the filesystem can. */
int mds_platform_file_copy_range(intptr_t src, intptr_t dst, uint64_t offset, uint64_t length, uint64_t deadline_ns,
                                 uint64_t *copied, mds_error *err);
/* Set the file's size exactly (extend with zeros or cut). */
int mds_platform_file_set_size(intptr_t file, uint64_t size, mds_error *err);

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
/* ---- Input files ------------------------------------------------------------
 * The `size` bytes of the open file `file`, mapped privately (copy-on-write:
 * writes never reach the file), followed by at least `room` writable zero
 * bytes, as one contiguous range: a multi-GB dump is replayed from its pages
 * instead of being copied first.  MDS_ERR_ARG where the system cannot
 * (Windows: the caller reads instead).  Free with mds_platform_unmap_private. */
int mds_platform_map_private_with_room(intptr_t file, uint64_t size, uint64_t room, void **mapping,
                                       uint64_t *mapping_size, mds_error *err);
void mds_platform_unmap_private(void *mapping, uint64_t mapping_size);
/* An absolute path on this system? */
int mds_platform_path_is_absolute(const char *path);
uint64_t mds_platform_realtime_ns(void); /* ns since the Unix epoch */

int mds_set_error(mds_error *err, int status, int sys_errno, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#endif
