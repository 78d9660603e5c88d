"""A webdataset corpus in img2dataset's output format: ``{shard:05d}.tar`` holding ``<key>.jpg`` (or .png/.webp),
``<key>.txt`` (the caption) and ``<key>.json`` (url, caption, key, status, ...) per sample."""
from __future__ import annotations

import glob
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from retrieval.layout import RetrievalError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    key: str
    image: bytes | None
    caption: str
    url: str


def expand_shards(pattern: str) -> list[Path]:
    """Shard files of a brace pattern (``/data/{00000..00099}.tar``, as webdataset and img2dataset write them), a
    glob, or a comma-separated list; every named file must exist."""
    from braceexpand import braceexpand

    names: list[str] = []
    for part in braceexpand(pattern):
        for piece in part.split(","):
            if any(c in piece for c in "*?["):
                matched = sorted(glob.glob(piece))
                if not matched:
                    raise RetrievalError(f"--shards: the glob {piece!r} matches no file.")
                names.extend(matched)
            elif piece:
                names.append(piece)
    paths = [Path(n).expanduser() for n in dict.fromkeys(names)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RetrievalError(f"--shards {pattern!r}: {len(missing)} of {len(paths)} shard file(s) missing, e.g. "
                             f"{missing[0]}. Check the pattern (img2dataset writes {{00000..NNNNN}}.tar).")
    if not paths:
        raise RetrievalError(f"--shards {pattern!r} names no shard file.")
    return paths


def shard_name(path: Path) -> str:
    """The shard's name in the index folder: its file name without ``.tar``."""
    name = path.name
    return name[:-4] if name.endswith(".tar") else path.stem


def _check_tail(path: Path, offset: int) -> None:
    """Python's tarfile stops quietly at the first unreadable header after the first member; a whole tar ends with
    at least two zero blocks. Anything else after the last member it read (garbage, or nothing: cut off) is damage."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read()
    if len(tail) < 1024 or tail.strip(b"\0"):
        why = "it ends without tar's end-of-archive blocks" if not tail.strip(b"\0") else "unreadable data follows"
        raise tarfile.ReadError(f"{why} after byte {offset} (truncated or damaged)")


def read_shard(path: Path) -> list[Sample]:
    """Every sample of a shard, in tar order. A shard that is not a readable tar (truncated, damaged, not a tar)
    raises :class:`RetrievalError` naming it; a sample without an image or caption is kept with what it has."""
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                if not key or ext.lower() not in (*IMAGE_EXTS, "txt", "json"):
                    continue
                handle = tar.extractfile(member)
                groups.setdefault(key, {})[ext.lower()] = handle.read() if handle else b""
            _check_tail(path, tar.offset)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise RetrievalError(f"corrupt shard {path}: not a readable tar ({type(exc).__name__}: {exc}). Re-download "
                             f"it (img2dataset, or `python -m training.pairs download --retry-failed`) or leave it "
                             f"out of --shards.") from exc
    samples = []
    for key, parts in groups.items():
        meta: dict = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"].decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise RetrievalError(f"corrupt shard {path}: {key}.json is not JSON ({exc}). Re-download the "
                                     f"shard or leave it out of --shards.") from exc
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        caption = parts["txt"].decode("utf-8", "replace") if "txt" in parts else str(meta.get("caption") or "")
        samples.append(Sample(key=key, image=image, caption=caption, url=str(meta.get("url") or "")))
    return samples
