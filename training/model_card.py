"""The model card of a training run: in memory for the periodic zero-shot eval, on disk after the last epoch.

The card written after training points at the last saved checkpoint (``weights.source: local``), records the
preprocessing the model was built with and the method (gated-image / locked-text / fine-tuned), so
``python -m harness eval-all --model <card>`` evaluates the trained checkpoint. It goes to ``--model-card-dir``,
by default :func:`harness.core.paths.user_model_cards_dir` (never the package's built-in cards).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger("training")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
EMPTY_OPTIONAL_KEYS = ("published", "published_source", "elevater", "retrieval_set", "base_model", "pretrained_tags")


def card_name(args) -> str:
    return args.model_card_name or re.sub(r"[^0-9A-Za-z_.-]+", "_", args.name)


def training_method(args) -> str:
    if args.lock_image_unlock_gated:
        return "gated-image"
    if args.lock_text:
        return "locked-text"
    return "fine-tuned"


def run_model_card(args, model, checkpoint: Path | None) -> Any:
    """The model card describing this run's model (``checkpoint`` None: weights in memory, described as random)."""
    from harness.cards import ModelCard, PreprocessSpec, WeightsSpec

    pc = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pc.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess = PreprocessSpec(
        image_size=int(size), mean=tuple(float(x) for x in pc.get("mean", OPENAI_MEAN)),
        std=tuple(float(x) for x in pc.get("std", OPENAI_STD)),
        interpolation=pc.get("interpolation", "bicubic"), resize_mode=pc.get("resize_mode", "shortest"),
        quick_gelu=bool(args.resolved_quick_gelu))
    weights = WeightsSpec(source="local", path=str(checkpoint.resolve())) if checkpoint else \
        WeightsSpec(source="random", seed=args.seed)
    method = training_method(args)
    return ModelCard(
        name=card_name(args),
        description=f"Trained by training.main, run '{args.name}' ({method}; "
                    f"train data {args.train_data}, {args.epochs} epochs, lr {args.lr}, batch {args.batch_size} x "
                    f"{args.world_size}).",
        architecture=args.model, weights=weights, preprocess=preprocess, method=method,
        base_model=args.base_model_card, retrieval_set=retrieval_set_label(args.train_data), published={},
        published_source=None, elevater=None)


def retrieval_set_label(pattern: str | None) -> str | None:
    """The card's ``retrieval_set``: the pairs set the shards came from (their availability.json), if known."""
    from harness.core.pairs_availability import label
    from training.data import train_data_set

    summary = train_data_set(pattern) if pattern else None
    return label(summary) if summary else None


def write_model_card(card, folder: Path) -> Path:
    """Write ``<folder>/<card name>.yaml`` (validated first, written atomically); empty optional keys left out."""
    import yaml

    from harness.core.atomic import atomic_write
    from harness.cards import card_to_dict, parse_model_card

    data = card_to_dict(card)
    for key in EMPTY_OPTIONAL_KEYS:
        if not data.get(key):
            data.pop(key, None)
    data["weights"] = {k: v for k, v in data["weights"].items() if v is not None}
    path = folder / f"{card.name}.yaml"
    parse_model_card(data, str(path))  # the card we write must validate
    text = "# Written by training.main after training; evaluate with: python -m harness eval-all --model " \
           f"{card.name} --data-root DIR\n" + yaml.safe_dump(data, sort_keys=False, width=110)
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


def write_trained_card(args, net, checkpoint: Path) -> Path | None:
    """After training (rank 0): the card of ``checkpoint`` in --model-card-dir; None with --model-card-dir none."""
    from harness.core import paths

    if (args.model_card_dir or "").lower() == "none":
        return None
    folder = Path(args.model_card_dir) if args.model_card_dir else paths.user_model_cards_dir()
    path = write_model_card(run_model_card(args, net, checkpoint), folder)
    logger.info("wrote model card %s: evaluate with `python -m harness eval-all --model %s --data-root DIR`",
                path, card_name(args))
    return path
