/* wine/crasher.c - a Windows program that installs mdstream's crash handler
 * (mds_crash_install) and then crashes on a second thread, for the Wine tests
 * of Windows crash capture (tests/test_wine_crash.py).
 *
 * Usage: crasher.exe MODE [--timeout-ms N] [--rendezvous NAME] [--no-wait]
 *   MODE  av      write to address 0x10 (EXCEPTION_ACCESS_VIOLATION, the filter)
 *         div0    integer division by zero (EXCEPTION_INT_DIVIDE_BY_ZERO, the filter)
 *         abort   abort() (the SIGABRT handler: STATUS_FATAL_APP_EXIT)
 *         heap    RaiseException(STATUS_HEAP_CORRUPTION) (the vectored handler)
 *         none    install, report, wait for the line, exit 0 (no crash)
 * Prints one JSON line once installed ({"pid", "thread": the thread that will
 * crash, "site": the address of the crashing function (av, div0)}), then crashes
 * when a line arrives on stdin (at once with --no-wait).
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN 1
#endif
#include <windows.h>

#include "mdstream/crash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_mode;
static volatile int g_zero;
static volatile uintptr_t g_bad_address = 0x10; /* a variable: the compiler cannot see the fault coming */

__attribute__((noinline)) static void crash_av(void) {
    *(volatile int *)g_bad_address = 1;
}

__attribute__((noinline)) static int crash_div0(void) {
    return 1000 / g_zero;
}

static DWORD WINAPI crash_thread(LPVOID go) {
    int result = 0;
    WaitForSingleObject((HANDLE)go, INFINITE);
    if (strcmp(g_mode, "av") == 0) crash_av();
    else if (strcmp(g_mode, "div0") == 0) result = crash_div0();
    else if (strcmp(g_mode, "abort") == 0) abort();
    else if (strcmp(g_mode, "heap") == 0) RaiseException(0xC0000374u, EXCEPTION_NONCONTINUABLE, 0, NULL);
    return (DWORD)result;
}

int main(int argc, char **argv) {
    mds_crash_config config;
    char error[256];
    char line[64];
    int i, wait_line = 1;
    DWORD thread_id;
    HANDLE go, thread;
    const void *site;
    if (argc < 2) {
        fprintf(stderr, "usage: crasher.exe av|div0|abort|heap|none [--timeout-ms N] [--rendezvous NAME] [--no-wait]\n");
        return 2;
    }
    g_mode = argv[1];
    memset(&config, 0, sizeof config);
    config.timeout_ns = 30000000000ull;
    for (i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) config.timeout_ns = strtoull(argv[++i], NULL, 0) * 1000000ull;
        else if (strcmp(argv[i], "--rendezvous") == 0 && i + 1 < argc) config.rendezvous = argv[++i];
        else if (strcmp(argv[i], "--no-wait") == 0) wait_line = 0;
    }
    if (mds_crash_install(&config, error, sizeof error) != MDS_CRASH_OK) {
        fprintf(stderr, "crasher: %s\n", error);
        return 2;
    }
    go = CreateEventW(NULL, TRUE, FALSE, NULL);
    thread = CreateThread(NULL, 0, crash_thread, go, 0, &thread_id);
    if (!go || !thread) return 2;
    site = strcmp(g_mode, "div0") == 0 ? (const void *)crash_div0 : (const void *)crash_av;
    printf("{\"pid\": %lu, \"thread\": %lu, \"site\": %llu, \"pointer_bits\": %u}\n",
           (unsigned long)GetCurrentProcessId(), (unsigned long)thread_id, (unsigned long long)(uintptr_t)site,
           (unsigned)(8 * sizeof(void *)));
    fflush(stdout);
    if (wait_line && !fgets(line, sizeof line, stdin)) return 4; /* stdin closed: the test gave up */
    if (strcmp(g_mode, "none") == 0) {
        printf("{\"uninstalled\": %d}\n", mds_crash_uninstall());
        return 0;
    }
    SetEvent(go);
    WaitForSingleObject(thread, INFINITE);
    return 5; /* not reached: the crash ends the process */
}
