"""The image source: where a dataset's images come from on their way into the image tower, cheapest first.

1. The **feature cache** — features of these images already computed by this model (same weights, numerics,
   precision, device type, geometry, normalisation, data): no image is touched. Changing templates, class names or
   the metric rescores from here (``harness rescore``).
2. The **pixel cache** (:mod:`harness.store.pixels`) — uint8 crops decoded once for any model of this geometry;
   batches are read from the memory map and normalised on the device.
3. **Decoding** — DataLoader workers decode and crop; with the pixel cache on, the crops are written to a new entry
   as they pass (committed only when the whole pass succeeds).

With the pixel cache off (or a transform that is not geometry + ToTensor + Normalize) the plain torchvision path
runs: workers apply the whole transform. Every path gives bit-identical model inputs (tested). The engine asks one
:class:`ImageSource` for cached features or for batches; a new kind of data plugs in here, below the engine.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from harness.cards import content_hash
from harness.core.errors import HarnessError
from harness.store.entries import CacheEntry, entry_folder
from harness.store.runkey import device_type

if TYPE_CHECKING:
    from harness.data.testsets import EvalData
    from harness.engine.options import EvalOptions
    from harness.models.build import LoadedModel

logger = logging.getLogger(__name__)

FEATURE_CACHE = "feature cache"
PIXEL_CACHE = "pixel cache"
DECODED = "decoded"
DECODED_AND_CACHED = "decoded (pixel cache written)"


def feature_entry(loaded: "LoadedModel", data: "EvalData", pixel_key: str, numerics: str,
                  cache_root: Path | None = None) -> CacheEntry:
    """The feature cache entry of this model on this data (it may not exist yet)."""
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


_MALLOC_TRIM: list = []  # [glibc's malloc_trim, or None where there is none], looked up once per process


def _release_freed_memory() -> None:
    """Hand the pages of freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    A decoding process frees every image's buffers (the decoded JPEG, the resized and cropped copies, the float
    tensor: ~1 MB an image at 224 px) after its batch, but glibc keeps freed heap chunks, and the small objects each
    batch leaves alive scatter them: measured in a DataLoader worker, free heap grew by 0.5 MB per batch of 64, for
    as long as the pass lasts. Trimming after every batch keeps it flat at no measurable cost (15,000 images at
    224 px with 2 workers: 23.9 s against 23.7 s)."""
    if not _MALLOC_TRIM:
        import ctypes

        try:
            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):  # not glibc
            trim = None
        _MALLOC_TRIM.append(trim)
    if _MALLOC_TRIM[0] is not None:
        _MALLOC_TRIM[0](0)


def _collate(items: list) -> Any:
    """torch's default collate of one batch, then the freed memory of its images handed back (in the process that
    decoded them: a DataLoader worker, or the main process without workers)."""
    from torch.utils.data import default_collate

    batch = default_collate(items)
    _release_freed_memory()  # the previous batch's images are freed by now (this one's once the caller drops them)
    return batch


def _loader(dataset: Any, batches: list[range], workers: int, device: str):
    from torch.utils.data import DataLoader

    from harness.data.decoding import import_decoders

    if workers:
        import_decoders()  # before the workers fork: none of them may import (see import_decoders)

    return DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=workers, collate_fn=_collate,
                      pin_memory=str(device).startswith("cuda"), persistent_workers=False)


class Stream:
    """Batches of model inputs ``(tensor on the device, dataset indices, per-image errors)`` from one source;
    ``workers`` is how many processes decode for it."""

    def __init__(self, batches: Any, convert: Any, workers: int, build: Any = None):
        self._batches, self._convert, self.workers, self._build = batches, convert, workers, build

    def __iter__(self) -> Iterator[tuple[Any, np.ndarray, list[str]]]:
        for images, indices, errors in self._batches:
            idx = indices.numpy() if hasattr(indices, "numpy") else np.asarray(indices)
            if self._build is not None:
                self._build.write(idx, images)
            yield self._convert(images), idx, list(errors)

    def commit(self, errors: dict[int, str]) -> None:
        """Every rank's rows are in (callers gather first): commit the pixel cache entry being written, if any."""
        if self._build is not None:
            self._build.finish(errors)


class ImageSource:
    """One dataset under one protocol transform, as the engine sees it: cached features when this model has them,
    else batches from the pixel cache or from decoding. ``options`` decides which caches may be used."""

    def __init__(self, data: "EvalData", transform: Any, options: "EvalOptions", cache_root: Path | None = None):
        from harness.store.pixels import pixel_entry, plan_pixels

        self.data, self.transform, self.options, self.cache_root = data, transform, options, cache_root
        self.plan = plan_pixels(transform) if (options.pixel_cache or options.feature_cache) else None
        self.pixels = pixel_entry(data, self.plan, cache_root) if self.plan is not None else None
        self.kind = DECODED  # what the last stream read (or FEATURE_CACHE)

    @property
    def _main(self) -> bool:
        return self.options.is_main

    def _agree(self, value: Any) -> Any:
        """Rank 0's value on every rank under torchrun (so all take the same branch); the value itself otherwise."""
        shard = self.options.shard
        return value if shard is None else shard.broadcast(value)

    # -- the feature cache
    def _features_entry(self, loaded: "LoadedModel", numerics: str) -> CacheEntry | None:
        if self.pixels is None or not self.options.feature_cache:
            return None
        return feature_entry(loaded, self.data, self.pixels.key, numerics, self.cache_root)

    def cached_features(self, loaded: "LoadedModel", numerics: str) -> tuple[np.ndarray | None, dict] | None:
        """``(features, errors)`` from the feature cache (features None on ranks other than 0), or None when this
        model has none for this data."""
        entry = self._features_entry(loaded, numerics)
        found = entry.load(mmap=False) if entry is not None and self._main and not self.options.refresh_cache \
            else None
        if not self._agree(found is not None):
            return None
        self.kind = FEATURE_CACHE
        return found if self._main else (None, {})

    def keep_features(self, loaded: "LoadedModel", numerics: str, features: np.ndarray, errors: dict[int, str]
                      ) -> None:
        entry = self._features_entry(loaded, numerics)
        if entry is None:
            return
        try:
            entry.write(features, errors)
        except OSError as exc:  # an unwritable cache costs a recomputation next time, never the run
            logger.warning("could not write the feature cache %s (%s)", entry.folder, exc)

    # -- batches
    def _cached_pixels(self) -> Any:
        """The committed pixel array and its errors, agreed by every rank, or None."""
        use = self.pixels is not None and self.options.pixel_cache and not self.options.refresh_cache
        found = self.pixels.load() if use and self._main else None
        if not self._agree(found is not None):
            return None
        if found is None:
            found = self.pixels.load()
            if found is None:
                raise HarnessError(f"rank {self.options.shard.rank} cannot read the pixel cache {self.pixels.folder} "
                                   f"that rank 0 reads")
        return found

    @contextlib.contextmanager
    def stream(self, batches: list[range], workers: int, device: str, dtype: Any) -> Iterator[Stream]:
        """Model inputs for these batches of dataset rows, from the cheapest source (the pixel build, if one is
        started, is closed on the way out: committed by :meth:`Stream.commit`, removed otherwise)."""
        from harness.data.testsets import TransformedDataset
        from harness.store.pixels import CropDataset, PixelBuild, iterate_cached

        cached = self._cached_pixels()
        build = None
        if cached is not None:
            self.kind = PIXEL_CACHE
            stream = Stream(iterate_cached(cached[0], cached[1], batches, pin=str(device).startswith("cuda")),
                            self._uint8_input(device, dtype), 0)
        elif self.pixels is not None and self.options.pixel_cache:
            build = PixelBuild.start(self.pixels, self.options.shard)
            self.kind = DECODED_AND_CACHED if build.active else DECODED
            stream = Stream(_loader(CropDataset(self.data, self.plan), batches, workers, device),
                            self._uint8_input(device, dtype), workers, build if build.active else None)
        else:
            self.kind = DECODED
            stream = Stream(_loader(TransformedDataset(self.data, self.transform), batches, workers, device),
                            lambda images: images.to(device=device, dtype=dtype, non_blocking=True), workers)
        try:
            yield stream
        finally:
            if build is not None:
                build.close()

    def _uint8_input(self, device: str, dtype: Any):
        from harness.store.pixels import to_model_input

        return lambda images: to_model_input(images, self.plan, device, dtype)

    # -- the pixel cache alone (sweeps build it before any model runs)
    def pixels_ready(self) -> bool:
        return self.pixels is not None and self.pixels.load() is not None

    def build_pixels(self, batch_size: int, workers: int, progress: bool = False) -> str:
        """Decode the dataset into its pixel cache entry (no model): "ready", "built", "not cacheable", or "busy"
        (another process is building it). Unreadable images are recorded in the entry, not raised."""
        from tqdm import tqdm

        from harness.core.distributed import deal
        from harness.store.pixels import CropDataset, PixelBuild

        if self.pixels is None:
            return "not cacheable"
        if self._agree(self.pixels.load() is not None if self._main else False):
            return "ready"
        build = PixelBuild.start(self.pixels, self.options.shard)
        if not build.active:
            build.close()
            return "busy"
        n, shard = len(self.data), self.options.shard
        errors: dict[int, str] = {}
        bar = tqdm(total=n, desc=f"decode | {self.data.card.name}", unit="img", disable=not (progress and self._main),
                   leave=False, dynamic_ncols=True)
        try:
            for images, indices, batch_errors in _loader(CropDataset(self.data, self.plan),
                                                         deal(n, batch_size, shard), workers, "cpu"):
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
