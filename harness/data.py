"""Evaluation data: ELEVATER datasets as the toolkit downloads them, and ImageNet-1K as an ImageFolder.

ELEVATER layout (what the toolkit's downloader leaves under DATASET.ROOT)::

    DATA_ROOT/<card.root_folder>/<index file>      iris text index ("test.zip@img.jpg 3", multilabel "a.jpg 0,4")
                                                   or a coco json
    DATA_ROOT/<card.root_folder>/<zip files>       uncompressed-or-deflated zips read in place ("zip@entry" paths)
    DATA_ROOT/<card.root_folder>/labels.txt        iris label map (one class a line)

Reading goes through vision-datasets 1.x (manifests, zip@ paths, EXIF orientation, RGB conversion) — the same
reader the toolkit uses. ImageNet-1K val may instead be an ImageFolder of WordNet synset folders (n01440764/...):
under one of the card's ``imagefolder_dirs`` or given directly as the data root.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.cards import DatasetCard
from harness.errors import HarnessError

logger = logging.getLogger(__name__)

_SYNSET = re.compile(r"^n\d{8}$")
_VD_TYPES = {"multiclass": "classification_multiclass", "multilabel": "classification_multilabel"}


class MissingDataError(HarnessError):
    """The dataset is not under the data root at all (eval-all lists these and carries on)."""


@dataclass
class EvalData:
    """A dataset ready for evaluation: labels up front, images decoded lazily by index."""
    card: DatasetCard
    layout: str  # "elevater-iris", "elevater-coco" or "imagefolder"
    location: str
    labels: np.ndarray  # (N,) int64 for multiclass, (N, C) uint8 for multilabel
    image_ids: list[str]
    _loader: Any  # object with .load(i) -> PIL.Image

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int):
        return self._loader.load(index)


class _ManifestImageLoader:
    """Picklable image access by index over a vision-datasets manifest's image paths (plain files or
    ``zip@entry``), through vision-datasets' public FileReader and PILImageLoader (the toolkit's reader: EXIF
    orientation, then RGB). Each process opens its own zip handles."""

    def __init__(self, image_paths: list[str]):
        self.image_paths = image_paths
        self._reader = None
        self._pid = None

    def __getstate__(self):
        return {"image_paths": self.image_paths, "_reader": None, "_pid": None}

    def load(self, index: int):
        import io
        import os

        from vision_datasets.common.data_reader import FileReader, PILImageLoader

        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = FileReader(), os.getpid()
        # Read the entry whole, then decode from memory: PIL's JPEG parser otherwise makes dozens of small
        # Python-level zip reads per image (~5% of the decode time).
        with self._reader.open(self.image_paths[index], "rb") as f:
            blob = f.read()
        image = PILImageLoader.load_from_stream(io.BytesIO(blob))
        return image.convert("RGB") if image.mode != "RGB" else image


class _FileListLoader:
    def __init__(self, files: list[str]):
        self.files = files

    def load(self, index: int):
        from vision_datasets.common.data_reader import PILImageLoader

        with open(self.files[index], "rb") as f:
            image = PILImageLoader.load_from_stream(f)
            image.load()
        return image.convert("RGB") if image.mode != "RGB" else image


def _expected_files(card: DatasetCard) -> list[str]:
    spec = card.eval_spec
    files = [spec.index, *spec.files]
    if card.format == "iris" and card.labelmap:
        files.append(card.labelmap)
    return files


def _find_imagefolder(card: DatasetCard, data_root: Path) -> Path | None:
    candidates = [data_root] + [data_root / d for d in card.imagefolder_dirs]
    for folder in candidates:
        if folder.is_dir() and any(_SYNSET.match(p.name) for p in folder.iterdir() if p.is_dir()):
            return folder
    return None


def open_eval_data(card: DatasetCard, data_root: str | Path) -> EvalData:
    """Open the card's evaluation split under ``data_root``; errors name the files that were expected."""
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise MissingDataError(f"Data root {data_root} does not exist or is not a folder.")
    folder = data_root / card.root_folder
    if card.imagefolder_dirs and not folder.is_dir():
        found = _find_imagefolder(card, data_root)
        if found is not None:
            return _open_imagefolder(card, found)
    if not folder.is_dir():
        alt = ""
        if card.imagefolder_dirs:
            alt = (" or an ImageFolder of synset folders (n01440764/...) at the data root or under one of: "
                   + ", ".join(card.imagefolder_dirs))
        raise MissingDataError(
            f"Dataset '{card.name}' not found: expected the folder {folder} holding "
            f"{', '.join(_expected_files(card))} (the ELEVATER toolkit's layout){alt}.")
    missing = [f for f in _expected_files(card) if not (folder / f).is_file()]
    if missing:
        raise HarnessError(f"Dataset '{card.name}' in {folder} is incomplete: missing {', '.join(missing)} "
                           f"(expected {', '.join(_expected_files(card))}). Re-download or re-extract it.")
    return _open_vision_dataset(card, data_root, folder)


def _open_vision_dataset(card: DatasetCard, data_root: Path, folder: Path) -> EvalData:
    from vision_datasets import DatasetInfo, Usages
    from vision_datasets.common.factory import DataManifestFactory

    spec = card.eval_spec
    info = DatasetInfo({
        "name": card.name, "version": card.version, "type": _VD_TYPES[card.type], "format": card.format,
        "root_folder": card.root_folder,
        "test": {"index_path": spec.index, "files_for_local_usage": list(spec.files)},
        "labelmap": card.labelmap,
    })
    try:
        manifest = DataManifestFactory.create(info, Usages.TEST, str(data_root))
    except (ValueError, KeyError, IndexError, json.JSONDecodeError) as exc:
        raise HarnessError(f"Dataset '{card.name}': could not parse {folder / spec.index} as a {card.format} "
                           f"{card.type} index ({type(exc).__name__}: {exc}).") from exc
    if manifest is None or not manifest.images:
        raise HarnessError(f"Dataset '{card.name}': {folder / spec.index} lists no images.")
    n_cats = len(manifest.categories) if manifest.categories else None
    if n_cats is not None and n_cats != card.num_classes:
        source = card.labelmap if card.format == "iris" else f"{spec.index} categories"
        raise HarnessError(f"Dataset '{card.name}': the data has {n_cats} classes ({folder / source}) but the card "
                           f"has {card.num_classes} class names. Wrong data folder or wrong card version?")
    n = len(manifest.images)
    if card.multilabel:
        labels = np.zeros((n, card.num_classes), dtype=np.uint8)
    else:
        labels = np.zeros(n, dtype=np.int64)
    for i, image in enumerate(manifest.images):
        ids = [lab.category_id for lab in image.labels]
        bad = [c for c in ids if c < 0 or c >= card.num_classes]
        if bad:
            raise HarnessError(f"Dataset '{card.name}': image {image.img_path} has label {bad[0]} outside "
                               f"0..{card.num_classes - 1} ({folder / spec.index}).")
        if card.multilabel:
            labels[i, ids] = 1
        else:
            if len(ids) != 1:
                raise HarnessError(f"Dataset '{card.name}' is multiclass but image {image.img_path} has "
                                   f"{len(ids)} labels ({folder / spec.index}).")
            labels[i] = ids[0]
    zips = {p.split("@", 1)[0] for p in (img.img_path for img in manifest.images) if "@" in p}
    absent = [z for z in zips if not Path(z).is_file()]
    if absent:
        raise HarnessError(f"Dataset '{card.name}': the index refers to {absent[0]}, which does not exist.")
    layout = f"elevater-{card.format}"
    if spec.num_images and n != spec.num_images:
        logger.info("%s: %d images in %s, the card expects %d (a subset or a different version?)",
                       card.name, n, folder / spec.index, spec.num_images)
    return EvalData(card=card, layout=layout, location=str(folder), labels=labels,
                    image_ids=[str(img.img_path).replace(str(folder) + "/", "") for img in manifest.images],
                    _loader=_ManifestImageLoader([str(img.img_path) for img in manifest.images]))


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif")


def _open_imagefolder(card: DatasetCard, folder: Path) -> EvalData:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) != card.num_classes:
        raise HarnessError(f"Dataset '{card.name}': the ImageFolder {folder} has {len(classes)} class folders but "
                           f"the card has {card.num_classes} class names (expected one folder per WordNet synset).")
    files: list[str] = []
    labels: list[int] = []
    for idx, cls in enumerate(classes):  # sorted synset order = the standard ImageNet class index
        for p in sorted((folder / cls).iterdir()):
            if p.suffix.lower() in _IMAGE_EXT:
                files.append(str(p))
                labels.append(idx)
    if not files:
        raise HarnessError(f"Dataset '{card.name}': no images in the class folders of {folder}.")
    return EvalData(card=card, layout="imagefolder", location=str(folder), labels=np.asarray(labels, np.int64),
                    image_ids=[str(Path(f).relative_to(folder)) for f in files], _loader=_FileListLoader(files))


class TransformedDataset:
    """torch-style dataset: (transformed image tensor, index). Labels stay in EvalData."""

    def __init__(self, data: EvalData, transform: Callable):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.transform(self.data.load_image(index)), index
