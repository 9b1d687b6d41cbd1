/* Compiled (not run) by tests/test_mingw_layout.py with every compiler it can
 * find: x86_64/i686 mingw-w64, gcc -m32, an AArch64 cross gcc, the host C and
 * C++ compilers.  A clean -Werror compile proves that target's Microsoft
 * layout: the header's own static assertions run, and the ones below restate
 * the reference table (docs: dbghelp-io-callbacks.md) independently, so an
 * edit that moves a field and "fixes" the header's assertion to match still
 * fails here.  Only freestanding headers are used, so a multilib-less
 * gcc -m32 -ffreestanding can compile it too. */
#include "mdstream/dbghelp.h"

#if defined(__cplusplus)
#define CHECK(cond, msg) static_assert(cond, msg)
#else
#define CHECK(cond, msg) _Static_assert(cond, msg)
#endif

#if defined(__aarch64__) || defined(_M_ARM64)
#define REF(x64, x86, arm64) (arm64)
#elif defined(__x86_64__) || defined(_M_X64)
#define REF(x64, x86, arm64) (x64)
#elif defined(__i386__) || defined(_M_IX86)
#define REF(x64, x86, arm64) (x86)
#else
#error "no reference column for this target"
#endif

/* The reference table: x64, x86, ARM64. */
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, ProcessHandle) == REF(4, 4, 4), "INPUT.ProcessHandle");
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, CallbackType) == REF(12, 8, 12), "INPUT.CallbackType");
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, Status) == REF(16, 12, 16), "INPUT union (Status)");
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, Io) == REF(16, 12, 16), "INPUT union (Io)");
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, Io.Offset) == REF(24, 16, 24), "INPUT.Io.Offset");
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, Io.Buffer) == REF(32, 24, 32), "INPUT.Io.Buffer");
CHECK(offsetof(MINIDUMP_CALLBACK_INPUT, Io.BufferBytes) == REF(40, 28, 40), "INPUT.Io.BufferBytes");
CHECK(sizeof(MINIDUMP_IO_CALLBACK) == REF(28, 20, 28), "sizeof(MINIDUMP_IO_CALLBACK)");
CHECK(sizeof(MINIDUMP_CALLBACK_INPUT) == REF(1312, 772, 992), "sizeof(MINIDUMP_CALLBACK_INPUT)");
CHECK(offsetof(MINIDUMP_CALLBACK_OUTPUT, Status) == 0, "OUTPUT.Status");
CHECK(sizeof(MINIDUMP_CALLBACK_OUTPUT) == 52, "sizeof(MINIDUMP_CALLBACK_OUTPUT)");
CHECK(sizeof(MINIDUMP_EXCEPTION_INFORMATION) == REF(16, 12, 16), "sizeof(MINIDUMP_EXCEPTION_INFORMATION)");
CHECK(offsetof(MINIDUMP_EXCEPTION_INFORMATION, ExceptionPointers) == 4, "EXCEPTION_INFORMATION.ExceptionPointers");
CHECK(offsetof(MINIDUMP_EXCEPTION_INFORMATION, ClientPointers) == REF(12, 8, 12), "EXCEPTION_INFORMATION.ClientPointers");
CHECK(offsetof(MINIDUMP_USER_STREAM_INFORMATION, UserStreamArray) == 4, "USER_STREAM_INFORMATION.UserStreamArray");
CHECK(sizeof(MINIDUMP_USER_STREAM_INFORMATION) == REF(12, 8, 12), "sizeof(MINIDUMP_USER_STREAM_INFORMATION)");

/* HRESULT constants as 32-bit patterns. */
CHECK(S_OK == 0 && S_FALSE == 1, "S_OK/S_FALSE");
CHECK((unsigned)E_FAIL == 0x80004005u, "E_FAIL");
CHECK((unsigned)E_NOTIMPL == 0x80004001u, "E_NOTIMPL");
CHECK((unsigned)E_ABORT == 0x80004004u, "E_ABORT");
CHECK((unsigned)E_OUTOFMEMORY == 0x8007000Eu, "E_OUTOFMEMORY");
CHECK((unsigned)E_INVALIDARG == 0x80070057u, "E_INVALIDARG");
CHECK((unsigned)E_UNEXPECTED == 0x8000FFFFu, "E_UNEXPECTED");
CHECK((unsigned)MDSTREAM_HRESULT_FROM_WIN32(ERROR_TIMEOUT) == 0x800705B4u, "HRESULT_FROM_WIN32(ERROR_TIMEOUT)");
CHECK((unsigned)MDSTREAM_HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE) == 0x8007006Du, "HRESULT_FROM_WIN32(ERROR_BROKEN_PIPE)");
CHECK((unsigned)MDSTREAM_HRESULT_FROM_WIN32(ERROR_DISK_FULL) == 0x80070070u, "HRESULT_FROM_WIN32(ERROR_DISK_FULL)");
CHECK(VmPostReadCallback == 20 && IoWriteAllCallback == 12, "MINIDUMP_CALLBACK_TYPE values");
CHECK(MiniDumpValidTypeFlags == 0x01ffffff, "MiniDumpValidTypeFlags");

/* The SDK spellings consumers write, type-checked: anonymous unions, Status
 * at offset 0, the WINAPI routine typedef. */
static BOOL WINAPI check_routine(PVOID param, PMINIDUMP_CALLBACK_INPUT input, PMINIDUMP_CALLBACK_OUTPUT output) {
    (void)param;
    switch ((MINIDUMP_CALLBACK_TYPE)input->CallbackType) {
    case IoStartCallback:
        output->Status = S_FALSE;
        return TRUE;
    case IoWriteAllCallback:
        output->Status = input->Io.BufferBytes != 0 && input->Io.Buffer != NULL ? S_OK : E_INVALIDARG;
        return output->Status == S_OK;
    case IoFinishCallback:
        output->Status = input->Status == S_OK ? S_OK : HRESULT_FROM_WIN32(ERROR_TIMEOUT);
        return TRUE;
    case CancelCallback:
        output->CheckCancel = FALSE;
        output->Cancel = FALSE;
        return TRUE;
    case ThreadCallback:
        output->ThreadWriteFlags = (ULONG)ThreadWriteThread | (ULONG)ThreadWriteStack;
        return sizeof input->Thread.Context == MDSTREAM_DBGHELP_CONTEXT_SIZE && input->Thread.Context[0] == 0;
    default:
        return FALSE;
    }
}

MINIDUMP_CALLBACK_INFORMATION mdstream_layout_check_info = {check_routine, NULL};
MINIDUMP_TYPE mdstream_layout_check_type = MiniDumpWithFullMemory;
