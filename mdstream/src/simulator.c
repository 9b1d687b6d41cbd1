/* A faithful stand-in for DbgHelp's callback-mode I/O: the routine is called
 * through its function pointer, from a thread Python never created. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "mdstream/callback.h"
#include "mdstream/atomics.h"
#include "platform.h"

#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <process.h>
#else
#include <pthread.h>
#endif

/* Failure semantics as DbgHelp's: FALSE, or a Status other than the one the
 * step requires, ends the dump. */
static int call(mds_simulation *sim, MINIDUMP_CALLBACK_INPUT *in, MINIDUMP_CALLBACK_OUTPUT *out,
                HRESULT required, uint64_t index) {
    uint64_t t0 = sim->time_calls ? mds_now_ns() : 0;
    BOOL ok = sim->routine(sim->param, in, out);
    if (sim->time_calls) {
        uint64_t spent = mds_now_ns() - t0;
        if (spent > sim->longest_call_ns) {
            sim->longest_call_ns = spent;
            sim->longest_call_type = in->CallbackType;
        }
    }
    if (!ok || out->Status != required) {
        sim->failed_callback_type = in->CallbackType;
        sim->failed_index = index;
        sim->failed_return = ok;
        sim->failed_status = out->Status;
        return 0;
    }
    return 1;
}

void mds_simulation_run(mds_simulation *sim) {
    MINIDUMP_CALLBACK_INPUT in;
    MINIDUMP_CALLBACK_OUTPUT out;
    uint64_t start = mds_now_ns();
    uint64_t i;
    sim->succeeded = 0;
    memset(&in, 0, sizeof in);
    memset(&out, 0, sizeof out);
    in.ProcessId = 0;
    in.ProcessHandle = NULL;
    in.CallbackType = IoStartCallback;
    in.Io.Handle = sim->io_handle;
    out.Status = E_NOTIMPL;
    if (!call(sim, &in, &out, S_FALSE, 0)) goto done;

    for (i = 0; i < sim->count; i++) {
        /* Fresh structures for every call: what the previous call left behind
         * must not leak into this one. */
        memset(&in, 0, offsetof(MINIDUMP_CALLBACK_INPUT, Io) + sizeof in.Io);
        in.CallbackType = IoWriteAllCallback;
        in.Io.Handle = sim->io_handle;
        in.Io.Offset = sim->offsets[i];
        in.Io.Buffer = (PVOID)(sim->buffer + sim->sources[i]);
        in.Io.BufferBytes = sim->lengths[i];
        memset(&out, 0, sizeof out);
        out.Status = E_NOTIMPL;
        if (!call(sim, &in, &out, S_OK, i)) goto done;
        mds_store_relaxed_u64(&sim->completed, i + 1);
    }

    if (sim->abandon) {
        /* A writer that failed after its last write: no IoFinishCallback. */
        sim->failed_callback_type = IoFinishCallback;
        sim->failed_index = sim->count;
        sim->failed_return = FALSE;
        sim->failed_status = MDS_HRESULT_FAIL;
        goto done;
    }
    memset(&in, 0, offsetof(MINIDUMP_CALLBACK_INPUT, Io) + sizeof in.Io);
    in.CallbackType = IoFinishCallback;
    in.Io.Handle = sim->io_handle;
    memset(&out, 0, sizeof out);
    out.Status = E_NOTIMPL;
    if (!call(sim, &in, &out, S_OK, sim->count)) goto done;
    sim->succeeded = 1;
done:
    sim->elapsed_ns = mds_now_ns() - start;
    mds_store_release_u32(&sim->done, 1u);
    mds_platform_wake_u32(&sim->done);
}

#ifdef _WIN32
static unsigned __stdcall thread_main(void *arg) {
    mds_simulation_run((mds_simulation *)arg);
    return 0;
}
#else
static void *thread_main(void *arg) {
    mds_simulation_run((mds_simulation *)arg);
    return NULL;
}
#endif

int mds_simulation_start(mds_simulation *sim, mds_error *err) {
    uint64_t i;
    if (sim->routine == NULL) return mds_set_error(err, MDS_ERR_ARG, 0, "no callback routine");
    if (sim->count && (sim->offsets == NULL || sim->lengths == NULL || sim->sources == NULL))
        return mds_set_error(err, MDS_ERR_ARG, 0, "write plan arrays missing");
    for (i = 0; i < sim->count; i++) {
        uint64_t src = sim->sources[i];
        if (src > sim->buffer_size || sim->lengths[i] > sim->buffer_size - src)
            return mds_set_error(err, MDS_ERR_ARG, 0, "write %llu takes bytes [%llu, %llu) outside the %llu-byte buffer",
                                 (unsigned long long)i, (unsigned long long)src,
                                 (unsigned long long)(src + sim->lengths[i]), (unsigned long long)sim->buffer_size);
        if (sim->offsets[i] > UINT64_MAX - sim->lengths[i])
            return mds_set_error(err, MDS_ERR_ARG, 0, "write %llu: offset overflows", (unsigned long long)i);
    }
    sim->completed = 0;
    sim->done = 0;
    sim->succeeded = 0;
    sim->failed_callback_type = 0;
    sim->failed_index = 0;
    sim->failed_return = TRUE;
    sim->failed_status = S_OK;
#ifdef _WIN32
    {
        uintptr_t h = _beginthreadex(NULL, 0, thread_main, sim, 0, NULL);
        if (h == 0) return mds_set_error(err, MDS_ERR_SYS, errno, "cannot start the simulator thread");
        sim->thread = (void *)h;
    }
#else
    {
        pthread_t *thread = (pthread_t *)malloc(sizeof *thread);
        int rc;
        if (thread == NULL) return mds_set_error(err, MDS_ERR_SYS, 0, "out of memory");
        rc = pthread_create(thread, NULL, thread_main, sim);
        if (rc != 0) {
            free(thread);
            return mds_set_error(err, MDS_ERR_SYS, rc, "cannot start the simulator thread");
        }
        sim->thread = thread;
    }
#endif
    sim->started = 1;
    return MDS_OK;
}

int mds_simulation_wait(mds_simulation *sim, uint64_t timeout_ns) {
    uint64_t now0 = mds_now_ns();
    uint64_t deadline = timeout_ns > UINT64_MAX - now0 ? UINT64_MAX : now0 + timeout_ns;
    if (!sim->started) return 1;
    while (!mds_load_acquire_u32(&sim->done)) {
        uint64_t now = mds_now_ns();
        if (now >= deadline) return 0;
        mds_platform_wait_u32(&sim->done, 0, deadline - now < 20000000ull ? deadline - now : 20000000ull);
    }
#ifdef _WIN32
    WaitForSingleObject((HANDLE)sim->thread, INFINITE);
    CloseHandle((HANDLE)sim->thread);
#else
    pthread_join(*(pthread_t *)sim->thread, NULL);
    free(sim->thread);
#endif
    sim->thread = NULL;
    sim->started = 0;
    return 1;
}

uint64_t mds_simulation_completed(const mds_simulation *sim) { return mds_load_relaxed_u64(&sim->completed); }

int mds_simulation_is_done(const mds_simulation *sim) { return (int)mds_load_acquire_u32(&sim->done); }
