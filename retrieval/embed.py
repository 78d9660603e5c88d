"""``embed``: CLIP image and/or text embeddings of a corpus, per shard, with the harness's model building
(:func:`harness.models.build.build_model`), image pass (:func:`harness.engine.imagepass.forward_batches`: the
model's own validation transform, the precision's autocast and input dtype) and text encoding
(:func:`harness.engine.zeroshot.encode_texts`, the classifier path).

Under torchrun the shards are dealt to the ranks (rank r embeds shards r, r+W, ...); every shard is embedded whole
by one process in fixed batches, so its rows are the same bits whichever rank or how many ranks ran it. A finished
shard is committed (its arrays and metadata written atomically, then its marker ``shards/<shard>.json``) and
skipped when the command runs again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.core.atomic import write_json, write_npy, atomic_write
from retrieval.corpus import Sample, expand_shards, read_shard, shard_name
from retrieval.layout import FORMAT, IndexDir, RetrievalError, read_json

logger = logging.getLogger(__name__)


@dataclass
class EmbedOptions:
    modalities: tuple[str, ...] = ("image", "text")
    device: str | None = None
    precision: str | None = None  # default: amp on a GPU, fp32 on CPU
    batch_size: int | None = None
    workers: int = 2
    progress: bool = True


def model_identity(loaded: Any) -> dict:
    return {"model": loaded.card.name, "architecture": loaded.card.architecture,
            "weights_sha256": loaded.weights_identity["sha256"], "precision": loaded.precision}


class _ShardImages:
    """(transformed image, index, error) of a shard's samples, as the engine's image pass takes them."""

    def __init__(self, samples: Sequence[Sample], transform: Any, shard: Path):
        self.samples, self.transform, self.shard = samples, transform, shard
        self._blank = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from harness.data.testsets import decode_image

        sample = self.samples[index]
        try:
            if sample.image is None:
                raise ValueError("no image in the sample")
            return self.transform(decode_image(sample.image)), index, ""
        except Exception as exc:  # an undecodable sample is left out of the shard's rows, and named in its marker
            if self._blank is None:
                from PIL import Image

                self._blank = self.transform(Image.new("RGB", (32, 32)))
            return self._blank, index, f"{self.shard}: sample {sample.key}: {type(exc).__name__}: {exc}"


def embed_shard(loaded: Any, path: Path, out: IndexDir, options: EmbedOptions, identity: dict,
                rank: int = 0) -> dict:
    """Embed one shard and commit it; returns its marker."""
    import pandas as pd

    from harness.core.distributed import assemble
    from harness.engine.imagepass import forward_batches
    from harness.engine.zeroshot import encode_texts, make_loader

    name = shard_name(path)
    samples = read_shard(path)
    keep = np.ones(len(samples), dtype=bool)
    skipped: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    if "image" in options.modalities and samples:
        data = _ShardImages(samples, loaded.preprocess_val, path)
        loader = make_loader(data, options.batch_size, options.workers, loaded.device)
        pieces, errors = forward_batches(loaded.model, loader, loaded.device, loaded.precision, None,
                                         skip_bad_images=True, workers=options.workers, n_rows=len(samples))
        rows = assemble(pieces, len(samples))
        for i, why in errors.items():
            keep[i] = False
            skipped[samples[i].key] = why
            logger.warning("leaving out %s", why)
        arrays["image"] = rows
    if "text" in options.modalities and samples:
        arrays["text"] = encode_texts(loaded.model, loaded.tokenizer, [s.caption for s in samples], loaded.device,
                                      loaded.precision, batch_size=options.batch_size)
    if not samples:  # an empty shard commits empty arrays of the model's width
        width = encode_texts(loaded.model, loaded.tokenizer, ["-"], loaded.device, loaded.precision).shape[1]
        arrays = {m: np.zeros((0, width), np.float32) for m in options.modalities}
    kept = [s for s, k in zip(samples, keep) if k]
    dim = None
    for modality, rows in arrays.items():
        rows = rows[keep].astype(np.float32)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        write_npy(out.embeddings(modality, name), rows.astype(np.float16))
        dim = rows.shape[1]
    meta = pd.DataFrame({"key": [s.key for s in kept], "url": [s.url for s in kept],
                         "caption": [s.caption for s in kept], "shard": [name] * len(kept)})
    atomic_write(out.metadata(name), lambda f: meta.to_parquet(f, index=False))
    marker = {**identity, "shard": name, **source_identity(path), "rank": rank, "count": len(kept), "dim": dim,
              "modalities": list(options.modalities), "skipped": skipped}
    write_json(out.marker(name), marker)
    return marker


SOURCE_KEYS = ("source", "source_size", "source_mtime_ns")


def source_identity(path: Path) -> dict:
    """The source shard a marker was embedded from: resolved path, size, mtime (ns)."""
    st = Path(path).stat()
    return {"source": str(Path(path).resolve()), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _finished(out: IndexDir, name: str, identity: dict, modalities: Sequence[str],
              source: Path | None = None) -> dict | None:
    """The shard's marker when it was committed by this model with these modalities (its files present) from this
    source shard (path, size, mtime; ``source`` None: any)."""
    path = out.marker(name)
    if not path.is_file():
        return None
    marker = read_json(path, "shard marker")
    if source is not None:
        now = source_identity(source)
        if {k: marker.get(k) for k in SOURCE_KEYS} != now:
            logger.warning("shard %s: %s was embedded from %s (%s bytes, mtime %s), not from %s (%d bytes, mtime %d): "
                           "embedding it again", name, out.marker(name), marker.get("source"),
                           marker.get("source_size"), marker.get("source_mtime_ns"), now["source"],
                           now["source_size"], now["source_mtime_ns"])
            return None
    theirs = {k: marker.get(k) for k in identity}
    if theirs != identity:
        raise RetrievalError(f"{out.root} already holds shard {name} embedded by {theirs}, not {identity}. Embed into "
                             f"another --out folder (one index folder holds one model's embeddings).")
    files = [out.metadata(name)] + [out.embeddings(m, name) for m in modalities]
    if list(marker.get("modalities", [])) != list(modalities) or not all(f.is_file() for f in files):
        return None
    return marker


def write_manifest(out: IndexDir, shards: Sequence[str], identity: dict, modalities: Sequence[str],
                   model_card: str) -> dict:
    markers = [read_json(out.marker(s), "shard marker") for s in shards]
    dims = {m["dim"] for m in markers if m.get("dim")}
    if len(dims) > 1:
        raise RetrievalError(f"{out.root}: shards hold embeddings of different widths {sorted(dims)}.")
    manifest = {"format": FORMAT, **identity, "model_card": model_card, "modalities": list(modalities),
                "dim": dims.pop() if dims else None, "shards": list(shards), "counts": [m["count"] for m in markers],
                "sources": [{k: m.get(k) for k in SOURCE_KEYS} for m in markers],
                "count": sum(m["count"] for m in markers),
                "skipped": sum(len(m.get("skipped", {})) for m in markers)}
    write_json(out.manifest, manifest)
    return manifest


def run_embed(shards_pattern: str, out_dir: str | Path, model: str, options: EmbedOptions) -> dict | None:
    """Embed every shard of the pattern into ``out_dir`` (the shards this rank owns under torchrun); rank 0 writes
    the manifest once every shard is committed. Returns the manifest (None on other ranks)."""
    import torch
    from tqdm import tqdm

    from harness.cards import get_model_card
    from harness.core.distributed import shard_from_env
    from harness.engine.options import CPU_BATCH_SIZE, GPU_BATCH_SIZE
    from harness.models.build import build_model

    paths = expand_shards(shards_pattern)
    names = [shard_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise RetrievalError(f"--shards {shards_pattern!r}: two shard files share a name; each shard's name "
                             f"(its file name) must be unique.")
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shard, device = shard_from_env(device)
    precision = options.precision or ("amp" if device.startswith("cuda") else "fp32")
    batch = options.batch_size or (GPU_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE)
    options = EmbedOptions(options.modalities, device, precision, batch, options.workers, options.progress)
    loaded = build_model(get_model_card(model), device=device, precision=precision)
    identity = model_identity(loaded)
    out = IndexDir(Path(out_dir).expanduser())
    if out.manifest.is_file():
        prior = read_json(out.manifest, "manifest")
        if {k: prior.get(k) for k in identity} != identity:
            raise RetrievalError(f"{out.root} holds embeddings of {prior.get('model')} "
                                 f"(weights {str(prior.get('weights_sha256'))[:12]}, {prior.get('precision')}), not "
                                 f"of {identity['model']} ({identity['weights_sha256'][:12]}, {precision}). Use "
                                 f"another --out folder.")
    mine = list(zip(paths, names))[shard.rank::shard.world] if shard else list(zip(paths, names))
    main = shard is None or shard.is_main
    bar = tqdm(total=len(mine), unit="shard", desc=f"embed {model}" + (f" rank {shard.rank}" if shard else ""),
               disable=not options.progress, dynamic_ncols=True)
    done = images = 0
    start = time.perf_counter()
    for path, name in mine:
        if _finished(out, name, identity, options.modalities, path) is None:
            marker = embed_shard(loaded, path, out, options, identity, shard.rank if shard else 0)
            images += marker["count"]
            done += 1
        bar.update(1)
        bar.set_postfix(samples_per_s=f"{images / max(time.perf_counter() - start, 1e-9):.0f}")
    bar.close()
    logger.info("embedded %d shard(s) (%d samples), %d already done", done, images, len(mine) - done)
    if shard is not None:
        shard.barrier()
    if not main:
        return None
    missing = [n for p, n in zip(paths, names) if _finished(out, n, identity, options.modalities, p) is None]
    if missing:
        raise RetrievalError(f"{len(missing)} shard(s) have no committed embeddings (e.g. {missing[0]}); rerun embed.")
    card_file = Path(model).expanduser()  # a card named by path is found again by its absolute path
    return write_manifest(out, names, identity, options.modalities,
                          str(card_file.resolve()) if card_file.is_file() else model)
