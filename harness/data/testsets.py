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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.cards import DatasetCard
from harness.core.errors import HarnessError
from harness.data.decoding import decode_image

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
    files: list[Path] = field(default_factory=list)  # index, zips and label map read (ELEVATER layouts)
    # harness.data.sources provenance (results' data_source); fingerprinted except for the toolkit's own layout
    source: dict = field(default_factory=dict)
    hash_listing: bool = False  # also fingerprint the (relative path, size) listing of the image files

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int):
        return self._loader.load(index)

    def fingerprint(self, fresh: bool = False) -> dict:
        """What identifies the data actually read, cheaply: the image count, and for ELEVATER layouts the sha256 of
        every file read (index, zips, label map; hashed once per file identity and remembered, see
        harness.core.hashing), for an ImageFolder the hash of its (relative path, size) list — its JPEGs are not
        re-read each run. ``fresh`` (--verify-data, --refresh-cache, --no-cache): the files are hashed now, not taken
        from the remembered hashes. The fingerprint is kept on this object, so every later use in the run (the pixel
        cache's key) agrees with the one the run key was made with."""
        from harness.cards import content_hash
        from harness.core.hashing import file_sha256

        kept = vars(self).get("_fingerprint")
        if kept is not None and not fresh:
            return dict(kept)
        out: dict[str, Any] = {"layout": self.layout, "n_images": len(self)}
        if self.source and self.source.get("kind") != "elevater":
            out["source"] = dict(self.source)
        if self.files:
            out["files"] = {p.name: file_sha256(p, fresh=fresh) for p in self.files}
        if not self.files or self.hash_listing:
            root = Path(self.location)
            out["listing"] = content_hash([[i, (root / i).stat().st_size] for i in self.image_ids])
        vars(self)["_fingerprint"] = out
        return dict(out)


class ImageReadError(HarnessError):
    """One image of a dataset could not be read or decoded; the message names the dataset, file and remedy."""


SKIP_HINT = ("re-download the dataset (python -m harness prepare), or pass --skip-bad-images to leave such images "
             "out (the result records which)")


def _read_error(dataset: str, path: str, exc: BaseException) -> ImageReadError:
    import zipfile

    if "@" in path:
        zip_path, entry = path.split("@", 1)
        if isinstance(exc, KeyError):
            why = f"'{entry}' is listed in the index but missing from {zip_path}"
        elif isinstance(exc, zipfile.BadZipFile):
            why = f"{zip_path} is not a readable zip file ({exc}): a truncated or damaged download"
        else:
            why = f"cannot decode '{entry}' in {zip_path} ({type(exc).__name__}: {exc or 'no detail'})"
    elif isinstance(exc, FileNotFoundError):
        why = f"{path} does not exist"
    else:
        why = f"cannot decode {path} ({type(exc).__name__}: {exc or 'no detail'})"
    return ImageReadError(f"Dataset '{dataset}': {why}. To fix: {SKIP_HINT}.")


class _ManifestImageLoader:
    """Picklable image access by index over a vision-datasets manifest's image paths (plain files or
    ``zip@entry``), through vision-datasets' public FileReader (the toolkit's reader). Each process opens its own
    zip handles. Errors are :class:`ImageReadError` naming the dataset, zip and entry."""

    def __init__(self, dataset: str, image_paths: list[str]):
        self.dataset = dataset
        self.image_paths = image_paths
        self._reader = None
        self._pid = None

    def __getstate__(self):
        return {"dataset": self.dataset, "image_paths": self.image_paths, "_reader": None, "_pid": None}

    def load(self, index: int):
        import os

        from vision_datasets.common.data_reader import FileReader

        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = FileReader(), os.getpid()
        path = self.image_paths[index]
        try:
            # Read the entry whole, then decode from memory: PIL's JPEG parser otherwise makes dozens of small
            # Python-level zip reads per image (~5% of the decode time).
            with self._reader.open(path, "rb") as f:
                blob = f.read()
            return decode_image(blob)
        except Exception as exc:  # any failure of one image is that image's error, with its name
            raise _read_error(self.dataset, path, exc) from exc


class _FileListLoader:
    def __init__(self, dataset: str, files: list[str]):
        self.dataset = dataset
        self.files = files

    def load(self, index: int):
        try:
            with open(self.files[index], "rb") as f:
                return decode_image(f.read())
        except Exception as exc:
            raise _read_error(self.dataset, self.files[index], exc) from exc


def _expected_files(card: DatasetCard) -> list[str]:
    spec = card.eval_spec
    files = [spec.index, *spec.files]
    if card.format == "iris" and card.labelmap:
        files.append(card.labelmap)
    return files


def _data_files(folder: Path, spec: Any, card: DatasetCard) -> list[Path]:
    return [folder / f for f in _expected_files(card)]


def _find_imagefolder(card: DatasetCard, data_root: Path) -> Path | None:
    candidates = [data_root] + [data_root / d for d in card.imagefolder_dirs]
    for folder in candidates:
        if folder.is_dir() and any(_SYNSET.match(p.name) for p in folder.iterdir() if p.is_dir()):
            return folder
    return None


def open_eval_data(card: DatasetCard, data_root: str | Path) -> EvalData:
    """Open the card's evaluation split from the most faithful layout present under ``data_root`` (the toolkit's,
    the re-host's, a CLIP_benchmark webdataset: harness.data.sources); errors name every place looked."""
    from harness.data.sources import open_most_faithful

    return open_most_faithful(card, data_root)


def open_elevater_layout(card: DatasetCard, data_root: str | Path) -> EvalData:
    """Open the card's evaluation split in the ELEVATER toolkit's layout (or ImageNet's ImageFolder)."""
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise MissingDataError(f"Data root {data_root} does not exist or is not a folder.")
    folder = data_root / card.root_folder
    if card.format == "imagefolder":  # a user's own test images: one folder per class, in sorted order
        if not folder.is_dir():
            raise MissingDataError(f"Dataset '{card.name}' not found: expected the ImageFolder {folder} (one folder "
                                   f"per class, as its card's root_folder says).")
        return _open_imagefolder(card, folder)
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


_CLASS_INDEX = re.compile(r"^\d+$")


def parse_iris_line(line: str, number: int, where: str, num_classes: int | None = None) -> tuple[str, list[int]]:
    """One line of an iris index, ``<image path> <class>[,<class>...]`` (only the path may hold spaces, as in
    vision-datasets), as (path, classes); classes must be whole numbers, below ``num_classes`` when it is given.
    The error names the line (vision-datasets' own parser fails with a bare ValueError)."""
    parts = line.strip().rsplit(maxsplit=1)
    labels = parts[1].split(",") if len(parts) == 2 else []
    bad = [x for x in labels if not _CLASS_INDEX.match(x) or (num_classes is not None and int(x) >= num_classes)]
    if not labels or bad:
        what = f"label '{bad[0]}'" if bad else "no label"
        classes = f" with classes 0..{num_classes - 1}" if num_classes is not None else ""
        raise HarnessError(f"{where}, line {number}: {what} — expected '<image path> <class>[,<class>]'{classes} "
                           f"(line: {line.strip()[:120]!r}). Re-download the dataset or fix the index.")
    return parts[0], [int(x) for x in labels]


def _check_iris_index(index: Path, card: DatasetCard) -> None:
    """Every line of an iris index parses, with classes of this card (:func:`parse_iris_line`)."""
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parse_iris_line(line, number, f"Dataset '{card.name}': {index}", card.num_classes)


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
    if card.format == "iris":
        _check_iris_index(folder / spec.index, card)
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
                    _loader=_ManifestImageLoader(card.name, [str(img.img_path) for img in manifest.images]),
                    files=_data_files(folder, spec, card))


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif")


def _open_imagefolder(card: DatasetCard, folder: Path) -> EvalData:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != card.num_classes:
        per = "class, in sorted order" if card.format == "imagefolder" else "WordNet synset"
        raise HarnessError(f"Dataset '{card.name}': the ImageFolder {folder} has {len(classes)} class folders but "
                           f"the card has {card.num_classes} class names (expected one folder per {per}).")
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
                    image_ids=[str(Path(f).relative_to(folder)) for f in files], _loader=_FileListLoader(card.name, files),
                    files=[])


class TransformedDataset:
    """torch-style dataset of ``(image tensor, index, error)``; labels stay in EvalData.

    An image that cannot be read yields a placeholder tensor and its one-line :class:`ImageReadError` message
    (``error`` is "" otherwise), so the main process decides what a bad image means (fail the dataset, or skip it
    with ``--skip-bad-images``) and the message reaches the user without a DataLoader traceback around it.
    """

    def __init__(self, data: EvalData, transform: Callable):
        self.data = data
        self.transform = transform
        self._placeholder = None

    def __len__(self) -> int:
        return len(self.data)

    def _blank(self):
        if self._placeholder is None:
            from PIL import Image

            self._placeholder = self.transform(Image.new("RGB", (64, 64)))
        return self._placeholder

    def __getitem__(self, index: int):
        try:
            image = self.data.load_image(index)
        except ImageReadError as exc:
            return self._blank(), index, str(exc)
        return self.transform(image), index, ""
