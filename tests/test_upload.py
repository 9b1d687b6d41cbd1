"""Uploading reports (issue 16) against local collectors that check each request
as Socorro's antenna, a Crashpad server and Sentry's Relay would."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from crash_collectors import Collector, closed_port
from mdstream import reports
from mdstream.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the crash database is POSIX only")


def make_report(db: reports.Database, size: int = 512, *, data: bytes | None = None, **metadata) -> reports.Report:
    metadata.setdefault("annotations", {"ProductName": "Widget", "Version": "2.5", "channel": "beta",
                                        "secret_token": "hunter2"})
    metadata.setdefault("executable", "/opt/widget/bin/widget")
    metadata.setdefault("signal", 11)
    pending = db.new_report(**metadata)
    with open(pending.dump_path, "wb") as f:
        f.write(data if data is not None else b"MDMP" + os.urandom(size - 4))
    return pending.publish()


def no_sleep(waits: list[float]):
    return waits.append


@pytest.fixture
def db(tmp_path) -> reports.Database:
    return reports.Database(tmp_path / "crashes")


def sha(report: reports.Report) -> str:
    with open(report.dump_path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --------------------------------------------------------------------------
# The three protocols
# --------------------------------------------------------------------------


def test_breakpad_upload_sends_the_socorro_form_and_stores_the_crash_id(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        results = reports.upload(db, url=collector.url, annotations=["channel"])
    assert [r.outcome for r in results] == ["uploaded"]
    assert len(collector.accepted) == 1
    accepted = collector.accepted[0]
    assert accepted["sha256"] == report.sha256 == sha(report)
    assert accepted["fields"] == {"ProductName": "Widget", "Version": "2.5", "guid": db.client_id, "channel": "beta"}
    headers = accepted["headers"]
    assert headers["content-length"] == str(len(collector.requests[0]["body"]))
    assert "expect" in headers and headers["expect"] == ""
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert "content-encoding" not in headers
    stored = db.get(report.id)
    assert stored.state == "uploaded"
    assert stored.upload["server_crash_id"] == accepted["crash_id"] == results[0].server_crash_id
    assert stored.upload["server_crash_id"].startswith("bp-")
    assert stored.upload["attempts"] == 1 and stored.upload["protocol"] == "breakpad"
    assert stored.upload["url"] == collector.url and stored.upload["uploaded_at"]
    # A second run sends nothing: nothing is pending.
    with Collector("breakpad") as again:
        assert reports.upload(db, url=again.url) == []
        assert again.requests == []


def test_socorro_refuses_an_upload_without_annotations_and_the_report_is_rejected(db, tmp_path):
    """The collector really checks: a form without the required annotation is refused (400)."""
    report = make_report(db)
    with Collector("breakpad", required=("ProductName", "BuildID")) as collector:
        [result] = reports.upload(db, url=collector.url)
    assert result.outcome == "rejected" and result.status == 400
    assert "Discarded=malformed_no_buildid" in result.error
    stored = db.get(report.id)
    assert stored.state == "rejected"
    assert stored.upload["rejected_reason"] == "HTTP 400 Bad Request: Discarded=malformed_no_buildid"
    assert collector.accepted == []


def test_crashpad_gzips_the_whole_body_and_puts_product_version_guid_in_the_url(db):
    report = make_report(db, 4096, annotations={"ProductName": "Widget", "Version": "2.5"})
    with Collector("crashpad") as collector:
        [result] = reports.upload(db, url=collector.url, protocol="crashpad", guid="feedface")
    assert result.outcome == "uploaded", result
    accepted = collector.accepted[0]
    assert accepted["headers"]["content-encoding"] == "gzip"
    assert accepted["query"] == {"product": "Widget", "version": "2.5", "guid": "feedface"}
    assert accepted["sha256"] == report.sha256
    raw = collector.requests[0]["body"]
    assert raw[:2] == b"\x1f\x8b" and int(accepted["headers"]["content-length"]) == len(raw)
    assert db.get(report.id).upload["server_crash_id"] == accepted["crash_id"]


def test_crashpad_collector_refuses_an_uncompressed_body(db):
    make_report(db)
    with Collector("crashpad") as collector:
        [result] = reports.upload(db, url=collector.url, protocol="crashpad", compression="none")
    assert result.outcome == "rejected" and "gzip" in result.error
    assert collector.accepted == []


def test_sentry_upload_from_a_dsn(db):
    report = make_report(db, annotations={"Version": "2.5", "channel": "beta", "secret_token": "x"})
    with Collector("sentry") as collector:
        [result] = reports.upload(db, dsn=collector.dsn, annotations=["channel"])
    assert result.outcome == "uploaded", result
    accepted = collector.accepted[0]
    assert accepted["query"] == {"sentry_key": collector.sentry_key}
    assert collector.requests[0]["path"].startswith(f"/api/{collector.project}/minidump/?")
    assert accepted["sha256"] == report.sha256 and accepted["compression"] is None
    event = accepted["event"]
    assert event["event_id"] == report.id == result.server_crash_id
    assert event["release"] == "2.5" and event["extra"] == {"channel": "beta"}
    assert "secret_token" not in json.dumps(event)
    stored = db.get(report.id)
    assert stored.state == "uploaded" and stored.upload["server_crash_id"] == report.id
    assert "sentry_key=***" in stored.upload["url"] and collector.sentry_key not in stored.upload["url"]


def test_sentry_refuses_a_wrong_key(db):
    report = make_report(db)
    with Collector("sentry") as collector:
        dsn = collector.dsn.replace(collector.sentry_key, "f" * 32)
        [result] = reports.upload(db, dsn=dsn)
    assert result.outcome == "rejected" and result.status == 401
    assert db.get(report.id).state == "rejected"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_sentry_compressed_minidump(db, compression):
    if compression == "zstd":
        pytest.importorskip("zstandard")
    report = make_report(db, data=b"MDMP" + bytes(200_000))
    with Collector("sentry") as collector:
        [result] = reports.upload(db, dsn=collector.dsn, compression=compression)
    assert result.outcome == "uploaded"
    accepted = collector.accepted[0]
    assert accepted["compression"] == compression and accepted["sha256"] == report.sha256
    assert result.body_bytes < 10_000


def test_sentry_limits_compress_then_refuse(db):
    """Over the upload limit: compressed automatically; still over it: refused clearly, kept pending."""
    small = make_report(db, data=b"MDMP" + bytes(300_000))
    with Collector("sentry") as collector:
        [result] = reports.upload(db, dsn=collector.dsn, max_upload_bytes=100_000)
        assert result.outcome == "uploaded"
        assert collector.accepted[0]["compression"] in ("zstd", "gzip")
        assert collector.accepted[0]["sha256"] == small.sha256
        big = make_report(db, 300_000)  # random bytes: they do not compress
        [result] = reports.upload(db, dsn=collector.dsn, max_upload_bytes=100_000)
        assert result.outcome == "failed"
        assert "the collector accepts at most 100,000" in result.error and "compression" in result.error
        [result] = reports.upload(db, dsn=collector.dsn, max_dump_bytes=1000)
        assert result.outcome == "failed" and "at most 1,000 uncompressed" in result.error
        assert len(collector.requests) == 1
    stored = db.get(big.id)
    assert stored.state == "pending" and "at most" in stored.upload["last_error"]


def test_breakpad_body_is_gzipped_to_fit_a_limit(db):
    report = make_report(db, data=b"MDMP" + bytes(200_000))
    with Collector("breakpad") as collector:
        [result] = reports.upload(db, url=collector.url, max_upload_bytes=50_000)
    assert result.outcome == "uploaded"
    assert collector.accepted[0]["headers"]["content-encoding"] == "gzip"
    assert collector.accepted[0]["sha256"] == report.sha256


# --------------------------------------------------------------------------
# Failures: nothing lost, nothing sent twice
# --------------------------------------------------------------------------


def test_collector_down_keeps_the_report_pending_then_it_goes_through(db):
    report = make_report(db)
    waits: list[float] = []
    url = f"http://127.0.0.1:{closed_port()}/submit"
    [result] = reports.upload(db, url=url, retries=2, backoff_factor=1.0, backoff_jitter=0.5, sleep=waits.append)
    assert result.outcome == "failed" and "cannot connect" in result.error and result.attempts == 3
    assert len(waits) == 1 and 2.0 <= waits[0] <= 2.5  # urllib3: no wait before the 1st retry, then 2 s + jitter
    stored = db.get(report.id)
    assert stored.state == "pending" and stored.upload["attempts"] == 3
    assert "cannot connect" in stored.upload["last_error"]
    with Collector("breakpad") as collector:
        [result] = reports.upload(db, url=collector.url)
    assert result.outcome == "uploaded" and collector.accepted_sha256() == [report.sha256]
    stored = db.get(report.id)
    assert stored.upload["attempts"] == 4 and stored.upload["last_error"] is None


def test_503_retry_after_is_honoured(db):
    report = make_report(db)
    waits: list[float] = []
    with Collector("breakpad") as collector:
        collector.faults.extend([("status", 503, {"Retry-After": "7"}, "busy"),
                                 ("status", 429, {"Retry-After": "3"}, "slow down")])
        [result] = reports.upload(db, url=collector.url, sleep=waits.append)
    assert result.outcome == "uploaded" and result.attempts == 3
    assert waits == [7, 3]
    assert collector.accepted_sha256() == [report.sha256]
    assert db.get(report.id).upload["attempts"] == 3


def test_a_long_retry_after_defers_the_report(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.append(("status", 503, {"Retry-After": "3600"}, "maintenance"))
        [result] = reports.upload(db, url=collector.url, max_retry_after=60, sleep=pytest.fail)
        assert result.outcome == "deferred" and result.retry_after == 3600
        stored = db.get(report.id)
        assert stored.state == "pending" and stored.upload["next_attempt"]
        # The next run respects the deferral without sending anything ...
        [again] = reports.upload(db, url=collector.url)
        assert again.outcome == "deferred" and len(collector.requests) == 1
        # ... unless forced.
        [forced] = reports.upload(db, url=collector.url, force=True)
        assert forced.outcome == "uploaded"
    assert collector.accepted_sha256() == [report.sha256]
    assert db.get(report.id).upload["next_attempt"] is None


def test_connection_closed_mid_body_is_retried(db):
    report = make_report(db, 200_000)
    with Collector("breakpad") as collector:
        collector.faults.append(("close",))
        [result] = reports.upload(db, url=collector.url, sleep=[].append)
    assert result.outcome == "uploaded" and result.attempts == 2
    assert collector.requests[0]["fault"] == "closed mid-body"
    assert collector.accepted_sha256() == [report.sha256]


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_retryable_statuses(db, status):
    report = make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.append(("status", status, {}, "try again"))
        [result] = reports.upload(db, url=collector.url, sleep=[].append)
    assert result.outcome == "uploaded" and result.attempts == 2
    assert collector.accepted_sha256() == [report.sha256]


def test_a_redirect_is_not_followed_and_keeps_the_report_pending(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.append(("status", 302, {"Location": "http://127.0.0.1:1/elsewhere"}, ""))
        [result] = reports.upload(db, url=collector.url, sleep=[].append)
    assert result.outcome == "failed" and result.error == "HTTP 302 Found" and result.attempts == 1
    assert len(collector.requests) == 1 and db.get(report.id).state == "pending"


def test_retries_exhausted_on_5xx_keep_it_pending_with_the_error(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.extend([("status", 500, {}, "boom")] * 3)
        [result] = reports.upload(db, url=collector.url, retries=2, sleep=[].append)
    assert result.outcome == "failed" and result.attempts == 3 and result.status == 500
    assert db.get(report.id).upload["last_error"] == "HTTP 500 Internal Server Error: boom"
    assert db.get(report.id).state == "pending"


def test_400_rejects_and_is_not_resent_unless_asked(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.append(("status", 400, {}, "Discarded=malformed\n"))
        [result] = reports.upload(db, url=collector.url)
        assert result.outcome == "rejected" and result.error == "HTTP 400 Bad Request: Discarded=malformed"
        assert reports.upload(db, url=collector.url) == []  # only pending reports are sent
        [skipped] = reports.upload(db, url=collector.url, ids=[report.id])
        assert skipped.outcome == "skipped" and "rejected earlier" in skipped.error
        [again] = reports.upload(db, url=collector.url, retry_rejected=True)
        assert again.outcome == "uploaded"
    assert collector.accepted_sha256() == [report.sha256]
    stored = db.get(report.id)
    assert stored.state == "uploaded" and stored.upload["rejected_reason"]  # the history is kept


def test_a_hostile_answer_is_bounded(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.append(("status", 200, {}, "A" * (4 << 20)))
        [result] = reports.upload(db, url=collector.url)
    assert result.outcome == "uploaded" and result.server_crash_id == "A" * 200
    assert db.get(report.id).upload["server_crash_id"] == "A" * 200


def test_a_request_timeout_is_enforced(db):
    make_report(db)
    with Collector("breakpad") as collector:
        collector.faults.append(("hang", 5.0))
        started = time.monotonic()
        [result] = reports.upload(db, url=collector.url, timeout=0.3, retries=0)
        elapsed = time.monotonic() - started
    assert result.outcome == "failed" and "timed out" in result.error.lower()
    assert elapsed < 4.5  # not left waiting for the collector's 5 s


def test_many_reports_through_faults_each_arrive_exactly_once(db):
    made = [make_report(db, 300 + i) for i in range(8)]
    with Collector("breakpad") as collector:
        collector.faults.extend([("close",), ("status", 503, {"Retry-After": "1"}, ""), ("status", 500, {}, ""),
                                 ("close",), ("status", 429, {}, "")])
        first = reports.upload(db, url=collector.url, sleep=[].append)
        # The first report met close, 503, 500, close: four failures, one more than the 3 retries.
        # The second met the 429 and went through on its retry.
        assert [(r.outcome, r.attempts) for r in first] == [("failed", 4), ("uploaded", 2)] + [("uploaded", 1)] * 6
        assert db.get(first[0].id).state == "pending"
        second = reports.upload(db, url=collector.url, sleep=[].append)
        assert [(r.id, r.outcome) for r in second] == [(first[0].id, "uploaded")]
    assert sorted(collector.accepted_sha256()) == sorted(r.sha256 for r in made)
    assert {r.state for r in db.reports()} == {"uploaded"}


UPLOADER = """
import json, sys
from mdstream import reports
results = reports.upload(sys.argv[1], url=sys.argv[2], sleep=lambda s: None)
print(json.dumps([[r.id, r.outcome] for r in results]))
"""


def test_two_uploader_processes_never_send_a_report_twice(db):
    made = [make_report(db, 200 + i) for i in range(12)]
    with Collector("breakpad", delay=0.03) as collector:
        procs = [subprocess.Popen([sys.executable, "-c", UPLOADER, db.directory, collector.url],
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(collector.accepted_sha256()) == sorted(r.sha256 for r in made)  # each exactly once
    uploaded = [rid for out in outputs for rid, outcome in out if outcome == "uploaded"]
    assert sorted(uploaded) == sorted(r.id for r in made)
    others = {outcome for out in outputs for _, outcome in out if outcome != "uploaded"}
    assert others <= {"busy", "skipped"}
    assert {r.state for r in db.reports()} == {"uploaded"}


def test_an_uploader_killed_mid_upload_leaves_the_report_pending(db):
    import signal

    report = make_report(db, 100_000)
    with Collector("breakpad") as collector:
        collector.faults.append(("hang", 3.0))
        child = subprocess.Popen([sys.executable, "-c", UPLOADER, db.directory, collector.url])
        deadline = time.monotonic() + 30
        while not collector.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert collector.requests, "the uploader never reached the collector"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        stored = db.get(report.id)
        assert stored.state == "pending" and stored.upload["attempts"] == 0  # nothing recorded, nothing lost
        [result] = reports.upload(db, url=collector.url)  # its lock died with it
        assert result.outcome == "uploaded"
    assert collector.accepted_sha256() == [report.sha256]


def test_an_edited_dump_is_not_sent(db):
    report = make_report(db)
    with open(report.dump_path, "r+b") as f:
        f.seek(10)
        f.write(b"X")
    with Collector("breakpad") as collector:
        [result] = reports.upload(db, url=collector.url)
    assert result.outcome == "failed" and "does not match the sha256" in result.error
    assert collector.requests == []
    assert db.get(report.id).state == "pending"


def test_hand_edited_metadata_is_sent_safely_or_not_at_all(db):
    edited = make_report(db)
    with open(edited.metadata_path) as f:
        md = json.load(f)
    md["annotations"] = {"channel": 7, "ProductName": "Widget"}
    with open(edited.metadata_path, "w") as f:
        json.dump(md, f)
    unchecked = make_report(db)
    with open(unchecked.metadata_path) as f:
        md = json.load(f)
    del md["sha256"]
    with open(unchecked.metadata_path, "w") as f:
        json.dump(md, f)
    with Collector("breakpad") as collector:
        results = {r.id: r for r in reports.upload(db, url=collector.url, annotations="all")}
    assert results[edited.id].outcome == "uploaded"
    assert collector.accepted[0]["fields"] == {"ProductName": "Widget", "Version": "unknown", "guid": db.client_id}
    assert results[unchecked.id].outcome == "failed" and "no sha256" in results[unchecked.id].error
    assert len(collector.accepted) == 1


# --------------------------------------------------------------------------
# Privacy, dry run, background uploads
# --------------------------------------------------------------------------


def test_nothing_from_the_environment_or_unlisted_annotations_unless_asked(db, monkeypatch):
    monkeypatch.setenv("MDSTREAM_TEST_SECRET", "env-secret-value")
    make_report(db, python_tracebacks=["Thread 1:\n  File 'app.py', line 3 in main"])
    make_report(db)
    with Collector("breakpad") as collector:
        reports.upload(db, url=collector.url, ids=[db.reports()[1].id])
        first = collector.requests[0]["body"]
        assert b"env-secret-value" not in first and b"hunter2" not in first and b"app.py" not in first
        assert b"/opt/widget" not in first  # the executable's path is not sent (only its name, as ProductName)
        reports.upload(db, url=collector.url, environment=["MDSTREAM_TEST_SECRET"], annotations="all",
                       python_tracebacks=True)
    second = collector.accepted[1]["fields"]
    assert second["MDSTREAM_TEST_SECRET"] == "env-secret-value" and second["secret_token"] == "hunter2"


def test_python_tracebacks_sent_when_asked(db):
    make_report(db, python_tracebacks=["Thread 1:\n  File 'app.py', line 3 in main"])
    with Collector("breakpad") as collector:
        reports.upload(db, url=collector.url, python_tracebacks=True)
    assert json.loads(collector.accepted[0]["fields"]["python_tracebacks"]) == [
        "Thread 1:\n  File 'app.py', line 3 in main"]


def test_dry_run_sends_and_changes_nothing(db, capsys):
    report = make_report(db)
    with Collector("breakpad") as collector:
        assert main(["upload", db.directory, "--url", collector.url, "--dry-run", "--annotation", "channel"]) == 0
        out = capsys.readouterr().out
        assert collector.requests == []
        assert main(["upload", db.directory, "--url", collector.url, "--dry-run", "--json"]) == 0
        payload = json.loads(capsys.readouterr().out)
    assert f"would upload {report.id}" in out and "field channel = beta" in out and "hunter2" not in out
    assert "Expect: (empty)" in out
    assert payload["format"] == "mdstream-upload/1" and payload["dry_run"] is True
    [entry] = payload["results"]
    assert entry["outcome"] == "dry_run"
    names = [f["name"] for f in entry["request"]["fields"]]
    assert names == ["ProductName", "Version", "guid"]
    assert entry["request"]["file"]["field"] == "upload_file_minidump"
    assert entry["request"]["headers"]["Content-Length"] == str(entry["request"]["body_bytes"])
    assert db.get(report.id).metadata == report.metadata


def test_cli_upload_json_and_exit_status(db, capsys):
    good = make_report(db)
    with Collector("sentry") as collector:
        assert main(["upload", "-d", db.directory, "--dsn", collector.dsn, "--json"]) == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["status"] == "ok" and payload["counts"]["uploaded"] == 1
        assert payload["results"][0]["id"] == good.id and os.path.isabs(payload["results"][0]["dump_path"])
        assert payload["database"] == db.directory and payload["protocol"] == "sentry"
        make_report(db)
        collector.faults.append(("status", 400, {}, "nope"))
        assert main(["upload", db.directory, "--dsn", collector.dsn]) == 1
        out = capsys.readouterr().out
    assert "rejected" in out and "HTTP 400" in out
    assert main(["upload", db.directory, "--json"]) == 1
    error = json.loads(capsys.readouterr().out)
    assert error == {"format": "mdstream-upload/1", "status": "error", "exit": 1,
                     "error": "no collector URL given (--url, or --dsn for Sentry)"}
    assert main(["upload", db.directory, "--dsn", "https://nokey.example.com/1"]) == 1
    assert "invalid Sentry DSN" in capsys.readouterr().err


def test_upload_report_refuses_a_report_not_yet_on_disk(db):
    pending = db.new_report()
    with pytest.raises(reports.ReportStateError):
        reports.upload_report(pending, url="http://127.0.0.1:1/submit")
    with pytest.raises(reports.ReportStateError):
        reports.upload_in_background(pending, url="http://127.0.0.1:1/submit")
    pending.discard()


def test_upload_in_background_thread_and_process(db):
    first, second = make_report(db), make_report(db)
    with Collector("breakpad") as collector:
        thread = reports.upload_in_background(first, url=collector.url)
        thread.join(30)
        assert thread.result.outcome == "uploaded" and thread.error is None
        secret_url = collector.url.replace("http://", "http://user:s3cret@")
        proc = reports.upload_in_background(second, process=True, url=secret_url, annotations=["channel"],
                                            retries=1)
        assert proc.wait(60) == 0
        assert "s3cret" not in " ".join(proc.args)  # the options went on stdin, not the command line
        assert collector.accepted[1]["fields"]["channel"] == "beta"
    assert sorted(collector.accepted_sha256()) == sorted([first.sha256, second.sha256])
    assert {r.state for r in db.reports()} == {"uploaded"}


def test_a_busy_report_is_left_to_its_holder(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        with db.lock(report.id):
            [result] = reports.upload(db, url=collector.url)
        assert result.outcome == "busy" and collector.requests == []
        [result] = reports.upload(db, url=collector.url)
        assert result.outcome == "uploaded"


def test_progress_bar_for_a_large_upload(db, capsys):
    make_report(db, data=b"MDMP" + os.urandom(2 << 20))
    with Collector("breakpad") as collector:
        [result] = reports.upload(db, url=collector.url, progress=True)
    assert result.outcome == "uploaded"
    assert "upload" in capsys.readouterr().err


def test_configuration_errors_are_clear():
    with pytest.raises(reports.UploadConfigError, match="protocol must be one of"):
        reports.Uploader("http://x/submit", protocol="ftp")
    with pytest.raises(reports.UploadConfigError, match="sentry_key"):
        reports.Uploader("http://x/api/1/minidump/", protocol="sentry")
    with pytest.raises(reports.UploadConfigError, match="not both"):
        reports.Uploader("http://x/submit", dsn="https://k@x/1")
    with pytest.raises(reports.UploadConfigError, match="http:// or https://"):
        reports.Uploader("file:///etc/passwd")
    with pytest.raises(reports.UploadConfigError, match="zstd"):
        reports.Uploader("http://x/submit", compression="zstd")
    assert reports.sentry_endpoint("https://abc@o1.ingest.sentry.io/prefix/42") == \
        "https://o1.ingest.sentry.io/prefix/api/42/minidump/?sentry_key=abc"
    assert reports.redact_url("https://u:p@h/x?sentry_key=abc&a=1") == "https://h/x?sentry_key=***&a=1"


def test_basic_auth_from_the_url_goes_in_a_header_and_is_never_stored(db):
    report = make_report(db)
    with Collector("breakpad") as collector:
        url = collector.url.replace("http://", "http://user:pa55@")
        [result] = reports.upload(db, url=url)
    assert result.outcome == "uploaded"
    assert collector.accepted[0]["headers"]["authorization"].startswith("Basic ")
    stored = db.get(report.id)
    assert "pa55" not in json.dumps(stored.metadata)


def test_gzip_helper_roundtrip_matches_collector():
    # The crashpad collector's gzip check is real: a corrupt gzip body is refused.
    with Collector("crashpad") as collector:
        import urllib3

        body = gzip.compress(b"not multipart")[:-4]
        response = urllib3.request("POST", collector.url + "?product=a&version=b&guid=c", body=body,
                                   headers={"Content-Encoding": "gzip", "Content-Type": "multipart/form-data; b=1"})
    assert response.status == 400
