/* POSIX (Linux first) side of platform.h. */
#ifndef _WIN32

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_POPULATE
#define MAP_POPULATE 0
#endif

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

int mds_set_error(mds_error *err, int status, int sys_errno, const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->status = status;
        err->sys_errno = sys_errno;
        err->abort_code = 0;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

uint64_t mds_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mds_platform_wait_u32(uint32_t *word, uint32_t expected, uint64_t timeout_ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
    ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
#ifdef __linux__
    /* Shared (not PRIVATE) futex: the word may live in a mapping another
     * process shares. */
    syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
#else
    if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == expected) {
        if (ts.tv_sec > 0 || ts.tv_nsec > 200000) {
            ts.tv_sec = 0;
            ts.tv_nsec = 200000;
        }
        nanosleep(&ts, NULL);
    }
#endif
}

void mds_platform_wake_u32(uint32_t *word) {
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
#else
    (void)word;
#endif
}

uint32_t mds_platform_pid(void) { return (uint32_t)getpid(); }

uint64_t mds_platform_random64(void) {
    uint64_t value = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, &value, sizeof value);
        close(fd);
        if (n == (ssize_t)sizeof value && value != 0) return value;
    }
    /* Fallback mixes time and pid; tokens only need to differ between handles. */
    value = mds_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&value;
    return value ? value : 1;
}

int mds_pid_alive(uint32_t pid) {
    if (pid == 0) return 1;
    if (kill((pid_t)pid, 0) != 0) return errno != ESRCH; /* EPERM: exists, someone else's */
#ifdef __linux__
    {
        /* A dead child its parent has not reaped yet still answers kill():
         * its state in /proc/PID/stat (after the last ')') is 'Z'. */
        char path[64], buf[512];
        int fd;
        ssize_t n;
        snprintf(path, sizeof path, "/proc/%u/stat", pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return errno != ENOENT;
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            char *paren;
            buf[n] = '\0';
            paren = strrchr(buf, ')');
            if (paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X')) return 0;
        }
    }
#endif
    return 1;
}

/* A name without '/' is a POSIX shared-memory object; on Linux those live in
 * /dev/shm, and going through the path lets us use O_NOFOLLOW and fstat the
 * same way for both. */
static int resolve_path(const char *name, char *out, size_t out_size, mds_error *err) {
    int n;
    if (name[0] == '\0') return mds_set_error(err, MDS_ERR_ARG, 0, "empty ring name");
    if (strchr(name, '/') == NULL) {
        n = snprintf(out, out_size, "/dev/shm/%s", name);
    } else {
        n = snprintf(out, out_size, "%s", name);
    }
    if (n < 0 || (size_t)n >= out_size)
        return mds_set_error(err, MDS_ERR_ARG, 0, "ring name too long (%zu bytes)", strlen(name));
    return MDS_OK;
}


/* ---- SIGBUS guard ---------------------------------------------------------------
 * A ring file can be shrunk (ftruncate) by any process of its owner while it
 * is mapped; the next access past the new end raises SIGBUS, which would kill
 * the consumer or, worse, the dump writer.  Mappings of ring files are
 * registered here; a SIGBUS inside one maps a private zero page over the
 * faulting page (so the access completes) and raises the ring's fault flag,
 * which the producer checks after every write and the consumer at every poll
 * and release, turning the fault into MDS_ERR_CORRUPT.  Faults elsewhere go
 * to the previous handler.  MDSTREAM_SIGBUS_GUARD=0 disables the guard. */


#define GUARD_SLOTS 256

typedef struct guard_slot {
    uintptr_t base;             /* 0 = free; stored last (release) */
    size_t size;
    uint32_t fault;
} guard_slot;

static guard_slot guard_slots[GUARD_SLOTS];
static struct sigaction guard_previous;
static uintptr_t guard_page_size = 4096;
static int guard_enabled;      /* 1 installed, 0 disabled or failed */
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;

static void guard_chain(int sig, siginfo_t *info, void *context) {
    if (guard_previous.sa_flags & SA_SIGINFO) {
        if (guard_previous.sa_sigaction) guard_previous.sa_sigaction(sig, info, context);
        return;
    }
    if (guard_previous.sa_handler == SIG_IGN) return;
    if (guard_previous.sa_handler == SIG_DFL) {
        /* Let the faulting access run again under the default action. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        return;
    }
    guard_previous.sa_handler(sig);
}

static void guard_handler(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    uintptr_t addr = (uintptr_t)info->si_addr;
    int i;
    for (i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t base = __atomic_load_n(&guard_slots[i].base, __ATOMIC_ACQUIRE);
        if (base != 0 && addr - base < guard_slots[i].size) {
            void *page = (void *)(addr & ~(guard_page_size - 1));
            if (mmap(page, (size_t)guard_page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                     -1, 0) != MAP_FAILED) {
                __atomic_store_n(&guard_slots[i].fault, 1u, __ATOMIC_RELEASE);
                errno = saved_errno;
                return;
            }
            break;
        }
    }
    errno = saved_errno;
    guard_chain(sig, info, context);
}

static void guard_install(void) {
    struct sigaction action;
    const char *env = getenv("MDSTREAM_SIGBUS_GUARD");
    long page = sysconf(_SC_PAGESIZE);
    if (env && env[0] == '0') return;
    if (page > 0) guard_page_size = (uintptr_t)page;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = guard_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &guard_previous) == 0) guard_enabled = 1;
}

static void guard_register(mds_ring *ring) {
    int i;
    ring->fault_flag = NULL;
    pthread_once(&guard_once, guard_install);
    if (!guard_enabled) return;
    for (i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t expected = 0;
        /* Claim with a placeholder so two threads never share a slot. */
        if (__atomic_compare_exchange_n(&guard_slots[i].base, &expected, (uintptr_t)1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            guard_slots[i].size = 0;
            __atomic_store_n(&guard_slots[i].fault, 0u, __ATOMIC_RELAXED);
            guard_slots[i].size = ring->map_size;
            __atomic_store_n(&guard_slots[i].base, (uintptr_t)ring->map_base, __ATOMIC_RELEASE);
            ring->fault_flag = &guard_slots[i].fault;
            return;
        }
    }
    /* All slots taken: this mapping stays unguarded, as before the guard. */
}

static void guard_unregister(mds_ring *ring) {
    if (ring->fault_flag) {
        guard_slot *slot = (guard_slot *)((const char *)ring->fault_flag - offsetof(guard_slot, fault));
        __atomic_store_n(&slot->base, (uintptr_t)0, __ATOMIC_RELEASE);
        ring->fault_flag = NULL;
    }
}

int mds_platform_map_create(mds_ring *ring, const char *name, size_t map_size, mds_error *err) {
    void *base;
    ring->fd = -1;
    ring->path[0] = '\0';
    ring->name[0] = '\0';
    if (name == NULL) {
        /* Populated now: a page fault per 4 KiB on the first lap would cost the
         * producer more than the copies themselves. */
        base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (base == MAP_FAILED)
            return mds_set_error(err, MDS_ERR_SYS, errno, "mmap of %zu bytes failed: %s", map_size,
                                 strerror(errno));
#ifdef MADV_HUGEPAGE
        if (map_size >= (8u << 20)) madvise(base, map_size, MADV_HUGEPAGE); /* fewer TLB misses; advisory */
#endif
    } else {
        int fd, rc;
        if (resolve_path(name, ring->path, sizeof ring->path, err) != MDS_OK) return err->status;
        snprintf(ring->name, sizeof ring->name, "%s", name);
        /* O_EXCL with O_CREAT never follows a symlink at the last component;
         * O_NOFOLLOW says so explicitly. */
        fd = open(ring->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            int e = errno;
            if (e == EEXIST)
                return mds_set_error(err, MDS_ERR_EXISTS, e, "ring %s already exists", ring->path);
            return mds_set_error(err, MDS_ERR_SYS, e, "cannot create ring %s: %s", ring->path, strerror(e));
        }
        /* umask may only remove bits; make the mode exactly 0600. */
        if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)map_size) != 0) {
            int e = errno;
            close(fd);
            unlink(ring->path);
            return mds_set_error(err, e == ENOSPC ? MDS_ERR_SYS : MDS_ERR_SYS, e,
                                 "cannot size ring %s to %zu bytes: %s", ring->path, map_size, strerror(e));
        }
#ifdef __linux__
        /* Reserve the blocks now so a full /dev/shm fails here, not as SIGBUS later. */
        rc = posix_fallocate(fd, 0, (off_t)map_size);
        if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
            close(fd);
            unlink(ring->path);
            return mds_set_error(err, MDS_ERR_SYS, rc, "cannot allocate %zu bytes for ring %s: %s",
                                 map_size, ring->path, strerror(rc));
        }
#else
        (void)rc;
#endif
        base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (base == MAP_FAILED) {
            int e = errno;
            close(fd);
            unlink(ring->path);
            return mds_set_error(err, MDS_ERR_SYS, e, "mmap of ring %s failed: %s", ring->path, strerror(e));
        }
        ring->fd = fd;
    }
    ring->map_base = base;
    ring->map_size = map_size;
    ring->fault_flag = NULL;
    if (ring->fd >= 0) guard_register(ring);
    return MDS_OK;
}

int mds_platform_map_attach(mds_ring *ring, const char *name, mds_ring_header *header_copy,
                            uint64_t *file_size, mds_error *err) {
    struct stat st;
    int fd;
    ssize_t got;
    ring->fd = -1;
    if (name == NULL) return mds_set_error(err, MDS_ERR_ARG, 0, "attach needs a ring name or path");
    if (resolve_path(name, ring->path, sizeof ring->path, err) != MDS_OK) return err->status;
    snprintf(ring->name, sizeof ring->name, "%s", name);
    fd = open(ring->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return mds_set_error(err, MDS_ERR_NOT_FOUND, e, "no ring at %s", ring->path);
        if (e == ELOOP)
            return mds_set_error(err, MDS_ERR_PERMISSION, e, "refusing to follow a symlink at %s", ring->path);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot open ring %s: %s", ring->path, strerror(e));
    }
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot stat ring %s: %s", ring->path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is not a regular file", ring->path);
    }
    if (st.st_uid != geteuid()) {
        close(fd);
        return mds_set_error(err, MDS_ERR_PERMISSION, 0, "ring %s belongs to uid %u, not to this user (%u)",
                             ring->path, (unsigned)st.st_uid, (unsigned)geteuid());
    }
    if ((st.st_mode & 077) != 0) {
        close(fd);
        return mds_set_error(err, MDS_ERR_PERMISSION, 0,
                             "ring %s is accessible by other users (mode %04o); expected 0600", ring->path,
                             (unsigned)(st.st_mode & 07777));
    }
    if ((uint64_t)st.st_size < sizeof(mds_ring_header)) {
        close(fd);
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is truncated: %lld bytes, a ring header needs %zu",
                             ring->path, (long long)st.st_size, sizeof(mds_ring_header));
    }
    got = pread(fd, header_copy, sizeof *header_copy, 0);
    if (got != (ssize_t)sizeof *header_copy) {
        int e = errno;
        close(fd);
        return mds_set_error(err, MDS_ERR_FORMAT, got < 0 ? e : 0, "cannot read the header of %s", ring->path);
    }
    *file_size = (uint64_t)st.st_size;
    ring->fd = fd;
    return MDS_OK;
}

int mds_platform_map_attach_finish(mds_ring *ring, size_t map_size, mds_error *err) {
    void *base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, (int)ring->fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close((int)ring->fd);
        ring->fd = -1;
        return mds_set_error(err, MDS_ERR_SYS, e, "mmap of ring %s failed: %s", ring->path, strerror(e));
    }
    ring->map_base = base;
    ring->map_size = map_size;
    guard_register(ring);
    return MDS_OK;
}

int mds_platform_check_mapping(mds_ring *ring, mds_error *err) {
    struct stat st;
    if (ring->fd < 0) return MDS_OK;
    if (fstat((int)ring->fd, &st) != 0)
        return mds_set_error(err, MDS_ERR_SYS, errno, "cannot stat ring %s: %s", ring->path, strerror(errno));
    if ((uint64_t)st.st_size < (uint64_t)ring->map_size)
        return mds_set_error(err, MDS_ERR_CORRUPT, 0, "ring file %s was truncated to %lld bytes under the consumer",
                             ring->path, (long long)st.st_size);
    return MDS_OK;
}

void mds_platform_unmap(mds_ring *ring) {
    guard_unregister(ring);
    if (ring->map_base) munmap(ring->map_base, ring->map_size);
    ring->map_base = NULL;
    if (ring->fd >= 0) close((int)ring->fd);
    ring->fd = -1;
}

int mds_platform_unlink(const char *name, mds_error *err) {
    char path[512];
    if (resolve_path(name, path, sizeof path, err) != MDS_OK) return err->status;
    if (unlink(path) != 0) {
        int e = errno;
        if (e == ENOENT) return mds_set_error(err, MDS_ERR_NOT_FOUND, e, "no ring at %s", path);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot remove ring %s: %s", path, strerror(e));
    }
    return MDS_OK;
}

/* ---- private files ------------------------------------------------------------ */

int mds_platform_file_create(const char *path, intptr_t *file, mds_error *err) {
    int fd;
    *file = -1;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == EEXIST) return mds_set_error(err, MDS_ERR_EXISTS, e, "%s already exists (not overwritten)", path);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot create %s: %s", path, strerror(e));
    }
    /* The umask may have cleared bits but never adds any; make 0600 exact. */
    (void)fchmod(fd, 0600);
    *file = fd;
    return MDS_OK;
}

int mds_platform_file_pwrite(intptr_t file, const void *data, uint64_t length, uint64_t offset, mds_error *err) {
    const uint8_t *p = (const uint8_t *)data;
    while (length > 0) {
        size_t chunk = length > (1u << 30) ? (size_t)1 << 30 : (size_t)length;
        ssize_t n;
        if (offset > (uint64_t)INT64_MAX - chunk)
            return mds_set_error(err, MDS_ERR_ARG, 0, "file offset %llu out of range", (unsigned long long)offset);
        n = pwrite((int)file, p, chunk, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return mds_set_error(err, MDS_ERR_SYS, errno, "write failed at offset %llu: %s", (unsigned long long)offset,
                                 strerror(errno));
        }
        if (n == 0) return mds_set_error(err, MDS_ERR_SYS, EIO, "write made no progress at offset %llu", (unsigned long long)offset);
        p += n;
        offset += (uint64_t)n;
        length -= (uint64_t)n;
    }
    return MDS_OK;
}

int mds_platform_file_extend(intptr_t file, uint64_t size, mds_error *err) {
    struct stat st;
    if (fstat((int)file, &st) != 0) return mds_set_error(err, MDS_ERR_SYS, errno, "fstat failed: %s", strerror(errno));
    if ((uint64_t)st.st_size >= size) return MDS_OK;
    if (size > (uint64_t)INT64_MAX) return mds_set_error(err, MDS_ERR_ARG, 0, "size %llu out of range", (unsigned long long)size);
    if (ftruncate((int)file, (off_t)size) != 0)
        return mds_set_error(err, MDS_ERR_SYS, errno, "cannot extend to %llu bytes: %s", (unsigned long long)size, strerror(errno));
    return MDS_OK;
}

int mds_platform_file_sync(intptr_t file, mds_error *err) {
    if (fsync((int)file) != 0 && errno != EINVAL && errno != EROFS)
        return mds_set_error(err, MDS_ERR_SYS, errno, "fsync failed: %s", strerror(errno));
    return MDS_OK;
}

void mds_platform_file_close(intptr_t file) {
    if (file >= 0) close((int)file);
}

int mds_platform_file_copy_private(const char *src_path, intptr_t dst, uint64_t *copied, mds_error *err) {
    struct stat st;
    int fd;
    uint64_t done = 0;
    uint8_t buf[16384];
    *copied = 0;
    fd = open(src_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return mds_set_error(err, MDS_ERR_SYS, errno, "cannot open %s: %s", src_path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot stat %s: %s", src_path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        close(fd);
        return mds_set_error(err, MDS_ERR_PERMISSION, 0, "%s is not a regular file of this user", src_path);
    }
#ifdef __linux__
    /* In-kernel copy first; a filesystem that cannot do it falls back below. */
    for (;;) {
        off_t in_off = (off_t)done, out_off = (off_t)done; /* 64-bit: Linux targets are LP64 */
        ssize_t n = copy_file_range(fd, &in_off, (int)dst, &out_off, 1u << 30, 0);
        if (n > 0) {
            done += (uint64_t)n;
            continue;
        }
        if (n == 0) {
            close(fd);
            *copied = done;
            return MDS_OK;
        }
        if (errno == EINTR) continue;
        break; /* EXDEV, ENOSYS, EINVAL...: copy by hand from where we are */
    }
#endif
    for (;;) {
        ssize_t n = pread(fd, buf, sizeof buf, (off_t)done);
        int rc;
        if (n < 0) {
            int e = errno;
            if (e == EINTR) continue;
            close(fd);
            *copied = done;
            return mds_set_error(err, MDS_ERR_SYS, e, "cannot read %s: %s", src_path, strerror(e));
        }
        if (n == 0) break;
        rc = mds_platform_file_pwrite(dst, buf, (uint64_t)n, done, err);
        if (rc != MDS_OK) {
            close(fd);
            *copied = done;
            return rc;
        }
        done += (uint64_t)n;
    }
    close(fd);
    *copied = done;
    return MDS_OK;
}

int mds_platform_path_is_absolute(const char *path) { return path[0] == '/'; }

int mds_platform_file_remove(const char *path) { return unlink(path) == 0 ? 0 : -1; }

uint64_t mds_platform_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif /* !_WIN32 */
