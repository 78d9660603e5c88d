"""Generated test repositories in the exact layouts of the sources that hold the ELEVATER test sets today, for tests
and the offline demo of ``prepare --source`` (see harness.data.sources).

* :func:`write_clip_benchmark_split` — a CLIP_benchmark webdataset repo as ``clip-benchmark/wds_<name>`` holds it:
  ``classnames.txt`` (line i = label i), ``zeroshot_classification_templates.txt``, optionally ``dataset_type.txt``
  (``multilabel``), and per split ``<split>/nshards.txt`` + ``<split>/0.tar … <split>/{N-1}.tar``. The shards are
  written with webdataset's own ``TarWriter`` (the writer CLIP_benchmark's converter uses), members
  ``s%07d.<ext>`` numbered over the split and ``.cls`` (ASCII decimal) or ``.npy`` (multi-hot float32).
* :func:`write_rehost` — the ELEVATER re-host (``OFA-Sys/chinese-clip-eval``): per dataset an ImageFolder
  ``<member>/test/<class id>/<file>`` (ids ``0``-``9`` up to 10 classes, else zero-padded to 3 digits), ``label.txt``
  (English names, line i = id i) and ``index.json`` (the permutation that restores ELEVATER's test order from the
  ImageFolder order), either as folders or as ``ELEVATER_all.zip`` holding one ``<member>.zip`` per dataset.
* :func:`write_hf_jsonl` — a split as Facebook's Hateful Memes release holds it (``neuralcatcher/hateful_memes``):
  ``<split>.jsonl``, one JSON object a line ``{"id": 1235, "img": "img/01235.png", "label": 0, "text": ...}``, and the
  PNG images under ``img/``.

Images are given as PIL images (encoded here: webp lossless, png, or jpg) or as already encoded bytes (written as
they are, so the same bytes can be put in the ELEVATER layout too).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.core.errors import HarnessError

WDS_IMAGE_EXTS = ("webp", "jpg", "jpeg", "png")


def encode_image(image: Any, ext: str) -> bytes:
    """Encoded bytes of a PIL image as CLIP_benchmark's converter writes them (webp lossless, png, jpeg); bytes are
    returned unchanged."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    options = {"webp": {"format": "WEBP", "lossless": True}, "png": {"format": "PNG"},
               "jpg": {"format": "JPEG", "quality": 95}, "jpeg": {"format": "JPEG", "quality": 95}}
    if ext not in options:
        raise HarnessError(f"image extension '{ext}' is not one of {', '.join(options)}.")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, **options[ext])
    return buf.getvalue()


def write_clip_benchmark_split(repo_dir: str | Path, *, classnames: Sequence[str], images: Sequence[Any],
                               labels: Sequence[Any], split: str = "test", shards: int = 3, ext: str = "webp",
                               multilabel: bool = False, templates: Sequence[str] | None = None,
                               write_dataset_type: bool | None = None) -> list[Path]:
    """Write one split of a CLIP_benchmark webdataset repo under ``repo_dir``; returns the shard paths.

    ``labels``: one int per image, or (``multilabel``) one multi-hot row or list of class indices per image.
    ``shards``: the images are cut into that many contiguous shards (at least one image each).
    ``write_dataset_type``: write ``dataset_type.txt`` (default: only for multilabel, as the converter does).
    """
    import webdataset as wds

    if len(images) != len(labels):
        raise HarnessError(f"{len(images)} images but {len(labels)} labels.")
    if not 1 <= shards <= max(1, len(images)):
        raise HarnessError(f"shards must be between 1 and the number of images ({len(images)}), got {shards}.")
    if ext not in WDS_IMAGE_EXTS:
        raise HarnessError(f"ext must be one of {', '.join(WDS_IMAGE_EXTS)}, got '{ext}'.")
    repo = Path(repo_dir)
    (repo / split).mkdir(parents=True, exist_ok=True)
    (repo / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    (repo / "zeroshot_classification_templates.txt").write_text(
        "\n".join(templates or ("a photo of a {c}.",)) + "\n", encoding="utf-8")
    if write_dataset_type if write_dataset_type is not None else multilabel:
        (repo / "dataset_type.txt").write_text("multilabel\n" if multilabel else "classification\n",
                                               encoding="utf-8")
    bounds = np.linspace(0, len(images), shards + 1).round().astype(int)
    paths = []
    for shard in range(shards):
        path = repo / split / f"{shard}.tar"
        with wds.TarWriter(str(path), mtime=0) as sink:
            for index in range(bounds[shard], bounds[shard + 1]):
                sample: dict[str, Any] = {"__key__": "s%07d" % index, ext: encode_image(images[index], ext)}
                if multilabel:
                    sample["npy"] = _multi_hot(labels[index], len(classnames))
                else:
                    sample["cls"] = int(labels[index])
                sink.write(sample)
        paths.append(path)
    (repo / split / "nshards.txt").write_text(f"{shards}\n", encoding="utf-8")
    return paths


def _multi_hot(label: Any, num_classes: int) -> np.ndarray:
    arr = np.asarray(label)
    if arr.ndim == 1 and arr.shape[0] == num_classes and arr.dtype != np.int64:
        return arr.astype(np.float32)
    row = np.zeros(num_classes, dtype=np.float32)
    row[[int(x) for x in np.atleast_1d(arr)]] = 1.0
    return row


@dataclass(frozen=True)
class RehostSet:
    """One dataset of the re-host: English class names (label.txt), images and their class ids in ELEVATER's test
    order. ``index_json``: write index.json (the ImageFolder -> ELEVATER order permutation); ``ext``: image files'
    extension (bytes images are written as they are)."""
    classnames: Sequence[str]
    images: Sequence[Any]
    labels: Sequence[int]
    index_json: bool = True
    ext: str = "jpg"


def class_folder(class_id: int, num_classes: int) -> str:
    """The re-host's class folder name: ``0``-``9`` up to 10 classes, else the id zero-padded to 3 digits."""
    return str(class_id) if num_classes <= 10 else f"{class_id:03d}"


def rehost_members(dataset: RehostSet) -> dict[str, bytes]:
    """The files of one re-host dataset folder, relative to it: label.txt, test/<id>/<file>, index.json."""
    n_classes = len(dataset.classnames)
    if len(dataset.images) != len(dataset.labels):
        raise HarnessError(f"{len(dataset.images)} images but {len(dataset.labels)} labels.")
    files: dict[str, bytes] = {"label.txt": ("\n".join(dataset.classnames) + "\n").encode("utf-8")}
    names = []
    for i, (image, label) in enumerate(zip(dataset.images, dataset.labels)):
        # file names are not in ELEVATER order (hash-like), so ImageFolder's sorted order differs from it
        name = f"test/{class_folder(int(label), n_classes)}/{(i * 7919) % 100003:06d}_{i}.{dataset.ext}"
        files[name] = encode_image(image, dataset.ext)
        names.append(name)
    if dataset.index_json:
        folder_order = sorted(range(len(names)), key=lambda k: names[k])  # torchvision ImageFolder order
        position = {k: pos for pos, k in enumerate(folder_order)}
        files["index.json"] = json.dumps([position[k] for k in range(len(names))]).encode("utf-8")
    return files


def write_rehost(target: str | Path, datasets: dict[str, RehostSet], *, as_zip: bool,
                 inner_zips: bool = True) -> Path:
    """Write re-host datasets ``{member: RehostSet}``.

    ``as_zip=False``: folders ``target/<member>/...`` (what unzipping leaves). ``as_zip=True``: ``target`` is the
    outer zip (``ELEVATER_all.zip``) holding one stored ``<member>.zip`` per dataset whose entries are
    ``<member>/...``; ``inner_zips=False`` writes the per-dataset zips ``target/<member>.zip`` only (``target`` a
    folder), the form ``prepare`` leaves after fetching members."""
    target = Path(target)
    if not as_zip:
        for member, dataset in datasets.items():
            for rel, blob in rehost_members(dataset).items():
                path = target / member / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)
        return target
    inner: dict[str, bytes] = {}
    for member, dataset in datasets.items():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for rel, blob in rehost_members(dataset).items():
                zf.writestr(f"{member}/{rel}", blob)
        inner[f"{member}.zip"] = buf.getvalue()
    if not inner_zips:
        target.mkdir(parents=True, exist_ok=True)
        for name, blob in inner.items():
            (target / name).write_bytes(blob)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, blob in inner.items():
            zf.writestr(name, blob)
    return target


def write_hf_jsonl(repo_dir: str | Path, *, images: Sequence[Any], labels: Sequence[int], split: str = "dev_seen",
                   ids: Sequence[int] | None = None, texts: Sequence[str] | None = None) -> Path:
    """Write ``<split>.jsonl`` and ``img/<id>.png`` under ``repo_dir`` (ids five digits, zero-padded, as in the
    release; bytes images are written as they are); returns the jsonl's path. Lines are written as the release writes
    them (compact separators, ``/`` escaped as ``\\/``) so readers are exercised on the real text."""
    if len(images) != len(labels):
        raise HarnessError(f"{len(images)} images but {len(labels)} labels.")
    ids = list(ids) if ids is not None else [(i * 7919 + 1235) % 100000 for i in range(len(images))]
    if len(set(ids)) != len(ids) or len(ids) != len(images):
        raise HarnessError("ids must be one distinct id per image.")
    repo = Path(repo_dir)
    (repo / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, label, meme) in enumerate(zip(images, labels, ids)):
        rel = f"img/{meme:05d}.png"
        (repo / rel).write_bytes(encode_image(image, "png"))
        row = {"id": meme, "img": rel, "label": int(label), "text": texts[i] if texts else f"meme {i}"}
        lines.append(json.dumps(row, separators=(",", ":")).replace("/", "\\/"))
    path = repo / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
