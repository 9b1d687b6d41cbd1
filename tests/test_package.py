"""The package's front: lazy attributes (``import mdstream`` stays light) and ``mdstream.write_dump``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mdstream
from mdstream import dump as dumping
from mdstream import errors
from mdstream.dbghelp import MinidumpType

LINUX_X64 = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "amd64")


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_is_light():
    """``import mdstream`` loads neither numpy nor the compiled extension nor any submodule."""
    loaded = json.loads(_python(
        "import json, sys; import mdstream; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('mdstream', 'numpy')))))"))
    assert loaded == ["mdstream"]


def test_submodules_are_attributes_of_a_bare_import():
    """What the user guide does: ``import mdstream`` and then ``mdstream.dbghelp....``."""
    out = _python(
        "import mdstream\n"
        "print(mdstream.dbghelp.MinidumpType.parse('WithFullMemory').value)\n"
        "print(mdstream.linux.write_dump.__name__, mdstream.windows.write_dump.__name__)\n"
        "print(mdstream.spill.read_manifest.__name__, mdstream.trace.read_trace.__name__)\n"
        "print(mdstream.minidump.read_info.__name__, mdstream.errors.MdstreamError.__name__)\n"
        "print(mdstream.write_dump.__module__, mdstream.Ring.__name__, mdstream.NotAMinidumpError.__module__)\n")
    assert out.split() == ["2", "write_dump", "write_dump", "read_manifest", "read_trace", "read_info",
                           "MdstreamError", "mdstream.dump", "Ring", "mdstream.errors"]


def test_every_public_name_resolves_and_unknown_ones_do_not():
    for name in mdstream.__all__:
        assert getattr(mdstream, name) is not None, name
    assert {"dbghelp", "linux", "windows", "spill", "trace", "minidump", "Ring", "write_dump"} <= set(dir(mdstream))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        mdstream.nonsense  # noqa: B018
    from mdstream import FileSink, write_dump  # from-imports go through the same path

    assert FileSink is mdstream._sinks.FileSink and write_dump is dumping.write_dump


# --------------------------------------------------------------------------
# write_dump: one call, either system; --type means the same on both
# --------------------------------------------------------------------------


def test_linux_options_map_the_flags_it_can_honour():
    assert dumping.linux_options_for(None) == {}
    assert dumping.linux_options_for("Normal") == {}
    assert dumping.linux_options_for("WithFullMemory") == {"full": True}
    assert dumping.linux_options_for("FilterMemory|IgnoreInaccessibleMemory") == {"sanitize_stacks": True}
    assert dumping.linux_options_for(MinidumpType.MiniDumpWithFullMemory | MinidumpType.MiniDumpFilterMemory) == \
        {"full": True, "sanitize_stacks": True}


@pytest.mark.parametrize("flags", ["WithHandleData", "WithFullMemory|WithThreadInfo", "WithDataSegs",
                                   "WithUnloadedModules", "0x80000000"])
def test_linux_refuses_flags_it_cannot_honour(flags):
    with pytest.raises(errors.DumpOptionError) as info:
        dumping.linux_options_for(flags)
    assert isinstance(info.value, ValueError)
    refused = MinidumpType.parse(flags) & ~MinidumpType.MiniDumpWithFullMemory
    for name in MinidumpType.describe(int(refused)):
        assert name in str(info.value)


def test_unknown_flag_names_are_type_errors():
    with pytest.raises(errors.DumpTypeError):
        dumping.linux_options_for("WithEverything")


def test_other_systems_are_unsupported(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(errors.UnsupportedPlatformError, match="darwin"):
        mdstream.write_dump(1, "x.dmp")
    from mdstream import linux, windows

    # Both platform modules raise the same class off their platform.
    with pytest.raises(errors.UnsupportedPlatformError):
        windows.write_dump(1, "x.dmp")
    with pytest.raises(errors.UnsupportedPlatformError):
        linux.write_dump(1, "x.dmp")


def test_windows_dispatch_maps_options_and_refuses_linux_only_ones(monkeypatch, tmp_path):
    """The Windows path without Windows: what reaches windows.write_dump."""
    from mdstream import windows

    calls = []
    monkeypatch.setattr(dumping, "system_writer", lambda: "windows")
    monkeypatch.setattr(windows, "write_dump", lambda *a, **k: calls.append((a, k)) or "result")
    assert mdstream.write_dump(42, tmp_path / "o.dmp") == "result"
    (pid, out, flags), kwargs = calls[-1]
    assert pid == 42 and flags == int(windows.DEFAULT_DUMP_TYPE) and kwargs["overwrite"] is False
    mdstream.write_dump(42, tmp_path / "o.dmp", dump_type="WithHandleData", full=True, sanitize_stacks=True,
                        overwrite=True)
    (_, _, flags), kwargs = calls[-1]
    assert flags == int(MinidumpType.parse("WithHandleData|WithFullMemory|FilterMemory"))
    assert kwargs["overwrite"] is True
    for option in ("include_environ", "include_cmdline", "max_stack"):
        with pytest.raises(errors.DumpOptionError, match=f"{option}: Linux-only option"):
            mdstream.write_dump(42, tmp_path / "o.dmp", **{option: True})


def test_linux_refuses_windows_only_options(monkeypatch, tmp_path):
    monkeypatch.setattr(dumping, "system_writer", lambda: "linux")
    with pytest.raises(errors.DumpOptionError, match="user_streams: Windows-only option"):
        mdstream.write_dump(42, tmp_path / "o.dmp", user_streams=[(0x10000, b"x")])


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"up"
    yield child.pid
    child.kill()
    child.wait()


@pytest.mark.skipif(not LINUX_X64, reason="the Linux writer runs on Linux x86-64")
def test_write_dump_on_linux(sleeper, tmp_path):
    from mdstream.minidump import read_info

    out = tmp_path / "p.dmp"
    result = mdstream.write_dump(sleeper, out)
    info = read_info(out)
    assert result.ok and info.flags == 0 and "ThreadListStream" in [s.type_name for s in info.streams]
    assert result.output_size == out.stat().st_size and result.rewritten_bytes == 0
    assert result.written_bytes == result.output_size  # every byte once
    with pytest.raises(errors.OutputExistsError):
        mdstream.write_dump(sleeper, out)
    full = mdstream.write_dump(sleeper, out, dump_type="WithFullMemory", overwrite=True)
    info = read_info(out)
    assert full.extra["full"] is True and info.flags & MinidumpType.MiniDumpWithFullMemory
    assert "Memory64ListStream" in [s.type_name for s in info.streams]
    with pytest.raises(errors.DumpOptionError, match="MiniDumpWithHandleData"):
        mdstream.write_dump(sleeper, tmp_path / "other.dmp", dump_type="WithHandleData")
    assert not (tmp_path / "other.dmp").exists()


@pytest.mark.skipif(not LINUX_X64, reason="the Linux writer runs on Linux x86-64")
def test_a_kernel_thread_is_named_as_such(tmp_path):
    stat_path = Path("/proc/2/stat")
    if not stat_path.exists() or b"(kthreadd)" not in stat_path.read_bytes():
        pytest.skip("pid 2 is not kthreadd here")
    with pytest.raises(errors.LinuxDumpError, match=r"^process 2 \(kthreadd\) is a kernel thread"):
        mdstream.write_dump(2, tmp_path / "never-written.dmp")
    assert list(tmp_path.iterdir()) == []  # refused before any file was created


@pytest.mark.skipif(not LINUX_X64, reason="the Linux writer runs on Linux x86-64")
def test_a_refusal_as_root_does_not_say_run_as_its_user(tmp_path):
    """Root (CAP_SYS_PTRACE) refused: the advice to run as the process's user would be wrong."""
    from mdstream import linux

    if not linux._privileged():
        pytest.skip("needs CAP_SYS_PTRACE")
    started = time.monotonic()
    try:
        mdstream.write_dump(1, tmp_path / "init.dmp")
    except errors.PtracePermissionError as exc:
        assert "run as the process's user" not in str(exc) and "CAP_SYS_PTRACE" in str(exc)
    else:
        pytest.skip("this machine lets us dump pid 1")
    assert time.monotonic() - started < 30
