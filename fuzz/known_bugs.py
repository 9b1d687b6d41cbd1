#!/usr/bin/env python3
"""Reproducers of the bugs the fuzzers and stress tests found (reported, not
fixed here: the C core and the Cython modules belong to other engineers).

Each reproducer is a small program that must end with "OK" once the bug is
fixed; today it crashes (signal), trips a sanitizer, or prints "BUG".  Run
them in child processes:

    python fuzz/known_bugs.py                # all, with their outcome
    python fuzz/known_bugs.py batch_after_close

tests/test_fuzz_smoke.py runs them as (non-strict) expected failures, so a
fix shows up as XPASS.  The fuzz harnesses step around them unless
MDSTREAM_FUZZ_KNOWN_BUGS=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

FUZZ = os.path.dirname(os.path.abspath(__file__))

BUGS: dict[str, tuple[str, str]] = {
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
        d = tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
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
        ring.finish()
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
        d = tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
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
}


def run(name: str, timeout: float = 60) -> tuple[bool, str]:
    """Run one reproducer in a child process; (fixed?, what happened)."""
    _doc, code = BUGS[name]
    prog = f"FUZZ = {FUZZ!r}\n" + textwrap.dedent(code)
    env = dict(os.environ)
    for key in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        # Under scripts/sanitize.sh reports go to log files that fail the run:
        # these expected reports go to the child's stderr instead.
        if key in env:
            env[key] = ":".join(o for o in env[key].split(":") if not o.startswith("log_path="))
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=timeout, env=env)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode < 0:
        return False, f"killed by signal {-proc.returncode}"
    if proc.returncode != 0 or "runtime error:" in out or "AddressSanitizer" in out:
        return False, f"exit {proc.returncode}: {out[-400:]}"
    return proc.stdout.startswith("OK"), proc.stdout.strip()


def main(argv: list[str]) -> int:
    names = argv or list(BUGS)
    still = 0
    for name in names:
        fixed, what = run(name)
        still += not fixed
        print(f"{'fixed' if fixed else 'BUG  '} {name}: {what}")
        if not fixed:
            print(f"      {BUGS[name][0]}")
    return 1 if still else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
