"""The pixel cache: decode and crop each test image once, for every model with the same input geometry.

A protocol's transform is ``geometry (PIL: resize, crop) -> ToTensor -> Normalize(mean, std)``. ToTensor of an 8-bit
RGB crop is ``uint8 / 255`` in float32, and Normalize is ``(x - mean) / std``: both elementwise and exact to repeat
anywhere. So the cache stores the uint8 crops (N, H, W, 3) once per (data fingerprint, geometry), as a
memory-mappable ``.npy``, and :func:`to_model_input` applies ToTensor and Normalize to a whole batch on the model's
device — the same float32 operations, so probabilities are bit-identical to the plain torchvision path (tested).
Every released card uses 224 px, bicubic, shorter side, center crop: one decode of a dataset serves all of them.

Layout: ``<HARNESS_CACHE>/pixels/<dataset>-<H>x<W>-<key>/{pixels.npy, meta.json}``. ``meta.json`` is written last
and is the commit point; its mtime is the entry's "last used". Images that could not be read are listed in it by
index with their one-line reason (their rows are zero), so a warm run fails or skips them exactly as a cold one.

Integrity (harness.store.integrity): every block of rows is checked against its hash as the prefetch thread first
reads it; a damaged block drops the entry (the next run rebuilds it) and its rows are decoded again on the spot, so
the pass still scores the right pixels. An entry is written with plain writes, never through a memory map, into a
file whose space is reserved first: a full disk abandons the entry with one warning, never a SIGBUS.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from harness.store.entries import CacheEntry, entry_folder
from harness.store.integrity import note_out_of_space, pwrite_all, read_rows, row_bytes
from harness.cards import content_hash
from harness.core.errors import HarnessError

logger = logging.getLogger(__name__)

# Bump when decoding (harness.data.testsets.decode_image) or the crop layout changes what the cache holds.
PIXEL_FORMAT = 1


@dataclass(frozen=True)
class PixelPlan:
    """A transform split into its PIL geometry and its tensor tail (ToTensor + Normalize)."""
    geometry: Callable  # PIL image -> PIL image (H, W) RGB
    description: tuple[str, ...]  # what the geometry does, for the cache key
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shape: tuple[int, int, int]  # (H, W, 3) of every crop

    @property
    def key_parts(self) -> dict:
        import PIL
        import torchvision

        return {"geometry": list(self.description), "shape": list(self.shape), "pillow": PIL.__version__,
                "torchvision": torchvision.__version__, "format": PIXEL_FORMAT}


def _is_rgb_conversion(op: Any) -> bool:
    """open_clip's RGB converters are identities on the harness's decoded images, which are always RGB."""
    if getattr(op, "__name__", "") == "_convert_to_rgb":
        return True
    return type(op).__name__ == "MaybeConvertMode" and getattr(op, "mode", None) == "RGB"


def _describe(op: Any) -> str | None:
    """A stable description of a geometry op, or None when it has none (the transform is then not cached)."""
    text = repr(op).replace("\n", " ")
    if " at 0x" in text or "lambda" in text:
        return None
    return f"{type(op).__module__}.{text}"


def plan_pixels(transform: Any) -> PixelPlan | None:
    """The transform as geometry + tensor tail, or None when it is not of that form (then the plain path runs)."""
    from PIL import Image
    from torchvision import transforms as T

    ops = list(getattr(transform, "transforms", [transform]))
    if len(ops) < 2 or not isinstance(ops[-1], T.Normalize) or not isinstance(ops[-2], T.ToTensor):
        return None
    norm = ops[-1]
    geometry_ops = ops[:-2]
    description = []
    for op in geometry_ops:
        if _is_rgb_conversion(op):
            continue
        text = _describe(op)
        if text is None:
            logger.debug("no pixel cache: the transform step %r has no stable description", op)
            return None
        description.append(text)
    geometry = T.Compose(geometry_ops)
    probe = np.asarray(geometry(Image.new("RGB", (67, 49))))
    if probe.dtype != np.uint8 or probe.ndim != 3 or probe.shape[2] != 3:
        return None
    return PixelPlan(geometry=geometry, description=tuple(description), mean=tuple(map(float, norm.mean)),
                     std=tuple(map(float, norm.std)), shape=tuple(probe.shape))


def to_model_input(batch: Any, plan: PixelPlan, device: str, dtype: Any):
    """uint8 (B, H, W, 3) crops -> the normalised (B, 3, H, W) tensor the model reads, computed on ``device``:
    exactly ToTensor's ``float32 / 255`` then Normalize's ``(x - mean) / std``, in float32, then cast to the
    precision's input dtype."""
    import torch

    x = batch.to(device=device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.float32).div_(255)
    mean = torch.tensor(plan.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(plan.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


class CropDataset:
    """torch-style dataset of ``(uint8 crop (H, W, 3), index, error)``: DataLoader workers decode and crop in
    parallel; an unreadable image yields a zero crop and its one-line message (harness.data.testsets.TransformedDataset)."""

    def __init__(self, data: Any, plan: PixelPlan):
        self.data = data
        self.plan = plan

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        import torch

        from harness.data.testsets import ImageReadError

        try:
            crop = np.array(self.plan.geometry(self.data.load_image(index)), dtype=np.uint8)  # writable copy
        except ImageReadError as exc:
            return torch.zeros(self.plan.shape, dtype=torch.uint8), index, str(exc)
        if crop.shape != self.plan.shape:
            raise HarnessError(f"Dataset '{self.data.card.name}': image {self.data.image_ids[index]} cropped to "
                               f"{crop.shape}, expected {self.plan.shape}; rerun with --no-pixel-cache.")
        return torch.from_numpy(crop), index, ""


def pixel_entry(data: Any, plan: PixelPlan, cache_root: Path | None = None) -> CacheEntry:
    """The cache entry of this data under this geometry (it may not exist yet). Rows found damaged on read are
    decoded again from ``data`` (unreadable images as zero rows, as the entry holds them)."""
    key = content_hash({"data": data.fingerprint(), **plan.key_parts})
    h, w, _ = plan.shape

    def decode(start: int, stop: int) -> np.ndarray:
        crops = CropDataset(data, plan)
        return np.stack([crops[i][0].numpy() for i in range(start, stop)])

    return CacheEntry("pixels", entry_folder("pixels", f"{data.card.name}-{h}x{w}", key, cache_root), key,
                      (len(data), *plan.shape), "uint8",
                      info={"dataset": data.card.name, "n_images": len(data), "location": data.location,
                            "parts": plan.key_parts}, recompute=decode)


def iterate_cached(array: Any, errors: dict[int, str], batches: list[range], pin: bool
                   ) -> Iterator[tuple[Any, np.ndarray, list[str]]]:
    """(uint8 batch, indices, errors) for each range of rows, read from the memory map one batch ahead on a
    thread (page-in, checksum and copy overlap the model's forward). ``array`` is what
    :meth:`~harness.store.entries.CacheEntry.load` returns: its blocks are checked as they are first read."""
    import queue
    import threading

    import torch

    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read() -> None:
        try:
            for rows in batches:
                if stop.is_set():
                    return
                batch = torch.from_numpy(read_rows(array, rows.start, rows.stop))  # checked copy in RAM, writable
                if pin:
                    batch = batch.pin_memory()
                out.put((batch, np.arange(rows.start, rows.stop), [errors.get(i, "") for i in rows]))
        except BaseException as exc:  # handed to the consumer, never lost on the thread
            out.put(exc)
        out.put(None)

    thread = threading.Thread(target=read, name="pixel-cache-reader", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so the reader can finish
            try:
                out.get(timeout=0.1)
            except queue.Empty:
                pass


class PixelBuild:
    """A pixel cache entry being written: rank 0 (or the single process) holds the entry's lock and creates the
    temp array (its space reserved); every rank opens it and writes its own rows with plain writes;
    :meth:`finish` commits on rank 0 once all rows are in (callers gather first; finish gathers every rank's
    failure, which is also the barrier). Inactive — nothing is written — when another process is building the same
    entry, the ranks do not share a filesystem, or the disk cannot hold it. A rank whose write fails (a full disk)
    stops writing and goes on with the pass; the entry is then not committed. :meth:`close` releases the lock and
    removes an uncommitted temp file."""

    def __init__(self, entry: CacheEntry, shard: Any, tmp: Path | None, lock: Any):
        self.entry, self.shard, self.tmp, self.lock = entry, shard, tmp, lock
        self.main = shard is None or shard.is_main
        self.failed: str | None = None  # why this rank stopped writing
        self.fd: int | None = None
        self.offset, self.row_bytes = entry.data_offset, row_bytes(entry.shape, entry.dtype)
        if tmp is not None:
            try:
                self.fd = os.open(tmp, os.O_WRONLY)
            except OSError as exc:  # noted; the ranks stay in step and the entry is not committed
                self._fail(exc)

    @property
    def active(self) -> bool:
        return self.tmp is not None

    @classmethod
    def start(cls, entry: CacheEntry, shard: Any = None) -> "PixelBuild":
        from harness.core.atomic import LockTimeout, file_lock, is_out_of_space, remove_stale_temp_files

        tmp, lock = None, None
        if shard is None or (shard.is_main and shard.same_node):
            lock = file_lock(entry.lock_path, wait=False)
            try:
                lock.__enter__()
                remove_stale_temp_files(entry.folder)
                tmp = entry.start()
            except LockTimeout:
                logger.info("%s: another process is writing this pixel cache; decoding without it", entry.folder)
                lock = None
            except OSError as exc:
                if is_out_of_space(exc):
                    note_out_of_space(entry.cache_root, exc, f"the pixel cache of {entry.info.get('dataset')}",
                                      entry.array_path, entry.data_offset + entry.shape[0] * row_bytes(
                                          entry.shape, entry.dtype))
                else:
                    logger.warning("could not start the pixel cache %s (%s); decoding without it", entry.folder, exc)
                lock.__exit__(None, None, None)
                lock = None
        if shard is not None and shard.same_node:
            tmp = shard.broadcast(tmp)
        return cls(entry, shard, tmp, lock)

    def write(self, indices: np.ndarray, images: Any) -> None:
        if self.fd is None or self.failed:
            return
        rows = np.ascontiguousarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.uint8)
        idx = np.asarray(indices, dtype=np.int64)
        if rows.shape != (len(idx), *self.entry.shape[1:]):
            raise ValueError(f"pixel rows of shape {rows.shape} for {len(idx)} indices; expected rows of "
                             f"{self.entry.shape[1:]}")
        try:
            if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and (np.diff(idx) == 1).all():  # one run of rows
                pwrite_all(self.fd, rows, self.offset + int(idx[0]) * self.row_bytes)
            else:
                for i, row in zip(idx, rows):
                    pwrite_all(self.fd, row, self.offset + int(i) * self.row_bytes)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        from harness.core.atomic import is_out_of_space

        self.failed = f"{exc.strerror or exc}"
        what = f"the pixel cache of {self.entry.info.get('dataset')}"
        if is_out_of_space(exc):
            note_out_of_space(self.entry.cache_root, exc, what, self.entry.array_path,
                              self.offset + self.entry.shape[0] * self.row_bytes)
        else:
            logger.warning("could not write %s %s (%s); continuing without it", what, self.entry.folder, exc)

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def finish(self, errors: dict[int, str]) -> None:
        if not self.active:
            return
        self._close_fd()
        failed = self.failed
        if self.shard is not None:  # every rank has written its rows (or failed): the barrier before the commit
            notes = self.shard.gather(failed)
            failed = next((n for n in notes if n), None) if self.main else failed
        if not self.main:
            self.tmp = None
            return
        if failed:  # this rank's failure was warned about when it happened; another rank's is news here
            (logger.info if self.failed else logger.warning)(
                "%s: pixel cache not kept (%s); the next run tries again", self.entry.info.get("dataset"),
                failed if self.failed else f"another rank could not write its rows: {failed}")
            return  # close() removes the temp file
        try:
            self.entry.commit(self.tmp, errors)
        except OSError as exc:  # fsync or meta.json on a full disk: abandoned like a failed write
            self._fail(exc)
            return
        logger.info("%s: pixel cache written (%s)", self.entry.info.get("dataset"), self.entry.folder)
        self.tmp = None

    def close(self) -> None:
        self._close_fd()
        if self.tmp is not None and self.main:
            self.tmp.unlink(missing_ok=True)
        self.tmp = None
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None
