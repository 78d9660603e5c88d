"""A tiny CLIP that retrieves the demo corpus's images by text, fitted in seconds: text-to-image retrieval is then
testable on the generated corpus (a random tiny CLIP is at chance, ~7% precision; docs/retrieval.md).

The fit keeps every weight of the base model but its two projections: the text projection becomes the whitening
of the captions' text features (:func:`whitening`), so class names, not template words, set the text embeddings;
then, with the image tower's pooled features ``H`` (N, width) of the corpus images and the (new) unit text
embeddings ``T`` (N, D) of their captions (:func:`harness.engine.zeroshot.encode_texts`), the image projection is
the ridge solution of ``H P ≈ T``.
The result is saved as a plain state dict beside a model card (``weights.source: local``) that ``embed``,
``query`` and ``harness eval`` load like any other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.corpus import expand_shards, read_shard


def _with_identity(module, name: str):
    """Temporarily replace the projection ``module.<name>`` (a (width, D) matrix) by the identity, so the tower
    returns its features before projecting them; restored on exit. Edits this instance only."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def swapped():
        proj = getattr(module, name)
        setattr(module, name, torch.nn.Parameter(torch.eye(proj.shape[0], dtype=proj.dtype, device=proj.device),
                                                 requires_grad=False))
        try:
            yield
        finally:
            setattr(module, name, proj)
    return swapped()


def pooled_features(loaded, images: Sequence[bytes], batch_size: int = 256) -> np.ndarray:
    """The image tower's features before its projection."""
    import torch

    from harness.data.testsets import decode_image

    out = []
    with _with_identity(loaded.model.visual, "proj"), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([loaded.preprocess_val(decode_image(b)) for b in images[start:start + batch_size]])
            out.append(loaded.model.encode_image(batch.to(loaded.device), normalize=False).float().cpu().numpy())
    return np.concatenate(out)


def whitening(features: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """``C^{-1/2}`` of the features' second moment ``C`` (ridge-regularised): a text projection under which the
    captions' embeddings are spread evenly instead of crowding around one direction (a random text tower's
    embeddings are all alike, cosine ~0.9)."""
    second = features.T.astype(np.float64) @ features / len(features)
    values, vectors = np.linalg.eigh(second)
    return (vectors @ np.diag(1 / np.sqrt(values + ridge * values.mean())) @ vectors.T).astype(np.float32)


def fit_projection(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-2) -> np.ndarray:
    h = features.astype(np.float64)
    gram = h.T @ h
    gram += ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
    return np.linalg.solve(gram, h.T @ targets.astype(np.float64)).astype(np.float32)


def fit_demo_model(shards: str, base_card: str, out_dir: str | Path, name: str = "tiny_demo_clip_fitted") -> Path:
    """Fit the base card's image projection to the corpus's captions; write ``<out_dir>/<name>.pt`` and
    ``<out_dir>/<name>.yaml``. Returns the card's path."""
    import dataclasses

    import torch

    from harness.cards import WeightsSpec, get_model_card
    from harness.core.atomic import write_torch
    from harness.engine.zeroshot import encode_texts
    from harness.models.build import build_model

    samples = [s for p in expand_shards(shards) for s in read_shard(p) if s.image is not None]
    base = get_model_card(base_card)
    loaded = build_model(base, device="cpu", precision="fp32")
    captions = [s.caption for s in samples]
    model = loaded.model
    with _with_identity(model, "text_projection"):
        text_proj = whitening(encode_texts(model, loaded.tokenizer, captions))
    model.text_projection = torch.nn.Parameter(torch.from_numpy(text_proj), requires_grad=False)
    targets = encode_texts(model, loaded.tokenizer, captions)
    image_proj = fit_projection(pooled_features(loaded, [s.image for s in samples]), targets)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["visual.proj"] = torch.from_numpy(image_proj)
    out = Path(out_dir).expanduser()
    checkpoint = write_torch(out / f"{name}.pt", state)
    card = dataclasses.replace(base, name=name, weights=WeightsSpec(source="local", path=str(checkpoint.resolve())),
                               description=f"{base.name} with its image projection fitted (ridge) to the captions "
                                           f"of {shards}: retrieval's text-to-image demo model.")
    from training.model_card import write_model_card  # the card writer training uses, not a second one

    return write_model_card(card, out)
