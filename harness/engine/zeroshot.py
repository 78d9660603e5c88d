"""The zero-shot engine: one code path for `harness eval`, both protocols, the cross-check and training's eval.

classifier = for each class, encode every template, L2-normalise, average, renormalise (open_clip's
``build_zero_shot_classifier`` does exactly this; we call it rather than keep a second copy);
logits = 100 * cos(image, class); probabilities = softmax(logits) — as the ELEVATER toolkit and OpenCLIP do.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from harness.core import paths
from harness.cards import content_hash
from harness.core.distributed import assemble
from harness.engine.imagepass import (LOGIT_SCALE, NonFiniteOutputError, fixed_cpu_threads, forward_batches,
                                      probabilities)
from harness.engine.options import EvalOptions
from harness.models.precision import autocast
from harness.store.integrity import read_verified, write_verified

if TYPE_CHECKING:
    from harness.cards import DatasetCard
    from harness.data.testsets import EvalData
    from harness.engine.protocols import ProtocolSpec
    from harness.models.build import LoadedModel
    from harness.models.numerics import NumericsPlan

logger = logging.getLogger(__name__)

__all__ = ["LOGIT_SCALE", "NonFiniteOutputError", "build_classifier", "cached_classifier", "encode_texts",
           "evaluate_dataset", "predict"]


def build_classifier(model: Any, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str],
                     device: str = "cpu", precision: str = "fp32", progress: bool = False, per_batch: int = 10):
    """Zero-shot classifier weights (D, C), float32, unit columns; on CPU at the harness's fixed thread count
    (:func:`harness.engine.imagepass.cpu_threads`: the text tower's last bits depend on it). ``per_batch``: class
    names per text-tower forward."""
    import torch
    from open_clip import build_zero_shot_classifier

    with torch.inference_mode(), fixed_cpu_threads(device), autocast(precision, device)():
        weights = build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                             num_classes_per_batch=per_batch, device=device, use_tqdm=progress)
    return weights.float()


def encode_texts(model: Any, tokenizer: Any, texts: Sequence[str], device: str = "cpu", precision: str = "fp32",
                 batch_size: int = 256) -> np.ndarray:
    """Unit text embeddings (N, D) float32 of ``texts`` (captions, retrieval queries), one row per text: the
    classifier path itself (:func:`build_classifier`) with the one template ``"{}"`` — encode, normalise, average
    over one template, renormalise — so a caption and a class prompt are encoded by the same code."""
    return build_classifier(model, tokenizer, list(texts), ("{}",), device, precision,
                            per_batch=batch_size).T.cpu().numpy()


def classifier_cache_key(weights_sha256: str, architecture: str, quick_gelu: bool, classnames: Sequence[str],
                         templates: Sequence[str], precision: str, numerics: str = "openclip") -> str:
    import open_clip

    return content_hash({
        "weights": weights_sha256, "arch": architecture, "quick_gelu": quick_gelu, "classnames": list(classnames),
        "templates": list(templates), "precision": precision, "open_clip": open_clip.__version__,
        "builder": "open_clip.build_zero_shot_classifier/v1", "numerics": numerics,
    })


def cached_classifier(loaded: "LoadedModel", classnames: Sequence[str], templates: Sequence[str], use_cache: bool = True,
                      refresh: bool = False, progress: bool = False, cache_root: Path | None = None,
                      numerics: str = "openclip"):
    """Classifier for a LoadedModel, cached on disk under a content hash of everything that changes it. The file
    has a sidecar checksum (``<key>.pt.json``, harness.store.integrity): a damaged or unchecked file is recomputed,
    never loaded; a cache folder without room for it costs one warning, never the run.

    Returns (weights, cache key, whether it came from the cache).
    """
    import io

    import torch

    card = loaded.card
    key = classifier_cache_key(loaded.weights_identity["sha256"], card.architecture, card.preprocess.quick_gelu,
                               classnames, templates, loaded.precision, numerics)
    root = cache_root or paths.cache_dir()
    path = root / "classifiers" / f"{key}.pt"
    blob = read_verified(path, "classifier cache") if use_cache and not refresh else None
    if blob is not None:
        try:
            weights = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
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
    if use_cache:  # an unwritable cache costs a recomputation next time, never the run
        buf = io.BytesIO()
        torch.save(weights.cpu(), buf)
        write_verified(path, buf.getvalue(), root, "the classifier cache")
    return weights, key, False


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) float32 softmax probabilities of the scored images, in dataset order
    seconds: float
    n_images: int  # images scored
    skipped: list[int] = field(default_factory=list)  # dataset indices left out (--skip-bad-images)
    skip_reasons: list[str] = field(default_factory=list)
    source: str = "decoded"  # where the image features came from (harness.engine.imagesource)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def kept(self, n_total: int) -> np.ndarray:
        """Boolean mask over the dataset of the images that were scored."""
        mask = np.ones(n_total, dtype=bool)
        mask[self.skipped] = False
        return mask


def predict(model: Any, classifier: Any, batches: Iterable, n_images: int, device: str = "cpu",
            precision: str = "fp32", progress: Any = None, skip_bad_images: bool = False) -> Predictions:
    """Probabilities of (normalised images, indices[, errors]) batches, as
    :class:`harness.data.testsets.TransformedDataset` makes them: the image tower
    (:func:`harness.engine.imagepass.forward_batches`), then :func:`harness.engine.imagepass.probabilities`."""

    def triples():
        for batch in batches:
            yield batch[0], batch[1], batch[2] if len(batch) > 2 else [""] * len(batch[1])

    start = time.perf_counter()
    pieces, errors = forward_batches(model, triples(), device, precision, progress, skip_bad_images,
                                     getattr(batches, "num_workers", 0))
    return _predictions(assemble(pieces, n_images), errors, classifier, device, time.perf_counter() - start)


def _predictions(features: np.ndarray, errors: dict[int, str], classifier: Any, device: str, seconds: float,
                 source: str = "decoded") -> Predictions:
    """Scored features, the unreadable images (``errors``) left out."""
    from harness.data.testsets import ImageReadError

    n_images = features.shape[0]
    if errors and len(errors) == n_images:
        raise ImageReadError(f"every image failed to read; the first: {next(iter(errors.values()))}")
    order = sorted(errors)
    mask = np.ones(n_images, dtype=bool)
    mask[order] = False
    _check_features(features, mask, source)
    probs = probabilities(features, classifier, device)[mask]
    if not np.isfinite(probs).all():
        raise NonFiniteOutputError("NaN/inf in the probabilities: check the classifier (text tower) weights. "
                                   "Nothing was recorded.")
    return Predictions(probs=probs, seconds=seconds, n_images=int(mask.sum()), skipped=order,
                       skip_reasons=[errors[i] for i in order], source=source)


def _check_features(features: np.ndarray, kept: np.ndarray, source: str) -> None:
    """Image features are unit vectors (the tower normalises them), so a row that is not finite or far from unit
    length (a damaged cache entry, a broken tower) fails here, naming where it came from, before scoring could
    blame the classifier."""
    from harness.engine.imagesource import FEATURE_CACHE

    rows = np.flatnonzero(kept)
    norms = np.linalg.norm(features[rows].astype(np.float64), axis=1) if rows.size else np.ones(0)
    bad = rows[~(np.isfinite(norms) & (norms > 0.5) & (norms < 2.0))]
    if bad.size == 0:
        return
    first = int(bad[0])
    norm = norms[rows == first][0]
    what = f"{bad.size} image feature row(s) are not finite unit vectors (row {first}: norm {norm:.3g})"
    if source == FEATURE_CACHE:
        raise NonFiniteOutputError(f"{what} in the feature cache: the entry is damaged. Run again with --refresh-cache "
                                   "(or `python -m harness cache prune --kind features`). Nothing was recorded.")
    raise NonFiniteOutputError(f"{what} from the image tower: check the weights (a checkpoint holding NaN, or a "
                               "precision too low for it). Nothing was recorded.")


def make_loader(dataset: Any, batch_size: int, workers: int, device: str = "cpu"):
    """A sequential DataLoader; workers decode and preprocess while the main process runs the model."""
    from torch.utils.data import DataLoader

    from harness.data.decoding import import_decoders

    if workers:
        import_decoders()  # before the workers fork: none of them may import (see import_decoders)

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=str(device).startswith("cuda"), drop_last=False,
                      persistent_workers=False)


@dataclass
class EvalOutcome:
    spec: "ProtocolSpec"
    predictions: Predictions
    metrics: dict[str, float]
    classifier_key: str
    classifier_from_cache: bool
    workers: int
    numerics: "NumericsPlan"


def evaluate_dataset(loaded: "LoadedModel", dataset_card: "DatasetCard", data: "EvalData",
                     options: EvalOptions | None = None) -> EvalOutcome | None:
    """Zero-shot evaluation of a LoadedModel on opened data under ``options`` (protocol, numerics, caches, batch
    size, ...; :class:`~harness.engine.options.EvalOptions`, whose defaults are the only ones): the one path every
    caller uses (``harness eval``, the cross-check, and the training loop's periodic eval). The numerics (default:
    the protocol's, see harness.models.numerics) decide whose model code computes the forward pass. The image
    features come from :func:`harness.engine.imagepass.image_features` (feature cache, pixel cache or decoding;
    identical bits). Under torchrun (``options.shard``) every rank computes its share of the batches and rank 0
    alone gets the outcome (None on the other ranks)."""
    from tqdm import tqdm

    from harness.engine import metrics
    from harness.engine.imagepass import image_features
    from harness.engine.protocols import make_protocol
    from harness.models.numerics import default_numerics, numerics_applied, plan

    options = options or EvalOptions()
    spec = make_protocol(options.protocol, loaded.card, dataset_card, loaded.preprocess_val)
    metrics.import_in_background()  # sklearn's import (~1.7 s) overlaps the image pass instead of following it
    nplan = plan(options.numerics or default_numerics(options.protocol, loaded.card), loaded.card, loaded.device)
    with numerics_applied(loaded.model, nplan):
        classifier, key, hit = cached_classifier(loaded, spec.classnames, spec.templates,
                                                 use_cache=options.classifier_cache, refresh=options.refresh_cache,
                                                 numerics=nplan.key)
        logger.info("%s: classifier %s (%s), numerics %s", dataset_card.name, key, "cache" if hit else "computed",
                    nplan.key)
        bar = tqdm(total=len(data), desc=f"{loaded.card.name} | {dataset_card.name}", unit="img",
                   disable=not (options.progress and options.is_main), leave=False, dynamic_ncols=True)
        try:
            fp = image_features(loaded, data, spec.transform, options, nplan.key, progress=bar)
        finally:
            bar.close()
    if not options.is_main:
        return None
    preds = _predictions(fp.features, fp.errors, classifier, loaded.device, fp.seconds, fp.source)
    logger.info("%s: image features from %s", dataset_card.name, fp.source)
    values = metrics.compute(spec.metrics, preds.probs, data.labels[preds.kept(len(data))])
    return EvalOutcome(spec=spec, predictions=preds, metrics=values, classifier_key=key, classifier_from_cache=hit,
                       workers=options.resolved_workers(), numerics=nplan)
