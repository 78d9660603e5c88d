"""The zero-shot engine: one code path for `harness eval`, both protocols, the cross-check and training's eval.

classifier = for each class, encode every template, L2-normalise, average, renormalise (open_clip's
``build_zero_shot_classifier`` does exactly this; we call it rather than keep a second copy);
logits = 100 * cos(image, class); probabilities = softmax(logits) — as the ELEVATER toolkit and OpenCLIP do.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from harness import paths
from harness.atomic import write_torch
from harness.cards import content_hash
from harness.errors import HarnessError
from harness.models.precision import autocast, input_dtype

logger = logging.getLogger(__name__)

LOGIT_SCALE = 100.0
def build_classifier(model: Any, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str],
                     device: str = "cpu", precision: str = "fp32", progress: bool = False):
    """Zero-shot classifier weights (D, C), float32, unit columns."""
    import torch
    from open_clip import build_zero_shot_classifier

    with torch.inference_mode(), autocast(precision, device)():
        weights = build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                             num_classes_per_batch=10, device=device, use_tqdm=progress)
    return weights.float()


def classifier_cache_key(weights_sha256: str, architecture: str, quick_gelu: bool, classnames: Sequence[str],
                         templates: Sequence[str], precision: str, numerics: str = "openclip") -> str:
    import open_clip

    return content_hash({
        "weights": weights_sha256, "arch": architecture, "quick_gelu": quick_gelu, "classnames": list(classnames),
        "templates": list(templates), "precision": precision, "open_clip": open_clip.__version__,
        "builder": "open_clip.build_zero_shot_classifier/v1", "numerics": numerics,
    })


def cached_classifier(loaded: Any, classnames: Sequence[str], templates: Sequence[str], use_cache: bool = True,
                      refresh: bool = False, progress: bool = False, cache_root: Path | None = None,
                      numerics: str = "openclip"):
    """Classifier for a LoadedModel, cached on disk under a content hash of everything that changes it.

    Returns (weights, cache key, whether it came from the cache).
    """
    import torch

    card = loaded.card
    key = classifier_cache_key(loaded.weights_identity["sha256"], card.architecture, card.preprocess.quick_gelu,
                               classnames, templates, loaded.precision, numerics)
    path = (cache_root or paths.cache_dir()) / "classifiers" / f"{key}.pt"
    if use_cache and not refresh and path.is_file():
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
            expected_rows = getattr(getattr(loaded.model, "visual", None), "output_dim", None) or weights.shape[0]
            if (isinstance(weights, torch.Tensor) and weights.dim() == 2
                    and tuple(weights.shape) == (expected_rows, len(classnames)) and torch.isfinite(weights).all()):
                return weights.to(loaded.device), key, True
            logger.warning("ignoring classifier cache %s: holds %s, expected a (%s, %d) tensor; recomputing", path,
                           tuple(getattr(weights, "shape", ())), expected_rows, len(classnames))
        except Exception as exc:  # a corrupt cache entry is recomputed, never trusted
            logger.warning("ignoring unreadable classifier cache %s (%s); recomputing", path, exc)
    weights = build_classifier(loaded.model, loaded.tokenizer, classnames, templates, loaded.device,
                               loaded.precision, progress)
    if use_cache:
        try:
            write_torch(path, weights.cpu())
        except OSError as exc:  # an unwritable cache costs a recomputation next time, never the run
            logger.warning("could not write the classifier cache %s (%s); continuing without it", path, exc)
    return weights, key, False


@contextlib.contextmanager
def _leave_cores_to_workers(device: str, workers: int):
    """On CPU, the main process's idle OpenMP threads spin and steal cycles from the DataLoader workers that decode
    images (measured on 2 cores: +35-50% throughput with them left alone). Use the cores the workers do not."""
    import os

    import torch

    if str(device).startswith("cuda") or workers <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) float32 softmax probabilities of the scored images, in dataset order
    seconds: float
    n_images: int  # images scored
    skipped: list[int] = field(default_factory=list)  # dataset indices left out (--skip-bad-images)
    skip_reasons: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def kept(self, n_total: int) -> np.ndarray:
        """Boolean mask over the dataset of the images that were scored."""
        mask = np.ones(n_total, dtype=bool)
        mask[self.skipped] = False
        return mask


class NonFiniteOutputError(HarnessError):
    pass


def predict(model: Any, classifier: Any, batches: Iterable, n_images: int, device: str = "cpu",
            precision: str = "fp32", progress: Any = None, skip_bad_images: bool = False) -> Predictions:
    """Run images through the image tower and the classifier. ``batches`` yields (images, indices[, errors]) as
    :class:`harness.data.TransformedDataset` makes them. An unreadable image fails the run with its message,
    unless ``skip_bad_images``; a non-finite output always fails it (it is never a score)."""
    import torch

    from harness.data import ImageReadError

    probs = np.zeros((n_images, classifier.shape[1]), dtype=np.float32)
    seen = np.zeros(n_images, dtype=bool)
    skipped: dict[int, str] = {}
    dtype = input_dtype(precision)
    amp = autocast(precision, device)
    start = time.perf_counter()
    with torch.inference_mode(), _leave_cores_to_workers(device, getattr(batches, "num_workers", 0)):
        for batch in batches:
            images, indices = batch[0], batch[1]
            errors = batch[2] if len(batch) > 2 else [""] * len(indices)
            idx = indices.numpy() if hasattr(indices, "numpy") else np.asarray(indices)
            bad = [(int(i), e) for i, e in zip(idx, errors) if e]
            if bad and not skip_bad_images:
                raise ImageReadError(bad[0][1])
            skipped.update(bad)
            images = images.to(device=device, dtype=dtype, non_blocking=True)
            with amp():
                features = model.encode_image(images, normalize=True)
            # similarities and softmax in fp32 whatever the tower ran in (bf16 logits would tie)
            logits = LOGIT_SCALE * features.float() @ classifier.float()
            out = logits.softmax(dim=-1).cpu().numpy()
            good = np.array([not e for e in errors], dtype=bool)
            if not np.isfinite(out[good]).all():
                raise NonFiniteOutputError(
                    "NaN/inf in the model's output: check the weights (a checkpoint holding NaN, or a precision "
                    f"too low for it; precision here: {precision}). Nothing was recorded.")
            probs[idx] = out
            seen[idx] = True
            if progress is not None:
                progress.update(len(idx))
    seconds = time.perf_counter() - start
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} images were never scored")
    if skipped and len(skipped) == n_images:
        raise ImageReadError(f"every image failed to read; the first: {next(iter(skipped.values()))}")
    order = sorted(skipped)
    mask = np.ones(n_images, dtype=bool)
    mask[order] = False
    return Predictions(probs=probs[mask], seconds=seconds, n_images=int(mask.sum()), skipped=order,
                       skip_reasons=[skipped[i] for i in order])


def make_loader(dataset: Any, batch_size: int, workers: int, device: str = "cpu"):
    """A sequential DataLoader; workers decode and preprocess while the main process runs the model."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=str(device).startswith("cuda"), drop_last=False,
                      persistent_workers=False)


@dataclass
class EvalOutcome:
    spec: Any  # harness.protocols.ProtocolSpec
    predictions: Predictions
    metrics: dict[str, float]
    classifier_key: str
    classifier_from_cache: bool
    workers: int
    numerics: Any = None  # harness.models.numerics.NumericsPlan


def evaluate_dataset(loaded: Any, dataset_card: Any, data: Any, protocol: str = "elevater", batch_size: int = 64,
                     workers: int = 2, use_cache: bool = True, refresh: bool = False, progress: bool = False,
                     skip_bad_images: bool = False, numerics: str | None = None) -> EvalOutcome:
    """Zero-shot evaluation of a LoadedModel on opened data under a protocol: the one path every caller uses
    (``harness eval``, the cross-check, and the training loop's periodic eval). ``numerics`` (default: the
    protocol's, see harness.models.numerics) decides whose model code computes the forward pass."""
    from tqdm import tqdm

    from harness import metrics
    from harness.data import TransformedDataset
    from harness.models.numerics import default_numerics, numerics_applied, plan
    from harness.protocols import make_protocol

    spec = make_protocol(protocol, loaded.card, dataset_card, loaded.preprocess_val)
    nplan = plan(numerics or default_numerics(protocol, loaded.card), loaded.card, loaded.device)
    with numerics_applied(loaded.model, nplan):
        classifier, key, hit = cached_classifier(loaded, spec.classnames, spec.templates, use_cache=use_cache,
                                                 refresh=refresh, numerics=nplan.key)
        logger.info("%s: classifier %s (%s), numerics %s", dataset_card.name, key, "cache" if hit else "computed",
                    nplan.key)
        loader = make_loader(TransformedDataset(data, spec.transform), batch_size, workers, loaded.device)
        bar = tqdm(total=len(data), desc=f"{loaded.card.name} | {dataset_card.name}", unit="img",
                   disable=not progress, leave=False, dynamic_ncols=True)
        try:
            preds = predict(loaded.model, classifier, loader, len(data), loaded.device, loaded.precision, bar,
                            skip_bad_images=skip_bad_images)
        finally:
            bar.close()
    values = metrics.compute(spec.metrics, preds.probs, data.labels[preds.kept(len(data))])
    return EvalOutcome(spec=spec, predictions=preds, metrics=values, classifier_key=key, classifier_from_cache=hit,
                       workers=workers, numerics=nplan)
