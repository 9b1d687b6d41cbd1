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
#include "mdstream/callback.h"
#include "mdstream/ring.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t mds_platform_pid(void);
void mds_platform_wait_u32(uint32_t *word, uint32_t expected, uint64_t timeout_ns);
int mds_platform_file_create(const char *path, intptr_t *file, mds_error *err);
int mds_platform_file_pwrite(intptr_t file, const void *data, uint64_t length, uint64_t offset, mds_error *err);
void mds_platform_file_close(intptr_t file);

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

/* ---- the spill, with Windows files ------------------------------------------------
 * A file ring; a consumer thread that applies the first batch to its own
 * private file, registers it and then stalls; a dump driven through the real
 * callback by the simulator.  The callback must spill: copy the consumer's
 * file (platform_win32.c's private-file checks), replay the ring and write the
 * rest, giving exactly the dump. */

#define SPILL_WRITES 48
#define SPILL_WRITE 1000
#define SPILL_SIZE (SPILL_WRITES * SPILL_WRITE)

typedef struct spill_consumer {
    mds_ring ring;
    char output[600];
    int applied;       /* bytes of records applied and released */
    char message[256];
} spill_consumer;

static DWORD WINAPI consume_once(LPVOID param) {
    spill_consumer *c = (spill_consumer *)param;
    mds_error err;
    uint64_t start, end, pos = 0, deadline = mds_now_ns() + 10000000000ull;
    intptr_t file;
    mds_record rec;
    int rc;
    if (mds_ring_claim_consumer(&c->ring, &err) != MDS_OK ||
        mds_platform_file_create(c->output, &file, &err) != MDS_OK ||
        mds_ring_set_consumer_output(&c->ring, c->output, &err) != MDS_OK) {
        snprintf(c->message, sizeof c->message, "consumer setup: %s", err.message);
        return 1;
    }
    while ((rc = mds_ring_poll(&c->ring, &start, &end, &err)) == MDS_EMPTY && mds_now_ns() < deadline)
        mds_ring_wait_data(&c->ring, 10000000ull, &err);
    if (rc == MDS_OK) {
        uint64_t n, b, high;
        rc = mds_ring_take(&c->ring, start, end, &n, &b, &high, &err);
    }
    if (rc != MDS_OK) {
        snprintf(c->message, sizeof c->message, "consumer poll: rc %d %s", rc, err.message);
        mds_platform_file_close(file);
        return 1;
    }
    while ((rc = mds_span_next(mds_ring_at(&c->ring, start), end - start, &pos, &rec, &err)) == 1) {
        if (mds_platform_file_pwrite(file, mds_ring_at(&c->ring, start) + rec.payload_pos, rec.length, rec.offset,
                                     &err) != MDS_OK)
            break;
        c->applied += (int)rec.length;
    }
    mds_platform_file_close(file);
    mds_ring_release(&c->ring, end); /* then stall: the producer must spill */
    return 0;
}

/* DbgHelp's protocol through the real callback, on this thread. */
static void run_dump(mds_simulation *sim, mds_callback_context *ctx, const uint8_t *buffer, uint64_t size,
                     const uint64_t *offsets, const uint32_t *lengths, const uint64_t *sources, uint64_t count) {
    memset(sim, 0, sizeof *sim);
    sim->routine = mds_dump_callback;
    sim->param = ctx;
    sim->buffer = buffer;
    sim->buffer_size = size;
    sim->offsets = offsets;
    sim->lengths = lengths;
    sim->sources = sources;
    sim->count = count;
    mds_simulation_run(sim);
}

static int read_whole(const char *path, uint8_t *out, DWORD size, DWORD *got) {
    HANDLE h = CreateFileA(path, GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING, 0, NULL);
    BOOL ok;
    if (h == INVALID_HANDLE_VALUE) return 0;
    ok = ReadFile(h, out, size, got, NULL);
    CloseHandle(h);
    return ok;
}

static void check_spill(const char *scratch) {
    static uint8_t source[SPILL_SIZE + 64], expected[SPILL_SIZE], actual[SPILL_SIZE + 16], base[SPILL_SIZE + 16];
    static uint64_t offsets[SPILL_WRITES + 1], sources[SPILL_WRITES + 1];
    static uint32_t lengths[SPILL_WRITES + 1];
    static spill_consumer consumer;
    char ring_path[600], spill_path[600], manifest_path[620], base_path[620];
    DWORD base_got = 0;
    mds_ring producer;
    mds_error err;
    mds_callback_options options;
    mds_callback_context ctx;
    mds_simulation sim;
    mds_spill_info info;
    HANDLE thread;
    DWORD got = 0;
    int i, rc, ok;
    char magic[16] = "";

    for (i = 0; i < (int)sizeof source; i++) source[i] = (uint8_t)(i * 131 + (i >> 8));
    for (i = 0; i < SPILL_WRITES; i++) {
        offsets[i] = (uint64_t)i * SPILL_WRITE;
        lengths[i] = SPILL_WRITE;
        sources[i] = (uint64_t)i * SPILL_WRITE;
    }
    offsets[SPILL_WRITES] = 10; /* DbgHelp patches its header last */
    lengths[SPILL_WRITES] = 16;
    sources[SPILL_WRITES] = SPILL_SIZE;
    memcpy(expected, source, SPILL_SIZE);
    memcpy(expected + 10, source + SPILL_SIZE, 16);

    snprintf(ring_path, sizeof ring_path, "%s\\spill-ring", scratch);
    snprintf(spill_path, sizeof spill_path, "%s\\spill.dmp", scratch);
    snprintf(manifest_path, sizeof manifest_path, "%s.mdspill", spill_path);
    snprintf(base_path, sizeof base_path, "%s.mdspill-base", spill_path);
    snprintf(consumer.output, sizeof consumer.output, "%s\\consumer-partial.dmp", scratch);
    rc = mds_ring_create(&producer, ring_path, 8192, &err);
    if (rc == MDS_OK) rc = mds_ring_attach(&consumer.ring, ring_path, &err);
    result("spill_rings", rc == MDS_OK, "%s", err.message);
    if (rc != MDS_OK) return;

    mds_callback_options_init(&options);
    options.coalesce = 0;                     /* one record per write: a batch is a prefix of the dump */
    options.publish_bytes = 0;
    options.deadline_ns = 20000000000ull;
    options.spill_after_ns = 300000000ull;    /* 0.3 s of a full ring */
    snprintf(options.spill_path, sizeof options.spill_path, "%s", spill_path);
    mds_callback_context_init(&ctx, &producer, &options);

    thread = CreateThread(NULL, 0, consume_once, &consumer, 0, NULL);
    run_dump(&sim, &ctx, source, sizeof source, offsets, lengths, sources, SPILL_WRITES + 1);
    WaitForSingleObject(thread, 20000);
    CloseHandle(thread);
    mds_callback_spill_info(&ctx, &info);

    result("spill_dump_succeeds", sim.succeeded, "failed at write %llu, status 0x%08lx: %s",
           (unsigned long long)sim.failed_index, (unsigned long)sim.failed_status, ctx.failure_reason);
    result("spill_consumer_applied_a_batch", consumer.applied > 0 && consumer.message[0] == 0, "%d bytes: %s",
           consumer.applied, consumer.message);
    result("spill_copied_the_consumer_file", info.spilled && info.base_bytes == (uint64_t)consumer.applied &&
           (info.flags & (MDS_SPILL_FINISHED | MDS_SPILL_BASE_COMPLETE | MDS_SPILL_BASE_COPY)) ==
               (MDS_SPILL_FINISHED | MDS_SPILL_BASE_COMPLETE | MDS_SPILL_BASE_COPY),
           "spilled %d flags 0x%x base %llu applied %d replayed %llu direct %llu: %s", info.spilled, info.flags,
           (unsigned long long)info.base_bytes, consumer.applied, (unsigned long long)info.replayed_bytes,
           (unsigned long long)info.direct_bytes, info.reason);
    /* (Each read before its result(): argument evaluation order is unspecified.) */
    /* The base copy holds the consumer's released prefix as it was; the
     * spill file everything after it and the header patch DbgHelp wrote last:
     * together (what `mdstream spill finish` overlays), exactly the dump. */
    ok = read_whole(spill_path, actual, sizeof actual, &got) && got == SPILL_SIZE &&
         read_whole(base_path, base, sizeof base, &base_got) && base_got == (DWORD)consumer.applied &&
         memcmp(base, source, base_got) == 0 && memcmp(actual + base_got, expected + base_got, SPILL_SIZE - base_got) == 0 &&
         memcmp(actual + 10, expected + 10, 16) == 0;
    result("spill_and_base_copy_are_the_dump", ok, "read %lu + %lu bytes, %s", (unsigned long)got,
           (unsigned long)base_got, got == SPILL_SIZE ? "different bytes" : "wrong size");
    ok = read_whole(manifest_path, (uint8_t *)magic, 8, &got) && got == 8 && memcmp(magic, "MDSPILL1", 8) == 0;
    result("spill_manifest_written", ok, "read %lu bytes", (unsigned long)got);
    result("spill_aborted_the_ring", mds_ring_state(&consumer.ring) == MDS_STATE_ABORTED, "state %u",
           mds_ring_state(&consumer.ring));

    /* A second dump to the same path must fail, never overwrite. */
    mds_callback_context_reset(&ctx);
    {
        mds_ring again;
        rc = mds_ring_create(&again, NULL, 4096, &err);
        if (rc == MDS_OK) {
            ctx.ring = &again;
            run_dump(&sim, &ctx, source, sizeof source, offsets, lengths, sources, SPILL_WRITES + 1);
            ok = !sim.succeeded && (uint32_t)sim.failed_status == 0x8007001Du &&
                 read_whole(spill_path, actual, sizeof actual, &got) && got == SPILL_SIZE &&
                 memcmp(actual + 10, expected + 10, 16) == 0;
            result("spill_never_overwrites", ok, "succeeded %d status 0x%08lx, file %lu bytes: %s", sim.succeeded,
                   (unsigned long)sim.failed_status, (unsigned long)got, ctx.failure_reason);
            mds_ring_close(&again);
        }
    }
    mds_callback_context_release(&ctx);
    mds_ring_close(&consumer.ring);
    mds_ring_close(&producer);
    mds_ring_unlink(ring_path, &err);
    DeleteFileA(spill_path);
    DeleteFileA(manifest_path);
    DeleteFileA(base_path);
    DeleteFileA(consumer.output);
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
        /* Sealed (END written); the Linux side drains it after this process exits. */
        if (rc == MDS_OK) rc = mds_ring_end(&a, 0, &err);
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
            /* The BEGIN record, then the 3-byte write's 32-byte record. */
            result("file_ring_shares_data", rc == MDS_OK && end - start == MDS_RING_RECORD_HEADER + MDS_BEGIN_PAYLOAD + 32,
                   "rc %d: %s", rc, err.message);
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
            result("section_shares_data", rc == MDS_OK && end - start == MDS_RING_RECORD_HEADER + MDS_BEGIN_PAYLOAD + 32,
                   "rc %d: %s", rc, err.message);
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

    check_spill(argv[3]);

    printf("}\n");
    return failures ? 1 : 0;
}
