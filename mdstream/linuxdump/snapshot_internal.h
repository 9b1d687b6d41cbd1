/* Private snapshot structures shared by snapshot.c and writer.c. */
#ifndef MDSTREAM_LINUXDUMP_INTERNAL_H
#define MDSTREAM_LINUXDUMP_INTERNAL_H

#include "linuxdump.h"

#if defined(__GNUC__) || defined(__clang__)
#define MDL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MDL_PRINTF(a, b)
#endif

#if defined(__linux__) && defined(__x86_64__)
#define MDL_SUPPORTED 1
#include <sys/types.h>
#include <sys/user.h>
#include <sys/utsname.h>
#else
#define MDL_SUPPORTED 0
#endif

#if MDL_SUPPORTED

#define MDL_PERM_R 1u
#define MDL_PERM_W 2u
#define MDL_PERM_X 4u
#define MDL_PERM_P 8u

typedef struct mdl_buf {
    uint8_t *data;
    size_t size;
} mdl_buf;

typedef struct mdl_mapping {
    uint64_t start, end, offset, inode;
    uint32_t perms;
    char *path;                 /* NULL for anonymous mappings */
} mdl_mapping;

typedef struct mdl_thread {
    pid_t tid;
    int seized;                 /* PTRACE_SEIZE succeeded */
    int stopped;                /* in a ptrace-stop we waited for */
    int gone;                   /* exited while we looked */
    int pending_signal;         /* signal-delivery-stop: re-inject at detach */
    int have_regs, have_fpregs;
    int crashed;                /* regs/fpregs hold the fault context */
    struct user_regs_struct regs;
    struct user_fpregs_struct fpregs;
    uint64_t stack_start, stack_size;  /* 0 size: no stack captured */
    char name[32];
} mdl_thread;

typedef struct mdl_region {
    uint64_t start;
    uint64_t size;
    uint8_t *data;
} mdl_region;

typedef struct mdl_module {
    uint64_t base, size;
    char *path;                 /* name as written in the dump */
    uint8_t build_id[64];
    uint32_t build_id_len;
    int is_vdso;
} mdl_module;

struct mdl_snapshot {
    pid_t pid;
    mdl_thread *threads;
    size_t nthreads, cthreads;
    mdl_mapping *maps;
    size_t nmaps;
    mdl_module *modules;
    size_t nmodules;
    mdl_region *regions;        /* MemoryList: disjoint, sorted */
    size_t nregions;
    mdl_region *full;           /* Memory64List */
    size_t nfull;
    mdl_buf status, cmdline, environ_, auxv, maps_text, cpuinfo, lsb_release;
    struct utsname uts;
    uint64_t entry;             /* AT_ENTRY */
    char exe[4096];
    uint64_t stopped_ns, snapshot_ns, memory_bytes;
    uint32_t readv_failures, pending_signals;
    int64_t start_time_s;       /* process start, seconds since the epoch (0 unknown) */
};

#endif
#endif
