"""A CLIP_benchmark webdataset split read in place (``clip-benchmark/wds_<name>`` as downloaded):

    <repo>/classnames.txt                       line i = the source's label i
    <repo>/dataset_type.txt                     optional; "multilabel" -> labels are .npy multi-hot rows
    <repo>/<split>/nshards.txt                  one integer N (never assume 10,000 per shard)
    <repo>/<split>/0.tar ... <split>/{N-1}.tar  members <key>.<webp|jpg|jpeg|png> + <key>.cls | <key>.npy

The shards' members are indexed once (their data offsets in the tar files), so images are read by index with one
seek each, in any order and from any process; labels are remapped to the card's ELEVATER class order by the
source's label rule, checked against the repo's own classnames.txt before any image is read; the rule and the
mapping are recorded in the provenance (``label_map``), hence in the data fingerprint and the run key.
"""
from __future__ import annotations

import io
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError
from harness.data.label_rules import LabelRule, label_map_identity, read_class_names
from harness.data.testsets import EvalData, ImageReadError, SKIP_HINT, decode_image

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("webp", "jpg", "jpeg", "png")


@dataclass(frozen=True)
class _Member:
    shard: int
    offset: int
    size: int
    name: str


class _TarMemberLoader:
    """Picklable image access by index over indexed tar members: each process opens its own file handles (like
    testsets._ManifestImageLoader). Errors are ImageReadError naming the dataset, shard and member."""

    def __init__(self, dataset: str, shards: list[str], members: list[_Member]):
        self.dataset = dataset
        self.shards = shards
        self.members = members
        self._handles: dict[int, object] = {}
        self._pid = None

    def __getstate__(self):
        return {"dataset": self.dataset, "shards": self.shards, "members": self.members, "_handles": {},
                "_pid": None}

    def load(self, index: int):
        import os

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        m = self.members[index]
        try:
            f = self._handles.get(m.shard)
            if f is None:
                f = self._handles[m.shard] = open(self.shards[m.shard], "rb")
            f.seek(m.offset)
            blob = f.read(m.size)
            if len(blob) != m.size:
                raise EOFError(f"{len(blob)} of {m.size} bytes")
            return decode_image(blob)
        except Exception as exc:  # one image's failure is that image's error
            raise ImageReadError(f"Dataset '{self.dataset}': cannot read '{m.name}' in {self.shards[m.shard]} "
                                 f"({type(exc).__name__}: {exc or 'no detail'}). To fix: {SKIP_HINT}.") from exc


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's split of a member name: the key is everything up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _index_shard(path: Path, shard: int, where_fix: str) -> dict[str, dict[str, object]]:
    """{key: {ext: _Member or label bytes}} of one shard; a damaged or truncated shard is a HarnessError."""
    size = path.stat().st_size
    samples: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:
                    raise HarnessError(f"{path} is truncated: member '{info.name}' ends at byte "
                                       f"{info.offset_data + info.size}, the file has {size}. {where_fix}")
                key, ext = _key_ext(info.name)
                entry = samples.setdefault(key, {})
                if ext in entry:
                    raise HarnessError(f"{path}: member '{info.name}' appears twice. {where_fix}")
                if ext in ("cls", "npy"):
                    f = tar.extractfile(info)
                    entry[ext] = f.read() if f is not None else b""
                elif ext in IMAGE_EXTS:
                    entry[ext] = _Member(shard, info.offset_data, info.size, info.name)
    except tarfile.TarError as exc:
        raise HarnessError(f"{path} is not a readable tar file ({exc}): a truncated or damaged download. "
                           f"{where_fix}") from exc
    return samples


def _read_shard_count(path: Path, fix: str) -> int:
    if not path.is_file():
        raise HarnessError(f"{path} is missing: a CLIP_benchmark split names its shard count there (the shards "
                           f"are never assumed). {fix}")
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if not text.isdigit() or int(text) < 1:
        raise HarnessError(f"{path}: expected one whole number of shards, found {text[:40]!r}. {fix}")
    return int(text)


def _parse_label(blob: bytes, ext: str, n_source: int, where: str, fix: str):
    if ext == "cls":
        text = blob.decode("ascii", errors="replace").strip()
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < n_source:
            raise HarnessError(f"{where}: label {text[:20]!r} is not a class index 0..{n_source - 1}. {fix}")
        return int(text)
    try:
        row = np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as exc:
        raise HarnessError(f"{where}: not a readable .npy array ({type(exc).__name__}: {exc}). {fix}") from exc
    row = np.asarray(row).reshape(-1)
    if row.shape[0] != n_source:
        raise HarnessError(f"{where}: multi-hot row of {row.shape[0]} values, classnames.txt has {n_source} "
                           f"classes. {fix}")
    return row


def check_label_files(card, repo_dir: Path, rule: LabelRule, fix: str) -> tuple[list[str], np.ndarray, bool]:
    """(the repo's class names, the rule's mapping onto the card's classes, multilabel) from ``classnames.txt`` and
    ``dataset_type.txt`` alone — checked before any shard is read (or, in prepare, downloaded)."""
    repo_dir = Path(repo_dir)
    names = repo_dir / "classnames.txt"
    if not names.is_file():
        raise HarnessError(f"{names} is missing: the class names give the source's label order. {fix}")
    source_names = read_class_names(names, "class names (classnames.txt)")
    mapping = rule.mapping(source_names, card.classnames, str(names), fix)
    type_file = repo_dir / "dataset_type.txt"
    dataset_type = type_file.read_text(encoding="utf-8").strip().lower() if type_file.is_file() else "classification"
    multilabel = dataset_type == "multilabel"
    if multilabel != card.multilabel:
        raise HarnessError(f"{type_file if type_file.is_file() else repo_dir}: the repo is "
                           f"{'multilabel' if multilabel else 'single-label (no dataset_type.txt)'} but the card "
                           f"'{card.name}' is {card.type}: wrong repo for this dataset? {fix}")
    return source_names, mapping, multilabel


def open_wds_split(card, source, repo_dir: Path, rule: LabelRule, *, strict: bool = True) -> EvalData:
    """Open ``source``'s split of ``card`` from the repo folder ``repo_dir`` (see the module doc)."""
    repo_dir = Path(repo_dir)
    fix = source.remedy()
    names, type_file = repo_dir / "classnames.txt", repo_dir / "dataset_type.txt"
    source_names, mapping, multilabel = check_label_files(card, repo_dir, rule, fix)  # before any image is read
    label_ext = "npy" if multilabel else "cls"
    split_dir = repo_dir / source.split
    n_shards = _read_shard_count(split_dir / "nshards.txt", fix)
    shard_paths = [split_dir / f"{i}.tar" for i in range(n_shards)]
    absent = [p for p in shard_paths if not p.is_file()]
    if absent:
        raise HarnessError(f"{absent[0]} is missing ({len(absent)} of the {n_shards} shards named by "
                           f"{split_dir / 'nshards.txt'} are absent). {fix}")
    members: list[_Member] = []
    labels: list = []
    image_ids: list[str] = []
    seen: set[str] = set()
    for shard, path in enumerate(shard_paths):
        for key, entry in _index_shard(path, shard, fix).items():
            where = f"{path}: sample '{key}'"
            if key in seen:
                raise HarnessError(f"{where} also appears in an earlier shard. {fix}")
            seen.add(key)
            images = [e for e in IMAGE_EXTS if e in entry]
            if not images:
                raise HarnessError(f"{where} has no image (.{'/.'.join(IMAGE_EXTS)}); found "
                                   f"{', '.join('.' + e for e in entry) or 'nothing'}. {fix}")
            if len(images) > 1:
                raise HarnessError(f"{where} has {len(images)} images ({', '.join(images)}). {fix}")
            if label_ext not in entry:
                raise HarnessError(f"{where} has no .{label_ext} label; found "
                                   f"{', '.join('.' + e for e in entry)}. {fix}")
            member = entry[images[0]]
            members.append(member)
            labels.append(_parse_label(entry[label_ext], label_ext, len(source_names), where, fix))
            image_ids.append(f"{source.split}/{path.name}:{member.name}")
    n = len(members)
    if n == 0:
        raise HarnessError(f"{split_dir}: the {n_shards} shard(s) hold no samples. {fix}")
    if n != source.expected_count:
        msg = (f"{split_dir}: {n} images in {n_shards} shard(s), expected {source.expected_count} for "
               f"{source.repo} ({source.split}).")
        if strict:
            raise HarnessError(f"{msg} An incomplete or different download? {fix}")
        logger.warning("%s Read anyway (not strict).", msg)
    if multilabel:
        rows = np.stack(labels) > 0
        out = np.zeros((n, card.num_classes), dtype=np.uint8)
        out[:, mapping] = rows  # source column j is the card's class mapping[j]
    else:
        out = mapping[np.asarray(labels, dtype=np.int64)]
    files = [names, *([type_file] if type_file.is_file() else []), split_dir / "nshards.txt", *shard_paths]
    return EvalData(card=card, layout="clip-benchmark-wds", location=str(repo_dir), labels=out,
                    image_ids=image_ids,
                    _loader=_TarMemberLoader(card.name, [str(p) for p in shard_paths], members),
                    files=files, source={**source.provenance(), "label_map": label_map_identity(rule, mapping)})
