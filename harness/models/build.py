"""Model card -> a built model with its weights, tokenizer and the model's own validation transform."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from harness.cards import ModelCard

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A built model with everything the engine needs to run it."""
    card: ModelCard
    model: Any  # open_clip.CLIP
    tokenizer: Callable
    preprocess_val: Callable  # the model's own (OpenCLIP) validation transform
    weights_identity: dict
    device: str
    precision: str


def state_dict_sha256(model: Any) -> str:
    """sha256 over a model's state dict (names and bytes, sorted): the identity of weights that have no file."""
    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_model(card: ModelCard, weights: str | os.PathLike | None = None, device: str = "cpu",
                precision: str = "fp32") -> LoadedModel:
    """Build the card's model with its weights (strictly loaded), tokenizer and validation transform."""
    import torch

    from harness.models import factory, precision as prec
    from harness.core.hashing import file_sha256
    from harness.models.weights import load_weights_strict, read_state_dict, resolve_weights

    architecture = factory.architecture_of(card)  # registers the card's architecture_config file, if any
    path = resolve_weights(card, weights)
    pp = card.preprocess
    if card.weights.source == "random" and path is None:
        torch.manual_seed(card.weights.seed or 0)
    model, _, preprocess_val = factory.create_model_and_transforms(
        architecture,
        force_quick_gelu=pp.quick_gelu,
        force_image_size=pp.image_size,
        image_mean=pp.mean,
        image_std=pp.std,
        image_interpolation=pp.interpolation,
        image_resize_mode=pp.resize_mode,
    )
    if path is not None:
        state_dict = read_state_dict(path)
        load_weights_strict(model, state_dict, f"{path} (model card '{card.name}')")
        identity = {"source": card.weights.identity, "file": str(path), "sha256": file_sha256(path)}
        logger.info("%s: %s built, weights loaded strictly from %s", card.name, card.architecture, path)
    else:
        identity = {"source": card.weights.identity, "file": None, "sha256": state_dict_sha256(model)}
        logger.info("%s: %s built with seeded random weights (seed %s), as its card says", card.name,
                    card.architecture, card.weights.seed or 0)
    model = model.to(device)
    half = prec.weights_dtype(precision)
    if half is not None:  # pure half precision; the amp variants keep fp32 weights
        model = model.to(half)
    model.eval()
    return LoadedModel(card=card, model=model, tokenizer=factory.get_tokenizer(architecture),
                       preprocess_val=preprocess_val, weights_identity=identity, device=device, precision=precision)
