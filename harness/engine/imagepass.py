"""The image pass: a dataset's image features, asked of its :class:`~harness.engine.imagesource.ImageSource`
(feature cache → pixel cache → decoding; identical bits from each), sharded under torchrun; and the fixed-chunk
scoring of features against a classifier (:func:`probabilities`), so probabilities never depend on where the
features came from or on the batch size.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from harness.core.distributed import assemble, deal
from harness.core.errors import HarnessError
from harness.models.precision import autocast, input_dtype

if TYPE_CHECKING:
    from harness.data.testsets import EvalData
    from harness.engine.options import EvalOptions
    from harness.models.build import LoadedModel

logger = logging.getLogger(__name__)

SCORE_CHUNK = 4096  # rows per classifier matmul, fixed so scores never depend on the batch size or source
LOGIT_SCALE = 100.0


@contextlib.contextmanager
def leave_cores_to_workers(device: str, workers: int):
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


class NonFiniteOutputError(HarnessError):
    pass


@dataclass
class FeaturePass:
    features: np.ndarray | None  # (N, D) as the tower computed them (bf16 kept as float32); None off rank 0
    errors: dict[int, str]  # dataset index -> why the image could not be read (its row is zero)
    seconds: float
    source: str  # harness.engine.imagesource: "feature cache", "pixel cache", "decoded (pixel cache written)", ...


def probabilities(features: np.ndarray, classifier: Any, device: str) -> np.ndarray:
    """Softmax probabilities (N, C) float32: ``100 * f @ W`` in float32, in fixed chunks on ``device``."""
    import torch

    out = np.empty((features.shape[0], classifier.shape[1]), dtype=np.float32)
    weights = classifier.to(device).float()
    with torch.inference_mode():
        for start in range(0, features.shape[0], SCORE_CHUNK):
            rows = torch.from_numpy(np.ascontiguousarray(features[start:start + SCORE_CHUNK])).to(device)
            logits = LOGIT_SCALE * rows.float() @ weights
            out[start:start + SCORE_CHUNK] = logits.softmax(dim=-1).cpu().numpy()
    return out


def forward_batches(model: Any, batches: Iterable, device: str, precision: str, progress: Any = None,
                    skip_bad_images: bool = False, workers: int = 0
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[int, str]]:
    """Run (inputs, indices, errors) batches through the image tower: ([(indices, features)], {index: error}).
    Inputs are moved to ``device`` in the precision's input dtype (a no-op for a source that already did). An
    unreadable image fails at once unless ``skip_bad_images``; a non-finite feature always fails."""
    import torch

    from harness.data.testsets import ImageReadError

    dtype = input_dtype(precision)
    amp = autocast(precision, device)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    errors: dict[int, str] = {}
    with torch.inference_mode(), leave_cores_to_workers(device, workers):
        for images, indices, batch_errors in batches:
            idx = indices.numpy() if hasattr(indices, "numpy") else np.asarray(indices)
            bad = {int(i): e for i, e in zip(idx, batch_errors) if e}
            if bad and not skip_bad_images:
                raise ImageReadError(next(iter(bad.values())))
            errors.update(bad)
            with amp():
                features = model.encode_image(images.to(device=device, dtype=dtype, non_blocking=True),
                                              normalize=True)
            if features.dtype == torch.bfloat16:  # numpy has no bf16; float32 holds it exactly
                features = features.float()
            rows = features.cpu().numpy()
            good = np.array([not e for e in batch_errors], dtype=bool)
            if not np.isfinite(rows[good]).all():
                raise NonFiniteOutputError(
                    "NaN/inf in the image tower's output: check the weights (a checkpoint holding NaN, or a "
                    f"precision too low for it; precision here: {precision}). Nothing was recorded.")
            rows[~good] = 0
            pieces.append((idx, rows))
            if progress is not None:
                progress.update(len(idx))
    return pieces, errors


def image_features(loaded: "LoadedModel", data: "EvalData", transform: Any, options: "EvalOptions", numerics: str,
                   progress: Any = None, cache_root: Any = None) -> FeaturePass:
    """The features of every image of ``data`` under ``transform``, from the cheapest source the options allow."""
    from harness.engine.imagesource import ImageSource

    shard, main = options.shard, options.is_main
    start = time.perf_counter()
    source = ImageSource(data, transform, options, cache_root)
    cached = source.cached_features(loaded, numerics)
    if options.features_only and cached is None:
        raise HarnessError(f"Dataset '{data.card.name}': no cached image features of {loaded.card.name} for this "
                           f"data, precision ({loaded.precision}) and device type; rescore reads only cached "
                           f"features, so run `eval`/`eval-all` first (with the feature cache on).")
    if cached is not None:
        features, errors = cached
        if main:
            _refuse_unreadable(errors, options.skip_bad_images)
            if progress is not None:
                progress.update(len(data))
        return FeaturePass(features, errors, time.perf_counter() - start, source.kind)

    # under torchrun unreadable images travel with the features and fail the dataset after the gather, on rank 0,
    # so the ranks stay in step
    skip = options.skip_bad_images or shard is not None
    mine = deal(len(data), options.resolved_batch_size(loaded.device), shard)
    with source.stream(mine, options.resolved_workers(), loaded.device, input_dtype(loaded.precision)) as stream:
        pieces, errors = forward_batches(loaded.model, stream, loaded.device, loaded.precision, progress, skip,
                                         stream.workers)
        if shard is not None:
            gathered = shard.gather((pieces, errors))
            pieces = [p for rank_pieces, _ in gathered or [] for p in rank_pieces]
            errors = {k: v for _, rank_errors in gathered or [] for k, v in sorted(rank_errors.items())}
        stream.commit(errors)
    if not main:
        return FeaturePass(None, {}, time.perf_counter() - start, source.kind)
    features = assemble(pieces, len(data))
    _refuse_unreadable(errors, options.skip_bad_images)
    source.keep_features(loaded, numerics, features, errors)
    return FeaturePass(features, errors, time.perf_counter() - start, source.kind)


def _refuse_unreadable(errors: dict[int, str], skip_bad_images: bool) -> None:
    """Without --skip-bad-images the first unreadable image (in dataset order) fails the dataset."""
    if errors and not skip_bad_images:
        from harness.data.testsets import ImageReadError

        raise ImageReadError(errors[min(errors)])
