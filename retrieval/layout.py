"""What an index folder holds (clip-retrieval's folder names, so either tool reads the other's embeddings)::

    INDEX_DIR/img_emb/img_emb_<shard>.npy        (n, D) float16, unit rows, one per kept sample of the shard
    INDEX_DIR/text_emb/text_emb_<shard>.npy      (n, D) float16, unit rows
    INDEX_DIR/metadata/metadata_<shard>.parquet  key, url, caption, shard (same rows, same order)
    INDEX_DIR/shards/<shard>.json                a shard's commit marker, written last (counts, model, skipped)
    INDEX_DIR/embeddings.json                    the manifest: model, dim, modalities, shards in order, counts
    INDEX_DIR/image.index, text.index            faiss indices (``index``); row i = metadata row i
    INDEX_DIR/index.json                         how they were built (key, nprobe, count, model, dim)

A clip-retrieval / LAION knn folder (``image.index``/``text.index`` + ``metadata/*.parquet``, no ``index.json``)
is read as it is.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError

MODALITIES = ("image", "text")
EMB_FOLDERS = {"image": "img_emb", "text": "text_emb"}
MANIFEST = "embeddings.json"
INDEX_INFO = "index.json"
FORMAT = "react-elevater retrieval index folder v1"


class RetrievalError(HarnessError):
    """A problem with the user's corpus, index folder, card or flags; the message says what to do."""


@dataclass(frozen=True)
class IndexDir:
    root: Path

    def embeddings(self, modality: str, shard: str) -> Path:
        folder = EMB_FOLDERS[modality]
        return self.root / folder / f"{folder}_{shard}.npy"

    def metadata(self, shard: str) -> Path:
        return self.root / "metadata" / f"metadata_{shard}.parquet"

    def marker(self, shard: str) -> Path:
        return self.root / "shards" / f"{shard}.json"

    def index_file(self, modality: str) -> Path:
        return self.root / f"{modality}.index"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def index_info(self) -> Path:
        return self.root / INDEX_INFO


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{path}: the {what} is unreadable ({exc}); delete it and rerun the step that writes "
                             f"it.") from exc


def parse_modalities(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in MODALITIES]
    if not names or bad:
        raise RetrievalError(f"--modality: expected a comma-separated subset of {','.join(MODALITIES)}, found "
                             f"{text!r}.")
    return names


def parse_memory(text: str) -> int:
    """'4G', '512M', '100K', '2000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise RetrievalError(f"--max-index-memory: expected a size such as 4G, 512M or 100000, found {text!r}.")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)
