"""Every error mdstream raises for bad input derives from MdstreamError and keeps its built-in base;
inputs that are no regular file are refused (never read forever); messages name the path as given."""

from __future__ import annotations

import errno
import inspect
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mdstream import errors
from mdstream.errors import MdstreamError

# (class, the built-in base it must keep)
BUILTIN_BASES = [
    (errors.NotAMinidumpError, ValueError),
    (errors.MinidumpFormatError, ValueError),
    (errors.TraceFormatError, ValueError),
    (errors.ScheduleError, ValueError),
    (errors.WritePlanError, ValueError),
    (errors.DumpTypeError, ValueError),
    (errors.DumpOptionError, ValueError),
    (errors.SpillFormatError, ValueError),
    (errors.RingFormatError, ValueError),
    (errors.InputFileError, OSError),
    (errors.InputNotFoundError, FileNotFoundError),
    (errors.InputIsADirectoryError, IsADirectoryError),
    (errors.NotARegularFileError, OSError),
    (errors.OutputExistsError, FileExistsError),
    (errors.UnsafePathError, PermissionError),
    (errors.UnsupportedPlatformError, NotImplementedError),
    (errors.ProcessNotFoundError, ProcessLookupError),
    (errors.PtracePermissionError, PermissionError),
    (errors.RingNotFoundError, FileNotFoundError),
    (errors.RingTimeoutError, TimeoutError),
]


def test_every_exported_error_derives_from_mdstream_error():
    classes = [getattr(errors, n) for n in errors.__all__ if inspect.isclass(getattr(errors, n))]
    assert len(classes) > 25
    assert [c.__name__ for c in classes if not issubclass(c, MdstreamError)] == []


@pytest.mark.parametrize("cls,base", BUILTIN_BASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_errors_keep_their_builtin_base(cls, base):
    assert issubclass(cls, MdstreamError) and issubclass(cls, base)


def test_format_modules_reexport_the_same_classes():
    from mdstream import minidump, plan, schedules, trace

    assert minidump.NotAMinidumpError is errors.NotAMinidumpError
    assert minidump.MinidumpFormatError is errors.MinidumpFormatError
    assert trace.TraceFormatError is errors.TraceFormatError
    assert schedules.ScheduleError is errors.ScheduleError
    assert plan.WritePlanError is errors.WritePlanError
    from mdstream import linux

    assert linux.UnsupportedPlatformError is errors.UnsupportedPlatformError
    assert linux.LinuxDumpError is errors.LinuxDumpError


def _sample(tmp_path: Path) -> Path:
    from mdstream.sample import build_sample_minidump

    path = tmp_path / "sample.dmp"
    path.write_bytes(build_sample_minidump(0))
    return path


def test_the_common_mistakes_raise_mdstream_errors(tmp_path):
    """Not a minidump, a bad trace, a bad schedule, a missing file: each an MdstreamError of its kind."""
    import mdstream
    from mdstream.dbghelp import MinidumpType
    from mdstream.minidump import read_info
    from mdstream.plan import WritePlan
    from mdstream.schedules import plan_for
    from mdstream.spill import read_manifest
    from mdstream.trace import read_trace

    text = tmp_path / "notes.txt"
    text.write_bytes(b"just some text, long enough for a header" * 2)
    cases = [
        (lambda: read_info(text), errors.NotAMinidumpError, ValueError),
        (lambda: read_trace(text), errors.TraceFormatError, ValueError),
        (lambda: plan_for(_sample(tmp_path), schedule="alphabetical"), errors.ScheduleError, ValueError),
        (lambda: WritePlan(np.zeros(4, np.uint8), np.zeros(1, np.uint64), np.ones(1, np.uint32) * 9,
                           np.zeros(1, np.uint64), 9).validate(), errors.WritePlanError, ValueError),
        (lambda: MinidumpType.parse("WithEverything"), errors.DumpTypeError, ValueError),
        (lambda: read_info(tmp_path / "missing.dmp"), errors.InputNotFoundError, FileNotFoundError),
        (lambda: read_trace(tmp_path / "missing.mdtrace"), errors.InputNotFoundError, FileNotFoundError),
        (lambda: read_manifest(tmp_path / "missing.spill"), errors.InputNotFoundError, FileNotFoundError),
        (lambda: mdstream.replay(tmp_path / "missing.dmp"), errors.InputNotFoundError, FileNotFoundError),
        (lambda: read_info(tmp_path), errors.InputIsADirectoryError, IsADirectoryError),
    ]
    for call, cls, base in cases:
        with pytest.raises(cls) as info:
            call()
        assert isinstance(info.value, MdstreamError) and isinstance(info.value, base)
        assert "[Errno" not in str(info.value)


def test_errors_pickle_with_their_fields():
    e = pickle.loads(pickle.dumps(errors.TraceFormatError("t: bad", record=3, byte=77)))
    assert (str(e), e.record, e.byte) == ("t: bad", 3, 77)
    e = pickle.loads(pickle.dumps(errors.PtracePermissionError("no", errno.EPERM)))
    assert type(e) is errors.PtracePermissionError and e.sys_errno == errno.EPERM
    e = pickle.loads(pickle.dumps(errors.InputNotFoundError(errno.ENOENT, "x: no such file", "x")))
    assert type(e) is errors.InputNotFoundError and str(e) == "x: no such file" and e.filename == "x"


def test_messages_name_the_path_as_given(tmp_path, monkeypatch):
    from mdstream.minidump import read_info
    from mdstream.trace import read_trace

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.dmp").write_bytes(b"")
    (tmp_path / "sub" / "x.mdtrace").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.NotAMinidumpError, match=r"^sub/x\.dmp: not a minidump: empty file"):
        read_info("sub/x.dmp")
    with pytest.raises(errors.TraceFormatError, match=r"^sub/x\.mdtrace: empty file"):
        read_trace("sub/x.mdtrace")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_input_is_refused_not_waited_on(tmp_path):
    """A FIFO with no writer: opening it for reading would block forever without O_NONBLOCK."""
    from mdstream.minidump import read_info
    from mdstream.trace import is_trace

    fifo = tmp_path / "pipe.dmp"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt():
        for call in (lambda: read_info(fifo), lambda: is_trace(fifo)):
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a FIFO hung"
    assert len(outcome) == 2
    for exc in outcome:
        assert isinstance(exc, errors.NotARegularFileError), exc
        assert str(exc).startswith(f"{fifo}: a pipe, not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_cli_refuses_devices_and_pipes_with_their_full_path(tmp_path):
    code = ("import subprocess, sys\n"
            "cat = subprocess.Popen(['cat', sys.argv[1]], stdout=subprocess.PIPE)\n"
            "path = f'/dev/fd/{cat.stdout.fileno()}'\n"
            "done = subprocess.run([sys.executable, '-m', 'mdstream', 'info', path], pass_fds=[cat.stdout.fileno()],"
            " capture_output=True, text=True, timeout=60)\n"
            "cat.kill()\n"
            "print(done.returncode); print(done.stderr, end='')\n")
    done = subprocess.run([sys.executable, "-c", code, str(_sample(tmp_path))], capture_output=True, text=True,
                          timeout=120)
    rc, err = done.stdout.split("\n", 1)
    assert rc == "1", done
    assert err.startswith("mdstream: error: /dev/fd/") and "a pipe, not a regular file" in err
    done = subprocess.run([sys.executable, "-m", "mdstream", "info", "/dev/zero"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr == ("mdstream: error: /dev/zero: a character device, not a regular file; mdstream reads "
                           "its inputs from regular files (save it to a file first)\n")


def test_an_uncreatable_output_is_named_not_its_temporary_file(tmp_path, monkeypatch):
    from mdstream import FileSink

    real_open = os.open

    def refuse_partials(path, *args, **kwargs):
        if str(path).endswith(".mdstream-partial"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_partials)
    out = tmp_path / "out.dmp"
    with pytest.raises(PermissionError) as info:
        FileSink(out)
    assert info.value.filename == str(out)
    assert ".mdstream-partial" not in str(info.value) and str(out) in str(info.value)


def test_output_exists_is_refused_at_construction_and_at_the_rename(tmp_path):
    import mdstream

    out = tmp_path / "dump.dmp"
    out.write_bytes(b"precious")
    with pytest.raises(errors.OutputExistsError, match="exists; pass overwrite=True"):
        mdstream.FileSink(out)
    with pytest.raises(errors.OutputExistsError):
        mdstream.TraceSink(out)
    assert out.read_bytes() == b"precious"
    # A file that appears while the dump is written is not replaced, and the new dump is kept.
    late = tmp_path / "late.dmp"
    sink = mdstream.FileSink(late)
    result = mdstream.replay(_sample(tmp_path), sinks=[sink], schedule="sequential")
    assert result.ok and late.exists()  # the usual case: renamed into place
    late2 = tmp_path / "late2.dmp"
    sink = mdstream.FileSink(late2)
    late2.write_bytes(b"someone else's")
    with pytest.raises(errors.OutputExistsError, match="appeared while the dump was being written") as info:
        mdstream.replay(_sample(tmp_path), sinks=[sink], schedule="sequential")
    assert late2.read_bytes() == b"someone else's"
    kept = str(info.value).rsplit("kept in ", 1)[1]
    assert Path(kept).read_bytes() == _sample(tmp_path).read_bytes()
    os.unlink(kept)
    # overwrite=True replaces.
    sink = mdstream.FileSink(out, overwrite=True)
    mdstream.replay(_sample(tmp_path), sinks=[sink])
    assert out.read_bytes() == _sample(tmp_path).read_bytes()


def test_write_plan_error_names_the_problem():
    from mdstream.plan import WritePlan

    plan = WritePlan(np.zeros(4, np.uint8), np.zeros(1, np.uint64), np.full(1, 9, np.uint32), np.zeros(1, np.uint64), 9,
                     "p")
    with pytest.raises(errors.WritePlanError, match=r"^p: write 0: source range \[0, 9\) is past the end"):
        plan.validate()


def test_cli_reports_every_mdstream_error_in_one_line(tmp_path, capsys):
    """No traceback for any of the common mistakes (one of them in a real subprocess)."""
    from mdstream.cli import main

    text = tmp_path / "notes.txt"
    text.write_bytes(b"x" * 100)
    for argv, needle in [
        (["info", str(text)], "not a minidump"),
        (["replay", str(text), "-o", str(tmp_path / "o.dmp")], "not a minidump"),
        (["info", str(tmp_path / "missing.dmp")], "no such minidump"),
        (["info", str(tmp_path)], "is a directory"),
        (["spill", "inspect", str(tmp_path / "missing.spill")], "no such file"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("mdstream: error: ") and err.count("\n") == 1 and needle in err, (needle, err)
    done = subprocess.run([sys.executable, "-m", "mdstream", "info", str(text)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and done.stderr == f"mdstream: error: {text}: not a minidump: signature b'xxxx' " \
                                                   "(expected b'MDMP')\n"
