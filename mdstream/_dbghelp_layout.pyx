"""The DbgHelp callback structures and constants as this build compiled them.

Answers come from the C compiler (sizeof/offsetof over mdstream/dbghelp.h and
the constants through the shipped _dbghelp.pxd), so comparing them with
mdstream.dbghelp's reference tables and enums tests the header, the .pxd and
the Python mirror at once.
"""

from mdstream._dbghelp cimport *

cdef extern from *:
    """
    #include <stddef.h>
    #include "mdstream/dbghelp.h"

    typedef struct mdstream_dbghelp_layout_entry {
        const char *name;
        size_t value;
    } mdstream_dbghelp_layout_entry;

    /* Key spelling shared with mdstream/dbghelp.py: "sizeof NAME" and
     * "NAME.Member[.Field]", SDK names. */
    #define MDSTREAM_LAYOUT_SIZE_(T) {"sizeof " #T, sizeof(T)}
    #define MDSTREAM_LAYOUT_OFFSET_(T, m) {#T "." #m, offsetof(T, m)}

    static const mdstream_dbghelp_layout_entry mdstream_dbghelp_layout_table[] = {
        MDSTREAM_LAYOUT_SIZE_(VS_FIXEDFILEINFO),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_THREAD_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, ThreadId),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, ThreadHandle),
    #if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, Pad),
    #endif
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, Context),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, SizeOfContext),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, StackBase),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_CALLBACK, StackEnd),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_THREAD_EX_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, ThreadId),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, ThreadHandle),
    #if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_ARM64
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, Pad),
    #endif
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, Context),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, SizeOfContext),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, StackBase),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, StackEnd),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, BackingStoreBase),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_THREAD_EX_CALLBACK, BackingStoreEnd),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_MODULE_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, FullPath),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, BaseOfImage),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, SizeOfImage),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, CheckSum),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, TimeDateStamp),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, VersionInfo),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, CvRecord),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, SizeOfCvRecord),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, MiscRecord),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MODULE_CALLBACK, SizeOfMiscRecord),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_INCLUDE_THREAD_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_INCLUDE_THREAD_CALLBACK, ThreadId),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_INCLUDE_MODULE_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_INCLUDE_MODULE_CALLBACK, BaseOfImage),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_IO_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_IO_CALLBACK, Handle),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_IO_CALLBACK, Offset),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_IO_CALLBACK, Buffer),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_IO_CALLBACK, BufferBytes),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, Offset),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, Bytes),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_READ_MEMORY_FAILURE_CALLBACK, FailureStatus),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_VM_QUERY_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_QUERY_CALLBACK, Offset),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_VM_PRE_READ_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_PRE_READ_CALLBACK, Offset),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_PRE_READ_CALLBACK, Buffer),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_PRE_READ_CALLBACK, Size),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_VM_POST_READ_CALLBACK),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Offset),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Buffer),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Size),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Completed),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_VM_POST_READ_CALLBACK, Status),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_MEMORY_INFO),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, BaseAddress),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, AllocationBase),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, AllocationProtect),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, RegionSize),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, State),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, Protect),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_MEMORY_INFO, Type),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_CALLBACK_INPUT),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, ProcessId),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, ProcessHandle),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, CallbackType),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Status),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Thread),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, ThreadEx),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Module),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, IncludeThread),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, IncludeModule),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, ReadMemoryFailure),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, SecondaryFlags),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, VmQuery),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, VmPreRead),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, VmPostRead),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.Handle),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.Offset),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.Buffer),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INPUT, Io.BufferBytes),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_CALLBACK_OUTPUT),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, ModuleWriteFlags),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, ThreadWriteFlags),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, SecondaryFlags),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, MemoryBase),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, MemorySize),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, CheckCancel),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Cancel),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Handle),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmRegion),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Continue),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmQueryStatus),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmQueryResult),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmReadStatus),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, VmReadBytesCompleted),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_OUTPUT, Status),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_CALLBACK_INFORMATION),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INFORMATION, CallbackRoutine),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_CALLBACK_INFORMATION, CallbackParam),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_EXCEPTION_INFORMATION),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_EXCEPTION_INFORMATION, ThreadId),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_EXCEPTION_INFORMATION, ExceptionPointers),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_EXCEPTION_INFORMATION, ClientPointers),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_USER_STREAM),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_USER_STREAM, Type),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_USER_STREAM, BufferSize),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_USER_STREAM, Buffer),

        MDSTREAM_LAYOUT_SIZE_(MINIDUMP_USER_STREAM_INFORMATION),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_USER_STREAM_INFORMATION, UserStreamCount),
        MDSTREAM_LAYOUT_OFFSET_(MINIDUMP_USER_STREAM_INFORMATION, UserStreamArray),
    };

    #define mdstream_dbghelp_layout_count \
        (sizeof mdstream_dbghelp_layout_table / sizeof mdstream_dbghelp_layout_table[0])

    static size_t mdstream_dbghelp_input_align(void) {
    #if defined(__cplusplus)
        return alignof(MINIDUMP_CALLBACK_INPUT);
    #else
        return _Alignof(MINIDUMP_CALLBACK_INPUT);
    #endif
    }
    """
    ctypedef struct mdstream_dbghelp_layout_entry:
        const char *name
        size_t value
    const mdstream_dbghelp_layout_entry mdstream_dbghelp_layout_table[]
    const size_t mdstream_dbghelp_layout_count
    size_t mdstream_dbghelp_input_align()


def layout():
    """Return ``{"sizeof NAME": bytes, "NAME.Member[.Field]": offset}`` as compiled.

    Keys use the SDK names; all values are ints.  The ARM64-only
    ``MINIDUMP_THREAD_CALLBACK.Pad`` keys appear only on ARM64 builds.
    """
    cdef size_t i
    cdef dict result = {}
    for i in range(mdstream_dbghelp_layout_count):
        result[mdstream_dbghelp_layout_table[i].name.decode("ascii")] = mdstream_dbghelp_layout_table[i].value
    return result


def abi():
    """Return which Microsoft layout this build has: ``"x64"``, ``"x86"`` or ``"arm64"``."""
    if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X64:
        return "x64"
    if MDSTREAM_DBGHELP_ABI == MDSTREAM_DBGHELP_ABI_X86:
        return "x86"
    return "arm64"


def input_alignment():
    """Return the alignment of ``MINIDUMP_CALLBACK_INPUT`` as compiled (16 on x64/ARM64, 4 on x86)."""
    return mdstream_dbghelp_input_align()


def constants():
    """Return the C values of the enum, flag, HRESULT and Win32 error constants.

    Keys are the C spellings (``"E_FAIL"``, ``"MiniDumpWithFullMemory"``,
    ``"HRESULT_FROM_WIN32(ERROR_TIMEOUT)"``); HRESULTs are signed, as the C
    type is.  Read through the shipped ``_dbghelp.pxd``, so this also proves
    that the declarations compile against the header.
    """
    return {
        # MINIDUMP_CALLBACK_TYPE
        "ModuleCallback": <int>ModuleCallback,
        "ThreadCallback": <int>ThreadCallback,
        "ThreadExCallback": <int>ThreadExCallback,
        "IncludeThreadCallback": <int>IncludeThreadCallback,
        "IncludeModuleCallback": <int>IncludeModuleCallback,
        "MemoryCallback": <int>MemoryCallback,
        "CancelCallback": <int>CancelCallback,
        "WriteKernelMinidumpCallback": <int>WriteKernelMinidumpCallback,
        "KernelMinidumpStatusCallback": <int>KernelMinidumpStatusCallback,
        "RemoveMemoryCallback": <int>RemoveMemoryCallback,
        "IncludeVmRegionCallback": <int>IncludeVmRegionCallback,
        "IoStartCallback": <int>IoStartCallback,
        "IoWriteAllCallback": <int>IoWriteAllCallback,
        "IoFinishCallback": <int>IoFinishCallback,
        "ReadMemoryFailureCallback": <int>ReadMemoryFailureCallback,
        "SecondaryFlagsCallback": <int>SecondaryFlagsCallback,
        "IsProcessSnapshotCallback": <int>IsProcessSnapshotCallback,
        "VmStartCallback": <int>VmStartCallback,
        "VmQueryCallback": <int>VmQueryCallback,
        "VmPreReadCallback": <int>VmPreReadCallback,
        "VmPostReadCallback": <int>VmPostReadCallback,
        # MINIDUMP_TYPE
        "MiniDumpNormal": <int>MiniDumpNormal,
        "MiniDumpWithDataSegs": <int>MiniDumpWithDataSegs,
        "MiniDumpWithFullMemory": <int>MiniDumpWithFullMemory,
        "MiniDumpWithHandleData": <int>MiniDumpWithHandleData,
        "MiniDumpFilterMemory": <int>MiniDumpFilterMemory,
        "MiniDumpScanMemory": <int>MiniDumpScanMemory,
        "MiniDumpWithUnloadedModules": <int>MiniDumpWithUnloadedModules,
        "MiniDumpWithIndirectlyReferencedMemory": <int>MiniDumpWithIndirectlyReferencedMemory,
        "MiniDumpFilterModulePaths": <int>MiniDumpFilterModulePaths,
        "MiniDumpWithProcessThreadData": <int>MiniDumpWithProcessThreadData,
        "MiniDumpWithPrivateReadWriteMemory": <int>MiniDumpWithPrivateReadWriteMemory,
        "MiniDumpWithoutOptionalData": <int>MiniDumpWithoutOptionalData,
        "MiniDumpWithFullMemoryInfo": <int>MiniDumpWithFullMemoryInfo,
        "MiniDumpWithThreadInfo": <int>MiniDumpWithThreadInfo,
        "MiniDumpWithCodeSegs": <int>MiniDumpWithCodeSegs,
        "MiniDumpWithoutAuxiliaryState": <int>MiniDumpWithoutAuxiliaryState,
        "MiniDumpWithFullAuxiliaryState": <int>MiniDumpWithFullAuxiliaryState,
        "MiniDumpWithPrivateWriteCopyMemory": <int>MiniDumpWithPrivateWriteCopyMemory,
        "MiniDumpIgnoreInaccessibleMemory": <int>MiniDumpIgnoreInaccessibleMemory,
        "MiniDumpWithTokenInformation": <int>MiniDumpWithTokenInformation,
        "MiniDumpWithModuleHeaders": <int>MiniDumpWithModuleHeaders,
        "MiniDumpFilterTriage": <int>MiniDumpFilterTriage,
        "MiniDumpWithAvxXStateContext": <int>MiniDumpWithAvxXStateContext,
        "MiniDumpWithIptTrace": <int>MiniDumpWithIptTrace,
        "MiniDumpScanInaccessiblePartialPages": <int>MiniDumpScanInaccessiblePartialPages,
        "MiniDumpFilterWriteCombinedMemory": <int>MiniDumpFilterWriteCombinedMemory,
        "MiniDumpValidTypeFlags": <int>MiniDumpValidTypeFlags,
        # MINIDUMP_SECONDARY_FLAGS
        "MiniSecondaryWithoutPowerInfo": <int>MiniSecondaryWithoutPowerInfo,
        "MiniSecondaryValidFlags": <int>MiniSecondaryValidFlags,
        # THREAD_WRITE_FLAGS
        "ThreadWriteThread": <int>ThreadWriteThread,
        "ThreadWriteStack": <int>ThreadWriteStack,
        "ThreadWriteContext": <int>ThreadWriteContext,
        "ThreadWriteBackingStore": <int>ThreadWriteBackingStore,
        "ThreadWriteInstructionWindow": <int>ThreadWriteInstructionWindow,
        "ThreadWriteThreadData": <int>ThreadWriteThreadData,
        "ThreadWriteThreadInfo": <int>ThreadWriteThreadInfo,
        # MODULE_WRITE_FLAGS
        "ModuleWriteModule": <int>ModuleWriteModule,
        "ModuleWriteDataSeg": <int>ModuleWriteDataSeg,
        "ModuleWriteMiscRecord": <int>ModuleWriteMiscRecord,
        "ModuleWriteCvRecord": <int>ModuleWriteCvRecord,
        "ModuleReferencedByMemory": <int>ModuleReferencedByMemory,
        "ModuleWriteTlsData": <int>ModuleWriteTlsData,
        "ModuleWriteCodeSegs": <int>ModuleWriteCodeSegs,
        # HRESULTs
        "S_OK": <HRESULT>S_OK,
        "S_FALSE": <HRESULT>S_FALSE,
        "E_NOTIMPL": <HRESULT>E_NOTIMPL,
        "E_POINTER": <HRESULT>E_POINTER,
        "E_ABORT": <HRESULT>E_ABORT,
        "E_FAIL": <HRESULT>E_FAIL,
        "E_UNEXPECTED": <HRESULT>E_UNEXPECTED,
        "E_ACCESSDENIED": <HRESULT>E_ACCESSDENIED,
        "E_HANDLE": <HRESULT>E_HANDLE,
        "E_OUTOFMEMORY": <HRESULT>E_OUTOFMEMORY,
        "E_INVALIDARG": <HRESULT>E_INVALIDARG,
        "HRESULT_FROM_WIN32(ERROR_WRITE_FAULT)": HRESULT_FROM_WIN32(ERROR_WRITE_FAULT),
        "HRESULT_FROM_WIN32(ERROR_HANDLE_DISK_FULL)": HRESULT_FROM_WIN32(ERROR_HANDLE_DISK_FULL),
        "HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED)": HRESULT_FROM_WIN32(ERROR_NOT_SUPPORTED),
        "HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE)": HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE),
        "HRESULT_FROM_WIN32(ERROR_DISK_FULL)": HRESULT_FROM_WIN32(ERROR_DISK_FULL),
        "HRESULT_FROM_WIN32(ERROR_NO_DATA)": HRESULT_FROM_WIN32(ERROR_NO_DATA),
        "HRESULT_FROM_WIN32(ERROR_PARTIAL_COPY)": HRESULT_FROM_WIN32(ERROR_PARTIAL_COPY),
        "HRESULT_FROM_WIN32(ERROR_OPERATION_ABORTED)": HRESULT_FROM_WIN32(ERROR_OPERATION_ABORTED),
        "HRESULT_FROM_WIN32(ERROR_TIMEOUT)": HRESULT_FROM_WIN32(ERROR_TIMEOUT),
        # Win32 error codes
        "ERROR_SUCCESS": <DWORD>ERROR_SUCCESS,
        "ERROR_ACCESS_DENIED": <DWORD>ERROR_ACCESS_DENIED,
        "ERROR_INVALID_HANDLE": <DWORD>ERROR_INVALID_HANDLE,
        "ERROR_NOT_ENOUGH_MEMORY": <DWORD>ERROR_NOT_ENOUGH_MEMORY,
        "ERROR_OUTOFMEMORY": <DWORD>ERROR_OUTOFMEMORY,
        "ERROR_WRITE_FAULT": <DWORD>ERROR_WRITE_FAULT,
        "ERROR_HANDLE_DISK_FULL": <DWORD>ERROR_HANDLE_DISK_FULL,
        "ERROR_NOT_SUPPORTED": <DWORD>ERROR_NOT_SUPPORTED,
        "ERROR_INVALID_PARAMETER": <DWORD>ERROR_INVALID_PARAMETER,
        "ERROR_BROKEN_PIPE": <DWORD>ERROR_BROKEN_PIPE,
        "ERROR_DISK_FULL": <DWORD>ERROR_DISK_FULL,
        "ERROR_NO_DATA": <DWORD>ERROR_NO_DATA,
        "ERROR_PARTIAL_COPY": <DWORD>ERROR_PARTIAL_COPY,
        "ERROR_OPERATION_ABORTED": <DWORD>ERROR_OPERATION_ABORTED,
        "ERROR_TIMEOUT": <DWORD>ERROR_TIMEOUT,
    }
