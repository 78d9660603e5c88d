"""``python -m training.main``: REACT customization (locked-text / gated-image tuning) with OpenCLIP's flags.

Runs the REACT README's commands unchanged, on one process or many (``torchrun --nproc_per_node N -m
training.main ...``; nccl on GPU, gloo on CPU). Without ``--train-data`` it only evaluates zero-shot (the README's
evaluation command). Outputs, as OpenCLIP: ``<logs>/<name>/out.log``, ``checkpoints/epoch_<N>.pt`` (model,
optimizer, scaler, epoch), ``epoch_latest.pt`` with ``--save-most-recent``; plus ``metrics.jsonl`` (every logged
step and eval, read by the report) and, after the last epoch, a model card for the trained checkpoint so
``python -m harness eval-all --model <card>`` evaluates it.

:func:`run` is a sequence of steps, each in its own place:

1. set-up — :func:`training.setup.setup_run` (flags, distributed init, run name, log folders, ``--resume latest``);
2. model — :func:`training.model_setup.prepare_model` (build, ``--pretrained`` / ``--resume``, ``--lock-*``);
3. eval target — :func:`training.evaluation.open_eval_target` (the zero-shot data, rank 0);
4. reporting — :class:`training.reporting.Reporter` (metrics.jsonl, TensorBoard, wandb), open before any use;
5. zero-shot eval only (no ``--train-data``), or: training state (:func:`prepare_training`), epochs
   (:func:`fit`: train, log, eval, checkpoints — :mod:`training.checkpoints`) and :func:`finish_training`
   (rank stats, model card — :mod:`training.model_card`);
6. teardown of the process group.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.core import training_log as tl
from harness.core.errors import HarnessError
from training.checkpoints import checkpoint_state, save_epoch_checkpoints
from training.evaluation import EvalTarget, open_eval_target, zero_shot_row
from training.model_card import write_trained_card
from training.model_setup import PreparedModel, prepare_model
from training.reporting import Reporter
from training.setup import RunSetup, setup_run

__all__ = ["PreparedModel", "main", "prepare_model", "run"]

logger = logging.getLogger("training")


@dataclass
class Training:
    """What the epoch loop works with."""
    model: Any  # the model as trained: DistributedDataParallel-wrapped when distributed
    net: Any  # the model itself (what is saved and evaluated)
    optimizer: Any
    scaler: Any  # torch.amp.GradScaler or None
    scheduler: Callable[[int], Any]
    loss_fn: Any
    data: Any  # training.data.TrainData
    rank_stats: dict | None  # --debug-rank-stats


# ----------------------------------------------------------------------------------------------------------------------
# zero-shot evaluation

def evaluate_and_log(args, target: EvalTarget | None, net: Any, tokenizer: Any, preprocess_val: Any, device: Any,
                     reporter: Reporter, epoch: int) -> dict | None:
    """Zero-shot eval of ``net`` after ``epoch`` epochs, logged; None where there is no target (other ranks)."""
    if target is None:
        return None
    row = zero_shot_row(args, target, net, tokenizer, preprocess_val, device, epoch)
    reporter.log(row)
    return row


def evaluate_only(args, setup: RunSetup, target: EvalTarget | None, evaluate: Callable[[int], Any],
                  start_epoch: int) -> None:
    """The README's evaluation command: no --train-data, one zero-shot eval."""
    if target is None and setup.is_master:
        raise HarnessError("Nothing to do: give --train-data to train, or --imagenet-val (or "
                           "--zeroshot-dataset/--zeroshot-data-root) to evaluate.")
    evaluate(start_epoch)


# ----------------------------------------------------------------------------------------------------------------------
# training

def make_scheduler(args, optimizer, total_steps: int) -> Callable[[int], Any]:
    from open_clip_train.scheduler import const_lr, cosine_lr

    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    raise HarnessError(f"--lr-scheduler {args.lr_scheduler} is not supported here (cosine, const).")


def make_optimizer_and_scaler(args, net, device, checkpoint: dict | None) -> tuple[Any, Any]:
    """AdamW (training.loop's groups) and, for fp16 autocast on GPU, a GradScaler; resumed state loaded."""
    import torch

    from harness.models import precision
    from training import loop

    optimizer = loop.make_optimizer(net, args.lr, args.wd, args.beta1, args.beta2, args.eps)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_grad_scaler(args.precision, device) else None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
    return optimizer, scaler


def prepare_training(args, setup: RunSetup, prepared: PreparedModel, tokenizer: Any) -> Training:
    """DDP wrapper, optimizer (and resumed state), GradScaler, training data, LR schedule and loss."""
    import open_clip
    import torch

    from training import loop
    from training.data import make_train_data

    net = model = prepared.model
    frozen_prefix = loop.run_frozen_prefix_without_autograd(net)
    if frozen_prefix:
        logger.info("the first %d frozen vision blocks run without autograd", frozen_prefix)
    if args.distributed:
        ddp_kwargs = {"static_graph": args.ddp_static_graph} if args.ddp_static_graph else {}
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[setup.device] if setup.device.type == "cuda" else None, **ddp_kwargs)
    optimizer, scaler = make_optimizer_and_scaler(args, net, setup.device, prepared.checkpoint)
    prepared.checkpoint = None  # its optimizer state is loaded: free it
    if not args.train_num_samples:
        raise HarnessError("--train-num-samples is required with webdataset shards (img2dataset's stats give it).")
    data = make_train_data(args.train_data, prepared.preprocess_train, tokenizer, args.batch_size,
                           args.train_num_samples, args.workers, world_size=args.world_size, seed=args.seed,
                           keep_keys=args.debug_rank_stats, rank=args.rank, epoch=prepared.start_epoch)
    scheduler = make_scheduler(args, optimizer, data.num_batches * args.epochs)
    loss_fn = open_clip.ClipLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad,
                                 cache_labels=True, rank=args.rank, world_size=args.world_size)
    logger.info("training %d epochs x %d steps (global batch %d, %d samples per epoch), start epoch %d",
                args.epochs, data.num_batches, args.batch_size * args.world_size, data.num_samples,
                prepared.start_epoch)
    return Training(model, net, optimizer, scaler, scheduler, loss_fn, data,
                    {} if args.debug_rank_stats else None)


def log_train_data_set(args, reporter: Reporter, start_epoch: int) -> None:
    """The training log's data-set row: which retrieved-pairs download the shards are (their availability.json)."""
    from training.data import train_data_set

    summary = train_data_set(args.train_data)
    if summary is None:
        return
    if summary["successes"] != args.train_num_samples:
        logger.warning("--train-num-samples %s, but the shards hold %s samples (%s)", args.train_num_samples,
                       summary["successes"], summary["availability_file"])
    reporter.log({tl.EPOCH: start_epoch, tl.TRAIN_DATA_SET: summary})


def barrier(args) -> None:
    if args.distributed:
        import torch

        torch.distributed.barrier()


def skipped_samples_total(args, device, training: Training) -> int:
    """Bad samples skipped so far, summed over the ranks."""
    import torch

    skipped = training.data.skipped.value
    if args.distributed:
        t = torch.tensor([skipped], dtype=torch.long, device=device)
        torch.distributed.all_reduce(t)
        skipped = int(t.item())
    return skipped


def end_epoch(args, setup: RunSetup, training: Training, stats: dict, completed: int,
              evaluate: Callable[[int], Any], reporter: Reporter) -> Path | None:
    """After an epoch: its row, the zero-shot eval when due, checkpoints (rank 0). The epoch_<N>.pt written."""
    reporter.log({tl.EPOCH: completed, tl.TRAIN_LOSS_MEAN: stats["loss_mean"], tl.TRAIN_STEPS: stats["steps"],
                  tl.EPOCH_SECONDS: stats["seconds"],
                  tl.SKIPPED_SAMPLES_TOTAL: skipped_samples_total(args, setup.device, training)})
    if args.zeroshot_frequency and (completed % args.zeroshot_frequency == 0 or completed == args.epochs):
        evaluate(completed)
    barrier(args)
    saved = None
    if setup.is_master and args.save_logs:
        state = checkpoint_state(args, completed, training.net, training.optimizer, training.scaler)
        saved = save_epoch_checkpoints(args, completed, state)
    barrier(args)
    return saved


def fit(args, setup: RunSetup, training: Training, start_epoch: int, evaluate: Callable[[int], Any],
        reporter: Reporter) -> Path | None:
    """The epochs from ``start_epoch`` to ``--epochs``; the last epoch_<N>.pt written (None: none written)."""
    from training import loop

    last_saved = None
    for epoch in range(start_epoch, args.epochs):
        training.data.set_epoch(epoch)  # the workers' shard and sample order of this epoch (training.data)
        stats = loop.train_one_epoch(training.model, training.data, training.loss_fn, epoch, training.optimizer,
                                     training.scaler, training.scheduler, args, reporter.log, training.rank_stats)
        last_saved = end_epoch(args, setup, training, stats, epoch + 1, evaluate, reporter) or last_saved
    return last_saved


def write_rank_stats(args, setup: RunSetup, training: Training) -> None:
    """--debug-rank-stats: logs/<name>/rank<R>_stats.json (keys read, losses, parameter checksum)."""
    from training import loop

    stats = dict(training.rank_stats or {}, param_checksum=loop.parameter_checksum(training.net), rank=args.rank,
                 world_size=args.world_size, skipped=training.data.skipped.value)
    setup.log_base.mkdir(parents=True, exist_ok=True)
    (setup.log_base / f"rank{args.rank}_stats.json").write_text(json.dumps(stats))


def finish_training(args, setup: RunSetup, training: Training, start_epoch: int, last_saved: Path | None) -> None:
    """Rank stats (--debug-rank-stats) and, on rank 0, the model card of the last checkpoint."""
    if training.rank_stats is not None:
        write_rank_stats(args, setup, training)
    if last_saved is None and start_epoch >= args.epochs and args.resume:
        last_saved = Path(args.resume)  # nothing left to train: the card points at the resumed checkpoint
    if setup.is_master and last_saved is not None:
        write_trained_card(args, training.net, last_saved)


def teardown(args) -> None:
    if args.distributed:
        import torch

        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# main

def run(args) -> int:
    """Every step of a run, in order (see the module docstring)."""
    from harness.models.factory import get_tokenizer

    setup = setup_run(args)
    prepared = prepare_model(args, setup.device)
    target = open_eval_target(args, setup.is_master)
    with Reporter.open(args, setup.log_base, setup.is_master) as reporter:
        tokenizer = get_tokenizer(args.model)
        evaluate = functools.partial(evaluate_and_log, args, target, prepared.model, tokenizer,
                                     prepared.preprocess_val, setup.device, reporter)
        if not args.train_data:
            evaluate_only(args, setup, target, evaluate, prepared.start_epoch)
            return 0
        training = prepare_training(args, setup, prepared, tokenizer)
        log_train_data_set(args, reporter, prepared.start_epoch)
        last_saved = fit(args, setup, training, prepared.start_epoch, evaluate, reporter)
        finish_training(args, setup, training, prepared.start_epoch, last_saved)
    teardown(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.params import parse_args

    args = parse_args(argv)
    try:
        return run(args)
    except HarnessError as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
