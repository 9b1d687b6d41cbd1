/* wine/dbghelp_redirect.c - a MiniDumpWriteDump that gives Wine's writer the
 * callback I/O mode of native DbgHelp, for programs other than the harness
 * (the native watcher example, built for the Wine tests).
 *
 * Wine's dbghelp ignores IoStartCallback and writes hFile with
 * SetFilePointer(Ex) + WriteFile.  As in wine/harness.c (which documents the
 * technique and proves it byte-identical to Wine's own file), those three
 * imports of dbghelp.dll are replaced in its import address table, and every
 * WriteFile on the dump handle (NULL, as in native callback mode) becomes one
 * IoWriteAllCallback at the writer's file pointer; IoStartCallback comes
 * before the first file operation, IoFinishCallback after the writer
 * returned TRUE.  A callback that answers FALSE (or the wrong Status) fails
 * the write, so the writer fails, as native DbgHelp does.
 *
 * mds_wine_MiniDumpWriteDump has MiniDumpWriteDump's signature: pass it as
 * mds_watch_write_dump's write_fn.  One dump at a time per process.
 */
#ifndef _WIN32
#error "wine/dbghelp_redirect.c is Windows code: build it with mingw-w64"
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN 1
#endif
#include <windows.h>

#include "mdstream/callback.h"

#include <string.h>

BOOL WINAPI mds_wine_MiniDumpWriteDump(HANDLE process, DWORD pid, HANDLE file, MINIDUMP_TYPE type,
                                       PMINIDUMP_EXCEPTION_INFORMATION exception,
                                       PMINIDUMP_USER_STREAM_INFORMATION user_streams,
                                       PMINIDUMP_CALLBACK_INFORMATION callback);

typedef BOOL(WINAPI *write_dump_fn)(HANDLE, DWORD, HANDLE, MINIDUMP_TYPE, PMINIDUMP_EXCEPTION_INFORMATION,
                                    PMINIDUMP_USER_STREAM_INFORMATION, PMINIDUMP_CALLBACK_INFORMATION);
typedef BOOL(WINAPI *WriteFile_fn)(HANDLE, LPCVOID, DWORD, LPDWORD, LPOVERLAPPED);
typedef DWORD(WINAPI *SetFilePointer_fn)(HANDLE, LONG, PLONG, DWORD);
typedef BOOL(WINAPI *SetFilePointerEx_fn)(HANDLE, LARGE_INTEGER, PLARGE_INTEGER, DWORD);

static WriteFile_fn real_WriteFile;
static SetFilePointer_fn real_SetFilePointer;
static SetFilePointerEx_fn real_SetFilePointerEx;
static write_dump_fn real_write_dump;

static struct {
    int active;
    HANDLE process;
    DWORD pid;
    PMINIDUMP_CALLBACK_INFORMATION info;
    uint64_t pos, end;
    int started, failed;
    HRESULT failed_status;
} io;

static int deliver(ULONG type, uint64_t offset, const void *buffer, uint32_t length, HRESULT required) {
    MINIDUMP_CALLBACK_INPUT in;
    MINIDUMP_CALLBACK_OUTPUT out;
    BOOL ok;
    memset(&in, 0, sizeof in);
    in.ProcessId = io.pid;
    in.ProcessHandle = io.process;
    in.CallbackType = type;
    in.Io.Handle = NULL;
    in.Io.Offset = offset;
    in.Io.Buffer = (PVOID)buffer;
    in.Io.BufferBytes = length;
    memset(&out, 0, sizeof out);
    out.Status = E_NOTIMPL;
    ok = io.info->CallbackRoutine(io.info->CallbackParam, &in, &out);
    if (!ok || out.Status != required) {
        if (!io.failed) {
            io.failed = 1;
            io.failed_status = out.Status ? out.Status : E_FAIL;
        }
        return 0;
    }
    return 1;
}

static int start_io(void) {
    if (!io.started) {
        io.started = 1;
        deliver(IoStartCallback, 0, NULL, 0, S_FALSE);
    }
    return !io.failed;
}

static BOOL WINAPI hook_WriteFile(HANDLE h, LPCVOID buffer, DWORD length, LPDWORD written, LPOVERLAPPED overlapped) {
    uint64_t offset;
    if (!io.active || h != NULL) return real_WriteFile(h, buffer, length, written, overlapped);
    offset = overlapped ? ((uint64_t)overlapped->OffsetHigh << 32 | overlapped->Offset) : io.pos;
    if (written) *written = 0;
    if (!start_io() || !deliver(IoWriteAllCallback, offset, buffer, length, S_OK)) {
        SetLastError((DWORD)io.failed_status);
        return FALSE;
    }
    if (!overlapped) io.pos = offset + length;
    if (offset + length > io.end) io.end = offset + length;
    if (written) *written = length;
    return TRUE;
}

static int seek(int64_t distance, DWORD method, uint64_t *result) {
    int64_t base, target;
    switch (method) {
    case FILE_BEGIN: base = 0; break;
    case FILE_CURRENT: base = (int64_t)io.pos; break;
    case FILE_END: base = (int64_t)io.end; break;
    default: SetLastError(ERROR_INVALID_PARAMETER); return 0;
    }
    target = base + distance;
    if (target < 0) {
        SetLastError(ERROR_NEGATIVE_SEEK);
        return 0;
    }
    io.pos = (uint64_t)target;
    *result = io.pos;
    return 1;
}

static DWORD WINAPI hook_SetFilePointer(HANDLE h, LONG low, PLONG high, DWORD method) {
    int64_t distance;
    uint64_t result;
    if (!io.active || h != NULL) return real_SetFilePointer(h, low, high, method);
    if (!start_io()) {
        SetLastError((DWORD)io.failed_status);
        return INVALID_SET_FILE_POINTER;
    }
    distance = high ? (int64_t)(((uint64_t)(uint32_t)*high << 32) | (uint32_t)low) : (int64_t)low;
    if (!seek(distance, method, &result)) return INVALID_SET_FILE_POINTER;
    if (high) *high = (LONG)(result >> 32);
    SetLastError(NO_ERROR);
    return (DWORD)result;
}

static BOOL WINAPI hook_SetFilePointerEx(HANDLE h, LARGE_INTEGER distance, PLARGE_INTEGER new_pos, DWORD method) {
    uint64_t result;
    if (!io.active || h != NULL) return real_SetFilePointerEx(h, distance, new_pos, method);
    if (!start_io()) {
        SetLastError((DWORD)io.failed_status);
        return FALSE;
    }
    if (!seek(distance.QuadPart, method, &result)) return FALSE;
    if (new_pos) new_pos->QuadPart = (LONGLONG)result;
    return TRUE;
}

/* Replaces dbghelp.dll's imports of the three functions, whatever DLL they are bound to. */
static int hook_imports(HMODULE module) {
    uint8_t *base = (uint8_t *)module;
    IMAGE_DOS_HEADER *dos = (IMAGE_DOS_HEADER *)base;
    IMAGE_NT_HEADERS *nt;
    IMAGE_DATA_DIRECTORY dir;
    IMAGE_IMPORT_DESCRIPTOR *desc;
    int writes = 0, seeks = 0;
    if (dos->e_magic != IMAGE_DOS_SIGNATURE) return 0;
    nt = (IMAGE_NT_HEADERS *)(base + dos->e_lfanew);
    if (nt->Signature != IMAGE_NT_SIGNATURE) return 0;
    dir = nt->OptionalHeader.DataDirectory[IMAGE_DIRECTORY_ENTRY_IMPORT];
    if (dir.VirtualAddress == 0) return 0;
    for (desc = (IMAGE_IMPORT_DESCRIPTOR *)(base + dir.VirtualAddress); desc->Name; desc++) {
        IMAGE_THUNK_DATA *thunk = (IMAGE_THUNK_DATA *)(base + desc->FirstThunk);
        IMAGE_THUNK_DATA *names =
            (IMAGE_THUNK_DATA *)(base + (desc->OriginalFirstThunk ? desc->OriginalFirstThunk : desc->FirstThunk));
        for (; names->u1.AddressOfData; names++, thunk++) {
            const char *name;
            void *replacement = NULL;
            DWORD old;
            if (IMAGE_SNAP_BY_ORDINAL(names->u1.Ordinal)) continue;
            name = (const char *)((IMAGE_IMPORT_BY_NAME *)(base + names->u1.AddressOfData))->Name;
            if (strcmp(name, "WriteFile") == 0) replacement = (void *)hook_WriteFile, writes++;
            else if (strcmp(name, "SetFilePointer") == 0) replacement = (void *)hook_SetFilePointer, seeks++;
            else if (strcmp(name, "SetFilePointerEx") == 0) replacement = (void *)hook_SetFilePointerEx, seeks++;
            if (!replacement) continue;
            if (!VirtualProtect(&thunk->u1.Function, sizeof thunk->u1.Function, PAGE_READWRITE, &old)) return 0;
            thunk->u1.Function = (ULONG_PTR)(uintptr_t)replacement;
            VirtualProtect(&thunk->u1.Function, sizeof thunk->u1.Function, old, &old);
        }
    }
    return writes > 0 && seeks > 0;
}

static int setup(void) {
    HMODULE k32 = GetModuleHandleW(L"kernel32.dll");
    HMODULE dll;
    FARPROC p;
    if (real_write_dump) return 1;
    p = GetProcAddress(k32, "WriteFile");
    memcpy(&real_WriteFile, &p, sizeof p);
    p = GetProcAddress(k32, "SetFilePointer");
    memcpy(&real_SetFilePointer, &p, sizeof p);
    p = GetProcAddress(k32, "SetFilePointerEx");
    memcpy(&real_SetFilePointerEx, &p, sizeof p);
    dll = LoadLibraryW(L"dbghelp.dll");
    p = dll ? GetProcAddress(dll, "MiniDumpWriteDump") : NULL;
    if (!p || !real_WriteFile || !real_SetFilePointer || !real_SetFilePointerEx || !hook_imports(dll)) return 0;
    memcpy(&real_write_dump, &p, sizeof p);
    return 1;
}

BOOL WINAPI mds_wine_MiniDumpWriteDump(HANDLE process, DWORD pid, HANDLE file, MINIDUMP_TYPE type,
                                       PMINIDUMP_EXCEPTION_INFORMATION exception,
                                       PMINIDUMP_USER_STREAM_INFORMATION user_streams,
                                       PMINIDUMP_CALLBACK_INFORMATION callback) {
    BOOL ok;
    if (file != NULL || callback == NULL) { /* callback mode only */
        SetLastError(ERROR_INVALID_PARAMETER);
        return FALSE;
    }
    if (!setup()) {
        SetLastError(ERROR_NOT_SUPPORTED);
        return FALSE;
    }
    memset(&io, 0, sizeof io);
    io.process = process;
    io.pid = pid;
    io.info = callback;
    io.active = 1;
    ok = real_write_dump(process, pid, NULL, type, exception, user_streams, callback);
    io.active = 0;
    if (ok && !io.failed) {
        start_io(); /* an empty dump still starts */
        if (!io.failed) deliver(IoFinishCallback, 0, NULL, 0, S_OK);
    }
    if (io.failed) {
        SetLastError((DWORD)io.failed_status);
        return FALSE;
    }
    return ok;
}
