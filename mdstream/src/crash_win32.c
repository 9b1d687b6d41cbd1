#ifdef _WIN32
/* Windows crash capture: the handlers in the crashing process and the
 * watcher's side (mdstream/crash.h, docs/windows.md "Crash capture").
 *
 * Why this shape:
 *   - The dump is written by another process.  Microsoft's documentation of
 *     MiniDumpWriteDump says to call it from a separate process: a crashed
 *     process may hold the loader lock or the heap lock, and its own thread
 *     cannot be captured by a writer that runs on it.
 *   - The path a crash takes in the process touches only what install()
 *     prepared: a static block in a named section, pre-created events, the
 *     handler thread started at install and the watcher's process handle it
 *     opened when the watcher attached.  No allocation, no lock, no CRT
 *     call, no Python.  The only waits are WaitForSingleObject /
 *     WaitForMultipleObjects on those handles, each with a deadline.
 *   - The handler thread exists so the faulting thread (possibly on a stack
 *     that just overflowed) does the least: one SetEvent and one wait.  It
 *     also keeps a SYNCHRONIZE handle on the watcher, opened at attach time
 *     rather than at the crash, so a killed watcher ends the wait at once.
 *   - One crash is reported per process: the first thread to claim it wins;
 *     a second faulting thread waits for the first report (bounded), then
 *     lets its exception continue.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN 1
#endif

#include <windows.h>
#if defined(_MSC_VER)
#include <intrin.h> /* _AddressOfReturnAddress */
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdstream/crash.h"

#define NAME_PREFIX "Local\\mdstream-crash."
#define NAME_MAX_CHARS (sizeof NAME_PREFIX + MDS_CRASH_RENDEZVOUS_MAX + 16)

/* Codes that never reach the unhandled-exception filter: the heap manager
 * raises heap corruption where the filter is bypassed (Crashpad installs a
 * vectored handler for exactly this), and a /GS failure raised as an
 * exception (older CRTs) terminates without unwinding to it. */
#define STATUS_HEAP_CORRUPTION_ 0xC0000374u
#define STATUS_STACK_BUFFER_OVERRUN_ 0xC0000409u
/* Never ours, even with the error bit: C++ and CLR exceptions are thrown and
 * caught routinely (CPython's faulthandler skips them for the same reason). */
#define CXX_EXCEPTION_CODE 0xE06D7363u
#define CLR_EXCEPTION_CODE 0xE0434352u

static struct {
    volatile LONG installed;
    volatile LONG claimed;            /* thread id of the crash being reported, 0: none */
    uint32_t flags;
    DWORD timeout_ms;
    HANDLE section, crash_event, done_event, attach_event;
    HANDLE wake, handled, quit;       /* unnamed: faulting thread <-> handler thread */
    HANDLE thread;
    HANDLE watcher;                   /* SYNCHRONIZE on the attached watcher; owned by the handler thread */
    volatile mds_crash_win_block *block;
    LPTOP_LEVEL_EXCEPTION_FILTER previous_filter;
    PVOID vectored;
    _invalid_parameter_handler previous_invalid_parameter;
    _purecall_handler previous_purecall;
    void (*previous_abort)(int);
    int abort_installed;
    /* The crashes that are not exceptions get their record and context here:
     * static, so nothing is allocated and ClientPointers stay valid while the
     * watcher reads them. */
    EXCEPTION_RECORD record;
    CONTEXT context;
    EXCEPTION_POINTERS pointers;
} g;

static void set_error(char *error, size_t size, const char *what, DWORD code) {
    if (error && size) {
        if (code) snprintf(error, size, "%s (Windows error %lu)", what, (unsigned long)code);
        else snprintf(error, size, "%s", what);
    }
}

static int rendezvous_ok(const char *name) {
    size_t n = 0;
    if (!name) return 1;
    for (; name[n]; n++) {
        char c = name[n];
        if (n >= MDS_CRASH_RENDEZVOUS_MAX) return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return n > 0;
}

static void object_name(char *out, size_t size, const char *rendezvous, uint32_t pid, const char *suffix) {
    if (rendezvous) snprintf(out, size, NAME_PREFIX "%s.%s", rendezvous, suffix);
    else snprintf(out, size, NAME_PREFIX "%lu.%s", (unsigned long)pid, suffix);
}

static void copy_text(volatile char *dst, size_t size, const char *src) {
    size_t i = 0;
    if (src)
        for (; i + 1 < size && src[i]; i++) dst[i] = src[i];
    dst[i] = '\0';
}

/* ---- the crashing process -------------------------------------------------------------- */

static void close_handle(HANDLE *h) {
    if (*h) {
        CloseHandle(*h);
        *h = NULL;
    }
}

/* The handler thread: keeps the watcher's handle current, and on a crash
 * signals the watcher and waits for its answer, its end, or the deadline. */
static DWORD WINAPI handler_thread(LPVOID unused) {
    (void)unused;
    for (;;) {
        HANDLE events[3];
        DWORD which;
        /* attach before wake: WaitForMultipleObjects reports the lowest
         * signalled index, so a watcher that attached just before the crash
         * is known when the crash is handled (the loop comes back for it). */
        events[0] = g.quit;
        events[1] = g.attach_event;
        events[2] = g.wake;
        which = WaitForMultipleObjects(3, events, FALSE, INFINITE);
        if (which == WAIT_OBJECT_0) return 0;
        if (which == WAIT_OBJECT_0 + 1) {
            /* A (new) watcher attached: hold its process, so that its death ends a crash's wait. */
            DWORD pid = (DWORD)InterlockedCompareExchange((volatile LONG *)&g.block->watcher_pid, 0, 0);
            HANDLE h = pid ? OpenProcess(SYNCHRONIZE, FALSE, pid) : NULL;
            if (h || pid == 0) {
                close_handle(&g.watcher);
                g.watcher = h;
            }
            continue;
        }
        if (which != WAIT_OBJECT_0 + 2) {
            Sleep(10); /* a handle went bad: never spin */
            continue;
        }
        {
            /* A crash: the faulting thread filled the block. */
            volatile mds_crash_win_block *b = g.block;
            LONG outcome;
            ResetEvent(g.done_event);
            InterlockedExchange((volatile LONG *)&b->state, MDS_CRASH_WIN_CRASHED);
            if (!g.watcher) {
                outcome = MDS_CRASH_OUTCOME_NO_WATCHER;
            } else {
                HANDLE waits[2];
                DWORD r;
                waits[0] = g.done_event;
                waits[1] = g.watcher;
                SetEvent(g.crash_event);
                r = WaitForMultipleObjects(2, waits, FALSE, g.timeout_ms);
                if (r == WAIT_OBJECT_0) outcome = MDS_CRASH_OUTCOME_ANSWERED;
                else if (r == WAIT_OBJECT_0 + 1) outcome = MDS_CRASH_OUTCOME_WATCHER_GONE;
                else outcome = MDS_CRASH_OUTCOME_DEADLINE;
            }
            InterlockedExchange((volatile LONG *)&b->outcome, outcome);
            SetEvent(g.handled);
        }
    }
}

/* The faulting thread's part: claim, publish, wake, wait.  Returns 1 when
 * this thread's crash was handed over (whatever the watcher's outcome). */
static int report_crash(EXCEPTION_POINTERS *pointers, DWORD code, uint64_t address, uint32_t kind) {
    volatile mds_crash_win_block *b = g.block;
    DWORD self = GetCurrentThreadId();
    LONG owner = InterlockedCompareExchange(&g.claimed, (LONG)self, 0);
    /* The deadline plus a margin for the handler thread's own bookkeeping. */
    DWORD wait_ms = g.timeout_ms >= INFINITE - 2000 ? INFINITE : g.timeout_ms + 2000;
    if (owner != 0) {
        /* Another thread's crash is being reported (or this thread crashed
         * while reporting): wait for that report, then let this one go on. */
        if ((DWORD)owner != self) WaitForSingleObject(g.handled, wait_ms);
        return 0;
    }
    b->thread_id = self;
    b->exception_code = code;
    b->exception_address = address;
    b->exception_pointers = (uint64_t)(uintptr_t)pointers;
    b->kind = kind;
    MemoryBarrier(); /* the fields above before the handler thread publishes CRASHED */
    SetEvent(g.wake);
    WaitForSingleObject(g.handled, wait_ms);
    return 1;
}

/* The filter and the vectored handler are reached with the exception's own
 * record; the address is the faulting instruction. */
static uint64_t record_address(EXCEPTION_POINTERS *p) {
    return p && p->ExceptionRecord ? (uint64_t)(uintptr_t)p->ExceptionRecord->ExceptionAddress : 0;
}

static DWORD record_code(EXCEPTION_POINTERS *p) {
    return p && p->ExceptionRecord ? p->ExceptionRecord->ExceptionCode : 0;
}

static LONG WINAPI unhandled_filter(EXCEPTION_POINTERS *pointers) {
    DWORD code = record_code(pointers);
    if (g.installed) report_crash(pointers, code, record_address(pointers), MDS_CRASH_KIND_FILTER);
    if (g.previous_filter) return g.previous_filter(pointers);
    /* Crashpad's ending: the process ends with the exception code, without
     * the system's error reporting (or Wine's debugger) taking over. */
    TerminateProcess(GetCurrentProcess(), code);
    return EXCEPTION_EXECUTE_HANDLER;
}

/* CPython's faulthandler filter: only errors (both severity bits), and not
 * the C++ or CLR exceptions that programs throw and catch. */
static int is_fatal_code(DWORD code) {
    if ((code & 0xC0000000u) != 0xC0000000u) return 0;
    return code != CXX_EXCEPTION_CODE && code != CLR_EXCEPTION_CODE;
}

static LONG WINAPI vectored_handler(EXCEPTION_POINTERS *pointers) {
    DWORD code = record_code(pointers);
    if (!g.installed || !is_fatal_code(code)) return EXCEPTION_CONTINUE_SEARCH;
    if (code != STATUS_HEAP_CORRUPTION_ && code != STATUS_STACK_BUFFER_OVERRUN_) return EXCEPTION_CONTINUE_SEARCH;
    if (report_crash(pointers, code, record_address(pointers), MDS_CRASH_KIND_VECTORED))
        TerminateProcess(GetCurrentProcess(), code);
    return EXCEPTION_CONTINUE_SEARCH;
}

#if defined(_M_IX86) || defined(__i386__)
/* x86 RtlCaptureContext takes the caller's EIP, ESP and EBP from the caller's
 * EBP frame, which optimised code (GCC -O2, MSVC /Oy) does not keep: Wine's
 * faults on it.  The control registers are taken from this function's return
 * address instead (a stack walker starts from EIP and ESP). */
static __declspec(noinline) void capture_context(CONTEXT *c) {
    memset(c, 0, sizeof *c);
    c->ContextFlags = CONTEXT_CONTROL;
#if defined(_MSC_VER)
    {
        void **ret = (void **)_AddressOfReturnAddress();
        c->Eip = (DWORD)(uintptr_t)*ret;
        c->Esp = (DWORD)(uintptr_t)(ret + 1);
    }
#else
    {
        void **frame = (void **)__builtin_frame_address(0);
        c->Ebp = (DWORD)(uintptr_t)frame[0];
        c->Eip = (DWORD)(uintptr_t)__builtin_return_address(0);
        c->Esp = (DWORD)(uintptr_t)(frame + 2);
    }
#endif
}
#else
static void capture_context(CONTEXT *c) { RtlCaptureContext(c); }
#endif

/* abort(), a CRT invalid parameter, a pure call: no exception exists, so one
 * is made (in static storage) from this thread's context, as Crashpad does. */
static int report_synthetic(DWORD code, uint32_t kind) {
    LONG owner = InterlockedCompareExchange(&g.claimed, 0, 0);
    if (owner != 0) return report_crash(NULL, code, 0, kind); /* waits for the report in progress */
    /* Only the thread that will win the claim may fill the statics: claim
     * them with a separate CAS first (a losing thread just waits above). */
    {
        static volatile LONG filling;
        if (InterlockedCompareExchange(&filling, 1, 0) != 0) return report_crash(NULL, code, 0, kind);
    }
    capture_context(&g.context);
    memset(&g.record, 0, sizeof g.record);
    g.record.ExceptionCode = code;
    g.record.ExceptionFlags = EXCEPTION_NONCONTINUABLE;
#if defined(_M_X64) || defined(__x86_64__)
    g.record.ExceptionAddress = (PVOID)(uintptr_t)g.context.Rip;
#elif defined(_M_IX86) || defined(__i386__)
    g.record.ExceptionAddress = (PVOID)(uintptr_t)g.context.Eip;
#endif
    g.pointers.ExceptionRecord = &g.record;
    g.pointers.ContextRecord = &g.context;
    return report_crash(&g.pointers, code, (uint64_t)(uintptr_t)g.record.ExceptionAddress, kind);
}

static void __cdecl abort_handler(int signo) {
    (void)signo;
    if (g.installed) report_synthetic(MDS_CRASH_CODE_ABORT, MDS_CRASH_KIND_ABORT);
    /* Returning lets abort() go on: the CRT ends the process (exit code 3). */
}

static void __cdecl invalid_parameter_handler(const wchar_t *expression, const wchar_t *function,
                                              const wchar_t *file, unsigned int line, uintptr_t reserved) {
    if (g.installed) report_synthetic(MDS_CRASH_CODE_INVALID_PARAMETER, MDS_CRASH_KIND_INVALID_PARAMETER);
    if (g.previous_invalid_parameter) {
        g.previous_invalid_parameter(expression, function, file, line, reserved);
        return;
    }
    TerminateProcess(GetCurrentProcess(), MDS_CRASH_CODE_INVALID_PARAMETER);
}

static void __cdecl purecall_handler(void) {
    if (g.installed) report_synthetic(MDS_CRASH_CODE_PURECALL, MDS_CRASH_KIND_PURECALL);
    if (g.previous_purecall) g.previous_purecall();
    TerminateProcess(GetCurrentProcess(), MDS_CRASH_CODE_PURECALL);
}

static void release_objects(void) {
    if (g.block) UnmapViewOfFile((LPCVOID)g.block);
    g.block = NULL;
    close_handle(&g.section);
    close_handle(&g.crash_event);
    close_handle(&g.done_event);
    close_handle(&g.attach_event);
    close_handle(&g.wake);
    close_handle(&g.handled);
    close_handle(&g.quit);
    close_handle(&g.watcher);
}

static HANDLE named_event(const char *rendezvous, const char *suffix, BOOL manual_reset) {
    char name[NAME_MAX_CHARS];
    HANDLE h;
    object_name(name, sizeof name, rendezvous, GetCurrentProcessId(), suffix);
    h = CreateEventA(NULL, manual_reset, FALSE, name);
    /* An existing object of that name is someone else's (or a stale
     * install's): it must not carry this process's crash. */
    if (h && GetLastError() == ERROR_ALREADY_EXISTS) {
        CloseHandle(h);
        SetLastError(ERROR_ALREADY_EXISTS);
        return NULL;
    }
    return h;
}

int mds_crash_install(const mds_crash_config *config, char *error, size_t error_size) {
    char name[NAME_MAX_CHARS];
    const char *rendezvous;
    uint64_t timeout_ms;
    if (!config) {
        set_error(error, error_size, "no configuration", 0);
        return MDS_CRASH_ERR_ARG;
    }
    rendezvous = config->rendezvous;
    if (!rendezvous_ok(rendezvous)) {
        set_error(error, error_size, "the rendezvous name must be 1-64 characters of [A-Za-z0-9._-]", 0);
        return MDS_CRASH_ERR_ARG;
    }
    if (g.installed || g.thread) {
        set_error(error, error_size, "the crash handler is already installed", 0);
        return MDS_CRASH_ERR_ARG;
    }
    timeout_ms = config->timeout_ns ? (config->timeout_ns + 999999u) / 1000000u : 30000u;
    if (timeout_ms >= INFINITE) timeout_ms = INFINITE - 1; /* a deadline, always */
    memset(&g, 0, sizeof g);
    g.timeout_ms = (DWORD)timeout_ms;
    g.flags = config->windows_flags ? config->windows_flags : MDS_CRASH_WIN_DEFAULT;

    object_name(name, sizeof name, rendezvous, GetCurrentProcessId(), "block");
    g.section = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, sizeof(mds_crash_win_block), name);
    if (g.section && GetLastError() == ERROR_ALREADY_EXISTS) {
        CloseHandle(g.section);
        g.section = NULL;
        SetLastError(ERROR_ALREADY_EXISTS);
    }
    if (!g.section) {
        set_error(error, error_size, "cannot create the crash block (is the rendezvous name taken?)", GetLastError());
        release_objects();
        return MDS_CRASH_ERR_SYS;
    }
    g.block = (volatile mds_crash_win_block *)MapViewOfFile(g.section, FILE_MAP_ALL_ACCESS, 0, 0,
                                                            sizeof(mds_crash_win_block));
    g.crash_event = named_event(rendezvous, "crash", FALSE);
    g.done_event = named_event(rendezvous, "done", TRUE);
    g.attach_event = named_event(rendezvous, "attach", FALSE);
    g.wake = CreateEventA(NULL, FALSE, FALSE, NULL);
    g.handled = CreateEventA(NULL, TRUE, FALSE, NULL);
    g.quit = CreateEventA(NULL, TRUE, FALSE, NULL);
    if (!g.block || !g.crash_event || !g.done_event || !g.attach_event || !g.wake || !g.handled || !g.quit) {
        set_error(error, error_size, "cannot create the crash events (is the rendezvous name taken?)", GetLastError());
        release_objects();
        return MDS_CRASH_ERR_SYS;
    }
    g.block->version = MDS_CRASH_WIN_VERSION;
    g.block->size = (uint32_t)sizeof(mds_crash_win_block);
    g.block->pid = (uint32_t)GetCurrentProcessId();
    g.block->pointer_size = (uint32_t)sizeof(void *);
    g.block->timeout_ns = (uint64_t)g.timeout_ms * 1000000u;
    MemoryBarrier();
    g.block->magic = MDS_CRASH_WIN_MAGIC; /* last: a watcher that sees it sees the rest */

    /* Big enough for WaitForMultipleObjects and OpenProcess; reserved, not committed. */
    g.thread = CreateThread(NULL, 64 * 1024, handler_thread, NULL, STACK_SIZE_PARAM_IS_A_RESERVATION, NULL);
    if (!g.thread) {
        set_error(error, error_size, "cannot start the crash handler thread", GetLastError());
        release_objects();
        return MDS_CRASH_ERR_SYS;
    }
    InterlockedExchange(&g.installed, 1);
    if (g.flags & MDS_CRASH_WIN_FILTER) g.previous_filter = SetUnhandledExceptionFilter(unhandled_filter);
    if (g.flags & MDS_CRASH_WIN_VECTORED) g.vectored = AddVectoredExceptionHandler(1, vectored_handler);
    if (g.flags & MDS_CRASH_WIN_CRT) {
        g.previous_invalid_parameter = _set_invalid_parameter_handler(invalid_parameter_handler);
        g.previous_purecall = _set_purecall_handler(purecall_handler);
    }
    if (g.flags & MDS_CRASH_WIN_ABORT) {
        g.previous_abort = signal(SIGABRT, abort_handler);
        g.abort_installed = g.previous_abort != SIG_ERR;
    }
    return MDS_CRASH_OK;
}

int mds_crash_uninstall(void) {
    int had = 0;
    if (!g.installed) return 0;
    InterlockedExchange(&g.installed, 0);
    if (g.flags & MDS_CRASH_WIN_FILTER) {
        LPTOP_LEVEL_EXCEPTION_FILTER now = SetUnhandledExceptionFilter(g.previous_filter);
        if (now == unhandled_filter) had++;
        else SetUnhandledExceptionFilter(now); /* someone chained after us: leave theirs */
    }
    if (g.vectored) {
        RemoveVectoredExceptionHandler(g.vectored);
        had++;
    }
    if (g.flags & MDS_CRASH_WIN_CRT) {
        if (_set_invalid_parameter_handler(g.previous_invalid_parameter) == invalid_parameter_handler) had++;
        if (_set_purecall_handler(g.previous_purecall) == purecall_handler) had++;
    }
    if (g.abort_installed) {
        if (signal(SIGABRT, g.previous_abort) == abort_handler) had++;
    }
    SetEvent(g.quit);
    if (g.thread) {
        WaitForSingleObject(g.thread, 5000);
        CloseHandle(g.thread);
        g.thread = NULL;
    }
    release_objects();
    return had;
}

int mds_crash_is_installed(void) { return g.installed != 0; }

void mds_crash_set_connection(int sock, int memfd) {
    (void)sock; /* no fork on Windows */
    (void)memfd;
}

int mds_crash_win_block_copy(mds_crash_win_block *out) {
    if (!g.block || !out) return MDS_CRASH_ERR_ARG;
    memcpy(out, (const void *)g.block, sizeof *out);
    return MDS_CRASH_OK;
}

/* No alternate signal stacks on Windows: the handler thread has its own. */
int mds_crash_altstack_enter(void **stack, size_t *size) {
    *stack = NULL;
    *size = 0;
    return MDS_CRASH_ERR_UNSUPPORTED;
}
void mds_crash_altstack_leave(void *stack, size_t size) {
    (void)stack;
    (void)size;
}
int mds_crash_altstack_all_threads(uint32_t timeout_ms, uint32_t *covered, uint32_t *total) {
    (void)timeout_ms;
    *covered = *total = 0;
    return MDS_CRASH_ERR_UNSUPPORTED;
}
uint32_t mds_crash_altstack_release_all(uint32_t timeout_ms) {
    (void)timeout_ms;
    return 0;
}
uint32_t mds_crash_altstack_count(void) { return 0; }

/* ---- the watcher ------------------------------------------------------------------------- */

static int watch_fail(char *error, size_t size, int status, const char *what, DWORD code) {
    set_error(error, size, what, code);
    return status;
}

static HANDLE open_event(const char *rendezvous, uint32_t pid, const char *suffix) {
    char name[NAME_MAX_CHARS];
    object_name(name, sizeof name, rendezvous, pid, suffix);
    return OpenEventA(SYNCHRONIZE | EVENT_MODIFY_STATE, FALSE, name);
}

void mds_watch_close(mds_watch *w) {
    if (!w) return;
    if (w->block) UnmapViewOfFile((LPCVOID)w->block);
    w->block = NULL;
    close_handle(&w->section);
    close_handle(&w->crash_event);
    close_handle(&w->done_event);
    close_handle(&w->attach_event);
    close_handle(&w->process);
}

/* Same bitness on both sides: the exception pointers are read (by us and by
 * DbgHelp) in the process's layout, and a 64-bit DbgHelp writing a WoW64
 * process would describe its 64-bit view. */
static int same_bitness(HANDLE process) {
    BOOL mine = FALSE, theirs = FALSE;
    if (!IsWow64Process(GetCurrentProcess(), &mine) || !IsWow64Process(process, &theirs)) return 0;
    return mine == theirs;
}

int mds_watch_attach(mds_watch *w, uint32_t pid, const char *rendezvous, char *error, size_t error_size) {
    char name[NAME_MAX_CHARS];
    mds_crash_win_block copy;
    if (!w) return watch_fail(error, error_size, MDS_WATCH_ERR_ARG, "no watch", 0);
    memset(w, 0, sizeof *w);
    if (pid == 0 || !rendezvous_ok(rendezvous))
        return watch_fail(error, error_size, MDS_WATCH_ERR_ARG, "a pid and a valid rendezvous name are needed", 0);
    w->pid = pid;
    w->process = OpenProcess(PROCESS_QUERY_INFORMATION | PROCESS_VM_READ | PROCESS_DUP_HANDLE | SYNCHRONIZE, FALSE,
                             pid);
    if (!w->process) return watch_fail(error, error_size, MDS_WATCH_ERR_SYS, "cannot open the process", GetLastError());
    if (!same_bitness(w->process)) {
        mds_watch_close(w);
        return watch_fail(error, error_size, MDS_WATCH_ERR_ARG,
                          "the watcher and the process must both be 32-bit or both 64-bit", 0);
    }
    object_name(name, sizeof name, rendezvous, pid, "block");
    w->section = OpenFileMappingA(FILE_MAP_READ | FILE_MAP_WRITE, FALSE, name);
    if (w->section)
        w->block = (volatile mds_crash_win_block *)MapViewOfFile(w->section, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0,
                                                                 sizeof(mds_crash_win_block));
    w->crash_event = open_event(rendezvous, pid, "crash");
    w->done_event = open_event(rendezvous, pid, "done");
    w->attach_event = open_event(rendezvous, pid, "attach");
    if (!w->block || !w->crash_event || !w->done_event || !w->attach_event) {
        DWORD code = GetLastError();
        mds_watch_close(w);
        return watch_fail(error, error_size, MDS_WATCH_ERR_SYS,
                          "cannot open the process's crash objects (is its handler installed?)", code);
    }
    memcpy(&copy, (const void *)w->block, sizeof copy);
    if (copy.magic != MDS_CRASH_WIN_MAGIC || copy.version != MDS_CRASH_WIN_VERSION ||
        copy.size != sizeof(mds_crash_win_block) || copy.pid != pid || copy.pointer_size != sizeof(void *)) {
        mds_watch_close(w);
        return watch_fail(error, error_size, MDS_WATCH_ERR_PROTOCOL,
                          "the crash block is not an mdstream block of this process and version", 0);
    }
    InterlockedExchange((volatile LONG *)&w->block->watcher_pid, (LONG)GetCurrentProcessId());
    SetEvent(w->attach_event);
    return MDS_WATCH_OK;
}

/* Reads the process's EXCEPTION_POINTERS and the start of its record. */
static int read_exception(mds_watch *w, uint64_t address, DWORD *code, uint64_t *where) {
    EXCEPTION_POINTERS pointers;
    EXCEPTION_RECORD record;
    SIZE_T n = 0;
    if (address == 0 || address > (uint64_t)(uintptr_t)-1) return 0;
    if (!ReadProcessMemory(w->process, (LPCVOID)(uintptr_t)address, &pointers, sizeof pointers, &n) ||
        n != sizeof pointers)
        return 0;
    if (!pointers.ExceptionRecord || !pointers.ContextRecord) return 0;
    n = 0;
    if (!ReadProcessMemory(w->process, pointers.ExceptionRecord, &record, offsetof(EXCEPTION_RECORD, NumberParameters),
                           &n) ||
        n != offsetof(EXCEPTION_RECORD, NumberParameters))
        return 0;
    *code = record.ExceptionCode;
    *where = (uint64_t)(uintptr_t)record.ExceptionAddress;
    return 1;
}

static int thread_of_process(uint32_t thread_id, uint32_t pid) {
    HANDLE t = OpenThread(THREAD_QUERY_LIMITED_INFORMATION, FALSE, thread_id);
    DWORD owner;
    if (!t) t = OpenThread(THREAD_QUERY_INFORMATION, FALSE, thread_id);
    if (!t) return 0;
    owner = GetProcessIdOfThread(t);
    CloseHandle(t);
    return owner == pid;
}

int mds_watch_wait(mds_watch *w, uint32_t timeout_ms, mds_watch_crash *crash, char *error, size_t error_size) {
    HANDLE waits[2];
    DWORD r, code = 0;
    uint64_t address = 0;
    mds_crash_win_block copy;
    if (!w || !w->block || !crash) return watch_fail(error, error_size, MDS_WATCH_ERR_ARG, "not attached", 0);
    memset(crash, 0, sizeof *crash);
    waits[0] = w->crash_event;
    waits[1] = w->process;
    r = WaitForMultipleObjects(2, waits, FALSE, timeout_ms);
    if (r == WAIT_TIMEOUT) return MDS_WATCH_TIMEOUT;
    if (r == WAIT_OBJECT_0 + 1) return watch_fail(error, error_size, MDS_WATCH_EXITED, "the process ended", 0);
    if (r != WAIT_OBJECT_0) return watch_fail(error, error_size, MDS_WATCH_ERR_SYS, "waiting failed", GetLastError());
    if ((uint32_t)InterlockedCompareExchange((volatile LONG *)&w->block->state, MDS_CRASH_WIN_DUMPING,
                                             MDS_CRASH_WIN_CRASHED) != MDS_CRASH_WIN_CRASHED)
        return watch_fail(error, error_size, MDS_WATCH_ERR_PROTOCOL, "signalled, but the block holds no crash", 0);
    memcpy(&copy, (const void *)w->block, sizeof copy);
    if (copy.magic != MDS_CRASH_WIN_MAGIC || copy.pid != w->pid)
        return watch_fail(error, error_size, MDS_WATCH_ERR_PROTOCOL, "the crash block was overwritten", 0);
    if (!thread_of_process(copy.thread_id, w->pid))
        return watch_fail(error, error_size, MDS_WATCH_ERR_PROTOCOL, "the crashing thread is not the process's", 0);
    if (!read_exception(w, copy.exception_pointers, &code, &address))
        return watch_fail(error, error_size, MDS_WATCH_ERR_PROTOCOL,
                          "the exception pointers do not point at a readable exception in the process", 0);
    if (code != copy.exception_code)
        return watch_fail(error, error_size, MDS_WATCH_ERR_PROTOCOL,
                          "the exception record disagrees with the block's code", 0);
    crash->pid = w->pid;
    crash->thread_id = copy.thread_id;
    crash->exception_code = code;
    crash->kind = copy.kind;
    crash->exception_pointers = copy.exception_pointers;
    crash->exception_address = address;
    return MDS_WATCH_OK;
}

int mds_watch_write_dump(mds_watch *w, const mds_watch_crash *crash, uint32_t dump_type,
                         PMINIDUMP_USER_STREAM_INFORMATION user_streams, PMINIDUMP_CALLBACK_INFORMATION callback,
                         mds_minidump_write_fn write_fn, char *error, size_t error_size) {
    MINIDUMP_EXCEPTION_INFORMATION exception;
    BOOL ok;
    DWORD code;
    if (!w || !w->process || !crash || !callback)
        return watch_fail(error, error_size, MDS_WATCH_ERR_ARG, "not attached, or no crash or callback", 0);
    if (!write_fn) {
        HMODULE dll = LoadLibraryW(L"dbghelp.dll");
        FARPROC proc = dll ? GetProcAddress(dll, "MiniDumpWriteDump") : NULL;
        if (!proc) return watch_fail(error, error_size, MDS_WATCH_ERR_SYS, "no MiniDumpWriteDump", GetLastError());
        memcpy(&write_fn, &proc, sizeof write_fn);
    }
    exception.ThreadId = crash->thread_id;
    exception.ExceptionPointers = (PEXCEPTION_POINTERS)(uintptr_t)crash->exception_pointers;
    exception.ClientPointers = TRUE; /* the pointers are the crashed process's addresses */
    ok = write_fn(w->process, w->pid, NULL, (MINIDUMP_TYPE)dump_type, &exception, user_streams, callback);
    code = GetLastError();
    if (!ok) return watch_fail(error, error_size, MDS_WATCH_ERR_DUMP, "MiniDumpWriteDump failed", code);
    return MDS_WATCH_OK;
}

int mds_watch_release(mds_watch *w, uint32_t status, const char *report_id, const char *reason) {
    volatile mds_crash_win_block *b;
    if (!w || !w->block) return MDS_WATCH_ERR_ARG;
    b = w->block;
    b->status = status;
    copy_text(b->report_id, sizeof b->report_id, report_id);
    copy_text(b->reason, sizeof b->reason, reason);
    MemoryBarrier();
    InterlockedExchange((volatile LONG *)&b->state, MDS_CRASH_WIN_DONE);
    return SetEvent(w->done_event) ? MDS_WATCH_OK : MDS_WATCH_ERR_SYS;
}

#endif /* _WIN32 */
