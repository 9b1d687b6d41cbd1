/* wine/harness.c - Wine's real MiniDumpWriteDump, driven into mdstream's
 * callback exactly as native DbgHelp's callback I/O mode drives it.
 *
 * Native DbgHelp, given a MINIDUMP_CALLBACK_INFORMATION, first asks the
 * routine IoStartCallback (Status preset to E_NOTIMPL); a routine that answers
 * TRUE with S_FALSE receives every byte of the dump as IoWriteAllCallback
 * (Io.Offset, Io.Buffer, Io.BufferBytes, one call per write), then
 * IoFinishCallback.  Wine's dbghelp (8.x) ignores the I/O callbacks and writes
 * hFile itself with SetFilePointer(Ex) + WriteFile - while still calling the
 * routine for the other callback types.  This harness replaces those three
 * imports in dbghelp.dll's import address table, keeps the writer's file
 * pointer, and turns every WriteFile on the dump handle into one
 * IoWriteAllCallback at the current offset, through the same
 * MINIDUMP_CALLBACK_INFORMATION it hands to MiniDumpWriteDump.  IoStart comes
 * before the first file operation, IoFinish after MiniDumpWriteDump returned
 * TRUE.  The routine is mds_dump_callback; the ring is usually a file under
 * /dev/shm that a Linux process created and drains (Z:\dev\shm\NAME here).
 *
 * Ground truth, from the same MiniDumpWriteDump call:
 *   --tee FILE    hFile is a real file: the hooks also call Wine's real
 *                 SetFilePointer/WriteFile, so FILE is the dump Wine writes
 *                 itself (and the emulated offset is checked against the real
 *                 file pointer after every operation);
 *   --trace FILE  every write as MDTRACE1 (offset, length, bytes), recorded
 *                 here independently of the ring.
 * Without --tee, hFile is NULL, as in native callback mode.
 *
 * Usage:
 *   harness.exe dump --ring RING [--type FLAGS] [--target child|self] [--ballast MB]
 *                    [--tee FILE] [--trace FILE] [--exact] [--deadline S]
 *   harness.exe probe              Wine version, pids, the dbghelp imports it would hook,
 *                                  the callback declarations' sizes and offsets
 *   harness.exe child ...          (internal) the process being dumped
 * Prints one JSON object on stdout.  Exit status: 0 dump streamed, 1 dump
 * failed, 2 usage or setup error.
 *
 * Build: x86_64-w64-mingw32-gcc -std=gnu11 -O2 -I$(mdstream include) wine/harness.c $(core sources) -o harness.exe
 * and run with wine64; for x86, build with i686-w64-mingw32-gcc and run with
 * 32-bit Wine (/usr/lib/wine/wine).  wine/run.sh --arch x64|x86 does both.
 */
#ifndef _WIN32
#error "wine/harness.c is a Windows program: build it with mingw-w64 and run it under Wine (or Windows)"
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN 1
#endif

#include <windows.h>

#include "mdstream/atomics.h"
#include "mdstream/callback.h"
#include "mdstream/ring.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t mds_platform_pid(void); /* platform.h: the pid this process puts in rings */

typedef BOOL(WINAPI *MiniDumpWriteDump_fn)(HANDLE process, DWORD pid, HANDLE file, MINIDUMP_TYPE type,
                                           PMINIDUMP_EXCEPTION_INFORMATION exception,
                                           PMINIDUMP_USER_STREAM_INFORMATION user_streams,
                                           PMINIDUMP_CALLBACK_INFORMATION callback);
typedef BOOL(WINAPI *WriteFile_fn)(HANDLE, LPCVOID, DWORD, LPDWORD, LPOVERLAPPED);
typedef DWORD(WINAPI *SetFilePointer_fn)(HANDLE, LONG, PLONG, DWORD);
typedef BOOL(WINAPI *SetFilePointerEx_fn)(HANDLE, LARGE_INTEGER, PLARGE_INTEGER, DWORD);

static WriteFile_fn real_WriteFile;
static SetFilePointer_fn real_SetFilePointer;
static SetFilePointerEx_fn real_SetFilePointerEx;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "harness: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    ExitProcess(2);
}

/* ---- the MDTRACE1 recorder ------------------------------------------------------ */

typedef struct trace_out {
    HANDLE file;
    uint8_t *buf;
    size_t fill, size;
    uint64_t records;
    int failed;
} trace_out;

static void trace_flush(trace_out *t) {
    size_t done = 0;
    while (done < t->fill) {
        DWORD n = 0;
        DWORD chunk = (DWORD)(t->fill - done > 0x40000000u ? 0x40000000u : t->fill - done);
        if (!real_WriteFile(t->file, t->buf + done, chunk, &n, NULL) || n == 0) {
            t->failed = 1;
            break;
        }
        done += n;
    }
    t->fill = 0;
}

static void trace_put(trace_out *t, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    while (n > 0) {
        size_t room = t->size - t->fill, take = n < room ? n : room;
        memcpy(t->buf + t->fill, p, take);
        t->fill += take;
        p += take;
        n -= take;
        if (t->fill == t->size) trace_flush(t);
    }
}

static void trace_record(trace_out *t, uint64_t offset, const void *data, uint32_t length) {
    uint8_t header[16];
    int i;
    for (i = 0; i < 8; i++) header[i] = (uint8_t)(offset >> (8 * i));
    for (i = 0; i < 4; i++) header[8 + i] = (uint8_t)(length >> (8 * i));
    memset(header + 12, 0, 4);
    trace_put(t, header, sizeof header);
    trace_put(t, data, length);
    t->records++;
}

/* ---- the emulated callback I/O ---------------------------------------------------- */

static struct io_state {
    int active;                     /* hooks intercept the dump handle while set */
    HANDLE handle;                  /* hFile given to MiniDumpWriteDump: NULL, or the tee file */
    int tee;
    HANDLE process;                 /* for ProcessHandle / ProcessId in the callback input */
    DWORD pid;
    MINIDUMP_CALLBACK_INFORMATION *info;
    uint64_t pos, end;              /* the writer's file pointer and the file's size */
    int started, finished;
    int failed;                     /* a callback answered FALSE or the wrong Status */
    ULONG failed_type;
    BOOL failed_return;
    HRESULT failed_status;
    uint64_t writes, bytes, seeks, seek_backs, zero_writes, max_write;
    int pointer_mismatch;           /* tee: emulated offset != Wine's real file pointer */
    uint64_t mismatch_at;
    trace_out *trace;
} io;

static void fill_input(MINIDUMP_CALLBACK_INPUT *in, ULONG type) {
    memset(in, 0, sizeof *in);
    in->ProcessId = io.pid;
    in->ProcessHandle = io.process;
    in->CallbackType = type;
    in->Io.Handle = io.handle;
}

/* One callback, as DbgHelp makes it: fresh structures, Status preset to
 * E_NOTIMPL, through the routine pointer in the callback information. */
static int deliver(ULONG type, uint64_t offset, const void *buffer, uint32_t length, HRESULT required) {
    MINIDUMP_CALLBACK_INPUT in;
    MINIDUMP_CALLBACK_OUTPUT out;
    BOOL ok;
    fill_input(&in, type);
    in.Io.Offset = offset;
    in.Io.Buffer = (PVOID)buffer;
    in.Io.BufferBytes = length;
    memset(&out, 0, sizeof out);
    out.Status = E_NOTIMPL;
    ok = io.info->CallbackRoutine(io.info->CallbackParam, &in, &out);
    if (!ok || out.Status != required) {
        if (!io.failed) {
            io.failed = 1;
            io.failed_type = type;
            io.failed_return = ok;
            io.failed_status = out.Status;
        }
        return 0;
    }
    return 1;
}

static int start_io(void) {
    if (!io.started) {
        io.started = 1;
        /* Anything but TRUE + S_FALSE: native DbgHelp would write hFile itself. */
        deliver(IoStartCallback, 0, NULL, 0, S_FALSE);
    }
    return !io.failed;
}

/* tee: the real file pointer must be where the emulation says. */
static void check_pointer(void) {
    LARGE_INTEGER zero, cur;
    zero.QuadPart = 0;
    if (!io.tee || io.pointer_mismatch) return;
    if (!real_SetFilePointerEx(io.handle, zero, &cur, FILE_CURRENT) || (uint64_t)cur.QuadPart != io.pos) {
        io.pointer_mismatch = 1;
        io.mismatch_at = io.writes;
    }
}

static BOOL WINAPI hook_WriteFile(HANDLE h, LPCVOID buffer, DWORD length, LPDWORD written, LPOVERLAPPED overlapped) {
    uint64_t offset;
    if (!io.active || h != io.handle) return real_WriteFile(h, buffer, length, written, overlapped);
    offset = overlapped ? ((uint64_t)overlapped->OffsetHigh << 32 | overlapped->Offset) : io.pos;
    if (io.tee) {
        DWORD n = 0;
        if (!real_WriteFile(h, buffer, length, &n, overlapped) || n != length) io.pointer_mismatch = 1;
    }
    if (written) *written = 0;
    if (!start_io()) {
        SetLastError((DWORD)io.failed_status);
        return FALSE;
    }
    if (io.trace) trace_record(io.trace, offset, buffer, length);
    io.writes++;
    io.bytes += length;
    if (length == 0) io.zero_writes++;
    if (length > io.max_write) io.max_write = length;
    if (!deliver(IoWriteAllCallback, offset, buffer, length, S_OK)) {
        SetLastError((DWORD)io.failed_status);
        return FALSE;
    }
    if (!overlapped) io.pos = offset + length;
    if (offset + length > io.end) io.end = offset + length;
    if (written) *written = length;
    check_pointer();
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
    io.seeks++;
    if ((uint64_t)target < io.pos) io.seek_backs++;
    io.pos = (uint64_t)target;
    *result = io.pos;
    return 1;
}

static DWORD WINAPI hook_SetFilePointer(HANDLE h, LONG low, PLONG high, DWORD method) {
    int64_t distance;
    uint64_t result;
    if (!io.active || h != io.handle) return real_SetFilePointer(h, low, high, method);
    if (io.tee) {
        LONG high_copy = high ? *high : 0;
        real_SetFilePointer(h, low, high ? &high_copy : NULL, method);
    }
    if (!start_io()) {
        SetLastError((DWORD)io.failed_status);
        return INVALID_SET_FILE_POINTER;
    }
    distance = high ? (int64_t)(((uint64_t)(uint32_t)*high << 32) | (uint32_t)low) : (int64_t)low;
    if (!seek(distance, method, &result)) return INVALID_SET_FILE_POINTER;
    if (high) *high = (LONG)(result >> 32);
    SetLastError(NO_ERROR);
    check_pointer();
    return (DWORD)result;
}

static BOOL WINAPI hook_SetFilePointerEx(HANDLE h, LARGE_INTEGER distance, PLARGE_INTEGER new_pos, DWORD method) {
    uint64_t result;
    if (!io.active || h != io.handle) return real_SetFilePointerEx(h, distance, new_pos, method);
    if (io.tee) real_SetFilePointerEx(h, distance, NULL, method);
    if (!start_io()) {
        SetLastError((DWORD)io.failed_status);
        return FALSE;
    }
    if (!seek(distance.QuadPart, method, &result)) return FALSE;
    if (new_pos) new_pos->QuadPart = (LONGLONG)result;
    check_pointer();
    return TRUE;
}

/* ---- import address table patching ------------------------------------------------ */

typedef struct hook_spec {
    const char *name;
    void *replacement;
    void **original;
    int patched;
} hook_spec;

/* Replace every import of the named functions in `module`, whatever DLL it
 * is bound to (kernel32, kernelbase or an api-ms-win-* set). */
static int hook_module_imports(HMODULE module, hook_spec *hooks, int count, int dry_run, FILE *report) {
    uint8_t *base = (uint8_t *)module;
    IMAGE_DOS_HEADER *dos = (IMAGE_DOS_HEADER *)base;
    IMAGE_NT_HEADERS *nt;
    IMAGE_DATA_DIRECTORY dir;
    IMAGE_IMPORT_DESCRIPTOR *desc;
    int patched = 0;
    if (dos->e_magic != IMAGE_DOS_SIGNATURE) return -1;
    nt = (IMAGE_NT_HEADERS *)(base + dos->e_lfanew);
    if (nt->Signature != IMAGE_NT_SIGNATURE) return -1;
    dir = nt->OptionalHeader.DataDirectory[IMAGE_DIRECTORY_ENTRY_IMPORT];
    if (dir.VirtualAddress == 0) return 0;
    for (desc = (IMAGE_IMPORT_DESCRIPTOR *)(base + dir.VirtualAddress); desc->Name; desc++) {
        IMAGE_THUNK_DATA *thunk = (IMAGE_THUNK_DATA *)(base + desc->FirstThunk);
        IMAGE_THUNK_DATA *names =
            (IMAGE_THUNK_DATA *)(base + (desc->OriginalFirstThunk ? desc->OriginalFirstThunk : desc->FirstThunk));
        for (; names->u1.AddressOfData; names++, thunk++) {
            IMAGE_IMPORT_BY_NAME *by_name;
            int i;
            if (IMAGE_SNAP_BY_ORDINAL(names->u1.Ordinal)) continue;
            by_name = (IMAGE_IMPORT_BY_NAME *)(base + names->u1.AddressOfData);
            for (i = 0; i < count; i++) {
                DWORD old;
                if (strcmp((const char *)by_name->Name, hooks[i].name) != 0) continue;
                if (report)
                    fprintf(report, "%s\"%s!%s\"", patched ? ", " : "", (const char *)(base + desc->Name),
                            hooks[i].name);
                patched++;
                if (dry_run) continue;
                if (!VirtualProtect(&thunk->u1.Function, sizeof thunk->u1.Function, PAGE_READWRITE, &old))
                    die("VirtualProtect of the import table failed (error %lu)", GetLastError());
                if (*hooks[i].original == NULL) *hooks[i].original = (void *)(uintptr_t)thunk->u1.Function;
                thunk->u1.Function = (ULONG_PTR)(uintptr_t)hooks[i].replacement;
                VirtualProtect(&thunk->u1.Function, sizeof thunk->u1.Function, old, &old);
                hooks[i].patched++;
            }
        }
    }
    return patched;
}

static hook_spec g_hooks[3];

static void setup_hooks(hook_spec *hooks) {
    HMODULE k32 = GetModuleHandleW(L"kernel32.dll");
    FARPROC p;
    hooks[0].name = "WriteFile";
    hooks[0].replacement = (void *)hook_WriteFile;
    hooks[0].original = (void **)&real_WriteFile;
    hooks[1].name = "SetFilePointer";
    hooks[1].replacement = (void *)hook_SetFilePointer;
    hooks[1].original = (void **)&real_SetFilePointer;
    hooks[2].name = "SetFilePointerEx";
    hooks[2].replacement = (void *)hook_SetFilePointerEx;
    hooks[2].original = (void **)&real_SetFilePointerEx;
    /* Defaults for calls the hooks pass through before dbghelp's own imports
     * were seen (and for the tee and trace writers). */
    p = GetProcAddress(k32, "WriteFile");
    memcpy(&real_WriteFile, &p, sizeof p);
    p = GetProcAddress(k32, "SetFilePointer");
    memcpy(&real_SetFilePointer, &p, sizeof p);
    p = GetProcAddress(k32, "SetFilePointerEx");
    memcpy(&real_SetFilePointerEx, &p, sizeof p);
}

/* ---- the process being dumped ------------------------------------------------------- */

static uint8_t *g_ballast;

/* Committed memory whose 64-bit word i is splitmix64(i): incompressible, and
 * the test regenerates it to check the bytes found in a full-memory dump. */
static uint64_t splitmix64(uint64_t i) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void make_ballast(unsigned mb) {
    size_t words = ((size_t)mb << 20) / 8, i;
    uint64_t *p;
    if (mb == 0) return;
    g_ballast = (uint8_t *)VirtualAlloc(NULL, (size_t)mb << 20, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE);
    if (g_ballast == NULL) die("cannot allocate %u MiB of ballast", mb);
    p = (uint64_t *)g_ballast;
    for (i = 0; i < words; i++) p[i] = splitmix64(i);
}

/* The child reports its ballast's address through a small inherited section. */
static int run_child(int argc, char **argv) {
    unsigned ballast = 0;
    HANDLE ready = NULL, report = NULL, parent = NULL;
    int i;
    for (i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--ballast") == 0 && i + 1 < argc) ballast = (unsigned)strtoul(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--ready") == 0 && i + 1 < argc) ready = (HANDLE)(uintptr_t)strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--report") == 0 && i + 1 < argc) report = (HANDLE)(uintptr_t)strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--parent") == 0 && i + 1 < argc) parent = (HANDLE)(uintptr_t)strtoull(argv[++i], NULL, 0);
    }
    make_ballast(ballast);
    if (report) {
        uint64_t *slot = (uint64_t *)MapViewOfFile(report, FILE_MAP_WRITE, 0, 0, sizeof(uint64_t));
        if (slot) {
            *slot = (uint64_t)(uintptr_t)g_ballast;
            UnmapViewOfFile(slot);
        }
    }
    if (ready) SetEvent(ready);
    /* The parent terminates us after the dump; if it dies first, so do we. */
    if (parent) WaitForSingleObject(parent, INFINITE);
    else Sleep(600000);
    return 0;
}

typedef struct dump_thread_args {
    MiniDumpWriteDump_fn write_dump;
    HANDLE process, file;
    DWORD pid;
    MINIDUMP_TYPE type;
    BOOL ok;
    DWORD error;
    DWORD thread_id; /* the thread that called MiniDumpWriteDump */
} dump_thread_args;

static DWORD WINAPI dump_thread(LPVOID arg) {
    dump_thread_args *a = (dump_thread_args *)arg;
    io.active = 1;
    a->thread_id = GetCurrentThreadId();
    a->ok = a->write_dump(a->process, a->pid, a->file, a->type, NULL, NULL, io.info);
    a->error = a->ok ? 0 : GetLastError();
    io.active = 0;
    return 0;
}

/* ---- what the writer handed the routine -------------------------------------------
 * A hook in the callback context (mds_callback_hook: mds_dump_callback calls
 * it for every non-I/O callback, then gives its default answer) records the
 * fields of the ModuleCallback and ThreadCallback inputs that Wine's dbghelp
 * filled, read through mdstream's own declarations.  The test compares them
 * with the modules and threads of the dump Wine wrote: they agree only if the
 * writer and mdstream/dbghelp.h agree on the layout (the union's offset,
 * pointer sizes, the CONTEXT size) of this ABI.  Wine still calls
 * mds_dump_callback itself, through its WINAPI (__stdcall on x86) pointer. */

#define MAX_SEEN 64

static struct seen_inputs {
    unsigned modules, threads;           /* how many were seen (may exceed MAX_SEEN) */
    struct {
        uint64_t base;
        uint32_t size;
        char path[MAX_PATH * 3 + 1];     /* FullPath as UTF-8 */
    } module[MAX_SEEN];
    struct {
        uint32_t id, context_size;
        uint64_t stack_base, stack_end;
    } thread[MAX_SEEN];
} seen;

static int observe_input(void *unused, PMINIDUMP_CALLBACK_INPUT input, PMINIDUMP_CALLBACK_OUTPUT output) {
    (void)unused;
    (void)output;
    if (input->CallbackType == ModuleCallback) {
        if (seen.modules < MAX_SEEN) {
            const WCHAR *path = input->Module.FullPath;
            int n = 0, len = 0;
            seen.module[seen.modules].base = input->Module.BaseOfImage;
            seen.module[seen.modules].size = input->Module.SizeOfImage;
            if (path) {
                while (len < MAX_PATH && path[len]) len++;
                n = WideCharToMultiByte(CP_UTF8, 0, (LPCWCH)path, len, seen.module[seen.modules].path,
                                        (int)sizeof seen.module[0].path - 1, NULL, NULL);
            }
            seen.module[seen.modules].path[n > 0 ? n : 0] = '\0';
        }
        seen.modules++;
    } else if (input->CallbackType == ThreadCallback) {
        if (seen.threads < MAX_SEEN) {
            seen.thread[seen.threads].id = input->Thread.ThreadId;
            seen.thread[seen.threads].context_size = input->Thread.SizeOfContext;
            seen.thread[seen.threads].stack_base = input->Thread.StackBase;
            seen.thread[seen.threads].stack_end = input->Thread.StackEnd;
        }
        seen.threads++;
    }
    return -1; /* mds_dump_callback's default answer */
}

static void json_string(const char *s);

static void print_seen(void) {
    unsigned i;
    printf("\"seen_modules\": %u, \"modules\": [", seen.modules);
    for (i = 0; i < seen.modules && i < MAX_SEEN; i++) {
        printf("%s{\"base\": %llu, \"size\": %lu, \"path\": ", i ? ", " : "", (unsigned long long)seen.module[i].base,
               (unsigned long)seen.module[i].size);
        json_string(seen.module[i].path);
        printf("}");
    }
    printf("], \"seen_threads\": %u, \"threads\": [", seen.threads);
    for (i = 0; i < seen.threads && i < MAX_SEEN; i++)
        printf("%s{\"id\": %lu, \"context_size\": %lu, \"stack_base\": %llu, \"stack_end\": %llu}", i ? ", " : "",
               (unsigned long)seen.thread[i].id, (unsigned long)seen.thread[i].context_size,
               (unsigned long long)seen.thread[i].stack_base, (unsigned long long)seen.thread[i].stack_end);
    printf("], ");
}

/* ---- commands ------------------------------------------------------------------------- */

static HMODULE load_dbghelp(void) {
    HMODULE dll = LoadLibraryW(L"dbghelp.dll");
    if (dll == NULL) die("cannot load dbghelp.dll (error %lu)", GetLastError());
    return dll;
}

static int run_probe(void) {
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    FARPROC version = ntdll ? GetProcAddress(ntdll, "wine_get_version") : NULL;
    const char *wine = NULL;
    hook_spec hooks[3];
    HMODULE dll;
    memset(hooks, 0, sizeof hooks);
    setup_hooks(hooks);
    if (version) {
        const char *(__cdecl * get)(void);
        memcpy(&get, &version, sizeof get);
        wine = get();
    }
    dll = load_dbghelp();
    printf("{\"wine\": \"%s\", \"windows_pid\": %lu, \"ring_pid\": %u, \"pointer_bits\": %u, ",
           wine ? wine : "", (unsigned long)GetCurrentProcessId(), mds_platform_pid(), (unsigned)(sizeof(void *) * 8));
    /* The declarations this build hands Wine's writer (mdstream/dbghelp.h),
     * named as in mdstream.dbghelp's reference table. */
    printf("\"layout\": {\"sizeof MINIDUMP_CALLBACK_INPUT\": %u, \"MINIDUMP_CALLBACK_INPUT.CallbackType\": %u, "
           "\"MINIDUMP_CALLBACK_INPUT.Io.Offset\": %u, \"MINIDUMP_CALLBACK_INPUT.Io.BufferBytes\": %u, "
           "\"sizeof MINIDUMP_MODULE_CALLBACK\": %u, \"MINIDUMP_MODULE_CALLBACK.SizeOfImage\": %u, "
           "\"sizeof MINIDUMP_THREAD_CALLBACK\": %u, \"MINIDUMP_THREAD_CALLBACK.StackBase\": %u, "
           "\"sizeof MINIDUMP_CALLBACK_OUTPUT\": %u, \"sizeof MINIDUMP_CALLBACK_INFORMATION\": %u}, ",
           (unsigned)sizeof(MINIDUMP_CALLBACK_INPUT), (unsigned)offsetof(MINIDUMP_CALLBACK_INPUT, CallbackType),
           (unsigned)offsetof(MINIDUMP_CALLBACK_INPUT, Io.Offset),
           (unsigned)offsetof(MINIDUMP_CALLBACK_INPUT, Io.BufferBytes), (unsigned)sizeof(MINIDUMP_MODULE_CALLBACK),
           (unsigned)offsetof(MINIDUMP_MODULE_CALLBACK, SizeOfImage), (unsigned)sizeof(MINIDUMP_THREAD_CALLBACK),
           (unsigned)offsetof(MINIDUMP_THREAD_CALLBACK, StackBase), (unsigned)sizeof(MINIDUMP_CALLBACK_OUTPUT),
           (unsigned)sizeof(MINIDUMP_CALLBACK_INFORMATION));
    printf("\"imports\": [");
    hook_module_imports(dll, hooks, 3, 1, stdout);
    printf("]}\n");
    return 0;
}

static HANDLE create_output(const char *path) {
    WCHAR wide[MAX_PATH + 1];
    HANDLE h;
    if (!MultiByteToWideChar(CP_UTF8, 0, path, -1, wide, MAX_PATH)) die("bad path %s", path);
    h = CreateFileW(wide, GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
    if (h == INVALID_HANDLE_VALUE) die("cannot create %s (error %lu)", path, GetLastError());
    return h;
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static const char *const CALLBACK_NAMES[MDS_CALLBACK_TYPES] = {
    "ModuleCallback", "ThreadCallback", "ThreadExCallback", "IncludeThreadCallback", "IncludeModuleCallback",
    "MemoryCallback", "CancelCallback", "WriteKernelMinidumpCallback", "KernelMinidumpStatusCallback",
    "RemoveMemoryCallback", "IncludeVmRegionCallback", "IoStartCallback", "IoWriteAllCallback", "IoFinishCallback",
    "ReadMemoryFailureCallback", "SecondaryFlagsCallback", "IsProcessSnapshotCallback", "VmStartCallback",
    "VmQueryCallback", "VmPreReadCallback", "VmPostReadCallback"};

static int run_dump(int argc, char **argv) {
    const char *ring_name = NULL, *tee_path = NULL, *trace_path = NULL, *target = "child";
    unsigned long type = 0;
    unsigned ballast = 0;
    double deadline = 30.0;
    int exact = 0, i, rc, hooked;
    mds_ring ring;
    mds_error err;
    mds_callback_options options;
    static mds_callback_context ctx;
    static MINIDUMP_CALLBACK_INFORMATION info;
    trace_out trace;
    HMODULE dll;
    FARPROC proc;
    dump_thread_args args;
    PROCESS_INFORMATION child;
    HANDLE thread;
    uint64_t started, elapsed, ballast_address = 0;
    mds_callback_counters counters;

    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--ring") == 0 && i + 1 < argc) ring_name = argv[++i];
        else if (strcmp(a, "--type") == 0 && i + 1 < argc) type = strtoul(argv[++i], NULL, 0);
        else if (strcmp(a, "--target") == 0 && i + 1 < argc) target = argv[++i];
        else if (strcmp(a, "--ballast") == 0 && i + 1 < argc) ballast = (unsigned)strtoul(argv[++i], NULL, 0);
        else if (strcmp(a, "--tee") == 0 && i + 1 < argc) tee_path = argv[++i];
        else if (strcmp(a, "--trace") == 0 && i + 1 < argc) trace_path = argv[++i];
        else if (strcmp(a, "--deadline") == 0 && i + 1 < argc) deadline = atof(argv[++i]);
        else if (strcmp(a, "--exact") == 0) exact = 1;
        else die("unknown argument %s", a);
    }
    if (!ring_name) die("dump needs --ring RING");
    if (strcmp(target, "child") != 0 && strcmp(target, "self") != 0) die("--target is child or self");

    /* Setup, as a native agent does it at startup. */
    setup_hooks(g_hooks);
    dll = load_dbghelp();
    proc = GetProcAddress(dll, "MiniDumpWriteDump");
    if (proc == NULL) die("dbghelp.dll has no MiniDumpWriteDump");
    memcpy(&args.write_dump, &proc, sizeof proc);
    hooked = hook_module_imports(dll, g_hooks, 3, 0, NULL);
    if (g_hooks[0].patched == 0 || (g_hooks[1].patched + g_hooks[2].patched) == 0)
        die("dbghelp.dll does not import WriteFile and SetFilePointer(Ex): cannot redirect its writes");

    rc = mds_ring_attach(&ring, ring_name, &err);
    if (rc != MDS_OK) die("cannot attach ring %s: %s", ring_name, err.message);
    mds_callback_options_init(&options);
    options.deadline_ns = (uint64_t)(deadline * 1e9);
    if (exact) { /* records mirror the writes one for one (for trace comparisons) */
        options.coalesce = 0;
        options.publish_bytes = 0;
    }
    mds_callback_context_init(&ctx, &ring, &options);
    ctx.hook = observe_input;
    info.CallbackRoutine = mds_dump_callback;
    info.CallbackParam = &ctx;

    memset(&trace, 0, sizeof trace);
    if (trace_path) {
        trace.file = create_output(trace_path);
        trace.size = 1u << 20;
        trace.buf = (uint8_t *)malloc(trace.size);
        if (!trace.buf) die("out of memory");
        trace_put(&trace, "MDTRACE1", 8);
        io.trace = &trace;
    }

    memset(&child, 0, sizeof child);
    if (strcmp(target, "child") == 0) {
        WCHAR self[MAX_PATH], cmd[MAX_PATH + 128];
        STARTUPINFOW si;
        SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
        HANDLE ready = CreateEventW(&sa, TRUE, FALSE, NULL);
        HANDLE report = CreateFileMappingW(INVALID_HANDLE_VALUE, &sa, PAGE_READWRITE, 0, 4096, NULL);
        HANDLE parent = NULL, null_out;
        uint64_t *slot;
        if (!ready || !report || !GetModuleFileNameW(NULL, self, MAX_PATH) ||
            !DuplicateHandle(GetCurrentProcess(), GetCurrentProcess(), GetCurrentProcess(), &parent, SYNCHRONIZE, TRUE,
                             0))
            die("cannot prepare the child");
        _snwprintf(cmd, sizeof cmd / sizeof cmd[0],
                   L"\"%ls\" child --ballast %u --ready %llu --report %llu --parent %llu", self, ballast,
                   (unsigned long long)(uintptr_t)ready, (unsigned long long)(uintptr_t)report,
                   (unsigned long long)(uintptr_t)parent);
        cmd[sizeof cmd / sizeof cmd[0] - 1] = L'\0';
        /* The child must not hold our stdout: whoever reads it waits for EOF. */
        null_out = CreateFileW(L"NUL", GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE, &sa,
                               OPEN_EXISTING, 0, NULL);
        memset(&si, 0, sizeof si);
        si.cb = sizeof si;
        si.dwFlags = STARTF_USESTDHANDLES;
        si.hStdInput = si.hStdOutput = si.hStdError = null_out;
        if (!CreateProcessW(self, cmd, NULL, NULL, TRUE, 0, NULL, NULL, &si, &child))
            die("cannot start the child (error %lu)", GetLastError());
        if (null_out != INVALID_HANDLE_VALUE) CloseHandle(null_out);
        CloseHandle(parent);
        if (WaitForSingleObject(ready, 60000) != WAIT_OBJECT_0) die("the child did not get ready");
        CloseHandle(ready);
        slot = (uint64_t *)MapViewOfFile(report, FILE_MAP_READ, 0, 0, sizeof(uint64_t));
        if (slot) {
            ballast_address = *slot;
            UnmapViewOfFile(slot);
        }
        CloseHandle(report);
        args.process = child.hProcess;
        args.pid = child.dwProcessId;
    } else {
        make_ballast(ballast);
        ballast_address = (uint64_t)(uintptr_t)g_ballast;
        args.process = GetCurrentProcess();
        args.pid = GetCurrentProcessId();
    }

    io.tee = tee_path != NULL;
    io.handle = tee_path ? create_output(tee_path) : NULL;
    io.process = args.process;
    io.pid = args.pid;
    io.info = &info;
    args.file = io.handle;
    args.type = (MINIDUMP_TYPE)type;

    /* MiniDumpWriteDump on its own thread (a dumped thread cannot be the one
     * that writes); this thread waits. */
    started = mds_now_ns();
    thread = CreateThread(NULL, 0, dump_thread, &args, 0, NULL);
    if (!thread) die("cannot start the dump thread");
    WaitForSingleObject(thread, INFINITE);
    CloseHandle(thread);

    if (args.ok && !io.failed) {
        start_io(); /* an empty dump still starts */
        if (!io.failed) deliver(IoFinishCallback, 0, NULL, 0, S_OK);
        io.finished = !io.failed;
    }
    elapsed = mds_now_ns() - started;
    if (!io.finished && mds_ring_state(&ring) == MDS_STATE_OPEN) {
        HRESULT code = io.failed ? io.failed_status : (HRESULT)(args.error ? args.error : (DWORD)MDS_HRESULT_FAIL);
        mds_ring_abort(&ring, (int32_t)code, "MiniDumpWriteDump failed under Wine");
    }
    if (trace_path) {
        trace_flush(&trace);
        CloseHandle(trace.file);
        free(trace.buf);
    }
    if (io.tee) CloseHandle(io.handle);
    if (child.hProcess) {
        TerminateProcess(child.hProcess, 0);
        WaitForSingleObject(child.hProcess, 10000);
        CloseHandle(child.hProcess);
        CloseHandle(child.hThread);
    }

    mds_callback_read_counters(&ctx, &counters);
    printf("{\"ok\": %s, \"writer_returned\": %d, \"writer_error\": \"0x%08lX\", \"writes\": %llu, \"bytes\": %llu, "
           "\"size\": %llu, \"seeks\": %llu, \"seek_backs\": %llu, \"zero_writes\": %llu, \"max_write\": %llu, "
           "\"callback_writes\": %llu, \"callback_bytes\": %llu, \"highest_end\": %llu, \"seconds\": %.3f, "
           "\"target\": \"%s\", \"target_pid\": %lu, \"windows_pid\": %lu, \"writer_thread\": %lu, \"ring_pid\": %u, "
           "\"hooked\": %d, "
           "\"pointer_mismatch\": %d, \"trace_records\": %llu, \"trace_failed\": %d, \"ballast_address\": %llu, "
           "\"ballast_bytes\": %llu, ",
           io.finished ? "true" : "false", (int)args.ok, (unsigned long)args.error, (unsigned long long)io.writes,
           (unsigned long long)io.bytes, (unsigned long long)io.end, (unsigned long long)io.seeks,
           (unsigned long long)io.seek_backs, (unsigned long long)io.zero_writes, (unsigned long long)io.max_write,
           (unsigned long long)counters.writes, (unsigned long long)counters.bytes,
           (unsigned long long)counters.highest_end, (double)elapsed / 1e9, target, (unsigned long)args.pid,
           (unsigned long)GetCurrentProcessId(), (unsigned long)args.thread_id, mds_platform_pid(), hooked, io.pointer_mismatch,
           (unsigned long long)trace.records, trace.failed, (unsigned long long)ballast_address,
           (unsigned long long)ballast << 20);
    print_seen();
    printf("\"calls\": {");
    for (i = 0; i <= MDS_CALLBACK_TYPES; i++) {
        if (counters.calls[i] == 0) continue;
        printf("%s\"%s\": %llu", i ? ", " : "", i < MDS_CALLBACK_TYPES ? CALLBACK_NAMES[i] : "unknown",
               (unsigned long long)counters.calls[i]);
    }
    printf("}, \"failure\": ");
    if (io.failed) {
        printf("{\"callback\": \"%s\", \"returned\": %d, \"status\": \"0x%08lX\", \"reason\": ",
               io.failed_type < MDS_CALLBACK_TYPES ? CALLBACK_NAMES[io.failed_type] : "unknown", (int)io.failed_return,
               (unsigned long)(ULONG)io.failed_status);
        json_string(ctx.failed ? ctx.failure_reason : "");
        printf("}");
    } else {
        printf("null");
    }
    printf("}\n");
    fflush(stdout);
    mds_ring_close(&ring);
    return io.finished && !io.pointer_mismatch && !trace.failed ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "dump") == 0) return run_dump(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "probe") == 0) return run_probe();
    if (argc >= 2 && strcmp(argv[1], "child") == 0) return run_child(argc, argv);
    fprintf(stderr,
            "usage: harness.exe dump --ring RING [--type FLAGS] [--target child|self] [--ballast MB]\n"
            "                        [--tee FILE] [--trace FILE] [--exact] [--deadline S]\n"
            "       harness.exe probe\n");
    return 2;
}
