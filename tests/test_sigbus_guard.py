"""The SIGBUS guard (platform_posix.c): a ring file shrunk under a mapping
becomes a RingCorruptError, while a SIGBUS anywhere else still kills the
process as it would without mdstream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is for POSIX file mappings")


SANITIZED = os.environ.get("MDSTREAM_SANITIZED") == "1"


def run_child(code: str, tmp_path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        # Under scripts/sanitize.sh reports go to log files that fail the run;
        # the crashes these children are expected to have go to their stderr.
        if key in env:
            env[key] = ":".join(o for o in env[key].split(":") if not o.startswith("log_path="))
    env.update(env_extra or {})
    prog = f"WORKDIR = {str(tmp_path)!r}\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", prog], capture_output=True, text=True,
                          timeout=120, env=env)


TRUNCATE_UNDER_PRODUCER = """
    import os
    from mdstream import Ring
    from mdstream.errors import RingCorruptError
    path = os.path.join(WORKDIR, "ring")
    consumer = Ring.create(path, 65536)
    producer = Ring.attach(path)
    producer.write(0, b"x" * 100)
    os.truncate(path, 4096)
    try:
        producer.write(100, b"y" * 100)
    except RingCorruptError as exc:
        print("corrupt:", exc)
    """


def test_truncation_under_the_producer_is_an_error_not_a_crash(tmp_path) -> None:
    proc = run_child(TRUNCATE_UNDER_PRODUCER, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "corrupt:" in proc.stdout and "truncated under the producer" in proc.stdout


def died_of_sigbus(proc: subprocess.CompletedProcess) -> bool:
    if proc.returncode == -signal.SIGBUS:
        return True
    # AddressSanitizer catches the signal itself and exits with its own code.
    return SANITIZED and proc.returncode != 0 and "DEADLYSIGNAL" in proc.stderr


def test_the_guard_can_be_turned_off(tmp_path) -> None:
    proc = run_child(TRUNCATE_UNDER_PRODUCER, tmp_path, {"MDSTREAM_SIGBUS_GUARD": "0"})
    assert died_of_sigbus(proc), (proc.returncode, proc.stdout, proc.stderr)


def test_a_sigbus_outside_any_ring_is_still_fatal(tmp_path) -> None:
    code = """
    import mmap, os
    from mdstream import Ring
    ring = Ring.create(os.path.join(WORKDIR, "ring"), 65536)   # installs the guard
    path = os.path.join(WORKDIR, "other")
    with open(path, "wb") as f:
        f.write(b"z" * 65536)
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 65536)
    os.truncate(path, 0)
    print("read", m[40000])          # not a ring: must die as without mdstream
    """
    proc = run_child(code, tmp_path)
    assert died_of_sigbus(proc), (proc.returncode, proc.stdout, proc.stderr)
    assert "read" not in proc.stdout


def test_callback_on_a_truncated_ring_fails_cleanly_even_with_a_spill(tmp_path) -> None:
    code = """
    import os, threading
    import numpy as np
    import mdstream
    from mdstream._callback import Simulation
    from mdstream.schedules import sized_plan
    path = os.path.join(WORKDIR, "ring")
    ring = mdstream.Ring.create(path, 1 << 20)
    consumer = mdstream.Ring.attach(path)
    callback = mdstream.DumpCallback(ring, deadline=30, spill_path=os.path.join(WORKDIR, "spill.dmp"),
                                     spill_after=0.2)
    plan = sized_plan(1024, 8 << 20, seed=3)
    sim = Simulation(callback.routine_address, callback.param_address, plan.buffer, plan.offsets,
                     plan.lengths, plan.sources, keepalive=callback)
    sim.start()
    batch = consumer.read(timeout=10)   # the consumer holds one batch, the ring fills
    os.truncate(path, 4096)
    sim.wait(60)
    print("done", sim.done, "succeeded", sim.succeeded)
    print("failure", callback.failure)
    """
    proc = run_child(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "done True succeeded False" in proc.stdout
    # The records the truncation destroyed cannot be replayed: the spill says so.
    assert "truncated" in proc.stdout or "bad record" in proc.stdout, proc.stdout
