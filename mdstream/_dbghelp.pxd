# Declarations of mdstream/include/mdstream/dbghelp.h: DbgHelp's minidump
# callback ABI.  Declarations only, C names kept.  The C header decides the real
# types and layout (SDK on MSVC, its own pack(4) declarations elsewhere); the
# integer typedefs here only tell Cython the signedness, since Cython sizes
# conversions with the C compiler's sizeof.
#
# Anonymous unions are declared flat, as the SDK spells access to them:
# in.Io.Offset, in.Status, out.Status, out.Cancel.

cdef extern from "mdstream/dbghelp.h" nogil:
    # ---- which Microsoft layout this build has ----
    enum:
        MDSTREAM_DBGHELP_ABI_X64
        MDSTREAM_DBGHELP_ABI_X86
        MDSTREAM_DBGHELP_ABI_ARM64
        MDSTREAM_DBGHELP_ABI
        MDSTREAM_DBGHELP_CONTEXT_SIZE
        MDSTREAM_DBGHELP_CONTEXT_ALIGN

    # ---- base types (Windows ABI widths: ULONG and LONG are 32-bit) ----
    ctypedef int BOOL
    ctypedef int LONG
    ctypedef unsigned int ULONG
    ctypedef unsigned int ULONG32
    ctypedef unsigned int DWORD
    ctypedef unsigned long long ULONG64
    ctypedef unsigned long long DWORD64
    ctypedef int HRESULT
    ctypedef unsigned short WCHAR
    ctypedef WCHAR *PWCHAR
    ctypedef void *PVOID
    ctypedef void *HANDLE

    const BOOL TRUE
    const BOOL FALSE

    ctypedef struct VS_FIXEDFILEINFO:
        DWORD dwSignature
        DWORD dwStrucVersion
        DWORD dwFileVersionMS
        DWORD dwFileVersionLS
        DWORD dwProductVersionMS
        DWORD dwProductVersionLS
        DWORD dwFileFlagsMask
        DWORD dwFileFlags
        DWORD dwFileOS
        DWORD dwFileType
        DWORD dwFileSubtype
        DWORD dwFileDateMS
        DWORD dwFileDateLS

    # Only ever handled through a pointer here.
    ctypedef struct EXCEPTION_POINTERS:
        pass
    ctypedef EXCEPTION_POINTERS *PEXCEPTION_POINTERS

    # ---- HRESULTs and Win32 error codes ----
    const HRESULT S_OK
    const HRESULT S_FALSE
    const HRESULT E_NOTIMPL
    const HRESULT E_POINTER
    const HRESULT E_ABORT
    const HRESULT E_FAIL
    const HRESULT E_UNEXPECTED
    const HRESULT E_ACCESSDENIED
    const HRESULT E_HANDLE
    const HRESULT E_OUTOFMEMORY
    const HRESULT E_INVALIDARG
    const int FACILITY_WIN32

    bint SUCCEEDED(HRESULT hr)
    bint FAILED(HRESULT hr)
    HRESULT HRESULT_FROM_WIN32(DWORD code)
    # Same value as HRESULT_FROM_WIN32 but a constant expression on every
    # compiler (usable in C case labels and static initialisers).
    HRESULT MDSTREAM_HRESULT_FROM_WIN32(DWORD code)
    HRESULT MDSTREAM_FAILURE_HRESULT(unsigned int code)

    const DWORD ERROR_SUCCESS
    const DWORD ERROR_ACCESS_DENIED
    const DWORD ERROR_INVALID_HANDLE
    const DWORD ERROR_NOT_ENOUGH_MEMORY
    const DWORD ERROR_OUTOFMEMORY
    const DWORD ERROR_WRITE_FAULT
    const DWORD ERROR_HANDLE_DISK_FULL
    const DWORD ERROR_NOT_SUPPORTED
    const DWORD ERROR_INVALID_PARAMETER
    const DWORD ERROR_BROKEN_PIPE
    const DWORD ERROR_DISK_FULL
    const DWORD ERROR_NO_DATA
    const DWORD ERROR_PARTIAL_COPY
    const DWORD ERROR_OPERATION_ABORTED
    const DWORD ERROR_TIMEOUT

    # ---- callback types ----
    ctypedef enum MINIDUMP_CALLBACK_TYPE:
        ModuleCallback
        ThreadCallback
        ThreadExCallback
        IncludeThreadCallback
        IncludeModuleCallback
        MemoryCallback
        CancelCallback
        WriteKernelMinidumpCallback
        KernelMinidumpStatusCallback
        RemoveMemoryCallback
        IncludeVmRegionCallback
        IoStartCallback
        IoWriteAllCallback
        IoFinishCallback
        ReadMemoryFailureCallback
        SecondaryFlagsCallback
        IsProcessSnapshotCallback
        VmStartCallback
        VmQueryCallback
        VmPreReadCallback
        VmPostReadCallback

    ctypedef enum THREAD_WRITE_FLAGS:
        ThreadWriteThread
        ThreadWriteStack
        ThreadWriteContext
        ThreadWriteBackingStore
        ThreadWriteInstructionWindow
        ThreadWriteThreadData
        ThreadWriteThreadInfo

    ctypedef enum MODULE_WRITE_FLAGS:
        ModuleWriteModule
        ModuleWriteDataSeg
        ModuleWriteMiscRecord
        ModuleWriteCvRecord
        ModuleReferencedByMemory
        ModuleWriteTlsData
        ModuleWriteCodeSegs

    # ---- callback input members ----
    # Context is the thread's CONTEXT: opaque bytes in mdstream's own
    # declarations, the SDK's CONTEXT struct under MSVC (same size).  Take its
    # address or sizeof; copy it out with memcpy.
    ctypedef struct MINIDUMP_THREAD_CALLBACK:
        ULONG ThreadId
        HANDLE ThreadHandle
        ULONG Pad  # ARM64 only
        unsigned char Context[MDSTREAM_DBGHELP_CONTEXT_SIZE]
        ULONG SizeOfContext
        ULONG64 StackBase
        ULONG64 StackEnd
    ctypedef MINIDUMP_THREAD_CALLBACK *PMINIDUMP_THREAD_CALLBACK

    ctypedef struct MINIDUMP_THREAD_EX_CALLBACK:
        ULONG ThreadId
        HANDLE ThreadHandle
        ULONG Pad  # ARM64 only
        unsigned char Context[MDSTREAM_DBGHELP_CONTEXT_SIZE]
        ULONG SizeOfContext
        ULONG64 StackBase
        ULONG64 StackEnd
        ULONG64 BackingStoreBase
        ULONG64 BackingStoreEnd
    ctypedef MINIDUMP_THREAD_EX_CALLBACK *PMINIDUMP_THREAD_EX_CALLBACK

    ctypedef struct MINIDUMP_INCLUDE_THREAD_CALLBACK:
        ULONG ThreadId
    ctypedef MINIDUMP_INCLUDE_THREAD_CALLBACK *PMINIDUMP_INCLUDE_THREAD_CALLBACK

    ctypedef struct MINIDUMP_MODULE_CALLBACK:
        PWCHAR FullPath
        ULONG64 BaseOfImage
        ULONG SizeOfImage
        ULONG CheckSum
        ULONG TimeDateStamp
        VS_FIXEDFILEINFO VersionInfo
        PVOID CvRecord
        ULONG SizeOfCvRecord
        PVOID MiscRecord
        ULONG SizeOfMiscRecord
    ctypedef MINIDUMP_MODULE_CALLBACK *PMINIDUMP_MODULE_CALLBACK

    ctypedef struct MINIDUMP_INCLUDE_MODULE_CALLBACK:
        ULONG64 BaseOfImage
    ctypedef MINIDUMP_INCLUDE_MODULE_CALLBACK *PMINIDUMP_INCLUDE_MODULE_CALLBACK

    ctypedef struct MINIDUMP_IO_CALLBACK:
        HANDLE Handle
        ULONG64 Offset
        PVOID Buffer
        ULONG BufferBytes
    ctypedef MINIDUMP_IO_CALLBACK *PMINIDUMP_IO_CALLBACK

    ctypedef struct MINIDUMP_READ_MEMORY_FAILURE_CALLBACK:
        ULONG64 Offset
        ULONG Bytes
        HRESULT FailureStatus
    ctypedef MINIDUMP_READ_MEMORY_FAILURE_CALLBACK *PMINIDUMP_READ_MEMORY_FAILURE_CALLBACK

    ctypedef struct MINIDUMP_VM_QUERY_CALLBACK:
        ULONG64 Offset
    ctypedef MINIDUMP_VM_QUERY_CALLBACK *PMINIDUMP_VM_QUERY_CALLBACK

    ctypedef struct MINIDUMP_VM_PRE_READ_CALLBACK:
        ULONG64 Offset
        PVOID Buffer
        ULONG Size
    ctypedef MINIDUMP_VM_PRE_READ_CALLBACK *PMINIDUMP_VM_PRE_READ_CALLBACK

    ctypedef struct MINIDUMP_VM_POST_READ_CALLBACK:
        ULONG64 Offset
        PVOID Buffer
        ULONG Size
        ULONG Completed
        HRESULT Status
    ctypedef MINIDUMP_VM_POST_READ_CALLBACK *PMINIDUMP_VM_POST_READ_CALLBACK

    # The SDK's padding members __alignment1/__alignment2 are left out.
    ctypedef struct MINIDUMP_MEMORY_INFO:
        ULONG64 BaseAddress
        ULONG64 AllocationBase
        ULONG32 AllocationProtect
        ULONG64 RegionSize
        ULONG32 State
        ULONG32 Protect
        ULONG32 Type
    ctypedef MINIDUMP_MEMORY_INFO *PMINIDUMP_MEMORY_INFO

    # ---- the callback's input and output ----
    ctypedef struct MINIDUMP_CALLBACK_INPUT:
        ULONG ProcessId
        HANDLE ProcessHandle
        ULONG CallbackType
        # anonymous union
        HRESULT Status
        MINIDUMP_THREAD_CALLBACK Thread
        MINIDUMP_THREAD_EX_CALLBACK ThreadEx
        MINIDUMP_MODULE_CALLBACK Module
        MINIDUMP_INCLUDE_THREAD_CALLBACK IncludeThread
        MINIDUMP_INCLUDE_MODULE_CALLBACK IncludeModule
        MINIDUMP_IO_CALLBACK Io
        MINIDUMP_READ_MEMORY_FAILURE_CALLBACK ReadMemoryFailure
        ULONG SecondaryFlags
        MINIDUMP_VM_QUERY_CALLBACK VmQuery
        MINIDUMP_VM_PRE_READ_CALLBACK VmPreRead
        MINIDUMP_VM_POST_READ_CALLBACK VmPostRead
    ctypedef MINIDUMP_CALLBACK_INPUT *PMINIDUMP_CALLBACK_INPUT

    # One anonymous union: Status is at offset 0 with every other answer.
    ctypedef struct MINIDUMP_CALLBACK_OUTPUT:
        ULONG ModuleWriteFlags
        ULONG ThreadWriteFlags
        ULONG SecondaryFlags
        ULONG64 MemoryBase
        ULONG MemorySize
        BOOL CheckCancel
        BOOL Cancel
        HANDLE Handle
        MINIDUMP_MEMORY_INFO VmRegion
        BOOL Continue
        HRESULT VmQueryStatus
        MINIDUMP_MEMORY_INFO VmQueryResult
        HRESULT VmReadStatus
        ULONG VmReadBytesCompleted
        HRESULT Status
    ctypedef MINIDUMP_CALLBACK_OUTPUT *PMINIDUMP_CALLBACK_OUTPUT

    # ---- dump flags ----
    ctypedef enum MINIDUMP_TYPE:
        MiniDumpNormal
        MiniDumpWithDataSegs
        MiniDumpWithFullMemory
        MiniDumpWithHandleData
        MiniDumpFilterMemory
        MiniDumpScanMemory
        MiniDumpWithUnloadedModules
        MiniDumpWithIndirectlyReferencedMemory
        MiniDumpFilterModulePaths
        MiniDumpWithProcessThreadData
        MiniDumpWithPrivateReadWriteMemory
        MiniDumpWithoutOptionalData
        MiniDumpWithFullMemoryInfo
        MiniDumpWithThreadInfo
        MiniDumpWithCodeSegs
        MiniDumpWithoutAuxiliaryState
        MiniDumpWithFullAuxiliaryState
        MiniDumpWithPrivateWriteCopyMemory
        MiniDumpIgnoreInaccessibleMemory
        MiniDumpWithTokenInformation
        MiniDumpWithModuleHeaders
        MiniDumpFilterTriage
        MiniDumpWithAvxXStateContext
        MiniDumpWithIptTrace
        MiniDumpScanInaccessiblePartialPages
        MiniDumpFilterWriteCombinedMemory
        MiniDumpValidTypeFlags

    ctypedef enum MINIDUMP_SECONDARY_FLAGS:
        MiniSecondaryWithoutPowerInfo
        MiniSecondaryValidFlags

    # ---- the routine and MiniDumpWriteDump's parameter blocks ----
    # The C typedef is WINAPI (__stdcall on 32-bit Windows); a routine meant for
    # DbgHelp there must be defined in C with WINAPI (see callback.h).
    ctypedef BOOL (*MINIDUMP_CALLBACK_ROUTINE)(PVOID, PMINIDUMP_CALLBACK_INPUT, PMINIDUMP_CALLBACK_OUTPUT) noexcept nogil

    ctypedef struct MINIDUMP_CALLBACK_INFORMATION:
        MINIDUMP_CALLBACK_ROUTINE CallbackRoutine
        PVOID CallbackParam
    ctypedef MINIDUMP_CALLBACK_INFORMATION *PMINIDUMP_CALLBACK_INFORMATION

    ctypedef struct MINIDUMP_EXCEPTION_INFORMATION:
        DWORD ThreadId
        PEXCEPTION_POINTERS ExceptionPointers
        BOOL ClientPointers
    ctypedef MINIDUMP_EXCEPTION_INFORMATION *PMINIDUMP_EXCEPTION_INFORMATION

    ctypedef struct MINIDUMP_USER_STREAM:
        ULONG32 Type
        ULONG BufferSize
        PVOID Buffer
    ctypedef MINIDUMP_USER_STREAM *PMINIDUMP_USER_STREAM

    ctypedef struct MINIDUMP_USER_STREAM_INFORMATION:
        ULONG UserStreamCount
        PMINIDUMP_USER_STREAM UserStreamArray
    ctypedef MINIDUMP_USER_STREAM_INFORMATION *PMINIDUMP_USER_STREAM_INFORMATION
