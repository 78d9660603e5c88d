"""Dataset cards: ELEVATER's dataset definition (names, templates, metric, layout) as a frozen dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.cards.schema import (DATA_FORMATS, DATASET_TYPES, ELEVATER_METRICS, _check_keys, _choice, _str_list,
                                  _typed, card_to_dict, content_hash)
from harness.core.errors import HarnessError


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
    short_name: str = ""  # display name in tables and plots (defaults to the card name)
    openclip_text: str | None = None  # "imagenet": OpenCLIP ships its own class names and templates for this task
    path: Path | None = field(default=None, compare=False)

    @property
    def display_name(self) -> str:
        return self.short_name or self.name

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
    def text_hash(self) -> str:
        """Hash of the zero-shot task's text side: class names, synonyms and templates (results store it as
        ``dataset.content_hash``)."""
        return content_hash({"classnames": self.classnames, "templates": self.templates,
                             "class_synonyms": self.class_synonyms})

    @property
    def card_hash(self) -> str:
        return content_hash(card_to_dict(self))

    @property
    def eval_spec(self) -> SplitSpec:
        return self.splits[self.eval_split]


_DATASET_KEYS = {f.name for f in dataclasses.fields(DatasetCard)} - {"path"}
_DATASET_REQUIRED = _DATASET_KEYS - {"description", "class_synonyms", "imagefolder_dirs", "labelmap", "short_name",
                                     "openclip_text"}
OPENCLIP_TEXTS = ("imagenet",)  # the task texts open_clip ships (IMAGENET_CLASSNAMES + OPENAI_IMAGENET_TEMPLATES)


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
    openclip_text = data.get("openclip_text")
    if openclip_text is not None:
        _choice(openclip_text, OPENCLIP_TEXTS, f"{where}: openclip_text")
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
        short_name=_typed(data.get("short_name", ""), str, f"{where}: short_name"),
        openclip_text=openclip_text,
        path=path,
    )

