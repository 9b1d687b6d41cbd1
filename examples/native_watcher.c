/* native_watcher.c - the out-of-process half of Windows crash capture: waits
 * for a process that called mds_crash_install to crash, writes its minidump
 * with MiniDumpWriteDump through mdstream's callback into a ring, and tells
 * the process the outcome.  No Python in this process.
 *
 * The pattern (docs/embedding.md, "Windows crash capture"):
 *   1. attach the ring a consumer created (mdstream drains it into the crash
 *      database), initialise one mds_callback_context and one
 *      MINIDUMP_CALLBACK_INFORMATION;
 *   2. mds_watch_attach(pid): open the process and its crash block, say
 *      "a watcher is here" (the process then waits for us when it crashes);
 *   3. mds_watch_wait: the process crashed; the thread, the code and the
 *      EXCEPTION_POINTERS address are checked against the process itself;
 *   4. mds_watch_write_dump: MiniDumpWriteDump(hFile NULL, exception
 *      information with ClientPointers TRUE, the callback): every byte goes
 *      through the ring; IoFinishCallback succeeds once the consumer committed;
 *   5. mds_watch_release: the process stops waiting and dies of its crash.
 *
 * Build (Windows; the C core is shipped inside the Python package):
 *   x86_64-w64-mingw32-gcc -std=gnu11 -O2 -I"$INC" examples/native_watcher.c $SRC -o native_watcher.exe
 *   cl /std:c11 /experimental:c11atomics /I"%INC%" examples\native_watcher.c %SRC%
 * Under Wine, whose dbghelp ignores callback I/O, the tests add
 * -DNATIVE_WATCHER_WINE_REDIRECT wine/dbghelp_redirect.c (see that file).
 *
 * Usage: native_watcher [options] RING PID
 *   --rendezvous NAME  the name the process gave mds_crash_install (default: its pid)
 *   --type FLAGS       MINIDUMP_TYPE (default 0x1025)
 *   --wait S           how long to wait for the crash (default: until the process ends)
 *   --deadline S       longest wait of one write for ring space (default 30)
 *   --hold-ms N        (tests) sleep N ms before answering the process: a slow watcher
 * Prints one JSON line when attached and one with the outcome.
 * Exit status: 0 report written, 1 the dump failed, 2 usage or setup error,
 * 3 the process ended (or the wait ran out) without a crash.
 */
#include "mdstream/callback.h"
#include "mdstream/crash.h"
#include "mdstream/ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef _WIN32
int main(void) {
    fprintf(stderr, "native_watcher: Windows only (Linux crash capture is mdstream watch / mdstream run)\n");
    return 2;
}
#else
#include <windows.h>

#ifdef NATIVE_WATCHER_WINE_REDIRECT
BOOL WINAPI mds_wine_MiniDumpWriteDump(HANDLE, DWORD, HANDLE, MINIDUMP_TYPE, PMINIDUMP_EXCEPTION_INFORMATION,
                                       PMINIDUMP_USER_STREAM_INFORMATION, PMINIDUMP_CALLBACK_INFORMATION);
#define WRITE_FN mds_wine_MiniDumpWriteDump
#else
#define WRITE_FN NULL /* dbghelp.dll's MiniDumpWriteDump */
#endif

int main(int argc, char **argv) {
    const char *ring_name = NULL, *rendezvous = NULL;
    unsigned long pid = 0, type = 0x1025, hold_ms = 0;
    double wait_s = -1, deadline_s = 30;
    static mds_ring ring;
    static mds_callback_context ctx;
    static MINIDUMP_CALLBACK_INFORMATION info;
    mds_callback_options options;
    mds_error err;
    mds_watch watch;
    mds_watch_crash crash;
    mds_callback_counters counters;
    char error[256] = "";
    int i, rc, positional = 0, status;
    ULONGLONG started;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--rendezvous") == 0 && i + 1 < argc) rendezvous = argv[++i];
        else if (strcmp(a, "--type") == 0 && i + 1 < argc) type = strtoul(argv[++i], NULL, 0);
        else if (strcmp(a, "--wait") == 0 && i + 1 < argc) wait_s = atof(argv[++i]);
        else if (strcmp(a, "--deadline") == 0 && i + 1 < argc) deadline_s = atof(argv[++i]);
        else if (strcmp(a, "--hold-ms") == 0 && i + 1 < argc) hold_ms = strtoul(argv[++i], NULL, 0);
        else if (positional == 0) ring_name = a, positional++;
        else if (positional == 1) pid = strtoul(a, NULL, 0), positional++;
        else positional++;
    }
    if (!ring_name || pid == 0 || positional != 2 || deadline_s <= 0) {
        fprintf(stderr, "usage: native_watcher [--rendezvous NAME] [--type FLAGS] [--wait S] [--deadline S] RING PID\n");
        return 2;
    }

    /* 1. The ring and the callback, before anything can crash. */
    rc = mds_ring_attach(&ring, ring_name, &err);
    if (rc != MDS_OK) {
        fprintf(stderr, "native_watcher: cannot attach ring %s: %s\n", ring_name, err.message);
        return 2;
    }
    mds_callback_options_init(&options);
    options.deadline_ns = (uint64_t)(deadline_s * 1e9);
    mds_callback_context_init(&ctx, &ring, &options);
    info.CallbackRoutine = mds_dump_callback;
    info.CallbackParam = &ctx;

    /* 2. The process. */
    rc = mds_watch_attach(&watch, (uint32_t)pid, rendezvous, error, sizeof error);
    if (rc != MDS_WATCH_OK) {
        fprintf(stderr, "native_watcher: %s\n", error);
        mds_ring_abort(&ring, (int32_t)MDS_HRESULT_FAIL, "native watcher: cannot attach to the process");
        mds_ring_close(&ring);
        return 2;
    }
    printf("{\"attached\": true, \"pid\": %lu, \"watcher_pid\": %lu}\n", pid, (unsigned long)GetCurrentProcessId());
    fflush(stdout);

    /* 3. The crash. */
    rc = mds_watch_wait(&watch, wait_s < 0 ? INFINITE : (DWORD)(wait_s * 1000), &crash, error, sizeof error);
    if (rc != MDS_WATCH_OK) {
        printf("{\"crashed\": false, \"status\": %d, \"error\": \"%s\"}\n", rc, error);
        fflush(stdout);
        mds_ring_abort(&ring, (int32_t)MDS_HRESULT_FAIL, "native watcher: no crash to report");
        mds_watch_close(&watch);
        mds_ring_close(&ring);
        return rc == MDS_WATCH_TIMEOUT || rc == MDS_WATCH_EXITED ? 3 : 1;
    }

    /* 4. The dump, through the ring. */
    started = GetTickCount64();
    rc = mds_watch_write_dump(&watch, &crash, (uint32_t)type, NULL, &info, WRITE_FN, error, sizeof error);
    status = rc == MDS_WATCH_OK && !ctx.failed && ctx.finished ? 0 : 1;
    if (status != 0) {
        if (ctx.failed) snprintf(error, sizeof error, "%s", ctx.failure_reason);
        else if (rc == MDS_WATCH_OK) snprintf(error, sizeof error, "no IoFinishCallback: the writer ignores callback I/O");
        mds_ring_abort(&ring, (int32_t)MDS_HRESULT_FAIL, "native watcher: dump failed"); /* a no-op once committed */
    }
    if (hold_ms) Sleep((DWORD)hold_ms);

    /* 5. The answer: the process stops waiting. */
    mds_watch_release(&watch, (uint32_t)status, "", status == 0 ? "" : error);
    mds_callback_read_counters(&ctx, &counters);
    printf("{\"crashed\": true, \"ok\": %s, \"pid\": %lu, \"thread_id\": %lu, \"code\": %lu, \"address\": %llu, "
           "\"kind\": %lu, \"bytes\": %llu, \"writes\": %llu, \"dump_ms\": %llu, \"error\": \"%s\"}\n",
           status == 0 ? "true" : "false", (unsigned long)crash.pid, (unsigned long)crash.thread_id,
           (unsigned long)crash.exception_code, (unsigned long long)crash.exception_address,
           (unsigned long)crash.kind, (unsigned long long)counters.bytes, (unsigned long long)counters.writes,
           (unsigned long long)(GetTickCount64() - started), status == 0 ? "" : "dump failed");
    fflush(stdout);
    mds_watch_close(&watch);
    mds_ring_close(&ring);
    return status;
}
#endif
