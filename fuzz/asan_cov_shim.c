/* Coverage shim: lets atheris' libFuzzer see coverage while gcc's ASan
 * runtime is preloaded.
 *
 * gcc's libasan.so exports weak no-op definitions of the SanitizerCoverage
 * callbacks (__sanitizer_cov_8bit_counters_init, __sanitizer_cov_trace_cmp4,
 * ...).  Preloaded, they come before atheris' own libFuzzer in symbol lookup,
 * so atheris registers its Python coverage counters with the no-op and the
 * fuzzer runs blind ("no interesting inputs were found").  Preloading this
 * library *before* libasan.so (LD_PRELOAD="shim.so:libasan.so" with
 * ASAN_OPTIONS=verify_asan_link_order=0) puts strong definitions first; each
 * forwards to the definition inside atheris' core_with_libfuzzer module
 * (path in $MDS_ATHERIS_CORE), looked up with dlsym on that module's handle
 * once it is loaded.  The memcmp/strcmp hooks also forward, so comparisons
 * ASan intercepts in native code feed libFuzzer's value profile too.
 *
 *   gcc -shared -fPIC -O2 fuzz/asan_cov_shim.c -o build/fuzz/asan_cov_shim.so -ldl
 * (scripts/fuzz.sh builds and uses it.) */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static char core_path[4096];
static int core_ready;          /* set once a coverage callback came from the core */
static int hooks_off;           /* MDS_SHIM_NO_HOOKS=1: no comparison hooks (faster) */
static __thread int in_lookup;  /* getenv/dlopen/dlsym call strcmp: no recursion */

__attribute__((constructor)) static void read_path(void) {
    const char *path;
    in_lookup = 1;
    hooks_off = getenv("MDS_SHIM_NO_HOOKS") != NULL;
    path = getenv("MDS_ATHERIS_CORE");
    if (path) {
        size_t i;
        for (i = 0; path[i] && i < sizeof core_path - 1; i++) core_path[i] = path[i];
        core_path[i] = '\0';
    }
    in_lookup = 0;
}

static void *lookup(const char *name) {
    static void *handle;
    void *fn = NULL;
    if (in_lookup || !core_path[0]) return NULL;
    in_lookup = 1;
    if (handle == NULL) handle = dlopen(core_path, RTLD_NOW | RTLD_NOLOAD);
    if (handle) fn = dlsym(handle, name);
    in_lookup = 0;
    return fn;
}

/* Coverage callbacks only come from the core (atheris), so they may resolve. */
#define FORWARD(name, params, args)                          \
    void name params {                                       \
        static void (*fn) params;                            \
        if (fn == NULL) fn = (void (*) params)lookup(#name); \
        if (fn) {                                            \
            core_ready = 1;                                  \
            fn args;                                         \
        }                                                    \
    }

/* Comparison hooks come from ASan's interceptors in any code, from the first
 * instruction on: forward only once the core is there. */
#define HOOK(name, params, args)                             \
    void name params {                                       \
        static void (*fn) params;                            \
        if (!core_ready || in_lookup || hooks_off) return;   \
        if (fn == NULL) fn = (void (*) params)lookup(#name); \
        if (fn) fn args;                                     \
    }

FORWARD(__sanitizer_cov_8bit_counters_init, (uint8_t *a, uint8_t *b), (a, b))
FORWARD(__sanitizer_cov_pcs_init, (const uintptr_t *a, const uintptr_t *b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_div4, (uint32_t a), (a))
FORWARD(__sanitizer_cov_trace_div8, (uint64_t a), (a))
FORWARD(__sanitizer_cov_trace_gep, (uintptr_t a), (a))
FORWARD(__sanitizer_cov_trace_pc_guard, (uint32_t *a), (a))
FORWARD(__sanitizer_cov_trace_pc_guard_init, (uint32_t *a, uint32_t *b), (a, b))
FORWARD(__sanitizer_cov_trace_pc_indir, (uintptr_t a), (a))
FORWARD(__sanitizer_cov_trace_switch, (uint64_t v, uint64_t *cases), (v, cases))
HOOK(__sanitizer_weak_hook_memcmp, (void *pc, const void *a, const void *b, size_t n, int r), (pc, a, b, n, r))
HOOK(__sanitizer_weak_hook_strncmp, (void *pc, const char *a, const char *b, size_t n, int r), (pc, a, b, n, r))
HOOK(__sanitizer_weak_hook_strcmp, (void *pc, const char *a, const char *b, int r), (pc, a, b, r))
HOOK(__sanitizer_weak_hook_strncasecmp, (void *pc, const char *a, const char *b, size_t n, int r), (pc, a, b, n, r))
HOOK(__sanitizer_weak_hook_strcasecmp, (void *pc, const char *a, const char *b, int r), (pc, a, b, r))
HOOK(__sanitizer_weak_hook_strstr, (void *pc, const char *a, const char *b, char *r), (pc, a, b, r))
HOOK(__sanitizer_weak_hook_strcasestr, (void *pc, const char *a, const char *b, char *r), (pc, a, b, r))
HOOK(__sanitizer_weak_hook_memmem, (void *pc, const void *a, size_t n1, const void *b, size_t n2, void *r),
        (pc, a, n1, b, n2, r))
