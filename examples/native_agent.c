/* native_agent.c - a native crash handler that streams its minidump through an
 * mdstream ring into a Python (or any) consumer.  No Python in this process.
 *
 * The pattern (docs/embedding.md explains each step):
 *   1. at startup, while the process is healthy: attach the ring a monitor
 *      process created (or create it), initialise one mds_callback_context
 *      and one MINIDUMP_CALLBACK_INFORMATION, load dbghelp.dll;
 *   2. on a crash: hand that information to MiniDumpWriteDump with hFile NULL.
 *      DbgHelp calls mds_dump_callback: IoStartCallback (answered S_FALSE, so
 *      every byte goes through the callback), one IoWriteAllCallback per write
 *      (copied into the ring, offset-addressed), IoFinishCallback (the END
 *      record is written, then the callback waits for the consumer's commit:
 *      S_OK means the consumer verified the whole dump and made it durable);
 *   3. after the writer returns, ctx.failed / ctx.failure_status say what
 *      happened.  Success means the dump is safe: the process may exit.
 *      A ring carries one dump: make a new ring for the next one.
 *
 * Build (any OS; the C core is shipped inside the Python package):
 *   INC=$(python -c 'import mdstream; print(mdstream.get_include())')
 *   SRC=$(python -c 'import mdstream; print(" ".join(mdstream.get_source_files()))')
 *   cc -std=gnu11 -O2 -I"$INC" examples/native_agent.c $SRC -pthread -o native_agent
 *   x86_64-w64-mingw32-gcc -std=gnu11 -O2 -I"$INC" examples/native_agent.c $SRC -o native_agent.exe
 *
 * Usage:
 *   native_agent [options] RING DUMP_FILE     replay DUMP_FILE's bytes through the callback, as
 *                                             DbgHelp would write them (any OS: the Linux stand-in)
 *   native_agent [options] RING --pid PID     Windows: MiniDumpWriteDump of process PID
 *   native_agent [options] RING --crash       Windows: install the crash handler, then crash
 * Options:
 *   --create          create RING (a name or a path) instead of attaching to it (the consumer
 *                     may start first or later: mdstream drain waits for the ring); removed at the end
 *   --capacity N      ring capacity with --create (default 4 MiB)
 *   --chunk N         largest write of the replay (default 65536)
 *   --deadline S      longest wait of one write for ring space, seconds (default 30)
 *   --type FLAGS      Windows MINIDUMP_TYPE (default 0x1025: DataSegs|HandleData|UnloadedModules|...)
 * Exit status: 0 dump streamed, 1 dump failed, 2 usage or setup error.
 */
#include "mdstream/atomics.h"
#include "mdstream/callback.h"
#include "mdstream/ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <time.h>
#endif

/* ---- agent state: everything the crash path needs, set up in advance ------- */

static mds_ring g_ring;
static mds_callback_context g_ctx;
static MINIDUMP_CALLBACK_INFORMATION g_info;
static int g_created;
static char g_ring_name[512];

static int agent_init(const char *ring_name, int create, uint64_t capacity, double deadline_s) {
    mds_error err;
    mds_callback_options options;
    int rc;

    if (create) rc = mds_ring_create(&g_ring, ring_name, capacity, &err);
    else rc = mds_ring_attach(&g_ring, ring_name, &err);
    if (rc != MDS_OK) {
        fprintf(stderr, "native_agent: cannot %s ring %s: %s (%s)\n", create ? "create" : "attach", ring_name,
                err.message, mds_status_name(rc));
        return rc;
    }
    g_created = create;
    snprintf(g_ring_name, sizeof g_ring_name, "%s", ring_name);

    /* The defaults are Breakpad's answers (docs/callback.md); only the wait
     * for ring space is tuned here.  coalesce=1 and publish_bytes=64 KiB are
     * the fast defaults: the consumer reassembles the same bytes either way. */
    mds_callback_options_init(&options);
    options.deadline_ns = (uint64_t)(deadline_s * 1e9);
    mds_callback_context_init(&g_ctx, &g_ring, &options);

    g_info.CallbackRoutine = mds_dump_callback;
    g_info.CallbackParam = &g_ctx;
    return MDS_OK;
}

/* After the writer returned: did the whole dump reach the ring? */
static int report(const char *writer, int writer_ok) {
    mds_callback_counters counters;
    mds_callback_read_counters(&g_ctx, &counters);
    if (g_ctx.failed) {
        fprintf(stderr, "native_agent: %s failed: HRESULT 0x%08lX: %s\n", writer, (unsigned long)(ULONG)g_ctx.failure_status,
                g_ctx.failure_reason);
        return 1;
    }
    if (!writer_ok || !g_ctx.finished) {
        fprintf(stderr, "native_agent: %s did not complete the dump (%s)\n", writer,
                writer_ok ? "no IoFinishCallback: this writer ignores callback I/O" : "the writer failed");
        mds_ring_abort(&g_ring, (int32_t)MDS_HRESULT_FAIL, "native agent: dump failed"); /* never COMMITTED: a no-op if committed */
        return 1;
    }
    printf("native_agent: streamed %llu bytes in %llu writes (dump size %llu) into %s\n",
           (unsigned long long)counters.bytes, (unsigned long long)counters.writes,
           (unsigned long long)counters.highest_end, g_ring_name);
    return 0;
}

/* Success already means the consumer committed: nothing to wait for. */
static void agent_close(void) {
    mds_ring_close(&g_ring);
    if (g_created) mds_ring_unlink(g_ring_name, NULL);
}

/* ---- the writer: DbgHelp on Windows ------------------------------------------ */

#ifdef _WIN32
/* mingw's <dbghelp.h> cannot share a translation unit with mdstream's (its
 * callback layouts are wrong), so the one function needed is declared here. */
typedef BOOL(WINAPI *MiniDumpWriteDump_fn)(HANDLE process, DWORD pid, HANDLE file, MINIDUMP_TYPE type,
                                           PMINIDUMP_EXCEPTION_INFORMATION exception,
                                           PMINIDUMP_USER_STREAM_INFORMATION user_streams,
                                           PMINIDUMP_CALLBACK_INFORMATION callback);
static MiniDumpWriteDump_fn g_write_dump;
static MINIDUMP_TYPE g_dump_type = (MINIDUMP_TYPE)(MiniDumpWithDataSegs | MiniDumpWithHandleData |
                                                   MiniDumpWithUnloadedModules | MiniDumpWithThreadInfo);

/* Crash path state: a dumper thread made at startup waits for the crashing
 * thread's exception pointers (dumping from the crashing thread itself is
 * unreliable: its stack and locks are suspect). */
static HANDLE g_crash_event, g_done_event;
static MINIDUMP_EXCEPTION_INFORMATION g_exception;
static int g_result = 1;
static int *volatile g_null; /* what --crash dereferences */

static int load_dbghelp(void) {
    HMODULE dll = LoadLibraryW(L"dbghelp.dll"); /* at startup, never in the crash path */
    FARPROC proc = dll ? GetProcAddress(dll, "MiniDumpWriteDump") : NULL;
    if (proc == NULL) {
        fprintf(stderr, "native_agent: dbghelp.dll!MiniDumpWriteDump not found (error %lu)\n", GetLastError());
        return 0;
    }
    memcpy(&g_write_dump, &proc, sizeof g_write_dump);
    return 1;
}

static int dump_process(HANDLE process, DWORD pid, PMINIDUMP_EXCEPTION_INFORMATION exception) {
    BOOL ok = g_write_dump(process, pid, NULL /* hFile: all I/O goes to the callback */, g_dump_type, exception, NULL,
                           &g_info);
    if (!ok && !g_ctx.failed)
        fprintf(stderr, "native_agent: MiniDumpWriteDump: GetLastError 0x%08lX\n", (unsigned long)GetLastError());
    return report("MiniDumpWriteDump", ok);
}

static DWORD WINAPI dumper_thread(LPVOID unused) {
    (void)unused;
    WaitForSingleObject(g_crash_event, INFINITE);
    g_result = dump_process(GetCurrentProcess(), GetCurrentProcessId(), &g_exception);
    SetEvent(g_done_event);
    return 0;
}

static LONG WINAPI crash_filter(EXCEPTION_POINTERS *pointers) {
    g_exception.ThreadId = GetCurrentThreadId();
    g_exception.ExceptionPointers = (PEXCEPTION_POINTERS)pointers;
    g_exception.ClientPointers = FALSE;
    SetEvent(g_crash_event);
    WaitForSingleObject(g_done_event, INFINITE);
    agent_close();
    /* A crashed process does not exit 0, and does not run DLL detach code
     * (ExitProcess would) with its state suspect: terminate. */
    TerminateProcess(GetCurrentProcess(), g_result == 0 ? 3u : 1u);
    return EXCEPTION_EXECUTE_HANDLER;
}

static int install_crash_handler(void) {
    g_crash_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    g_done_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!g_crash_event || !g_done_event || !CreateThread(NULL, 0, dumper_thread, NULL, 0, NULL)) return 0;
    SetUnhandledExceptionFilter(crash_filter);
    return 1;
}
#endif /* _WIN32 */

/* ---- the Linux stand-in: replay a dump file's bytes ------------------------------ */

/* Reads DUMP_FILE and has the DbgHelp simulator call the callback on this
 * thread exactly as DbgHelp does: IoStart with E_NOTIMPL preset, one
 * IoWriteAll per write, IoFinish.  Like a real writer it writes the body first
 * and seeks back to the header last, in chunks of at most `chunk` bytes. */
static int replay_file(const char *path, uint32_t chunk) {
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long size;
    uint64_t *offsets = NULL, *sources = NULL;
    uint32_t *lengths = NULL;
    uint64_t count = 0, pos, header, n;
    mds_simulation sim;
    int rc = 2;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "native_agent: cannot read %s\n", path);
        goto out;
    }
    data = (uint8_t *)malloc(size ? (size_t)size : 1);
    if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "native_agent: cannot read %s\n", path);
        goto out;
    }
    header = (uint64_t)size < 32 ? (uint64_t)size : 32; /* MINIDUMP_HEADER */
    n = ((uint64_t)size - header + chunk - 1) / chunk + 1;
    offsets = (uint64_t *)calloc(n, sizeof *offsets);
    sources = (uint64_t *)calloc(n, sizeof *sources);
    lengths = (uint32_t *)calloc(n, sizeof *lengths);
    if (!offsets || !sources || !lengths) goto out;
    for (pos = header; pos < (uint64_t)size; pos += chunk, count++) {
        offsets[count] = sources[count] = pos;
        lengths[count] = (uint32_t)((uint64_t)size - pos < chunk ? (uint64_t)size - pos : chunk);
    }
    offsets[count] = sources[count] = 0; /* seek back: the header last */
    lengths[count++] = (uint32_t)header;

    memset(&sim, 0, sizeof sim);
    sim.routine = mds_dump_callback; /* exactly what MiniDumpWriteDump gets in g_info */
    sim.param = g_info.CallbackParam;
    sim.buffer = data;
    sim.buffer_size = (uint64_t)size;
    sim.offsets = offsets;
    sim.lengths = lengths;
    sim.sources = sources;
    sim.count = count;
    mds_simulation_run(&sim); /* on this thread; mds_simulation_start would use a new one */
    rc = report("the replay", sim.succeeded);
out:
    if (f) fclose(f);
    free(data);
    free(offsets);
    free(sources);
    free(lengths);
    return rc;
}

static void usage(void) {
    fprintf(stderr,
            "usage: native_agent [--create] [--capacity N] [--chunk N] [--deadline S] [--type FLAGS] RING DUMP_FILE\n"
            "       native_agent [options] RING --pid PID | --crash    (Windows)\n");
}

int main(int argc, char **argv) {
    int create = 0, i, rc;
    uint64_t capacity = 4u << 20;
    unsigned long chunk = 65536;
    double deadline = 30.0;
    const char *ring_name = NULL, *dump_file = NULL;
    unsigned long pid = 0;
    int crash = 0;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--create") == 0) create = 1;
        else if (strcmp(a, "--capacity") == 0 && i + 1 < argc) capacity = strtoull(argv[++i], NULL, 0);
        else if (strcmp(a, "--chunk") == 0 && i + 1 < argc) chunk = strtoul(argv[++i], NULL, 0);
        else if (strcmp(a, "--deadline") == 0 && i + 1 < argc) deadline = atof(argv[++i]);
        else if (strcmp(a, "--pid") == 0 && i + 1 < argc) pid = strtoul(argv[++i], NULL, 0);
        else if (strcmp(a, "--crash") == 0) crash = 1;
#ifdef _WIN32
        else if (strcmp(a, "--type") == 0 && i + 1 < argc) g_dump_type = (MINIDUMP_TYPE)strtoul(argv[++i], NULL, 0);
#else
        else if (strcmp(a, "--type") == 0 && i + 1 < argc) ++i; /* DbgHelp only */
#endif
        else if (a[0] == '-' && a[1] == '-') {
            usage();
            return 2;
        } else if (!ring_name) ring_name = a;
        else if (!dump_file) dump_file = a;
        else {
            usage();
            return 2;
        }
    }
    if (!ring_name || chunk == 0 || chunk > 0xFFFFFFFFul || (!dump_file && !pid && !crash)) {
        usage();
        return 2;
    }
    if (agent_init(ring_name, create, capacity, deadline) != MDS_OK) return 2;

    if (dump_file) {
        rc = replay_file(dump_file, (uint32_t)chunk);
    } else {
#ifdef _WIN32
        if (!load_dbghelp()) {
            agent_close();
            return 2;
        }
        if (crash) {
            if (!install_crash_handler()) {
                agent_close();
                return 2;
            }
            *g_null = 1; /* the crash; crash_filter takes it from here */
            return 1;                               /* not reached */
        } else {
            HANDLE process = OpenProcess(PROCESS_QUERY_INFORMATION | PROCESS_VM_READ | PROCESS_DUP_HANDLE, FALSE,
                                         (DWORD)pid);
            if (process == NULL) {
                fprintf(stderr, "native_agent: cannot open process %lu (error %lu)\n", pid, GetLastError());
                agent_close();
                return 2;
            }
            rc = dump_process(process, (DWORD)pid, NULL);
            CloseHandle(process);
        }
#else
        fprintf(stderr, "native_agent: --pid and --crash need Windows' DbgHelp; give a DUMP_FILE to replay\n");
        agent_close();
        return 2;
#endif
    }
    agent_close();
    return rc;
}
