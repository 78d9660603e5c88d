"""The download record ``.harness_source.json`` that ``prepare`` writes beside a hub download, last: which repo, the
commit its revision resolved to, the endpoint, the datasets verified from it and its files (size, sha256). Results'
``data_source`` takes the revision from here when the sources data pins none (harness.data.sources)."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from harness.core.atomic import write_json
from harness.data.prepare.hub import RepoSnapshot, endpoint

RECORD_FILE = ".harness_source.json"


def read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_record(folder: Path, source: Any, snap: RepoSnapshot, dataset: str, files: dict[str, dict],
                 extra: dict | None = None) -> Path:
    """Merge this dataset's download into ``folder/.harness_source.json`` (atomically)."""
    record = read_record(folder)
    if record.get("revision") not in (None, snap.commit):  # another commit: the old entries describe other bytes
        record = {}
    record.update({"kind": source.kind, "repo": snap.repo, "revision": snap.commit,
                   "requested_revision": snap.requested, "endpoint": endpoint(),
                   "prepared_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    record["datasets"] = sorted(set(record.get("datasets", [])) | {dataset})
    record.setdefault("files", {}).update(files)
    record.update(extra or {})
    return write_json(folder / RECORD_FILE, record)
