"""What a result file records: the schema-2 record of an evaluation (or of imported predictions, harness.imports),
with the provenance of the run (packages, git commit, python, platform, device, timing)."""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from typing import Any

from harness import paths
from harness.cards import DatasetCard, content_hash
from harness.results import SCHEMA_VERSION
from harness.runkey import RunKey


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


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def result_record(key: RunKey, model: dict, dcard: DatasetCard, data: Any, protocol: dict, metric: str,
                  metrics: dict[str, float], n_images: int, files: dict[str, str], provenance: dict) -> dict:
    """A schema-2 result (harness.results): an eval's, or imported predictions' (harness.imports). ``provenance``
    follows the environment (packages, git, python, platform)."""
    return {
        "schema_version": SCHEMA_VERSION, "run_key": key.to_json(), "model": model,
        "dataset": {
            "card": dcard.name, "card_hash": dcard.card_hash, "content_hash": dcard.content_hash,
            "version": dcard.version, "layout": data.layout, "location": data.location, "split": dcard.eval_split,
            "fingerprint": key.parts["data"],
        },
        "protocol": protocol, "metric": metric, "score": round(100.0 * metrics[metric], 4), "metrics": metrics,
        "n_images": n_images, "files": files,
        "provenance": {"packages": _package_versions(), "git": _git_hash(), "python": sys.version.split()[0],
                       "platform": platform.platform(), **provenance},
    }


def eval_record(loaded: Any, dcard: DatasetCard, data: Any, key: RunKey, options: Any, outcome: Any,
                   files: dict[str, str], workers: int) -> dict:
    from harness.runkey import PROTOCOL_VERSIONS

    card = loaded.card
    spec, preds, values = outcome.spec, outcome.predictions, outcome.metrics
    model = {"card": card.name, "card_hash": card.card_hash, "architecture": card.architecture, "method": card.method,
             "base_model": card.base_model, "retrieval_set": card.retrieval_set, "weights": loaded.weights_identity}
    protocol = {
        "name": spec.name, "version": PROTOCOL_VERSIONS[spec.name], "text_source": spec.text_source,
        "n_classes": len(spec.classnames), "n_templates": len(spec.templates),
        "text_hash": content_hash([spec.classnames, spec.templates]), "transform": spec.transform_desc,
        "logit_scale": 100.0, "classifier_cache_key": outcome.classifier_key,
    }
    result = result_record(key, model, dcard, data, protocol, spec.primary_metric, values, preds.n_images, files, {
        "device": loaded.device,
        "device_name": _device_name(loaded.device),
        "precision": loaded.precision,
        "numerics": outcome.numerics.description,
        "batch_size": options.batch_size,
        "workers": workers,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(preds.seconds, 3),
        "images_per_second": round(preds.images_per_second, 2),
        "classifier_from_cache": outcome.classifier_from_cache,
        "image_source": preds.source,  # feature cache, pixel cache, decoded (pixel cache written), decoded
    })
    if preds.skipped:
        result["skipped_images"] = {"count": len(preds.skipped),
                                    "ids": [data.image_ids[i] for i in preds.skipped],
                                    "reasons": preds.skip_reasons}
    return result
