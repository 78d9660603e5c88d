"""The run key: exactly what changes a result's numbers, and nothing cosmetic.

A stored result counts as finished only when its run key equals the key of the run being asked for. The key's parts:

- ``weights``: the sha256 of the weights' content (however they were given: card, ``--weights``, env variables,
  ``HARNESS_WEIGHTS_DIR``), or of the state dict for seeded random weights;
- ``architecture`` and ``preprocess`` (the card's preprocessing contract: size, mean/std, interpolation, resize mode,
  quick_gelu);
- ``numerics`` (whose model code computes the forward: the ELEVATER toolkit's or OpenCLIP's), ``precision``, ``device_type`` (cpu and
  cuda kernels differ in the last bits);
- ``protocol`` and ``protocol_version`` (:data:`PROTOCOL_VERSIONS`, bumped when a protocol's code changes numbers);
- ``dataset``: the card's scoring content (class names, synonyms, templates, metric, type, center crop, OpenCLIP's
  text choice) — not its description, version or sources;
- ``data``: the fingerprint of the data actually read (:meth:`harness.data.testsets.EvalData.fingerprint`: image count and
  content hashes of the files read);
- ``skip_bad_images``: whether unreadable images were left out.

Not in it: model card description, published numbers and sources, the card's file path or name of the weights
file, batch size, workers, progress settings. Every result stores its parts (``run_key.parts``) so ``-v`` can say
which part made a stored result stale.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from harness.cards import DatasetCard, ModelCard, content_hash

# Bump a protocol's number when its code changes the numbers it produces (templates handling, transform, metric).
PROTOCOL_VERSIONS = {"elevater": 1, "openclip": 1}


@dataclass(frozen=True)
class RunKey:
    parts: dict[str, Any]

    @property
    def hash(self) -> str:
        return content_hash(self.parts)

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "parts": self.parts}


def dataset_scoring_content(card: DatasetCard) -> dict[str, Any]:
    """What of a dataset card can change a score (its text, metric and preprocessing choice)."""
    return {
        "classnames": list(card.classnames),
        "class_synonyms": [list(s) for s in card.class_synonyms] if card.class_synonyms else None,
        "templates": list(card.templates),
        "metric": card.metric,
        "type": card.type,
        "center_crop": card.elevater.CENTER_CROP,
        "openclip_text": card.openclip_text,
    }


def device_type(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def make_run_key(model_card: ModelCard, weights_sha256: str, dataset_card: DatasetCard, data_fingerprint: dict,
                 protocol: str, precision: str, device: str, numerics: str = "openclip",
                 skip_bad_images: bool = False, architecture_config: str | None = None) -> RunKey:
    """``architecture_config``: the content hash of a user's architecture file (HARNESS_MODEL_CONFIGS or a card's
    ``architecture_config``), so editing it recomputes; built-in architectures are named by ``architecture``
    alone (their configs change only with the package, and such a change bumps a protocol version)."""
    extra = {"architecture_config": architecture_config} if architecture_config else {}
    return RunKey({
        "weights": weights_sha256,
        "architecture": model_card.architecture,
        "preprocess": asdict(model_card.preprocess),
        "numerics": numerics,
        "precision": precision,
        "device_type": device_type(device),
        "protocol": protocol,
        "protocol_version": PROTOCOL_VERSIONS[protocol],
        "dataset": content_hash(dataset_scoring_content(dataset_card)),
        "data": data_fingerprint,
        "skip_bad_images": bool(skip_bad_images),
        **extra,
    })


def changed_parts(stored: dict[str, Any] | None, wanted: RunKey) -> list[str]:
    """Names of the key parts that differ (for the log line saying why a result is recomputed)."""
    if not isinstance(stored, dict):
        return ["(no run key: written by an older harness)"]
    old = stored.get("parts") if isinstance(stored.get("parts"), dict) else {}
    new = json.loads(json.dumps(wanted.parts))  # as stored: tuples read back as lists, so compare like with like
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
