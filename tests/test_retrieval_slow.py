"""retrieval/ end to end (slow: torchrun, make, the real img2dataset from .venv-pairs, training): embeddings from
2 torchrun ranks are the bits of 1 process; `python -m retrieval demo` runs corpus -> embed -> index ->
`make customize` (query -> training.pairs download from a loopback server -> tiny gated-image training -> eval of
base and tuned model on the card -> report with "Retrieved for <card>")."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_two_torchrun_ranks_embed_the_bits_of_one_process(tmp_path):
    from retrieval.demo_corpus import write_demo_corpus
    from retrieval.layout import IndexDir

    made = write_demo_corpus(tmp_path / "corpus", shards=3, samples_per_shard=100)
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    args = ["-m", "retrieval", "embed", "--shards", made["shards"], "--model", "tiny_demo_clip", "--device", "cpu",
            "--workers", "0", "--no-progress"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          *args, "--out", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = IndexDir(tmp_path / "one"), IndexDir(tmp_path / "two")
    ma, mb = json.loads(a.manifest.read_text()), json.loads(b.manifest.read_text())
    assert ma["shards"] == mb["shards"] == ["00000", "00001", "00002"] and ma["counts"] == mb["counts"]
    for name in ma["shards"]:
        for modality in ("image", "text"):
            np.testing.assert_array_equal(np.load(a.embeddings(modality, name)), np.load(b.embeddings(modality, name)))
        pd.testing.assert_frame_equal(pd.read_parquet(a.metadata(name)), pd.read_parquet(b.metadata(name)))
    ranks = [json.loads(b.marker(n).read_text())["rank"] for n in mb["shards"]]
    assert ranks == [0, 1, 0]  # shards dealt round-robin to the ranks


def test_the_offline_demo_goes_from_a_corpus_to_a_report(tmp_path):
    """The real img2dataset (.venv-pairs, `make install-pairs`) reads the query's parquet and downloads every
    retrieved pair from the loopback server; the tuned model is evaluated on the card; the report shows the
    retrieval per class with the gain over the base."""
    out = tmp_path / "demo"
    code = ("import json, sys; from retrieval.demo import run_demo; "
            "print(json.dumps(run_demo(sys.argv[1], shards=4, samples_per_shard=128, epochs=1)))")
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    pairs = pd.read_parquet(summary["pairs"])
    availability = json.loads((out / "customize" / "pairs" / "availability.json").read_text())
    assert availability["successes"] == availability["total"] == len(pairs) == 6 * 15
    assert summary["precision"] >= 0.6  # text-to-image with the fitted demo model (docs/retrieval.md)
    report = (out / "customize" / "reports" / "customized_retrieval-demo" / "README.md").read_text()
    section = report.split("## Retrieved for retrieval-demo", 1)[1]
    assert "| tiny_demo_clip_fitted acc | customized_retrieval-demo acc | gain |" in section
    stats = json.loads((out / "customize" / "pairs.json").read_text())
    for name, info in stats["classes"].items():
        line = next(row for row in section.splitlines() if row.startswith(f"| {name} |"))
        assert line.split("|")[2].strip() == str(info["pairs"]) == "15"
