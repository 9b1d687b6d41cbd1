/* Shared-memory atomics for the ring: the positions and flags that two threads
 * or two processes exchange.  Plain integer fields accessed only through these
 * macros, so the header compiles as C and C++ (native agents) and the layout
 * stays a documented byte layout rather than an _Atomic type. */
#ifndef MDSTREAM_ATOMICS_H
#define MDSTREAM_ATOMICS_H

#if defined(_MSC_VER) && !defined(__clang__)
#if !defined(_M_IX86) && !defined(_M_X64)
#error "mdstream's MSVC atomics rely on x86/x64 ordering; build ARM64 Windows with clang-cl"
#endif
#include <intrin.h>
#include <windows.h>
/* x86/x64 MSVC: aligned loads/stores are atomic; volatile + compiler barriers
 * give acquire/release on x86 TSO (MSVC's /volatile:ms semantics). */
#define mds_load_acquire_u64(p) (*(volatile const unsigned __int64 *)(p))
#define mds_load_relaxed_u64(p) (*(volatile const unsigned __int64 *)(p))
#define mds_store_release_u64(p, v) (*(volatile unsigned __int64 *)(p) = (v))
#define mds_store_relaxed_u64(p, v) (*(volatile unsigned __int64 *)(p) = (v))
#define mds_load_acquire_u32(p) (*(volatile const unsigned long *)(p))
#define mds_load_relaxed_u32(p) (*(volatile const unsigned long *)(p))
#define mds_store_release_u32(p, v) (*(volatile unsigned long *)(p) = (v))
#define mds_store_relaxed_u32(p, v) (*(volatile unsigned long *)(p) = (v))
#define mds_store_seqcst_u32(p, v) InterlockedExchange((volatile long *)(p), (long)(v))
#define mds_fetch_add_u32(p, v) ((unsigned)InterlockedExchangeAdd((volatile long *)(p), (long)(v)))
#define mds_fetch_add_relaxed_u64(p, v) ((unsigned __int64)InterlockedExchangeAdd64((volatile __int64 *)(p), (__int64)(v)))
/* A failed compare-exchange reports the value it saw, as the GCC branch does
 * (claim() relies on it); never a second, possibly torn, read. */
static __inline int mds_cas_u32_msvc(volatile void *p, unsigned *expected, unsigned desired) {
    long seen = InterlockedCompareExchange((volatile long *)p, (long)desired, (long)*expected);
    if (seen == (long)*expected) return 1;
    *expected = (unsigned)seen;
    return 0;
}
static __inline int mds_cas_u64_msvc(volatile void *p, unsigned __int64 *expected, unsigned __int64 desired) {
    __int64 seen = InterlockedCompareExchange64((volatile __int64 *)p, (__int64)desired, (__int64)*expected);
    if (seen == (__int64)*expected) return 1;
    *expected = (unsigned __int64)seen;
    return 0;
}
#define mds_cas_u32(p, expected_ptr, desired) mds_cas_u32_msvc((p), (unsigned *)(expected_ptr), (unsigned)(desired))
#define mds_cas_u64(p, expected_ptr, desired) \
    mds_cas_u64_msvc((p), (unsigned __int64 *)(expected_ptr), (unsigned __int64)(desired))
#define mds_fence_seqcst() MemoryBarrier()
#define mds_cpu_relax() YieldProcessor()
#define mds_fetch_or_u32(p, v) ((unsigned)InterlockedOr((volatile long *)(p), (long)(v)))
#define mds_fence_release() _ReadWriteBarrier()
#if defined(_M_IX86) /* volatile 64-bit accesses tear on 32-bit x86 */
#undef mds_load_acquire_u64
#undef mds_load_relaxed_u64
#undef mds_store_release_u64
#undef mds_store_relaxed_u64
#define mds_load_acquire_u64(p) ((unsigned __int64)InterlockedCompareExchange64((volatile __int64 *)(p), 0, 0))
#define mds_load_relaxed_u64(p) mds_load_acquire_u64(p)
#define mds_store_release_u64(p, v) ((void)InterlockedExchange64((volatile __int64 *)(p), (__int64)(v)))
#define mds_store_relaxed_u64(p, v) mds_store_release_u64(p, v)
#endif
#else
#define mds_load_acquire_u64(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define mds_load_relaxed_u64(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define mds_store_release_u64(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define mds_store_relaxed_u64(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define mds_load_acquire_u32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define mds_load_relaxed_u32(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define mds_store_release_u32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define mds_store_relaxed_u32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define mds_store_seqcst_u32(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define mds_fetch_add_u32(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define mds_fetch_add_relaxed_u64(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define mds_cas_u32(p, expected_ptr, desired) \
    __atomic_compare_exchange_n((p), (expected_ptr), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define mds_cas_u64(p, expected_ptr, desired) \
    __atomic_compare_exchange_n((p), (expected_ptr), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define mds_fence_seqcst() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define mds_fetch_or_u32(p, v) __atomic_fetch_or((p), (v), __ATOMIC_SEQ_CST)
#define mds_fence_release() __atomic_thread_fence(__ATOMIC_RELEASE)
#if defined(__x86_64__) || defined(__i386__)
#define mds_cpu_relax() __builtin_ia32_pause()
#else
#define mds_cpu_relax() ((void)0)
#endif
#endif

#endif /* MDSTREAM_ATOMICS_H */
