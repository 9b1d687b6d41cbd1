"""A temporary stand-in for ``mdstream.reports`` (being written on another
branch) with the interface the crash capture codes against:

    db = Database(directory=None, *, max_reports=None, max_bytes=None)
    pending = db.new_report(**metadata); pending.id, pending.dump_path
    report = pending.publish(**more); pending.discard()

Only the tests use it, and only while the real module is missing
(``install_if_missing``).  Reports are ``<id>.dmp`` + ``<id>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
import uuid
from pathlib import Path
from typing import Any


class Report:
    def __init__(self, directory: Path, rid: str) -> None:
        self.id = rid
        self.dump_path = directory / f"{rid}.dmp"
        self.metadata_path = directory / f"{rid}.json"
        self.metadata = json.loads(self.metadata_path.read_text())


RESERVED = frozenset({"id", "format", "state", "dump_bytes", "sha256", "mdstream_version", "upload"})


class PendingReport:
    def __init__(self, db: "Database", metadata: dict[str, Any]) -> None:
        if RESERVED & set(metadata):
            raise ValueError(f"reserved keys {sorted(RESERVED & set(metadata))}")
        json.dumps(metadata)
        self.db = db
        self.id = uuid.uuid4().hex
        self.metadata = dict(metadata)
        self.dump_path = db.directory / f"{self.id}.dmp"

    def publish(self, **more: Any) -> Report:
        data = self.dump_path.read_bytes()
        meta = dict(self.metadata, **more)
        if RESERVED & set(more):
            raise ValueError(f"reserved keys {sorted(RESERVED & set(more))}")
        import mdstream

        meta.update(id=self.id, dump_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), state="pending",
                    mdstream_version=mdstream.__version__)
        temp = self.db.directory / f".{self.id}.json.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.rename(temp, self.db.directory / f"{self.id}.json")
        return Report(self.db.directory, self.id)

    def discard(self) -> None:
        try:
            os.unlink(self.dump_path)
        except FileNotFoundError:
            pass


class Database:
    def __init__(self, directory: Any = None, *, max_reports: int | None = None, max_bytes: int | None = None) -> None:
        if directory is None:
            raise ValueError("the shim needs a directory")
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def new_report(self, **metadata: Any) -> PendingReport:
        return PendingReport(self, metadata)

    def list(self) -> list[Report]:
        return [Report(self.directory, p.stem) for p in sorted(self.directory.glob("*.json"))]


def install_if_missing() -> None:
    try:
        import mdstream.reports  # noqa: F401
        return
    except ImportError:
        pass
    import mdstream

    module = types.ModuleType("mdstream.reports")
    for name in ("Report", "PendingReport", "Database"):
        setattr(module, name, globals()[name])
    sys.modules["mdstream.reports"] = module
    mdstream.reports = module  # type: ignore[attr-defined]


def load_reports(directory: Any) -> list[dict[str, Any]]:
    """Every published report's metadata, with ``dump_path`` (the real database's, or the shim's)."""
    if not Path(directory).is_dir():
        return []
    try:
        from mdstream import reports  # type: ignore[attr-defined]
    except ImportError:
        reports = None
    if reports is not None and getattr(reports, "Database", None) is not Database:
        return [r.to_dict() for r in reports.Database(directory).reports()]
    out = []
    for meta_path in sorted(Path(directory).glob("*.json")):
        meta = json.loads(meta_path.read_text())
        meta["dump_path"] = str(meta_path.with_suffix(".dmp"))
        out.append(meta)
    return out
