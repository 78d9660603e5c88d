"""``index``: faiss inner-product indices over the committed embeddings, and opening an index folder for search
(ours, or a clip-retrieval / LAION knn folder as it is).

autofaiss (which REACT used) pins numpy<2 and pandas<3 (autofaiss 2.18.0, the latest), so it cannot live beside
this project's numpy 2 / pandas 3; the index is chosen here, by size and memory cap, with faiss's own
``index_factory``: an exact ``Flat`` index while it fits the cap and the corpus is small (up to
:data:`EXACT_MAX_ROWS`), else ``IVF<nlist>,PQ<m>x8`` with the largest code size ``m`` that fits the cap.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.core.atomic import atomic_write, write_json
from retrieval.layout import FORMAT, IndexDir, RetrievalError, read_json

logger = logging.getLogger(__name__)

EXACT_MAX_ROWS = 200_000  # exact search up to here (a few hundred MB at D=512), as long as it fits the cap
TRAIN_PER_LIST = 64  # IVF training vectors per inverted list (faiss warns below 39)
PQ_CODE_SIZES = (64, 48, 32, 24, 16, 8, 4)
MAX_NPROBE = 128  # inverted lists searched per query (1/16 of them, at most this many)


@dataclass(frozen=True)
class IndexChoice:
    key: str  # faiss index_factory string
    nprobe: int  # inverted lists searched (0: not an IVF index)
    bytes_estimate: int


def choose_index(n: int, dim: int, max_memory: int) -> IndexChoice:
    """Exact Flat while it fits ``max_memory`` and ``n <= EXACT_MAX_ROWS``; else IVF-PQ with the largest code that
    fits. A cap too small for any code is refused."""
    flat = n * dim * 4
    if n <= EXACT_MAX_ROWS and flat <= max_memory:
        return IndexChoice("Flat", 0, flat)
    nlist = 2 ** max(4, min(16, round(math.log2(4 * math.sqrt(n)))))
    for m in PQ_CODE_SIZES:
        if dim % m:
            continue
        need = n * (m + 8) + nlist * dim * 4 + 256 * dim * 4
        if need <= max_memory:
            return IndexChoice(f"IVF{nlist},PQ{m}x8", max(1, min(nlist // 16, MAX_NPROBE)), need)
    raise RetrievalError(f"--max-index-memory {max_memory / 2**20:.0f} MiB cannot hold {n:,} vectors of width {dim} "
                         f"even at 4 bytes each (about {n * 12 / 2**20:.0f} MiB); raise it.")


ADD_CHUNK = 65_536  # rows converted to float32 and added at a time


def load_embeddings(out: IndexDir, manifest: dict, modality: str) -> list[np.ndarray]:
    """The committed fp16 embeddings of ``modality``, one memory-mapped array per shard in manifest order (nothing
    is read into RAM here), after checking each shard's rows against its metadata rows."""
    import pyarrow.parquet as pq

    parts = []
    for name, count in zip(manifest["shards"], manifest["counts"]):
        path = out.embeddings(modality, name)
        if not path.is_file():
            raise RetrievalError(f"{path} is missing: shard {name} has no {modality} embeddings. Rerun embed with "
                                 f"--modality {modality}.")
        rows = np.load(path, mmap_mode="r")
        meta_rows = pq.ParquetFile(out.metadata(name)).metadata.num_rows
        if rows.shape[0] != count or meta_rows != count or rows.shape[1] != manifest["dim"]:
            raise RetrievalError(f"index/corpus mismatch in shard {name}: {path} holds {rows.shape[0]} rows of width "
                                 f"{rows.shape[1]}, its metadata {meta_rows} rows, the manifest says {count} of width "
                                 f"{manifest['dim']}. Delete {out.marker(name)} and rerun embed.")
        parts.append(rows)
    return parts


def _rows(parts: Sequence[np.ndarray], wanted: np.ndarray) -> np.ndarray:
    """Rows ``wanted`` (sorted global row numbers) of the concatenation of ``parts``, as float32."""
    out = np.empty((len(wanted), parts[0].shape[1]), np.float32)
    start = done = 0
    for part in parts:
        stop = start + len(part)
        mine = wanted[(wanted >= start) & (wanted < stop)]
        out[done:done + len(mine)] = part[mine - start]
        done += len(mine)
        start = stop
    return out


def build_faiss(parts: np.ndarray | Sequence[np.ndarray], choice: IndexChoice, seed: int = 0,
                chunk: int = ADD_CHUNK) -> Any:
    """The index of the rows of ``parts`` (one array, or several taken in order; fp16 or float32, memory-mapped or
    not): an IVF index is trained on a seeded random sample of the rows; rows are added ``chunk`` at a time as
    float32, so the corpus is never in RAM whole."""
    import faiss

    if isinstance(parts, np.ndarray):
        parts = [parts]
    dim = parts[0].shape[1]
    total = sum(len(p) for p in parts)
    index = faiss.index_factory(dim, choice.key, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        nlist = faiss.extract_index_ivf(index).nlist
        take = min(total, max(TRAIN_PER_LIST * nlist, 10_000))
        index.train(_rows(parts, np.sort(rng.choice(total, take, replace=False))))
    for part in parts:
        for start in range(0, len(part), chunk):
            index.add(np.ascontiguousarray(part[start:start + chunk], dtype=np.float32))
    if choice.nprobe:
        faiss.extract_index_ivf(index).nprobe = choice.nprobe
    return index


def write_faiss(index: Any, path: Path) -> None:
    import faiss

    blob = faiss.serialize_index(index)
    atomic_write(path, lambda f: f.write(blob.tobytes()), size=int(blob.nbytes))


def manifest_digest(out: IndexDir) -> str:
    """sha256 of the embeddings manifest (it names every shard's source, counts and model): what an index was built
    from."""
    import hashlib

    return hashlib.sha256(out.manifest.read_bytes()).hexdigest()


def build_indices(index_dir: str | Path, max_memory: int, key: str | None = None) -> dict:
    """Build ``<modality>.index`` for every embedded modality of ``index_dir`` and write ``index.json``."""
    out = IndexDir(Path(index_dir).expanduser())
    if not out.manifest.is_file():
        raise RetrievalError(f"{out.root} has no {out.manifest.name}: embed a corpus into it first "
                             f"(python -m retrieval embed --out {out.root} ...), or point query at a clip-retrieval "
                             f"index folder directly.")
    manifest = read_json(out.manifest, "manifest")
    info = {"format": FORMAT, **{k: manifest.get(k) for k in ("model", "model_card", "architecture",
                                                               "weights_sha256", "precision", "dim")},
            "count": manifest["count"], "shards": manifest["shards"], "metric": "inner_product",
            "embeddings_sha256": manifest_digest(out), "indices": {}}
    for modality in manifest["modalities"]:
        parts = load_embeddings(out, manifest, modality)
        rows = sum(len(p) for p in parts)
        if rows == 0:
            raise RetrievalError(f"{out.root}: no {modality} embeddings to index (every shard empty).")
        choice = IndexChoice(key, 8 if key.startswith("IVF") else 0, 0) if key else choose_index(
            rows, parts[0].shape[1], max_memory)
        logger.info("%s: %d vectors -> %s", modality, rows, choice.key)
        index = build_faiss(parts, choice)
        write_faiss(index, out.index_file(modality))
        info["indices"][modality] = {"file": out.index_file(modality).name, "key": choice.key,
                                     "nprobe": choice.nprobe, "count": int(index.ntotal)}
    write_json(out.index_info, info)
    return info


@dataclass
class OpenIndex:
    index: Any
    metadata: Any  # pandas DataFrame: key, url, caption (row i = index id i)
    model: str | None  # the model that embedded it (None for a clip-retrieval folder)
    info: dict
    path: Path


def _read_index(path: Path) -> Any:
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        try:
            return faiss.read_index(str(path))
        except RuntimeError as exc:
            raise RetrievalError(f"{path} is not a readable faiss index ({exc}). Rebuild it "
                                 f"(python -m retrieval index {path.parent}).") from exc


def _read_metadata(root: Path, shards: list[str] | None) -> Any:
    import pandas as pd

    folder = root / "metadata"
    if shards is not None:
        files = [IndexDir(root).metadata(s) for s in shards]
    else:
        # clip-retrieval and autofaiss take the parts in plain file-name order (img_emb_10 before img_emb_2)
        files = sorted(folder.glob("*.parquet"), key=lambda p: p.name) if folder.is_dir() else []
        files = files or sorted(root.glob("*.parquet"), key=lambda p: p.name)
    if not files:
        raise RetrievalError(f"{root}: no metadata parquet (expected {folder}/*.parquet with url and caption "
                             f"columns, as clip-retrieval writes).")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    lower = {c.lower(): c for c in frame.columns}
    for want, alternatives in (("url", ("url",)), ("caption", ("caption", "text")), ("key", ("key", "image_path"))):
        found = next((lower[a] for a in alternatives if a in lower), None)
        frame[want] = _text_column(frame[found]) if found else ([""] * len(frame) if want != "key" else
                                                              [str(i) for i in range(len(frame))])
    return frame[["key", "url", "caption"]]


def _text_column(column: Any) -> Any:
    """Strings of a metadata column; a null (None, NaN) is "" (pandas' astype(str) would make it "nan"/"None")."""
    return column.astype(object).where(column.notna(), "").astype(str)


def open_index(index_dir: str | Path, modality: str, model: str | None = None, nprobe: int | None = None
               ) -> OpenIndex:
    """An index folder's ``<modality>.index`` with its metadata rows, checked against each other (count) and
    against the model the caller means to query it with (name)."""
    root = Path(index_dir).expanduser()
    out = IndexDir(root)
    path = out.index_file(modality)
    if not root.is_dir():
        raise RetrievalError(f"--index {root}: no such folder (expected an index folder: python -m retrieval embed + "
                             f"index, or a clip-retrieval folder with {modality}.index and metadata/*.parquet).")
    if not path.is_file():
        found = sorted(p.name for p in root.glob("*.index")) if root.is_dir() else []
        raise RetrievalError(f"{path} not found (found: {', '.join(found) or 'none'}): this mode needs the "
                             f"{modality} index; build it with `python -m retrieval index {root}` after embedding "
                             f"--modality {modality}.")
    info = read_json(out.index_info, "index description") if out.index_info.is_file() else {}
    if info and model and info.get("model") != model:
        raise RetrievalError(f"index/model mismatch: {root} was embedded with model {info.get('model')}, but the "
                             f"query asks for {model}. Query with --model {info.get('model')} (or leave --model out), "
                             f"or embed the corpus with {model}.")
    if not info and not model:
        raise RetrievalError(f"{root} has no index.json (a clip-retrieval / LAION folder): name the CLIP model that "
                             f"made its embeddings with --model CARD.")
    if info and out.manifest.is_file() and info.get("embeddings_sha256") != manifest_digest(out):
        raise RetrievalError(f"index/corpus mismatch: {out.index_info} was built from other embeddings than the "
                             f"{out.manifest.name} now in {root} (embed ran again since, on changed or other shards). "
                             f"Rebuild the index: python -m retrieval index {root}.")
    index = _read_index(path)
    metadata = _read_metadata(root, info.get("shards"))
    if index.ntotal != len(metadata) or (info and info.get("count") != index.ntotal):
        raise RetrievalError(f"index/corpus mismatch: {path} holds {index.ntotal:,} vectors but the metadata of "
                             f"{root} has {len(metadata):,} rows" + (f" and index.json says {info.get('count'):,}"
                                                                     if info else "")
                             + ". Rebuild the index (python -m retrieval index) from the same embeddings.")
    nprobe = nprobe or info.get("indices", {}).get(modality, {}).get("nprobe")
    if nprobe:
        import faiss

        try:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        except RuntimeError as exc:
            raise RetrievalError(f"--nprobe: {path} is not an IVF index ({exc}); leave --nprobe out.") from exc
    return OpenIndex(index=index, metadata=metadata, model=info.get("model") or model, info=info, path=path)
