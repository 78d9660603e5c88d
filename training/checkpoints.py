"""Training checkpoints of ``python -m training.main``, as OpenCLIP writes them.

``<logs>/<name>/checkpoints/epoch_<N>.pt`` every ``--save-frequency`` epochs and after the last one, and
``epoch_latest.pt`` with ``--save-most-recent``; each holds ``epoch`` (epochs completed), ``name``, ``state_dict``
(the unwrapped model's), ``optimizer`` and, with a GradScaler, ``scaler``. ``--resume latest`` picks the newest.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger("training")

CHECKPOINT_RE = re.compile(r"epoch_(\d+)\.pt$")
LATEST_CHECKPOINT_NAME = "epoch_latest.pt"


def latest_checkpoint(folder: Path) -> Path | None:
    """``epoch_latest.pt`` when there is one, else the ``epoch_<N>.pt`` with the largest N, else None."""
    if (folder / LATEST_CHECKPOINT_NAME).is_file():
        return folder / LATEST_CHECKPOINT_NAME
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := CHECKPOINT_RE.search(p.name))]
    return max(found)[1] if found else None


def checkpoint_state(args, completed: int, net: Any, optimizer: Any, scaler: Any) -> dict:
    """What a training checkpoint holds after ``completed`` epochs (``net``: the model without its DDP wrapper)."""
    state = {"epoch": completed, "name": args.name, "state_dict": net.state_dict(),
             "optimizer": optimizer.state_dict()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def save_epoch_checkpoints(args, completed: int, state: dict) -> Path | None:
    """Write this epoch's checkpoints as the flags ask (rank 0 only); the ``epoch_<N>.pt`` written, if any."""
    from harness.core.atomic import write_torch

    ckpt_dir = Path(args.checkpoint_path)
    saved = None
    if completed == args.epochs or (args.save_frequency > 0 and completed % args.save_frequency == 0):
        saved = write_torch(ckpt_dir / f"epoch_{completed}.pt", state)
        logger.info("saved %s", saved)
    previous = ckpt_dir / f"epoch_{completed - 1}.pt"
    if args.delete_previous_checkpoint and previous.exists():
        previous.unlink()
    if args.save_most_recent:
        write_torch(ckpt_dir / LATEST_CHECKPOINT_NAME, state)
    return saved
