"""retrieval/ speed: embedding throughput against the forward limit (same run, same images, same model), and faiss
index build + query time against corpus size (generated unit vectors, D=512 like ViT-B/32).

(e0) forward limit — ``encode_image`` on the corpus's images decoded and transformed beforehand, batch 64;
(e1) ``embed`` — :func:`retrieval.embed.run_embed` end to end on the same images as img2dataset shards (read tar,
     decode, transform, image pass, fp16 commit), images only, 0 and 2 workers;
(i)  index build and query of 1,000 prompts (k=50) at 10k and 100k clustered vectors: the automatic choice (exact
     ``Flat`` at these sizes) and ``IVF512,PQ32x8`` (the kind a larger corpus or a smaller memory cap gets) at 100k,
     nprobe 32, with its recall@50 against the exact index.

Times are the wall clock of one round (printed by the last test); nothing is asserted about them.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

SHARDS = int(os.environ.get("BENCH_RETRIEVAL_SHARDS", "4"))
PER_SHARD = int(os.environ.get("BENCH_RETRIEVAL_PER_SHARD", "512"))
DIM = 512
QUERIES = 1000
K = 50
_ROWS: list[tuple[str, str, str]] = []


def _timed(benchmark, target):
    seconds: list[float] = []

    def run():
        start = time.perf_counter()
        out = target()
        seconds.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    return out, seconds[-1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from retrieval.demo_corpus import write_demo_corpus

    root = tmp_path_factory.mktemp("bench_corpus")
    return write_demo_corpus(root, shards=SHARDS, samples_per_shard=PER_SHARD)


@pytest.fixture(scope="module")
def forward_rate(corpus):
    import torch

    from harness.cards import get_model_card
    from harness.data.testsets import decode_image
    from harness.engine.imagepass import fixed_cpu_threads
    from harness.models.build import build_model
    from retrieval.corpus import expand_shards, read_shard

    loaded = build_model(get_model_card("tiny_demo_clip"))
    images = torch.stack([loaded.preprocess_val(decode_image(s.image)) for p in expand_shards(corpus["shards"])
                          for s in read_shard(p)])
    blobs = [s.image for p in expand_shards(corpus["shards"]) for s in read_shard(p)]
    start = time.perf_counter()
    for blob in blobs:
        loaded.preprocess_val(decode_image(blob))
    _ROWS.append(("(e-) decode + transform alone, one process", f"{len(blobs) / (time.perf_counter() - start):,.0f} "
                  "img/s", ""))
    with torch.inference_mode(), fixed_cpu_threads("cpu"):
        loaded.model.encode_image(images[:64], normalize=True)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), 64):
            loaded.model.encode_image(images[i:i + 64], normalize=True)
        rate = len(images) / (time.perf_counter() - start)
    _ROWS.append(("(e0) forward limit, pre-decoded tensors", f"{rate:,.0f} img/s", "1.00"))
    return rate


@pytest.mark.parametrize("workers", [0, 2])
def test_embed_throughput(benchmark, corpus, forward_rate, tmp_path, workers, monkeypatch):
    from retrieval.embed import EmbedOptions, run_embed

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    manifest, seconds = _timed(benchmark, lambda: run_embed(
        corpus["shards"], tmp_path / "index", "tiny_demo_clip",
        EmbedOptions(modalities=("image",), workers=workers, progress=False)))
    rate = manifest["count"] / seconds
    _ROWS.append((f"(e1) embed, images, {workers} workers (incl. model build)", f"{rate:,.0f} img/s",
                  f"{rate / forward_rate:.2f}"))


def _vectors(n: int, seed: int, centers: int = 2000) -> np.ndarray:
    """Unit vectors around ``centers`` random directions (embeddings of a web corpus cluster by concept; uniform
    random vectors are PQ's worst case and unlike any corpus)."""
    rng = np.random.default_rng(0)
    middle = rng.standard_normal((centers, DIM), dtype=np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    rng = np.random.default_rng(seed + 1)
    x = middle[rng.integers(centers, size=n)] + 0.7 * rng.standard_normal((n, DIM), dtype=np.float32) / DIM ** 0.5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n,key", [(10_000, None), (100_000, None), (100_000, "IVF512,PQ32x8")])
def test_index_build_and_query(benchmark, n, key):
    from retrieval.faiss_index import IndexChoice, build_faiss, choose_index

    vectors = _vectors(n, 0)
    queries = _vectors(QUERIES, 1)
    choice = IndexChoice(key, 32, 0) if key else choose_index(n, DIM, 4 * 2**30)
    index, build = _timed(benchmark, lambda: build_faiss(vectors, choice))
    start = time.perf_counter()
    _, found = index.search(queries, K)
    search = time.perf_counter() - start
    recall = ""
    if key:
        import faiss

        exact = faiss.IndexFlatIP(DIM)
        exact.add(vectors)
        _, truth = exact.search(queries, K)
        hits = sum(len(set(a) & set(b)) for a, b in zip(found, truth))
        recall = f", recall@{K} {hits / truth.size:.2f} (nprobe {choice.nprobe})"
    _ROWS.append((f"(i) {choice.key} at {n:,} x {DIM}", f"build {build:.2f} s, {QUERIES:,} queries (k={K}) "
                  f"{search * 1000:.0f} ms{recall}", ""))


def test_zz_print_summary():
    print("\n\nretrieval speed (one round each)\n")
    print(f"| {'what':<55} | {'time / rate':<60} | x forward |")
    for what, value, ratio in _ROWS:
        print(f"| {what:<55} | {value:<60} | {ratio:>9} |")
