/* Lays a snapshot out as a minidump and emits it through a callback routine:
 * IoStart, IoWriteAll in increasing contiguous offsets (padding written as
 * zero bytes, no seeks), IoFinish, from a native thread. */
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
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#endif

MDL_PRINTF(3, 4) static int lay_error(mdl_error *err, int status, const char *fmt, ...);
static int lay_error(mdl_error *err, int status, const char *fmt, ...) {
    if (err != NULL) {
        va_list ap;
        err->status = status;
        err->sys_errno = 0;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

void mdl_layout_free(mdl_layout *layout) {
    free(layout->meta);
    free(layout->pieces);
    memset(layout, 0, sizeof *layout);
}

#if !MDL_SUPPORTED

int mdl_layout_build(const mdl_snapshot *snap, const mdl_options *options, mdl_layout *out, mdl_error *err) {
    (void)snap;
    (void)options;
    memset(out, 0, sizeof *out);
    return lay_error(err, MDL_ERR_UNSUPPORTED, "the Linux minidump writer needs Linux on x86-64");
}

#else

/* Stream types */
#define MD_THREAD_LIST 3u
#define MD_MODULE_LIST 4u
#define MD_MEMORY_LIST 5u
#define MD_EXCEPTION 6u
#define MD_SYSTEM_INFO 7u
#define MD_MEMORY64_LIST 9u
#define MD_MISC_INFO 15u
#define MD_THREAD_NAMES 24u
#define MD_LINUX_CPU_INFO 0x47670003u
#define MD_LINUX_PROC_STATUS 0x47670004u
#define MD_LINUX_LSB_RELEASE 0x47670005u
#define MD_LINUX_CMD_LINE 0x47670006u
#define MD_LINUX_ENVIRON 0x47670007u
#define MD_LINUX_AUXV 0x47670008u
#define MD_LINUX_MAPS 0x47670009u

#define CONTEXT_SIZE 1232u
#define CONTEXT_AMD64_FLAGS 0x0010000Fu /* CONTROL | INTEGER | SEGMENTS | FLOATING_POINT */

typedef struct meta {
    uint8_t *data;
    uint64_t size, cap;
    int failed;
} meta;

/* Reserves `size` zeroed bytes aligned to `align`; returns the offset. */
static uint64_t alloc(meta *m, uint64_t size, uint64_t align) {
    uint64_t at = (m->size + align - 1) & ~(align - 1);
    if (at + size > m->cap) {
        uint64_t cap = m->cap ? m->cap : 1 << 16;
        uint8_t *bigger;
        while (cap < at + size) cap *= 2;
        bigger = (uint8_t *)realloc(m->data, cap);
        if (bigger == NULL) {
            m->failed = 1;
            return 0;
        }
        memset(bigger + m->cap, 0, cap - m->cap);
        m->data = bigger;
        m->cap = cap;
    }
    m->size = at + size;
    return at;
}

static void put16(meta *m, uint64_t at, uint16_t v) {
    if (!m->failed) memcpy(m->data + at, &v, 2);
}
static void put32(meta *m, uint64_t at, uint32_t v) {
    if (!m->failed) memcpy(m->data + at, &v, 4);
}
static void put64(meta *m, uint64_t at, uint64_t v) {
    if (!m->failed) memcpy(m->data + at, &v, 8);
}
static void putbytes(meta *m, uint64_t at, const void *p, uint64_t n) {
    if (!m->failed && n) memcpy(m->data + at, p, n);
}

/* MINIDUMP_STRING from UTF-8 (invalid bytes become U+FFFD); returns its RVA. */
static uint32_t add_string(meta *m, const char *text) {
    size_t len = strlen(text), i = 0, units = 0;
    uint16_t *utf16 = (uint16_t *)malloc((len * 2 + 2) * sizeof *utf16);
    uint64_t at;
    if (utf16 == NULL) {
        m->failed = 1;
        return 0;
    }
    while (i < len) {
        const unsigned char *p = (const unsigned char *)text + i;
        uint32_t cp = 0xFFFD;
        size_t n = 1;
        if (p[0] < 0x80) {
            cp = p[0];
        } else if ((p[0] & 0xE0) == 0xC0 && i + 1 < len && (p[1] & 0xC0) == 0x80) {
            cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
            n = 2;
        } else if ((p[0] & 0xF0) == 0xE0 && i + 2 < len && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
            cp = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
            n = 3;
        } else if ((p[0] & 0xF8) == 0xF0 && i + 3 < len && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80 &&
                   (p[3] & 0xC0) == 0x80) {
            cp = ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
            n = 4;
        }
        if (cp >= 0x10000 && cp <= 0x10FFFF) {
            cp -= 0x10000;
            utf16[units++] = (uint16_t)(0xD800 + (cp >> 10));
            utf16[units++] = (uint16_t)(0xDC00 + (cp & 0x3FF));
        } else {
            utf16[units++] = (uint16_t)((cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF ? 0xFFFD : cp);
        }
        i += n;
    }
    at = alloc(m, 4 + units * 2 + 2, 4);
    put32(m, at, (uint32_t)(units * 2));
    putbytes(m, at + 4, utf16, units * 2);
    free(utf16);
    return (uint32_t)at;
}

static uint64_t add_blob(meta *m, const void *data, uint64_t size) {
    uint64_t at = alloc(m, size, 8);
    putbytes(m, at, data, size);
    return at;
}

typedef struct dir_entry {
    uint32_t type, size, rva;
} dir_entry;

static void context_from(meta *m, uint64_t at, const mdl_thread *t) {
    const struct user_regs_struct *r = &t->regs;
    put32(m, at + 0x30, CONTEXT_AMD64_FLAGS);
    put32(m, at + 0x34, t->have_fpregs ? t->fpregs.mxcsr : 0x1F80);
    put16(m, at + 0x38, (uint16_t)r->cs);
    put16(m, at + 0x3A, (uint16_t)r->ds);
    put16(m, at + 0x3C, (uint16_t)r->es);
    put16(m, at + 0x3E, (uint16_t)r->fs);
    put16(m, at + 0x40, (uint16_t)r->gs);
    put16(m, at + 0x42, (uint16_t)r->ss);
    put32(m, at + 0x44, (uint32_t)r->eflags);
    /* Dr0..Dr7 (0x48..0x78) left zero */
    put64(m, at + 0x78, r->rax);
    put64(m, at + 0x80, r->rcx);
    put64(m, at + 0x88, r->rdx);
    put64(m, at + 0x90, r->rbx);
    put64(m, at + 0x98, r->rsp);
    put64(m, at + 0xA0, r->rbp);
    put64(m, at + 0xA8, r->rsi);
    put64(m, at + 0xB0, r->rdi);
    put64(m, at + 0xB8, r->r8);
    put64(m, at + 0xC0, r->r9);
    put64(m, at + 0xC8, r->r10);
    put64(m, at + 0xD0, r->r11);
    put64(m, at + 0xD8, r->r12);
    put64(m, at + 0xE0, r->r13);
    put64(m, at + 0xE8, r->r14);
    put64(m, at + 0xF0, r->r15);
    put64(m, at + 0xF8, r->rip);
    /* FltSave: the FXSAVE image is XMM_SAVE_AREA32 byte for byte */
    if (t->have_fpregs) putbytes(m, at + 0x100, &t->fpregs, 512);
}

static const mdl_region *region_for(const mdl_snapshot *s, uint64_t addr) {
    size_t i;
    for (i = 0; i < s->nregions; i++)
        if (addr >= s->regions[i].start && addr - s->regions[i].start < s->regions[i].size) return &s->regions[i];
    return NULL;
}

static void cpu_info(uint16_t *level, uint16_t *revision, uint32_t vendor[3], uint32_t *version,
                     uint32_t *features, uint32_t *amd_ext) {
    uint32_t a = 0, b = 0, c = 0, d = 0;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0u), "c"(0u));
    vendor[0] = b;
    vendor[1] = d;
    vendor[2] = c;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1u), "c"(0u));
    {
        uint32_t family = (a >> 8) & 0xF, model = (a >> 4) & 0xF, stepping = a & 0xF;
        if (family == 0xF) family += (a >> 20) & 0xFF;
        if (family == 6 || family >= 0xF) model |= ((a >> 16) & 0xF) << 4;
        *level = (uint16_t)family;
        *revision = (uint16_t)((model << 8) | stepping);
    }
    *version = a;
    *features = d;
    *amd_ext = 0;
    if (vendor[0] == 0x68747541u /* "Auth" */) {
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000001u), "c"(0u));
        *amd_ext = c;
    }
}

int mdl_layout_build(const mdl_snapshot *s, const mdl_options *o, mdl_layout *out, mdl_error *err) {
    meta m = {NULL, 0, 0, 0};
    dir_entry dir[32];
    uint32_t ndir = 0, i;
    uint64_t dir_at, at;
    uint64_t *context_at = NULL;
    uint64_t mem64_base_field = 0;
    int full = o->full_memory && s->nfull > 0;
    memset(out, 0, sizeof *out);
    memset(dir, 0, sizeof dir);

    /* header and directory (count known: reserve the maximum, unused entries stay type 0) */
    alloc(&m, 32, 8);
    dir_at = alloc(&m, sizeof dir / sizeof dir[0] * 12, 4);

    context_at = (uint64_t *)calloc(s->nthreads + 1, sizeof *context_at);
    if (context_at == NULL) return lay_error(err, MDL_ERR_SYS, "out of memory");

    /* memory contents for MemoryList (normal mode) and stacks (both modes) */
    {
        uint64_t *region_rva = (uint64_t *)calloc(s->nregions + 1, sizeof *region_rva);
        uint64_t list_at;
        if (region_rva == NULL) {
            free(context_at);
            return lay_error(err, MDL_ERR_SYS, "out of memory");
        }
        for (i = 0; i < s->nregions; i++) region_rva[i] = add_blob(&m, s->regions[i].data, s->regions[i].size);

        /* ThreadList */
        list_at = alloc(&m, 4 + 48 * (uint64_t)s->nthreads, 8);
        put32(&m, list_at, (uint32_t)s->nthreads);
        for (i = 0; i < s->nthreads; i++) {
            const mdl_thread *t = &s->threads[i];
            uint64_t e = list_at + 4 + 48 * (uint64_t)i;
            const mdl_region *g = t->stack_size ? region_for(s, t->stack_start) : NULL;
            context_at[i] = alloc(&m, CONTEXT_SIZE, 16);
            context_from(&m, context_at[i], t);
            put32(&m, e + 0, (uint32_t)t->tid);
            put32(&m, e + 4, 0);                /* SuspendCount */
            put32(&m, e + 8, 0);                /* PriorityClass */
            put32(&m, e + 12, 0);               /* Priority */
            /* Teb stays 0 as Breakpad writes it: readers would take fs_base for a Windows TEB */
            if (g != NULL) {
                uint64_t delta = t->stack_start - g->start;
                uint64_t size = g->size - delta < t->stack_size ? g->size - delta : t->stack_size;
                put64(&m, e + 24, t->stack_start);
                put32(&m, e + 32, (uint32_t)size);
                put32(&m, e + 36, (uint32_t)(region_rva[g - s->regions] + delta));
            } else {
                put64(&m, e + 24, t->regs.rsp);
            }
            put32(&m, e + 40, CONTEXT_SIZE);
            put32(&m, e + 44, (uint32_t)context_at[i]);
        }
        dir[ndir].type = MD_THREAD_LIST;
        dir[ndir].size = (uint32_t)(4 + 48 * s->nthreads);
        dir[ndir].rva = (uint32_t)list_at;
        ndir++;

        if (!full) {
            list_at = alloc(&m, 4 + 16 * (uint64_t)s->nregions, 8);
            put32(&m, list_at, (uint32_t)s->nregions);
            for (i = 0; i < s->nregions; i++) {
                uint64_t e = list_at + 4 + 16 * (uint64_t)i;
                put64(&m, e, s->regions[i].start);
                put32(&m, e + 8, (uint32_t)s->regions[i].size);
                put32(&m, e + 12, (uint32_t)region_rva[i]);
            }
            dir[ndir].type = MD_MEMORY_LIST;
            dir[ndir].size = (uint32_t)(4 + 16 * s->nregions);
            dir[ndir].rva = (uint32_t)list_at;
            ndir++;
        }
        free(region_rva);
    }

    /* ModuleList */
    {
        uint64_t list_at = alloc(&m, 4 + 108 * (uint64_t)s->nmodules, 8);
        put32(&m, list_at, (uint32_t)s->nmodules);
        for (i = 0; i < s->nmodules; i++) {
            const mdl_module *mod = &s->modules[i];
            uint64_t e = list_at + 4 + 108 * (uint64_t)i;
            uint32_t name = add_string(&m, mod->path);
            put64(&m, e + 0, mod->base);
            put32(&m, e + 8, (uint32_t)(mod->size > 0xFFFFFFFFull ? 0xFFFFFFFFull : mod->size));
            put32(&m, e + 20, name);
            if (mod->build_id_len) {
                uint64_t cv = alloc(&m, 4 + mod->build_id_len, 4);
                put32(&m, cv, 0x4270454Cu); /* 'BpEL' */
                putbytes(&m, cv + 4, mod->build_id, mod->build_id_len);
                put32(&m, e + 76, 4 + mod->build_id_len);
                put32(&m, e + 80, (uint32_t)cv);
            }
        }
        dir[ndir].type = MD_MODULE_LIST;
        dir[ndir].size = (uint32_t)(4 + 108 * s->nmodules);
        dir[ndir].rva = (uint32_t)list_at;
        ndir++;
    }

    /* Exception */
    if (o->exception_signal > 0) {
        uint32_t tid = o->exception_tid ? o->exception_tid : o->crash.tid ? o->crash.tid : (uint32_t)s->pid;
        size_t k = 0;
        int found = 0;
        for (i = 0; i < s->nthreads; i++)
            if ((uint32_t)s->threads[i].tid == tid) {
                k = i;
                found = 1;
            }
        if (!found && s->nthreads) {
            k = 0;
            tid = (uint32_t)s->threads[0].tid;
            found = 1;
        }
        at = alloc(&m, 168, 8);
        put32(&m, at, tid);
        put32(&m, at + 8, (uint32_t)o->exception_signal);
        put32(&m, at + 12, (uint32_t)o->exception_code);
        put64(&m, at + 24, o->exception_address);
        if (found) {
            put32(&m, at + 160, CONTEXT_SIZE);
            put32(&m, at + 164, (uint32_t)context_at[k]);
        }
        dir[ndir].type = MD_EXCEPTION;
        dir[ndir].size = 168;
        dir[ndir].rva = (uint32_t)at;
        ndir++;
    }

    /* SystemInfo */
    {
        uint16_t level, revision;
        uint32_t vendor[3], version, features, amd, major = 0, minor = 0, build = 0;
        char csd[sizeof s->uts.sysname + sizeof s->uts.release + sizeof s->uts.version + sizeof s->uts.machine + 4];
        long ncpu = sysconf(_SC_NPROCESSORS_CONF);
        uint32_t csd_rva;
        cpu_info(&level, &revision, vendor, &version, &features, &amd);
        sscanf(s->uts.release, "%u.%u.%u", &major, &minor, &build);
        snprintf(csd, sizeof csd, "%s %s %s %s", s->uts.sysname, s->uts.release, s->uts.version, s->uts.machine);
        csd_rva = add_string(&m, csd);
        at = alloc(&m, 56, 8);
        put16(&m, at + 0, 9); /* PROCESSOR_ARCHITECTURE_AMD64 */
        put16(&m, at + 2, level);
        put16(&m, at + 4, revision);
        if (!m.failed) m.data[at + 6] = (uint8_t)(ncpu > 255 ? 255 : ncpu < 1 ? 1 : ncpu);
        if (!m.failed) m.data[at + 7] = 1; /* VER_NT_WORKSTATION, as Breakpad */
        put32(&m, at + 8, major);
        put32(&m, at + 12, minor);
        put32(&m, at + 16, build);
        put32(&m, at + 20, 0x8201); /* MD_OS_LINUX */
        put32(&m, at + 24, csd_rva);
        putbytes(&m, at + 32, vendor, 12);
        put32(&m, at + 44, version);
        put32(&m, at + 48, features);
        put32(&m, at + 52, amd);
        dir[ndir].type = MD_SYSTEM_INFO;
        dir[ndir].size = 56;
        dir[ndir].rva = (uint32_t)at;
        ndir++;
    }

    /* MiscInfo: process id and creation time */
    at = alloc(&m, 24, 8);
    put32(&m, at, 24);
    put32(&m, at + 4, 1u | (s->start_time_s > 0 ? 2u : 0u));
    put32(&m, at + 8, (uint32_t)s->pid);
    put32(&m, at + 12, (uint32_t)(s->start_time_s > 0 ? s->start_time_s : 0));
    dir[ndir].type = MD_MISC_INFO;
    dir[ndir].size = 24;
    dir[ndir].rva = (uint32_t)at;
    ndir++;

    /* ThreadNames */
    {
        uint64_t list_at = alloc(&m, 4 + 12 * (uint64_t)s->nthreads, 8);
        put32(&m, list_at, (uint32_t)s->nthreads);
        for (i = 0; i < s->nthreads; i++) {
            uint32_t name = add_string(&m, s->threads[i].name);
            put32(&m, list_at + 4 + 12 * (uint64_t)i, (uint32_t)s->threads[i].tid);
            put64(&m, list_at + 8 + 12 * (uint64_t)i, name);
        }
        dir[ndir].type = MD_THREAD_NAMES;
        dir[ndir].size = (uint32_t)(4 + 12 * s->nthreads);
        dir[ndir].rva = (uint32_t)list_at;
        ndir++;
    }

    /* Breakpad's Linux streams (raw file contents) */
    {
        struct {
            uint32_t type;
            const mdl_buf *buf;
            int enabled;
        } files[] = {
            {MD_LINUX_CPU_INFO, &s->cpuinfo, 1},       {MD_LINUX_PROC_STATUS, &s->status, 1},
            {MD_LINUX_LSB_RELEASE, &s->lsb_release, 1}, {MD_LINUX_CMD_LINE, &s->cmdline, o->include_cmdline},
            {MD_LINUX_ENVIRON, &s->environ_, o->include_environ}, {MD_LINUX_AUXV, &s->auxv, 1},
            {MD_LINUX_MAPS, &s->maps_text, 1},
        };
        size_t f;
        for (f = 0; f < sizeof files / sizeof files[0]; f++) {
            if (!files[f].enabled || files[f].buf->data == NULL) continue;
            at = add_blob(&m, files[f].buf->data, files[f].buf->size);
            dir[ndir].type = files[f].type;
            dir[ndir].size = (uint32_t)files[f].buf->size;
            dir[ndir].rva = (uint32_t)at;
            ndir++;
        }
    }

    /* the caller's streams (Python tracebacks, annotations), as given */
    if (o->nuser_streams > MDL_MAX_USER_STREAMS) {
        free(context_at);
        free(m.data);
        return lay_error(err, MDL_ERR_ARG, "at most %d user streams", MDL_MAX_USER_STREAMS);
    }
    for (i = 0; i < o->nuser_streams; i++) {
        const mdl_user_stream *u = &o->user_streams[i];
        uint32_t k;
        if (u->type <= 0xFFFFu || (u->size && u->data == NULL)) {
            free(context_at);
            free(m.data);
            return lay_error(err, MDL_ERR_ARG, "user stream 0x%X: types above 0xFFFF only, with data", u->type);
        }
        for (k = 0; k < ndir; k++)
            if (dir[k].type == u->type) {
                free(context_at);
                free(m.data);
                return lay_error(err, MDL_ERR_ARG, "stream type 0x%X is already in the dump", u->type);
            }
        at = add_blob(&m, u->data, u->size);
        dir[ndir].type = u->type;
        dir[ndir].size = u->size;
        dir[ndir].rva = (uint32_t)at;
        ndir++;
    }

    /* Memory64List: descriptors here, contents after the metadata */
    if (full) {
        uint64_t list_at = alloc(&m, 16 + 16 * (uint64_t)s->nfull, 8);
        put64(&m, list_at, s->nfull);
        mem64_base_field = list_at + 8;
        for (i = 0; i < s->nfull; i++) {
            put64(&m, list_at + 16 + 16 * (uint64_t)i, s->full[i].start);
            put64(&m, list_at + 24 + 16 * (uint64_t)i, s->full[i].size);
        }
        dir[ndir].type = MD_MEMORY64_LIST;
        dir[ndir].size = (uint32_t)(16 + 16 * s->nfull);
        dir[ndir].rva = (uint32_t)list_at;
        ndir++;
    }
    free(context_at);

    /* pad the metadata to 16 with explicit zero bytes */
    alloc(&m, 0, 16);
    if (m.failed) {
        free(m.data);
        return lay_error(err, MDL_ERR_SYS, "out of memory laying out the dump");
    }
    if (m.size > 0xFFFFFFFFull) {
        free(m.data);
        return lay_error(err, MDL_ERR_ARG, "the dump's streams exceed 4 GiB (32-bit RVAs)");
    }
    if (full) put64(&m, mem64_base_field, m.size);

    /* header */
    put32(&m, 0, 0x504D444Du); /* 'MDMP' */
    put32(&m, 4, 0x0000A793u);
    put32(&m, 8, ndir); /* the directory's unused slots stay zero bytes */
    put32(&m, 12, (uint32_t)dir_at);
    put32(&m, 16, 0);
    put32(&m, 20, (uint32_t)time(NULL));
    put64(&m, 24, full ? 0x2u /* MiniDumpWithFullMemory */ : 0u);
    for (i = 0; i < ndir; i++) {
        put32(&m, dir_at + 12 * (uint64_t)i, dir[i].type);
        put32(&m, dir_at + 12 * (uint64_t)i + 4, dir[i].size);
        put32(&m, dir_at + 12 * (uint64_t)i + 8, dir[i].rva);
    }

    out->meta = m.data;
    out->meta_size = m.size;
    out->streams = ndir;
    out->npieces = 1 + (full ? s->nfull : 0);
    out->pieces = (mdl_piece *)calloc(out->npieces, sizeof *out->pieces);
    if (out->pieces == NULL) {
        mdl_layout_free(out);
        return lay_error(err, MDL_ERR_SYS, "out of memory");
    }
    out->pieces[0].offset = 0;
    out->pieces[0].data = m.data;
    out->pieces[0].size = m.size;
    out->total = m.size;
    if (full) {
        for (i = 0; i < s->nfull; i++) {
            out->pieces[1 + i].offset = out->total;
            out->pieces[1 + i].data = s->full[i].data;
            out->pieces[1 + i].size = s->full[i].size;
            out->total += s->full[i].size;
        }
    }
    return MDL_OK;
}

#endif

#if MDL_SUPPORTED

/* ---- emission: DbgHelp's callback-mode I/O, from a native thread ---------- */

static int call(mdl_emitter *em, MINIDUMP_CALLBACK_INPUT *in, MINIDUMP_CALLBACK_OUTPUT *out, HRESULT required) {
    BOOL ok = em->routine(em->param, in, out);
    if (!ok || out->Status != required) {
        em->failed_callback_type = in->CallbackType;
        em->failed_return = ok;
        em->failed_status = out->Status;
        return 0;
    }
    return 1;
}

void mdl_emit_run(mdl_emitter *em) {
    MINIDUMP_CALLBACK_INPUT in;
    MINIDUMP_CALLBACK_OUTPUT out;
    uint64_t start = mdl_now_ns(), expect = 0;
    uint32_t max_write = em->max_write ? em->max_write : (16u << 20);
    size_t p;
    em->succeeded = 0;
    memset(&in, 0, sizeof in);
    memset(&out, 0, sizeof out);
    in.CallbackType = IoStartCallback;
    out.Status = E_NOTIMPL;
    if (!call(em, &in, &out, S_FALSE)) goto done;
    for (p = 0; p < em->layout->npieces; p++) {
        const mdl_piece *piece = &em->layout->pieces[p];
        uint64_t pos = 0;
        if (piece->offset != expect) { /* layouts are contiguous by construction */
            em->failed_callback_type = IoWriteAllCallback;
            em->failed_return = FALSE;
            em->failed_status = E_FAIL;
            goto done;
        }
        while (pos < piece->size) {
            uint64_t n = piece->size - pos < max_write ? piece->size - pos : max_write;
            memset(&in, 0, offsetof(MINIDUMP_CALLBACK_INPUT, Io) + sizeof in.Io);
            in.CallbackType = IoWriteAllCallback;
            in.Io.Offset = piece->offset + pos;
            in.Io.Buffer = (PVOID)(piece->data + pos);
            in.Io.BufferBytes = (ULONG)n;
            memset(&out, 0, sizeof out);
            out.Status = E_NOTIMPL;
            if (!call(em, &in, &out, S_OK)) goto done;
            pos += n;
            __atomic_store_n(&em->writes, em->writes + 1, __ATOMIC_RELAXED);
            __atomic_store_n(&em->bytes, em->bytes + n, __ATOMIC_RELAXED);
        }
        expect = piece->offset + piece->size;
    }
    memset(&in, 0, offsetof(MINIDUMP_CALLBACK_INPUT, Io) + sizeof in.Io);
    in.CallbackType = IoFinishCallback;
    memset(&out, 0, sizeof out);
    out.Status = E_NOTIMPL;
    if (!call(em, &in, &out, S_OK)) goto done;
    em->succeeded = 1;
done:
    em->elapsed_ns = mdl_now_ns() - start;
    __atomic_store_n(&em->done, 1u, __ATOMIC_RELEASE);
}

static void *emit_main(void *arg) {
    mdl_emit_run((mdl_emitter *)arg);
    return NULL;
}

int mdl_emit_start(mdl_emitter *em, mdl_error *err) {
    if (em->routine == NULL || em->layout == NULL) return lay_error(err, MDL_ERR_ARG, "no routine or layout");
    em->writes = 0;
    em->bytes = 0;
    em->done = 0;
    em->succeeded = 0;
    em->failed_callback_type = 0;
    em->failed_return = TRUE;
    em->failed_status = S_OK;
    {
        pthread_t *thread = (pthread_t *)malloc(sizeof *thread);
        int rc;
        if (thread == NULL) return lay_error(err, MDL_ERR_SYS, "out of memory");
        rc = pthread_create(thread, NULL, emit_main, em);
        if (rc != 0) {
            free(thread);
            return lay_error(err, MDL_ERR_SYS, "cannot start the writer thread: %s", strerror(rc));
        }
        em->thread = thread;
    }
    em->started = 1;
    return MDL_OK;
}

int mdl_emit_is_done(const mdl_emitter *em) { return (int)__atomic_load_n(&em->done, __ATOMIC_ACQUIRE); }

int mdl_emit_wait(mdl_emitter *em, uint64_t timeout_ns) {
    uint64_t t0 = mdl_now_ns();
    if (!em->started) return 1;
    while (!mdl_emit_is_done(em)) {
        struct timespec ts = {0, 1000000};
        if (timeout_ns != UINT64_MAX && mdl_now_ns() - t0 >= timeout_ns) return 0;
        nanosleep(&ts, NULL);
    }
    pthread_join(*(pthread_t *)em->thread, NULL);
    free(em->thread);
    em->thread = NULL;
    em->started = 0;
    return 1;
}

#else /* !MDL_SUPPORTED */

void mdl_emit_run(mdl_emitter *em) { em->succeeded = 0; em->done = 1; }
int mdl_emit_start(mdl_emitter *em, mdl_error *err) {
    (void)em;
    return lay_error(err, MDL_ERR_UNSUPPORTED, "the Linux minidump writer needs Linux on x86-64");
}
int mdl_emit_is_done(const mdl_emitter *em) { (void)em; return 1; }
int mdl_emit_wait(mdl_emitter *em, uint64_t timeout_ns) { (void)em; (void)timeout_ns; return 1; }

#endif
