"""The image pass: a dataset's image features, from the cheapest source that gives the same bits.

1. The **feature cache** — features of these images already computed by this model (same weights, numerics,
   precision, device type, geometry, normalisation, data): no image is touched. Changing templates, class names or
   the metric rescores from here (``harness rescore``).
2. The **pixel cache** (:mod:`harness.pixels`) — uint8 crops decoded once for any model of this geometry; batches are
   read from the memory map and normalised on the device.
3. **Decoding** — DataLoader workers decode and crop; with the pixel cache on, the crops are written to a new entry
   as they pass (committed only when the whole pass succeeds).

With ``--no-pixel-cache`` (or a transform that is not geometry + ToTensor + Normalize) the plain torchvision path
runs: workers apply the whole transform. All paths give bit-identical features (tested), and the classifier scoring
(:func:`score`) runs over the features in fixed chunks, so probabilities do not depend on where features came from.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from harness.cachestore import CacheEntry, entry_folder
from harness.cards import content_hash
from harness.errors import HarnessError
from harness.models.precision import autocast, input_dtype
from harness.parallel import assemble
from harness.runkey import device_type

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
    source: str  # "feature cache", "pixel cache", "decoded (pixel cache written)", "decoded"


def score(features: np.ndarray, classifier: Any, device: str) -> np.ndarray:
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


def feature_entry(loaded: Any, data: Any, pixel_key: str, numerics: str, cache_root: Path | None = None
                  ) -> CacheEntry:
    import torch

    card = loaded.card
    key = content_hash({
        "weights": loaded.weights_identity["sha256"], "architecture": card.architecture,
        "quick_gelu": card.preprocess.quick_gelu, "numerics": numerics, "precision": loaded.precision,
        "device_type": device_type(loaded.device), "torch": torch.__version__, "pixels": pixel_key,
        "mean": list(card.preprocess.mean), "std": list(card.preprocess.std),
    })
    dim = getattr(getattr(loaded.model, "visual", None), "output_dim", None)
    return CacheEntry("features", entry_folder("features", f"{card.name}-{data.card.name}", key, cache_root), key,
                      (len(data), dim), None,
                      info={"model": card.name, "dataset": data.card.name, "n_images": len(data),
                            "precision": loaded.precision, "numerics": numerics})


def forward_batches(model: Any, batches: Iterable, device: str, precision: str, to_input: Any,
                    progress: Any = None, skip_bad_images: bool = False, sink: Any = None
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[int, str]]:
    """Run (images, indices, errors) batches through the image tower: ([(indices, features)], {index: error}).
    An unreadable image fails at once unless ``skip_bad_images``; a non-finite feature always fails.
    ``sink(indices, images)`` sees each raw batch (the pixel cache writer)."""
    import torch

    from harness.data import ImageReadError

    dtype = input_dtype(precision)
    amp = autocast(precision, device)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    errors: dict[int, str] = {}
    with torch.inference_mode(), leave_cores_to_workers(device, getattr(batches, "num_workers", 0)):
        for images, indices, batch_errors in batches:
            idx = indices.numpy() if hasattr(indices, "numpy") else np.asarray(indices)
            bad = {int(i): e for i, e in zip(idx, batch_errors) if e}
            if bad and not skip_bad_images:
                raise ImageReadError(next(iter(bad.values())))
            errors.update(bad)
            if sink is not None:
                sink(idx, images)
            with amp():
                features = model.encode_image(to_input(images, device, dtype), normalize=True)
            if features.dtype == torch.bfloat16:  # numpy has no bf16; float32 holds it exactly
                features = features.float()
            rows = features.cpu().numpy()
            good = np.array([not e for e in batch_errors], dtype=bool)
            if not np.isfinite(rows[good]).all():
                raise NonFiniteOutputError(
                    "NaN/inf in the model's output: check the weights (a checkpoint holding NaN, or a precision "
                    f"too low for it; precision here: {precision}). Nothing was recorded.")
            rows[~good] = 0
            pieces.append((idx, rows))
            if progress is not None:
                progress.update(len(idx))
    return pieces, errors


def plain_input(images: Any, device: str, dtype: Any):
    return images.to(device=device, dtype=dtype, non_blocking=True)


def my_batches(n: int, batch_size: int, shard: Any = None) -> list[range]:
    """The ``batch_size`` slices of ``n`` images one process runs, or this rank's share of them (harness.parallel)."""
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return shard.mine(batches) if shard is not None else batches


def _loader(dataset: Any, batches: list[range], workers: int, device: str):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=workers,
                      pin_memory=str(device).startswith("cuda"), persistent_workers=False)


def image_features(loaded: Any, data: Any, transform: Any, batch_size: int, workers: int, numerics: str,
                   pixel_cache: bool = True, feature_cache: bool = True, skip_bad_images: bool = False,
                   progress: Any = None, shard: Any = None, cache_root: Path | None = None, refresh: bool = False,
                   features_only: bool = False) -> FeaturePass:
    """The features of every image of ``data`` under ``transform`` (see the module docstring for the sources)."""
    from harness.data import TransformedDataset
    from harness.pixels import CropDataset, PixelBuild, iterate_cached, pixel_entry, plan_pixels

    main = shard is None or shard.is_main
    n, device = len(data), loaded.device
    start = time.perf_counter()
    plan = plan_pixels(transform) if (pixel_cache or feature_cache) else None
    pentry = pixel_entry(data, plan, cache_root) if plan is not None else None
    fentry = feature_entry(loaded, data, pentry.key, numerics, cache_root) if pentry and feature_cache else None
    cached = fentry.load(mmap=False) if fentry is not None and main and not refresh else None
    hit = cached is not None if shard is None else shard.broadcast(cached is not None)
    if features_only and not hit:
        raise HarnessError(f"Dataset '{data.card.name}': no cached image features of {loaded.card.name} for this "
                           f"data, precision ({loaded.precision}) and device type; rescore reads only cached "
                           f"features, so run `eval`/`eval-all` first (with the feature cache on).")
    if hit and not main:
        return FeaturePass(None, {}, 0.0, "feature cache")
    if hit:
        features, errors = cached
        _refuse_unreadable(errors, skip_bad_images)
        if progress is not None:
            progress.update(n)
        return FeaturePass(features, errors, time.perf_counter() - start, "feature cache")

    mine = my_batches(n, batch_size, shard)
    pixels = pentry.load() if pentry is not None and pixel_cache and main and not refresh else None
    if shard is not None and shard.broadcast(pixels is not None) and not main:
        pixels = pentry.load()
        if pixels is None:
            raise HarnessError(f"rank {shard.rank} cannot read the pixel cache {pentry.folder} that rank 0 reads")
    build = None
    if pixels is not None:
        source = "pixel cache"
        stream = iterate_cached(pixels[0], pixels[1], mine, pin=str(device).startswith("cuda"))
        to_input = _uint8_input(plan)
    elif pentry is not None and pixel_cache:
        build = PixelBuild.start(pentry, shard)
        source = "decoded (pixel cache written)" if build.active else "decoded"
        stream = _loader(CropDataset(data, plan), mine, workers, device)
        to_input = _uint8_input(plan)
    else:
        source = "decoded"
        stream = _loader(TransformedDataset(data, transform), mine, workers, device)
        to_input = plain_input
    try:
        # under torchrun unreadable images travel with the features and fail the dataset after the gather, on
        # rank 0, so the ranks stay in step
        pieces, errors = forward_batches(loaded.model, stream, device, loaded.precision, to_input, progress,
                                         skip_bad_images or shard is not None, build.write if build else None)
        if shard is not None:
            gathered = shard.gather((pieces, errors))
            pieces = [p for rank_pieces, _ in gathered or [] for p in rank_pieces]
            errors = {k: v for _, rank_errors in gathered or [] for k, v in sorted(rank_errors.items())}
        if build is not None:
            build.finish(errors)  # every rank's rows are written: commit on rank 0
    finally:
        if build is not None:
            build.close()
    if not main:
        return FeaturePass(None, {}, time.perf_counter() - start, source)
    features = assemble(pieces, n)
    _refuse_unreadable(errors, skip_bad_images)
    if fentry is not None:
        try:
            fentry.write(features, errors)
        except OSError as exc:  # an unwritable cache costs a recomputation next time, never the run
            logger.warning("could not write the feature cache %s (%s)", fentry.folder, exc)
    return FeaturePass(features, errors, time.perf_counter() - start, source)


def _uint8_input(plan: Any):
    """uint8 crops -> the model's input, normalised on its device (harness.pixels.to_model_input)."""
    from harness.pixels import to_model_input

    def convert(images: Any, device: str, dtype: Any):
        return to_model_input(images, plan, device, dtype)

    return convert


def _refuse_unreadable(errors: dict[int, str], skip_bad_images: bool) -> None:
    """Without --skip-bad-images the first unreadable image (in dataset order) fails the dataset."""
    if errors and not skip_bad_images:
        from harness.data import ImageReadError

        raise ImageReadError(errors[min(errors)])


def pixel_cache_ready(data: Any, transform: Any) -> bool:
    from harness.pixels import pixel_entry, plan_pixels

    plan = plan_pixels(transform)
    return plan is not None and pixel_entry(data, plan).load() is not None


def build_pixel_cache(data: Any, transform: Any, batch_size: int, workers: int, progress: bool = False,
                      shard: Any = None) -> str:
    """Decode a dataset into its pixel cache entry (no model): "ready", "built", "not cacheable", or "busy"
    (another process is building it). Unreadable images are recorded in the entry, not raised."""
    from tqdm import tqdm

    from harness.pixels import CropDataset, PixelBuild, pixel_entry, plan_pixels

    plan = plan_pixels(transform)
    if plan is None:
        return "not cacheable"
    entry = pixel_entry(data, plan)
    main = shard is None or shard.is_main
    ready = entry.load() is not None if main else False
    if (ready if shard is None else shard.broadcast(ready)):
        return "ready"
    build = PixelBuild.start(entry, shard)
    if not build.active:
        build.close()
        return "busy"
    n = len(data)
    mine = my_batches(n, batch_size, shard)
    errors: dict[int, str] = {}
    bar = tqdm(total=n, desc=f"decode | {data.card.name}", unit="img", disable=not (progress and main), leave=False,
               dynamic_ncols=True)
    try:
        for images, indices, batch_errors in _loader(CropDataset(data, plan), mine, workers, "cpu"):
            idx = indices.numpy()
            build.write(idx, images)
            errors.update({int(i): e for i, e in zip(idx, batch_errors) if e})
            bar.update(len(idx))
        if shard is not None:
            errors = {k: v for rank_errors in shard.gather(errors) or [] for k, v in sorted(rank_errors.items())}
        build.finish(errors)
    finally:
        bar.close()
        build.close()
    return "built"
