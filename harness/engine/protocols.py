"""The two zero-shot protocols: what text, what preprocessing, which metrics.

``elevater`` — the ELEVATER toolkit's zero-shot protocol (vision_benchmark/evaluation/feature.py and
clip_zeroshot_evaluator.py): resize the shorter side to the model's image size with bicubic interpolation and
center-crop (a plain, aspect-changing resize to size x size when the dataset's CENTER_CROP is false), ToTensor,
normalise with the model card's mean/std; the dataset card's class names (first synonym) and templates; the card's
metric. The toolkit always uses bicubic, whatever the checkpoint was trained with.

``openclip`` — what open_clip_train's zero-shot ImageNet eval does: the model's own ``preprocess_val`` (built by
OpenCLIP from the card's preprocessing contract), ``IMAGENET_CLASSNAMES`` + ``OPENAI_IMAGENET_TEMPLATES`` for
ImageNet-1K (the dataset card's names and templates elsewhere, since OpenCLIP ships text only for ImageNet),
top-1/top-5 accuracy. Which dataset card OpenCLIP's ImageNet text belongs to is the card's ``openclip_text`` field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from harness.cards import DatasetCard, ModelCard
from harness.core.errors import HarnessError

PROTOCOLS = ("elevater", "openclip")


@dataclass
class ProtocolSpec:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    text_source: str
    transform: Callable
    transform_desc: dict[str, Any]
    metrics: list[str]
    primary_metric: str
    extra: dict[str, Any] = field(default_factory=dict)


def elevater_transform(model_card: ModelCard, center_crop: bool):
    """The toolkit's test transform for this model card and dataset."""
    from torchvision import transforms as T

    size = model_card.preprocess.image_size
    bicubic = T.InterpolationMode.BICUBIC
    steps: list[Any] = []
    if center_crop:
        steps += [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
    else:
        steps += [T.Resize((size, size), interpolation=bicubic)]
    steps += [T.ToTensor(), T.Normalize(model_card.preprocess.mean, model_card.preprocess.std)]
    desc = {
        "resize": f"shorter side -> {size}, bicubic" if center_crop else f"{size}x{size} (aspect not kept), bicubic",
        "center_crop": size if center_crop else None,
        "mean": list(model_card.preprocess.mean),
        "std": list(model_card.preprocess.std),
    }
    return T.Compose(steps), desc


def _describe_openclip_transform(transform: Any) -> dict[str, Any]:
    return {"pipeline": [repr(t).replace("\n", " ") for t in getattr(transform, "transforms", [transform])]}


def elevater_metrics(card: DatasetCard) -> list[str]:
    """The card's own metric first, then the extras we record alongside it."""
    if card.multilabel:
        return [card.metric]
    extra = ["accuracy", "accuracy_top5"] if card.num_classes > 5 else ["accuracy"]  # top-5 of <= 5 is always 1
    return [card.metric] + [m for m in extra if m != card.metric]


def make_protocol(name: str, model_card: ModelCard, dataset_card: DatasetCard, preprocess_val: Callable | None = None
                  ) -> ProtocolSpec:
    if name == "elevater":
        transform, desc = elevater_transform(model_card, dataset_card.elevater.CENTER_CROP)
        return ProtocolSpec(
            name=name, classnames=dataset_card.classnames, templates=dataset_card.templates,
            text_source=f"dataset card {dataset_card.name} (ELEVATER prompts.py class_map/template_map)",
            transform=transform, transform_desc=desc, metrics=elevater_metrics(dataset_card),
            primary_metric=dataset_card.metric)
    if name == "openclip":
        if preprocess_val is None:
            raise ValueError("the openclip protocol needs the model's preprocess_val")
        if dataset_card.multilabel:
            raise HarnessError(f"The openclip protocol measures top-1/top-5 accuracy and cannot score the "
                               f"multilabel dataset '{dataset_card.name}'; use --protocol elevater.")
        if dataset_card.openclip_text == "imagenet":
            from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

            classnames = tuple(IMAGENET_CLASSNAMES)
            # open_clip's templates are callables; render them as format strings so they hash and print.
            templates = tuple(t("{}") if callable(t) else t for t in OPENAI_IMAGENET_TEMPLATES)
            source = "open_clip IMAGENET_CLASSNAMES + OPENAI_IMAGENET_TEMPLATES"
        else:
            classnames, templates = dataset_card.classnames, dataset_card.templates
            source = f"dataset card {dataset_card.name} (OpenCLIP ships text for ImageNet only)"
        metrics = ["accuracy", "accuracy_top5"] if dataset_card.num_classes > 5 else ["accuracy"]
        return ProtocolSpec(
            name=name, classnames=classnames, templates=templates, text_source=source,
            transform=preprocess_val, transform_desc=_describe_openclip_transform(preprocess_val),
            metrics=metrics, primary_metric="accuracy")
    raise HarnessError(f"Unknown protocol '{name}'; choose one of {', '.join(PROTOCOLS)}.")
