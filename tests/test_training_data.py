"""training.data under DDP: uneven img2dataset shards, 2 ranks x 2 workers, 3 epochs, --resume (training/data.py's
module docstring states the guarantee checked here)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

SIZES = (10, 23, 7, 31, 16, 13)  # samples per shard: uneven on purpose (100 in all)
ALL_KEYS = {f"{s:05d}{i:04d}" for s, n in enumerate(SIZES) for i in range(n)}
RANKS, WORKERS, BATCH = 2, 2, 4
COVERING = 224  # --train-num-samples: 14 batches of 4 per worker, more than any worker's share (at most 31+23)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """img2dataset shards 00000..00005 of SIZES samples, keys unique (shard number + index)."""
    from harness.data.synthetic import write_img2dataset_shards

    root = tmp_path_factory.mktemp("uneven")
    out = root / "shards"
    out.mkdir()
    for shard, size in enumerate(SIZES):  # the writer numbers shards from 0: keep only its last one
        work = root / f"w{shard}"
        write_img2dataset_shards(work, ["cat", "dog", "car"], n_shards=shard + 1, samples_per_shard=size)
        for name in (f"{shard:05d}.tar", f"{shard:05d}_stats.json"):
            shutil.move(work / name, out / name)
    return out


def _pattern(shards: Path, n: int = len(SIZES)) -> str:
    return f"{shards}/{{00000..{n - 1:05d}}}.tar"


def _by_worker(keys: list[str], workers: int) -> list[list[str]]:
    """A rank's keys in loader order, split by the DataLoader worker that read them (batch i: worker i % workers)."""
    batches = [keys[i:i + BATCH] for i in range(0, len(keys), BATCH)]
    return [[k for b in batches[w::workers] for k in b] for w in range(workers)]


def check_epoch(keys_by_rank: list[list[str]], steps_per_rank: int, workers: int = WORKERS) -> bool:
    """The guarantee for one epoch; returns whether the epoch read every sample."""
    streams = [s for keys in keys_by_rank for s in _by_worker(keys, workers)]
    assert [len(k) for k in keys_by_rank] == [steps_per_rank * BATCH] * len(keys_by_rank)
    ranks = [set(k) for k in keys_by_rank]
    assert not ranks[0] & ranks[1]  # disjoint across ranks
    owned = [{k[:5] for k in s} for s in streams]  # each shard is read by one worker of one rank
    assert sum(map(len, owned)) == len(set().union(*owned))
    quota, complete = steps_per_rank * BATCH // workers, True
    for stream, mine in zip(streams, owned):
        share = sum(SIZES[int(s)] for s in mine)
        first = stream[:share]
        assert len(set(first)) == len(first), "a worker repeated a sample before reading all of its shards"
        if quota >= share:  # the first pass is complete, the rest wraps over the same shards
            assert set(first) == {k for k in ALL_KEYS if k[:5] in mine} and set(stream) <= set(first)
        complete &= quota >= share
    complete &= set().union(*owned) == {k[:5] for k in ALL_KEYS}
    assert (ranks[0] | ranks[1] == ALL_KEYS) == complete
    return complete


# ----------------------------------------------------------------------------------------------------------------------
# in process: both ranks' pipelines, DataLoader workers included

def _rank_data(shards: Path, rank: int, num_samples: int, epoch: int = 0):
    from training.data import make_train_data

    return make_train_data(_pattern(shards), lambda image: torch.zeros(1),
                           lambda texts: torch.zeros(len(texts), 1, dtype=torch.long), BATCH, num_samples, WORKERS,
                           world_size=RANKS, seed=0, keep_keys=True, rank=rank, epoch=epoch)


def _read(datas, epochs) -> dict[int, list[list[str]]]:
    out = {}
    for epoch in epochs:
        out[epoch] = []
        for data in datas:
            data.set_epoch(epoch)
            out[epoch].append([k for batch in data.loader for k in batch[0]])
    return out


@pytest.mark.parametrize("num_samples", [COVERING, len(ALL_KEYS)], ids=["covering", "one-data-size"])
def test_ranks_read_disjoint_samples_every_epoch_and_resume_repeats_them(shards, num_samples):
    datas = [_rank_data(shards, r, num_samples) for r in range(RANKS)]
    steps = datas[0].num_batches
    assert steps == WORKERS * -(-num_samples // (BATCH * RANKS * WORKERS))  # OpenCLIP's count
    run = _read(datas, range(3))
    complete = [check_epoch(run[e], steps) for e in range(3)]
    if num_samples == COVERING:
        assert complete == [True] * 3
    for r in range(RANKS):
        assert len({tuple(run[e][r]) for e in range(3)}) == 3  # a new order every epoch
    resumed = _read([_rank_data(shards, r, num_samples, epoch=1) for r in range(RANKS)], (1, 2))
    assert resumed == {1: run[1], 2: run[2]}  # a run resumed at epoch 1 reads exactly the same


def test_too_few_shards_for_ranks_times_workers_is_refused(shards):
    from harness.core.errors import HarnessError
    from training.data import make_train_data

    tok = lambda texts: torch.zeros(len(texts), 1)  # noqa: E731
    with pytest.raises(HarnessError, match=r"3 shards for 2 rank\(s\) x 2 data-loading worker\(s\) = 4.*"
                                           r"--workers 1.*at least 4 shards"):
        make_train_data(_pattern(shards, 3), None, tok, BATCH, 100, 2, world_size=2)
    with pytest.raises(HarnessError, match=r"1 shards for 2 rank\(s\).*at most 1 processes"):
        make_train_data(_pattern(shards, 1), None, tok, BATCH, 100, 0, world_size=2)


# ----------------------------------------------------------------------------------------------------------------------
# torchrun, 2 CPU processes (gloo), 2 workers each

def _train_cmd(shards: Path, name: str, *extra: str, launcher: list[str] | None = None) -> list[str]:
    launcher = launcher or [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node",
                            str(RANKS), "-m", "training.main"]
    # no --logs: under torchrun it clashes with --logs-specs; ./logs of the working folder it is
    return launcher + [
        "--train-data", _pattern(shards), "--dataset-type", "webdataset", "--train-num-samples", str(COVERING),
        "--batch-size", str(BATCH), "--epochs", "3", "--workers", str(WORKERS), "--precision", "fp32",
        "--model", "react_tiny-ViT-32px", "--lock-image-unlock-gated", "--lock-text", "--warmup", "2",
        "--save-frequency", "1", "--name", name, "--model-card-dir", "none", "--debug-rank-stats", *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _stats(folder: Path, name: str) -> list[dict]:
    return [json.loads((folder / "logs" / name / f"rank{r}_stats.json").read_text()) for r in range(RANKS)]


@pytest.mark.slow
def test_torchrun_ranks_epochs_and_resume(shards, tmp_path):
    """3 epochs uninterrupted; the same run killed after epoch 1 and resumed with --resume latest."""
    out = subprocess.run(_train_cmd(shards, "full"), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    full = _stats(tmp_path, "full")
    steps = WORKERS * -(-COVERING // (BATCH * RANKS * WORKERS))
    keys = {e: [s["keys_by_epoch"][str(e)] for s in full] for e in range(3)}
    assert all(check_epoch(keys[e], steps) for e in range(3))  # disjoint and complete, every epoch
    assert keys[0] != keys[1] != keys[2]

    cmd = _train_cmd(shards, "resume", "--resume", "latest")
    first = tmp_path / "logs" / "resume" / "checkpoints" / "epoch_1.pt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not first.exists() and proc.poll() is None:
            time.sleep(0.05)
    finally:
        # as a preempted job: torchrun passes SIGTERM on to its ranks (each in a session of its own) and waits
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    saved = sorted(int(p.stem.split("_")[1]) for p in first.parent.glob("epoch_*.pt"))
    assert saved and saved[0] == 1 and 3 not in saved, saved
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"completed epoch {saved[-1]}" in (tmp_path / "logs" / "resume" / "out.log").read_text()
    resumed = _stats(tmp_path, "resume")
    assert sorted(resumed[0]["keys_by_epoch"]) == [str(e) for e in range(saved[-1], 3)]
    for e in range(saved[-1], 3):  # the resumed epochs read exactly what the uninterrupted run read
        assert [s["keys_by_epoch"][str(e)] for s in resumed] == keys[e]


@pytest.mark.slow
def test_too_few_shards_fails_before_training(shards, tmp_path):
    cmd = _train_cmd(shards, "few", launcher=[sys.executable, "-m", "training.main"])
    cmd[cmd.index("--workers") + 1] = "8"
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: --train-data has 6 shards for 1 rank(s) x 8 data-loading worker(s) = 8" in out.stderr
    assert "Use at most --workers 6, or write the data as at least 8 shards" in out.stderr
    metrics = tmp_path / "logs" / "few" / "metrics.jsonl"
    rows = metrics.read_text().splitlines() if metrics.exists() else []
    assert not [r for r in rows if "loss" in r] and not list((tmp_path / "logs" / "few").rglob("*.pt"))
