"""``query``: pairs for a dataset card. Each class's prompts are the card's templates x its class name, encoded by
the text tower (:func:`harness.engine.zeroshot.encode_texts`, the classifier path); each prompt searches the
index for ``per_prompt`` neighbours; :mod:`retrieval.selection` keeps ``per_class`` images per class. Writes the
parquet ``training.pairs download`` and img2dataset read (``URL``, ``TEXT``, ``class``, ``score``, ``query``,
``key``, plus ``class_index`` and every hit as ``hit_queries``/``hit_scores``) and ``<stem>.json`` beside it:
per-class counts and scores, duplicate statistics and the classes that came up short."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.atomic import atomic_write, write_json
from retrieval.faiss_index import open_index
from retrieval.layout import RetrievalError
from retrieval.selection import DEDUP_RULES, gather, select

logger = logging.getLogger(__name__)

MODES = {"text-to-image": "image", "text-to-text": "text"}
SEARCH_CHUNK = 1024  # prompts per faiss search call


@dataclass
class QueryOptions:
    mode: str = "text-to-image"
    per_class: int = 50
    per_prompt: int | None = None  # default: per_class
    dedup: str = "within-class"
    model: str | None = None  # default: the index's own
    nprobe: int | None = None  # IVF lists searched (default: index.json's; faiss's 1 for a foreign index)
    device: str | None = None
    precision: str | None = None
    progress: bool = True


def class_prompts(card) -> list[list[str]]:
    return [[t.format(name) for t in card.templates] for name in card.classnames]


def image_identities(urls: list, keys: list) -> list[str]:
    """What makes two rows one image for dedup: its URL; a row with no URL (null, NaN, empty) is its key."""
    return [u if isinstance(u, str) and u else f"key:{k}" for u, k in zip(urls, keys)]


def stats_path(out: Path) -> Path:
    return out.with_suffix(".json")


def run_query(index_dir: str | Path, dataset: str, out: str | Path, options: QueryOptions) -> dict:
    import pandas as pd
    import torch
    from tqdm import tqdm

    from harness.cards import get_dataset_card, get_model_card
    from harness.engine.zeroshot import encode_texts
    from harness.models.build import build_model

    if options.mode not in MODES:
        raise RetrievalError(f"--mode: expected one of {', '.join(MODES)}, found {options.mode!r}.")
    if options.dedup not in DEDUP_RULES:
        raise RetrievalError(f"--dedup: expected one of {', '.join(DEDUP_RULES)}, found {options.dedup!r}.")
    if options.per_class < 1 or (options.per_prompt is not None and options.per_prompt < 1):
        raise RetrievalError("--per-class and --per-prompt must be at least 1.")
    out = Path(out).expanduser()
    if out.suffix != ".parquet":
        raise RetrievalError(f"--out {out}: expected a .parquet file name.")
    card = get_dataset_card(dataset)
    model_card = get_model_card(options.model) if options.model else None
    opened = open_index(index_dir, MODES[options.mode], model_card.name if model_card else None, options.nprobe)
    model_card = model_card or get_model_card(opened.info.get("model_card") or opened.model)
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = options.precision or ("amp" if device.startswith("cuda") else "fp32")  # as embed's default
    loaded = build_model(model_card, device=device, precision=precision)
    if opened.info.get("weights_sha256") and opened.info["weights_sha256"] != loaded.weights_identity["sha256"]:
        raise RetrievalError(f"index/model mismatch: {opened.path.parent} was embedded with weights "
                             f"{opened.info['weights_sha256'][:12]} but model card {loaded.card.name} now resolves to "
                             f"{loaded.weights_identity['sha256'][:12]}. Re-embed, or restore those weights.")
    prompts = class_prompts(card)
    flat = [p for ps in prompts for p in ps]
    queries = encode_texts(loaded.model, loaded.tokenizer, flat, device, precision)
    if queries.shape[1] != opened.index.d:
        raise RetrievalError(f"index/model mismatch: {opened.path} holds vectors of width {opened.index.d}, model "
                             f"{loaded.card.name} embeds text at width {queries.shape[1]}. Query with the model that "
                             f"embedded the corpus.")
    k = min(options.per_prompt or options.per_class, int(opened.index.ntotal))
    scores = np.empty((len(flat), k), np.float32)
    rows = np.empty((len(flat), k), np.int64)
    bar = tqdm(total=len(flat), unit="prompt", desc=f"query {card.name}", disable=not options.progress,
               dynamic_ncols=True)
    for start in range(0, len(flat), SEARCH_CHUNK):
        chunk = np.ascontiguousarray(queries[start:start + SEARCH_CHUNK], dtype=np.float32)
        scores[start:start + len(chunk)], rows[start:start + len(chunk)] = opened.index.search(chunk, k)
        bar.update(len(chunk))
    bar.close()
    meta = opened.metadata
    identity = image_identities(meta["url"].tolist(), meta["key"].tolist())
    found, offset = [], 0
    for ps in prompts:
        found.append(gather(scores[offset:offset + len(ps)], rows[offset:offset + len(ps)], ps, identity))
        offset += len(ps)
    selection = select(found, options.per_class, options.dedup)
    records = []
    for c, kept in enumerate(selection.kept):
        for cand in kept:
            row = meta.iloc[cand.row]
            records.append({"URL": row["url"], "TEXT": row["caption"], "class": card.classnames[c], "class_index": c,
                            "score": cand.score, "query": cand.query, "key": row["key"],
                            "hit_queries": [q for q, _ in cand.hits], "hit_scores": [s for _, s in cand.hits]})
    frame = pd.DataFrame.from_records(records, columns=["URL", "TEXT", "class", "class_index", "score", "query",
                                                        "key", "hit_queries", "hit_scores"])
    frame["score"] = frame["score"].astype(np.float32)
    atomic_write(out, lambda f: frame.to_parquet(f, index=False))
    stats = _statistics(card, opened, options, selection, k, out, loaded.card.name)
    write_json(stats_path(out), stats)
    if stats["short_classes"]:
        logger.warning("%d of %d classes got fewer than %d images: %s. Raise --per-prompt, or use a larger corpus.",
                       len(stats["short_classes"]), card.num_classes, options.per_class,
                       ", ".join(f"{n} ({c})" for n, c in list(stats["short_classes"].items())[:10]))
    return stats


def _statistics(card, opened, options: QueryOptions, selection, k: int, out: Path, model: str) -> dict:
    classes = {}
    for c, name in enumerate(card.classnames):
        kept = selection.kept[c]
        s = np.array([x.score for x in kept], dtype=np.float64)
        classes[name] = {"pairs": len(kept), "mean_score": float(s.mean()) if len(s) else None,
                         "min_score": float(s.min()) if len(s) else None,
                         "max_score": float(s.max()) if len(s) else None,
                         "candidates": selection.candidates[c], "merged_hits": selection.merged_hits[c],
                         "duplicate_rows": selection.duplicate_rows[c], "given_away": selection.given_away[c]}
    short = {n: v["pairs"] for n, v in classes.items() if v["pairs"] < options.per_class}
    return {"dataset": card.name, "dataset_card": str(card.path) if card.path else None, "mode": options.mode,
            "index": str(opened.path), "model": model, "per_class": options.per_class, "per_prompt": k,
            "dedup": options.dedup, "prompts_per_class": len(card.templates), "corpus_rows": int(opened.index.ntotal),
            "pairs": sum(v["pairs"] for v in classes.values()), "parquet": out.name,
            "duplicates": {"merged_hits": sum(selection.merged_hits), "duplicate_rows": sum(selection.duplicate_rows),
                           "images_shared_by_classes": selection.shared_images,
                           "given_away_by_global_dedup": sum(selection.given_away)},
            "short_classes": short, "classes": classes}
