"""The results store: one JSON per (model card, dataset card, protocol), probabilities and a predictions export.

Layout::

    <results>/<model>/<protocol>/<dataset>.json                     the result (schema below): the commit point
    <results>/<model>/<protocol>/<dataset>.<run>.probs.npy          (N, C) float32 softmax probabilities
    <results>/<model>/<protocol>/<dataset>.<run>.predictions.json   ELEVATER toolkit-style predictions (leaderboard)
    <results>/<model>/<protocol>/<dataset>.lock                     held while a run computes or writes this result

``<run>`` is a token unique to the run that wrote the files. The data files are written first under new names, the
JSON last (atomically), then files no JSON lists are removed. So the JSON always describes the files beside it: a
run killed at any point leaves either the previous complete result or the new one, never a mix.

Result JSON, ``schema_version`` 2:
- ``run_key``: {hash, parts} — what decides whether the result is finished (see harness.store.runkey)
- ``model``: card, card_hash, architecture, method, base_model, retrieval_set, weights {source, file, sha256}
- ``dataset``: card, card_hash, content_hash (class names + templates), version, layout, location, split,
  fingerprint
- ``protocol``: name, version, text_source, n_classes, n_templates, text_hash, transform, logit_scale,
  classifier_cache_key
- ``metric`` (primary metric id), ``score`` (primary metric in percent), ``metrics`` {id: fraction in [0, 1]}
- ``n_images`` (scored); ``skipped_images`` {count, ids, reasons} (only with --skip-bad-images); ``files``
  {role: file name}; ``files_sha256`` {role: sha256 of that file's content}
- ``data_source``: where the test images came from — kind (elevater, elevater-rehost, clip-benchmark), repo,
  revision, split, fidelity (same split, same images in another order, different split); see harness.data.sources.
  Optional within schema 2 (results written before it existed read as the toolkit's own data)
- ``provenance``: packages, git, python, platform, device, device_name, precision, numerics, batch_size, workers,
  world_size (torchrun ranks that computed the features; 1 for one process), gathered_by_rank_0, date, seconds,
  images_per_second, classifier_from_cache, image_source

A finished result is reused only when every file it lists is present and, when it records ``files_sha256``, every
file still has that content (each is hashed afresh, never from a memo): a data file modified or damaged since it was
written makes the result unfinished (a warning names the file) and it is recomputed. ``files_sha256`` is optional
within schema 2: results written before it existed (and imported predictions without it) are reused as before, on
their run key and the presence of their files — their numbers were right when written and recomputing every stored
result once would cost more than the check is worth; they gain the hashes when next recomputed.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.cards import DatasetCard
from harness.core import paths
from harness.core.errors import HarnessError
from harness.core.safe_read import load_json
from harness.store.runkey import RunKey

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REQUIRED_KEYS = ("run_key", "model", "dataset", "protocol", "metric", "score", "metrics", "n_images", "files",
                 "provenance")


class ResultFileError(HarnessError):
    """A result file that cannot be used: unreadable, malformed, or of another schema version."""

    def __init__(self, message: str, newer: bool = False):
        super().__init__(message)
        self.newer = newer


def result_folder(results_root: Path, model: str, protocol: str) -> Path:
    return Path(results_root) / model / protocol


def result_json(results_root: Path, model: str, protocol: str, dataset: str) -> Path:
    return result_folder(results_root, model, protocol) / f"{dataset}.json"


def lock_path(results_root: Path, model: str, protocol: str, dataset: str) -> Path:
    return result_folder(results_root, model, protocol) / f"{dataset}.lock"


def data_file_names(dataset: str, run_token: str) -> dict[str, str]:
    return {"probs": f"{dataset}.{run_token}.probs.npy", "predictions": f"{dataset}.{run_token}.predictions.json"}


def read_result(path: Path) -> dict:
    """A result JSON of this schema with every required key; :class:`ResultFileError` says what is wrong."""
    path = Path(path)
    try:
        data = load_json(path, "result")  # bounded (harness.core.safe_read); a refused file is a ValueError
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultFileError(f"{path}: unreadable ({exc}); delete it to recompute.") from exc
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: holds a JSON {type(data).__name__}, not a result object; delete it to "
                              f"recompute.")
    version = data.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ResultFileError(f"{path}: schema_version {version} was written by a newer harness (this one reads "
                              f"{SCHEMA_VERSION}); upgrade the harness to read it. It is never overwritten.",
                              newer=True)
    if version != SCHEMA_VERSION:
        raise ResultFileError(f"{path}: schema_version {version!r} is from an older harness (this one reads "
                              f"{SCHEMA_VERSION}); the next eval of this model and dataset replaces it.")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ResultFileError(f"{path}: malformed result, missing {', '.join(missing)}; delete it to recompute.")
    if not isinstance(data.get("files"), dict):
        raise ResultFileError(f"{path}: malformed result, 'files' is not a mapping; delete it to recompute.")
    hashes = data.get("files_sha256", {})
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise ResultFileError(f"{path}: malformed result, 'files_sha256' is not a mapping of role to sha256; delete "
                              f"it to recompute.")
    return data


def listed_files(path: Path) -> dict | None:
    """The ``files`` a result JSON lists (None when it cannot be read)."""
    try:
        data = load_json(path, "result")
    except (OSError, ValueError):
        return None
    return data.get("files") if isinstance(data, dict) else None


def content_sha256(path: Path) -> str:
    """The sha256 of a file's content, read now (never a remembered hash: this is what checks the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def data_file_hashes(folder: Path, files: dict[str, str]) -> dict[str, str]:
    """``files_sha256`` of a result: {role: sha256} of the data files it lists."""
    return {role: content_sha256(Path(folder) / name) for role, name in files.items() if name}


_REPORTED: set[tuple[str, str, int, int]] = set()  # (result, file, size, mtime): a modified file is warned about once


def _modified_file(path: Path, data: dict) -> str | None:
    """The first data file of a result whose content is not the one recorded in ``files_sha256`` (None: all are)."""
    hashes = data.get("files_sha256") or {}
    for role, name in data["files"].items():
        expected = hashes.get(role)
        if not name or not expected:
            continue
        file = path.parent / name
        try:
            if content_sha256(file) == expected:
                continue
        except OSError:
            pass
        try:
            st = file.stat()
            seen = (str(path), name, st.st_size, st.st_mtime_ns)
        except OSError:
            seen = (str(path), name, -1, -1)
        log = logger.debug if seen in _REPORTED else logger.warning
        _REPORTED.add(seen)
        log("%s: its %s file %s no longer has the content it was written with (sha256 differs: modified or "
            "damaged); recomputing", path, role, name)
        return name
    return None


def stored_schema_version(path: Path) -> int | None:
    """The schema_version a JSON file claims (None when unreadable): used so nothing overwrites a newer result."""
    try:
        data = load_json(path, "result")
        version = data.get("schema_version") if isinstance(data, dict) else None
        return version if isinstance(version, int) else None
    except (OSError, ValueError):
        return None


def finished_result(path: Path, run_key_hash: str | None = None, verify: bool = True) -> dict | None:
    """The stored result when it is complete (readable, every listed file present and, with ``verify``, holding the
    content its ``files_sha256`` records) and, when ``run_key_hash`` is given, made under that run key; else
    None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = read_result(path)
    except ResultFileError as exc:
        logger.warning("%s", exc)
        return None
    for name in data["files"].values():
        if name and not (path.parent / name).is_file():
            logger.info("%s lists %s, which is missing: recomputing", path, name)
            return None
    if run_key_hash is not None and (data.get("run_key") or {}).get("hash") != run_key_hash:
        return None
    if verify and _modified_file(path, data) is not None:
        return None
    return data


@dataclass
class SkippedResult:
    path: str
    reason: str


def scan_results(results_root: Path) -> tuple[list[dict], list[SkippedResult]]:
    """Every usable result under a results folder, and every result file that was not usable with why."""
    good: list[dict] = []
    skipped: list[SkippedResult] = []
    for path in sorted(Path(results_root).glob("*/*/*.json")):
        if path.name.endswith(".predictions.json"):
            continue
        try:
            data = read_result(path)
        except ResultFileError as exc:
            skipped.append(SkippedResult(str(path), str(exc)))
            continue
        absent = [n for n in data["files"].values() if n and not (path.parent / n).is_file()]
        if absent:
            skipped.append(SkippedResult(str(path), f"{path}: lists {', '.join(absent)}, which is missing"))
            continue
        data["_path"] = str(path)
        good.append(data)
    return good, skipped


def iter_results(results_root: Path) -> Iterator[dict]:
    """Every usable result under a results folder (the others are logged; :func:`scan_results` returns them)."""
    good, skipped = scan_results(results_root)
    for s in skipped:
        logger.warning("skipping %s", s.reason)
    yield from good


def elevater_predictions(model_name: str, dataset_name: str, probs, num_params: int | None,
                         num_visual_params: int | None) -> dict[str, Any]:
    """The toolkit's zero-shot submission format (commands/zeroshot.py with --save-predictions True)."""
    import numpy as np

    return {
        "model_name": f"CLIP-{model_name}",
        "dataset_name": dataset_name,
        "num_trainable_params": 0,
        "num_params": num_params,
        "num_visual_params": num_visual_params,
        "num_backbone_params": num_params,
        "n_shot": 0,
        "rnd_seeds": [0],
        "predictions": [np.round(np.asarray(probs, dtype=np.float64), 6).tolist()],
    }


def refuse_newer(path: Path) -> None:
    version = stored_schema_version(path) if path.is_file() else None
    if version is not None and version > SCHEMA_VERSION:
        raise HarnessError(f"{path} was written by a newer harness (schema_version {version}, this one writes "
                           f"{SCHEMA_VERSION}); it is never overwritten, not even with --force. Upgrade the harness, "
                           f"or write to another --results folder.")


def remove_unlisted_data_files(folder: Path, dataset: str, keep: dict[str, str]) -> None:
    """Data files of this dataset that the committed JSON does not list (a previous run's, or a killed run's)."""
    listed = set(keep.values())
    candidates = [*folder.glob(f"{dataset}.*.probs.npy"), *folder.glob(f"{dataset}.*.predictions.json"),
                  folder / f"{dataset}.probs.npy", folder / f"{dataset}.predictions.json"]  # schema-1 names
    for f in candidates:
        if f.is_file() and f.name not in listed:
            try:
                f.unlink()
            except OSError as exc:
                logger.warning("could not remove the old file %s (%s)", f, exc)


# -- what a result records: the schema-2 record and the run's provenance
def _git_hash() -> str | None:
    """The commit of the checkout the harness runs from (None for an installed package)."""
    if paths.SOURCE_ROOT is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(paths.SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(paths.SOURCE_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("torch", "torchvision", "open_clip_torch", "vision-datasets", "vision-evaluation", "numpy",
                "scikit-learn", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def result_record(key: RunKey, model: dict, dcard: DatasetCard, data: Any, protocol: dict, metric: str,
                  metrics: dict[str, float], n_images: int, files: dict[str, str], provenance: dict,
                  folder: Path) -> dict:
    """A schema-2 result: an evaluation's (harness.run.eval_record) or imported predictions'
    (harness.run.predictions_import). ``files`` are already written in ``folder``: their content hashes go in
    ``files_sha256``. ``provenance`` follows the environment (packages, git, python, platform)."""
    return {
        "schema_version": SCHEMA_VERSION, "run_key": key.to_json(), "model": model,
        "dataset": {
            "card": dcard.name, "card_hash": dcard.card_hash, "content_hash": dcard.text_hash,
            "version": dcard.version, "layout": data.layout, "location": data.location, "split": dcard.eval_split,
            "fingerprint": key.parts["data"],
        },
        "data_source": getattr(data, "source", None) or None,
        "protocol": protocol, "metric": metric, "score": round(100.0 * metrics[metric], 4), "metrics": metrics,
        "n_images": n_images, "files": files, "files_sha256": data_file_hashes(folder, files),
        "provenance": {"packages": _package_versions(), "git": _git_hash(), "python": sys.version.split()[0],
                       "platform": platform.platform(), **provenance},
    }


