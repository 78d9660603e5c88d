"""Strict parsing of card YAML: typed fields, choices, unknown-key errors with the closest valid key, ``include:``
chains, and the canonical content hash. No torch, no card classes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from harness.core.errors import HarnessError, did_you_mean
from harness.core.safe_read import load_yaml

DATASET_TYPES = ("multiclass", "multilabel")
DATA_FORMATS = ("iris", "coco", "imagefolder")  # imagefolder: a user's own class folders at root_folder
# ELEVATER's TEST.METRIC values (vision_benchmark/evaluation/metric.py get_metric).
ELEVATER_METRICS = ("accuracy", "mean-per-class", "11point_mAP", "roc_auc")
METHODS = ("baseline", "locked-text", "gated-image", "fine-tuned")
WEIGHT_SOURCES = ("openclip", "hf-hub", "local", "random")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "longest", "squash")
# The dataset card of REACT's headline number, of training's --imagenet-val and of the report's comparison table.
IMAGENET = "imagenet-1k"


def _check_keys(data: Mapping[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise HarnessError(f"{where}: expected a mapping of keys, found {type(data).__name__} ({data!r}).")
    for key in data:
        if key not in allowed:
            raise HarnessError(
                f"{where}: unknown key '{key}'.{did_you_mean(str(key), allowed)} "
                f"Valid keys: {', '.join(sorted(allowed))}."
            )
    missing = sorted(required - set(data))
    if missing:
        raise HarnessError(f"{where}: missing required key(s) {', '.join(missing)}.")


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        raise HarnessError(f"{where}: '{value}' is not one of {', '.join(choices)}.{hint}")
    return value


def _typed(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise HarnessError(f"{where}: expected {types}, found a boolean ({value!r}).")
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise HarnessError(f"{where}: expected {names}, found {type(value).__name__} ({value!r}).")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    _typed(value, list, where)
    for i, item in enumerate(value):
        _typed(item, str, f"{where}[{i}]")
    return tuple(value)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_with_includes(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a card file, resolving ``include:`` chains (relative paths, cycles are errors)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise HarnessError(f"{path}: include cycle through {' -> '.join(str(p) for p in _seen)}.")
    if not path.exists():
        raise HarnessError(f"Card file {path} does not exist.")
    try:  # bounded: a regular file of at most KINDS["card"] bytes, nesting at most MAX_DEPTH levels
        data = load_yaml(path, "card")
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML ({exc}).") from exc
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not UTF-8 text ({exc}); a card is a UTF-8 YAML file.") from exc
    except OSError as exc:
        raise HarnessError(f"Card file {path} cannot be read ({exc.strerror or exc}).") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a YAML mapping at top level, found {type(data).__name__}.")
    include = data.pop("include", None)
    if include is None:
        return data
    includes = [include] if isinstance(include, str) else include
    merged: dict = {}
    for inc in _str_list(includes, f"{path}: include"):
        merged = _deep_merge(merged, load_yaml_with_includes(path.parent / inc, _seen + (path.resolve(),)))
    return _deep_merge(merged, data)


def content_hash(payload: Any) -> str:
    """sha256 (first 16 hex digits) of a canonical JSON rendering."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]



# Field metadata for an optional card field added after cards were in use: left out of card_to_dict (and so of the
# card hash) while it holds its default, so existing cards keep their hashes.
OMIT_DEFAULT = {"omit_default": True}


def card_to_dict(card: Any) -> dict:
    """A card as plain data (what its hash covers); the file path it was read from is not part of it, nor an
    :data:`OMIT_DEFAULT` field at its default."""
    def convert(obj: Any, top: bool = False) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                    if not (top and f.name == "path")
                    and not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)}
        if isinstance(obj, Mapping):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        return obj
    return convert(card, top=True)
