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


def cpu_threads(workers: int = 0) -> int:
    """The torch intra-op thread count of the harness's CPU math (image pass, classifier, scores): the machine's
    CPUs less the DataLoader workers that decode beside it, at least 1 (the model's OpenMP threads would otherwise
    compete with the decoding: on 2 cores with 2 workers, 2 threads made a cold pass 15-30% slower than 1).

    It depends on the machine (``os.cpu_count()``) and ``--workers`` alone — never on OMP_NUM_THREADS, the launcher
    (torchrun sets OMP_NUM_THREADS=1 in every rank) or where the batches come from (the pixel cache runs no workers):
    MKL splits a short, deep matrix product (a ViT-B MLP on the last few images of a dataset, the text tower on 2
    classes x 1 template) over the threads, so another thread count changes the last bits (~1e-7 per probability)."""
    import os

    return max(1, (os.cpu_count() or 1) - max(0, int(workers)))


@contextlib.contextmanager
def fixed_cpu_threads(device: str, workers: int = 0):
    """Run the enclosed CPU math at :func:`cpu_threads` threads, restoring the caller's count after. CUDA kernels do
    not depend on it: on a GPU nothing is changed."""
    import torch

    if str(device).startswith("cuda"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(workers))
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
    with torch.inference_mode(), fixed_cpu_threads(device):
        for start in range(0, features.shape[0], SCORE_CHUNK):
            rows = torch.from_numpy(np.ascontiguousarray(features[start:start + SCORE_CHUNK])).to(device)
            logits = LOGIT_SCALE * rows.float() @ weights
            out[start:start + SCORE_CHUNK] = logits.softmax(dim=-1).cpu().numpy()
    return out


class _Rows:
    """The features of a pass, gathered into one array that grows by doubling (or is sized once from ``n_rows``).

    Keeping each batch's small feature array alive instead (a list of per-batch pieces) made the main process's
    memory grow with the dataset: each piece is allocated while the batch's large temporaries are live, so it lands
    above them in glibc's heap, and the freed temporaries below it are never returned to the system (measured: +0.8
    MB per batch of 64 at 224 px, ~0.2 GB more at 15,000 images than at 3,000). One array, and copying each batch
    into it, leaves nothing of a batch alive after it."""

    def __init__(self, n_rows: int | None):
        self.n_rows, self.count = n_rows, 0
        self.indices: np.ndarray | None = None
        self.rows: np.ndarray | None = None

    def add(self, idx: np.ndarray, rows: np.ndarray) -> None:
        need = self.count + len(idx)
        if self.rows is None or need > len(self.rows):
            size = max(need, self.n_rows or 0) if self.rows is None else max(need, 2 * len(self.rows))
            indices, grown = np.empty(size, dtype=np.int64), np.empty((size, *rows.shape[1:]), dtype=rows.dtype)
            if self.rows is not None:
                indices[:self.count], grown[:self.count] = self.indices[:self.count], self.rows[:self.count]
            self.indices, self.rows = indices, grown
        self.indices[self.count:need] = idx
        self.rows[self.count:need] = rows
        self.count = need

    def pieces(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.rows is None:
            return []
        return [(self.indices[:self.count], self.rows[:self.count])]


def forward_batches(model: Any, batches: Iterable, device: str, precision: str, progress: Any = None,
                    skip_bad_images: bool = False, workers: int = 0, n_rows: int | None = None
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[int, str]]:
    """Run (inputs, indices, errors) batches through the image tower: ([(indices, features)], {index: error}).
    Inputs are moved to ``device`` in the precision's input dtype (a no-op for a source that already did). On CPU
    the tower runs at :func:`cpu_threads` ``(workers)`` threads: ``workers`` is the run's ``--workers``, whether or
    not this source decodes with them. An unreadable image fails at once unless ``skip_bad_images``; a non-finite
    feature always fails. The features come back as one piece (all rows, in the order the batches came);
    ``n_rows``, when known, sizes it up front."""
    import torch

    from harness.data.testsets import ImageReadError

    dtype = input_dtype(precision)
    amp = autocast(precision, device)
    out = _Rows(n_rows)
    errors: dict[int, str] = {}
    with torch.inference_mode(), fixed_cpu_threads(device, workers):
        for images, indices, batch_errors in batches:
            idx = indices.numpy() if hasattr(indices, "numpy") else np.asarray(indices)
            bad = {int(i): e for i, e in zip(idx, batch_errors) if e}
            if bad and not skip_bad_images:
                raise ImageReadError(next(iter(bad.values())))
            errors.update(bad)
            with amp():
                features = model.encode_image(images.to(device=device, dtype=dtype, non_blocking=True),
                                              normalize=True)
            del images  # the batch's inputs go before the next batch is asked for
            if features.dtype == torch.bfloat16:  # numpy has no bf16; float32 holds it exactly
                features = features.float()
            rows = features.cpu().numpy()
            good = np.array([not e for e in batch_errors], dtype=bool)
            if not np.isfinite(rows[good]).all():
                raise NonFiniteOutputError(
                    "NaN/inf in the image tower's output: check the weights (a checkpoint holding NaN, or a "
                    f"precision too low for it; precision here: {precision}). Nothing was recorded.")
            rows[~good] = 0
            out.add(idx, rows)
            if progress is not None:
                progress.update(len(idx))
    return out.pieces(), errors


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
                                         options.resolved_workers(), n_rows=sum(len(b) for b in mine))
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
