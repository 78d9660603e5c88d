"""Model cards: architecture, weights source, preprocessing contract, method and published numbers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.cards.schema import (INTERPOLATIONS, METHODS, RESIZE_MODES, WEIGHT_SOURCES, _check_keys, _choice,
                                  _typed, card_to_dict, content_hash)
from harness.errors import HarnessError


@dataclass(frozen=True)
class WeightsSpec:
    """Where a card's weights come from.

    source: ``openclip`` (an open_clip pretrained tag), ``hf-hub`` (a file in a Hugging Face repo), ``local`` (a path;
    relative paths are relative to the repository root) or ``random`` (no weights: tiny test/demo models).
    """
    source: str
    tag: str | None = None
    repo: str | None = None
    file: str | None = None
    path: str | None = None
    seed: int | None = None

    @property
    def identity(self) -> str:
        if self.source == "openclip":
            return f"openclip:{self.tag}"
        if self.source == "hf-hub":
            return f"hf-hub:{self.repo}/{self.file}"
        if self.source == "local":
            return f"local:{self.path}"
        return f"random:seed={self.seed}"


@dataclass(frozen=True)
class PreprocessSpec:
    """The preprocessing contract of a checkpoint (what it was trained with)."""
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    quick_gelu: bool


@dataclass(frozen=True)
class ElevaterModelFields:
    """Fields of the ELEVATER toolkit's model YAML (resources/model/<yaml>), so the card can drive the toolkit."""
    yaml: str | None
    MODEL_NAME: str
    MODEL_SPEC: Mapping[str, Any]
    TEST_MODEL_FILE: str


@dataclass(frozen=True)
class PretrainedTag:
    """A (--model, --pretrained) pair of REACT's customization README that names this card's checkpoint."""
    model: str
    tag: str


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str
    architecture: str
    weights: WeightsSpec
    preprocess: PreprocessSpec
    method: str
    base_model: str | None
    retrieval_set: str | None
    published: Mapping[str, float]
    published_source: str | None
    elevater: ElevaterModelFields | None
    pretrained_tags: tuple[PretrainedTag, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def card_hash(self) -> str:
        return content_hash(card_to_dict(self))

    @property
    def is_react_arch(self) -> bool:
        return self.architecture.startswith("react_")


_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelCard)} - {"path"}
_MODEL_REQUIRED = {"name", "architecture", "weights", "preprocess", "method"}


def _float_triple(value: Any, where: str) -> tuple[float, float, float]:
    _typed(value, list, where)
    if len(value) != 3:
        raise HarnessError(f"{where}: expected 3 numbers (R, G, B), found {len(value)}.")
    return tuple(float(_typed(v, (int, float), f"{where}[{i}]")) for i, v in enumerate(value))  # type: ignore


def parse_model_card(data: Mapping[str, Any], where: str, path: Path | None = None) -> ModelCard:
    _check_keys(data, _MODEL_KEYS, _MODEL_REQUIRED, where)
    w = data["weights"]
    w_keys = {f.name for f in dataclasses.fields(WeightsSpec)}
    _check_keys(w, w_keys, {"source"}, f"{where}: weights")
    source = _choice(w["source"], WEIGHT_SOURCES, f"{where}: weights.source")
    needed = {"openclip": ("tag",), "hf-hub": ("repo", "file"), "local": ("path",), "random": ()}[source]
    for key in needed:
        if not w.get(key):
            raise HarnessError(f"{where}: weights.source '{source}' needs weights.{key}.")
    if w.get("seed") is not None:
        _typed(w["seed"], int, f"{where}: weights.seed")
    weights = WeightsSpec(**{k: (str(v) if k != "seed" and v is not None else v) for k, v in w.items()})
    p = data["preprocess"]
    p_keys = {f.name for f in dataclasses.fields(PreprocessSpec)}
    _check_keys(p, p_keys, p_keys, f"{where}: preprocess")
    preprocess = PreprocessSpec(
        image_size=_typed(p["image_size"], int, f"{where}: preprocess.image_size"),
        mean=_float_triple(p["mean"], f"{where}: preprocess.mean"),
        std=_float_triple(p["std"], f"{where}: preprocess.std"),
        interpolation=_choice(p["interpolation"], INTERPOLATIONS, f"{where}: preprocess.interpolation"),
        resize_mode=_choice(p["resize_mode"], RESIZE_MODES, f"{where}: preprocess.resize_mode"),
        quick_gelu=_typed(p["quick_gelu"], bool, f"{where}: preprocess.quick_gelu"),
    )
    published_raw = data.get("published") or {}
    _typed(published_raw, dict, f"{where}: published")
    published = {str(k): float(_typed(v, (int, float), f"{where}: published.{k}")) for k, v in published_raw.items()}
    elevater = None
    if data.get("elevater") is not None:
        e = data["elevater"]
        e_keys = {f.name for f in dataclasses.fields(ElevaterModelFields)}
        _check_keys(e, e_keys, {"MODEL_NAME", "MODEL_SPEC", "TEST_MODEL_FILE"}, f"{where}: elevater")
        elevater = ElevaterModelFields(
            yaml=e.get("yaml"),
            MODEL_NAME=_typed(e["MODEL_NAME"], str, f"{where}: elevater.MODEL_NAME"),
            MODEL_SPEC=dict(_typed(e["MODEL_SPEC"], dict, f"{where}: elevater.MODEL_SPEC")),
            TEST_MODEL_FILE=_typed(e["TEST_MODEL_FILE"], str, f"{where}: elevater.TEST_MODEL_FILE"),
        )
    method = _choice(data["method"], METHODS, f"{where}: method")
    tags = []
    for i, entry in enumerate(_typed(data.get("pretrained_tags") or [], list, f"{where}: pretrained_tags")):
        _check_keys(entry, {"model", "tag"}, {"model", "tag"}, f"{where}: pretrained_tags[{i}]")
        tags.append(PretrainedTag(model=_typed(entry["model"], str, f"{where}: pretrained_tags[{i}].model"),
                                  tag=_typed(entry["tag"], str, f"{where}: pretrained_tags[{i}].tag")))
    return ModelCard(
        name=_typed(data["name"], str, f"{where}: name"),
        description=_typed(data.get("description", ""), str, f"{where}: description"),
        architecture=_typed(data["architecture"], str, f"{where}: architecture"),
        weights=weights,
        preprocess=preprocess,
        method=method,
        base_model=data.get("base_model"),
        retrieval_set=data.get("retrieval_set"),
        published=published,
        published_source=data.get("published_source"),
        elevater=elevater,
        pretrained_tags=tuple(tags),
        path=path,
    )

