"""A jsonl split + the images it names, read in place (the ``hf-jsonl`` source kind; Facebook's Hateful Memes release
as ``neuralcatcher/hateful_memes`` holds it, downloaded with ``hf download --local-dir DATA_ROOT/<org>/<repo>``)::

    <repo>/<split>.jsonl      one JSON object a line: {"id": 42953, "img": "img/42953.png", "label": 0, "text": "..."}
    <repo>/img/<id>.png       the images, at the "img" path relative to the repo folder

The label is an integer whose meaning the source states in its README (``label_names`` in the sources data, e.g.
0 = not-hateful, 1 = hateful); the source's label rule maps it onto the card's ELEVATER class order, checked to be a
bijection before any line is read. Every line is checked (valid JSON, ``img`` a relative path inside the repo,
``label`` a whole number among the source's labels, no image named twice), then the count (= the source's expected
count, strict) and that every image file is there; what does not match is one HarnessError naming the file, the line
and the remedy. Images are read in the jsonl's order; the rule and its mapping are in the provenance (``label_map``),
hence in the data fingerprint and the run key.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from harness.core.errors import HarnessError
from harness.data.label_rules import LabelRule, label_map_identity
from harness.data.testsets import EvalData, _FileListLoader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JsonlEntry:
    img: str  # path relative to the repo folder, as the line gives it ("img/42953.png")
    label: int  # the source's label (before the rule's mapping)


def read_jsonl_split(path: Path, n_labels: int, fix: str, text: str | None = None) -> list[JsonlEntry]:
    """The entries of ``<split>.jsonl`` (``text``: its content already read, e.g. a staged download), each line
    checked; a HarnessError naming ``path`` and the line otherwise."""
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HarnessError(f"{path}: cannot read the split file ({type(exc).__name__}: {exc}). {fix}") from exc
    entries: list[JsonlEntry] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise HarnessError(f"{where}: not a JSON object ({exc}): a damaged download? {fix}") from exc
        if not isinstance(row, dict) or "img" not in row or "label" not in row:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise HarnessError(f"{where}: expected an object with 'img' and 'label', found {keys or 'nothing'}. "
                               f"{fix}")
        img, label = row["img"], row["label"]
        rel = PurePosixPath(img) if isinstance(img, str) else None
        if rel is None or not img or rel.is_absolute() or ".." in rel.parts or "\\" in img:
            raise HarnessError(f"{where}: 'img' must be a path inside the repo folder (img/<id>.png), found {img!r}. "
                               f"{fix}")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_labels:
            raise HarnessError(f"{where}: label {label!r} is not one of the source's labels 0..{n_labels - 1} "
                               f"(label_names in the sources data). {fix}")
        if img in seen:
            raise HarnessError(f"{where}: image '{img}' is already named on line {seen[img]}. {fix}")
        seen[img] = number
        entries.append(JsonlEntry(img=rel.as_posix(), label=label))
    if not entries:
        raise HarnessError(f"{path}: no entries. {fix}")
    return entries


def check_count(entries: list[JsonlEntry], source, path: Path, fix: str, strict: bool) -> None:
    if len(entries) != source.expected_count:
        msg = (f"{path}: {len(entries)} entries, expected {source.expected_count} for {source.repo} "
               f"({source.split}).")
        if strict:
            raise HarnessError(f"{msg} Not the split the sources data describes, or an incomplete download. {fix}")
        logger.warning("%s Read anyway (not strict).", msg)


def open_hf_jsonl(card, source, repo_dir: Path, rule: LabelRule, *, strict: bool = True) -> EvalData:
    """Open ``source``'s split of ``card`` from the repo folder ``repo_dir`` (see the module doc)."""
    repo_dir = Path(repo_dir)
    fix = source.remedy()
    if card.multilabel:
        raise HarnessError(f"{repo_dir}: a jsonl label is one integer; the multilabel dataset '{card.name}' cannot be "
                           f"read from it.")
    jsonl = repo_dir / f"{source.split}.jsonl"
    if not jsonl.is_file():
        raise HarnessError(f"{jsonl} is missing. {fix}")
    mapping = rule.mapping(list(source.label_names), card.classnames,
                           f"{jsonl} (label_names of {source.repo} in the sources data)", fix)  # before any line
    entries = read_jsonl_split(jsonl, len(source.label_names), fix)
    check_count(entries, source, jsonl, fix, strict)
    missing = [e.img for e in entries if not (repo_dir / e.img).is_file()]
    if missing:
        raise HarnessError(f"{repo_dir / missing[0]} is missing ({len(missing)} of the {len(entries)} images named "
                           f"by {jsonl.name} are absent). {fix}")
    labels = mapping[np.asarray([e.label for e in entries], dtype=np.int64)]
    image_ids = [e.img for e in entries]
    return EvalData(card=card, layout="hf-jsonl", location=str(repo_dir), labels=labels, image_ids=image_ids,
                    _loader=_FileListLoader(card.name, [str(repo_dir / i) for i in image_ids]), files=[jsonl],
                    source={**source.provenance(), "label_map": label_map_identity(rule, mapping)},
                    hash_listing=True)
