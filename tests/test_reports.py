"""The crash database (issue 15, section 3): atomic reports, many writers, kill -9,
planted symlinks, corrupt metadata, limits, and the ``mdstream reports`` commands."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import stat
import sys
import time

import pytest

from mdstream import reports
from mdstream.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the crash database is POSIX only")


def fake_dump(size: int = 256) -> bytes:
    return b"MDMP" + os.urandom(size - 4)


def publish(db: reports.Database, data: bytes | None = None, **metadata) -> reports.Report:
    pending = db.new_report(**metadata)
    with open(pending.dump_path, "wb") as f:
        f.write(fake_dump() if data is None else data)
    return pending.publish()


def at(minutes: int) -> str:
    return reports.format_time(dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=minutes))


@pytest.fixture
def db(tmp_path) -> reports.Database:
    return reports.Database(tmp_path / "crashes")


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def check_sound(db: reports.Database) -> list[reports.Report]:
    """Every visible report is whole: no problems, its dump matches the metadata's size and sha256."""
    scan = db.scan()
    assert scan.problems == []
    for report in scan.reports:
        assert report.problems == ()
        with open(report.dump_path, "rb") as f:
            data = f.read()
        assert len(data) == report.dump_bytes and hashlib.sha256(data).hexdigest() == report.sha256
        assert data.startswith(b"MDMP")
    return scan.reports


def forked(func, *args) -> tuple[int, int]:
    """Run ``func(out_fd, *args)`` in a forked child (no interpreter start-up: fast and killable).
    Returns (pid, fd to read the child's output from); the child exits 0 if ``func`` returned."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        code = 1
        try:
            func(write_fd, *args)
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def read_all(fd: int) -> str:
    with os.fdopen(fd, "r") as f:
        return f.read()


def exit_status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# --------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------


def test_publish_writes_a_whole_report_with_the_documented_metadata(db):
    data = fake_dump(1000)
    pending = db.new_report(pid=4242, executable="/usr/bin/app", signal=11, code=1, address=0xDEAD,
                            annotations={"ProductName": "App"}, build="abc")
    assert len(pending.id) == 32 and int(pending.id, 16) >= 0
    assert not os.path.exists(pending.dump_path)
    assert db.reports() == []
    with open(pending.dump_path, "wb") as f:
        f.write(data)
    assert db.reports() == []  # invisible until published
    report = pending.publish(crashing_thread=4243, python_tracebacks=["Thread 0x1 (most recent call first):"])
    md = report.metadata
    assert md["id"] == report.id == pending.id and md["state"] == "pending" == report.state
    assert md["dump_bytes"] == 1000 and md["sha256"] == hashlib.sha256(data).hexdigest()
    assert md["signal_name"] == "SIGSEGV" and md["code"] == 1 and md["address"] == 0xDEAD
    assert md["crashing_thread"] == 4243 and md["pid"] == 4242 and md["executable"] == "/usr/bin/app"
    assert md["annotations"] == {"ProductName": "App"} and md["build"] == "abc"  # extra keys are kept
    assert md["python_tracebacks"] == ["Thread 0x1 (most recent call first):"]
    assert md["mdstream_version"] and md["format"] == reports.REPORT_FORMAT
    assert reports.parse_time(md["time"]).tzinfo is not None and md["time"].endswith("Z")
    assert md["upload"]["attempts"] == 0 and md["upload"]["server_crash_id"] is None
    assert set(reports.Report.__init__.__code__.co_varnames) >= {"database"}
    on_disk = db.get(report.id)
    assert on_disk.metadata == md and on_disk.problems == ()
    with open(on_disk.metadata_path) as f:
        assert json.load(f) == md
    assert open(on_disk.dump_path, "rb").read() == data
    assert os.listdir(db.path("staging")) == []


def test_a_report_without_tracebacks_has_no_python_tracebacks_key(db):
    assert "python_tracebacks" not in publish(db).metadata
    for key in ("pid", "executable", "signal", "signal_name", "code", "address", "crashing_thread", "annotations"):
        assert key in publish(db).metadata


def test_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        db = reports.Database(tmp_path / "a" / "crashes")
        report = publish(db)
    finally:
        os.umask(old)
    assert mode(db.directory) == 0o700
    for sub in ("reports", "staging", "locks", "trash", os.path.join("reports", report.id)):
        assert mode(db.path(sub)) == 0o700, sub
    for path in (report.dump_path, report.metadata_path, db.path("mdstream-crash-database.json"),
                 db.path("locks", f"{report.id}.lock")):
        assert mode(path) == 0o600, path


def test_default_directory_is_the_platformdirs_user_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert reports.default_directory() == str(tmp_path / "data" / "mdstream" / "crashes")
    db = reports.Database()
    assert db.directory == str(tmp_path / "data" / "mdstream" / "crashes") and mode(db.directory) == 0o700


def test_newest_first_and_state_filter(db):
    made = [publish(db, time=at(m)) for m in (5, 1, 9, 3)]
    assert [r.metadata["time"] for r in db.reports()] == [at(9), at(5), at(3), at(1)]
    with db.lock(made[0].id) as lock:
        lock.update({"state": "uploaded", "upload": {"server_crash_id": "bp-1"}})
    assert [r.id for r in db.reports("uploaded")] == [made[0].id]
    assert len(db.reports("pending")) == 3
    assert db.get(made[0].id).upload["server_crash_id"] == "bp-1"
    assert db.get(made[0].id).upload["attempts"] == 0  # merged, not replaced


def test_metadata_is_validated(db):
    bad = [dict(pid="12"), dict(pid=0), dict(signal=True), dict(signal=300), dict(address=-1),
           dict(annotations={"a": 1}), dict(annotations=["x"]), dict(annotations={"": "x"}),
           dict(annotations={"a\nb": "x"}), dict(time="yesterday"), dict(time="2024-05-01T12:00:00"),
           dict(time=dt.datetime(2024, 5, 1)), dict(id="0" * 32), dict(sha256="x"), dict(state="uploaded"),
           dict(upload={}), dict(extra=object()), dict(extra=float("nan")), dict(python_tracebacks=5),
           dict(executable=b"/bin/x")]
    for metadata in bad:
        with pytest.raises(reports.MetadataError):
            db.new_report(**metadata)
    pending = db.new_report(time=dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    with open(pending.dump_path, "wb") as f:
        f.write(fake_dump())
    with pytest.raises(reports.MetadataError):
        pending.publish(dump_bytes=5)
    report = pending.publish(signal=64, custom={"nested": [1, 2]})
    assert report.metadata["time"] == "2024-05-01T12:00:00.000000Z"  # normalized to UTC
    assert report.metadata["custom"] == {"nested": [1, 2]}
    assert db.reports() == [report]


def test_publish_refuses_a_missing_empty_or_foreign_dump_and_stays_usable(db, tmp_path):
    pending = db.new_report()
    with pytest.raises(reports.DumpMissingError):
        pending.publish()
    open(pending.dump_path, "wb").close()
    with pytest.raises(reports.InvalidDumpError, match="empty"):
        pending.publish()
    with open(pending.dump_path, "wb") as f:
        f.write(b"ELF\x7f not a minidump")
    with pytest.raises(reports.InvalidDumpError, match="not a minidump"):
        pending.publish()
    os.unlink(pending.dump_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"MDMP top secret")
    os.symlink(secret, pending.dump_path)
    with pytest.raises(reports.InvalidDumpError, match="symlink"):
        pending.publish()
    assert db.reports() == []
    os.unlink(pending.dump_path)
    with open(pending.dump_path, "wb") as f:
        f.write(fake_dump())
    report = pending.publish()
    assert db.reports() == [report]
    with pytest.raises(reports.ReportStateError):
        pending.publish()
    assert secret.read_bytes() == b"MDMP top secret"


def publish_with_a_full_disk(out: int, directory: str) -> None:
    import resource

    db = reports.Database(directory)
    pending = db.new_report(annotations={"k": "v" * 2000})
    with open(pending.dump_path, "wb") as f:
        f.write(fake_dump(4096))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # the metadata (> 2 KB) cannot be written: EFBIG
    try:
        pending.publish()
    except OSError as exc:
        os.write(out, f"refused {exc.errno}\n".encode())
    assert db.reports() == []
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    os.write(out, f"{pending.publish().id}\n".encode())  # still usable once there is room


def test_publish_on_a_full_disk_shows_nothing_and_can_be_retried(db):
    import errno

    pid, fd = forked(publish_with_a_full_disk, db.directory)
    lines = read_all(fd).splitlines()
    assert exit_status(pid) == 0
    assert lines[0] == f"refused {errno.EFBIG}"
    [report] = check_sound(db)
    assert report.id == lines[1] and sorted(os.listdir(report.directory)) == ["metadata.json", "minidump.dmp"]


def test_discard_and_context_manager(db):
    pending = db.new_report()
    with open(pending.dump_path, "wb") as f:
        f.write(fake_dump())
    pending.discard()
    pending.discard()
    assert not os.path.exists(pending.directory) and os.listdir(db.path("locks")) == []
    with pytest.raises(reports.ReportStateError):
        pending.publish()
    with pytest.raises(RuntimeError, match="boom"):
        with db.new_report() as pending:
            open(pending.dump_path, "wb").write(fake_dump())
            raise RuntimeError("boom")
    assert os.listdir(db.path("staging")) == [] and db.reports() == []
    with db.new_report() as pending:
        open(pending.dump_path, "wb").write(fake_dump())
        report = pending.publish()
    assert db.reports() == [report]


def test_a_sink_leftover_in_staging_is_not_published(db):
    pending = db.new_report()
    with open(pending.dump_path, "wb") as f:
        f.write(fake_dump())
    with open(os.path.join(pending.directory, ".minidump.dmp.abc.mdstream-partial"), "wb") as f:
        f.write(b"partial")
    report = pending.publish()
    assert sorted(os.listdir(report.directory)) == ["metadata.json", "minidump.dmp"]


def test_file_sink_writes_into_the_pending_report(db, tmp_path):
    import mdstream
    from mdstream import sample

    data = sample.build_sample_minidump(3)
    source = tmp_path / "sample.dmp"
    source.write_bytes(data)
    pending = db.new_report(signal=6)
    mdstream.replay(source, sinks=[mdstream.FileSink(pending.dump_path)])
    report = pending.publish()
    assert report.dump_bytes == len(data) and report.sha256 == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Many processes, kill -9
# --------------------------------------------------------------------------

def write_reports(out: int, directory: str, count: int, limit: int | None = None) -> None:
    db = reports.Database(directory, max_reports=limit)
    for i in range(count):
        pending = db.new_report(pid=os.getpid(), signal=11, annotations={"i": str(i)})
        with open(pending.dump_path, "wb") as f:
            f.write(b"MDMP" + os.urandom(4096 + 97 * i))
        os.write(out, f"{pending.publish().id}\n".encode())


def test_many_processes_publish_at_once_while_a_reader_lists(db):
    children = [forked(write_reports, db.directory, 12) for _ in range(4)]
    deadline = time.monotonic() + 60
    while len(check_sound(db)) < 48 and time.monotonic() < deadline:  # a reader never sees half a report
        pass
    outputs = [read_all(fd).split() for _, fd in children]
    assert [exit_status(pid) for pid, _ in children] == [0, 0, 0, 0]
    published = [i for out in outputs for i in out]
    assert len(published) == 48 and len(set(published)) == 48
    assert sorted(r.id for r in check_sound(db)) == sorted(published)
    assert os.listdir(db.path("staging")) == [] and os.listdir(db.path("trash")) == []


def publish_with_a_limit(tmp_path, rounds: int) -> None:
    for round_ in range(rounds):
        db = reports.Database(tmp_path / f"crashes{round_}")
        children = [forked(write_reports, db.directory, 10, 7) for _ in range(3)]
        for pid, fd in children:
            assert len(read_all(fd).split()) == 10
            assert exit_status(pid) == 0
        # Every publish pruned to 7; concurrent pruners must not remove more than the excess.
        assert len(check_sound(db)) == 7


def test_many_processes_with_a_limit(tmp_path):
    publish_with_a_limit(tmp_path, 2)


@pytest.mark.extended
def test_many_processes_with_a_limit_many_times(tmp_path):
    publish_with_a_limit(tmp_path, 40)


def publish_forever(out: int, directory: str, limit: int | None) -> None:
    db = reports.Database(directory, max_reports=limit)
    os.write(out, b"ready\n")
    i = 0
    while True:
        pending = db.new_report(pid=os.getpid(), annotations={"i": str(i)})
        with open(pending.dump_path, "wb") as f:
            f.write(b"MDMP" + os.urandom(65536))
        report = pending.publish(extra_key=i)  # with a limit, publish also prunes: kills land there too
        os.write(out, f"{report.id}\n".encode())
        i += 1


def kill_writer_mid_publish(directory: str, rng: random.Random, limit: int | None = None) -> dict[str, int]:
    """Start a writer publishing in a loop, SIGKILL it at a random moment, check what is left."""
    db = reports.Database(directory)
    before = {r.id for r in db.reports()}
    pid, fd = forked(publish_forever, directory, limit)
    output = os.fdopen(fd, "r")
    assert output.readline().strip() == "ready"
    time.sleep(rng.uniform(0.0, 0.1))
    os.kill(pid, signal.SIGKILL)
    printed = output.read().split()
    output.close()
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    visible = check_sound(db)  # whatever the moment of the kill: only whole reports are visible
    new = {r.id for r in visible} - before
    if limit is None:
        assert set(printed) <= new  # nothing published was lost
        assert len(new) - len(printed) in (0, 1)  # at most the one renamed into place but not yet printed
    leftovers = os.listdir(db.path("staging"))
    trash = os.listdir(db.path("trash"))
    result = db.prune(max_reports=limit)
    assert sorted(result.abandoned) == sorted(leftovers)
    assert os.listdir(db.path("staging")) == [] and os.listdir(db.path("trash")) == []
    ids = {r.id for r in check_sound(db)}
    assert {name[:-5] for name in os.listdir(db.path("locks")) if name != "prune.lock"} <= ids
    if limit is not None:
        assert len(ids) <= limit
    return {"published": len(printed), "staging_leftovers": len(leftovers), "trash_leftovers": len(trash),
            "renamed_not_printed": len(new) - len(printed) if limit is None else 0}


def test_kill_a_writer_mid_publish_a_few_times(tmp_path):
    rng = random.Random(1234)
    for limit in (None, 3, None, 3):
        kill_writer_mid_publish(str(tmp_path / "crashes"), rng, limit)


@pytest.mark.extended
def test_kill_a_writer_mid_publish_many_times(tmp_path):
    rng = random.Random(98765)
    runs = 60
    counts = [kill_writer_mid_publish(str(tmp_path / "crashes"), rng, None if i % 3 else 3) for i in range(runs)]
    staged = sum(1 for c in counts if c["staging_leftovers"])
    print(f"{runs} kills ({runs // 3} while pruning to 3 reports): {sum(c['published'] for c in counts)} reports "
          f"published; {staged} kills left a staging area, {sum(c['trash_leftovers'] for c in counts)} a "
          f"half-removed report, {sum(c['renamed_not_printed'] for c in counts)} landed between the rename and "
          f"publish() returning; all cleaned by prune, no half report ever visible")
    assert staged > 0  # the kills did land mid-report


def test_staging_of_a_live_writer_is_kept_and_of_a_dead_one_pruned(db):
    live = db.new_report()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            child_db = reports.Database(db.directory)
            pending = child_db.new_report()
            with open(pending.dump_path, "wb") as f:
                f.write(fake_dump())
            print(pending.id, file=open(os.path.join(db.directory, "..", "dead-id"), "w"))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    dead = open(os.path.join(db.directory, "..", "dead-id")).read().strip()
    other = reports.Database(db.directory)
    result = other.prune()
    assert list(result) == [dead] and result.abandoned == [dead]
    assert os.path.isdir(live.directory)
    live.discard()


def create_database(out: int, directory: str) -> None:
    os.write(out, str(reports.Database(directory).client_id).encode())


def create_at_once(tmp_path, rounds: int) -> None:
    for round_ in range(rounds):
        directory = str(tmp_path / f"new{round_}")
        children = [forked(create_database, directory) for _ in range(4)]
        ids = {read_all(fd) for _, fd in children}
        assert [exit_status(pid) for pid, _ in children] == [0] * 4
        assert len(ids) == 1 and len(ids.pop()) == 32


def test_databases_created_at_once_agree(tmp_path):
    create_at_once(tmp_path, 15)


@pytest.mark.extended
def test_databases_created_at_once_agree_many_times(tmp_path):
    create_at_once(tmp_path, 300)  # before the fix: ~1 creator in 90 failed


# --------------------------------------------------------------------------
# Hostile and damaged databases
# --------------------------------------------------------------------------


def test_a_planted_report_symlink_is_never_followed(db, tmp_path):
    real = publish(db)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metadata.json").write_text(json.dumps({**real.metadata, "id": "a" * 32}))
    (outside / "minidump.dmp").write_bytes(b"MDMP precious")
    os.symlink(outside, db.path("reports", "a" * 32))
    scan = db.scan()
    assert [r.id for r in scan.reports] == [real.id]
    assert [p.id for p in scan.problems] == ["a" * 32] and "symlink" in scan.problems[0].message
    with pytest.raises(reports.CorruptReportError):
        db.get("a" * 32)
    db.prune(max_bytes=1)
    assert db.reports() == []
    assert (outside / "minidump.dmp").read_bytes() == b"MDMP precious"
    assert os.path.islink(db.path("reports", "a" * 32))


def test_symlinked_files_inside_a_report_are_not_followed(db, tmp_path):
    report = publish(db)
    outside = tmp_path / "metadata.json"
    outside.write_text(json.dumps(report.metadata))
    os.unlink(report.metadata_path)
    os.symlink(outside, report.metadata_path)
    [problem] = db.scan().problems
    assert "symlink" in problem.message
    os.unlink(report.metadata_path)
    os.mkfifo(report.metadata_path)  # a FIFO must not hang the reader
    [problem] = db.scan().problems
    assert "not a regular file" in problem.message
    os.unlink(report.metadata_path)
    outside.write_text(json.dumps(report.metadata))
    os.rename(outside, report.metadata_path)
    dump_target = tmp_path / "dump"
    dump_target.write_bytes(b"MDMP secret")
    os.unlink(report.dump_path)
    os.symlink(dump_target, report.dump_path)
    [listed] = db.reports()
    assert any("not a regular file" in p for p in listed.problems)


def test_planted_directory_and_lock_symlinks_are_refused(db, tmp_path):
    report = publish(db)
    target = tmp_path / "target-lock"
    lock = db.path("locks", f"{report.id}.lock")
    os.unlink(lock)
    os.symlink(target, lock)
    with pytest.raises(reports.DatabasePermissionError, match="symlink"):
        db.lock(report.id)
    assert not target.exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(db.path("trash"), str(elsewhere / "trash"))
    os.symlink(elsewhere / "trash", db.path("trash"))
    with pytest.raises(reports.DatabasePermissionError, match="symlink"):
        reports.Database(db.directory)


def test_corrupt_and_hand_edited_metadata_are_reported_not_fatal(db, capsys):
    good, broken, edited, wrong_id = (publish(db, time=at(i)) for i in range(4))
    with open(broken.metadata_path, "w") as f:
        f.write("{ not json")
    md = dict(edited.metadata, state="uploaded", dump_bytes=1, time="sometime")
    with open(edited.metadata_path, "w") as f:
        json.dump(md, f)
    with open(wrong_id.metadata_path, "w") as f:
        json.dump(dict(wrong_id.metadata, id="f" * 32), f)
    scan = db.scan()
    assert sorted(r.id for r in scan.reports) == sorted([good.id, edited.id])
    assert sorted(p.id for p in scan.problems) == sorted([broken.id, wrong_id.id])
    hand = db.get(edited.id)
    assert hand.state == "uploaded"
    assert any("bytes; the metadata says 1" in p for p in hand.problems)
    assert any("not ISO 8601" in p for p in hand.problems)
    with pytest.raises(reports.CorruptReportError, match="not valid JSON"):
        db.get(broken.id)
    assert main(["reports", "list", db.directory]) == 0
    captured = capsys.readouterr()
    assert f"warning: {broken.directory}: metadata.json is not valid JSON" in captured.err
    assert good.id in captured.out and broken.id not in captured.out
    assert main(["reports", "show", broken.id, "-d", db.directory]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mdstream: error: report") and len(err.splitlines()) == 1
    # Under pressure an unreadable report goes like a pending one, dated by its directory's mtime.
    os.utime(broken.directory, (1e9, 1e9))  # 2001: the oldest
    removed = db.prune(max_reports=2)
    assert list(removed) == [edited.id, broken.id]  # uploaded first, then the oldest
    assert sorted(p.id for p in removed.problems) == sorted([broken.id, wrong_id.id])


def test_not_a_database_is_never_touched(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "reports").mkdir(parents=True)
    (home / "reports" / ("b" * 32)).mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(reports.NotADatabaseError, match="notes.txt"):
        reports.Database(home)
    assert main(["reports", "prune", str(home), "--max-reports", "1"]) == 1
    assert "is not an mdstream crash database" in capsys.readouterr().err
    assert (home / "reports" / ("b" * 32)).is_dir() and not (home / "staging").exists()
    with pytest.raises(reports.DatabaseNotFoundError):
        reports.Database(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_a_database_writable_by_others_is_refused(db):
    os.chmod(db.directory, 0o777)
    with pytest.raises(reports.DatabasePermissionError, match="chmod 700"):
        reports.Database(db.directory)


def test_locks_exclude_each_other(db):
    report = publish(db)
    with db.lock(report.id):
        with pytest.raises(reports.ReportBusyError):
            db.lock(report.id)
        with pytest.raises(reports.ReportBusyError):
            db.lock(report.id, wait=0.05)
        with pytest.raises(reports.ReportBusyError):
            db.delete(report.id)
    with db.lock(report.id, wait=1.0) as lock:
        assert lock.report.id == report.id
        with pytest.raises(reports.MetadataError):
            lock.update({"sha256": "0" * 64})
        with pytest.raises(reports.MetadataError):
            lock.update({"state": "lost"})
    db.delete(report.id)
    assert db.reports() == [] and os.listdir(db.path("locks")) == []
    with pytest.raises(reports.ReportNotFoundError):
        db.get(report.id)


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


def test_prune_removes_uploaded_before_pending_then_the_oldest(db):
    pending = [publish(db, time=at(m)) for m in (1, 2, 3)]
    uploaded = [publish(db, time=at(m)) for m in (4, 5)]
    for report in uploaded:
        with db.lock(report.id) as lock:
            lock.update({"state": "uploaded"})
    removed = db.prune(max_reports=3)
    assert sorted(removed) == sorted(r.id for r in uploaded) == sorted(removed.reports)
    removed = db.prune(max_reports=1)
    assert list(removed) == [pending[0].id, pending[1].id]
    assert [r.id for r in db.reports()] == [pending[2].id]


def test_prune_by_bytes_and_skips_locked_reports(db):
    made = [publish(db, fake_dump(1000), time=at(m)) for m in range(4)]
    size = made[0].size_on_disk
    with db.lock(made[0].id):
        result = db.prune(max_bytes=2 * size + 10)
    assert result.busy == [made[0].id]
    assert list(result) == [made[1].id, made[2].id]
    assert sorted(r.id for r in db.reports()) == sorted([made[0].id, made[3].id])
    assert result.removed_bytes == 2 * size


def test_publish_prunes_to_the_limits_but_never_itself(tmp_path):
    db = reports.Database(tmp_path / "crashes", max_reports=2)
    first, second = publish(db, time=at(10)), publish(db, time=at(20))
    old = publish(db, time=at(0))  # the oldest, yet just published: kept
    assert sorted(r.id for r in db.reports()) == sorted([old.id, second.id])
    assert first.id not in {r.id for r in db.reports()}
    with pytest.raises(ValueError):
        reports.Database(tmp_path / "crashes", max_reports=0)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_cli_list_show_prune_json(db, capsys):
    first = publish(db, time=at(1), signal=6, pid=7, executable="/bin/app")
    second = publish(db, time=at(2))
    assert main(["reports", "list", db.directory, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["format"] == "mdstream-reports-list/1" and listing["database"] == db.directory
    assert [r["id"] for r in listing["reports"]] == [second.id, first.id]
    assert listing["reports"][1]["dump_path"] == first.dump_path and os.path.isabs(first.dump_path)
    assert listing["reports"][1]["signal_name"] == "SIGABRT"
    assert main(["reports", "show", first.id[:8], "-d", db.directory, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["format"] == "mdstream-reports-show/1" and shown["report"]["id"] == first.id
    assert shown["report"]["metadata_path"] == first.metadata_path
    assert main(["reports", "show", first.id, "-d", db.directory]) == 0
    text = capsys.readouterr().out
    assert "SIGABRT (6)" in text and "/bin/app" in text
    assert main(["reports", "prune", db.directory, "--max-reports", "1", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["format"] == "mdstream-reports-prune/1" and pruned["removed"] == [first.id]
    assert main(["reports", "show", "0000", "-d", db.directory, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "format": "mdstream-reports-show/1", "status": "error", "exit": 1,
        "error": f"no report 0000 in {db.directory}"}
    assert main(["reports", "list", str(db.directory) + "-missing"]) == 1
    assert "no crash database" in capsys.readouterr().err


def test_cli_list_of_the_missing_default_database(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert main(["reports", "list"]) == 0
    assert "no reports" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()


def test_id_prefixes(db):
    made = publish(db)
    for twin in ("abcd" + "0" * 28, "abcd" + "1" * 28):
        os.mkdir(db.path("reports", twin), 0o700)
    with pytest.raises(reports.AmbiguousReportIdError, match="matches 2 reports"):
        db.resolve("abcd")
    with pytest.raises(reports.ReportNotFoundError):
        db.resolve(made.id[:3])  # too short
    with pytest.raises(reports.ReportNotFoundError):
        db.resolve("zzzz")
    assert db.resolve(made.id[:12].upper()) == made.id
