"""``python -m retrieval demo``: the whole path offline, on generated data. A captioned corpus with planted concepts
(:mod:`retrieval.demo_corpus`) whose URLs a loopback server answers (:mod:`retrieval.serve`); the demo CLIP fitted to
it (:mod:`retrieval.demo_fit`); embed -> index; then ``make customize`` for the corpus's tiny ImageFolder card:
query -> ``training.pairs download`` (the real img2dataset, from the loopback server) -> tiny gated-image training
-> eval of the base and the tuned model on the card -> report with "Retrieved for retrieval-demo". Finally the
retrieved pairs are scored against the plant (precision, recall)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from retrieval.layout import RetrievalError


def measure(parquet: Path, planted: Path, kinds: tuple[str, ...] = ("planted", "paraphrase")) -> dict:
    """Per class: kept, relevant kept (URLs of ``kinds``), planted found; with overall precision and recall."""
    import pandas as pd

    frame = pd.read_parquet(parquet)
    truth = json.loads(planted.read_text())
    out, kept_all, relevant_all, found_all, planted_all = {}, 0, 0, 0, 0
    for name, items in truth["classes"].items():
        urls = {u.split("/img/")[-1] for u in frame.loc[frame["class"] == name, "URL"]}
        tail = {k: {u.split("/img/")[-1] for u in items[k]} for k in items}
        relevant = set().union(*(tail[k] for k in kinds))
        out[name] = {"kept": len(urls), "relevant": len(urls & relevant), "planted_found": len(urls & tail["planted"]),
                     "planted": len(tail["planted"])}
        kept_all += len(urls)
        relevant_all += len(urls & relevant)
        found_all += len(urls & tail["planted"])
        planted_all += len(tail["planted"])
    return {"precision": relevant_all / max(kept_all, 1), "planted_recall": found_all / max(planted_all, 1),
            "relevant": "+".join(kinds), "classes": out}


def run_demo(out: str | Path, shards: int = 8, samples_per_shard: int = 256, per_class: int = 15,
             mode: str = "text-to-image", epochs: int = 4) -> dict:
    from retrieval.demo_corpus import CARD_NAME, write_demo_corpus
    from retrieval.demo_fit import fit_demo_model
    from retrieval.embed import EmbedOptions, run_embed
    from retrieval.faiss_index import build_indices
    from retrieval.serve import CorpusServer

    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)  # the corpus's URLs name this run's loopback port: every demo starts fresh
    repo = Path(__file__).resolve().parent.parent
    os.environ["HARNESS_CACHE"] = str(out / "cache")  # the demo's caches stay in its folder
    with CorpusServer() as server:
        made = write_demo_corpus(out / "corpus", shards=shards, samples_per_shard=samples_per_shard,
                                 url_base=server.url)
        server.load(made["shards"])
        card = fit_demo_model(made["shards"], "tiny_demo_clip", out / "model")
        checkpoint = card.with_suffix(".pt")
        run_embed(made["shards"], out / "index", str(card), EmbedOptions(workers=1))
        build_indices(out / "index", 2**30)
        custom = out / "customize"
        cmd = ["make", "--no-print-directory", "-C", str(repo), "customize", f"DATASET={made['card']}",
               f"INDEX={out / 'index'}", f"DATA_ROOT={out}", f"CUSTOM_DIR={custom}", f"BASE_CARD={card}",
               "CUSTOMIZE_TRAIN=train-tiny-pairs", f"TINY_BASE_CKPT={checkpoint}", f"TINY_EPOCHS={epochs}",
               f"QUERY_FLAGS=--per-class {per_class} --mode {mode}",
               "PAIRS_FLAGS=--processes 1 --threads 4 --number-sample-per-shard 64 --timeout 5"]
        done = subprocess.run(cmd)
        if done.returncode:
            raise RetrievalError(f"the demo's `make customize` failed (exit {done.returncode}); its output is above.")
    scores = measure(custom / "pairs.parquet", out / "corpus" / "planted.json")
    name = f"customized_{CARD_NAME}"
    return {"report": str(custom / "reports" / name / "README.md"), "pairs": str(custom / "pairs.parquet"),
            "precision": round(scores["precision"], 3), "planted_recall": round(scores["planted_recall"], 3)}
