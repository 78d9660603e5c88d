"""Training data: webdataset shards exactly as img2dataset writes them (``--output_format webdataset``).

Each shard ``NNNNN.tar`` holds, per sample key, ``<key>.jpg`` (the image), ``<key>.txt`` (the caption) and
``<key>.json`` (url, caption, status, sizes; unused here). Shards are listed from a brace pattern
(``/data/imagenet_10m/{00000..00897}.tar``), shuffled deterministically per epoch, split by node (rank) and then
by DataLoader worker, samples shuffled in a buffer; unreadable or incomplete samples are skipped and counted.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)

IMAGE_KEYS = "jpg;png;jpeg;webp"


class SkipCounter:
    """A webdataset error handler that skips the bad sample, logs the first few and counts them all.

    The count lives in shared memory so DataLoader worker processes (forked) add to the same number.
    """

    def __init__(self, log_first: int = 5):
        self.count = mp.Value("l", 0)
        self.log_first = log_first

    def __call__(self, exc: Exception) -> bool:
        with self.count.get_lock():
            self.count.value += 1
            n = self.count.value
        if n <= self.log_first:
            logger.warning("skipping a bad training sample (%s: %s)", type(exc).__name__, exc)
        return True  # continue with the next sample

    @property
    def value(self) -> int:
        return int(self.count.value)


def expand_urls(pattern: str) -> list[str]:
    """Shard list from img2dataset-style brace patterns; several sources may be joined with '::' (OpenCLIP)."""
    import braceexpand

    urls: list[str] = []
    for part in pattern.split("::"):
        urls.extend(braceexpand.braceexpand(part))
    return urls


@dataclass
class TrainData:
    loader: Any
    num_samples: int
    num_batches: int
    skipped: SkipCounter
    shards: list[str]


def build_pipeline(shards: list[str], preprocess: Callable, tokenizer: Callable, batch_size: int,
                   skipped: SkipCounter, seed: int = 0, keep_keys: bool = False):
    """One pass over the shards: shard shuffle, split by node and worker, sample shuffle, decode, batch."""
    import webdataset as wds

    def to_inputs(sample):
        key, image, text = sample
        out = (preprocess(image), tokenizer([text])[0])
        return (key,) + out if keep_keys else out

    return wds.DataPipeline(
        wds.SimpleShardList(shards),
        wds.detshuffle(bufsize=2000, initial=500, seed=seed),  # shard order, new permutation every epoch
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=skipped),
        wds.shuffle(bufsize=5000, initial=1000),
        wds.decode("pilrgb", handler=skipped),
        wds.to_tuple("__key__", IMAGE_KEYS, "txt", handler=skipped),
        wds.map(to_inputs, handler=skipped),
        wds.batched(batch_size, partial=False),
    )


def make_train_data(pattern: str, preprocess: Callable, tokenizer: Callable, batch_size: int, num_samples: int,
                    workers: int, world_size: int = 1, seed: int = 0, keep_keys: bool = False) -> TrainData:
    """The webdataset pipeline and its loader. As OpenCLIP: one epoch = ``num_samples`` over all ranks, i.e. a fixed
    number of batches per worker; a worker that runs out of data starts another pass over its shards."""
    import os

    import webdataset as wds

    from harness.errors import HarnessError

    shards = expand_urls(pattern)
    if not shards:
        raise HarnessError(f"--train-data '{pattern}' names no shards.")
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    absent = [s for s in local if not os.path.isfile(s)]
    if absent:
        raise HarnessError(f"--train-data: {len(absent)} of {len(shards)} shards do not exist, e.g. {absent[0]}. "
                           f"Download the pairs with img2dataset (see the README) or fix the pattern.")
    if len(shards) < world_size * max(workers, 1):
        logger.warning("%d shards for %d ranks x %d workers: some workers get no data (use more shards)",
                       len(shards), world_size, max(workers, 1))
    skipped = SkipCounter()
    pipeline = build_pipeline(shards, preprocess, tokenizer, batch_size, skipped, seed, keep_keys)
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
                     shards=shards)
