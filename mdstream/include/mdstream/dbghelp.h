/* DbgHelp's minidump callback types with the exact Windows ABI.
 *
 * Three ways in, one layout out:
 *   - MSVC (and clang-cl): the Windows SDK's <dbghelp.h> is right, use it.
 *   - mingw-w64: its dbghelp.h is wrong for the callbacks (no Io member, no
 *     input Status, output Status placed after the union: a callback compiled
 *     against it writes S_FALSE past the end of DbgHelp's 52-byte output), so
 *     only the base types come from <windows.h> and the minidump types are
 *     declared here.
 *   - everything else (Linux): base types are declared here too, with
 *     fixed-width types, so the callback, the DbgHelp simulator and the tests
 *     compile the same structures the Windows writer hands out.
 *
 * The layouts are pinned by static assertions below, per architecture, against
 * what the Microsoft compiler produces (x64, x86, ARM64).  Keep them in step
 * with REFERENCE_LAYOUT_* in mdstream/dbghelp.py.
 *
 * Include-order rules (mingw): this header and mingw's <dbghelp.h> or
 * <imagehlp.h> cannot share a translation unit; including one of those first
 * is diagnosed with #error, including them after fails on the duplicate
 * typedefs.  Native code that already has the Windows base types on a
 * non-Windows host defines MDSTREAM_DBGHELP_HAVE_BASE_TYPES before including
 * this header and then provides all of them itself: BOOL, LONG, ULONG,
 * ULONG32, DWORD, ULONG64, DWORD64, HRESULT, WCHAR, PWCHAR, PVOID, HANDLE,
 * VS_FIXEDFILEINFO, PEXCEPTION_POINTERS (with Windows widths).  The other
 * names (WINAPI, TRUE, S_OK, E_FAIL, ERROR_TIMEOUT, ...) are each defined only
 * if not already defined.
 *
 * Needs C11 (anonymous unions, _Static_assert) or C++11. */
#ifndef MDSTREAM_DBGHELP_H
#define MDSTREAM_DBGHELP_H

#include <stddef.h>

/* ---- Architecture: which Microsoft layout applies ----------------------- */

#define MDSTREAM_DBGHELP_ABI_X64 1
#define MDSTREAM_DBGHELP_ABI_X86 2
#define MDSTREAM_DBGHELP_ABI_ARM64 3

#if defined(_M_ARM64) || defined(__aarch64__)
/* ARM64EC defines _M_X64 but not _M_ARM64 and uses the x64 CONTEXT and
 * layouts, so it falls to the x64 case below. */
#define MDSTREAM_DBGHELP_ABI MDSTREAM_DBGHELP_ABI_ARM64
#elif defined(_M_X64) || defined(_M_AMD64) || defined(__x86_64__)
#define MDSTREAM_DBGHELP_ABI MDSTREAM_DBGHELP_ABI_X64
#elif defined(_M_IX86) || defined(__i386__)
#define MDSTREAM_DBGHELP_ABI MDSTREAM_DBGHELP_ABI_X86
#elif defined(__SIZEOF_POINTER__) && __SIZEOF_POINTER__ == 8
/* No DbgHelp exists on other architectures; the simulator and tests still
 * need one shape, and the x64 one keeps traces comparable across hosts. */
#define MDSTREAM_DBGHELP_ABI MDSTREAM_DBGHELP_ABI_X64
#else
#define MDSTREAM_DBGHELP_ABI MDSTREAM_DBGHELP_ABI_X86
#endif

/* Size of the thread callbacks' CONTEXT as the Microsoft compiler lays it out,
 * and the alignment it keeps even under pack(4). */
#if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X64
#define MDSTREAM_DBGHELP_CONTEXT_SIZE 1232
#define MDSTREAM_DBGHELP_CONTEXT_ALIGN 16
#elif MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
#define MDSTREAM_DBGHELP_CONTEXT_SIZE 912
#define MDSTREAM_DBGHELP_CONTEXT_ALIGN 16
#else
#define MDSTREAM_DBGHELP_CONTEXT_SIZE 716
#define MDSTREAM_DBGHELP_CONTEXT_ALIGN 4
#endif

/* ---- Base types ---------------------------------------------------------- */

#if defined(_MSC_VER)

#include <windows.h>
#include <dbghelp.h>
#define MDSTREAM_DBGHELP_FROM_SDK 1

#elif defined(_WIN32)

#if defined(_DBGHELP_) || defined(_IMAGEHLP_) || defined(_MINIDUMP_H) || defined(__WINE_MINIDUMP_H)
#error "mdstream/dbghelp.h must not share a translation unit with mingw's dbghelp.h/imagehlp.h: their MINIDUMP_CALLBACK_* layouts are wrong (see the top of this header)"
#endif
/* mingw's <windows.h> does not pull in dbghelp.h (mingw-w64 10; the test
 * suite re-checks), so this brings only the base types, VS_FIXEDFILEINFO and
 * the winerror.h constants. */
#include <windows.h>

#else /* not Windows */

#include <stdint.h>

#ifndef MDSTREAM_DBGHELP_HAVE_BASE_TYPES
#define MDSTREAM_DBGHELP_HAVE_BASE_TYPES 1
/* Windows is LLP64: ULONG and LONG are 32-bit, so they cannot be the
 * platform's long here. */
typedef int32_t BOOL;
typedef int32_t LONG;
typedef uint32_t ULONG;
typedef uint32_t ULONG32;
typedef uint32_t DWORD;
typedef uint64_t ULONG64;
typedef uint64_t DWORD64;
typedef int32_t HRESULT;
typedef uint16_t WCHAR; /* UTF-16 code unit; wchar_t is 32-bit here */
typedef WCHAR *PWCHAR;
typedef void *PVOID;
typedef void *HANDLE;

typedef struct tagVS_FIXEDFILEINFO {
    DWORD dwSignature;
    DWORD dwStrucVersion;
    DWORD dwFileVersionMS;
    DWORD dwFileVersionLS;
    DWORD dwProductVersionMS;
    DWORD dwProductVersionLS;
    DWORD dwFileFlagsMask;
    DWORD dwFileFlags;
    DWORD dwFileOS;
    DWORD dwFileType;
    DWORD dwFileSubtype;
    DWORD dwFileDateMS;
    DWORD dwFileDateLS;
} VS_FIXEDFILEINFO;

/* Only ever used through a pointer (MINIDUMP_EXCEPTION_INFORMATION). */
typedef struct EXCEPTION_POINTERS EXCEPTION_POINTERS;
typedef EXCEPTION_POINTERS *PEXCEPTION_POINTERS;
#endif /* MDSTREAM_DBGHELP_HAVE_BASE_TYPES */

/* One calling convention on x86-64 and AArch64; on 32-bit hosts without
 * DbgHelp the routine only ever meets code compiled with this same header. */
#ifndef WINAPI
#define WINAPI
#endif
#ifndef CALLBACK
#define CALLBACK
#endif
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

#endif /* platform */

/* ---- HRESULTs and Win32 error codes --------------------------------------- */

/* An HRESULT with bit 31 set, built without converting an out-of-range
 * unsigned value to a signed type (which is implementation-defined), so the
 * result is the same constant expression on every compiler.  u must have bit
 * 31 set. */
#define MDSTREAM_FAILURE_HRESULT(u) \
    ((HRESULT)((u) & 0x7FFFFFFFu) - (HRESULT)0x7FFFFFFF - (HRESULT)1)

/* HRESULT_FROM_WIN32 as a constant expression everywhere (the SDK's is an
 * inline function when INLINE_HRESULT_FROM_WIN32 is defined, and mingw's
 * casts out-of-range values).  For Win32 codes 0..0xFFFF, as the SDK's. */
#define MDSTREAM_HRESULT_FROM_WIN32(code) \
    ((code) == 0 ? (HRESULT)0 : MDSTREAM_FAILURE_HRESULT(0x80070000u | ((unsigned)(code) & 0xFFFFu)))

#ifndef S_OK
#define S_OK ((HRESULT)0)
#endif
#ifndef S_FALSE
#define S_FALSE ((HRESULT)1)
#endif
#ifndef E_NOTIMPL
#define E_NOTIMPL MDSTREAM_FAILURE_HRESULT(0x80004001u)
#endif
#ifndef E_POINTER
#define E_POINTER MDSTREAM_FAILURE_HRESULT(0x80004003u)
#endif
#ifndef E_ABORT
#define E_ABORT MDSTREAM_FAILURE_HRESULT(0x80004004u)
#endif
#ifndef E_FAIL
#define E_FAIL MDSTREAM_FAILURE_HRESULT(0x80004005u)
#endif
#ifndef E_UNEXPECTED
#define E_UNEXPECTED MDSTREAM_FAILURE_HRESULT(0x8000FFFFu)
#endif
#ifndef E_ACCESSDENIED
#define E_ACCESSDENIED MDSTREAM_FAILURE_HRESULT(0x80070005u)
#endif
#ifndef E_HANDLE
#define E_HANDLE MDSTREAM_FAILURE_HRESULT(0x80070006u)
#endif
#ifndef E_OUTOFMEMORY
#define E_OUTOFMEMORY MDSTREAM_FAILURE_HRESULT(0x8007000Eu)
#endif
#ifndef E_INVALIDARG
#define E_INVALIDARG MDSTREAM_FAILURE_HRESULT(0x80070057u)
#endif
#ifndef SUCCEEDED
#define SUCCEEDED(hr) (((HRESULT)(hr)) >= 0)
#endif
#ifndef FAILED
#define FAILED(hr) (((HRESULT)(hr)) < 0)
#endif
#ifndef FACILITY_WIN32
#define FACILITY_WIN32 7
#endif
#ifndef HRESULT_FROM_WIN32
#define HRESULT_FROM_WIN32(code) MDSTREAM_HRESULT_FROM_WIN32(code)
#endif

/* Win32 error codes the dump path reports (GetLastError() / wrapped in an
 * HRESULT). */
#ifndef ERROR_SUCCESS
#define ERROR_SUCCESS 0
#endif
#ifndef ERROR_ACCESS_DENIED
#define ERROR_ACCESS_DENIED 5
#endif
#ifndef ERROR_INVALID_HANDLE
#define ERROR_INVALID_HANDLE 6
#endif
#ifndef ERROR_NOT_ENOUGH_MEMORY
#define ERROR_NOT_ENOUGH_MEMORY 8
#endif
#ifndef ERROR_OUTOFMEMORY
#define ERROR_OUTOFMEMORY 14
#endif
#ifndef ERROR_WRITE_FAULT
#define ERROR_WRITE_FAULT 29
#endif
#ifndef ERROR_HANDLE_DISK_FULL
#define ERROR_HANDLE_DISK_FULL 39
#endif
#ifndef ERROR_NOT_SUPPORTED
#define ERROR_NOT_SUPPORTED 50
#endif
#ifndef ERROR_INVALID_PARAMETER
#define ERROR_INVALID_PARAMETER 87
#endif
#ifndef ERROR_BROKEN_PIPE
#define ERROR_BROKEN_PIPE 109
#endif
#ifndef ERROR_DISK_FULL
#define ERROR_DISK_FULL 112
#endif
#ifndef ERROR_NO_DATA
#define ERROR_NO_DATA 232
#endif
#ifndef ERROR_PARTIAL_COPY
#define ERROR_PARTIAL_COPY 299
#endif
#ifndef ERROR_OPERATION_ABORTED
#define ERROR_OPERATION_ABORTED 995
#endif
#ifndef ERROR_TIMEOUT
#define ERROR_TIMEOUT 1460
#endif

/* ---- Minidump callback declarations (SDK names, SDK field order) --------- */

#ifndef MDSTREAM_DBGHELP_FROM_SDK

#ifdef __cplusplus
extern "C" {
#endif

/* The SDK's CONTEXT is 16-aligned on x64 and ARM64 and MSVC keeps that under
 * pack(4); GCC and clang cap every member at the pack value, and a 16-aligned
 * member type inside the packed input union draws -Wpacked-not-aligned.  So
 * the thread callbacks carry CONTEXT as bytes, and MSVC's implicit padding
 * (before CONTEXT on x64, after the last member on x64 and ARM64) is spelled
 * out with unnamed bit-fields, which take space but no name.  Only the outer
 * MINIDUMP_CALLBACK_INPUT, which nothing packs, carries MSVC's 16-byte
 * alignment, so Context still lands on a 16-byte boundary inside it. */
#if MDSTREAM_DBGHELP_CONTEXT_ALIGN > 4
#define MDSTREAM_DBGHELP_CONTEXT_ALIGNED __attribute__((aligned(MDSTREAM_DBGHELP_CONTEXT_ALIGN)))
#define MDSTREAM_DBGHELP_TAIL_PAD_ unsigned int : 32; unsigned int : 32; unsigned int : 32;
#else
#define MDSTREAM_DBGHELP_CONTEXT_ALIGNED
#define MDSTREAM_DBGHELP_TAIL_PAD_
#endif

/* The SDK wraps all of minidumpapiset.h in pshpack4.h/poppack.h. */
#pragma pack(push, 4)

typedef enum MINIDUMP_CALLBACK_TYPE {
    ModuleCallback,
    ThreadCallback,
    ThreadExCallback,
    IncludeThreadCallback,
    IncludeModuleCallback,
    MemoryCallback,
    CancelCallback,
    WriteKernelMinidumpCallback,
    KernelMinidumpStatusCallback,
    RemoveMemoryCallback,
    IncludeVmRegionCallback,
    IoStartCallback,
    IoWriteAllCallback,
    IoFinishCallback,
    ReadMemoryFailureCallback,
    SecondaryFlagsCallback,
    IsProcessSnapshotCallback,
    VmStartCallback,
    VmQueryCallback,
    VmPreReadCallback,
    VmPostReadCallback
} MINIDUMP_CALLBACK_TYPE;

typedef struct MINIDUMP_THREAD_CALLBACK {
    ULONG ThreadId;
    HANDLE ThreadHandle;
#if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
    ULONG Pad;
#elif MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X64
    unsigned int : 32; /* MSVC's implicit padding before the 16-aligned CONTEXT */
#endif
    unsigned char Context[MDSTREAM_DBGHELP_CONTEXT_SIZE]; /* a CONTEXT; copy it out with memcpy */
    ULONG SizeOfContext;
    ULONG64 StackBase;
    ULONG64 StackEnd;
    MDSTREAM_DBGHELP_TAIL_PAD_
} MINIDUMP_THREAD_CALLBACK, *PMINIDUMP_THREAD_CALLBACK;

typedef struct MINIDUMP_THREAD_EX_CALLBACK {
    ULONG ThreadId;
    HANDLE ThreadHandle;
#if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
    ULONG Pad;
#elif MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X64
    unsigned int : 32; /* as in MINIDUMP_THREAD_CALLBACK */
#endif
    unsigned char Context[MDSTREAM_DBGHELP_CONTEXT_SIZE];
    ULONG SizeOfContext;
    ULONG64 StackBase;
    ULONG64 StackEnd;
    ULONG64 BackingStoreBase;
    ULONG64 BackingStoreEnd;
    MDSTREAM_DBGHELP_TAIL_PAD_
} MINIDUMP_THREAD_EX_CALLBACK, *PMINIDUMP_THREAD_EX_CALLBACK;

typedef struct MINIDUMP_INCLUDE_THREAD_CALLBACK {
    ULONG ThreadId;
} MINIDUMP_INCLUDE_THREAD_CALLBACK, *PMINIDUMP_INCLUDE_THREAD_CALLBACK;

typedef enum THREAD_WRITE_FLAGS {
    ThreadWriteThread = 0x0001,
    ThreadWriteStack = 0x0002,
    ThreadWriteContext = 0x0004,
    ThreadWriteBackingStore = 0x0008,
    ThreadWriteInstructionWindow = 0x0010,
    ThreadWriteThreadData = 0x0020,
    ThreadWriteThreadInfo = 0x0040
} THREAD_WRITE_FLAGS;

typedef struct MINIDUMP_MODULE_CALLBACK {
    PWCHAR FullPath;
    ULONG64 BaseOfImage;
    ULONG SizeOfImage;
    ULONG CheckSum;
    ULONG TimeDateStamp;
    VS_FIXEDFILEINFO VersionInfo;
    PVOID CvRecord;
    ULONG SizeOfCvRecord;
    PVOID MiscRecord;
    ULONG SizeOfMiscRecord;
} MINIDUMP_MODULE_CALLBACK, *PMINIDUMP_MODULE_CALLBACK;

typedef struct MINIDUMP_INCLUDE_MODULE_CALLBACK {
    ULONG64 BaseOfImage;
} MINIDUMP_INCLUDE_MODULE_CALLBACK, *PMINIDUMP_INCLUDE_MODULE_CALLBACK;

typedef enum MODULE_WRITE_FLAGS {
    ModuleWriteModule = 0x0001,
    ModuleWriteDataSeg = 0x0002,
    ModuleWriteMiscRecord = 0x0004,
    ModuleWriteCvRecord = 0x0008,
    ModuleReferencedByMemory = 0x0010,
    ModuleWriteTlsData = 0x0020,
    ModuleWriteCodeSegs = 0x0040
} MODULE_WRITE_FLAGS;

typedef struct MINIDUMP_IO_CALLBACK {
    HANDLE Handle;
    ULONG64 Offset;
    PVOID Buffer;
    ULONG BufferBytes;
} MINIDUMP_IO_CALLBACK, *PMINIDUMP_IO_CALLBACK;

typedef struct MINIDUMP_READ_MEMORY_FAILURE_CALLBACK {
    ULONG64 Offset;
    ULONG Bytes;
    HRESULT FailureStatus;
} MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, *PMINIDUMP_READ_MEMORY_FAILURE_CALLBACK;

typedef struct MINIDUMP_VM_QUERY_CALLBACK {
    ULONG64 Offset;
} MINIDUMP_VM_QUERY_CALLBACK, *PMINIDUMP_VM_QUERY_CALLBACK;

typedef struct MINIDUMP_VM_PRE_READ_CALLBACK {
    ULONG64 Offset;
    PVOID Buffer;
    ULONG Size;
} MINIDUMP_VM_PRE_READ_CALLBACK, *PMINIDUMP_VM_PRE_READ_CALLBACK;

typedef struct MINIDUMP_VM_POST_READ_CALLBACK {
    ULONG64 Offset;
    PVOID Buffer;
    ULONG Size;
    ULONG Completed;
    HRESULT Status;
} MINIDUMP_VM_POST_READ_CALLBACK, *PMINIDUMP_VM_POST_READ_CALLBACK;

typedef struct MINIDUMP_MEMORY_INFO {
    ULONG64 BaseAddress;
    ULONG64 AllocationBase;
    ULONG32 AllocationProtect;
    ULONG32 __alignment1; /* SDK spelling */
    ULONG64 RegionSize;
    ULONG32 State;
    ULONG32 Protect;
    ULONG32 Type;
    ULONG32 __alignment2;
} MINIDUMP_MEMORY_INFO, *PMINIDUMP_MEMORY_INFO;

typedef struct MINIDUMP_CALLBACK_INPUT {
    ULONG ProcessId;
    HANDLE ProcessHandle;
    ULONG CallbackType;
    union {
        HRESULT Status;
        MINIDUMP_THREAD_CALLBACK Thread;
        MINIDUMP_THREAD_EX_CALLBACK ThreadEx;
        MINIDUMP_MODULE_CALLBACK Module;
        MINIDUMP_INCLUDE_THREAD_CALLBACK IncludeThread;
        MINIDUMP_INCLUDE_MODULE_CALLBACK IncludeModule;
        MINIDUMP_IO_CALLBACK Io;
        MINIDUMP_READ_MEMORY_FAILURE_CALLBACK ReadMemoryFailure;
        ULONG SecondaryFlags;
        MINIDUMP_VM_QUERY_CALLBACK VmQuery;
        MINIDUMP_VM_PRE_READ_CALLBACK VmPreRead;
        MINIDUMP_VM_POST_READ_CALLBACK VmPostRead;
    };
} MDSTREAM_DBGHELP_CONTEXT_ALIGNED MINIDUMP_CALLBACK_INPUT, *PMINIDUMP_CALLBACK_INPUT;

/* One union: Status shares offset 0 with every other answer, as in the SDK. */
typedef struct MINIDUMP_CALLBACK_OUTPUT {
    union {
        ULONG ModuleWriteFlags;
        ULONG ThreadWriteFlags;
        ULONG SecondaryFlags;
        struct {
            ULONG64 MemoryBase;
            ULONG MemorySize;
        };
        struct {
            BOOL CheckCancel;
            BOOL Cancel;
        };
        HANDLE Handle;
        struct {
            MINIDUMP_MEMORY_INFO VmRegion;
            BOOL Continue;
        };
        struct {
            HRESULT VmQueryStatus;
            MINIDUMP_MEMORY_INFO VmQueryResult;
        };
        struct {
            HRESULT VmReadStatus;
            ULONG VmReadBytesCompleted;
        };
        HRESULT Status;
    };
} MINIDUMP_CALLBACK_OUTPUT, *PMINIDUMP_CALLBACK_OUTPUT;

typedef enum MINIDUMP_TYPE {
    MiniDumpNormal = 0x00000000,
    MiniDumpWithDataSegs = 0x00000001,
    MiniDumpWithFullMemory = 0x00000002,
    MiniDumpWithHandleData = 0x00000004,
    MiniDumpFilterMemory = 0x00000008,
    MiniDumpScanMemory = 0x00000010,
    MiniDumpWithUnloadedModules = 0x00000020,
    MiniDumpWithIndirectlyReferencedMemory = 0x00000040,
    MiniDumpFilterModulePaths = 0x00000080,
    MiniDumpWithProcessThreadData = 0x00000100,
    MiniDumpWithPrivateReadWriteMemory = 0x00000200,
    MiniDumpWithoutOptionalData = 0x00000400,
    MiniDumpWithFullMemoryInfo = 0x00000800,
    MiniDumpWithThreadInfo = 0x00001000,
    MiniDumpWithCodeSegs = 0x00002000,
    MiniDumpWithoutAuxiliaryState = 0x00004000,
    MiniDumpWithFullAuxiliaryState = 0x00008000,
    MiniDumpWithPrivateWriteCopyMemory = 0x00010000,
    MiniDumpIgnoreInaccessibleMemory = 0x00020000,
    MiniDumpWithTokenInformation = 0x00040000,
    MiniDumpWithModuleHeaders = 0x00080000,
    MiniDumpFilterTriage = 0x00100000,
    MiniDumpWithAvxXStateContext = 0x00200000,
    MiniDumpWithIptTrace = 0x00400000,
    MiniDumpScanInaccessiblePartialPages = 0x00800000,
    MiniDumpFilterWriteCombinedMemory = 0x01000000,
    MiniDumpValidTypeFlags = 0x01ffffff
} MINIDUMP_TYPE;

typedef enum MINIDUMP_SECONDARY_FLAGS {
    MiniSecondaryWithoutPowerInfo = 0x00000001,
    MiniSecondaryValidFlags = 0x00000001
} MINIDUMP_SECONDARY_FLAGS;

/* WINAPI is __stdcall on 32-bit Windows: the callee pops 12 bytes, so a
 * routine compiled with another convention corrupts DbgHelp's stack. */
typedef BOOL(WINAPI *MINIDUMP_CALLBACK_ROUTINE)(PVOID CallbackParam, PMINIDUMP_CALLBACK_INPUT CallbackInput,
                                                PMINIDUMP_CALLBACK_OUTPUT CallbackOutput);

typedef struct MINIDUMP_CALLBACK_INFORMATION {
    MINIDUMP_CALLBACK_ROUTINE CallbackRoutine;
    PVOID CallbackParam;
} MINIDUMP_CALLBACK_INFORMATION, *PMINIDUMP_CALLBACK_INFORMATION;

typedef struct MINIDUMP_EXCEPTION_INFORMATION {
    DWORD ThreadId;
    PEXCEPTION_POINTERS ExceptionPointers;
    BOOL ClientPointers;
} MINIDUMP_EXCEPTION_INFORMATION, *PMINIDUMP_EXCEPTION_INFORMATION;

typedef struct MINIDUMP_USER_STREAM {
    ULONG32 Type;
    ULONG BufferSize;
    PVOID Buffer;
} MINIDUMP_USER_STREAM, *PMINIDUMP_USER_STREAM;

typedef struct MINIDUMP_USER_STREAM_INFORMATION {
    ULONG UserStreamCount;
    PMINIDUMP_USER_STREAM UserStreamArray;
} MINIDUMP_USER_STREAM_INFORMATION, *PMINIDUMP_USER_STREAM_INFORMATION;

#pragma pack(pop)

#ifdef __cplusplus
}
#endif

#endif /* !MDSTREAM_DBGHELP_FROM_SDK */

/* ---- The Microsoft layout, asserted ----------------------------------------
 * Values from the SDK rules (pack 4; CONTEXT 16-aligned on x64/ARM64) and
 * checked against PDB-derived layouts of shipped Windows binaries.  Applied to
 * the SDK's declarations too, so an MSVC build checks the reference itself. */

#if defined(__cplusplus)
#define MDSTREAM_DBGHELP_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#define MDSTREAM_DBGHELP_ALIGNOF(T) alignof(T)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define MDSTREAM_DBGHELP_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#define MDSTREAM_DBGHELP_ALIGNOF(T) _Alignof(T)
#endif

#ifdef MDSTREAM_DBGHELP_STATIC_ASSERT

#if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X64
#define MDSTREAM_DBGHELP_PICK_(x64, x86, arm64) (x64)
#elif MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X86
#define MDSTREAM_DBGHELP_PICK_(x64, x86, arm64) (x86)
#else
#define MDSTREAM_DBGHELP_PICK_(x64, x86, arm64) (arm64)
#endif

#define MDSTREAM_DBGHELP_SIZE_(T, x64, x86, arm64) \
    MDSTREAM_DBGHELP_STATIC_ASSERT(sizeof(T) == MDSTREAM_DBGHELP_PICK_(x64, x86, arm64), \
                                   "sizeof " #T " differs from the Microsoft layout")
#define MDSTREAM_DBGHELP_OFFSET_(T, m, x64, x86, arm64) \
    MDSTREAM_DBGHELP_STATIC_ASSERT(offsetof(T, m) == MDSTREAM_DBGHELP_PICK_(x64, x86, arm64), \
                                   #T "." #m " differs from the Microsoft layout")
#define MDSTREAM_DBGHELP_ALIGN_(T, x64, x86, arm64) \
    MDSTREAM_DBGHELP_STATIC_ASSERT(MDSTREAM_DBGHELP_ALIGNOF(T) == MDSTREAM_DBGHELP_PICK_(x64, x86, arm64), \
                                   "alignment of " #T " differs from the Microsoft layout")

/*                                                                   x64   x86  ARM64 */
MDSTREAM_DBGHELP_SIZE_(VS_FIXEDFILEINFO,                              52,   52,   52);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, ThreadId,           0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, ThreadHandle,       4,    4,    4);
#if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, Pad,               12,   12,   12);
#endif
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, Context,           16,    8,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, SizeOfContext,   1248,  724,  928);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, StackBase,       1252,  728,  932);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_CALLBACK, StackEnd,        1260,  736,  940);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_THREAD_CALLBACK,                    1280,  744,  960);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, ThreadId,        0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, ThreadHandle,    4,    4,    4);
#if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, Pad,            12,   12,   12);
#endif
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, Context,        16,    8,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, SizeOfContext, 1248,  724,  928);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, StackBase,     1252,  728,  932);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, StackEnd,      1260,  736,  940);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, BackingStoreBase, 1268, 744, 948);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, BackingStoreEnd, 1276, 752, 956);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_THREAD_EX_CALLBACK,                 1296,  760,  976);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, FullPath,           0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, BaseOfImage,        8,    4,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, SizeOfImage,       16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, CheckSum,          20,   16,   20);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, TimeDateStamp,     24,   20,   24);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, VersionInfo,       28,   24,   28);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, CvRecord,          80,   76,   80);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, SizeOfCvRecord,    88,   80,   88);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, MiscRecord,        92,   84,   92);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MODULE_CALLBACK, SizeOfMiscRecord, 100,   88,  100);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_MODULE_CALLBACK,                     104,   92,  104);

MDSTREAM_DBGHELP_SIZE_(MINIDUMP_INCLUDE_THREAD_CALLBACK,               4,    4,    4);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_INCLUDE_MODULE_CALLBACK,               8,    8,    8);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_IO_CALLBACK, Handle,                 0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_IO_CALLBACK, Offset,                 8,    4,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_IO_CALLBACK, Buffer,                16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_IO_CALLBACK, BufferBytes,           24,   16,   24);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_IO_CALLBACK,                          28,   20,   28);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, Offset, 0,   0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, Bytes,  8,   8,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, FailureStatus, 12, 12, 12);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK,         16,   16,   16);

MDSTREAM_DBGHELP_SIZE_(MINIDUMP_VM_QUERY_CALLBACK,                     8,    8,    8);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_PRE_READ_CALLBACK, Offset,        0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_PRE_READ_CALLBACK, Buffer,        8,    8,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_PRE_READ_CALLBACK, Size,         16,   12,   16);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_VM_PRE_READ_CALLBACK,                 20,   16,   20);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Offset,       0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Buffer,       8,    8,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Size,        16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Completed,   20,   16,   20);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Status,      24,   20,   24);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_VM_POST_READ_CALLBACK,                28,   24,   28);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, BaseAddress,            0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, AllocationBase,         8,    8,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, AllocationProtect,     16,   16,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, RegionSize,            24,   24,   24);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, State,                 32,   32,   32);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, Protect,               36,   36,   36);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_MEMORY_INFO, Type,                  40,   40,   40);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_MEMORY_INFO,                          48,   48,   48);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, ProcessId,           0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, ProcessHandle,       4,    4,    4);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, CallbackType,       12,    8,   12);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Status,             16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Thread,             16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, ThreadEx,           16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Module,             16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, IncludeThread,      16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, IncludeModule,      16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io,                 16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, ReadMemoryFailure,  16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, SecondaryFlags,     16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, VmQuery,            16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, VmPreRead,          16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, VmPostRead,         16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.Handle,          16,   12,   16);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.Offset,          24,   16,   24);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.Buffer,          32,   24,   32);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.BufferBytes,     40,   28,   40);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_CALLBACK_INPUT,                     1312,  772,  992);
MDSTREAM_DBGHELP_ALIGN_(MINIDUMP_CALLBACK_INPUT,                      16,    4,   16);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Status,             0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, ModuleWriteFlags,   0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, ThreadWriteFlags,   0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, SecondaryFlags,     0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, MemoryBase,         0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, MemorySize,         8,    8,    8);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, CheckCancel,        0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Cancel,             4,    4,    4);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Handle,             0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmRegion,           0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Continue,          48,   48,   48);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmQueryStatus,      0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmQueryResult,      4,    4,    4);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmReadStatus,       0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmReadBytesCompleted, 4,  4,    4);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_CALLBACK_OUTPUT,                      52,   52,   52);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INFORMATION, CallbackRoutine, 0,  0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_CALLBACK_INFORMATION, CallbackParam,  8,   4,    8);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_CALLBACK_INFORMATION,                 16,    8,   16);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_EXCEPTION_INFORMATION, ThreadId,     0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_EXCEPTION_INFORMATION, ExceptionPointers, 4, 4,  4);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_EXCEPTION_INFORMATION, ClientPointers, 12, 8,   12);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_EXCEPTION_INFORMATION,                16,   12,   16);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_USER_STREAM, Type,                   0,    0,    0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_USER_STREAM, BufferSize,             4,    4,    4);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_USER_STREAM, Buffer,                 8,    8,    8);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_USER_STREAM,                          16,   12,   16);

MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_USER_STREAM_INFORMATION, UserStreamCount, 0, 0,  0);
MDSTREAM_DBGHELP_OFFSET_(MINIDUMP_USER_STREAM_INFORMATION, UserStreamArray, 4, 4,  4);
MDSTREAM_DBGHELP_SIZE_(MINIDUMP_USER_STREAM_INFORMATION,              12,    8,   12);

/* The constants whose spelling above avoids implementation-defined casts. */
MDSTREAM_DBGHELP_STATIC_ASSERT(E_FAIL == MDSTREAM_FAILURE_HRESULT(0x80004005u) && E_FAIL < 0,
                               "E_FAIL is 0x80004005");
MDSTREAM_DBGHELP_STATIC_ASSERT(E_NOTIMPL == MDSTREAM_FAILURE_HRESULT(0x80004001u), "E_NOTIMPL is 0x80004001");
MDSTREAM_DBGHELP_STATIC_ASSERT(MDSTREAM_HRESULT_FROM_WIN32(ERROR_TIMEOUT) == MDSTREAM_FAILURE_HRESULT(0x800705B4u),
                               "HRESULT_FROM_WIN32(ERROR_TIMEOUT) is 0x800705B4");
MDSTREAM_DBGHELP_STATIC_ASSERT(MDSTREAM_HRESULT_FROM_WIN32(ERROR_OUTOFMEMORY) == E_OUTOFMEMORY,
                               "E_OUTOFMEMORY is HRESULT_FROM_WIN32(ERROR_OUTOFMEMORY)");
MDSTREAM_DBGHELP_STATIC_ASSERT(MDSTREAM_HRESULT_FROM_WIN32(ERROR_INVALID_PARAMETER) == E_INVALIDARG,
                               "E_INVALIDARG is HRESULT_FROM_WIN32(ERROR_INVALID_PARAMETER)");
MDSTREAM_DBGHELP_STATIC_ASSERT(MDSTREAM_HRESULT_FROM_WIN32(ERROR_SUCCESS) == S_OK, "ERROR_SUCCESS maps to S_OK");

#undef MDSTREAM_DBGHELP_SIZE_
#undef MDSTREAM_DBGHELP_OFFSET_
#undef MDSTREAM_DBGHELP_ALIGN_
#undef MDSTREAM_DBGHELP_PICK_

#endif /* MDSTREAM_DBGHELP_STATIC_ASSERT */

#endif /* MDSTREAM_DBGHELP_H */
