"""``python -m training.main``: REACT customization (locked-text / gated-image tuning) with OpenCLIP's flags.

Runs the REACT README's commands unchanged, on one process or many (``torchrun --nproc_per_node N -m
training.main ...``; nccl on GPU, gloo on CPU). Without ``--train-data`` it only evaluates zero-shot (the README's
evaluation command). Outputs, as OpenCLIP: ``<logs>/<name>/out.log``, ``checkpoints/epoch_<N>.pt`` (model,
optimizer, scaler, epoch), ``epoch_latest.pt`` with ``--save-most-recent``; plus ``metrics.jsonl`` (every logged
step and eval, read by the report) and, after the last epoch, a model card for the trained checkpoint so
``python -m harness eval-all --model <card>`` evaluates it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger("training")

CHECKPOINT_RE = re.compile(r"epoch_(\d+)\.pt$")
LATEST_CHECKPOINT_NAME = "epoch_latest.pt"
UNSUPPORTED = {  # OpenCLIP trainer features this trainer does not implement: fail loudly instead of ignoring them
    "accum_freq": (lambda v: v != 1, "--accum-freq > 1"),
    "distill_model": (lambda v: bool(v), "--distill-model"),
    "siglip": (lambda v: bool(v), "--siglip"),
    "horovod": (lambda v: bool(v), "--horovod"),
    "val_data": (lambda v: bool(v), "--val-data (contrastive validation)"),
    "imagenet_v2": (lambda v: bool(v), "--imagenet-v2"),
    "remote_sync": (lambda v: bool(v), "--remote-sync"),
    "torchcompile": (lambda v: bool(v), "--torchcompile"),
    "use_bnb_linear": (lambda v: bool(v), "--use-bnb-linear"),
}


# ----------------------------------------------------------------------------------------------------------------------
# helpers

def latest_checkpoint(folder: Path) -> Path | None:
    if (folder / LATEST_CHECKPOINT_NAME).is_file():
        return folder / LATEST_CHECKPOINT_NAME
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := CHECKPOINT_RE.search(p.name))]
    return max(found)[1] if found else None


def harness_precision(precision: str) -> str:
    return {"amp": "amp", "amp_bf16": "amp_bf16", "amp_bfloat16": "amp_bf16", "bf16": "bf16", "pure_bf16": "bf16",
            "fp16": "fp16", "pure_fp16": "fp16"}.get(precision, "fp32")


def _card_name(args) -> str:
    return args.model_card_name or re.sub(r"[^0-9A-Za-z_.-]+", "_", args.name)


def _method(args) -> str:
    if args.lock_image_unlock_gated:
        return "gated-image"
    if args.lock_text:
        return "locked-text"
    return "fine-tuned"


def run_model_card(args, model, checkpoint: Path | None) -> Any:
    """The model card describing this run's model (in memory; written to disk after training)."""
    from harness.cards import ModelCard, PreprocessSpec, WeightsSpec

    pc = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pc.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess = PreprocessSpec(
        image_size=int(size), mean=tuple(float(x) for x in pc.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(float(x) for x in pc.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=pc.get("interpolation", "bicubic"), resize_mode=pc.get("resize_mode", "shortest"),
        quick_gelu=bool(args.resolved_quick_gelu))
    weights = WeightsSpec(source="local", path=str(checkpoint.resolve())) if checkpoint else \
        WeightsSpec(source="random", seed=args.seed)
    return ModelCard(
        name=_card_name(args),
        description=f"Trained by training.main, run '{args.name}' ({_method(args)}; "
                    f"train data {args.train_data}, {args.epochs} epochs, lr {args.lr}, batch {args.batch_size} x "
                    f"{args.world_size}).",
        architecture=args.model, weights=weights, preprocess=preprocess, method=_method(args),
        base_model=args.base_model_card, retrieval_set=None, published={}, published_source=None, elevater=None)


def write_model_card(card, folder: Path) -> Path:
    import yaml

    from harness.atomic import atomic_write
    from harness.cards import card_to_dict, parse_model_card

    data = card_to_dict(card)
    for key in ("published", "published_source", "elevater", "retrieval_set"):
        if not data.get(key):
            data.pop(key, None)
    if not data.get("base_model"):
        data.pop("base_model", None)
    data["weights"] = {k: v for k, v in data["weights"].items() if v is not None}
    path = folder / f"{card.name}.yaml"
    parse_model_card(data, str(path))  # the card we write must validate
    text = "# Written by training.main after training; evaluate with: python -m harness eval-all --model " \
           f"{card.name} --data-root DIR\n" + yaml.safe_dump(data, sort_keys=False, width=110)
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# model and weights

def _resolve_pretrained(args):
    """(weights file or None, quick_gelu) for --pretrained: a REACT tag, an open_clip tag, or a file path."""
    import open_clip

    from harness.cards import WeightsSpec, get_model_card
    from harness.errors import HarnessError
    from harness.models import resolve_weights
    from training.pretrained import react_card_for

    quick_gelu = bool(args.force_quick_gelu) or args.model.endswith("-quickgelu")
    tag = args.pretrained
    if not tag:
        return None, quick_gelu
    if os.path.isfile(tag):
        return Path(tag), quick_gelu
    card_name = react_card_for(args.model, tag)
    if card_name:
        card = get_model_card(card_name)
        logger.info("--pretrained %s: REACT checkpoint %s/%s (model card %s)", tag, card.weights.repo,
                    card.weights.file, card_name)
        return resolve_weights(card), quick_gelu or card.preprocess.quick_gelu
    base = args.model.replace("-quickgelu", "")
    pcfg = open_clip.get_pretrained_cfg(args.model, tag) or open_clip.get_pretrained_cfg(base, tag)
    if not pcfg:
        raise HarnessError(f"--pretrained '{tag}' is neither a file, a REACT tag for --model {args.model}, nor an "
                           f"open_clip tag for it. REACT tags: react_{{clip,openclip_laion400m,openclip_laion2b}}_ret_"
                           f"{{laion400m,laion2b}}; `python -c 'import open_clip; print(open_clip.list_pretrained())'`.")
    card = dataclasses.replace(get_model_card("vitb32_CLIP"), name=f"{args.model}:{tag}", architecture=args.model,
                               weights=WeightsSpec(source="openclip", tag=tag))
    return resolve_weights(card), quick_gelu or bool(pcfg.get("quick_gelu", False))


def _load_into(model, state_dict, source: str, allow_missing_gated: bool) -> None:
    from harness.models import load_weights_strict
    from training.react import is_gated_key

    excused = load_weights_strict(model, state_dict, source, allowed_missing=is_gated_key if allow_missing_gated
                                  else None)
    if excused:
        blocks = sorted({k.split(".gated_attn_block.")[0] for k in excused})
        logger.info("%s has no gated blocks: %d gated keys keep their fresh initialisation (gates at 0, so the model "
                    "starts equal to the base model): %s", source, len(excused), ", ".join(blocks))
        for key in excused:
            logger.debug("  initialised fresh: %s", key)


# ----------------------------------------------------------------------------------------------------------------------
# main

@dataclasses.dataclass
class PreparedModel:
    model: Any
    preprocess_train: Any
    preprocess_val: Any
    is_react: bool
    start_epoch: int
    checkpoint: dict | None  # a training checkpoint being resumed (optimizer/scaler state still to load)


def prepare_model(args, device) -> PreparedModel:
    """Create the model, load --pretrained / --resume weights, apply the --lock-* flags and checkpointing."""
    import open_clip

    from harness.errors import HarnessError
    from harness.models import read_state_dict, read_weights_file, state_dict_from
    from training import loop
    from training.augment import check_aug_cfg, needs_own_transform, timm_train_transform
    from training.react import gated_parameter_names

    pretrained_path, quick_gelu = _resolve_pretrained(args)
    args.resolved_quick_gelu = quick_gelu
    check_aug_cfg(args.aug_cfg)
    own_aug = needs_own_transform(args.aug_cfg)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        args.model, pretrained=None, precision=args.precision, device=device, force_quick_gelu=quick_gelu,
        force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
        image_mean=args.image_mean, image_std=args.image_std, image_interpolation=args.image_interpolation,
        image_resize_mode=args.image_resize_mode, aug_cfg=None if own_aug else args.aug_cfg, output_dict=True)
    if own_aug:
        pc = model.visual.preprocess_cfg
        preprocess_train = timm_train_transform(args.aug_cfg, pc["size"], pc["mean"], pc["std"])
        logger.info("training augmentation (timm): %s", args.aug_cfg)
    is_react = bool(gated_parameter_names(model))
    if pretrained_path is not None:
        _load_into(model, read_state_dict(pretrained_path), f"--pretrained {pretrained_path}", is_react)

    start_epoch = 0
    checkpoint = None
    if args.resume:
        if not os.path.isfile(args.resume):
            raise HarnessError(f"--resume {args.resume}: no such file. To make the README's "
                               f"./checkpoints/ViT-B-32.pt run: python -m training.export_base --card vitb32_CLIP "
                               f"--out ./checkpoints/ViT-B-32.pt")
        checkpoint = read_weights_file(Path(args.resume))  # read once: weights, and optimizer state on resume
        state_dict = state_dict_from(checkpoint, args.resume)
        if isinstance(checkpoint, dict) and "epoch" in checkpoint and "state_dict" in checkpoint:
            start_epoch = int(checkpoint["epoch"])
            _load_into(model, state_dict, f"--resume {args.resume}", False)
            logger.info("resuming training checkpoint %s (completed epoch %d)", args.resume, start_epoch)
        else:
            _load_into(model, state_dict, f"--resume {args.resume}", is_react)
            logger.info("loaded bare weights %s (epoch 0)", args.resume)
            checkpoint = None

    if args.lock_image:
        model.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                               freeze_bn_stats=args.lock_image_freeze_bn_stats)
    if args.lock_image_unlock_gated:
        if not is_react:
            raise HarnessError(f"--lock-image-unlock-gated needs a REACT model with gated blocks; --model "
                               f"{args.model} has none (use react_{args.model}).")
        loop.lock_image_unlock_gated(model)
    if args.lock_text:
        # OpenCLIP 3.3's CLIP.lock_text_tower asserts freeze_layer_norm=True (it freezes LayerNorms like every
        # other text weight), so its own trainer fails on a plain `--lock-text`; REACT's locked text is fully
        # frozen, which is what freeze_layer_norm=True gives. Custom text towers keep the flag's meaning.
        freeze_ln = args.lock_text_freeze_layer_norm or isinstance(model, open_clip.CLIP)
        model.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers, freeze_layer_norm=freeze_ln)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %d parameters, %d trainable in %d tensors (%s)", args.model, n_total, n_train,
                len(trainable), ", ".join(sorted({n.split(".")[0] for n in trainable})))
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.react_always_checkpoint_gated:
        logger.info("checkpointing all %d gated blocks (original REACT behaviour)",
                    loop.always_checkpoint_gated_blocks(model))

    return PreparedModel(model, preprocess_train, preprocess_val, is_react, start_epoch, checkpoint)


def run(args) -> int:
    import numpy as np
    import open_clip
    import torch
    from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
    from open_clip_train.logger import setup_logging
    from open_clip_train.scheduler import const_lr, cosine_lr

    from harness.errors import HarnessError
    from harness.models import LoadedModel, register_project_configs
    from training import loop
    from training.pretrained import canonical_model_name, register_react_pretrained

    register_project_configs()
    register_react_pretrained()
    args.model = canonical_model_name(args.model)
    for key, (is_set, flag) in UNSUPPORTED.items():
        if is_set(getattr(args, key, None)):
            raise HarnessError(f"{flag} is an OpenCLIP trainer feature that training.main does not implement; "
                               f"drop the flag or use open_clip_train for it.")
    if args.model not in open_clip.list_models():
        raise HarnessError(f"--model {args.model} is not an OpenCLIP config (REACT configs: react_ViT-B-32, "
                           f"react_ViT-B-32-quickgelu, react_ViT-B-16, react_ViT-L-14, react_ViT-bigG-14).")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    device = init_distributed_device(args)

    if args.name is None:
        date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        if args.distributed:
            date_str = broadcast_object(args, date_str)
        args.name = "-".join([date_str, f"model_{args.model}", f"lr_{args.lr}", f"b_{args.batch_size}",
                              f"j_{args.workers}", f"p_{args.precision}"])
    args.save_logs = bool(args.logs) and args.logs.lower() != "none"
    resume_latest = args.resume == "latest"
    log_base = Path(args.logs) / args.name
    args.checkpoint_path = str(log_base / "checkpoints")
    args.log_path = None
    if is_master(args):
        log_base.mkdir(parents=True, exist_ok=True)
        args.log_path = str(log_base / "out.log")
        if os.path.exists(args.log_path) and not resume_latest and args.train_data:
            raise HarnessError(f"Experiment {log_base} already exists. Use another --name, or --resume latest to "
                               f"continue it.")
        Path(args.checkpoint_path).mkdir(parents=True, exist_ok=True)
    setup_logging(args.log_path, logging.DEBUG if args.debug else logging.INFO)
    for noisy in ("torch", "PIL", "urllib3", "matplotlib"):  # keep out.log about training
        logging.getLogger(noisy).setLevel(logging.WARNING)
    metrics_path = log_base / "metrics.jsonl"

    if resume_latest:
        found = latest_checkpoint(Path(args.checkpoint_path)) if is_master(args) else None
        if args.distributed:
            found = broadcast_object(args, found)
        args.resume = str(found) if found else None
        logger.info("--resume latest: %s", found or f"no checkpoint in {args.checkpoint_path}, starting fresh")

    random.seed(args.seed + args.rank)
    np.random.seed(args.seed + args.rank)
    torch.manual_seed(args.seed)  # same initial weights on every rank

    # --- model ---------------------------------------------------------------------------------------------------
    prepared = prepare_model(args, device)
    model, preprocess_train, preprocess_val = prepared.model, prepared.preprocess_train, prepared.preprocess_val
    start_epoch, checkpoint = prepared.start_epoch, prepared.checkpoint

    # --- zero-shot eval data (opened once, rank 0) -----------------------------------------------------------------
    eval_target = None
    if is_master(args) and (args.imagenet_val or args.zeroshot_dataset):
        from harness.cards import get_dataset_card
        from harness.data import open_eval_data

        if args.zeroshot_dataset:
            if not args.zeroshot_data_root:
                raise HarnessError("--zeroshot-dataset needs --zeroshot-data-root.")
            dcard, root = get_dataset_card(args.zeroshot_dataset), args.zeroshot_data_root
        else:
            dcard, root = get_dataset_card("imagenet-1k"), args.imagenet_val
        eval_target = (dcard, open_eval_data(dcard, root))
        logger.info("zero-shot eval: %s (%d images, %s) every %d epoch(s), protocol %s", dcard.name,
                    len(eval_target[1]), eval_target[1].location, args.zeroshot_frequency, args.zeroshot_protocol)

    def log_metrics(row: dict) -> None:
        if not is_master(args):
            return
        row = {"time": datetime.now().isoformat(timespec="seconds"), **row}
        loop.dump_json_line(metrics_path, row)
        msg = " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "time")
        logger.info("%s", msg)
        step = row.get("step")
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    writer.add_scalar(k, v, step or 0)
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def zero_shot(epoch: int) -> dict | None:
        if eval_target is None:
            return None
        from harness.zeroshot import evaluate_dataset

        dcard, data = eval_target
        net = loop.unwrap(model)
        card = run_model_card(args, net, None)
        loaded = LoadedModel(card=card, model=net, tokenizer=tokenizer, preprocess_val=preprocess_val,
                             weights_identity={"sha256": f"training:{args.name}:epoch{epoch}"},
                             device=str(device), precision=harness_precision(args.precision))
        was_training = net.training
        net.eval()
        try:
            outcome = evaluate_dataset(loaded, dcard, data, args.zeroshot_protocol, args.batch_size,
                                       args.workers, use_cache=False)
        finally:
            net.train(was_training)
        prefix = "imagenet-zeroshot-val" if dcard.name == "imagenet-1k" else f"{dcard.name}-zeroshot"
        row = {"epoch": epoch, "eval_dataset": dcard.name}
        for mid, value in outcome.metrics.items():
            name = {"accuracy": "top1", "accuracy_top5": "top5"}.get(mid, mid)
            row[f"{prefix}-{name}"] = value
        log_metrics(row)
        return row

    # --- reporting ---------------------------------------------------------------------------------------------------
    writer = None
    wandb_run = None
    report_to = args.report_to or ""
    if is_master(args) and ("tensorboard" in report_to or "all" in report_to):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise HarnessError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") \
                from exc
        writer = SummaryWriter(str(log_base / "tensorboard"))
    if is_master(args) and ("wandb" in report_to or "all" in report_to):
        try:
            import wandb
        except ImportError as exc:
            raise HarnessError("--report-to wandb needs wandb: pip install -e '.[wandb]'") from exc
        from harness.models import hub_reachable

        if "WANDB_MODE" not in os.environ and not hub_reachable("api.wandb.ai"):
            os.environ["WANDB_MODE"] = "offline"
            logger.info("wandb: api.wandb.ai unreachable, logging offline to %s (wandb sync later)", log_base)
        wandb_run = wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, dir=str(log_base),
                               resume="allow", config={k: v for k, v in vars(args).items()
                                                       if isinstance(v, (int, float, str, bool, type(None)))})

    tokenizer = open_clip.get_tokenizer(args.model)

    # --- evaluation only (the README's eval command) ----------------------------------------------------------------
    if not args.train_data:
        if eval_target is None and is_master(args):
            raise HarnessError("Nothing to do: give --train-data to train, or --imagenet-val (or "
                               "--zeroshot-dataset/--zeroshot-data-root) to evaluate.")
        zero_shot(start_epoch)
        if wandb_run is not None:
            wandb_run.finish()
        return 0

    # --- training ------------------------------------------------------------------------------------------------------
    frozen_prefix = loop.run_frozen_prefix_without_autograd(model)
    if frozen_prefix:
        logger.info("the first %d frozen vision blocks run without autograd", frozen_prefix)
    net = model
    if args.distributed:
        ddp_kwargs = {"static_graph": args.ddp_static_graph} if args.ddp_static_graph else {}
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, **ddp_kwargs)
    optimizer = loop.make_optimizer(net, args.lr, args.wd, args.beta1, args.beta2, args.eps)
    scaler = torch.amp.GradScaler("cuda") if loop.needs_grad_scaler(args.precision, device) else None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
    del checkpoint

    from training.data import make_train_data

    if not args.train_num_samples:
        raise HarnessError("--train-num-samples is required with webdataset shards (img2dataset's stats give it).")
    data = make_train_data(args.train_data, preprocess_train, tokenizer, args.batch_size, args.train_num_samples,
                           args.workers, world_size=args.world_size, seed=args.seed,
                           keep_keys=args.debug_rank_stats)
    total_steps = data.num_batches * args.epochs
    if args.lr_scheduler == "cosine":
        scheduler = cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    elif args.lr_scheduler == "const":
        scheduler = const_lr(optimizer, args.lr, args.warmup, total_steps)
    else:
        raise HarnessError(f"--lr-scheduler {args.lr_scheduler} is not supported here (cosine, const).")
    loss_fn = open_clip.ClipLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad,
                                 cache_labels=True, rank=args.rank, world_size=args.world_size)
    rank_stats: dict | None = {} if args.debug_rank_stats else None
    logger.info("training %d epochs x %d steps (global batch %d, %d samples per epoch), start epoch %d",
                args.epochs, data.num_batches, args.batch_size * args.world_size, data.num_samples, start_epoch)

    last_saved: Path | None = None
    for epoch in range(start_epoch, args.epochs):
        stats = loop.train_one_epoch(model, data, loss_fn, epoch, optimizer, scaler, scheduler, args, log_metrics,
                                     rank_stats)
        completed = epoch + 1
        skipped = data.skipped.value
        if args.distributed:
            t = torch.tensor([skipped], dtype=torch.long, device=device)
            torch.distributed.all_reduce(t)
            skipped = int(t.item())
        log_metrics({"epoch": completed, "train_loss_mean": stats["loss_mean"], "train_steps": stats["steps"],
                     "epoch_seconds": stats["seconds"], "skipped_samples_total": skipped})
        if args.zeroshot_frequency and (completed % args.zeroshot_frequency == 0 or completed == args.epochs):
            zero_shot(completed)
        if args.distributed:
            torch.distributed.barrier()
        if is_master(args) and args.save_logs:
            from harness.atomic import write_torch

            state = {"epoch": completed, "name": args.name, "state_dict": net.state_dict(),
                     "optimizer": optimizer.state_dict()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            ckpt_dir = Path(args.checkpoint_path)
            if completed == args.epochs or (args.save_frequency > 0 and completed % args.save_frequency == 0):
                last_saved = write_torch(ckpt_dir / f"epoch_{completed}.pt", state)
                logger.info("saved %s", last_saved)
            if args.delete_previous_checkpoint and (ckpt_dir / f"epoch_{completed - 1}.pt").exists():
                (ckpt_dir / f"epoch_{completed - 1}.pt").unlink()
            if args.save_most_recent:
                write_torch(ckpt_dir / LATEST_CHECKPOINT_NAME, state)
        if args.distributed:
            torch.distributed.barrier()

    if rank_stats is not None:
        rank_stats["param_checksum"] = loop.parameter_checksum(net)
        rank_stats["rank"] = args.rank
        rank_stats["world_size"] = args.world_size
        rank_stats["skipped"] = data.skipped.value
        log_base.mkdir(parents=True, exist_ok=True)
        (log_base / f"rank{args.rank}_stats.json").write_text(json.dumps(rank_stats))

    if last_saved is None and start_epoch >= args.epochs and args.resume:
        last_saved = Path(args.resume)  # nothing left to train: the card points at the resumed checkpoint
    if is_master(args) and last_saved is not None and (args.model_card_dir or "").lower() != "none":
        from harness import paths

        folder = Path(args.model_card_dir) if args.model_card_dir else paths.model_cards_dir()
        card_path = write_model_card(run_model_card(args, net, last_saved), folder)
        logger.info("wrote model card %s: evaluate with `python -m harness eval-all --model %s --data-root DIR`",
                    card_path, _card_name(args))
    if wandb_run is not None:
        wandb_run.finish()
    if writer is not None:
        writer.close()
    if args.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from harness.errors import HarnessError
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
