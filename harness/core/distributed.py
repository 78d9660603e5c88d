"""Data-parallel evaluation under torchrun: the images of a dataset are dealt to the ranks by whole batches.

``torchrun --nproc_per_node N -m harness eval-all ...`` starts N copies; :func:`shard_from_env` joins them into one
process group (NCCL on GPUs, one GPU per local rank; gloo on CPU). The dataset's batches (the same ``batch_size``
slices a single process makes) are dealt round-robin: rank r computes batches r, r+N, r+2N, ... Each batch is thus
exactly the batch one process would run, so every image's features are the same bits; rank 0 gathers them into
dataset order, checks that every image came back exactly once, scores and writes. Multi-node runs use torchrun's own
rendezvous (``--nnodes``, ``--rdzv-endpoint``); the pixel cache is then built only where the ranks share a
filesystem (one node), and read by any rank that finds it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.core.errors import HarnessError

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    rank: int
    world: int
    local_rank: int
    same_node: bool  # every rank on this node: a file one writes, all can open

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, batches: list[range]) -> list[range]:
        return batches[self.rank::self.world]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank (so all ranks take the same branch)."""
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's value, in rank order, on rank 0 (None elsewhere)."""
        import torch.distributed as dist

        out = [None] * self.world if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def shard_from_env(device: str | None) -> tuple[Shard | None, str | None]:
    """(Shard, this rank's device) when launched by torchrun with WORLD_SIZE > 1; (None, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, device
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        if torch.cuda.device_count() == 0:
            raise HarnessError("--device cuda under torchrun, but no GPU is visible; use --device cpu (gloo).")
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        # HARNESS_DIST_BACKEND=gloo lets several ranks share one GPU (NCCL refuses two ranks on one device)
        dist.init_process_group(backend=os.environ.get("HARNESS_DIST_BACKEND") or ("nccl" if cuda else "gloo"))
    logger.info("data-parallel eval: rank %d of %d on %s", rank, world, device)
    return Shard(rank=rank, world=world, local_rank=local_rank, same_node=local_world == world), device


def assemble(pieces: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Rows from (indices, rows) pieces (every rank's), in dataset order; each image exactly once, or an error."""
    first = pieces[0][1]
    out = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
    count = np.zeros(n, dtype=np.int64)
    for idx, rows in pieces:
        out[idx] = rows
        count[idx] += 1
    if not (count == 1).all():
        raise RuntimeError(f"data-parallel gather: {int((count == 0).sum())} images missing, "
                           f"{int((count > 1).sum())} duplicated (a bug: please report it)")
    return out


def deal(n: int, batch_size: int, shard: Shard | None = None) -> list[range]:
    """The ``batch_size`` slices of ``n`` images one process runs, or this rank's share of them (dealt round-robin,
    so each batch is exactly the batch a single process runs)."""
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return shard.mine(batches) if shard is not None else batches
