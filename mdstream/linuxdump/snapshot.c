/* Snapshot of a live Linux process: stop every thread with PTRACE_SEIZE +
 * PTRACE_INTERRUPT (every wait bounded), copy registers, maps, stacks and the
 * memory around each instruction pointer, resume; then (running again) read
 * build-ids and the /proc files that do not change.  The ptrace work runs on
 * its own thread: when that thread exits the kernel detaches any tracee an
 * error path could have left attached, so the target is never left stopped. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "snapshot_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if MDL_SUPPORTED
#include <ctype.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

uint64_t mdl_now_ns(void) {
#if !MDL_SUPPORTED
    return 0;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
#endif
}

void mdl_options_init(mdl_options *o) {
    memset(o, 0, sizeof *o);
    o->include_environ = 0;
    o->include_cmdline = 1;
    o->max_stack = 64 * 1024;
    o->ip_context = 256;
    o->stop_timeout_ns = 5000000000ull;
}

/* user_regs_struct word for each of the mcontext's gregs REG_R8 .. REG_RIP,
 * REG_EFL (17), REG_CSGSFS (18: CS in the low 16 bits); -1: not copied. */
static const int mcontext_to_user_regs[MDL_MCONTEXT_GREGS] = {
    9 /* r8 */, 8 /* r9 */, 7 /* r10 */, 6 /* r11 */, 3 /* r12 */, 2 /* r13 */, 1 /* r14 */, 0 /* r15 */,
    14 /* rdi */, 13 /* rsi */, 4 /* rbp */, 5 /* rbx */, 12 /* rdx */, 10 /* rax */, 11 /* rcx */,
    19 /* rsp */, 16 /* rip */, 18 /* eflags */, 17 /* cs (from CSGSFS) */, -1, -1, -1, -1};

void mdl_fault_from_mcontext(mdl_fault_context *ctx, uint32_t tid, const uint64_t gregs[MDL_MCONTEXT_GREGS],
                             const uint8_t *fxsave) {
    int i;
    memset(ctx, 0, sizeof *ctx);
    ctx->tid = tid;
    ctx->flags = MDL_FAULT_MCONTEXT;
    for (i = 0; i < MDL_MCONTEXT_GREGS; i++)
        if (mcontext_to_user_regs[i] >= 0) ctx->regs[mcontext_to_user_regs[i]] = gregs[i];
    ctx->regs[17] &= 0xFFFF; /* CSGSFS: cs | gs << 16 | fs << 32 | ss << 48 */
    if (fxsave != NULL) {
        memcpy(ctx->fpregs, fxsave, sizeof ctx->fpregs);
        ctx->flags |= MDL_FAULT_FPREGS;
    }
}

MDL_PRINTF(4, 5) static int set_error(mdl_error *err, int status, int sys_errno, const char *fmt, ...);
static int set_error(mdl_error *err, int status, int sys_errno, const char *fmt, ...) {
    if (err != NULL) {
        va_list ap;
        err->status = status;
        err->sys_errno = sys_errno;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

#if !MDL_SUPPORTED

int mdl_snapshot_take(uint32_t pid, const mdl_options *options, mdl_snapshot **out, mdl_error *err) {
    (void)pid;
    (void)options;
    *out = NULL;
    return set_error(err, MDL_ERR_UNSUPPORTED, 0, "the Linux minidump writer needs Linux on x86-64");
}
void mdl_snapshot_figures(const mdl_snapshot *snap, mdl_figures *out) {
    (void)snap;
    memset(out, 0, sizeof *out);
}
void mdl_snapshot_free(mdl_snapshot *snap) { (void)snap; }
int mdl_snapshot_thread(const mdl_snapshot *snap, size_t i, mdl_thread_info *out) {
    (void)snap;
    (void)i;
    memset(out, 0, sizeof *out);
    return -1;
}
int mdl_read_pass(uint32_t pid, const uint64_t *starts, const uint64_t *sizes, size_t n, uint64_t *bytes,
                  uint64_t *elapsed_ns, mdl_error *err) {
    (void)pid;
    (void)starts;
    (void)sizes;
    (void)n;
    *bytes = 0;
    *elapsed_ns = 0;
    return set_error(err, MDL_ERR_UNSUPPORTED, 0, "process_vm_readv needs Linux on x86-64");
}

#else

_Static_assert(sizeof(struct user_regs_struct) == MDL_USER_REGS_WORDS * 8, "user_regs_struct layout");
_Static_assert(sizeof(struct user_fpregs_struct) == 512, "FXSAVE layout");

#define PAGE 4096ull
#define MAX_FILE (64u << 20)

/* ---- small helpers ------------------------------------------------------- */

static int read_file(const char *path, mdl_buf *out, size_t limit) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t cap = 4096, size = 0;
    uint8_t *data;
    if (fd < 0) return -1;
    data = (uint8_t *)malloc(cap);
    if (data == NULL) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        ssize_t n;
        if (size == cap) {
            uint8_t *bigger;
            if (cap >= limit) break;
            cap *= 2;
            bigger = (uint8_t *)realloc(data, cap);
            if (bigger == NULL) {
                free(data);
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            data = bigger;
        }
        n = read(fd, data + size, cap - size);
        if (n < 0) {
            if (errno == EINTR) continue;
            {
                int e = errno;
                free(data);
                close(fd);
                errno = e;
                return -1;
            }
        }
        if (n == 0) break;
        size += (size_t)n;
    }
    close(fd);
    free(out->data);
    out->data = data;
    out->size = size;
    return 0;
}

/* State letter from /proc/PID/stat ('?' when unreadable), and the start time
 * in clock ticks after boot (field 22). */
static char proc_state(pid_t pid, unsigned long long *starttime) {
    char path[64];
    mdl_buf buf = {NULL, 0};
    char state = '?';
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_file(path, &buf, 1 << 16) == 0 && buf.size > 0) {
        char *text = (char *)realloc(buf.data, buf.size + 1);
        if (text != NULL) {
            char *close_paren;
            buf.data = (uint8_t *)text;
            text[buf.size] = 0;
            close_paren = strrchr(text, ')');
            if (close_paren != NULL && close_paren[1] == ' ') {
                state = close_paren[2];
                if (starttime != NULL) {
                    /* fields after ')' start at 3 (state); starttime is 22 */
                    char *p = close_paren + 2;
                    int field = 3;
                    while (*p && field < 22) {
                        if (*p == ' ') field++;
                        p++;
                    }
                    *starttime = strtoull(p, NULL, 10);
                }
            }
        }
    }
    free(buf.data);
    return state;
}

/* Fields 48..51 of /proc/PID/stat: arg_start, arg_end, env_start, env_end. */
static int stat_ranges(pid_t pid, uint64_t out[4]) {
    char path[64];
    mdl_buf buf = {NULL, 0};
    int ok = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_file(path, &buf, 1 << 16) == 0 && buf.size > 0) {
        char *text = (char *)realloc(buf.data, buf.size + 1);
        if (text != NULL) {
            char *p;
            int field = 2;
            buf.data = (uint8_t *)text;
            text[buf.size] = 0;
            p = strrchr(text, ')');
            while (p != NULL && *p && field < 51) {
                if (*p == ' ') {
                    field++;
                    if (field >= 48) out[field - 48] = strtoull(p + 1, NULL, 10);
                }
                p++;
            }
            ok = field == 51;
        }
    }
    free(buf.data);
    return ok;
}

static void redact(mdl_region *list, size_t n, uint64_t start, uint64_t end) {
    size_t i;
    if (end <= start) return;
    for (i = 0; i < n; i++) {
        uint64_t a = list[i].start > start ? list[i].start : start;
        uint64_t b = list[i].start + list[i].size < end ? list[i].start + list[i].size : end;
        if (a < b) memset(list[i].data + (a - list[i].start), 0, b - a);
    }
}

/* Blanks every copy of each NUL-separated string of `strings` (for the
 * environment, of each value after '=') at least 8 bytes long. */
static void scrub_copies(mdl_region *list, size_t n, const mdl_buf *strings, int values) {
    size_t pos = 0, i;
    if (strings->data == NULL) return;
    while (pos < strings->size) {
        const char *str = (const char *)strings->data + pos;
        size_t len = strnlen(str, strings->size - pos);
        const char *needle = str;
        size_t nlen = len;
        if (values) {
            const char *eq = (const char *)memchr(str, '=', len);
            if (eq != NULL) {
                needle = eq + 1;
                nlen = len - (size_t)(needle - str);
            }
        }
        if (nlen >= 8) {
            for (i = 0; i < n; i++) {
                uint8_t *hay = list[i].data;
                size_t left = list[i].size;
                uint8_t *hit;
                while (left >= nlen && (hit = (uint8_t *)memmem(hay, left, needle, nlen)) != NULL) {
                    memset(hit, 0, nlen);
                    left -= (size_t)(hit - hay) + nlen;
                    hay = hit + nlen;
                }
            }
        }
        pos += len + 1;
    }
}

static int process_gone(pid_t pid) {
    char s = proc_state(pid, NULL);
    return s == '?' || s == 'Z' || s == 'X' || s == 'x';
}

static int add_thread(mdl_snapshot *s, pid_t tid) {
    size_t i;
    for (i = 0; i < s->nthreads; i++)
        if (s->threads[i].tid == tid) return 0;
    if (s->nthreads == s->cthreads) {
        size_t cap = s->cthreads ? s->cthreads * 2 : 32;
        mdl_thread *t = (mdl_thread *)realloc(s->threads, cap * sizeof *t);
        if (t == NULL) return -1;
        s->threads = t;
        s->cthreads = cap;
    }
    memset(&s->threads[s->nthreads], 0, sizeof s->threads[0]);
    s->threads[s->nthreads].tid = tid;
    s->nthreads++;
    return 1;
}

/* Adds threads listed in /proc/PID/task; returns how many were new, -1 on error. */
static int list_tasks(mdl_snapshot *s) {
    char path[64];
    DIR *dir;
    struct dirent *ent;
    int added = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)s->pid);
    dir = opendir(path);
    if (dir == NULL) return -1;
    while ((ent = readdir(dir)) != NULL) {
        char *end;
        long tid = strtol(ent->d_name, &end, 10);
        int r;
        if (*end != 0 || tid <= 0) continue;
        r = add_thread(s, (pid_t)tid);
        if (r < 0) {
            closedir(dir);
            errno = ENOMEM;
            return -1;
        }
        added += r;
    }
    closedir(dir);
    return added;
}

/* ---- /proc/PID/maps ------------------------------------------------------ */

static int parse_maps(mdl_snapshot *s) {
    size_t cap = 0, i = 0;
    char *text, *line, *save = NULL;
    if (s->maps_text.data == NULL) return -1;
    text = (char *)malloc(s->maps_text.size + 1);
    if (text == NULL) return -1;
    memcpy(text, s->maps_text.data, s->maps_text.size);
    text[s->maps_text.size] = 0;
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        unsigned long long start, end, offset, inode;
        char perms[8] = {0};
        unsigned int dmaj, dmin;
        int consumed = 0;
        mdl_mapping *m;
        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &start, &end, perms, &offset, &dmaj, &dmin, &inode,
                   &consumed) < 7)
            continue;
        if (i == cap) {
            size_t ncap = cap ? cap * 2 : 128;
            mdl_mapping *bigger = (mdl_mapping *)realloc(s->maps, ncap * sizeof *bigger);
            if (bigger == NULL) {
                free(text);
                return -1;
            }
            s->maps = bigger;
            cap = ncap;
        }
        m = &s->maps[i];
        memset(m, 0, sizeof *m);
        m->start = start;
        m->end = end;
        m->offset = offset;
        m->inode = inode;
        m->perms = (perms[0] == 'r' ? MDL_PERM_R : 0) | (perms[1] == 'w' ? MDL_PERM_W : 0) |
                   (perms[2] == 'x' ? MDL_PERM_X : 0) | (perms[3] == 'p' ? MDL_PERM_P : 0);
        if (consumed > 0 && line[consumed] != 0) {
            const char *name = line + consumed;
            size_t len = strlen(name);
            const char *deleted = " (deleted)";
            size_t dl = strlen(deleted);
            if (len > dl && strcmp(name + len - dl, deleted) == 0) len -= dl;
            m->path = strndup(name, len);
        }
        i++;
        s->nmaps = i;
    }
    free(text);
    return 0;
}

/* The lowest mapping starting above addr, or NULL. */
static const mdl_mapping *mapping_above(const mdl_snapshot *s, uint64_t addr) {
    size_t lo = 0, hi = s->nmaps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->maps[mid].start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nmaps ? &s->maps[lo] : NULL;
}

static const mdl_mapping *find_mapping(const mdl_snapshot *s, uint64_t addr) {
    size_t lo = 0, hi = s->nmaps;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (addr < s->maps[mid].start)
            hi = mid;
        else if (addr >= s->maps[mid].end)
            lo = mid + 1;
        else
            return &s->maps[mid];
    }
    return NULL;
}

/* ---- memory -------------------------------------------------------------- */

typedef struct reader {
    pid_t pid;
    int memfd;
    mdl_snapshot *snap;
} reader;

/* Copies up to len bytes; returns how many leading bytes could be read. */
static size_t read_memory(reader *r, uint64_t addr, uint8_t *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        struct iovec local = {buf + done, len - done};
        struct iovec remote = {(void *)(uintptr_t)(addr + done), len - done};
        ssize_t n = process_vm_readv(r->pid, &local, 1, &remote, 1, 0);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        break;
    }
    if (done < len) {
        if (r->snap) r->snap->readv_failures++;
        if (r->memfd >= 0) {
            while (done < len) {
                ssize_t n = pread(r->memfd, buf + done, len - done, (off_t)(addr + done));
                if (n > 0) {
                    done += (size_t)n;
                    continue;
                }
                if (n < 0 && errno == EINTR) continue;
                break;
            }
        }
    }
    /* Last resort, word by word (the leader is our tracee while stopped). */
    while (done + sizeof(long) <= len) {
        long word;
        errno = 0;
        word = ptrace(PTRACE_PEEKDATA, r->pid, (void *)(uintptr_t)(addr + done), NULL);
        if (errno != 0) break;
        memcpy(buf + done, &word, sizeof word);
        done += sizeof word;
    }
    return done;
}

int mdl_read_pass(uint32_t pid, const uint64_t *starts, const uint64_t *sizes, size_t n, uint64_t *bytes,
                  uint64_t *elapsed_ns, mdl_error *err) {
    const size_t step = (size_t)4 << 20;
    uint8_t *buf = (uint8_t *)malloc(step);
    uint64_t total = 0, t0;
    size_t i;
    *bytes = 0;
    *elapsed_ns = 0;
    if (buf == NULL) return set_error(err, MDL_ERR_SYS, ENOMEM, "out of memory");
    memset(buf, 0, step); /* faulted in before the clock starts: the pass measures reading */
    t0 = mdl_now_ns();
    for (i = 0; i < n; i++) {
        uint64_t pos = 0;
        while (pos < sizes[i]) {
            size_t len = sizes[i] - pos < step ? (size_t)(sizes[i] - pos) : step;
            struct iovec local = {buf, len};
            struct iovec remote = {(void *)(uintptr_t)(starts[i] + pos), len};
            ssize_t got = process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0);
            if (got < 0 && errno == EINTR) continue;
            if (got < 0 && (errno == ESRCH || errno == EPERM)) {
                int saved = errno;
                free(buf);
                return set_error(err, saved == ESRCH ? MDL_ERR_NO_PROCESS : MDL_ERR_PERMISSION, saved,
                                  "cannot read process %u: %s", pid, strerror(saved));
            }
            if (got <= 0) break; /* an unreadable page: the rest of this range is skipped, as the writer would */
            total += (uint64_t)got;
            pos += (uint64_t)got;
        }
    }
    *elapsed_ns = mdl_now_ns() - t0;
    *bytes = total;
    free(buf);
    return MDL_OK;
}

typedef struct range {
    uint64_t start, end;
} range;

static int cmp_range(const void *a, const void *b) {
    const range *x = (const range *)a, *y = (const range *)b;
    return x->start < y->start ? -1 : x->start > y->start ? 1 : 0;
}

static int push_region(mdl_region **list, size_t *n, size_t *cap, uint64_t start, uint64_t size, uint8_t *data) {
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        mdl_region *bigger = (mdl_region *)realloc(*list, ncap * sizeof *bigger);
        if (bigger == NULL) return -1;
        *list = bigger;
        *cap = ncap;
    }
    (*list)[*n].start = start;
    (*list)[*n].size = size;
    (*list)[*n].data = data;
    (*n)++;
    return 0;
}

#define HUGE_ALIGN ((size_t)2 << 20)

/* A buffer for `size` bytes of the target's memory.  A full dump copies every
 * mapping while the target is stopped, into memory that is new: 2 MiB pages
 * (where the kernel gives them) take one fault and one zeroing per 2 MiB
 * instead of per 4 KiB, which shortens the stop.  Freed with free(). */
static uint8_t *region_buffer(size_t size) {
    void *p = NULL;
    if (size < 2 * HUGE_ALIGN) return (uint8_t *)malloc(size);
    if (posix_memalign(&p, HUGE_ALIGN, size) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, size & ~(HUGE_ALIGN - 1), MADV_HUGEPAGE);
#endif
    return (uint8_t *)p;
}

/* Reads [start, end) into one or more regions, splitting around unreadable
 * pages. */
static int read_into_regions(reader *r, uint64_t start, uint64_t end, mdl_region **list, size_t *n, size_t *cap,
                             uint64_t *bytes) {
    uint64_t pos = start;
    while (pos < end) {
        uint64_t want = end - pos;
        uint8_t *data = want <= SIZE_MAX ? region_buffer((size_t)want) : NULL;
        size_t got;
        if (data == NULL) return -1;
        got = read_memory(r, pos, data, want);
        if (got > 0) {
            uint8_t *shrunk = got < want ? (uint8_t *)realloc(data, got) : data;
            if (shrunk == NULL) shrunk = data;
            if (push_region(list, n, cap, pos, got, shrunk) < 0) {
                free(shrunk);
                return -1;
            }
            *bytes += got;
        } else {
            free(data);
        }
        pos += got;
        if (pos < end) {
            /* skip the unreadable page */
            pos = (pos & ~(PAGE - 1)) + PAGE;
        }
    }
    return 0;
}

/* Breakpad's stack sanitisation: keep small integers and pointers into the
 * stack or executable mappings, replace every other word with 0x0defaced;
 * everything below the red zone under SP is dead and replaced too. */
static void sanitize_stack(const mdl_snapshot *s, uint8_t *data, uint64_t start, uint64_t size, uint64_t sp) {
    const uint64_t defaced = 0x0defaced0defacedull;
    const mdl_mapping *stack_map = find_mapping(s, sp);
    uint64_t off;
    for (off = 0; off + 8 <= size; off += 8) {
        uint64_t addr = start + off, v;
        const mdl_mapping *m;
        if (addr + 8 <= sp - 128) {
            memcpy(data + off, &defaced, 8);
            continue;
        }
        memcpy(&v, data + off, 8);
        if ((int64_t)v > -4096 && (int64_t)v < 4096) continue;
        if (stack_map != NULL && v >= stack_map->start && v < stack_map->end) continue;
        m = find_mapping(s, v);
        if (m != NULL && (m->perms & MDL_PERM_X)) continue;
        memcpy(data + off, &defaced, 8);
    }
}

/* ---- ELF build-ids ------------------------------------------------------- */

typedef size_t (*read_fn)(void *ctx, uint64_t where, uint8_t *buf, size_t len);

static size_t read_mem_cb(void *ctx, uint64_t where, uint8_t *buf, size_t len) {
    return read_memory((reader *)ctx, where, buf, len);
}

static size_t read_file_cb(void *ctx, uint64_t where, uint8_t *buf, size_t len) {
    int fd = *(int *)ctx;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, (off_t)(where + done));
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            break;
        }
        done += (size_t)n;
    }
    return done;
}

static int scan_notes(const uint8_t *notes, size_t size, size_t align, uint8_t *out, uint32_t *out_len) {
    size_t pos = 0;
    if (align != 8) align = 4;
    while (pos + sizeof(Elf64_Nhdr) <= size) {
        Elf64_Nhdr nh;
        size_t name_at, desc_at, next;
        memcpy(&nh, notes + pos, sizeof nh);
        name_at = pos + sizeof nh;
        desc_at = name_at + ((nh.n_namesz + align - 1) & ~(align - 1));
        next = desc_at + ((nh.n_descsz + align - 1) & ~(align - 1));
        if (desc_at > size || nh.n_descsz > size - desc_at) return 0;
        if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && memcmp(notes + name_at, "GNU", 4) == 0 &&
            nh.n_descsz > 0 && nh.n_descsz <= 64) {
            memcpy(out, notes + desc_at, nh.n_descsz);
            *out_len = nh.n_descsz;
            return 1;
        }
        if (next <= pos) return 0;
        pos = next;
    }
    return 0;
}

/* in_memory: `base` is where the offset-0 segment is mapped and notes are
 * found at load bias + p_vaddr; otherwise `base` is 0 and notes at p_offset. */
static int elf_build_id(read_fn rd, void *ctx, uint64_t base, int in_memory, uint8_t *out, uint32_t *out_len) {
    Elf64_Ehdr eh;
    Elf64_Phdr ph[64];
    size_t nph, i;
    uint64_t min_vaddr = UINT64_MAX, bias = 0;
    if (rd(ctx, base, (uint8_t *)&eh, sizeof eh) != sizeof eh) return 0;
    if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64) return 0;
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0) return 0;
    nph = eh.e_phnum < 64 ? eh.e_phnum : 64;
    if (rd(ctx, base + eh.e_phoff, (uint8_t *)ph, nph * sizeof ph[0]) != nph * sizeof ph[0]) return 0;
    for (i = 0; i < nph; i++)
        if (ph[i].p_type == PT_LOAD && ph[i].p_vaddr < min_vaddr) min_vaddr = ph[i].p_vaddr;
    if (in_memory) bias = base - (min_vaddr == UINT64_MAX ? 0 : (min_vaddr & ~(PAGE - 1)));
    for (i = 0; i < nph; i++) {
        uint8_t *notes;
        uint64_t size = ph[i].p_filesz;
        int found;
        if (ph[i].p_type != PT_NOTE || size == 0 || size > (1u << 16)) continue;
        notes = (uint8_t *)malloc(size);
        if (notes == NULL) return 0;
        if (rd(ctx, in_memory ? bias + ph[i].p_vaddr : ph[i].p_offset, notes, size) != size) {
            free(notes);
            continue;
        }
        found = scan_notes(notes, size, ph[i].p_align, out, out_len);
        free(notes);
        if (found) return 1;
    }
    return 0;
}

static int is_elf_at(reader *r, uint64_t addr) {
    uint8_t magic[4];
    return read_memory(r, addr, magic, 4) == 4 && memcmp(magic, ELFMAG, SELFMAG) == 0;
}

static int is_elf_file(const char *path) {
    uint8_t magic[4];
    int fd = open(path, O_RDONLY | O_CLOEXEC), ok;
    if (fd < 0) return 0;
    ok = read_file_cb(&fd, 0, magic, 4) == 4 && memcmp(magic, ELFMAG, SELFMAG) == 0;
    close(fd);
    return ok;
}

/* Merge file mappings into modules: a run of consecutive mappings of the same
 * file starting with the one at offset 0 (plus the vDSO). */
static int build_modules(mdl_snapshot *s, reader *r) {
    size_t i = 0, cap = 0;
    while (i < s->nmaps) {
        const mdl_mapping *m = &s->maps[i];
        size_t j;
        uint64_t end;
        mdl_module *mod;
        int vdso;
        if (m->path == NULL || m->offset != 0 || !(m->perms & MDL_PERM_R)) {
            i++;
            continue;
        }
        vdso = strcmp(m->path, "[vdso]") == 0;
        if (m->path[0] == '[' && !vdso) {
            i++;
            continue;
        }
        end = m->end;
        for (j = i + 1; j < s->nmaps; j++) {
            const mdl_mapping *n = &s->maps[j];
            if (n->path == NULL || strcmp(n->path, m->path) != 0 || n->inode != m->inode || n->offset == 0) break;
            end = n->end;
        }
        if (!is_elf_at(r, m->start) && !(vdso == 0 && is_elf_file(m->path))) {
            i = j;
            continue;
        }
        if (s->nmodules == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            mdl_module *bigger = (mdl_module *)realloc(s->modules, ncap * sizeof *bigger);
            if (bigger == NULL) return -1;
            s->modules = bigger;
            cap = ncap;
        }
        mod = &s->modules[s->nmodules];
        memset(mod, 0, sizeof *mod);
        mod->base = m->start;
        mod->size = end - m->start;
        mod->is_vdso = vdso;
        mod->path = strdup(vdso ? "linux-gate.so" : m->path);
        if (mod->path == NULL) return -1;
        s->nmodules++;
        if (!elf_build_id(read_mem_cb, r, m->start, 1, mod->build_id, &mod->build_id_len) && !vdso) {
            int fd = open(m->path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                elf_build_id(read_file_cb, &fd, 0, 0, mod->build_id, &mod->build_id_len);
                close(fd);
            }
        }
        i = j;
    }
    /* the main executable first: the module holding AT_ENTRY, else /proc/PID/exe */
    for (i = 0; i < s->nmodules; i++) {
        mdl_module *mod = &s->modules[i];
        int main_exe = (s->entry && s->entry >= mod->base && s->entry < mod->base + mod->size) ||
                       (!s->entry && s->exe[0] && strcmp(mod->path, s->exe) == 0);
        if (main_exe) {
            mdl_module tmp = *mod;
            memmove(&s->modules[1], &s->modules[0], i * sizeof tmp);
            s->modules[0] = tmp;
            break;
        }
    }
    return 0;
}

/* ---- ptrace -------------------------------------------------------------- */

static int seize(mdl_snapshot *s, mdl_thread *t, mdl_error *err) {
    if (ptrace(PTRACE_SEIZE, t->tid, NULL, NULL) != 0) {
        int e = errno;
        if (e == ESRCH) {
            t->gone = 1;
            return 0;
        }
        if (e == EPERM || e == EACCES) {
            char path[64], *tracer;
            mdl_buf st = {NULL, 0};
            long tracer_pid = 0;
            int scope = -1;
            FILE *f;
            snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
            if (read_file(path, &st, 1 << 20) == 0) {
                char *text = (char *)realloc(st.data, st.size + 1);
                if (text) {
                    st.data = (uint8_t *)text;
                    text[st.size] = 0;
                    tracer = strstr(text, "TracerPid:");
                    if (tracer) tracer_pid = strtol(tracer + 10, NULL, 10);
                }
            }
            free(st.data);
            f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
            if (f) {
                if (fscanf(f, "%d", &scope) != 1) scope = -1;
                fclose(f);
            }
            if (tracer_pid > 0)
                return set_error(err, MDL_ERR_PERMISSION, e,
                                 "cannot attach to process %d: it is already traced by process %ld "
                                 "(a debugger or another dumper); detach it first",
                                 (int)s->pid, tracer_pid);
            return set_error(err, MDL_ERR_PERMISSION, e,
                             "permission denied attaching to process %d with ptrace (uid %d): run as the "
                             "process's user (a setuid/non-dumpable process needs root), or with "
                             "CAP_SYS_PTRACE; /proc/sys/kernel/yama/ptrace_scope is %s (0 lets a same-user "
                             "process attach, 1 only ancestors, 2 only CAP_SYS_PTRACE, 3 nobody)",
                             (int)s->pid, (int)geteuid(),
                             scope < 0 ? "absent (no Yama)" : scope == 0 ? "0" : scope == 1 ? "1" : scope == 2 ? "2" : "3");
        }
        return set_error(err, MDL_ERR_SYS, e, "PTRACE_SEIZE of thread %d failed: %s", (int)t->tid, strerror(e));
    }
    t->seized = 1;
    if (ptrace(PTRACE_INTERRUPT, t->tid, NULL, NULL) != 0 && errno == ESRCH) {
        /* exited between the two calls: the wait below reaps it */
    }
    return 0;
}

/* Waits (WNOHANG polling) until every seized thread reported its stop or
 * exit, or the deadline passed.  Returns 0 when all are accounted for. */
static int wait_stops(mdl_snapshot *s, uint64_t deadline) {
    for (;;) {
        size_t i, pending = 0;
        for (i = 0; i < s->nthreads; i++) {
            mdl_thread *t = &s->threads[i];
            int status = 0;
            pid_t r;
            if (!t->seized || t->stopped || t->gone) continue;
            r = waitpid(t->tid, &status, __WALL | WNOHANG);
            if (r == t->tid) {
                if (WIFSTOPPED(status)) {
                    int event = status >> 16;
                    t->stopped = 1;
                    if (event == 0 && WSTOPSIG(status) != SIGTRAP) {
                        /* signal-delivery-stop: the signal is handed back at detach */
                        t->pending_signal = WSTOPSIG(status);
                    }
                } else if (WIFEXITED(status) || WIFSIGNALED(status)) {
                    t->gone = 1;
                }
            } else if (r < 0 && errno == ECHILD) {
                t->gone = 1;
            } else {
                pending++;
            }
        }
        if (pending == 0) return 0;
        if (mdl_now_ns() >= deadline) return -1;
        {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
}

static void detach_all(mdl_snapshot *s) {
    size_t i;
    uint64_t deadline = mdl_now_ns() + 1000000000ull;
    int retry = 0;
    for (i = 0; i < s->nthreads; i++) {
        mdl_thread *t = &s->threads[i];
        if (!t->seized || t->gone) continue;
        if (!t->stopped) {
            retry = 1;
            continue;
        }
        if (t->pending_signal) s->pending_signals++;
        if (ptrace(PTRACE_DETACH, t->tid, NULL, (void *)(uintptr_t)t->pending_signal) == 0 || errno == ESRCH)
            t->seized = 0;
    }
    if (retry) {
        /* Threads that had not stopped yet: the interrupt is pending, wait a
         * little more so they can be detached; whatever is left is detached by
         * the kernel when the snapshot thread exits. */
        wait_stops(s, deadline);
        for (i = 0; i < s->nthreads; i++) {
            mdl_thread *t = &s->threads[i];
            if (t->seized && t->stopped && !t->gone &&
                (ptrace(PTRACE_DETACH, t->tid, NULL, (void *)(uintptr_t)t->pending_signal) == 0 || errno == ESRCH))
                t->seized = 0;
        }
    }
}

/* ---- the snapshot -------------------------------------------------------- */

typedef struct job {
    uint32_t pid;
    const mdl_options *options;
    mdl_snapshot *snap;
    mdl_error err;
    int status;
} job;

static void read_thread_name(mdl_snapshot *s, mdl_thread *t) {
    char path[96];
    mdl_buf b = {NULL, 0};
    snprintf(path, sizeof path, "/proc/%d/task/%d/comm", (int)s->pid, (int)t->tid);
    if (read_file(path, &b, 4096) == 0) {
        size_t n = b.size < sizeof t->name - 1 ? b.size : sizeof t->name - 1;
        memcpy(t->name, b.data, n);
        t->name[n] = 0;
        if (n && t->name[n - 1] == '\n') t->name[n - 1] = 0;
    }
    free(b.data);
}

/* user_regs_struct words a signal handler's mcontext provides (see
 * mcontext_to_user_regs): r15 .. rdi, rip, cs, eflags, rsp. */
static int mcontext_word(int word) { return word <= 14 || (word >= 16 && word <= 19); }

/* The crashing thread's registers are those at the fault, not those ptrace
 * sees now (a signal handler, raise() after a handler, or the exit path).  A
 * crashing thread that could not be stopped (it exited) is still written with
 * its fault context: its stack lives as long as the process's memory. */
static int apply_crash_context(mdl_snapshot *s, const mdl_fault_context *f) {
    mdl_thread *t = NULL;
    size_t i;
    if (f->tid == 0 || !(f->flags & (MDL_FAULT_REGS | MDL_FAULT_MCONTEXT))) return 0;
    for (i = 0; i < s->nthreads; i++)
        if ((uint32_t)s->threads[i].tid == f->tid) t = &s->threads[i];
    if (t == NULL) {
        if (add_thread(s, (pid_t)f->tid) < 0) return -1;
        t = &s->threads[s->nthreads - 1];
    }
    if (f->flags & MDL_FAULT_REGS) {
        memcpy(&t->regs, f->regs, sizeof t->regs);
    } else {
        uint64_t words[MDL_USER_REGS_WORDS];
        int w;
        if (!t->have_regs) memset(&t->regs, 0, sizeof t->regs);
        memcpy(words, &t->regs, sizeof words);
        for (w = 0; w < MDL_USER_REGS_WORDS; w++)
            if (mcontext_word(w)) words[w] = f->regs[w];
        memcpy(&t->regs, words, sizeof words);
    }
    if (f->flags & MDL_FAULT_FPREGS) {
        memcpy(&t->fpregs, f->fpregs, sizeof t->fpregs);
        t->have_fpregs = 1;
    }
    t->have_regs = 1;
    t->crashed = 1;
    t->gone = 0;
    if (t->name[0] == 0) read_thread_name(s, t);
    return 0;
}

static int collect_memory(mdl_snapshot *s, reader *r, const mdl_options *o) {
    range *ranges = (range *)calloc(s->nthreads * 2 + 1, sizeof *ranges);
    size_t n = 0, i, cap = 0;
    if (ranges == NULL) return -1;
    for (i = 0; i < s->nthreads; i++) {
        mdl_thread *t = &s->threads[i];
        const mdl_mapping *m;
        uint64_t sp, rip;
        if (!t->have_regs) continue;
        sp = t->regs.rsp;
        rip = t->regs.rip;
        m = find_mapping(s, sp);
        if (m == NULL && sp >= 128) m = find_mapping(s, sp - 128);
        if (m == NULL || !(m->perms & MDL_PERM_R)) {
            /* a stack overflow: SP is in the guard page or below the stack's
             * mapping; the frames are in the readable mapping just above */
            const mdl_mapping *above = mapping_above(s, sp);
            if (above != NULL && above->start - sp <= o->max_stack && (above->perms & MDL_PERM_R)) m = above;
        }
        if (m != NULL && (m->perms & MDL_PERM_R)) {
            uint64_t start = sp & ~(PAGE - 1), end;
            if (start < m->start) start = m->start;
            end = m->end - start > o->max_stack ? start + o->max_stack : m->end;
            if (end > start) {
                t->stack_start = start;
                t->stack_size = end - start;
                ranges[n].start = start;
                ranges[n].end = end;
                n++;
            }
        }
        m = find_mapping(s, rip);
        if (m != NULL && (m->perms & MDL_PERM_R) && o->ip_context > 0) {
            uint64_t start = rip - m->start > o->ip_context ? rip - o->ip_context : m->start;
            uint64_t end = m->end - rip > o->ip_context ? rip + o->ip_context : m->end;
            ranges[n].start = start;
            ranges[n].end = end;
            n++;
        }
    }
    qsort(ranges, n, sizeof *ranges, cmp_range);
    for (i = 0; i < n;) {
        uint64_t start = ranges[i].start, end = ranges[i].end;
        size_t j = i + 1;
        while (j < n && ranges[j].start <= end) {
            if (ranges[j].end > end) end = ranges[j].end;
            j++;
        }
        if (read_into_regions(r, start, end, &s->regions, &s->nregions, &cap, &s->memory_bytes) < 0) {
            free(ranges);
            return -1;
        }
        i = j;
    }
    free(ranges);
    if (o->sanitize_stacks) {
        for (i = 0; i < s->nthreads; i++) {
            mdl_thread *t = &s->threads[i];
            size_t k;
            if (!t->stack_size) continue;
            for (k = 0; k < s->nregions; k++) {
                mdl_region *g = &s->regions[k];
                if (t->stack_start >= g->start && t->stack_start < g->start + g->size) {
                    uint64_t off = t->stack_start - g->start;
                    uint64_t size = g->size - off < t->stack_size ? g->size - off : t->stack_size;
                    sanitize_stack(s, g->data + off, t->stack_start, size, t->regs.rsp);
                    break;
                }
            }
        }
    }
    return 0;
}

static int collect_full_memory(mdl_snapshot *s, reader *r) {
    size_t i, cap = 0;
    for (i = 0; i < s->nmaps; i++) {
        const mdl_mapping *m = &s->maps[i];
        if ((m->perms & (MDL_PERM_R | MDL_PERM_P)) != (MDL_PERM_R | MDL_PERM_P)) continue;
        if (m->path != NULL && (strcmp(m->path, "[vvar]") == 0 || strcmp(m->path, "[vvar_vclock]") == 0 ||
                                strcmp(m->path, "[vsyscall]") == 0))
            continue;
        /* address-space reservations of a terabyte or more (sanitizer shadows)
         * hold nothing worth copying and could not be copied anyway */
        if (m->end - m->start >= (1ull << 40)) continue;
        {
            uint64_t pos = m->start;
            while (pos < m->end) { /* 64 MiB pieces: no huge allocation */
                uint64_t end = m->end - pos > (64ull << 20) ? pos + (64ull << 20) : m->end;
                if (read_into_regions(r, pos, end, &s->full, &s->nfull, &cap, &s->memory_bytes) < 0) return -1;
                pos = end;
            }
        }
    }
    return 0;
}

static void read_auxv_entry(mdl_snapshot *s) {
    size_t i;
    for (i = 0; i + 16 <= s->auxv.size; i += 16) {
        uint64_t key, value;
        memcpy(&key, s->auxv.data + i, 8);
        memcpy(&value, s->auxv.data + i + 8, 8);
        if (key == 9 /* AT_ENTRY */) s->entry = value;
    }
}

static int take(job *jb) {
    const mdl_options *o = jb->options;
    mdl_snapshot *s = jb->snap;
    mdl_error *err = &jb->err;
    char path[128];
    char state;
    unsigned long long starttime = 0;
    uint64_t t0 = mdl_now_ns(), stop_start = 0, deadline;
    reader r = {s->pid, -1, s};
    size_t i;
    int rc = MDL_OK, round = 0;

    state = proc_state(s->pid, &starttime);
    if (state == '?')
        return set_error(err, MDL_ERR_NO_PROCESS, ESRCH, "no such process: %d", (int)s->pid);
    if (state == 'Z' || state == 'X' || state == 'x')
        return set_error(err, MDL_ERR_ZOMBIE, 0,
                         "process %d is a zombie: it has exited and waits for its parent to reap it; "
                         "there is nothing left to dump",
                         (int)s->pid);
    /* Things that do not need the process stopped. */
    /* read even when left out: their copies in captured memory are blanked */
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)s->pid);
    read_file(path, &s->cmdline, MAX_FILE);
    snprintf(path, sizeof path, "/proc/%d/environ", (int)s->pid);
    read_file(path, &s->environ_, MAX_FILE);
    snprintf(path, sizeof path, "/proc/%d/auxv", (int)s->pid);
    read_file(path, &s->auxv, MAX_FILE);
    read_auxv_entry(s);
    snprintf(path, sizeof path, "/proc/%d/exe", (int)s->pid);
    {
        ssize_t n = readlink(path, s->exe, sizeof s->exe - 1);
        s->exe[n > 0 ? n : 0] = 0;
    }
    read_file("/proc/cpuinfo", &s->cpuinfo, MAX_FILE);
    if (read_file("/etc/lsb-release", &s->lsb_release, 1 << 20) != 0)
        read_file("/etc/os-release", &s->lsb_release, 1 << 20);
    uname(&s->uts);
    {
        /* start time: boot time + starttime ticks */
        mdl_buf st = {NULL, 0};
        if (starttime && read_file("/proc/stat", &st, 1 << 22) == 0) {
            char *text = (char *)realloc(st.data, st.size + 1);
            if (text) {
                char *b;
                st.data = (uint8_t *)text;
                text[st.size] = 0;
                b = strstr(text, "\nbtime ");
                if (b) s->start_time_s = (int64_t)(strtoull(b + 7, NULL, 10) + starttime / (unsigned long long)sysconf(_SC_CLK_TCK));
            }
        }
        free(st.data);
    }

    /* ---- stop ---- */
    if (list_tasks(s) < 0) {
        if (errno == ENOENT) return set_error(err, MDL_ERR_NO_PROCESS, ESRCH, "no such process: %d", (int)s->pid);
        return set_error(err, MDL_ERR_SYS, errno, "cannot list /proc/%d/task: %s", (int)s->pid, strerror(errno));
    }
    stop_start = mdl_now_ns();
    deadline = stop_start + (o->stop_timeout_ns ? o->stop_timeout_ns : 5000000000ull);
    if (o->attached) {
        /* the caller (a supervisor) traces and holds every thread: a thread
         * that is not in a ptrace-stop under this thread fails PTRACE_GETREGS
         * below and is left out */
        for (i = 0; i < s->nthreads; i++) s->threads[i].seized = s->threads[i].stopped = 1;
        round = 16;
    }
    for (; round < 16; round++) {
        int added;
        for (i = 0; i < s->nthreads; i++) {
            mdl_thread *t = &s->threads[i];
            if (t->seized || t->gone) continue;
            if ((rc = seize(s, t, err)) != MDL_OK) goto detach;
        }
        if (wait_stops(s, deadline) != 0) {
            size_t waiting = 0;
            for (i = 0; i < s->nthreads; i++) waiting += s->threads[i].seized && !s->threads[i].stopped && !s->threads[i].gone;
            rc = set_error(err, MDL_ERR_TIMEOUT, ETIMEDOUT,
                           "%zu thread(s) of process %d did not stop within %.1f s (uninterruptible sleep?)",
                           waiting, (int)s->pid, (double)(deadline - stop_start) / 1e9);
            goto detach;
        }
        added = list_tasks(s);
        if (added < 0) {
            rc = set_error(err, MDL_ERR_EXITED, errno, "process %d exited while it was being stopped", (int)s->pid);
            goto detach;
        }
        if (added == 0) break;
    }
    if (o->fault == 1 && !o->attached) {
        /* tests: the process dies while stopped */
        uint64_t until = mdl_now_ns() + 2000000000ull;
        kill(s->pid, SIGKILL);
        while (!process_gone(s->pid) && mdl_now_ns() < until) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    {
        int leader_ok = 0;
        for (i = 0; i < s->nthreads; i++)
            if (s->threads[i].tid == s->pid && s->threads[i].stopped && !s->threads[i].gone) leader_ok = 1;
        if ((!leader_ok && !o->attached) || process_gone(s->pid)) {
            rc = set_error(err, MDL_ERR_EXITED, ESRCH, "process %d exited during the snapshot", (int)s->pid);
            goto detach;
        }
    }

    /* ---- copy while stopped ---- */
    snprintf(path, sizeof path, "/proc/%d/mem", (int)s->pid);
    r.memfd = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/%d/maps", (int)s->pid);
    if (read_file(path, &s->maps_text, MAX_FILE) != 0 || parse_maps(s) != 0) {
        rc = set_error(err, MDL_ERR_EXITED, errno, "cannot read /proc/%d/maps: the process exited?", (int)s->pid);
        goto detach;
    }
    for (i = 0; i < s->nthreads; i++) {
        mdl_thread *t = &s->threads[i];
        if (!t->stopped || t->gone) continue;
        if (ptrace(PTRACE_GETREGS, t->tid, NULL, &t->regs) == 0)
            t->have_regs = 1;
        else if (o->attached && errno == ESRCH)
            t->gone = 1; /* not held by the caller (already exited) */
        if (ptrace(PTRACE_GETFPREGS, t->tid, NULL, &t->fpregs) == 0) t->have_fpregs = 1;
        read_thread_name(s, t);
    }
    if (apply_crash_context(s, &o->crash) != 0) {
        rc = set_error(err, MDL_ERR_SYS, ENOMEM, "out of memory");
        goto detach;
    }
    {
        size_t have = 0;
        for (i = 0; i < s->nthreads; i++) have += s->threads[i].have_regs && !s->threads[i].gone;
        if (have == 0) {
            rc = set_error(err, o->attached ? MDL_ERR_ARG : MDL_ERR_EXITED, ESRCH,
                           o->attached ? "no thread of process %d is held in a ptrace-stop by the calling thread"
                                       : "process %d exited during the snapshot",
                           (int)s->pid);
            goto detach;
        }
    }
    if (collect_memory(s, &r, o) != 0) {
        rc = set_error(err, MDL_ERR_SYS, ENOMEM, "out of memory copying stacks");
        goto detach;
    }
    if (o->full_memory && collect_full_memory(s, &r) != 0) {
        rc = set_error(err, MDL_ERR_SYS, ENOMEM, "out of memory copying the process's memory");
        goto detach;
    }
    snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
    read_file(path, &s->status, MAX_FILE);
    if (!o->include_environ || !o->include_cmdline) {
        /* the strings at the top of the main stack hold the environment and
         * the arguments: the options that leave those streams out also blank
         * them in the copied memory */
        uint64_t ranges[4] = {0, 0, 0, 0};
        if (stat_ranges(s->pid, ranges)) {
            if (!o->include_cmdline) {
                redact(s->regions, s->nregions, ranges[0], ranges[1]);
                redact(s->full, s->nfull, ranges[0], ranges[1]);
            }
            if (!o->include_environ) {
                redact(s->regions, s->nregions, ranges[2], ranges[3]);
                redact(s->full, s->nfull, ranges[2], ranges[3]);
            }
        }
    }
    if (process_gone(s->pid)) {
        rc = set_error(err, MDL_ERR_EXITED, ESRCH, "process %d exited during the snapshot", (int)s->pid);
        goto detach;
    }

detach:
    if (stop_start) {
        if (!o->attached) detach_all(s);
        s->stopped_ns = mdl_now_ns() - stop_start;
    }
    if (rc == MDL_OK) {
        /* running again: build-ids (code does not change) */
        if (build_modules(s, &r) != 0) rc = set_error(err, MDL_ERR_SYS, ENOMEM, "out of memory listing modules");
    }
    if (r.memfd >= 0) close(r.memfd);
    /* running again: blank copies of left-out arguments and environment
     * values in the copied stacks (not in full memory: too slow, documented) */
    if (rc == MDL_OK) {
        if (!o->include_cmdline) scrub_copies(s->regions, s->nregions, &s->cmdline, 0);
        if (!o->include_environ) scrub_copies(s->regions, s->nregions, &s->environ_, 1);
    }
    if (!o->include_cmdline) {
        free(s->cmdline.data);
        s->cmdline.data = NULL;
        s->cmdline.size = 0;
    }
    if (!o->include_environ) {
        free(s->environ_.data);
        s->environ_.data = NULL;
        s->environ_.size = 0;
    }
    /* drop threads that exited while we looked */
    {
        size_t k = 0;
        for (i = 0; i < s->nthreads; i++)
            if (!s->threads[i].gone && s->threads[i].have_regs) s->threads[k++] = s->threads[i];
        s->nthreads = k;
    }
    s->snapshot_ns = mdl_now_ns() - t0;
    return rc;
}

static void *snapshot_main(void *arg) {
    job *jb = (job *)arg;
    jb->status = take(jb);
    return NULL;   /* the thread's exit detaches anything still attached */
}

int mdl_snapshot_take(uint32_t pid, const mdl_options *options, mdl_snapshot **out, mdl_error *err) {
    job jb;
    pthread_t thread;
    int rc;
    mdl_options defaults;
    *out = NULL;
    if (options == NULL) {
        mdl_options_init(&defaults);
        options = &defaults;
    }
    if (pid == 0 || pid > 0x7fffffffu) return set_error(err, MDL_ERR_ARG, EINVAL, "bad pid %u", pid);
    if ((pid_t)pid == getpid())
        return set_error(err, MDL_ERR_SELF, EINVAL,
                         "cannot dump the calling process %u itself with ptrace: dump it from another process",
                         pid);
    memset(&jb, 0, sizeof jb);
    jb.pid = pid;
    jb.options = options;
    jb.snap = (mdl_snapshot *)calloc(1, sizeof *jb.snap);
    if (jb.snap == NULL) return set_error(err, MDL_ERR_SYS, ENOMEM, "out of memory");
    jb.snap->pid = (pid_t)pid;
    if (options->nuser_streams > MDL_MAX_USER_STREAMS || (options->nuser_streams && options->user_streams == NULL)) {
        free(jb.snap);
        return set_error(err, MDL_ERR_ARG, EINVAL, "at most %d user streams", MDL_MAX_USER_STREAMS);
    }
    if (options->attached) {
        /* ptrace requests must come from the tracing thread: this one */
        snapshot_main(&jb);
        goto taken;
    }
    rc = pthread_create(&thread, NULL, snapshot_main, &jb);
    if (rc != 0) {
        free(jb.snap);
        return set_error(err, MDL_ERR_SYS, rc, "cannot start the snapshot thread: %s", strerror(rc));
    }
    pthread_join(thread, NULL);
taken:
    if (jb.status != MDL_OK) {
        if (err) *err = jb.err;
        mdl_snapshot_free(jb.snap);
        return jb.status;
    }
    *out = jb.snap;
    return MDL_OK;
}

void mdl_snapshot_figures(const mdl_snapshot *s, mdl_figures *out) {
    memset(out, 0, sizeof *out);
    if (s == NULL) return;
    out->pid = (uint32_t)s->pid;
    out->threads = (uint32_t)s->nthreads;
    out->modules = (uint32_t)s->nmodules;
    out->mappings = (uint32_t)s->nmaps;
    out->memory_ranges = (uint32_t)(s->nregions + s->nfull);
    out->memory_bytes = s->memory_bytes;
    out->stopped_ns = s->stopped_ns;
    out->snapshot_ns = s->snapshot_ns;
    out->vm_readv_failures = s->readv_failures;
    out->pending_signals = s->pending_signals;
}

int mdl_snapshot_thread(const mdl_snapshot *s, size_t i, mdl_thread_info *out) {
    const mdl_thread *t;
    memset(out, 0, sizeof *out);
    if (s == NULL || i >= s->nthreads) return -1;
    t = &s->threads[i];
    out->tid = (uint32_t)t->tid;
    out->fs_base = t->regs.fs_base;
    out->rip = t->regs.rip;
    out->rsp = t->regs.rsp;
    out->crashed = t->crashed;
    memcpy(out->name, t->name, sizeof out->name);
    out->name[sizeof out->name - 1] = 0;
    return 0;
}

void mdl_snapshot_free(mdl_snapshot *s) {
    size_t i;
    if (s == NULL) return;
    for (i = 0; i < s->nmaps; i++) free(s->maps[i].path);
    for (i = 0; i < s->nmodules; i++) free(s->modules[i].path);
    for (i = 0; i < s->nregions; i++) free(s->regions[i].data);
    for (i = 0; i < s->nfull; i++) free(s->full[i].data);
    free(s->maps);
    free(s->modules);
    free(s->regions);
    free(s->full);
    free(s->threads);
    free(s->status.data);
    free(s->cmdline.data);
    free(s->environ_.data);
    free(s->auxv.data);
    free(s->maps_text.data);
    free(s->cpuinfo.data);
    free(s->lsb_release.data);
    free(s);
}

#endif
