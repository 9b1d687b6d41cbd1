"""The ``mdstream`` command (also ``python -m mdstream``).

Subcommands: ``demo``, ``replay``, ``drain``, ``info``, ``dump``, ``spill``,
``bench``.  Conventions every command follows:

* exit status: 0 success, 1 failure (one ``mdstream: error: ...`` line on
  stderr, no traceback), 2 usage error (a usage line, then the error),
  130 interrupted (Ctrl-C), 141 output pipe closed;
* an existing output is refused unless ``--force`` (a dump you already have is
  worth more than the new one);
* ``--json`` prints one JSON object on stdout with a ``"format":
  "mdstream-<command>/1"`` key and absolute paths; a failure under ``--json``
  is the object ``{"format": ..., "status": "error", "error": MESSAGE, "exit": N}``
  on stdout (and the usual line on stderr).

Only the standard library is imported at start-up (``import mdstream`` is
light too), so Ctrl-C at any moment ends in the one-line message, not a
traceback.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from mdstream import errors

__all__ = ["CommandError", "ProgressBar", "check_input", "check_output", "emit", "format_size", "main", "parse_size"]

PROG = "mdstream"
#: Progress appears only once a command has run this long (seconds).
PROGRESS_DELAY = 1.0
#: MDS_RING_MAX_CAPACITY in ring.h (16 GiB).
MAX_RING_CAPACITY = 1 << 34
#: The pipeline's default ring capacity (mdstream.pipeline.DEFAULT_RING_CAPACITY, without importing it).
DEFAULT_RING_CAPACITY = 4 * 1024 * 1024
#: The ring file's magic and its header page (docs/ring-format.md).
RING_MAGIC = b"MDSRING1"
RING_HEADER_SIZE = 4096

_EPILOG = """\
exit status: 0 success, 1 failure (one 'mdstream: error: ...' line on stderr; with --json
also {"status": "error", ...} on stdout), 2 usage error, 130 interrupted, 141 output pipe closed.
An existing output is never replaced without --force.  Run 'mdstream demo' to see the whole path work."""


class CommandError(Exception):
    """A failure the CLI reports as one line (``code`` is the exit status).

    ``reported``: the command already printed its JSON report (``info`` of a
    damaged dump), so no JSON error object follows it.
    """

    def __init__(self, message: str, code: int = 1, *, reported: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.reported = reported


class UsageError(Exception):
    """A usage error found by a parser (raised instead of argparse's print-and-exit)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors come back to :func:`main` (for ``--json``) instead of exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(self, message)


class _RunState:
    """What a command has done so far, for the message of an interruption."""

    def __init__(self) -> None:
        self.completed: list[str] = []   # outputs renamed into place
        self.stream_size = 0             # a dump written as a stream (-o -, a device, a FIFO)
        self.stream_sha256: str | None = None

    def output_done(self, path: str) -> None:
        self.completed.append(path)


_RUN = _RunState()


# --------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"4M"`` -> 4194304: a byte count with an optional binary suffix K, M, G, T
    (also ``KiB``/``KB``: all powers of 1024)."""
    m = _SIZE_RE.match(str(text))
    if not m or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
        raise ValueError(f"invalid size {text!r} (use bytes or a suffix: 64K, 4M, 1G)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    """``17179869184`` -> ``"16 GiB"``; exact binary units when they divide, else bytes."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def _size_arg(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is smaller than {format_size(minimum)}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is larger than {format_size(maximum)}")
        return value

    return convert


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"timeout must be a non-negative number of seconds, not {text!r}")
    return value


def _seed_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seed must be >= 0")
    return value


def _pid_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid process id {text!r}") from None
    if not 0 < value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"process id out of range: {text!r}")
    return value


def _dump_type_arg(text: str) -> int:
    from mdstream.dbghelp import MinidumpType

    try:
        return int(MinidumpType.parse(text))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path_arg(what: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text == "":
            raise argparse.ArgumentTypeError(f"empty {what}")
        if "\0" in text:
            raise argparse.ArgumentTypeError(f"{what} contains a NUL byte")
        return text

    return convert


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: works, and says which one to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, use: str, **kwargs: Any) -> None:
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{PROG}: warning: {option_string} is deprecated; use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _ring_capacity_option(p: argparse.ArgumentParser) -> None:
    capacity = _size_arg(4096, MAX_RING_CAPACITY)
    p.add_argument("--ring-capacity", type=capacity, default=DEFAULT_RING_CAPACITY, metavar="SIZE",
                   help="ring capacity (bytes; suffixes K, M, G; 4 KiB to 16 GiB; default 4 MiB)")
    p.add_argument("--ring-size", type=capacity, dest="ring_capacity", action=_DeprecatedAlias,
                   use="--ring-capacity", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


class ProgressBar:
    """Progress on stderr for one command, from its start.

    Nothing is drawn for a command that ends within ``delay`` seconds.  Long
    work without byte counts (planning a replay) shows as a named phase with
    its elapsed time (:meth:`phase`); the pipeline's reports (``__call__``)
    draw a byte bar, which appears at once if the command has already run
    ``delay`` seconds (planning included), not only after the drain itself did.
    """

    def __init__(self, enabled: bool, desc: str, *, delay: float = PROGRESS_DELAY, file: Any = None) -> None:
        self.enabled = enabled
        self.desc = desc
        self.delay = delay
        self.file = file
        self.bar: Any = None
        self.started = time.monotonic()

    def _stream(self) -> Any:
        return self.file or sys.stderr

    def phase(self, label: str) -> Any:
        """A context manager: while its block runs, a line ``LABEL: elapsed`` after ``delay``."""
        return _Phase(self, label)

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.started < self.delay:
                return
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

            self.bar = tqdm(total=p.expected_bytes, initial=p.bytes, desc=self.desc, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False, dynamic_ncols=True, file=self._stream(),
                            postfix=f"{p.writes:,} writes")
            return
        self.bar.set_postfix_str(f"{p.writes:,} writes", refresh=False)
        self.bar.update(p.bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Phase:
    def __init__(self, owner: ProgressBar, label: str) -> None:
        self.owner = owner
        self.label = label
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Phase:
        if self.owner.enabled:
            self.thread = threading.Thread(target=self._show, name="mdstream-progress", daemon=True)
            self.thread.start()
        return self

    def _show(self) -> None:
        wait = self.owner.delay - (time.monotonic() - self.owner.started)
        if self.done.wait(max(0.0, wait)):
            return
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

        bar = tqdm(total=None, desc=self.label, bar_format="{desc}: {elapsed}", leave=False,
                   file=self.owner._stream())
        try:
            while not self.done.wait(0.25):
                bar.refresh()
        finally:
            bar.close()

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()


def _progress_for(args: argparse.Namespace, desc: str) -> ProgressBar:
    enabled = (not getattr(args, "quiet", False) and not getattr(args, "json", False)
               and _isatty(sys.stderr) and _isatty(sys.stdout))
    return ProgressBar(enabled, desc)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _sha256(path: str, show_progress: bool = False) -> str:
    """The file's sha256; a progress bar (after PROGRESS_DELAY seconds) when ``show_progress``."""
    h = hashlib.sha256()
    bar = None
    if show_progress:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

        bar = tqdm(total=os.path.getsize(path), desc="sha256", unit="B", unit_scale=True, unit_divisor=1024,
                   leave=False, dynamic_ncols=True, delay=PROGRESS_DELAY, file=sys.stderr)
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                h.update(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


def _check_input(path: str, what: str) -> None:
    """Refuse a missing file, a directory, a pipe or a device before any work (the error names ``path``)."""
    from mdstream._files import open_input

    os.close(open_input(path, what))


def _is_stream(path: str) -> bool:
    """``-`` (standard output), or an existing device or FIFO: written as a stream, never replaced."""
    if path == "-":
        return True
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def _check_output(path: str, force: bool = False, *, stream_ok: bool = False) -> None:
    """Refuse a directory, a missing parent and (without ``force``) an existing output, before any work.

    With ``stream_ok``, ``-`` and an existing device or FIFO pass: the command
    writes them as a stream (:class:`mdstream.StreamSink`).  Any other command
    refuses them: a file output never replaces a device.
    """
    if _is_stream(path):
        if stream_ok:
            return
        raise CommandError(f"{path}: not a regular file; this command writes files only")
    if path.endswith(os.sep) or os.path.isdir(path):
        raise CommandError(f"{path}: is a directory; give the output file's name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CommandError(f"{path}: cannot create: directory {parent} does not exist")
    if not force and os.path.lexists(path):
        raise CommandError(f"{path}: exists; use --force to replace it")


def _format_name(args: argparse.Namespace) -> str:
    command = getattr(args, "command", None) or ""
    if command == "spill" and getattr(args, "spill_command", None):
        command = f"spill-{args.spill_command}"
    return f"mdstream-{command}/1" if command else "mdstream/1"


def _emit(args: argparse.Namespace, payload: dict[str, Any], lines: Sequence[str]) -> None:
    """Print ``lines`` (unless ``--quiet``), or with ``--json`` one object: ``format``, ``status``, ``payload``.

    When the dump itself went to standard output (``-o -``), the lines go to
    standard error.
    """
    if getattr(args, "json", False):
        out = {"format": _format_name(args), "status": "ok"}
        out.update(payload)
        print(json.dumps(out, sort_keys=True))
    elif not getattr(args, "quiet", False):
        target = sys.stderr if getattr(args, "output", None) == "-" else sys.stdout
        for line in lines:
            print(line, file=target)


def _output_sink(path: str, force: bool) -> Any:
    """The sink for ``-o``: a :class:`FileSink`, or a :class:`StreamSink` for ``-``, a device or a FIFO."""
    from mdstream._sinks import FileSink
    from mdstream.pipeline import StreamSink

    if _is_stream(path):
        return StreamSink(path)
    return FileSink(path, overwrite=force)


def _check_stream_json(args: argparse.Namespace) -> None:
    if getattr(args, "output", None) == "-" and getattr(args, "json", False):
        raise CommandError("-o - writes the dump to standard output: --json cannot share it", code=2)


# For the command groups other modules register (mdstream/cli_*.py): the same conventions.
emit = _emit
check_input = _check_input
check_output = _check_output


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _abort_all(sinks: Sequence[Any], exc: BaseException) -> None:
    for sink in sinks:
        try:
            sink.abort(exc)
        except Exception:
            pass


def _fmt_rate(gbps: float) -> str:
    return f"{gbps:.3f} GB/s" if gbps < 10 else f"{gbps:.1f} GB/s"


def _output_fields(path: str, progress: ProgressBar | None = None) -> dict[str, Any]:
    if _is_stream(path):
        return {"output": "-" if path == "-" else os.path.abspath(path), "stream": True,
                "size": _RUN.stream_size, "mode": None, "sha256": _RUN.stream_sha256}
    st = os.stat(path)
    return {"output": os.path.abspath(path), "size": st.st_size, "mode": f"{st.st_mode & 0o777:04o}",
            "sha256": _sha256(path, bool(progress and progress.enabled))}


def _wrote_line(fields: dict[str, Any]) -> str:
    """The summary line for an output (a stream has no mode: its bytes went to the reader)."""
    where = "standard output" if fields["output"] == "-" else fields["output"]
    mode = f", mode {fields['mode']}" if fields.get("mode") is not None else " (streamed)"
    return f"wrote {where}: {fields['size']:,} bytes{mode}, sha256 {fields['sha256']}"


def _note_stream(sink: Any) -> None:
    """A stream's bytes are gone once written: keep its size and digest for the summary."""
    from mdstream.pipeline import StreamSink

    if isinstance(sink, StreamSink):
        _RUN.stream_size = sink.size
        _RUN.stream_sha256 = hashlib.sha256(memoryview(sink.memory)).hexdigest()


def _ring_fields(capacity: int) -> dict[str, Any]:
    # ``ring_size``: the old name, kept for readers of format /1 written before ring_capacity.
    return {"ring_capacity": capacity, "ring_size": capacity}


def _add_note(exc: BaseException, note: str) -> None:
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        try:
            notes = []
            setattr(exc, "__notes__", notes)
        except AttributeError:  # pragma: no cover
            return
    notes.append(note)


# --------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------


def _dump_problems(path: str) -> list[str]:
    """What ``mdstream info`` would call damaged: directory entries and nested ranges outside the file."""
    from mdstream.minidump import iter_regions, read_info

    info = read_info(path)
    nested = [f"{r.label}: {r.problem}" for r in iter_regions(path) if r.problem and r.kind != "stream"]
    return info.problems + nested


def _run_replay(source: str, output: str, *, schedule: str, chunk: int | None, seed: int, ring_capacity: int,
                trace: str | None, force: bool, progress: ProgressBar,
                check_damage: bool = False) -> tuple[Any, Any, list[str]]:
    """Plan (with progress), replay through the callback, drain into a FileSink (and a TraceSink).

    Returns ``(plan, result, problems)``; ``problems`` lists the damage found in
    a minidump source when ``check_damage``.
    """
    from mdstream._sinks import FileSink, TraceSink
    from mdstream.schedules import plan_for
    from mdstream.simulator import replay

    problems: list[str] = []
    try:
        with progress.phase(f"planning the replay of {os.path.basename(source)}"):
            if check_damage:
                problems = _dump_problems(source)
            plan = plan_for(source, schedule=schedule, chunk=chunk, seed=seed)
        sinks: list[Any] = []
        try:
            sinks.append(_output_sink(output, force))
            if trace:
                sinks.append(TraceSink(trace, overwrite=force))
        except BaseException as exc:
            _abort_all(sinks, exc)
            raise
        try:
            # drain() aborts the sinks itself on failure (keeping what a spill may need).
            result = replay(plan, sinks=sinks, schedule=schedule, ring_capacity=ring_capacity,
                            coalesce=not trace, progress=progress)
            _note_stream(sinks[0])
        except BaseException as exc:
            for sink in sinks:
                if isinstance(sink, TraceSink) and sink.state == "aborted" and os.path.exists(sink.path):
                    _add_note(exc, f"the partial trace is kept in {sink.path}")
            raise
    finally:
        progress.close()
    _RUN.output_done(output if output == "-" else os.path.abspath(output))
    if trace:
        _RUN.output_done(os.path.abspath(trace))
    result.rewritten_bytes = plan.rewritten_bytes
    return plan, result, problems


def _source_kind(path: str) -> str:
    from mdstream.trace import is_trace

    try:
        return "trace" if is_trace(path) else "minidump"
    except OSError:
        return "minidump"


def cmd_replay(args: argparse.Namespace) -> int:
    _check_input(args.source, "file")
    _check_output(args.output, args.force, stream_ok=True)
    _check_stream_json(args)
    if args.trace:
        _check_output(args.trace, args.force)
        if os.path.abspath(args.trace) == os.path.abspath(args.output):
            raise CommandError("--trace and -o name the same file")
    kind = _source_kind(args.source)
    schedule = "trace" if kind == "trace" else args.schedule
    progress = _progress_for(args, "replay")
    plan, result, problems = _run_replay(
        args.source, args.output, schedule=args.schedule, chunk=args.chunk, seed=args.seed,
        ring_capacity=args.ring_capacity, trace=args.trace, force=args.force, progress=progress,
        check_damage=kind == "minidump")
    for problem in problems[:3]:
        _warn(f"{args.source} is damaged: {problem}; replayed as it is")
    if len(problems) > 3:
        _warn(f"{args.source}: {len(problems) - 3} more problems (mdstream info {args.source} lists them)")
    payload = result.to_dict()
    payload.update(_output_fields(args.output, progress))
    payload.update({"source": os.path.abspath(args.source), "source_kind": kind, "schedule": schedule,
                    "chunk": args.chunk, "seed": args.seed, "planned_writes": plan.count,
                    "source_problems": problems, **_ring_fields(args.ring_capacity)})
    if args.trace:
        payload["trace"] = os.path.abspath(args.trace)
        payload["trace_records"] = result.records
    lines = [
        f"replayed {args.source} ({'its recorded writes' if kind == 'trace' else schedule + ' schedule'}) "
        f"through the DbgHelp callback in {result.seconds:.3f} s ({_fmt_rate(result.gbps)}; "
        f"{_plural(result.records, 'ring record')}): {result.summary()}",
        _wrote_line(payload),
    ]
    if args.trace:
        lines.append(f"trace {payload['trace']}: {_plural(result.records, 'record')} (MDTRACE1)")
    _emit(args, payload, lines)
    return 0


# --------------------------------------------------------------------------
# drain
# --------------------------------------------------------------------------


def _ring_path(name: str) -> str:
    """Where a ring argument lives on this system (a shared-memory name or a path)."""
    if os.sep in name or (os.altsep and os.altsep in name):
        return os.path.abspath(name)
    return f"/dev/shm/{name}" if sys.platform.startswith("linux") else name


def _refuse_non_ring(name: str) -> None:
    """A file that exists but is no ring gets that said plainly (before the ring checks ask to chmod it)."""
    path = _ring_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # missing, a symlink, unreadable: the ring's own checks say what is wrong
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CommandError(f"{name}: not a ring (not a regular file)")
        head = os.pread(fd, len(RING_MAGIC), 0)
    finally:
        os.close(fd)
    if head != RING_MAGIC:
        what = "an empty file" if st.st_size == 0 else f"starts with {head!r}, not {RING_MAGIC!r}"
        raise CommandError(f"{name}: not an mdstream ring ({what})")
    if st.st_size < RING_HEADER_SIZE:
        raise CommandError(f"{name}: a truncated ring: {st.st_size:,} bytes, but its header alone is "
                           f"{RING_HEADER_SIZE:,} (docs/ring-format.md)")


def _wait_for_ring(name: str, timeout: float | None, quiet: bool) -> Any:
    """Attach ``name``, waiting for its producer to create it (up to ``timeout``; forever by default)."""
    from mdstream._ring import Ring

    started = time.monotonic()
    said = False
    while True:
        _refuse_non_ring(name)
        try:
            return Ring.attach(name)
        except errors.RingNotFoundError:
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                raise CommandError(f"{name}: no ring appeared within {timeout:g} s") from None
            if not said and not quiet and waited > 0.5:
                print(f"{PROG}: waiting for ring {name} to appear (Ctrl-C to stop)", file=sys.stderr)
                said = True
            time.sleep(0.05)


def cmd_drain(args: argparse.Namespace) -> int:
    from mdstream.pipeline import drain

    _check_output(args.output, args.force, stream_ok=True)
    _check_stream_json(args)
    ring = _wait_for_ring(args.ring, args.timeout, bool(args.quiet or args.json))
    progress = _progress_for(args, "drain")
    sinks: list[Any] = []
    try:
        try:
            sinks.append(_output_sink(args.output, args.force))
        except BaseException:
            # A refused output changes nothing: this process never took the consumer role.
            raise
        result = drain(ring, sinks, timeout=args.timeout, progress=progress)
        _note_stream(sinks[0])
    finally:
        progress.close()
        try:
            ring.close()
        except (BufferError, errors.RingBusyError):  # pragma: no cover - a view outlived the drain
            pass
    _RUN.output_done(args.output if args.output == "-" else os.path.abspath(args.output))
    payload = result.to_dict()
    payload.update(_output_fields(args.output, progress))
    payload["ring"] = _ring_path(args.ring) if os.sep in args.ring else args.ring
    lines = [
        f"drained ring {args.ring} in {result.seconds:.3f} s ({_fmt_rate(result.gbps)}; "
        f"{_plural(result.records, 'ring record')}): {result.summary()}",
        _wrote_line(payload),
    ]
    _emit(args, payload, lines)
    return 0


# --------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------


def _flag_names(flags: int) -> list[str]:
    from mdstream.dbghelp import MinidumpType

    names = MinidumpType.describe(flags & 0xFFFFFFFF) if flags & 0xFFFFFFFF or not flags >> 32 else []
    if flags >> 32:
        names.append(f"0x{flags & ~0xFFFFFFFF:016X}")
    return names


def cmd_info(args: argparse.Namespace) -> int:
    import dataclasses

    from mdstream.minidump import iter_regions, read_info, read_summary

    _check_input(args.dump, "minidump")
    info = read_info(args.dump)
    info = dataclasses.replace(info, flag_names=_flag_names(info.flags))
    summary = read_summary(args.dump)
    nested = [f"{r.label}: {r.problem}" for r in iter_regions(args.dump) if r.problem and r.kind != "stream"]
    problems = info.problems + nested
    if args.json:
        payload = info.to_dict()
        payload["path"] = os.path.abspath(args.dump)
        payload["summary"] = summary.to_dict()
        payload["problems"] = problems
        payload["ok"] = not problems
        _emit(args, payload, [])
    else:
        text = info.format_text().split("\n")
        blank = text.index("")  # the header fields, then the stream table
        print("\n".join(text[:blank] + summary.format_text() + text[blank:]))
        if nested:
            print("")
            print("problems inside streams:")
            for p in nested:
                print(f"  {p}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CommandError(f"{args.dump}: damaged minidump: {problems[0]}{more}", reported=True)
    return 0


# --------------------------------------------------------------------------
# dump
# --------------------------------------------------------------------------


def cmd_dump(args: argparse.Namespace) -> int:
    from mdstream import dump as dumping
    from mdstream.dbghelp import MinidumpType

    try:
        system = dumping.system_writer()
    except errors.UnsupportedPlatformError as exc:
        raise CommandError(str(exc), code=2) from None
    options: dict[str, Any] = {}
    if system == "linux":
        try:
            dumping.linux_options_for(args.type)
        except errors.DumpOptionError as exc:
            raise CommandError(f"--type: {exc}", code=2) from None
        options = {"include_environ": args.include_environ, "include_cmdline": not args.no_cmdline}
    else:
        linux_only = [flag for flag, given in (("--include-environ", args.include_environ),
                                               ("--no-cmdline", args.no_cmdline)) if given]
        if linux_only:
            raise CommandError(f"{', '.join(linux_only)}: Linux-only option{'s' if len(linux_only) > 1 else ''}; "
                               f"this is Windows (DbgHelp decides what a dump holds from --type)", code=2)
    _check_output(args.output, args.force)
    progress = _progress_for(args, f"dump {args.pid}")
    try:
        result = dumping.write_dump(args.pid, args.output, dump_type=args.type, full=args.full,
                                    sanitize_stacks=args.sanitize_stacks, overwrite=args.force,
                                    progress=progress, **options)
    finally:
        progress.close()
    _RUN.output_done(os.path.abspath(args.output))
    if system == "linux":
        flags = int(args.type or 0)
    else:
        from mdstream.windows import DEFAULT_DUMP_TYPE

        flags = int(DEFAULT_DUMP_TYPE if args.type is None else args.type)
    flags |= (int(MinidumpType.MiniDumpWithFullMemory) if args.full else 0)
    flags |= (int(MinidumpType.MiniDumpFilterMemory) if args.sanitize_stacks else 0)
    payload = result.to_dict()
    payload.update(_output_fields(args.output, progress))
    payload.update({"pid": args.pid, "system": system, "dump_type": flags,
                    "dump_type_names": MinidumpType.describe(flags)})
    extra = result.extra
    what = ""
    if "threads" in extra:
        what = f", {_plural(int(extra['threads']), 'thread')}, {_plural(int(extra.get('modules', 0)), 'module')}"
    stopped = (f"; the process was stopped for {extra['stopped_seconds'] * 1000:.1f} ms"
               if "stopped_seconds" in extra else "")
    _emit(args, payload, [
        f"dumped process {args.pid} into {payload['output']}: {payload['size']:,} bytes{what}{stopped}",
        f"{result.summary()}; sha256 {payload['sha256']}"])
    return 0


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


def _write_size_breakdown(lengths: Any) -> dict[str, int]:
    """Writes by size, in classes that add up to all of them."""
    import numpy as np

    return {
        "up_to_16": int(np.count_nonzero(lengths <= 16)),
        "17_to_1023": int(np.count_nonzero((lengths > 16) & (lengths < 1024))),
        "1024": int(np.count_nonzero(lengths == 1024)),
        "over_1024": int(np.count_nonzero(lengths > 1024)),
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from mdstream.minidump import read_info
    from mdstream.plan import backward_writes
    from mdstream.sample import build_sample_minidump, sample_facts

    seed = args.seed
    if args.output:
        _check_output(args.output, args.force)
    sample = build_sample_minidump(seed)
    facts = sample_facts(seed)
    workdir = tempfile.mkdtemp(prefix="mdstream-demo-")  # private (0700)
    keep_workdir = args.output is None
    output = args.output or os.path.join(workdir, "mdstream-demo.dmp")
    source = os.path.join(workdir, "sample.dmp")
    progress = _progress_for(args, "demo")
    try:
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(sample)
        plan, result, _ = _run_replay(source, output, schedule="writer", chunk=None, seed=0,
                                      ring_capacity=args.ring_capacity, trace=None, force=args.force,
                                      progress=progress)
    finally:
        try:
            os.unlink(source)
        except FileNotFoundError:
            pass
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    fields = _output_fields(output, progress)
    expected = hashlib.sha256(sample).hexdigest()
    identical = fields["sha256"] == expected and fields["size"] == len(sample)
    info = read_info(output)
    _, seeks_back = backward_writes(plan)
    sizes = _write_size_breakdown(plan.lengths)
    stream_names = [s.type_name for s in info.streams]
    payload = result.to_dict()
    payload.update(fields)
    payload.update({
        "identical": identical, "expected_sha256": expected, "sample_size": len(sample), "schedule": "writer",
        "streams": stream_names, "threads": len(facts["threads"]), "modules": len(facts["modules"]),
        "memory_ranges": len(facts["memory"]), "write_sizes": sizes, "seeks_back": seeks_back,
        **_ring_fields(args.ring_capacity), "source": "built-in sample (mdstream.sample)", "seed": seed,
    })
    lines = [
        f"mdstream demo: built a sample x64 minidump of {len(sample):,} bytes ({_plural(len(facts['threads']), 'thread')}, "
        f"{_plural(len(facts['modules']), 'module')}, {_plural(len(facts['memory']), 'memory range')})",
        f"  replayed it as DbgHelp writes a dump: IoStartCallback, {_plural(result.writes, 'IoWriteAllCallback call')} "
        f"({sizes['up_to_16']:,} of <= 16 bytes, {sizes['17_to_1023']:,} of 17-1023 bytes, "
        f"{sizes['1024']:,} of 1 KiB, {sizes['over_1024']:,} larger; {seeks_back:,} seeking back), IoFinishCallback, "
        f"from a native thread into the GIL-free callback and a {format_size(args.ring_capacity)} ring",
        f"  drained the ring into {fields['output']} in {result.seconds:.3f} s ({_fmt_rate(result.gbps)}, "
        f"{_plural(result.records, 'ring record')}): {result.summary()}",
        (f"  byte-identical to the sample (sha256 {fields['sha256']})" if identical else
         f"  MISMATCH: sha256 {fields['sha256']}, expected {expected}"),
        f"  read back: '{info.signature.to_bytes(4, 'little').decode('latin-1')}' version 0x{info.version:08x}, "
        f"{_plural(len(stream_names), 'stream')}: {', '.join(stream_names)}",
        f"next: mdstream info {fields['output']}",
    ]
    _emit(args, payload, lines)
    if not identical:
        raise CommandError(f"the demo output {fields['output']} differs from the sample (sha256 {fields['sha256']} "
                           f"!= {expected})", reported=True)
    return 0


# --------------------------------------------------------------------------
# spill
# --------------------------------------------------------------------------


def _spill_state_line(report: dict[str, Any]) -> str:
    spill = report["spill"]
    if report["failed"]:
        return "FAILED: a spill write failed; the dump cannot be finished from this spill"
    if not report["finished"]:
        return "not finished: the producer is still spilling, or died before IoFinish"
    if report["base_complete"]:
        return f"complete: the spill file is the dump (mdstream spill finish {spill} -o OUT copies it)"
    return f"finished: run mdstream spill finish {spill} --base PARTIAL -o OUT"


def cmd_spill_inspect(args: argparse.Namespace) -> int:
    from mdstream import spill

    report = spill.inspect(args.spill)
    if args.json:
        _emit(args, report, [])
    else:
        flags = " | ".join(report["flag_names"]) or "-"
        if not report["spill_exists"]:
            contents = "missing"
        else:
            why = report["spill_minidump_problem"]
            parses = "parses as a minidump" if report["spill_is_minidump"] else f"not a minidump: {why}"
            contents = f"{report['spill_size']:,} bytes; {parses}"
        base = (f"{report['base_bytes']:,} bytes copied from {report['base_path']}" if report["base_path"]
                else f"{report['base_bytes']:,} bytes copied (the consumer registered no output file)")
        lines = [
            f"spill file  {report['spill']} ({contents})",
            f"manifest    {report['manifest']} ({report['manifest_size']:,} bytes, version {report['version']})",
            f"state       0x{report['flags']:x} ({flags}): {_spill_state_line(report)}",
            f"trigger     {report['trigger']} ({report['trigger_name']})",
            f"reason      {report['reason'] or '-'}",
            f"dump size   {report['dump_size']:,} bytes" + ("" if report["finished"] else " (known at IoFinish)"),
            f"base        {base}",
            f"ring        resume_pos {report['resume_pos']:,}, end {report['ring_end_pos']:,}: "
            f"{_plural(report['replayed_records'], 'record')} ({report['replayed_bytes']:,} bytes) replayed",
            f"direct      {_plural(report['direct_writes'], 'write')} ({report['direct_bytes']:,} bytes)",
            f"extents     {report['extent_count']:,}: {report['covered_bytes']:,} bytes in "
            f"{_plural(report['covered_ranges'], 'merged range')}, up to byte {report['covered_end']:,}"
            + (f" ({report['trailing_bytes']:,} trailing manifest bytes ignored)" if report["trailing_bytes"] else ""),
            f"spilled at  {report['spilled_iso'] or '-'} by process {report['producer_pid']}",
        ]
        for problem in report["problems"]:
            lines.append(f"problem     {problem}")
        for line in lines:
            print(line)
    if report["problems"]:
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise CommandError(f"{args.spill}: {report['problems'][0]}{more}", reported=True)
    return 0


def cmd_spill_finish(args: argparse.Namespace) -> int:
    from mdstream import spill

    _check_output(args.output, args.force)
    if args.base is not None:
        _check_input(args.base, "file")
    result = spill.finish(args.spill, args.output, args.base, overwrite=args.force)
    _RUN.output_done(result["output"])
    if result["method"] == "copy":
        how = f"the spill file is the dump ({result['bytes_from_spill']:,} bytes copied)"
    else:
        how = (f"{result['bytes_from_spill']:,} bytes from the spill ({_plural(result['covered_ranges'], 'range')} of "
               f"{_plural(result['extent_count'], 'extent')}) over {result['bytes_from_base']:,} bytes of {result['base']}")
        if result["zero_filled_bytes"]:
            how += f", {result['zero_filled_bytes']:,} bytes in neither (zero-filled)"
    parses = ("parses as a minidump" if result["is_minidump"]
              else f"does NOT parse as a minidump: {result['minidump_problem']}")
    _emit(args, result, [
        f"finished spill {result['spill']}: {how}",
        _wrote_line(result) + "; "
        f"{parses}",
    ])
    return 0


# --------------------------------------------------------------------------
# Parser and main
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from mdstream import __version__

    parser = _Parser(
        prog=PROG,
        description="Stream DbgHelp minidump I/O callbacks through a memory-mapped ring into files.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def output_opts(p: argparse.ArgumentParser, progress: bool = True, force: bool = False) -> None:
        p.add_argument("--json", action="store_true",
                       help='print one JSON object instead of the summary (its "format" key names the layout)')
        if progress:
            p.add_argument("-q", "--quiet", action="store_true",
                           help="no progress bar and no summary (errors still go to stderr)")
        if force:
            p.add_argument("--force", action="store_true", help="replace the output if it exists")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("epilog", _EPILOG)
        return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    p = command(
        "demo", help="replay a built-in sample dump through the whole path and check the result",
        description="Build a sample x64 minidump, replay it through the real callback path with the writer "
                    "schedule (DbgHelp's I/O pattern) into a file, check the file is byte-identical and parse it "
                    "back.  Without -o the output goes to a new private temporary directory (printed).")
    p.add_argument("-o", "--output", metavar="OUT", type=_path_arg("output path"),
                   help="where to write the replayed dump")
    p.add_argument("--seed", type=_seed_arg, default=0, help="sample contents seed (default 0)")
    _ring_capacity_option(p)
    output_opts(p, force=True)
    p.set_defaults(func=cmd_demo)

    p = command(
        "replay", help="replay a minidump or MDTRACE1 trace through the callback into a file",
        description="Replay SOURCE (a minidump, cut into writes by --schedule, or an MDTRACE1 trace, replayed "
                    "in its recorded order) through the real DbgHelp callback routine from a native thread, "
                    "drain the ring into OUT and report the throughput and the output's sha256.  OUT is written "
                    "privately (0600) beside its final name and renamed into place only on success.  A damaged "
                    "minidump (streams past its end) is replayed as it is, with a warning.")
    p.add_argument("source", metavar="SOURCE", type=_path_arg("source path"), help="a minidump or an MDTRACE1 trace")
    p.add_argument("-o", "--output", metavar="OUT", required=True, type=_path_arg("output path"),
                   help="the reassembled dump")
    p.add_argument("--schedule", choices=("sequential", "writer", "shuffled"), default="writer",
                   help="how a minidump is cut into writes (default: writer, DbgHelp's pattern); "
                        "ignored for traces")
    p.add_argument("--chunk", type=_size_arg(1, 0xFFFFFFFF), default=None, metavar="N",
                   help="write size: sequential pieces (default 64K), shuffled pieces (4K), "
                        "writer memory pieces (1K)")
    p.add_argument("--seed", type=_seed_arg, default=0, help="seed of the shuffled schedule (default 0)")
    _ring_capacity_option(p)
    p.add_argument("--trace", metavar="OUT.mdtrace", type=_path_arg("trace path"),
                   help="also record the writes as an MDTRACE1 trace (docs/trace-format.md; writes are then not "
                        "coalesced, so the trace keeps the writer's exact writes; only a write larger than the "
                        "ring can hold in one record is split)")
    output_opts(p, force=True)
    p.set_defaults(func=cmd_replay)

    p = command(
        "drain", help="consume a named ring another process produces into a file",
        description="Attach to RING (a shared-memory name or a ring file's path) that another process created "
                    "and writes (e.g. a crash agent's DumpCallback), and reassemble what it streams into OUT.")
    p.add_argument("ring", metavar="RING", type=_path_arg("ring name"),
                   help="the ring's shared-memory name or file path")
    p.add_argument("-o", "--output", metavar="OUT", required=True, type=_path_arg("output path"),
                   help="the reassembled dump")
    p.add_argument("--timeout", type=_seconds_arg, default=None, metavar="S",
                   help="give up after S seconds without data (default: wait as long as the producer lives)")
    output_opts(p, force=True)
    p.set_defaults(func=cmd_drain)

    p = command(
        "info", help="show a minidump's header, system, exception, threads, modules and stream table",
        description="Show DUMP's MINIDUMP_HEADER (signature, version, stream count, directory RVA, flags as "
                    "MINIDUMP_TYPE names, timestamp), what a crash report shows first (system, the exception: "
                    "code or signal, address and thread; threads with their names; modules with their build "
                    "or debug ids) and the stream directory (type, name, size, RVA).  Streams and the ranges "
                    "they point at (memory, contexts, strings) that lie outside the file are marked.",
        epilog="exit status: 0 for a sound minidump; 1 if DUMP is not a minidump, or (after printing the report) "
               "if any stream or range it points at lies outside the file or a stream type repeats; 2 usage error.")
    p.add_argument("dump", metavar="DUMP", type=_path_arg("dump path"))
    output_opts(p, progress=False)
    p.set_defaults(func=cmd_info)

    p = command(
        "dump", help="write a minidump of a running process",
        description="Dump process PID, streaming its output through the callback into OUT: with "
                    "MiniDumpWriteDump on Windows; on Linux with mdstream's own writer (ptrace snapshot, then "
                    "the same IoStart/IoWriteAll/IoFinish protocol).  --type means the same on both: on Linux "
                    "WithFullMemory is --full, FilterMemory is --sanitize-stacks, IgnoreInaccessibleMemory is "
                    "always so, and any other flag is refused.  Other systems exit with status 2.")
    p.add_argument("pid", metavar="PID", type=_pid_arg)
    p.add_argument("-o", "--output", metavar="OUT", required=True, type=_path_arg("output path"))
    p.add_argument("--type", metavar="NAMES", type=_dump_type_arg, default=None,
                   help="MINIDUMP_TYPE flags, names joined by '|' or ',' with or without 'MiniDump' (default: "
                        "WithDataSegs|WithHandleData|WithUnloadedModules|WithThreadInfo on Windows, Normal on "
                        "Linux; e.g. WithFullMemory)")
    p.add_argument("--full", action="store_true",
                   help="all the process's memory (MiniDumpWithFullMemory; on Linux every readable private "
                        "mapping, as a Memory64List)")
    p.add_argument("--sanitize-stacks", action="store_true",
                   help="keep only pointer-like stack words (MiniDumpFilterMemory; on Linux Breakpad's rule)")
    p.add_argument("--include-environ", action="store_true",
                   help="Linux only: keep the environment (left out by default: it often holds secrets)")
    p.add_argument("--no-cmdline", action="store_true", help="Linux only: leave the command line out")
    output_opts(p, force=True)
    p.set_defaults(func=cmd_dump)

    p = command(
        "spill", help="inspect or finish a dump the callback spilled to a file",
        description="When the consumer of a ring dies or stalls, the dump callback writes the rest of the dump "
                    "to its spill file S and describes it in S.mdspill (docs/spill-format.md).  'inspect' "
                    "reports on a spill; 'finish' writes the dump it holds.")
    spill_sub = p.add_subparsers(dest="spill_command", metavar="ACTION", required=True)
    sp = spill_sub.add_parser(
        "inspect", help="show a spill's manifest and what its files hold",
        description="Read SPILL.mdspill (strictly validated) and report every field: state flags, trigger, "
                    "reason, dump size, what was copied, replayed and written directly, the extents' union, and "
                    "whether SPILL parses as a minidump.",
        epilog="exit status: 0 if the manifest is valid and agrees with the spill file; 1 if it is invalid, "
               "or (after printing the report) the spill file is missing or shorter than the manifest says; "
               "2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("spill", metavar="SPILL", type=_path_arg("spill path"),
                    help="the spill file (or its .mdspill manifest)")
    output_opts(sp, progress=False)
    sp.set_defaults(func=cmd_spill_inspect)
    sp = spill_sub.add_parser(
        "finish", help="write the dump a finished spill holds",
        description="Write the dump to OUT.  If the consumer's output was copied into the spill "
                    "(BASE_COMPLETE), SPILL is the dump and is copied; otherwise --base names the consumer's "
                    "partial output, and OUT is its bytes (cut or zero-extended to the dump's size) with every "
                    "byte the spill holds laid over them.  The spill must be FINISHED and not FAILED.  OUT is "
                    "written privately (0600) beside its final name and renamed into place.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("spill", metavar="SPILL", type=_path_arg("spill path"),
                    help="the spill file (or its .mdspill manifest)")
    sp.add_argument("-o", "--output", metavar="OUT", required=True, type=_path_arg("output path"),
                    help="the finished dump")
    sp.add_argument("--base", metavar="PARTIAL", type=_path_arg("base path"),
                    help="the consumer's partial output (needed unless the spill is BASE_COMPLETE)")
    output_opts(sp, progress=False, force=True)
    sp.set_defaults(func=cmd_spill_finish)

    from mdstream import bench
    p = bench.add_parser(sub)
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter

    from mdstream import cli_reports  # reports list|show|prune, upload
    cli_reports.add_parsers(sub)
    from mdstream import cli_crash  # run, watch
    cli_crash.add_parsers(sub)
    from mdstream import cli_ring  # ring list|clean
    cli_ring.add_parsers(sub)
    return parser


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, errors.OutputExistsError):
        text = str(exc).replace("pass overwrite=True to replace it", "use --force to replace it")
    elif isinstance(exc, (CommandError, errors.MdstreamError)) or not isinstance(exc, OSError):
        text = str(exc) or type(exc).__name__
    else:
        strerror = exc.strerror or ""
        name = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else None
        if name and strerror and name not in strerror:
            text = f"{name}: {strerror}"
        elif strerror:
            text = strerror
        else:
            text = str(exc) or type(exc).__name__
        text = re.sub(r"^\[Errno \d+\] ", "", text)
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            text += " (the disk is full; the output was not written)"
    notes = getattr(exc, "__notes__", None)
    if notes:
        text += " (" + "; ".join(notes) + ")"
    return " ".join(text.split())


def _expected(exc: BaseException) -> bool:
    """Failures reported as one line; anything else is a bug and keeps its traceback."""
    if isinstance(exc, (CommandError, errors.MdstreamError, OSError)):
        return True
    if isinstance(exc, ValueError):
        # A ValueError of mdstream's own (the compiled ring's argument checks): still one line.
        return type(exc).__module__.startswith("mdstream")
    return False


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


_COMMANDS = ("demo", "replay", "drain", "info", "dump", "spill", "bench")


def _format_from_argv(argv: Sequence[str]) -> str:
    words = [a for a in argv if not a.startswith("-")]
    if words and words[0] in _COMMANDS:
        if words[0] == "spill" and len(words) > 1 and words[1] in ("inspect", "finish"):
            return f"mdstream-spill-{words[1]}/1"
        return f"mdstream-{words[0]}/1"
    return "mdstream/1"


def _json_error(fmt: str, message: str, code: int) -> None:
    try:
        print(json.dumps({"format": fmt, "status": "error", "error": message, "exit": code}, sort_keys=True))
    except (BrokenPipeError, ValueError):
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (sinks aborted, the ring told), then exits 143."""


def _terminate_like_interrupt() -> Any:
    import signal

    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            # A forked child (the bench's peer producers): end as SIGTERM ends a process, no traceback.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - not the main thread of the main interpreter
        return None


class _SignalWitness:
    """Which signals arrived during a command, as Python's C-level handler saw them
    (``signal.set_wakeup_fd``).  An import of a C extension can swallow the
    KeyboardInterrupt or :class:`Terminated` a signal raised (numpy turns it into
    an ImportError), so what comes out instead is reported as that interruption.
    Watching leaves the handlers alone, so nothing of mdstream's shows in what
    Python prints for an interrupt it had to ignore."""

    def __init__(self) -> None:
        import signal

        self.fds: tuple[int, int] | None = None
        self.previous = -1
        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            self.previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):  # pragma: no cover - not the main thread of the main interpreter
            os.close(r)
            os.close(w)
            return
        self.fds = (r, w)
        if self.previous != -1:  # somebody else's (an event loop): theirs, not ours
            self.close()

    def seen(self) -> int | None:
        """SIGTERM or SIGINT if one arrived (SIGTERM first), else None."""
        import signal

        if self.fds is None:
            return None
        try:
            got = os.read(self.fds[0], 4096)
        except BlockingIOError:
            return None
        for signum in (signal.SIGTERM, signal.SIGINT):
            if bytes([signum]) in got:
                return signum
        return None

    def close(self) -> None:
        import signal

        if self.fds is None:
            return
        signal.set_wakeup_fd(self.previous)
        for fd in self.fds:
            os.close(fd)
        self.fds = None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mdstream`` command; returns the exit status."""
    argv_list = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv_list
    args: argparse.Namespace | None = None
    _RUN.completed.clear()

    def fail(message: str, code: int, *, usage: argparse.ArgumentParser | None = None,
             reported: bool = False) -> int:
        if usage is not None:
            usage.print_usage(sys.stderr)
            print(f"{usage.prog}: error: {message}", file=sys.stderr)
        else:
            print(f"{PROG}: error: {message}", file=sys.stderr)
        if want_json and not reported:
            _json_error(_format_name(args) if args is not None else _format_from_argv(argv_list), message, code)
        return code

    previous_term = None
    witness = _SignalWitness()
    try:
        previous_term = _terminate_like_interrupt()
        parser = build_parser()
        try:
            args = parser.parse_args(argv_list)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args))
    except Terminated:
        return fail("terminated (SIGTERM)", 143)
    except KeyboardInterrupt:
        if _RUN.completed:
            done = ", ".join(_RUN.completed)
            return fail(f"interrupted after {done} was written completely (the summary was not printed)", 130)
        return fail("interrupted", 130)
    except BrokenPipeError:
        # Our reader went away (``mdstream info X | head``): stop quietly, as
        # SIGPIPE would, and keep Python from complaining while flushing.
        _silence_stdout()
        return 141
    except UsageError as exc:
        return fail(str(exc), 2, usage=exc.parser)
    except SystemExit as exc:  # a command that exits on its own
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        if isinstance(exc, CommandError):
            return fail(_describe_error(exc), exc.code, reported=exc.reported)
        if _expected(exc):
            return fail(_describe_error(exc), 1)
        signum = witness.seen()
        if signum is not None:  # the interrupt, turned into another error on its way out
            import signal

            if signum == signal.SIGTERM:
                return fail("terminated (SIGTERM)", 143)
            return fail("interrupted", 130)
        raise
    finally:
        witness.close()
        if previous_term is not None:
            import signal

            signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
