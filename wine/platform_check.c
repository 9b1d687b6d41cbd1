/* wine/platform_check.c - mdstream/src/platform_win32.c against the Windows API,
 * run under Wine by tests/test_wine.py (or on Windows by hand).
 *
 * usage: platform_check.exe PRIVATE_RING OPEN_RING SCRATCH_DIR LIVE_PID DEAD_PID
 *   PRIVATE_RING  a ring a Linux process created (mode 0600): attach must work
 *   OPEN_RING     a ring file readable by others (mode 0644): attach must be refused
 *   SCRATCH_DIR   a directory where file rings may be created
 *   LIVE_PID / DEAD_PID  Unix pids of a live process and of one that has exited
 * Prints one JSON object {"check name": "ok" | "FAIL: ..."} and exits 0 when
 * every check passed. */
#ifndef _WIN32
#error "a Windows program: build with mingw-w64"
#endif
#include <windows.h>

#include "mdstream/atomics.h"
#include "mdstream/ring.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t mds_platform_pid(void);
void mds_platform_wait_u32(uint32_t *word, uint32_t expected, uint64_t timeout_ns);

static int failures;
static int first = 1;

static void result(const char *name, int ok, const char *fmt, ...) {
    char detail[600] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("%s\"%s\": \"", first ? "" : ", ", name);
    first = 0;
    if (!ok) {
        const char *p;
        failures++;
        printf("FAIL: ");
        for (p = detail; *p; p++) {
            if (*p == '"' || *p == '\\') putchar('\\');
            if ((unsigned char)*p >= 0x20) putchar(*p);
        }
    } else {
        printf("ok");
    }
    printf("\"");
    fflush(stdout);
}

static volatile uint32_t g_word;

static DWORD WINAPI bump_later(LPVOID unused) {
    (void)unused;
    Sleep(30);
    mds_fetch_add_u32(&g_word, 1);
    return 0;
}

int main(int argc, char **argv) {
    mds_ring a, b;
    mds_error err;
    int rc;
    char path[600];
    uint64_t t0, waited;
    uint64_t start, end;

    if (argc != 6) {
        fprintf(stderr, "usage: platform_check.exe PRIVATE_RING OPEN_RING SCRATCH_DIR LIVE_PID DEAD_PID\n");
        return 2;
    }
    printf("{");

    /* Attach a ring a Linux process created, and produce into it. */
    rc = mds_ring_attach(&a, argv[1], &err);
    result("attach_linux_ring", rc == MDS_OK, "%s", err.message);
    if (rc == MDS_OK) {
        rc = mds_ring_write(&a, 7, "from wine", 9, 0, &err);
        if (rc == MDS_OK) rc = mds_ring_finish(&a, &err);
        result("produce_into_linux_ring", rc == MDS_OK, "%s", err.message);
        mds_ring_close(&a);
    }

    rc = mds_ring_attach(&a, argv[2], &err);
    result("refuse_shared_ring", rc == MDS_ERR_PERMISSION && strstr(err.message, "accessible by other users"),
           "rc %d: %s", rc, err.message);
    if (rc == MDS_OK) mds_ring_close(&a);

    snprintf(path, sizeof path, "%s\\no-such-ring", argv[3]);
    rc = mds_ring_attach(&a, path, &err);
    result("missing_ring_not_found", rc == MDS_ERR_NOT_FOUND, "rc %d: %s", rc, err.message);

    /* A file ring created here: exclusive creation, attach, data across handles. */
    snprintf(path, sizeof path, "%s\\wine-created-ring", argv[3]);
    rc = mds_ring_create(&a, path, 8192, &err);
    result("create_file_ring", rc == MDS_OK, "%s", err.message);
    if (rc == MDS_OK) {
        rc = mds_ring_create(&b, path, 8192, &err);
        result("create_is_exclusive", rc == MDS_ERR_EXISTS, "rc %d: %s", rc, err.message);
        if (rc == MDS_OK) mds_ring_close(&b);
        rc = mds_ring_attach(&b, path, &err);
        result("attach_own_file_ring", rc == MDS_OK && b.capacity == 8192, "rc %d: %s", rc, err.message);
        if (rc == MDS_OK) {
            rc = mds_ring_write(&a, 100, "abc", 3, 0, &err);
            rc = rc == MDS_OK ? mds_ring_poll(&b, &start, &end, &err) : rc;
            result("file_ring_shares_data", rc == MDS_OK && end - start == 32, "rc %d: %s", rc, err.message);
            mds_ring_close(&b);
        }
        mds_ring_close(&a);
        rc = mds_ring_unlink(path, &err);
        result("unlink_file_ring", rc == MDS_OK, "%s", err.message);
        rc = mds_ring_attach(&b, path, &err);
        result("unlinked_ring_is_gone", rc == MDS_ERR_NOT_FOUND, "rc %d: %s", rc, err.message);
    }

    /* A named section: the name lives exactly as long as the creator's handle. */
    rc = mds_ring_create(&a, "platform-check-section", 1 << 16, &err);
    result("create_section_ring", rc == MDS_OK, "%s", err.message);
    if (rc == MDS_OK) {
        rc = mds_ring_create(&b, "platform-check-section", 1 << 16, &err);
        result("section_is_exclusive", rc == MDS_ERR_EXISTS, "rc %d: %s", rc, err.message);
        rc = mds_ring_attach(&b, "platform-check-section", &err);
        result("attach_section_ring", rc == MDS_OK && b.capacity == (1 << 16), "rc %d: %s", rc, err.message);
        if (rc == MDS_OK) {
            rc = mds_ring_write(&a, 0, "hello", 5, 0, &err);
            rc = rc == MDS_OK ? mds_ring_poll(&b, &start, &end, &err) : rc;
            result("section_shares_data", rc == MDS_OK && end - start == 32, "rc %d: %s", rc, err.message);
            mds_ring_close(&b);
        }
        mds_ring_close(&a);
        rc = mds_ring_attach(&b, "platform-check-section", &err);
        result("section_name_dies_with_creator", rc == MDS_ERR_NOT_FOUND, "rc %d: %s", rc, err.message);
    }

    rc = mds_ring_create(&a, NULL, 1 << 20, &err);
    result("anonymous_ring", rc == MDS_OK && a.capacity == (1 << 20), "%s", err.message);
    if (rc == MDS_OK) mds_ring_close(&a);

    /* pids: this process publishes its Unix pid under Wine; liveness on both sides. */
    {
        HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
        int wine = ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
        /* Under Wine on Linux the ring holds the Unix pid; on Windows, the Windows pid. */
        result("ring_pid", wine ? mds_platform_pid() != GetCurrentProcessId() : mds_platform_pid() == GetCurrentProcessId(),
               "ring pid %u, Windows pid %lu, wine %d", mds_platform_pid(), GetCurrentProcessId(), wine);
        printf(", \"ring_pid_value\": %u", mds_platform_pid());
    }
    result("self_alive", mds_pid_alive(mds_platform_pid()) == 1, "");
    result("windows_pid_alive", mds_pid_alive(GetCurrentProcessId()) == 1, "");
    result("linux_pid_alive", mds_pid_alive((uint32_t)strtoul(argv[4], NULL, 0)) == 1, "pid %s", argv[4]);
    result("linux_dead_pid", mds_pid_alive((uint32_t)strtoul(argv[5], NULL, 0)) == 0, "pid %s", argv[5]);

    /* Waits: bounded, and ended early by a change of the word. */
    g_word = 5;
    t0 = mds_now_ns();
    mds_platform_wait_u32((uint32_t *)&g_word, 5, 50000000ull);
    waited = mds_now_ns() - t0;
    result("wait_times_out", waited >= 45000000ull && waited < 1000000000ull, "waited %llu ns",
           (unsigned long long)waited);
    t0 = mds_now_ns();
    mds_platform_wait_u32((uint32_t *)&g_word, 4, 1000000000ull);
    waited = mds_now_ns() - t0;
    result("wait_returns_on_mismatch", waited < 5000000ull, "waited %llu ns", (unsigned long long)waited);
    CloseHandle(CreateThread(NULL, 0, bump_later, NULL, 0, NULL));
    t0 = mds_now_ns();
    mds_platform_wait_u32((uint32_t *)&g_word, 5, 2000000000ull);
    waited = mds_now_ns() - t0;
    result("wait_wakes_on_change", g_word == 6 && waited < 500000000ull, "waited %llu ns",
           (unsigned long long)waited);

    t0 = mds_now_ns();
    Sleep(20);
    waited = mds_now_ns() - t0;
    result("clock_is_nanoseconds", waited >= 15000000ull && waited < 2000000000ull, "Sleep(20) took %llu ns",
           (unsigned long long)waited);

    printf("}\n");
    return failures ? 1 : 0;
}
