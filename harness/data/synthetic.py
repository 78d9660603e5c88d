"""Deterministic synthetic data in the exact on-disk formats, for the offline demo, tests and benchmarks.

``make_demo_suite`` writes a few real ELEVATER dataset cards' layouts (same root folders, index names, zip names,
label maps) with tiny generated images, chosen so the suite exercises every metric, both index formats, multilabel,
and CENTER_CROP false:

=========================  ======  ============  ==================
card                       format  metric        notes
=========================  ======  ============  ==================
cifar-10                   iris    accuracy
oxford-iiit-pets           iris    mean-per-class
voc-2007-classification    iris    11point_mAP   multilabel "0,4"
hateful-memes              coco    roc_auc       PNG images
kitti-distance             coco    accuracy      CENTER_CROP false
imagenet-1k                coco    accuracy      1000 classes, a few images
=========================  ======  ============  ==================

Images are class-dependent (hue and a stripe pattern per class, jittered per image), so a model can learn them.
"""
from __future__ import annotations

import colorsys
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from harness.cards import DatasetCard, get_dataset_card
from harness.core.errors import HarnessError

DEMO_DATASETS = ("cifar-10", "oxford-iiit-pets", "voc-2007-classification", "hateful-memes", "kitti-distance",
                 "imagenet-1k")


def class_image(label: int | list[int], index: int, num_classes: int, size: tuple[int, int] = (48, 40),
                seed: int = 0, fmt: str = "JPEG") -> bytes:
    """Encoded image bytes: a deterministic function of (label(s), index, seed)."""
    from PIL import Image

    labels = [label] if isinstance(label, int) else list(label)
    rng = np.random.default_rng([seed, index] + labels)
    w, h = size
    canvas = np.zeros((h, w, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for k, lab in enumerate(labels):
        hue = (lab * 0.61803398875) % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9), dtype=np.float32)
        period = 4 + (lab % 5) * 2
        phase = rng.integers(0, period)
        stripes = (((xx + (yy if lab % 2 else 0) + phase) // (period // 2)) % 2).astype(np.float32)
        weight = 1.0 / len(labels)
        canvas += weight * (0.35 + 0.65 * stripes[..., None]) * rgb[None, None, :]
    canvas += rng.normal(0, 0.04, canvas.shape).astype(np.float32)
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_zip(path: Path, entries: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)


def write_iris(card: DatasetCard, data_root: Path, labels: list, seed: int = 0, size=(48, 40)) -> Path:
    """Write the card's eval split in iris format: index lines ``<zip>@<entry> <label[,label]>`` + labels.txt."""
    folder = Path(data_root) / card.root_folder
    spec = card.eval_spec
    zip_name = spec.files[0]
    entries: dict[str, bytes] = {}
    lines = []
    for i, lab in enumerate(labels):
        entry = f"{Path(zip_name).stem}/{i:05d}.jpg"
        entries[entry] = class_image(lab, i, card.num_classes, size=size, seed=seed)
        lab_text = ",".join(str(x) for x in lab) if isinstance(lab, (list, tuple)) else str(lab)
        lines.append(f"{zip_name}@{entry} {lab_text}")
    _write_zip(folder / zip_name, entries)
    (folder / spec.index).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if card.labelmap:
        # label maps hold the dataset's own class names; ours are the card's, one per line
        (folder / card.labelmap).write_text("\n".join(n.replace("\n", " ") for n in card.classnames) + "\n",
                                            encoding="utf-8")
    return folder


def write_coco(card: DatasetCard, data_root: Path, labels: list[int], seed: int = 0, size=(48, 40),
               fmt: str = "JPEG") -> Path:
    """Write the card's eval split as a coco classification json whose file names are ``<zip>@<entry>``."""
    folder = Path(data_root) / card.root_folder
    spec = card.eval_spec
    zip_name = spec.files[0]
    ext = "png" if fmt == "PNG" else "jpg"
    entries: dict[str, bytes] = {}
    images, annotations = [], []
    for i, lab in enumerate(labels):
        entry = f"{Path(zip_name).stem}/{i:05d}.{ext}"
        entries[entry] = class_image(lab, i, card.num_classes, size=size, seed=seed, fmt=fmt)
        images.append({"id": i + 1, "file_name": f"{zip_name}@{entry}", "width": size[0], "height": size[1]})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": lab + 1})
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(card.classnames)]
    _write_zip(folder / zip_name, entries)
    (folder / spec.index).write_text(json.dumps({"images": images, "annotations": annotations,
                                                 "categories": categories}), encoding="utf-8")
    return folder


def demo_labels(card: DatasetCard, images_per_class: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    c = card.num_classes
    if card.multilabel:
        out = []
        for i in range(images_per_class * c):
            first = i % c
            extra = [int(x) for x in rng.choice(c, size=rng.integers(0, 2), replace=False) if x != first]
            out.append(sorted({first, *extra}))
        return out
    if c > 100:  # ImageNet: 20 images per requested image-per-class, spread over the classes, not all 1000
        n = 20 * images_per_class
        if n <= c:
            return [int(x) for x in rng.choice(c, size=n, replace=False)]
        return [int(x) for x in rng.permutation(np.arange(n) % c)]  # every class, some more than once
    return [i % c for i in range(images_per_class * c)]


def make_demo_suite(data_root: str | Path, images_per_class: int = 4, seed: int = 0,
                    names: tuple[str, ...] = DEMO_DATASETS) -> dict[str, str]:
    """Write the demo datasets under ``data_root`` (ELEVATER layout); returns {card: folder}."""
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int) or images_per_class < 1:
        raise HarnessError(f"images per class must be a whole number of at least 1, got {images_per_class!r}.")
    data_root = Path(data_root)
    made: dict[str, str] = {}
    for name in names:
        card = get_dataset_card(name)
        labels = demo_labels(card, images_per_class, seed)
        if card.format == "iris":
            folder = write_iris(card, data_root, labels, seed=seed)
        else:
            fmt = "PNG" if name == "hateful-memes" else "JPEG"
            folder = write_coco(card, data_root, labels, seed=seed, fmt=fmt)
        made[name] = str(folder)
    return made


def write_img2dataset_shards(out: str | Path, classnames: list[str] | tuple[str, ...], n_shards: int = 4,
                             samples_per_shard: int = 64, seed: int = 1, size: tuple[int, int] = (48, 40),
                             corrupt_every: int = 0) -> list[Path]:
    """Image-text shards laid out as img2dataset's webdataset output: ``{00000..N}.tar`` holding ``<key>.jpg``,
    ``<key>.txt`` and ``<key>.json`` per sample (key = 5-digit shard + 4-digit index), plus ``<shard>_stats.json``.

    Captions name the class ("a photo of a {class}.") of a class-dependent image (:func:`class_image`), so a model
    can learn the pairing. ``corrupt_every=k`` replaces every k-th image with undecodable bytes (skip tests).
    """
    import tarfile
    import time

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    n = 0
    for shard in range(n_shards):
        path = out / f"{shard:05d}.tar"
        successes = 0
        with tarfile.open(path, "w") as tar:
            for i in range(samples_per_shard):
                key = f"{shard:05d}{i:04d}"
                label = int(rng.integers(len(classnames)))
                caption = f"a photo of a {classnames[label]}."
                n += 1
                image = class_image(label, 10_000 + n, len(classnames), size=size, seed=seed)
                if corrupt_every and n % corrupt_every == 0:
                    image = b"\xff\xd8 this is not a jpeg"
                meta = {"url": f"https://example.invalid/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "error_message": None, "width": size[0], "height": size[1],
                        "original_width": size[0], "original_height": size[1], "exif": "{}"}
                for ext, blob in (("jpg", image), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(blob)
                    info.mtime = int(time.time())
                    tar.addfile(info, io.BytesIO(blob))
                successes += 1
        stats = {"count": samples_per_shard, "successes": successes, "failed_to_download": 0,
                 "failed_to_resize": 0, "status_dict": {"success": successes}}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
        paths.append(path)
    return paths
