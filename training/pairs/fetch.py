"""``python -m training.pairs fetch --out DIR``: REACT's pairs parquet from the Hugging Face hub.

Through the project's own hub client (:class:`harness.data.prepare.hub.HubClient`, huggingface_hub underneath): the
revision is resolved to a commit and the file's size and sha256 read from the hub; the bytes stream into
``DIR/.fetch/<file>.part`` — a transfer cut off mid-file is resumed within the call, and a ``.part`` left by a killed
or failed run is resumed by the next run with an HTTP Range request — then checked (size, sha256) and renamed to
``DIR/<file>``. A file already in ``DIR`` with the hub's size and sha256 is not fetched again. ``HF_ENDPOINT`` names
a mirror, ``HF_TOKEN`` / the stored login opens gated repos. Offline (``HF_HUB_OFFLINE`` or the endpoint unreachable
within a few seconds) it answers in one line: the file already in ``DIR`` is used, otherwise a HarnessError says what
to do. ``DIR/fetched.json`` records repo, file, revision and the commit, so ``stats`` can name the source exactly.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from harness.core.atomic import check_writable_dir, write_json
from harness.core.errors import HarnessError
from harness.core.network import hub_endpoint, hub_reachable, offline_mode
from training.pairs.layout import PairsLayout

logger = logging.getLogger(__name__)
STAGING = ".fetch"  # DIR/.fetch/<file>.part: a transfer in progress (resumed by the next run)


def _offline_answer(target: Path, repo: str, file: str) -> Path:
    why = "HF_HUB_OFFLINE is set" if offline_mode() else f"{hub_endpoint()} cannot be reached"
    if target.is_file():
        logger.warning("%s: using the %s already in %s", why, file, target.parent)
        return target
    raise HarnessError(f"cannot fetch {repo}/{file}: {why} and {target} is not there. Connect (or set HF_ENDPOINT "
                       f"to a reachable mirror, unset HF_HUB_OFFLINE), or copy the parquet to {target}.")


def _is_remote_file(path: Path, size: int, sha256: str | None) -> bool:
    from harness.core.hashing import file_sha256

    try:
        return path.stat().st_size == size and (sha256 is None or file_sha256(path) == sha256)
    except OSError:
        return False


def fetch(out: Path, repo: str, file: str, revision: str | None = None) -> Path:
    """The parquet in ``out`` (downloaded, or resumed from a ``.part``; the existing one when offline)."""
    from harness.data.prepare.hub import HubClient, HubError

    out = check_writable_dir(Path(out), "pairs folder", "--out")
    target = out / file
    if offline_mode() or not hub_reachable():
        return _offline_answer(target, repo, file)
    where = f"{hub_endpoint()} dataset {repo}, file {file}, revision {revision or 'main'}"
    client = HubClient(progress=True, tries=3)
    try:
        snap = client.snapshot(repo, revision, paths=[file])
        remote = snap.files.get(file)
        if remote is None:
            raise HarnessError(f"{where}: no such file in the repository at {snap.short}: check --file.")
        if _is_remote_file(target, remote.size, remote.sha256):
            logger.info("%s is already the hub's file (size and sha256): not fetched again", target)
        else:
            staging = out / STAGING
            done = client.fetch(snap, file, staging)
            if done.resumed_from:
                logger.info("resumed %s from byte %d", file, done.resumed_from)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / (file + ".part"), target)
    except HubError as exc:
        if exc.kind == "not-found" and "revision" in str(exc):
            raise HarnessError(f"{where}: no such revision: check --revision. ({exc})") from exc
        if exc.kind == "not-found":
            raise HarnessError(f"{where}: no such dataset repository, or it is private (or gated): check --repo. "
                               f"({exc})") from exc
        if exc.kind == "gated":
            raise HarnessError(f"{where}: the repository is gated; accept its terms on the hub and log in "
                               f"(`hf auth login` or HF_TOKEN).") from exc
        raise HarnessError(f"{where}: download failed ({exc}). Run fetch again: it resumes from "
                           f"{out / STAGING / (file + '.part')}.") from exc
    write_json(PairsLayout(out).fetched, {"repo": repo, "file": file, "revision": revision or "main",
                                          "commit": snap.commit, "sha256": remote.sha256, "size": remote.size,
                                          "endpoint": hub_endpoint(), "path": str(target.resolve()),
                                          "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return target
