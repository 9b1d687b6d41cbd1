"""The ``mdstream`` command (also ``python -m mdstream``).

Subcommands: ``demo``, ``replay``, ``drain``, ``info``, ``dump``, ``spill``.  Exit status:
0 success, 1 failure (one ``mdstream: error: ...`` line on stderr, no
traceback), 2 usage error, 130 interrupted (Ctrl-C).
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
import sys
import tempfile
from typing import Any, Callable, Sequence

from mdstream import FileSink, Ring, TraceSink, errors
from mdstream.pipeline import DEFAULT_RING_CAPACITY, Progress, drain

__all__ = ["main", "parse_size"]

PROG = "mdstream"
#: Progress bars appear only for runs longer than this (seconds).
PROGRESS_DELAY = 1.0
#: MDS_RING_MAX_CAPACITY in ring.h (16 GiB).
MAX_RING_SIZE = 1 << 34
DEFAULT_DUMP_TYPE = "WithDataSegs|WithHandleData|WithUnloadedModules|WithThreadInfo"

_EPILOG = """\
exit status: 0 success, 1 failure (one 'mdstream: error: ...' line on stderr),
2 usage error, 130 interrupted, 141 output pipe closed.  Run 'mdstream demo' to see the whole path work."""


class CommandError(Exception):
    """A failure the CLI reports as one line (``code`` is the exit status)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


def _size_arg(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is smaller than {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is larger than {maximum}")
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


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


class ProgressBar:
    """A ``progress`` callback for the pipeline that draws a tqdm bar on stderr.

    Drawn only when ``enabled`` and once the run has lasted ``delay`` seconds,
    so quick runs print nothing.  Call :meth:`close` when the run ends.
    """

    def __init__(self, enabled: bool, desc: str, *, delay: float = PROGRESS_DELAY, file: Any = None) -> None:
        self.enabled = enabled
        self.desc = desc
        self.delay = delay
        self.file = file
        self.bar: Any = None

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if p.seconds < self.delay:
                return
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

            self.bar = tqdm(total=p.expected_bytes, initial=p.bytes, desc=self.desc, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False, dynamic_ncols=True, file=self.file or sys.stderr,
                            postfix=f"{p.writes:,} writes")
            return
        self.bar.set_postfix_str(f"{p.writes:,} writes", refresh=False)
        self.bar.update(p.bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise CommandError(f"{path}: is a directory, not a {what}")


def _check_output(path: str) -> None:
    if path.endswith(os.sep) or os.path.isdir(path):
        raise CommandError(f"{path}: is a directory; give the output file's name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CommandError(f"{path}: cannot create: directory {parent} does not exist")


def _emit(args: argparse.Namespace, payload: dict[str, Any], lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, sort_keys=True))
    elif not getattr(args, "quiet", False):
        for line in lines:
            print(line)


def _abort_all(sinks: Sequence[Any], exc: BaseException) -> None:
    for sink in sinks:
        try:
            sink.abort(exc)
        except Exception:
            pass


def _fmt_rate(gbps: float) -> str:
    return f"{gbps:.3f} GB/s" if gbps < 10 else f"{gbps:.1f} GB/s"


def _output_fields(path: str, progress: ProgressBar | None = None) -> dict[str, Any]:
    st = os.stat(path)
    return {"output": os.path.abspath(path), "size": st.st_size, "mode": f"{st.st_mode & 0o777:04o}",
            "sha256": _sha256(path, bool(progress and progress.enabled))}


# --------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------


def _run_replay(source: str, output: str, *, schedule: str, chunk: int | None, seed: int, ring_size: int,
                trace: str | None, progress: ProgressBar) -> tuple[Any, Any, list[Any]]:
    """Plan, replay through the callback, drain into a FileSink (and a TraceSink)."""
    from mdstream.schedules import plan_for
    from mdstream.simulator import replay

    plan = plan_for(source, schedule=schedule, chunk=chunk, seed=seed)
    sinks: list[Any] = []
    try:
        sinks.append(FileSink(output))
        if trace:
            sinks.append(TraceSink(trace))
        result = replay(plan, sinks=sinks, schedule=schedule, ring_capacity=ring_size,
                        coalesce=not trace, progress=progress)
    except BaseException as exc:
        _abort_all(sinks, exc)
        for sink in sinks:
            if isinstance(sink, TraceSink) and sink.state == "aborted" and os.path.exists(sink.path):
                _add_note(exc, f"the partial trace is kept in {sink.path}")
        raise
    finally:
        progress.close()
    return plan, result, sinks


def _add_note(exc: BaseException, note: str) -> None:
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        try:
            notes = []
            setattr(exc, "__notes__", notes)
        except AttributeError:  # pragma: no cover
            return
    notes.append(note)


def _source_kind(path: str) -> str:
    try:
        from mdstream.trace import is_trace
    except ImportError:  # pragma: no cover - trace support missing
        return "minidump"
    try:
        return "trace" if is_trace(path) else "minidump"
    except OSError:
        return "minidump"


def cmd_replay(args: argparse.Namespace) -> int:
    _check_input(args.source, "file")
    _check_output(args.output)
    if args.trace:
        _check_output(args.trace)
        if os.path.abspath(args.trace) == os.path.abspath(args.output):
            raise CommandError("--trace and -o name the same file")
    kind = _source_kind(args.source)
    schedule = "trace" if kind == "trace" else args.schedule
    progress = _progress_for(args, "replay")
    plan, result, _ = _run_replay(args.source, args.output, schedule=args.schedule, chunk=args.chunk,
                                  seed=args.seed, ring_size=args.ring_size, trace=args.trace, progress=progress)
    payload = result.to_dict()
    payload.update(_output_fields(args.output, progress))
    payload.update({"source": os.path.abspath(args.source), "source_kind": kind, "schedule": schedule,
                    "chunk": args.chunk, "seed": args.seed, "ring_size": args.ring_size,
                    "planned_writes": plan.count})
    if args.trace:
        payload["trace"] = os.path.abspath(args.trace)
        payload["trace_records"] = result.records
    lines = [
        f"replayed {args.source} ({'its recorded writes' if kind == 'trace' else schedule + ' schedule'}) "
        f"through the DbgHelp callback: {result.writes:,} writes, {result.bytes:,} bytes in "
        f"{result.seconds:.3f} s ({_fmt_rate(result.gbps)}; {result.records:,} ring records)",
        f"wrote {payload['output']}: {payload['size']:,} bytes, mode {payload['mode']}, sha256 {payload['sha256']}",
    ]
    if args.trace:
        lines.append(f"trace {payload['trace']}: {result.records:,} records (MDTRACE1)")
    _emit(args, payload, lines)
    return 0


# --------------------------------------------------------------------------
# drain
# --------------------------------------------------------------------------


def cmd_drain(args: argparse.Namespace) -> int:
    _check_output(args.output)
    ring = Ring.attach(args.ring)
    progress = _progress_for(args, "drain")
    sinks: list[Any] = []
    try:
        try:
            sinks.append(FileSink(args.output))
        except BaseException as exc:
            # Tell the producer at once instead of letting it wait for space.
            if not ring.closed and ring.state == "open":
                ring.abort(0x80004005, f"consumer failed: {type(exc).__name__}: {exc}"[:255])
            raise
        result = drain(ring, sinks, timeout=args.timeout, progress=progress)
    except BaseException as exc:
        _abort_all(sinks, exc)
        raise
    finally:
        progress.close()
        try:
            ring.close()
        except BufferError:  # pragma: no cover - a view outlived the drain
            pass
    payload = result.to_dict()
    payload.update(_output_fields(args.output, progress))
    payload["ring"] = args.ring
    lines = [
        f"drained ring {args.ring}: {result.records:,} records, {result.bytes:,} bytes in {result.seconds:.3f} s "
        f"({_fmt_rate(result.gbps)})",
        f"wrote {payload['output']}: {payload['size']:,} bytes, mode {payload['mode']}, sha256 {payload['sha256']}",
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

    from mdstream.minidump import iter_regions, read_info

    _check_input(args.dump, "file")
    info = read_info(args.dump)
    try:
        info = dataclasses.replace(info, flag_names=_flag_names(info.flags))
    except (ImportError, ValueError):  # pragma: no cover - keep the reader's names
        pass
    nested = [f"{r.label}: {r.problem}" for r in iter_regions(args.dump) if r.problem and r.kind != "stream"]
    problems = info.problems + nested
    if args.json:
        payload = info.to_dict()
        payload["problems"] = problems
        payload["ok"] = not problems
        print(json.dumps(payload, sort_keys=True))
    else:
        print(info.format_text())
        if nested:
            print("")
            print("problems inside streams:")
            for p in nested:
                print(f"  {p}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CommandError(f"{args.dump}: damaged minidump: {problems[0]}{more}")
    return 0


# --------------------------------------------------------------------------
# dump
# --------------------------------------------------------------------------


def cmd_dump_linux(args: argparse.Namespace) -> int:
    from mdstream import linux

    _check_output(args.output)
    progress = _progress_for(args, f"dump {args.pid}")
    try:
        result = linux.write_dump(
            args.pid, args.output, full=args.full, include_environ=args.include_environ,
            include_cmdline=not args.no_cmdline, sanitize_stacks=args.sanitize_stacks, progress=progress)
    finally:
        progress.close()
    payload = result.to_dict()
    payload.update(_output_fields(args.output, progress))
    payload["pid"] = args.pid
    extra = result.extra
    _emit(args, payload, [
        f"dumped process {args.pid} into {payload['output']}: {payload['size']:,} bytes, "
        f"{extra.get('threads', '?')} threads, {extra.get('modules', '?')} modules; "
        f"the process was stopped for {extra.get('stopped_seconds', 0) * 1000:.1f} ms",
        f"sha256 {payload['sha256']}"])
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    if sys.platform.startswith("linux"):
        return cmd_dump_linux(args)
    if sys.platform != "win32":
        raise CommandError(f"mdstream dump needs Windows' DbgHelp (MiniDumpWriteDump) or Linux; this is {sys.platform}",
                           code=2)
    import importlib
    import inspect

    try:
        write_dump = importlib.import_module("mdstream.windows").write_dump
    except (ImportError, AttributeError):
        raise CommandError("this mdstream has no Windows dump writer (mdstream.windows.write_dump is missing)")

    _check_output(args.output)
    progress = _progress_for(args, f"dump {args.pid}")
    kwargs: dict[str, Any] = {"dump_type": args.type}
    try:
        if "progress" in inspect.signature(write_dump).parameters:
            kwargs["progress"] = progress
    except (TypeError, ValueError):  # pragma: no cover
        pass
    try:
        result = write_dump(args.pid, args.output, **kwargs)
    finally:
        progress.close()
    payload = result.to_dict() if hasattr(result, "to_dict") else {}
    payload.update(_output_fields(args.output, progress))
    payload["pid"] = args.pid
    payload["dump_type"] = args.type
    _emit(args, payload, [f"dumped process {args.pid} into {payload['output']}: {payload['size']:,} bytes, "
                          f"sha256 {payload['sha256']}"])
    return 0


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from mdstream.minidump import read_info
    from mdstream.sample import build_sample_minidump, sample_facts
    from mdstream.schedules import backward_writes

    seed = args.seed
    sample = build_sample_minidump(seed)
    facts = sample_facts(seed)
    workdir = tempfile.mkdtemp(prefix="mdstream-demo-")  # private (0700)
    keep_workdir = args.output is None
    output = args.output or os.path.join(workdir, "mdstream-demo.dmp")
    if args.output:
        _check_output(output)
    source = os.path.join(workdir, "sample.dmp")
    progress = _progress_for(args, "demo")
    try:
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(sample)
        plan, result, _ = _run_replay(source, output, schedule="writer", chunk=None, seed=0,
                                      ring_size=args.ring_size, trace=None, progress=progress)
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
    backwards, _ = backward_writes(plan)
    kib_writes = int(np.count_nonzero(plan.lengths == 1024))
    small_writes = int(np.count_nonzero(plan.lengths <= 16))
    stream_names = [s.type_name for s in info.streams]
    payload = result.to_dict()
    payload.update(fields)
    payload.update({
        "identical": identical, "expected_sha256": expected, "sample_size": len(sample), "schedule": "writer",
        "streams": stream_names, "threads": len(facts["threads"]), "modules": len(facts["modules"]),
        "memory_ranges": len(facts["memory"]), "kib_writes": kib_writes, "small_writes": small_writes,
        "backward_writes": backwards, "ring_size": args.ring_size, "source": "built-in sample (mdstream.sample)",
        "seed": seed,
    })
    lines = [
        f"mdstream demo: built a sample x64 minidump ({len(sample):,} bytes: {len(facts['threads'])} threads, "
        f"{len(facts['modules'])} modules, {len(facts['memory'])} memory ranges)",
        f"  replayed it as DbgHelp writes a dump: IoStartCallback, {result.writes:,} IoWriteAllCallback calls "
        f"({small_writes:,} of <= 16 bytes, {kib_writes:,} of 1 KiB, {backwards:,} seeking back), "
        f"IoFinishCallback, from a native thread into the GIL-free callback and a {args.ring_size // 1024:,} KiB ring",
        f"  drained the ring into {fields['output']}: {result.bytes:,} bytes in {result.seconds:.3f} s "
        f"({_fmt_rate(result.gbps)}), {result.records:,} ring records",
        (f"  byte-identical to the sample (sha256 {fields['sha256']})" if identical else
         f"  MISMATCH: sha256 {fields['sha256']}, expected {expected}"),
        f"  read back: '{info.signature.to_bytes(4, 'little').decode('latin-1')}' version 0x{info.version:08x}, "
        f"{len(stream_names)} streams: {', '.join(stream_names)}",
        f"next: mdstream info {fields['output']}",
    ]
    _emit(args, payload, lines)
    if not identical:
        raise CommandError(f"the demo output {fields['output']} differs from the sample (sha256 {fields['sha256']} "
                           f"!= {expected})")
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
        print(json.dumps(report, sort_keys=True))
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
            f"{report['replayed_records']:,} records ({report['replayed_bytes']:,} bytes) replayed",
            f"direct      {report['direct_writes']:,} writes ({report['direct_bytes']:,} bytes)",
            f"extents     {report['extent_count']:,}: {report['covered_bytes']:,} bytes in "
            f"{report['covered_ranges']:,} merged ranges, up to byte {report['covered_end']:,}"
            + (f" ({report['trailing_bytes']:,} trailing manifest bytes ignored)" if report["trailing_bytes"] else ""),
            f"spilled at  {report['spilled_iso'] or '-'} by process {report['producer_pid']}",
        ]
        for problem in report["problems"]:
            lines.append(f"problem     {problem}")
        for line in lines:
            print(line)
    if report["problems"]:
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise CommandError(f"{args.spill}: {report['problems'][0]}{more}")
    return 0


def cmd_spill_finish(args: argparse.Namespace) -> int:
    from mdstream import spill

    _check_output(args.output)
    if args.base is not None:
        _check_input(args.base, "file")
    result = spill.finish(args.spill, args.output, args.base, overwrite=args.force)
    if result["method"] == "copy":
        how = f"the spill file is the dump ({result['bytes_from_spill']:,} bytes copied)"
    else:
        how = (f"{result['bytes_from_spill']:,} bytes from the spill ({result['covered_ranges']:,} ranges of "
               f"{result['extent_count']:,} extents) over {result['bytes_from_base']:,} bytes of {result['base']}")
        if result["zero_filled_bytes"]:
            how += f", {result['zero_filled_bytes']:,} bytes in neither (zero-filled)"
    parses = ("parses as a minidump" if result["is_minidump"]
              else f"does NOT parse as a minidump: {result['minidump_problem']}")
    _emit(args, result, [
        f"finished spill {result['spill']}: {how}",
        f"wrote {result['output']}: {result['size']:,} bytes, mode {result['mode']}, sha256 {result['sha256']}; "
        f"{parses}",
    ])
    return 0


# --------------------------------------------------------------------------
# Parser and main
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from mdstream import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stream DbgHelp minidump I/O callbacks through a memory-mapped ring into files.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def output_opts(p: argparse.ArgumentParser, progress: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
        if progress:
            p.add_argument("-q", "--quiet", action="store_true",
                           help="no progress bar and no summary (errors still go to stderr)")

    ring_size = _size_arg(4096, MAX_RING_SIZE)

    p = sub.add_parser(
        "demo", help="replay a built-in sample dump through the whole path and check the result",
        description="Build a sample x64 minidump, replay it through the real callback path with the writer "
                    "schedule (DbgHelp's I/O pattern) into a file, check the file is byte-identical and parse it "
                    "back.  Without -o the output goes to a new private temporary directory (printed).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", metavar="OUT", help="where to write the replayed dump")
    p.add_argument("--seed", type=_seed_arg, default=0, help="sample contents seed (default 0)")
    p.add_argument("--ring-size", type=ring_size, default=DEFAULT_RING_CAPACITY, metavar="SIZE",
                   help="ring capacity (bytes; suffixes K, M, G; 4K to 16G; default 4M)")
    output_opts(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "replay", help="replay a minidump or MDTRACE1 trace through the callback into a file",
        description="Replay SOURCE (a minidump, cut into writes by --schedule, or an MDTRACE1 trace, replayed "
                    "in its recorded order) through the real DbgHelp callback routine from a native thread, "
                    "drain the ring into OUT and report the throughput and the output's sha256.  OUT is written "
                    "privately (0600) beside its final name and renamed into place only on success.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="a minidump or an MDTRACE1 trace")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="the reassembled dump")
    p.add_argument("--schedule", choices=("sequential", "writer", "shuffled"), default="writer",
                   help="how a minidump is cut into writes (default: writer, DbgHelp's pattern); "
                        "ignored for traces")
    p.add_argument("--chunk", type=_size_arg(1, 0xFFFFFFFF), default=None, metavar="N",
                   help="write size: sequential pieces (default 64K), shuffled pieces (4K), "
                        "writer memory pieces (1K)")
    p.add_argument("--seed", type=_seed_arg, default=0, help="seed of the shuffled schedule (default 0)")
    p.add_argument("--ring-size", type=ring_size, default=DEFAULT_RING_CAPACITY, metavar="SIZE",
                   help="ring capacity (bytes; suffixes K, M, G; 4K to 16G; default 4M)")
    p.add_argument("--trace", metavar="OUT.mdtrace",
                   help="also record the writes as an MDTRACE1 trace (writes are then not coalesced, so the "
                        "trace keeps the writer's exact writes; only a write larger than the ring can hold in "
                        "one record is split)")
    output_opts(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "drain", help="consume a named ring another process produces into a file",
        description="Attach to RING (a shared-memory name or a ring file's path) that another process created "
                    "and writes (e.g. a crash agent's DumpCallback), and reassemble what it streams into OUT.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ring", metavar="RING", help="the ring's shared-memory name or file path")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="the reassembled dump")
    p.add_argument("--timeout", type=_seconds_arg, default=None, metavar="S",
                   help="give up after S seconds without data (default: wait as long as the producer lives)")
    output_opts(p)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser(
        "info", help="show a minidump's header and stream table",
        description="Show DUMP's MINIDUMP_HEADER (signature, version, stream count, directory RVA, flags as "
                    "MINIDUMP_TYPE names, timestamp) and its stream directory (type, size, RVA).  Streams and "
                    "the ranges they point at (memory, contexts, strings) that lie outside the file are marked.",
        epilog="exit status: 0 for a sound minidump; 1 if DUMP is not a minidump, or (after printing the report) "
               "if any stream or range it points at lies outside the file or a stream type repeats; 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dump", metavar="DUMP")
    output_opts(p, progress=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "dump", help="write a minidump of a running process",
        description="Dump process PID, streaming its output through the callback into OUT: with "
                    "MiniDumpWriteDump on Windows; on Linux with mdstream's own writer (ptrace snapshot, then "
                    "the same IoStart/IoWriteAll/IoFinish protocol).  Other systems exit with status 2.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pid", metavar="PID", type=_pid_arg)
    p.add_argument("-o", "--output", metavar="OUT", required=True)
    p.add_argument("--full", action="store_true",
                   help="Linux: every readable private mapping (Memory64List), like MiniDumpWithFullMemory")
    p.add_argument("--include-environ", action="store_true",
                   help="Linux: keep the environment (left out by default: it often holds secrets)")
    p.add_argument("--no-cmdline", action="store_true", help="Linux: leave the command line out")
    p.add_argument("--sanitize-stacks", action="store_true",
                   help="Linux: blank stack words that do not look like pointers (Breakpad's rule)")
    p.add_argument("--type", metavar="NAMES", type=_dump_type_arg, default=_dump_type_arg(DEFAULT_DUMP_TYPE),
                   help=f"MINIDUMP_TYPE flags, names joined by '|' or ',' with or without 'MiniDump' "
                        f"(default {DEFAULT_DUMP_TYPE}; e.g. WithFullMemory)")
    output_opts(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser(
        "spill", help="inspect or finish a dump the callback spilled to a file",
        description="When the consumer of a ring dies or stalls, the dump callback writes the rest of the dump "
                    "to its spill file S and describes it in S.mdspill (docs/spill-format.md).  'inspect' "
                    "reports on a spill; 'finish' writes the dump it holds.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    sp.add_argument("spill", metavar="SPILL", help="the spill file (or its .mdspill manifest)")
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
    sp.add_argument("spill", metavar="SPILL", help="the spill file (or its .mdspill manifest)")
    sp.add_argument("-o", "--output", metavar="OUT", required=True, help="the finished dump")
    sp.add_argument("--base", metavar="PARTIAL",
                    help="the consumer's partial output (needed unless the spill is BASE_COMPLETE)")
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    output_opts(sp, progress=False)
    sp.set_defaults(func=cmd_spill_finish)

    from mdstream import bench
    bench.add_parser(sub)

    from mdstream import cli_reports  # reports list|show|prune, upload
    cli_reports.add_parsers(sub)
    from mdstream import cli_crash  # run, watch
    cli_crash.add_parsers(sub)
    return parser


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, (CommandError, errors.MdstreamError)) or not isinstance(exc, OSError):
        text = str(exc) or type(exc).__name__
    else:
        strerror = exc.strerror or ""
        if exc.filename is not None and strerror:
            text = f"{exc.filename}: {strerror}"
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
        # Our own ValueError subclasses: NotAMinidumpError, MinidumpFormatError,
        # TraceFormatError, ScheduleError, RingFormatError...
        return type(exc).__module__.startswith("mdstream")
    return False


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mdstream`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Our reader went away (``mdstream info X | head``): stop quietly, as
        # SIGPIPE would, and keep Python from complaining while flushing.
        _silence_stdout()
        return 141
    except BaseException as exc:
        if isinstance(exc, CommandError):
            print(f"{PROG}: error: {_describe_error(exc)}", file=sys.stderr)
            return exc.code
        if _expected(exc):
            print(f"{PROG}: error: {_describe_error(exc)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
