"""Model cards and dataset cards: YAML files parsed into frozen, strictly validated dataclasses.

Unknown keys are errors that name the key and the closest valid one. A card may start with ``include: other.yaml``
(a path relative to the card's folder): the included file is deep-merged under the card, so variants only state
what differs. Cards are data; this module never imports torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from harness import paths
from harness.errors import HarnessError, did_you_mean

logger = logging.getLogger(__name__)

DATASET_TYPES = ("multiclass", "multilabel")
DATA_FORMATS = ("iris", "coco")
# ELEVATER's TEST.METRIC values (vision_benchmark/evaluation/metric.py get_metric).
ELEVATER_METRICS = ("accuracy", "mean-per-class", "11point_mAP", "roc_auc")
METHODS = ("baseline", "locked-text", "gated-image", "fine-tuned")
WEIGHT_SOURCES = ("openclip", "hf-hub", "local", "random")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "longest", "squash")


# ----------------------------------------------------------------------------------------------------------------------
# strict parsing helpers

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
    if not path.is_file():
        raise HarnessError(f"Card file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML ({exc}).") from exc
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


# ----------------------------------------------------------------------------------------------------------------------
# dataset cards

@dataclass(frozen=True)
class SplitSpec:
    index: str
    files: tuple[str, ...]
    num_images: int


@dataclass(frozen=True)
class ElevaterDatasetFields:
    """The fields of the ELEVATER toolkit's dataset YAML (resources/datasets/<yaml>)."""
    yaml: str
    DATASET: str
    NUM_CLASSES: int | None
    METRIC: str
    CENTER_CROP: bool


@dataclass(frozen=True)
class DatasetCard:
    name: str
    version: int
    description: str
    elevater: ElevaterDatasetFields
    type: str
    format: str
    root_folder: str
    labelmap: str | None
    splits: Mapping[str, SplitSpec]
    eval_split: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    class_synonyms: tuple[tuple[str, ...], ...] | None = None
    imagefolder_dirs: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def metric(self) -> str:
        return self.elevater.METRIC

    @property
    def multilabel(self) -> bool:
        return self.type == "multilabel"

    @property
    def content_hash(self) -> str:
        """Hash of what defines the zero-shot task text side: class names, synonyms and templates."""
        return content_hash({"classnames": self.classnames, "templates": self.templates,
                             "class_synonyms": self.class_synonyms})

    @property
    def card_hash(self) -> str:
        return content_hash(card_to_dict(self))

    @property
    def eval_spec(self) -> SplitSpec:
        return self.splits[self.eval_split]


_DATASET_KEYS = {f.name for f in dataclasses.fields(DatasetCard)} - {"path"}
_DATASET_REQUIRED = _DATASET_KEYS - {"description", "class_synonyms", "imagefolder_dirs", "labelmap"}


def parse_dataset_card(data: Mapping[str, Any], where: str, path: Path | None = None) -> DatasetCard:
    _check_keys(data, _DATASET_KEYS, _DATASET_REQUIRED, where)
    ev = data["elevater"]
    ev_keys = {f.name for f in dataclasses.fields(ElevaterDatasetFields)}
    _check_keys(ev, ev_keys, ev_keys, f"{where}: elevater")
    metric = _choice(ev["METRIC"], ELEVATER_METRICS, f"{where}: elevater.METRIC")
    num_classes_yaml = ev["NUM_CLASSES"]
    if num_classes_yaml is not None:
        _typed(num_classes_yaml, int, f"{where}: elevater.NUM_CLASSES")
    elevater = ElevaterDatasetFields(
        yaml=_typed(ev["yaml"], str, f"{where}: elevater.yaml"),
        DATASET=_typed(ev["DATASET"], str, f"{where}: elevater.DATASET"),
        NUM_CLASSES=num_classes_yaml,
        METRIC=metric,
        CENTER_CROP=_typed(ev["CENTER_CROP"], bool, f"{where}: elevater.CENTER_CROP"),
    )
    splits_raw = _typed(data["splits"], dict, f"{where}: splits")
    splits: dict[str, SplitSpec] = {}
    for split_name, spec in splits_raw.items():
        _choice(split_name, ("train", "val", "test"), f"{where}: splits")
        _check_keys(spec, {"index", "files", "num_images"}, {"index", "files", "num_images"},
                    f"{where}: splits.{split_name}")
        splits[split_name] = SplitSpec(
            index=_typed(spec["index"], str, f"{where}: splits.{split_name}.index"),
            files=_str_list(spec["files"], f"{where}: splits.{split_name}.files"),
            num_images=_typed(spec["num_images"], int, f"{where}: splits.{split_name}.num_images"),
        )
    eval_split = _typed(data["eval_split"], str, f"{where}: eval_split")
    if eval_split not in splits:
        raise HarnessError(f"{where}: eval_split '{eval_split}' is not among the splits {sorted(splits)}.")
    classnames = _str_list(data["classnames"], f"{where}: classnames")
    templates = _str_list(data["templates"], f"{where}: templates")
    if not classnames:
        raise HarnessError(f"{where}: classnames is empty.")
    if not templates:
        raise HarnessError(f"{where}: templates is empty.")
    for i, template in enumerate(templates):
        if template.count("{}") != 1:
            raise HarnessError(f"{where}: templates[{i}] {template!r} must contain exactly one '{{}}' placeholder.")
    if num_classes_yaml is not None and num_classes_yaml != len(classnames):
        raise HarnessError(f"{where}: elevater.NUM_CLASSES is {num_classes_yaml} but there are "
                           f"{len(classnames)} classnames.")
    synonyms = data.get("class_synonyms")
    if synonyms is not None:
        synonyms = tuple(_str_list(s, f"{where}: class_synonyms[{i}]") for i, s in enumerate(
            _typed(synonyms, list, f"{where}: class_synonyms")))
        if len(synonyms) != len(classnames) or any(not s or s[0] != c for s, c in zip(synonyms, classnames)):
            raise HarnessError(f"{where}: class_synonyms must have one non-empty list per class whose first entry "
                               f"is that class's name (the toolkit uses the first entry).")
    dtype = _choice(data["type"], DATASET_TYPES, f"{where}: type")
    if metric == "11point_mAP" and dtype != "multilabel":
        raise HarnessError(f"{where}: metric 11point_mAP needs type multilabel, found {dtype}.")
    if metric == "roc_auc" and len(classnames) != 2:
        raise HarnessError(f"{where}: metric roc_auc is only defined here for 2 classes, found {len(classnames)}.")
    labelmap = data.get("labelmap")
    if labelmap is not None:
        _typed(labelmap, str, f"{where}: labelmap")
    version = _typed(data["version"], int, f"{where}: version")
    return DatasetCard(
        name=_typed(data["name"], str, f"{where}: name"),
        version=version,
        description=_typed(data.get("description", ""), str, f"{where}: description"),
        elevater=elevater,
        type=dtype,
        format=_choice(data["format"], DATA_FORMATS, f"{where}: format"),
        root_folder=_typed(data["root_folder"], str, f"{where}: root_folder"),
        labelmap=labelmap,
        splits=splits,
        eval_split=eval_split,
        classnames=classnames,
        templates=templates,
        class_synonyms=synonyms,
        imagefolder_dirs=_str_list(data.get("imagefolder_dirs", []), f"{where}: imagefolder_dirs"),
        path=path,
    )


# ----------------------------------------------------------------------------------------------------------------------
# model cards

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
        path=path,
    )


def card_to_dict(card: DatasetCard | ModelCard) -> dict:
    """The card as plain data (what its hash covers); the file path is not part of it."""
    def convert(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            top = isinstance(obj, (DatasetCard, ModelCard))  # their `path` is where the file was read from
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                    if not (top and f.name == "path")}
        if isinstance(obj, Mapping):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        return obj
    return convert(card)


# ----------------------------------------------------------------------------------------------------------------------
# registry

def _card_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise HarnessError(f"Card folder {folder} does not exist. Set HARNESS_MODEL_CARDS / HARNESS_DATASET_CARDS "
                           f"or run from a checkout of the project.")
    # Files in sub-folders (e.g. model_cards/_base/) are include targets, not cards.
    return sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def _load_card(path: Path | str, parse):
    path = Path(path)
    card = parse(load_yaml_with_includes(path), str(path), path)
    if card.name != path.stem:
        raise HarnessError(f"{path}: card name '{card.name}' must equal the file name '{path.stem}'.")
    return card


def load_dataset_card(path: Path | str) -> DatasetCard:
    return _load_card(path, parse_dataset_card)


def load_model_card(path: Path | str) -> ModelCard:
    return _load_card(path, parse_model_card)


def dataset_card_names(folder: Path | None = None) -> list[str]:
    return [p.stem for p in _card_files(folder or paths.dataset_cards_dir())]


def model_card_names(folder: Path | None = None) -> list[str]:
    return [p.stem for p in _card_files(folder or paths.model_cards_dir())]


def _resolve(name_or_path: str, folder: Path, kind: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = folder / f"{name_or_path}.yaml"
    if path.is_file():
        return path
    names = [p.stem for p in _card_files(folder)]
    raise HarnessError(f"No {kind} card named '{name_or_path}' in {folder}.{did_you_mean(name_or_path, names)} "
                       f"`python -m harness ls` lists them.")


def get_dataset_card(name_or_path: str, folder: Path | None = None) -> DatasetCard:
    return load_dataset_card(_resolve(name_or_path, folder or paths.dataset_cards_dir(), "dataset"))


def get_model_card(name_or_path: str, folder: Path | None = None) -> ModelCard:
    return load_model_card(_resolve(name_or_path, folder or paths.model_cards_dir(), "model"))


def all_dataset_cards(folder: Path | None = None) -> list[DatasetCard]:
    return [load_dataset_card(p) for p in _card_files(folder or paths.dataset_cards_dir())]


def all_model_cards(folder: Path | None = None) -> list[ModelCard]:
    return [load_model_card(p) for p in _card_files(folder or paths.model_cards_dir())]


def validate_all(model_folder: Path | None = None, dataset_folder: Path | None = None) -> tuple[list[str], list[str]]:
    """Load every card; return (ok lines, error lines). Also checks cross-card references."""
    ok: list[str] = []
    errors: list[str] = []
    datasets: dict[str, DatasetCard] = {}
    for p in _card_files(dataset_folder or paths.dataset_cards_dir()):
        try:
            card = load_dataset_card(p)
            datasets[card.name] = card
            ok.append(f"dataset {card.name}: {card.num_classes} classes, {len(card.templates)} templates, "
                      f"metric {card.metric}, hash {card.content_hash}")
        except HarnessError as exc:
            errors.append(str(exc))
    models: dict[str, ModelCard] = {}
    for p in _card_files(model_folder or paths.model_cards_dir()):
        try:
            card = load_model_card(p)
            models[card.name] = card
        except HarnessError as exc:
            errors.append(str(exc))
    for card in models.values():
        problems = []
        if card.base_model and card.base_model not in models:
            problems.append(f"base_model '{card.base_model}' is not a model card."
                            f"{did_you_mean(card.base_model, models)}")
        for ds in card.published:
            if ds not in datasets:
                problems.append(f"published number for unknown dataset '{ds}'.{did_you_mean(ds, datasets)}")
        if problems:
            errors.extend(f"{card.path}: {msg}" for msg in problems)
        else:
            ok.append(f"model {card.name}: {card.architecture} ({card.method}), weights {card.weights.identity}")
    return ok, errors
