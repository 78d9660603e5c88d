"""The ELEVATER re-host (Hugging Face ``OFA-Sys/chinese-clip-eval``, ``ELEVATER_all.zip``) read in place, one
dataset at a time, from its extracted folder or from its own zip (``zip@entry`` paths, as the toolkit layout)::

    <member>/label.txt                English class names, line i = class id i
    <member>/index.json               optional: JSON list p with ELEVATER's k-th test image = the ImageFolder's p[k]
    <member>/test/<class id>/<image>  class ids 0-9 (up to 10 classes) or zero-padded 000-...

The ImageFolder order is torchvision's (class folders sorted by name, then files sorted by path). The zip's exact
contents could not be inspected when this was written, so everything is verified on arrival — image count = the
card's, class ids within the card's classes, label.txt mapping one-to-one onto the card's names, index.json a
permutation of the images — and what does not match is refused, naming what was found.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError
from harness.data.label_rules import read_class_names
from harness.data.testsets import _IMAGE_EXT, EvalData, _FileListLoader, _ManifestImageLoader

logger = logging.getLogger(__name__)


def _zip_prefix(names: list[str], zip_path: Path, fix: str) -> str:
    """The folder inside the zip that holds label.txt and test/: the root or one top-level folder."""
    prefixes = sorted({n[: -len("label.txt")] for n in names if n.rsplit("/", 1)[-1] == "label.txt"
                       and n.count("/") <= 1})
    prefixes = [p for p in prefixes if any(n.startswith(p + "test/") for n in names)]
    if len(prefixes) != 1:
        tops = sorted({n.split("/", 1)[0] for n in names})[:8]
        raise HarnessError(f"{zip_path}: expected label.txt and test/ at the top or in one top-level folder; found "
                           f"{len(prefixes)} such folders (top-level entries: {', '.join(tops) or 'none'}). {fix}")
    return prefixes[0]


def _class_of(rel: str, num_classes: int, where: str, fix: str) -> int:
    """The class id of ``test/<class id>/...``."""
    parts = rel.split("/")
    if len(parts) < 3 or not parts[1].isdigit():
        raise HarnessError(f"{where}: '{rel}' is not under test/<class id>/. {fix}")
    cid = int(parts[1])
    if cid >= num_classes:
        raise HarnessError(f"{where}: class folder test/{parts[1]} is outside the {num_classes} classes of "
                           f"label.txt. {fix}")
    return cid


def open_rehost(card, source, location: Path, *, strict: bool = True) -> EvalData:
    """Open a re-host dataset from its folder or its zip (see the module doc)."""
    location = Path(location)
    fix = source.remedy()
    if card.multilabel:
        raise HarnessError(f"{location}: an ImageFolder holds one class per image; the multilabel dataset "
                           f"'{card.name}' cannot be read from it.")
    as_zip = location.is_file()
    if as_zip:
        try:
            with zipfile.ZipFile(location) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                prefix = _zip_prefix(names, location, fix)
                label_text = zf.read(prefix + "label.txt").decode("utf-8")
                index_raw = zf.read(prefix + "index.json") if prefix + "index.json" in names else None
        except (zipfile.BadZipFile, OSError) as exc:
            raise HarnessError(f"{location} is not a readable zip file ({exc}): a truncated or damaged download. "
                               f"{fix}") from exc
        rels = sorted(n[len(prefix):] for n in names if n.startswith(prefix + "test/"))
        label_names = [line.strip() for line in label_text.splitlines()]
        while label_names and not label_names[-1]:
            label_names.pop()
        names_where = f"{location}@{prefix}label.txt"
    else:
        label_path = location / "label.txt"
        if not label_path.is_file():
            raise HarnessError(f"{label_path} is missing (found: "
                               f"{', '.join(sorted(p.name for p in location.iterdir())[:8]) or 'nothing'}). {fix}")
        label_names = read_class_names(label_path, "class names (label.txt)")
        index_path = location / "index.json"
        index_raw = index_path.read_bytes() if index_path.is_file() else None
        test_dir = location / "test"
        if not test_dir.is_dir():
            raise HarnessError(f"{test_dir} is missing. {fix}")
        rels = sorted(str(p.relative_to(location)) for p in test_dir.rglob("*") if p.is_file())
        names_where = str(label_path)
    from harness.data.label_rules import label_map_identity
    from harness.data.sources import label_rule

    rule = label_rule(source.label_rule)
    mapping = rule.mapping(label_names, card.classnames, names_where, fix)
    rels = [r for r in rels if Path(r).suffix.lower() in _IMAGE_EXT]
    if not rels:
        raise HarnessError(f"{location}: no images under test/<class id>/. {fix}")
    # torchvision ImageFolder order: classes sorted by folder name, then files by path within each
    rels.sort(key=lambda r: (r.split("/")[1], r))
    class_ids = np.asarray([_class_of(r, len(label_names), str(location), fix) for r in rels], dtype=np.int64)
    n = len(rels)
    fidelity = source.fidelity
    if index_raw is not None:
        try:
            order = json.loads(index_raw)
        except ValueError as exc:
            raise HarnessError(f"{location}: index.json is not valid JSON ({exc}). {fix}") from exc
        whole = isinstance(order, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in order)
        if not whole or sorted(order) != list(range(n)):
            what = f"a list of {len(order)} entries" if isinstance(order, list) else type(order).__name__
            raise HarnessError(f"{location}: index.json must be a permutation of the {n} test images' positions, "
                               f"found {what}. {fix}")
        rels = [rels[i] for i in order]
        class_ids = class_ids[np.asarray(order, dtype=np.int64)]
    else:
        fidelity = "same images in another order"
        logger.info("%s: %s has no index.json; the images are read in ImageFolder order", card.name, location)
    if n != source.expected_count:
        msg = f"{location}: {n} test images, the card '{card.name}' has {source.expected_count}."
        if strict:
            raise HarnessError(f"{msg} Not ELEVATER's test split, or an incomplete download. {fix}")
        logger.warning("%s Read anyway (not strict).", msg)
    labels = mapping[class_ids]
    provenance = {**source.provenance(), "fidelity": fidelity, "member": source.member,
                  "label_map": label_map_identity(rule, mapping)}  # in the fingerprint: a corrected rule re-runs
    if as_zip:
        paths = [f"{location}@{prefix}{r}" for r in rels]
        return EvalData(card=card, layout="elevater-rehost-zip", location=str(location), labels=labels,
                        image_ids=rels, _loader=_ManifestImageLoader(card.name, paths), files=[location],
                        source=provenance)
    meta = [location / "label.txt", *([location / "index.json"] if index_raw is not None else [])]
    return EvalData(card=card, layout="elevater-rehost", location=str(location), labels=labels, image_ids=rels,
                    _loader=_FileListLoader(card.name, [str(location / r) for r in rels]), files=meta,
                    source=provenance, hash_listing=True)
