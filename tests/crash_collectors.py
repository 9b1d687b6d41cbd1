"""Local crash collectors for the upload tests: stdlib ``http.server`` in a thread on 127.0.0.1.

Each checks a request the way the real server does and refuses it otherwise:

- ``breakpad`` (Socorro's collector, antenna): ``POST /submit``, ``Content-Length``
  required (411 otherwise), gzip ``Content-Encoding`` accepted, multipart/form-data;
  text parts are annotations and there must be at least one
  (``400 Discarded=malformed_no_annotations``); ``ProductName`` is required (the
  throttler keys on it); the dump in ``upload_file_minidump``; answers
  ``CrashID=bp-<uuid>`` as text/plain.
- ``crashpad``: ``POST /crashpad?product=&version=&guid=`` (matching the form's
  ProductName/Version/guid), the whole body gzip-compressed with
  ``Content-Encoding: gzip``; answers the report id as text.
- ``sentry`` (Relay): ``POST /api/<project>/minidump/?sentry_key=<key>`` (401 for
  another key), at most 20 MB (413), the minidump in ``upload_file_minidump``,
  possibly gzip/zstd/xz/bz2 compressed (detected by magic), starting with
  ``MDMP``; an optional ``sentry`` JSON field; answers ``{"id": "<event id>"}``.

``faults`` scripts the next requests: ``("status", code, headers, body)`` answers
that; ``("close",)`` reads part of the body and drops the connection;
``("hang", seconds)`` reads the request and says nothing for that long.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SENTRY_MAX_BODY = 20_000_000
SENTRY_MAX_DUMP = 100_000_000


class Rejected(Exception):
    def __init__(self, status: int, body: str, content_type: str = "text/plain") -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.content_type = content_type


def parse_multipart(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """A strict multipart/form-data parser: every part has a Content-Disposition form-data name;
    the body starts with the first delimiter and ends with the closing one."""
    match = re.match(r'^multipart/form-data;\s*boundary=("?)([^";]+)\1\s*$', content_type or "")
    if not match:
        raise Rejected(400, f"Discarded=malformed_content_type ({content_type!r})")
    delimiter = b"--" + match.group(2).encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        raise Rejected(400, "Discarded=malformed_no_first_boundary")
    segments = body[len(delimiter) + 2:].split(b"\r\n" + delimiter)
    closing = segments.pop()
    if closing not in (b"--\r\n", b"--"):
        raise Rejected(400, "Discarded=malformed_no_closing_boundary")
    parts = []
    for index, segment in enumerate(segments):
        if index > 0:
            if not segment.startswith(b"\r\n"):
                raise Rejected(400, "Discarded=malformed_part_boundary")
            segment = segment[2:]
        head, sep, content = segment.partition(b"\r\n\r\n")
        if not sep:
            raise Rejected(400, "Discarded=malformed_part_headers")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon:
                raise Rejected(400, f"Discarded=malformed_header_line ({line!r})")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        if not disposition.startswith("form-data"):
            raise Rejected(400, "Discarded=malformed_disposition")
        name = re.search(r'\bname="([^"]*)"', disposition)
        if not name:
            raise Rejected(400, "Discarded=malformed_part_without_name")
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        parts.append({"name": name.group(1), "filename": filename.group(1) if filename else None,
                      "content_type": headers.get("content-type"), "data": content})
    return parts


def _decompress_by_magic(data: bytes) -> tuple[bytes, str | None]:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data), "gzip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=SENTRY_MAX_DUMP + 1), "zstd"
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data), "xz"
    if data[:3] == b"BZh":
        return bz2.decompress(data), "bzip2"
    return data, None


class Collector:
    """A collector for ``protocol`` on 127.0.0.1; use as a context manager."""

    def __init__(self, protocol: str, *, sentry_key: str = "0123456789abcdef0123456789abcdef", project: str = "42",
                 required: tuple[str, ...] = ("ProductName",), delay: float = 0.0) -> None:
        self.protocol = protocol
        self.sentry_key = sentry_key
        self.project = project
        self.required = required
        self.delay = delay
        self.faults: deque[tuple[Any, ...]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                collector._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                self.send_error(405)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    # -- life -----------------------------------------------------------------

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        base = f"http://127.0.0.1:{self.port}"
        return {"breakpad": f"{base}/submit", "crashpad": f"{base}/crashpad",
                "sentry": f"{base}/api/{self.project}/minidump/?sentry_key={self.sentry_key}"}[self.protocol]

    @property
    def dsn(self) -> str:
        return f"http://{self.sentry_key}@127.0.0.1:{self.port}/{self.project}"

    def accepted_sha256(self) -> list[str]:
        with self.lock:
            return [a["sha256"] for a in self.accepted]

    # -- requests -------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        record: dict[str, Any] = {"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()},
                                  "raw_headers": list(h.headers.items())}
        with self.lock:
            self.requests.append(record)
            fault = self.faults.popleft() if self.faults else None
        length_text = h.headers.get("Content-Length")
        if fault is not None and fault[0] == "close":
            # Read part of the body, then drop the connection without an answer.
            h.rfile.read(min(int(length_text or 0) // 2, 4096))
            record["fault"] = "closed mid-body"
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            if h.headers.get("Transfer-Encoding"):
                raise Rejected(411, "Content-Length required (no chunked bodies)")
            if length_text is None or not length_text.isdigit():
                raise Rejected(411, "Content-Length required")
            length = int(length_text)
            if self.protocol == "sentry" and length > SENTRY_MAX_BODY:
                raise Rejected(413, json.dumps({"detail": "payload too large"}), "application/json")
            body = h.rfile.read(length)
            if len(body) != length:
                raise Rejected(400, "short body")
            record["body"] = body
            if fault is not None and fault[0] == "hang":
                time.sleep(fault[1])
                record["fault"] = "hung"
                h.close_connection = True
                return
            if fault is not None and fault[0] == "status":
                _, status, headers, text = fault
                record["fault"] = f"answered {status}"
                self._answer(h, status, text, headers=headers)
                return
            answer = self._check(h, body, record)
        except Rejected as exc:
            record["rejected"] = f"{exc.status} {exc.body}"
            self._answer(h, exc.status, exc.body, content_type=exc.content_type)
            return
        if self.delay:
            time.sleep(self.delay)
        self._answer(h, 200, answer[0], content_type=answer[1])

    def _answer(self, h: BaseHTTPRequestHandler, status: int, text: str, *, content_type: str = "text/plain",
                headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass

    def _check(self, h: BaseHTTPRequestHandler, body: bytes, record: dict[str, Any]) -> tuple[str, str]:
        url = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        encoding = h.headers.get("Content-Encoding")
        if self.protocol == "crashpad" and encoding != "gzip":
            raise Rejected(400, "crashpad uploads are gzip-compressed (Content-Encoding: gzip)")
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as exc:
                raise Rejected(400, f"bad gzip body: {exc}") from None
        elif encoding not in (None, "identity"):
            raise Rejected(415, f"unsupported Content-Encoding {encoding}")
        parts = parse_multipart(body, h.headers.get("Content-Type", ""))
        fields = {p["name"]: p["data"].decode("utf-8") for p in parts if p["filename"] is None}
        dumps = [p for p in parts if p["name"] == "upload_file_minidump"]
        record["fields"] = fields
        if self.protocol == "sentry":
            return self._check_sentry(url, query, fields, dumps, record)
        if url.path != {"breakpad": "/submit", "crashpad": "/crashpad"}[self.protocol]:
            raise Rejected(404, "no such collector path")
        if not fields:
            raise Rejected(400, "Discarded=malformed_no_annotations")
        for name in self.required:
            if not fields.get(name):
                raise Rejected(400, f"Discarded=malformed_no_{name.lower()}")
        if len(dumps) != 1 or not dumps[0]["filename"] or dumps[0]["content_type"] != "application/octet-stream":
            raise Rejected(400, "Discarded=malformed_no_dump")
        dump = dumps[0]["data"]
        if self.protocol == "crashpad":
            for key, field in (("product", "ProductName"), ("version", "Version"), ("guid", "guid")):
                if not query.get(key) or query[key] != fields.get(field):
                    raise Rejected(400, f"the URL's {key}= must match the form's {field}")
        crash_id = f"bp-{uuid.uuid4()}" if self.protocol == "breakpad" else uuid.uuid4().hex
        self._accept(record, fields, dump, None, crash_id, query)
        return (f"CrashID={crash_id}\n", "text/plain") if self.protocol == "breakpad" else (crash_id, "text/plain")

    def _check_sentry(self, url: urllib.parse.SplitResult, query: dict[str, str], fields: dict[str, str],
                      dumps: list[dict[str, Any]], record: dict[str, Any]) -> tuple[str, str]:
        if not re.fullmatch(rf"/api/{self.project}/minidump/?", url.path):
            raise Rejected(404, json.dumps({"detail": "not found"}), "application/json")
        if query.get("sentry_key") != self.sentry_key:
            raise Rejected(401, json.dumps({"detail": "missing or unknown sentry_key"}), "application/json")
        if len(dumps) != 1:
            raise Rejected(400, json.dumps({"detail": "missing minidump"}), "application/json")
        try:
            dump, compression = _decompress_by_magic(dumps[0]["data"])
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad upload
            raise Rejected(400, json.dumps({"detail": f"invalid compression: {exc}"}), "application/json") from None
        if len(dump) > SENTRY_MAX_DUMP:
            raise Rejected(413, json.dumps({"detail": "minidump too large"}), "application/json")
        if not dump.startswith(b"MDMP"):
            raise Rejected(400, json.dumps({"detail": "invalid minidump"}), "application/json")
        event_id = uuid.uuid4().hex
        if "sentry" in fields:
            try:
                event = json.loads(fields["sentry"])
            except ValueError:
                raise Rejected(400, json.dumps({"detail": "invalid event JSON"}), "application/json") from None
            if not isinstance(event, dict):
                raise Rejected(400, json.dumps({"detail": "event is not an object"}), "application/json")
            event_id = str(event.get("event_id") or event_id)
            record["event"] = event
        self._accept(record, fields, dump, compression, event_id, query)
        return json.dumps({"id": event_id}), "application/json"

    def _accept(self, record: dict[str, Any], fields: dict[str, str], dump: bytes, compression: str | None,
                crash_id: str, query: dict[str, str]) -> None:
        entry = {"fields": fields, "dump": dump, "sha256": hashlib.sha256(dump).hexdigest(),
                 "compression": compression, "crash_id": crash_id, "query": query, "headers": record["headers"],
                 "event": record.get("event")}
        record["accepted"] = crash_id
        with self.lock:
            self.accepted.append(entry)


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (a collector that is down)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port
