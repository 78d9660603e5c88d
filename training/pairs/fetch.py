"""``python -m training.pairs fetch --out DIR``: REACT's pairs parquet from the Hugging Face hub.

Through huggingface_hub (``hf_hub_download`` into ``DIR``): a transfer cut off mid-file is resumed by
huggingface_hub from the last chunk it wrote (an HTTP Range request, up to 5 tries; a new run starts the file
afresh: huggingface_hub 2.x keeps one temporary file per process), an existing complete file is not fetched again,
``HF_ENDPOINT`` names a mirror, ``HF_TOKEN`` / the stored login opens gated repos. Offline
(``HF_HUB_OFFLINE`` or the endpoint unreachable within a few seconds) it answers in one line: the file already in
``DIR`` is used, otherwise a HarnessError says what to do. ``DIR/fetched.json`` records repo, file, revision and
the commit the hub reported, so ``stats`` can name the source exactly.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from harness.core.atomic import check_writable_dir, write_json
from harness.core.errors import HarnessError
from harness.core.network import hub_endpoint, hub_reachable, offline_mode
from training.pairs.layout import PairsLayout

logger = logging.getLogger(__name__)


def _offline_answer(target: Path, repo: str, file: str) -> Path:
    why = "HF_HUB_OFFLINE is set" if offline_mode() else f"{hub_endpoint()} cannot be reached"
    if target.is_file():
        logger.warning("%s: using the %s already in %s", why, file, target.parent)
        return target
    raise HarnessError(f"cannot fetch {repo}/{file}: {why} and {target} is not there. Connect (or set HF_ENDPOINT "
                       f"to a reachable mirror, unset HF_HUB_OFFLINE), or copy the parquet to {target}.")


def fetch(out: Path, repo: str, file: str, revision: str | None = None) -> Path:
    """The parquet in ``out`` (downloaded or resumed; the existing one when offline)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    out = check_writable_dir(Path(out), "pairs folder", "--out")
    target = out / file
    if offline_mode() or not hub_reachable():
        return _offline_answer(target, repo, file)
    where = f"{hub_endpoint()} dataset {repo}, file {file}, revision {revision or 'main'}"
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, file, repo_type="dataset", revision=revision))
        path = Path(hf_hub_download(repo, file, repo_type="dataset", revision=meta.commit_hash or revision,
                                    local_dir=out))
    except GatedRepoError as exc:
        raise HarnessError(f"{where}: the repository is gated; accept its terms on the hub and log in "
                           f"(`huggingface-cli login` or HF_TOKEN).") from exc
    except RepositoryNotFoundError as exc:
        raise HarnessError(f"{where}: no such dataset repository (or it is private): check --repo.") from exc
    except RevisionNotFoundError as exc:
        raise HarnessError(f"{where}: no such revision: check --revision.") from exc
    except EntryNotFoundError as exc:
        raise HarnessError(f"{where}: no such file in the repository: check --file.") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise HarnessError(f"{where}: download failed ({exc}). Run fetch again: it resumes.") from exc
    except Exception as exc:  # the HTTP client's own errors (a connection dropped mid-file, after its retries)
        raise HarnessError(f"{where}: download failed ({type(exc).__name__}: {exc}). Run fetch again: it "
                           f"resumes.") from exc
    write_json(PairsLayout(out).fetched, {"repo": repo, "file": file, "revision": revision or "main",
                                          "commit": meta.commit_hash, "etag": meta.etag, "size": meta.size,
                                          "endpoint": hub_endpoint(), "path": str(path.resolve()),
                                          "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return path
