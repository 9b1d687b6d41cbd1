#!/usr/bin/env python3
"""Reproducers of the bugs the fuzzers and stress tests found.

Each reproducer is a small program that ends with "OK" when the bug is
fixed; a bug crashes it (signal), trips a sanitizer, or makes it print "BUG".
They run in child processes:

    python fuzz/known_bugs.py                # all, with their outcome
    python fuzz/known_bugs.py batch_after_close

``FIXED`` lists the ones fixed since (tests/test_fuzz_smoke.py keeps them as
regression tests that must pass); ``BUGS`` the ones still open (run there as
expected failures: once one passes, move it to ``FIXED``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

FUZZ = os.path.dirname(os.path.abspath(__file__))

ALL: dict[str, tuple[str, str]] = {
    "producer_claim_unchecked_positions": (
        "ring.c mds_ring_claim_producer (write_pos/read_pos re-read from the mapping without the checks attach "
        "did) -> write_records pad->offset (ring.c:406): a peer that makes write_pos misaligned near the end "
        "between attach and the first write makes the producer write a PAD header up to 15 bytes past the data "
        "area (out-of-bounds write in the dumped process; UBSan: misaligned member access).",
        r'''
        import mmap, os, struct, sys, tempfile
        sys.path.insert(0, FUZZ)
        from _common import GuardPage
        from mdstream import Ring
        from mdstream.errors import MdstreamError
        d = WORKDIR
        path = os.path.join(d, "ring")
        owner = Ring.create(path, 4096)
        guard = GuardPage(8192)                    # PROT_NONE page right after the producer's mapping
        producer = Ring.attach(path)               # positions are validated here...
        m = mmap.mmap(os.open(path, os.O_RDWR), 8192)
        struct.pack_into("<QQ", m, 128, 4095, 0)   # ...then a peer sets write_pos = 4095
        struct.pack_into("<Q", m, 256, 4095)       # and read_pos = 4095 (looks empty)
        try:
            producer.write(0, b"x" * 100, timeout=0)
            print("BUG: the write was accepted from a misaligned position")
        except MdstreamError as exc:
            print("OK", type(exc).__name__)
        ''',
    ),
    "batch_after_close": (
        "_ring.pyx Ring.close (checks live_exports only, not live batches) + Batch.check_live (does not check "
        "ring.mapped): a Batch used after its Ring was closed reads the unmapped data area (SIGSEGV, or "
        "silently whatever is mapped there later).",
        r'''
        from mdstream import Ring
        ring = Ring.create(None, 4096)
        ring.write(0, b"x" * 100)
        batch = ring.read(timeout=1)
        ring.close()
        try:
            batch.offsets
            print("BUG: a batch of a closed ring was read")
        except (ValueError, BufferError) as exc:
            print("OK", type(exc).__name__)
        ''',
    ),
    "memory_sink_null_memcpy": (
        "span.c:59 mds_span_apply_memory: memcpy(dest + offset, ..., 0) with dest == NULL when an empty "
        "MemorySink (no buffer yet) consumes a batch whose records are all empty at offset 0: undefined "
        "behaviour (UBSan: null pointer passed as argument 1). Only visible under the sanitized build.",
        r'''
        from mdstream import MemorySink, Ring
        ring = Ring.create(None, 4096)
        ring.write(0, b"")
        ring.seal()
        sink = MemorySink()
        for batch in ring:
            sink.consume(batch)
        print("OK", sink.size)
        ''',
    ),
    "ring_file_truncated_under_consumer": (
        "platform_posix.c mds_platform_map_attach/_finish: the consumer maps a file another process can shrink "
        "(same uid, the 0600 owner); after ftruncate the consumer's first access to the data area dies with "
        "SIGBUS. Needs a SIGBUS guard around reads or a sealed memfd (F_SEAL_SHRINK) instead of a plain file.",
        r'''
        import os, tempfile
        from mdstream import Ring
        from mdstream.errors import MdstreamError
        d = WORKDIR
        path = os.path.join(d, "ring")
        owner = Ring.create(path, 65536)
        consumer = Ring.attach(path)
        owner.write(0, b"x" * 1000)
        os.truncate(path, 4096)
        try:
            consumer.read(timeout=1)
            print("OK (read survived)")
        except MdstreamError as exc:
            print("OK", type(exc).__name__)
        ''',
    ),
    "ring_file_truncated_after_read": (
        "mds_ring_poll fstat()s the file (platform_posix.c mds_platform_check_mapping), but a file shrunk after "
        "the check -- here after read() handed out a batch, before its accessors, a numpy view or a sink touch "
        "the span -- killed the consumer with SIGBUS.  Fixed by the SIGBUS guard (platform_posix.c): the fault "
        "maps a private zero page, and the batch's accessors and release raise RingCorruptError.",
        r'''
        import os, tempfile
        import numpy as np
        from mdstream import Ring
        from mdstream.errors import RingCorruptError
        d = WORKDIR
        path = os.path.join(d, "ring")
        owner = Ring.create(path, 65536)
        consumer = Ring.attach(path)
        owner.write(0, b"x" * 1000)
        batch = consumer.read(timeout=1)
        view = np.frombuffer(batch, dtype=np.uint8)
        os.truncate(path, 4096)
        total = int(view.sum())          # a sink reading the view: must not die
        del view
        try:
            batch.offsets
            print("SILENT: accessors trusted a truncated batch")
        except RingCorruptError:
            try:
                batch.release()
                print("SILENT: release trusted a truncated batch")
            except RingCorruptError as exc:
                print("OK", type(exc).__name__)
        ''',
    ),
    "ring_file_truncated_under_producer": (
        "ring.c write_records / platform_posix.c: the producer (the dump callback, inside the dumped process) "
        "maps the same file; when the other side shrinks it, the producer's next store into the data area "
        "raises SIGBUS and kills the process being dumped. Same remedy: a mapping that cannot shrink (sealed "
        "memfd) or a SIGBUS guard around the producer's stores.",
        r'''
        import os, tempfile
        from mdstream import Ring
        from mdstream.errors import MdstreamError
        d = WORKDIR
        path = os.path.join(d, "ring")
        consumer = Ring.create(path, 65536)
        producer = Ring.attach(path)
        producer.write(0, b"x" * 100)
        os.truncate(path, 4096)
        try:
            producer.write(100, b"y" * 100)
            print("SILENT: the write was lost without an error")
        except MdstreamError as exc:
            print("OK", type(exc).__name__)
        ''',
    ),
}


FIXED = ["producer_claim_unchecked_positions", "batch_after_close", "memory_sink_null_memcpy",
         "ring_file_truncated_under_consumer", "ring_file_truncated_after_read", "ring_file_truncated_under_producer"]
BUGS = {name: ALL[name] for name in ALL if name not in FIXED}


def run(name: str, timeout: float = 60) -> tuple[bool, str]:
    """Run one reproducer in a child process; (fixed?, what happened)."""
    _doc, code = ALL[name]
    workdir = tempfile.mkdtemp(prefix="mds-known-bug-",
                               dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    prog = f"FUZZ = {FUZZ!r}\nWORKDIR = {workdir!r}\n" + textwrap.dedent(code)
    env = dict(os.environ)
    for key in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        # Under scripts/sanitize.sh reports go to log files that fail the run:
        # these expected reports go to the child's stderr instead.
        if key in env:
            env[key] = ":".join(o for o in env[key].split(":") if not o.startswith("log_path="))
    try:
        proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode < 0:
        return False, f"killed by signal {-proc.returncode}"
    if proc.returncode != 0 or "runtime error:" in out or "AddressSanitizer" in out:
        return False, f"exit {proc.returncode}: {out[-400:]}"
    return proc.stdout.startswith("OK"), proc.stdout.strip()


def main(argv: list[str]) -> int:
    names = argv or list(ALL)
    still = 0
    for name in names:
        fixed, what = run(name)
        still += not fixed
        print(f"{'fixed' if fixed else 'BUG  '} {name}: {what}")
        if not fixed:
            print(f"      {ALL[name][0]}")
    return 1 if still else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
