"""Training data: webdataset shards exactly as img2dataset writes them (``--output_format webdataset``).

Each shard ``NNNNN.tar`` holds, per sample key, ``<key>.jpg`` (the image), ``<key>.txt`` (the caption) and
``<key>.json`` (url, caption, status, sizes). img2dataset writes only its successes to the tars (failed URLs are
absent, listed in the shard's parquet); a sample whose ``.json`` has a ``status`` other than ``success`` is skipped
and counted like an unreadable or incomplete one. Shards are listed from a brace pattern
(``/data/imagenet_10m/{00000..00897}.tar``; ``python -m training.pairs stats`` writes it with the sample count).

**What an epoch reads** (OpenCLIP's webdataset epoch, made deterministic). ``N`` = ``--train-num-samples``,
``B`` = ``--batch-size``, ``R`` ranks, ``K`` = ``max(1, --workers)`` DataLoader workers per rank, ``W = R x K``.
Every worker reads exactly ``q = ceil(ceil(N / (B R)) / K)`` full batches per epoch (OpenCLIP's count), so every
rank takes ``q K`` steps. In epoch ``e`` the shard list is permuted with ``(--seed, e)`` — the same permutation on
every rank and worker: open_clip_train's ``detshuffle2`` reading the epoch from its ``SharedEpoch``, which
:meth:`TrainData.set_epoch` sets before each epoch — and dealt round-robin by rank, then by worker (as webdataset's
``split_by_node``/``split_by_worker``), so each shard belongs to exactly one worker of one rank in that epoch. Hence:

1. *Disjoint.* Within an epoch no sample is read by two ranks (nor by two workers of one rank).
2. *No repeat before exhaustion.* A worker reads its shards in passes, each readable sample once per pass, in a
   buffer shuffle seeded by ``(--seed, e, rank, worker, pass)``; batches run on across the end of a pass, so a
   worker repeats a sample only after it has read every sample of its shards.
3. *Complete when the quota covers the share.* An epoch reads every readable sample (at least once) exactly when
   every worker's ``q B`` is at least the samples its shards hold. With shards of equal size and a shard count that
   is a multiple of ``W``, that is whenever ``N`` >= the samples the shards hold (exactly once when that number is
   also a multiple of ``B W``). With uneven shards it cannot hold for every ``N``: a worker whose shards hold more
   than ``q B`` leaves the rest unread in this epoch (another epoch deals the shards differently), and a worker
   whose shards hold less wraps around to another pass over its own shards (repeating its own samples, never
   another worker's). ``N >= W x`` (the largest share) reads everything.
4. *Reproducible.* An epoch's samples and their order depend only on ``--seed``, the epoch, ``R``, ``K``, ``B``,
   ``N`` and the shard list: they differ between epochs, and a run resumed at epoch ``E`` (``--resume``) reads in
   epochs ``E, E+1, ...`` exactly what an uninterrupted run reads.

Fewer shards than ``W`` is refused before training (some worker would get none; OpenCLIP asserts the same).
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import random
from dataclasses import dataclass
from itertools import count, islice
from typing import Any, Callable

logger = logging.getLogger(__name__)

IMAGE_KEYS = "jpg;png;jpeg;webp"
# open_clip_train's buffer sizes (its _SHARD_SHUFFLE_* and _SAMPLE_SHUFFLE_*)
SHARD_SHUFFLE = (2000, 500)
SAMPLE_SHUFFLE = (5000, 1000)


class SkipCounter:
    """A webdataset error handler that skips the bad sample, logs the first few and counts them all.

    The count lives in shared memory so DataLoader worker processes (forked) add to the same number.
    """

    def __init__(self, log_first: int = 5):
        self.count = mp.Value("l", 0)
        self.log_first = log_first

    def __call__(self, exc: Exception) -> bool:
        self.note(f"{type(exc).__name__}: {exc}")
        return True  # continue with the next sample

    def note(self, reason: str) -> None:
        """Count one skipped sample (the first few are logged with ``reason``)."""
        with self.count.get_lock():
            self.count.value += 1
            n = self.count.value
        if n <= self.log_first:
            logger.warning("skipping a bad training sample (%s)", reason)

    @property
    def value(self) -> int:
        return int(self.count.value)


class DropFailedSamples:
    """Skip (and count) samples whose img2dataset ``.json`` says ``status`` is not ``success``, or is unreadable."""

    def __init__(self, skipped: SkipCounter):
        self.skipped = skipped

    def __call__(self, src):
        for sample in src:
            meta = sample.get("json")
            if meta is not None:
                try:
                    status = json.loads(meta).get("status", "success")
                except (ValueError, AttributeError):
                    status = "unreadable .json"
                if status != "success":
                    self.skipped.note(f"{sample.get('__key__')} in {sample.get('__url__')}: status {status}")
                    continue
            yield sample


def expand_urls(pattern: str) -> list[str]:
    """Shard list from img2dataset-style brace patterns; several sources may be joined with '::' (OpenCLIP)."""
    import braceexpand

    urls: list[str] = []
    for part in pattern.split("::"):
        urls.extend(braceexpand.braceexpand(part))
    return urls


def train_data_set(pattern: str) -> dict | None:
    """The summary of the availability.json beside the shards of ``pattern`` (``python -m training.pairs stats``):
    the pairs set a run trains on; None for shards made otherwise."""
    from harness.core import pairs_availability
    from harness.core.errors import HarnessError

    path = pairs_availability.find_for_pattern(pattern)
    if path is None:
        return None
    try:
        return pairs_availability.summary(pairs_availability.read(path), path.resolve())
    except HarnessError as exc:
        logger.warning("%s", exc)
        return None


def shared_epoch(epoch: int = 0):
    """open_clip_train's SharedEpoch: the epoch in shared memory, read by the DataLoader workers."""
    from open_clip_train.data import SharedEpoch

    return SharedEpoch(epoch)


def worker_slot() -> tuple[int, int]:
    """(this DataLoader worker's id, workers per rank); (0, 1) in the main process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class SplitByRankAndWorker:
    """The (permuted) shard list dealt round-robin by rank, then by worker: webdataset's split_by_node and
    split_by_worker with the rank given explicitly (not read from torch.distributed)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src):
        worker, num_workers = worker_slot()
        return islice(islice(src, self.rank, None, self.world_size), worker, None, num_workers)


class Passes:
    """A worker's samples: passes over its shards, each pass reading every shard once and shuffling samples in a
    buffer seeded by (seed, epoch, rank, worker, pass); ``passes=None`` repeats without end (the epoch's batch
    count stops it). ``samples`` turns a stream of shard dicts into decoded samples."""

    def __init__(self, samples: Callable, epoch: Any, seed: int, rank: int, passes: int | None):
        self.samples, self.epoch, self.seed, self.rank, self.passes = samples, epoch, seed, rank, passes

    def __call__(self, src):
        shards = list(src)
        epoch = self.epoch.get_value()
        worker, _ = worker_slot()
        for n in count() if self.passes is None else range(self.passes):
            rng = random.Random(f"react-train/{self.seed}/{epoch}/{self.rank}/{worker}/{n}")
            read = 0
            for sample in self.samples(iter(shards), rng):
                read += 1
                yield sample
            if read == 0:
                from harness.core.errors import HarnessError

                raise HarnessError(f"worker {worker} of rank {self.rank} read no usable sample from its shards "
                                   f"{[s['url'] for s in shards]} in epoch {epoch}: check those shards.")


def build_pipeline(shards: list[str], preprocess: Callable, tokenizer: Callable, batch_size: int,
                   skipped: SkipCounter, seed: int = 0, keep_keys: bool = False, *, rank: int = 0,
                   world_size: int = 1, epoch: Any = None, passes: int | None = 1):
    """Shard permutation for the epoch, deal by rank and worker, ``passes`` passes of sample shuffle, decode and
    batching (see the module docstring). ``epoch``: a SharedEpoch (default: epoch 0)."""
    import webdataset as wds
    from open_clip_train.data import detshuffle2

    epoch = shared_epoch(0) if epoch is None else epoch

    def to_inputs(sample):
        key, image, text = sample
        out = (preprocess(image), tokenizer([text])[0])
        return (key,) + out if keep_keys else out

    def samples(shard_dicts, rng):
        stream = DropFailedSamples(skipped)(wds.tarfile_to_samples(handler=skipped)(shard_dicts))
        stream = wds.shuffle(*SAMPLE_SHUFFLE, rng=rng)(stream)
        stream = wds.decode("pilrgb", handler=skipped)(stream)
        stream = wds.to_tuple("__key__", IMAGE_KEYS, "txt", handler=skipped)(stream)
        return wds.map(to_inputs, handler=skipped)(stream)

    return wds.DataPipeline(
        wds.SimpleShardList(shards),
        detshuffle2(*SHARD_SHUFFLE, seed=seed, epoch=epoch),  # one permutation per epoch, the same on every rank
        SplitByRankAndWorker(rank, world_size),
        Passes(samples, epoch, seed, rank, passes),
        wds.batched(batch_size, partial=False),
    )


@dataclass
class TrainData:
    loader: Any
    num_samples: int
    num_batches: int
    skipped: SkipCounter
    shards: list[str]
    shared_epoch: Any = None  # open_clip_train.data.SharedEpoch

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating ``loader`` for ``epoch``: the workers read it when the epoch's iteration starts."""
        if self.shared_epoch is not None:
            self.shared_epoch.set_value(epoch)


def check_shards(pattern: str, shards: list[str], world_size: int, workers: int) -> None:
    """Every shard exists (local paths) and there is at least one shard per worker of every rank."""
    import os

    from harness.core.errors import HarnessError

    if not shards:
        raise HarnessError(f"--train-data '{pattern}' names no shards.")
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    absent = [s for s in local if not os.path.isfile(s)]
    if absent:
        raise HarnessError(f"--train-data: {len(absent)} of {len(shards)} shards do not exist, e.g. {absent[0]}. "
                           f"Download the pairs (`make pairs PAIRS_DIR=...`, docs/pairs.md) or fix the pattern "
                           f"(`python -m training.pairs stats DIR` prints the one of the shards present).")
    needed = world_size * max(workers, 1)
    if len(shards) < needed:
        fewer = (f"use at most --workers {len(shards) // world_size}, " if len(shards) >= world_size else
                 f"run at most {len(shards)} processes, ")
        raise HarnessError(
            f"--train-data has {len(shards)} shards for {world_size} rank(s) x {max(workers, 1)} data-loading "
            f"worker(s) = {needed}: every worker needs at least one shard of its own (as open_clip_train requires). "
            f"{fewer[0].upper() + fewer[1:]}or write the data as at least {needed} shards "
            f"(img2dataset --number_sample_per_shard).")


def make_train_data(pattern: str, preprocess: Callable, tokenizer: Callable, batch_size: int, num_samples: int,
                    workers: int, world_size: int = 1, seed: int = 0, keep_keys: bool = False, rank: int = 0,
                    epoch: int = 0) -> TrainData:
    """The webdataset pipeline of ``rank`` and its loader; one epoch is OpenCLIP's (``num_samples`` over all ranks,
    a fixed number of batches per worker). Call ``set_epoch`` before each epoch (see the module docstring)."""
    import webdataset as wds

    from harness.core.errors import HarnessError

    shards = expand_urls(pattern)
    check_shards(pattern, shards, world_size, workers)
    if seed < 0:  # detshuffle2 would then seed each worker differently: the ranks' deals would overlap
        raise HarnessError(f"--seed {seed}: training data needs a seed >= 0 (the same shard order on every rank).")
    skipped = SkipCounter()
    epoch_value = shared_epoch(epoch)
    pipeline = build_pipeline(shards, preprocess, tokenizer, batch_size, skipped, seed, keep_keys, rank=rank,
                              world_size=world_size, epoch=epoch_value, passes=None)
    global_batch = batch_size * world_size
    num_batches = math.ceil(num_samples / global_batch)
    num_workers = max(1, workers)
    per_worker = math.ceil(num_batches / num_workers)
    num_batches = per_worker * num_workers
    pipeline = pipeline.with_epoch(per_worker)
    loader = wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers,
                           persistent_workers=workers > 0)
    loader.num_batches = num_batches
    loader.num_samples = num_batches * global_batch
    return TrainData(loader=loader, num_samples=loader.num_samples, num_batches=num_batches, skipped=skipped,
                     shards=shards, shared_epoch=epoch_value)
