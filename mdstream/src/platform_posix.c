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
#include <sys/statvfs.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_POPULATE
#define MAP_POPULATE 0
#endif

#ifdef __linux__
#include <linux/futex.h>
#include <linux/fs.h>
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


/* ---- The registry of file-backed mappings: SIGBUS guard and fork ---------------
 * A ring file can be shrunk (ftruncate) by any process of its owner while it
 * is mapped; the next access past the new end raises SIGBUS, which would kill
 * the consumer or, worse, the dump writer.  Mappings of ring files are
 * registered here; a SIGBUS inside one maps a private zero page over the
 * faulting page (so the access completes) and raises the ring's fault flag,
 * which the producer checks after every write and the consumer at every poll
 * and release, turning the fault into MDS_ERR_CORRUPT.  Faults elsewhere go
 * to the previous handler.  MDSTREAM_SIGBUS_GUARD=0 disables the guard.
 *
 * The same nodes let a forked child drop its copies of the ring files'
 * descriptors (pthread_atfork), so a child never keeps its parent's role
 * locks alive: the parent's death stays visible to its peers.
 *
 * Nodes are allocated outside any signal handler, linked once and never
 * freed (a closed ring's node is reused), so the handler walks the list
 * without locks and without limit on the number of rings. */

typedef struct registry_node {
    uintptr_t base;             /* 0 = no mapping; stored last (release) */
    size_t size;
    uint32_t fault;
    int fd;                     /* the ring file's descriptor, -1 = none */
    uint32_t claimed;           /* 1 while a handle owns the node */
    struct registry_node *next; /* immutable once linked */
} registry_node;

static registry_node *registry_head;
static struct sigaction guard_previous;
static uintptr_t guard_page_size = 4096;
static int guard_enabled;      /* 1 installed, 0 disabled or failed */
static pthread_once_t platform_once = PTHREAD_ONCE_INIT;
static uint64_t fork_generation;

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
    registry_node *node;
    for (node = __atomic_load_n(&registry_head, __ATOMIC_ACQUIRE); node; node = node->next) {
        uintptr_t base = __atomic_load_n(&node->base, __ATOMIC_ACQUIRE);
        if (base != 0 && addr - base < node->size) {
            void *page = (void *)(addr & ~(guard_page_size - 1));
            if (mmap(page, (size_t)guard_page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                     -1, 0) != MAP_FAILED) {
                __atomic_store_n(&node->fault, 1u, __ATOMIC_RELEASE);
                errno = saved_errno;
                return;
            }
            break;
        }
    }
    errno = saved_errno;
    guard_chain(sig, info, context);
}

/* In the child of fork(): only the forking thread exists; close() is
 * async-signal-safe.  The parent keeps its own descriptors (and locks). */
static void after_fork_in_child(void) {
    registry_node *node;
    __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELAXED);
    for (node = __atomic_load_n(&registry_head, __ATOMIC_ACQUIRE); node; node = node->next) {
        int fd = node->fd;
        if (fd >= 0) {
            node->fd = -1;
            close(fd);
        }
    }
}

static void platform_init(void) {
    struct sigaction action;
    const char *env = getenv("MDSTREAM_SIGBUS_GUARD");
    long page = sysconf(_SC_PAGESIZE);
    pthread_atfork(NULL, NULL, after_fork_in_child);
    if (env && env[0] == '0') return;
    if (page > 0) guard_page_size = (uintptr_t)page;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = guard_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &guard_previous) == 0) guard_enabled = 1;
}

uint64_t mds_platform_fork_generation(void) {
    pthread_once(&platform_once, platform_init);
    return __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
}

/* Runs outside signal handlers: may allocate. */
static void registry_add(mds_ring *ring) {
    registry_node *node;
    pthread_once(&platform_once, platform_init);
    ring->fault_flag = NULL;
    ring->registry_node = NULL;
    for (node = __atomic_load_n(&registry_head, __ATOMIC_ACQUIRE); node; node = node->next) {
        uint32_t expected = 0;
        if (__atomic_compare_exchange_n(&node->claimed, &expected, 1u, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) break;
    }
    if (node == NULL) {
        node = (registry_node *)calloc(1, sizeof *node);
        if (node == NULL) return; /* unguarded and not closed at fork: as before the registry */
        node->claimed = 1;
        node->fd = -1;
        node->next = __atomic_load_n(&registry_head, __ATOMIC_ACQUIRE);
        while (!__atomic_compare_exchange_n(&registry_head, &node->next, node, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
    }
    node->size = ring->map_size;
    node->fd = (int)ring->fd;
    __atomic_store_n(&node->fault, 0u, __ATOMIC_RELAXED);
    __atomic_store_n(&node->base, guard_enabled ? (uintptr_t)ring->map_base : (uintptr_t)0, __ATOMIC_RELEASE);
    ring->registry_node = node;
    if (guard_enabled) ring->fault_flag = &node->fault;
}

static void registry_remove(mds_ring *ring) {
    registry_node *node = (registry_node *)ring->registry_node;
    if (node) {
        __atomic_store_n(&node->base, (uintptr_t)0, __ATOMIC_RELEASE);
        node->fd = -1;
        __atomic_store_n(&node->claimed, 0u, __ATOMIC_RELEASE);
    }
    ring->registry_node = NULL;
    ring->fault_flag = NULL;
}

/* ---- role locks ------------------------------------------------------------------ */

#if defined(__linux__) && defined(F_OFD_SETLK)
#define HAVE_OFD_LOCKS 1
static int ofd_lock(int fd, unsigned byte, short type, int cmd, struct flock *out) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)byte;
    fl.l_len = 1;
    if (fcntl(fd, cmd, &fl) != 0) return -1;
    if (out) *out = fl;
    return 0;
}
#endif

int mds_platform_role_lock(mds_ring *ring, unsigned lock_byte, int *locked, mds_error *err) {
    *locked = 0;
#ifdef HAVE_OFD_LOCKS
    if (ring->fd >= 0) {
        if (ofd_lock((int)ring->fd, lock_byte, F_WRLCK, F_OFD_SETLK, NULL) == 0) {
            *locked = 1;
            return MDS_OK;
        }
        {
            int e = errno;
            if (e == EAGAIN || e == EACCES)
                return mds_set_error(err, MDS_ERR_BUSY, e, "ring %s: the role is held by another live process",
                                     ring->path);
            if (e != EINVAL) return mds_set_error(err, MDS_ERR_SYS, e, "cannot lock ring %s: %s", ring->path, strerror(e));
        }
    }
#else
    (void)ring;
    (void)lock_byte;
    (void)err;
#endif
    return MDS_OK;
}

void mds_platform_role_unlock(mds_ring *ring, unsigned lock_byte) {
#ifdef HAVE_OFD_LOCKS
    if (ring->fd >= 0) (void)ofd_lock((int)ring->fd, lock_byte, F_UNLCK, F_OFD_SETLK, NULL);
#else
    (void)ring;
    (void)lock_byte;
#endif
}

#ifdef HAVE_OFD_LOCKS
static int fd_lock_held(int fd, unsigned lock_byte) {
    struct flock fl;
    if (ofd_lock(fd, lock_byte, F_WRLCK, F_OFD_GETLK, &fl) != 0) return MDS_UNKNOWN;
    return fl.l_type == F_UNLCK ? MDS_GONE : MDS_ALIVE;
}
#endif

int mds_platform_role_alive(const mds_ring *ring, unsigned lock_byte) {
#ifdef HAVE_OFD_LOCKS
    if (ring->fd >= 0) return fd_lock_held((int)ring->fd, lock_byte);
#else
    (void)ring;
    (void)lock_byte;
#endif
    return MDS_UNKNOWN;
}

/* ---- creation ------------------------------------------------------------------- */

/* Bytes a new ring of map_size can have: free space where a named ring's file
 * goes, available memory for an anonymous one.  0 = unknown. */
static uint64_t room_for_ring(const char *path) {
    if (path) {
        char dir[512];
        struct statvfs vfs;
        const char *slash = strrchr(path, '/');
        size_t n = slash ? (size_t)(slash - path) : 0;
        if (n == 0) n = 1;
        if (n >= sizeof dir) return 0;
        memcpy(dir, slash ? path : ".", n);
        dir[n] = '\0';
        if (statvfs(dir, &vfs) != 0) return 0;
        return (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
    }
#ifdef __linux__
    {
        char buf[4096];
        int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
        ssize_t got;
        const char *line;
        if (fd < 0) return 0;
        got = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (got <= 0) return 0;
        buf[got] = '\0';
        line = strstr(buf, "MemAvailable:");
        if (line) return (uint64_t)strtoull(line + 13, NULL, 10) * 1024u;
    }
#endif
    return 0;
}

static void human_size(uint64_t bytes, char *out, size_t size) {
    if (bytes >= (1ull << 30)) snprintf(out, size, "%.1f GiB", (double)bytes / (double)(1ull << 30));
    else snprintf(out, size, "%.1f MiB", (double)bytes / (double)(1ull << 20));
}

static int check_room(const char *path, size_t map_size, mds_error *err) {
    uint64_t room = room_for_ring(path);
    if (room && (uint64_t)map_size > room) {
        char need[32], have[32];
        human_size((uint64_t)map_size, need, sizeof need);
        human_size(room, have, sizeof have);
        return mds_set_error(err, MDS_ERR_SYS, path ? ENOSPC : ENOMEM, "a ring of %s needs more than the %s available %s%s",
                             need, have, path ? "for " : "in memory", path ? path : "");
    }
    return MDS_OK;
}

/* A stale ring under name: remove it, but only the file we inspected, and
 * only if no other reclaimer got to it first (we hold its creator lock). */
int mds_platform_remove_stale(const char *name, int *removed, mds_error *err) {
    char path[512];
    int stale = 0, fd, rc;
    uint32_t creator = 0;
    struct stat fst, lst;
    *removed = 0;
    if (resolve_path(name, path, sizeof path, err) != MDS_OK) return err->status;
    rc = mds_platform_probe_stale(path, &stale, &creator, err);
    if (rc != MDS_OK) return rc;
    if (!stale) return MDS_OK;
    fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? MDS_OK : mds_set_error(err, MDS_ERR_SYS, errno, "cannot open %s: %s", path, strerror(errno));
#ifdef HAVE_OFD_LOCKS
    if (ofd_lock(fd, MDS_LOCK_CREATOR, F_WRLCK, F_OFD_SETLK, NULL) != 0 && errno != EINVAL) {
        close(fd);
        return MDS_OK; /* someone holds it after all: a new ring, not ours to remove */
    }
#endif
    if (fstat(fd, &fst) == 0 && lstat(path, &lst) == 0 && fst.st_dev == lst.st_dev && fst.st_ino == lst.st_ino &&
        unlink(path) == 0)
        *removed = 1;
    close(fd);
    return MDS_OK;
}

static int exists_error(const char *path, mds_error *err) {
    int stale = 0;
    uint32_t creator = 0;
    mds_error probe;
    if (mds_platform_probe_stale(path, &stale, &creator, &probe) == MDS_OK && stale)
        return mds_set_error(err, MDS_ERR_EXISTS, EEXIST,
                             "ring %s already exists and is stale (its creator, pid %u, and every other user are gone); "
                             "reclaim it with Ring.create(..., replace_stale=True) or `mdstream ring clean`",
                             path, creator);
    return mds_set_error(err, MDS_ERR_EXISTS, EEXIST, "ring %s already exists", path);
}

/* Create the ring file unnamed (O_TMPFILE) or under a hidden temporary name,
 * so that it appears under path only complete: attach never sees a half header. */
static int open_unnamed(const char *path, char *temp, size_t temp_size, mds_error *err) {
    char dir[512];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    int fd;
    temp[0] = '\0';
    if (n == 0) n = slash ? 1 : 0;
    if (n >= sizeof dir) return mds_set_error(err, MDS_ERR_ARG, 0, "ring path too long");
    if (n) memcpy(dir, path, n);
    else dir[n++] = '.';
    dir[n] = '\0';
#ifdef O_TMPFILE
    fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) return fd;
#endif
    {
        int tries;
        const char *base = slash ? slash + 1 : path;
        for (tries = 0; tries < 100; tries++) {
            int w = snprintf(temp, temp_size, "%s/.%s.%016llx.creating", dir, base,
                             (unsigned long long)mds_platform_random64());
            if (w < 0 || (size_t)w >= temp_size) return mds_set_error(err, MDS_ERR_ARG, 0, "ring path too long");
            fd = open(temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (fd >= 0) return fd;
            if (errno != EEXIST) break;
        }
    }
    {
        int e = errno;
        temp[0] = '\0';
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot create ring %s: %s", path, strerror(e));
    }
}

/* Give the complete file its name; never replaces anything. */
static int publish_name(int fd, const char *temp, const char *path, mds_error *err) {
    int rc;
    if (temp[0]) {
        rc = link(temp, path);
        unlink(temp);
    } else {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        rc = linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
#ifdef AT_EMPTY_PATH
        if (rc != 0 && errno == ENOENT) rc = linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH);
#endif
    }
    if (rc == 0) return MDS_OK;
    if (errno == EEXIST) return exists_error(path, err);
    return mds_set_error(err, MDS_ERR_SYS, errno, "cannot create ring %s: %s", path, strerror(errno));
}

int mds_platform_map_create(mds_ring *ring, const char *name, size_t map_size, int replace_stale, mds_error *err) {
    void *base;
    ring->fd = -1;
    ring->path[0] = '\0';
    ring->name[0] = '\0';
    ring->generation = mds_platform_fork_generation();
    if (name == NULL) {
        if (check_room(NULL, map_size, err) != MDS_OK) return err->status;
        /* Populated now: a page fault per 4 KiB on the first lap would cost the
         * producer more than the copies themselves. */
        base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (base == MAP_FAILED)
            return mds_set_error(err, MDS_ERR_SYS, errno, "mmap of %zu bytes failed: %s", map_size,
                                 strerror(errno));
#ifdef MADV_HUGEPAGE
        if (map_size >= (8u << 20)) madvise(base, map_size, MADV_HUGEPAGE); /* fewer TLB misses; advisory */
#endif
        ring->map_base = base;
        ring->map_size = map_size;
        ring->fault_flag = NULL;
        ring->registry_node = NULL;
        return MDS_OK;
    } else {
        int fd, rc, removed;
        char temp[600];
        struct stat st;
        if (resolve_path(name, ring->path, sizeof ring->path, err) != MDS_OK) return err->status;
        snprintf(ring->name, sizeof ring->name, "%s", name);
        if (lstat(ring->path, &st) == 0) {
            if (!replace_stale) return exists_error(ring->path, err);
            if ((rc = mds_platform_remove_stale(ring->path, &removed, err)) != MDS_OK) return rc;
        }
        if (check_room(ring->path, map_size, err) != MDS_OK) return err->status;
        fd = open_unnamed(ring->path, temp, sizeof temp, err);
        if (fd < 0) return err->status;
        /* umask may only remove bits; make the mode exactly 0600. */
        if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)map_size) != 0) {
            int e = errno;
            close(fd);
            if (temp[0]) unlink(temp);
            return mds_set_error(err, MDS_ERR_SYS, e, "cannot size ring %s to %zu bytes: %s", ring->path, map_size,
                                 strerror(e));
        }
#ifdef __linux__
        /* Reserve the blocks now so a full /dev/shm fails here, not as SIGBUS later. */
        rc = posix_fallocate(fd, 0, (off_t)map_size);
        if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
            close(fd);
            if (temp[0]) unlink(temp);
            return mds_set_error(err, MDS_ERR_SYS, rc, "cannot allocate %zu bytes for ring %s: %s",
                                 map_size, ring->path, strerror(rc));
        }
#endif
        base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (base == MAP_FAILED) {
            int e = errno;
            close(fd);
            if (temp[0]) unlink(temp);
            return mds_set_error(err, MDS_ERR_SYS, e, "mmap of ring %s failed: %s", ring->path, strerror(e));
        }
        ring->fd = fd;
        ring->map_base = base;
        ring->map_size = map_size;
        snprintf(ring->pending_name, sizeof ring->pending_name, "%s", temp);
        registry_add(ring);
        return MDS_OK;
    }
}

int mds_platform_map_publish(mds_ring *ring, mds_error *err) {
    int rc;
    if (ring->fd < 0) return MDS_OK;
    rc = publish_name((int)ring->fd, ring->pending_name, ring->path, err);
    ring->pending_name[0] = '\0';
    return rc;
}

int mds_platform_map_attach(mds_ring *ring, const char *name, mds_ring_header *header_copy,
                            uint64_t *file_size, mds_error *err) {
    struct stat st;
    int fd;
    ssize_t got;
    ring->fd = -1;
    ring->generation = mds_platform_fork_generation();
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
    registry_add(ring);
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
    /* A handle inherited across fork(): its descriptor was closed in the child
     * already (after_fork_in_child) and the number may name another file now. */
    int inherited = ring->generation != mds_platform_fork_generation();
    registry_remove(ring);
    if (ring->map_base) munmap(ring->map_base, ring->map_size);
    ring->map_base = NULL;
    if (ring->fd >= 0 && !inherited) close((int)ring->fd);
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

int mds_platform_map_private_with_room(intptr_t file, uint64_t size, uint64_t room, void **mapping,
                                       uint64_t *mapping_size, mds_error *err) {
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t file_part, room_part, total;
    void *base;
    *mapping = NULL;
    *mapping_size = 0;
    if (size > (uint64_t)SIZE_MAX / 2 || room > (uint64_t)SIZE_MAX / 2)
        return mds_set_error(err, MDS_ERR_ARG, 0, "cannot map %llu + %llu bytes", (unsigned long long)size,
                             (unsigned long long)room);
    file_part = (size + page - 1) / page * page;
    room_part = (room + page - 1) / page * page;
    total = file_part + room_part;
    if (total == 0) total = page;
    /* Reserve the whole range as zero pages, then lay the file over its
     * start: the tail of the file's last page reads as zeros too, so the
     * room begins right at `size`. */
    base = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return mds_set_error(err, MDS_ERR_SYS, errno, "cannot reserve %llu bytes: %s", (unsigned long long)total,
                             strerror(errno));
    if (file_part && mmap(base, (size_t)file_part, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
                          (int)file, 0) == MAP_FAILED) {
        int saved = errno;
        munmap(base, (size_t)total);
        return mds_set_error(err, MDS_ERR_SYS, saved, "cannot map the file: %s", strerror(saved));
    }
    *mapping = base;
    *mapping_size = total;
    return MDS_OK;
}

void mds_platform_unmap_private(void *mapping, uint64_t mapping_size) {
    if (mapping != NULL && mapping_size) munmap(mapping, (size_t)mapping_size);
}

int mds_platform_path_is_absolute(const char *path) { return path[0] == '/'; }

int mds_platform_file_identity(const char *path, uint64_t *device, uint64_t *inode, mds_error *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return mds_set_error(err, MDS_ERR_SYS, errno, "cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return mds_set_error(err, MDS_ERR_ARG, 0, "%s is not a regular file", path);
    *device = (uint64_t)st.st_dev;
    *inode = (uint64_t)st.st_ino;
    return MDS_OK;
}

/* ctime comes from the kernel's coarse clock, a tick (up to 10 ms) behind
 * CLOCK_REALTIME: a file the consumer wrote after the dump began may look
 * that much older, a file last changed before it may not pass. */
#define MDS_CTIME_SLACK_NS 50000000ull

int mds_platform_file_open_registered(const char *path, uint64_t device, uint64_t inode, uint64_t not_before_unix_ns,
                                      intptr_t *file, uint64_t *size, mds_error *err) {
    struct stat st;
    int fd;
    uint64_t changed_ns;
    *file = -1;
    *size = 0;
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return mds_set_error(err, MDS_ERR_SYS, errno, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot stat %s: %s", path, strerror(e));
    }
    changed_ns = (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec;
    /* Every condition is needed: a peer that can write the ring header can
     * name any file; only the consumer's own new partial file passes them all.
     * Two links: a consumer that died between publishing (link to the final
     * name) and its commit; the identity still pins its own inode. */
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0 || st.st_nlink > 2 ||
        (uint64_t)st.st_dev != device || (uint64_t)st.st_ino != inode || changed_ns + MDS_CTIME_SLACK_NS < not_before_unix_ns) {
        close(fd);
        return mds_set_error(err, MDS_ERR_PERMISSION, 0,
                             "%s is not the consumer's output registered for this dump (owner, mode, links, identity "
                             "or age do not match); not used", path);
    }
    *file = fd;
    *size = (uint64_t)st.st_size;
    return MDS_OK;
}

int mds_platform_file_copy_range(intptr_t src, intptr_t dst, uint64_t offset, uint64_t length, uint64_t deadline_ns,
                                 uint64_t *copied, mds_error *err) {
    uint64_t done = 0;
    uint8_t buf[16384];
    int use_kernel = 1;
    *copied = 0;
#if defined(__linux__) && defined(FICLONERANGE)
    /* Whole-extent clones cost no I/O where the filesystem shares blocks
     * (btrfs, XFS); block-aligned ranges only. */
    if (offset == 0 && length > 0) {
        struct file_clone_range range;
        range.src_fd = (int64_t)src;
        range.src_offset = 0;
        range.src_length = length & ~(uint64_t)4095;
        range.dest_offset = 0;
        if (range.src_length && ioctl((int)dst, FICLONERANGE, &range) == 0) done = range.src_length;
    }
#endif
    while (done < length) {
        uint64_t want = length - done;
        ssize_t n;
        if (deadline_ns && mds_now_ns() >= deadline_ns) break;
        if (want > (8u << 20)) want = 8u << 20; /* the clock is checked between slices */
#ifdef __linux__
        if (use_kernel) {
            off_t in_off = (off_t)(offset + done), out_off = (off_t)(offset + done);
            n = copy_file_range((int)src, &in_off, (int)dst, &out_off, (size_t)want, 0);
            if (n > 0) {
                done += (uint64_t)n;
                continue;
            }
            if (n == 0) break; /* the source is shorter than it was */
            if (errno == EINTR) continue;
            use_kernel = 0;   /* EXDEV, ENOSYS, EINVAL...: by hand from here */
        }
#else
        (void)use_kernel;
#endif
        if (want > sizeof buf) want = sizeof buf;
        n = pread((int)src, buf, (size_t)want, (off_t)(offset + done));
        if (n < 0) {
            int e = errno;
            if (e == EINTR) continue;
            *copied = done;
            return mds_set_error(err, MDS_ERR_SYS, e, "cannot read the consumer's output: %s", strerror(e));
        }
        if (n == 0) break;
        if (mds_platform_file_pwrite(dst, buf, (uint64_t)n, offset + done, err) != MDS_OK) {
            *copied = done;
            return err->status;
        }
        done += (uint64_t)n;
    }
    *copied = done;
    return MDS_OK;
}

int mds_platform_file_set_size(intptr_t file, uint64_t size, mds_error *err) {
    if (size > (uint64_t)INT64_MAX) return mds_set_error(err, MDS_ERR_ARG, 0, "size %llu out of range", (unsigned long long)size);
    if (ftruncate((int)file, (off_t)size) != 0)
        return mds_set_error(err, MDS_ERR_SYS, errno, "cannot set the size to %llu bytes: %s", (unsigned long long)size,
                             strerror(errno));
    return MDS_OK;
}

/* ---- stale rings ------------------------------------------------------------- */

int mds_platform_probe_stale(const char *name, int *stale, uint32_t *creator_pid, mds_error *err) {
    char path[512];
    struct stat st;
    mds_ring_header h;
    int fd, alive = 0;
    ssize_t got;
    *stale = 0;
    *creator_pid = 0;
    if (resolve_path(name, path, sizeof path, err) != MDS_OK) return err->status;
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return mds_set_error(err, MDS_ERR_NOT_FOUND, e, "no ring at %s", path);
        return mds_set_error(err, MDS_ERR_SYS, e, "cannot open %s: %s", path, strerror(e));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        close(fd);
        return mds_set_error(err, MDS_ERR_PERMISSION, 0, "%s is not a regular file of this user", path);
    }
    memset(&h, 0, sizeof h);
    got = pread(fd, &h, sizeof h, 0);
    if (got < (ssize_t)offsetof(mds_ring_header, write_pos) || memcmp(h.magic, MDS_RING_MAGIC, 8) != 0) {
        close(fd);
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is not an mdstream ring", path);
    }
    *creator_pid = h.creator_pid;
#ifdef HAVE_OFD_LOCKS
    if (h.version >= 2) {
        /* Each role by its lock when its holder took one, else by its pid. */
        int c = (h.flags & MDS_FLAG_CREATOR_LOCKED) ? fd_lock_held(fd, MDS_LOCK_CREATOR) : MDS_UNKNOWN;
        int p = (h.flags & MDS_FLAG_PRODUCER_LOCKED) ? fd_lock_held(fd, MDS_LOCK_PRODUCER) : MDS_UNKNOWN;
        int k = (h.flags & MDS_FLAG_CONSUMER_LOCKED) ? fd_lock_held(fd, MDS_LOCK_CONSUMER) : MDS_UNKNOWN;
        if (c == MDS_UNKNOWN) c = h.creator_pid && mds_pid_alive(h.creator_pid) ? MDS_ALIVE : MDS_GONE;
        if (p == MDS_UNKNOWN) p = h.producer_token && h.producer_pid && mds_pid_alive(h.producer_pid) ? MDS_ALIVE : MDS_GONE;
        if (k == MDS_UNKNOWN) k = h.consumer_token && h.consumer_pid && mds_pid_alive(h.consumer_pid) ? MDS_ALIVE : MDS_GONE;
        close(fd);
        *stale = (c == MDS_GONE && p == MDS_GONE && k == MDS_GONE);
        return MDS_OK;
    }
#endif
    /* Version 1 rings (no role locks) and systems without OFD locks: pids. */
    alive = mds_pid_alive(h.creator_pid) && h.creator_pid != 0;
    if (h.producer_token && h.producer_pid && mds_pid_alive(h.producer_pid)) alive = 1;
    if (h.consumer_token && h.consumer_pid && mds_pid_alive(h.consumer_pid)) alive = 1;
    close(fd);
    *stale = !alive;
    return MDS_OK;
}

uint64_t mds_platform_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif /* !_WIN32 */
