"""The training loop pieces: parameter locking, optimizer groups, one epoch of contrastive training.

Contrastive loss is open_clip's ClipLoss (gathering features across ranks), the schedule open_clip_train's cosine
with linear warmup; AdamW with no weight decay on gains, biases, the gates and logit_scale (every parameter with
fewer than 2 dimensions, plus names with ln/bn/bias/logit_scale — OpenCLIP's rule).
"""
from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any, Callable

import torch
from torch import nn

from harness.models import precision
from harness.core import training_log as tl

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# locking and the REACT-specific execution details

def lock_image_unlock_gated(model: nn.Module) -> list[str]:
    """Freeze the image tower except its gated blocks; returns the names left trainable in the image tower."""
    from harness.models.react import gated_parameter_names, is_gated_key

    if not gated_parameter_names(model):
        raise ValueError("--lock-image-unlock-gated needs a REACT model (react_* --model) with gated blocks")
    kept = []
    for name, p in model.visual.named_parameters():
        trainable = is_gated_key(f"visual.{name}")
        p.requires_grad_(trainable)
        if trainable:
            kept.append(f"visual.{name}")
    return kept


def _no_grad_forward(forward: Callable, *args, **kwargs):
    with torch.no_grad():
        return forward(*args, **kwargs)


def run_frozen_prefix_without_autograd(model: nn.Module) -> int:
    """The vision blocks before the first block with a trainable parameter run under ``torch.no_grad()`` (and so
    are never grad-checkpointed either): nothing upstream of them needs gradients. Returns how many blocks."""
    blocks = model.visual.transformer.resblocks
    first = next((i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())), len(blocks))
    stem_trainable = any(p.requires_grad for n, p in model.visual.named_parameters() if not n.startswith(
        "transformer.") and not n.startswith(("ln_post", "proj", "attn_pool")))
    if stem_trainable:
        return 0
    for block in list(blocks)[:first]:
        block.forward = functools.partial(_no_grad_forward, block.forward)
    return first


def _checkpointed_gated_forward(module: nn.Module, original: Callable, x, attn_mask=None):
    if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
        return torch.utils.checkpoint.checkpoint(original, x, attn_mask, use_reentrant=False)
    return original(x, attn_mask)


def always_checkpoint_gated_blocks(model: nn.Module) -> int:
    """The original REACT code checkpoints every gated block whatever --grad-checkpointing says; reproduce it."""
    from harness.models.react import gated_blocks

    blocks = gated_blocks(model)
    for gated in blocks.values():
        gated.forward = functools.partial(_checkpointed_gated_forward, gated, gated.forward)
    return len(blocks)


# ----------------------------------------------------------------------------------------------------------------------
# optimizer

def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def make_optimizer(model: nn.Module, lr: float, wd: float, beta1: float, beta2: float, eps: float):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: check the --lock-* flags")
    decay = [p for n, p in named if not no_weight_decay(n, p)]
    no_decay = [p for n, p in named if no_weight_decay(n, p)]
    return torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}],
                             lr=lr, betas=(beta1, beta2), eps=eps)


# ----------------------------------------------------------------------------------------------------------------------
# one epoch

def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_one_epoch(model: nn.Module, data: Any, loss_fn: nn.Module, epoch: int, optimizer, scaler, scheduler,
                    args: Any, log_metrics: Callable[[dict], None], rank_stats: dict | None = None) -> dict:
    device = torch.device(args.device)
    autocast = precision.autocast(args.precision, device)
    model.train()
    num_batches = data.num_batches
    losses: list[float] = []
    start = time.perf_counter()
    samples = 0
    for i, batch in enumerate(data.loader):
        step = num_batches * epoch + i
        if scheduler is not None:
            scheduler(step)
        if rank_stats is not None:
            keys, images, texts = batch
            rank_stats.setdefault("keys_by_epoch", {}).setdefault(str(epoch), []).extend(keys)
        else:
            images, texts = batch
        images = images.to(device=device, non_blocking=True)
        texts = texts.to(device=device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {i}; lower --lr or use fp32")
        if scaler is not None:
            scaler.scale(loss).backward()
            if args.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if args.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
            optimizer.step()
        with torch.no_grad():  # as OpenCLIP: keep the temperature within [1/100, 1]
            unwrap(model).logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.item()))
        samples += len(images) * args.world_size
        if (i + 1) % max(1, args.log_every_n_steps) == 0 or i + 1 == num_batches:
            elapsed = time.perf_counter() - start
            row = {tl.EPOCH: epoch, tl.STEP: step + 1, tl.BATCH: i + 1, tl.NUM_BATCHES: num_batches,
                   tl.LOSS: losses[-1], tl.LR: optimizer.param_groups[0]["lr"],
                   tl.LOGIT_SCALE: float(unwrap(model).logit_scale.exp().item()),
                   tl.SAMPLES_PER_SECOND: samples / elapsed if elapsed > 0 else float("nan")}
            if device.type == "cuda":
                row[tl.GPU_MEM_PEAK_GIB] = torch.cuda.max_memory_allocated(device) / 2**30
            log_metrics(row)
    if rank_stats is not None:
        rank_stats.setdefault("losses", []).extend(losses)
    return {"epoch": epoch, "loss_mean": sum(losses) / max(1, len(losses)), "steps": len(losses),
            "seconds": time.perf_counter() - start}


def parameter_checksum(model: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
