"""Model step of ``python -m training.main``: build the model, load ``--pretrained`` / ``--resume`` weights, apply
the ``--lock-*`` flags and the checkpointing options.

Models are built by :func:`harness.models.factory.create_model_and_transforms` (OpenCLIP names, the project's tiny
configs and the REACT ``react_*`` architectures). ``--pretrained`` is a weights file, a REACT tag of the REACT README
(``react_clip_ret_laion400m`` ..., resolved to its model card by :func:`harness.models.tags.react_card_for`) or an
OpenCLIP tag of the base architecture. A REACT model initialised from weights without gated blocks keeps its fresh
gates (at 0: the model starts equal to its base model).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.models.weights import weights_env_var

logger = logging.getLogger("training")

REACT_TAGS_HINT = "react_{clip,openclip_laion400m,openclip_laion2b}_ret_{laion400m,laion2b}"


@dataclasses.dataclass
class PreparedModel:
    model: Any
    preprocess_train: Any
    preprocess_val: Any
    is_react: bool
    start_epoch: int
    checkpoint: dict | None  # a training checkpoint being resumed (optimizer/scaler state still to load)


# ----------------------------------------------------------------------------------------------------------------------
# --pretrained

def resolve_card_weights(card, tag: str) -> Path | None:
    """:func:`harness.models.resolve_weights` with training.main's advice: the harness's errors advise ``--weights``,
    a flag of ``python -m harness``; here a local copy is given as ``--pretrained /path/to/file``."""
    from harness.models import resolve_weights

    try:
        return resolve_weights(card)
    except HarnessError as exc:
        file_name = card.weights.file or f"{card.name}.pt"
        kept = [line for line in str(exc).splitlines() if "--weights" not in line]
        advice = (f"To use a local copy of --pretrained {tag}: pass --pretrained /path/to/{file_name} (the file "
                  f"itself), or set {weights_env_var(card.name)}=/path/to/{file_name}, or put the file in a folder "
                  f"named by HARNESS_WEIGHTS_DIR as '{file_name}'.")
        raise HarnessError("\n".join(kept + [advice])) from exc


def _openclip_tag_card(args, tag: str):
    """An in-memory card naming OpenCLIP's ``tag`` for the base architecture of --model (None: no such tag)."""
    import open_clip

    from harness.cards import WeightsSpec, get_model_card
    from harness.models.factory import react_architecture

    arch = react_architecture(args.model)
    base = arch.base if arch else args.model  # OpenCLIP knows REACT models by their base architecture only
    for name in (base, base.replace("-quickgelu", "")):
        pcfg = open_clip.get_pretrained_cfg(name, tag)
        if pcfg:
            card = dataclasses.replace(get_model_card("vitb32_CLIP"), name=f"{base}:{tag}", architecture=name,
                                       weights=WeightsSpec(source="openclip", tag=tag), pretrained_tags=())
            return card, bool(pcfg.get("quick_gelu", False))
    return None, False


def resolve_pretrained(args) -> tuple[Path | None, bool]:
    """(weights file or None, quick_gelu) for --pretrained: a file path, a REACT tag or an OpenCLIP tag."""
    from harness.models.tags import react_card_for

    quick_gelu = bool(args.force_quick_gelu) or args.model.endswith("-quickgelu")
    tag = args.pretrained
    if not tag:
        return None, quick_gelu
    if os.path.isfile(tag):
        return Path(tag), quick_gelu
    card = react_card_for(args.model, tag)
    if card is not None:
        logger.info("--pretrained %s: REACT checkpoint %s/%s (model card %s)", tag, card.weights.repo,
                    card.weights.file, card.name)
        return resolve_card_weights(card, tag), quick_gelu or card.preprocess.quick_gelu
    card, tag_quick_gelu = _openclip_tag_card(args, tag)
    if card is None:
        raise HarnessError(f"--pretrained '{tag}' is neither a file, a REACT tag for --model {args.model}, nor an "
                           f"OpenCLIP tag for it. REACT tags: {REACT_TAGS_HINT}; "
                           f"`python -c 'import open_clip; print(open_clip.list_pretrained())'` lists OpenCLIP's.")
    return resolve_card_weights(card, tag), quick_gelu or tag_quick_gelu


# ----------------------------------------------------------------------------------------------------------------------
# building and loading

def load_into(model, state_dict, source: str, allow_missing_gated: bool) -> None:
    """Strict loading; a REACT model may miss its gated keys (they keep their fresh initialisation, logged)."""
    from harness.models import load_weights_strict
    from harness.models.react import GATED_ATTR, is_gated_key

    excused = load_weights_strict(model, state_dict, source,
                                  allowed_missing=is_gated_key if allow_missing_gated else None)
    if excused:
        blocks = sorted({k.split(f".{GATED_ATTR}.")[0] for k in excused})
        logger.info("%s has no gated blocks: %d gated keys keep their fresh initialisation (gates at 0, so the model "
                    "starts equal to the base model): %s", source, len(excused), ", ".join(blocks))
        for key in excused:
            logger.debug("  initialised fresh: %s", key)


def build(args, device, quick_gelu: bool) -> tuple[Any, Any, Any]:
    """(model, preprocess_train, preprocess_val); the timm training transform when --aug-cfg asks for it."""
    from harness.models.factory import create_model_and_transforms
    from training.augment import check_aug_cfg, needs_own_transform, timm_train_transform

    check_aug_cfg(args.aug_cfg)
    own_aug = needs_own_transform(args.aug_cfg)
    model, preprocess_train, preprocess_val = create_model_and_transforms(
        args.model, precision=args.precision, device=device, force_quick_gelu=quick_gelu,
        force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
        image_mean=args.image_mean, image_std=args.image_std, image_interpolation=args.image_interpolation,
        image_resize_mode=args.image_resize_mode, aug_cfg=None if own_aug else args.aug_cfg, output_dict=True)
    if own_aug:
        pc = model.visual.preprocess_cfg
        preprocess_train = timm_train_transform(args.aug_cfg, pc["size"], pc["mean"], pc["std"])
        logger.info("training augmentation (timm): %s", args.aug_cfg)
    return model, preprocess_train, preprocess_val


def load_resume(args, model, is_react: bool) -> tuple[int, dict | None]:
    """--resume: a training checkpoint (start epoch and its optimizer state) or bare weights (epoch 0)."""
    from harness.models import read_weights_file, state_dict_from

    if not os.path.isfile(args.resume):
        raise HarnessError(f"--resume {args.resume}: no such file. To make the README's "
                           f"./checkpoints/ViT-B-32.pt run: python -m training.export_base --card vitb32_CLIP "
                           f"--out ./checkpoints/ViT-B-32.pt")
    checkpoint = read_weights_file(Path(args.resume))  # read once: weights, and optimizer state on resume
    state_dict = state_dict_from(checkpoint, args.resume)
    if isinstance(checkpoint, dict) and "epoch" in checkpoint and "state_dict" in checkpoint:
        start_epoch = int(checkpoint["epoch"])
        load_into(model, state_dict, f"--resume {args.resume}", False)
        logger.info("resuming training checkpoint %s (completed epoch %d)", args.resume, start_epoch)
        return start_epoch, checkpoint
    load_into(model, state_dict, f"--resume {args.resume}", is_react)
    logger.info("loaded bare weights %s (epoch 0)", args.resume)
    return 0, None


def apply_locks(args, model, is_react: bool) -> None:
    """--lock-image, --lock-image-unlock-gated (REACT), --lock-text."""
    import open_clip

    from training import loop

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


def apply_checkpointing(args, model) -> None:
    """--grad-checkpointing (OpenCLIP's) and --react-always-checkpoint-gated (every gated block, as REACT did)."""
    from training import loop

    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.react_always_checkpoint_gated:
        logger.info("checkpointing all %d gated blocks (original REACT behaviour)",
                    loop.always_checkpoint_gated_blocks(model))


def log_trainable(args, model) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %d parameters, %d trainable in %d tensors (%s)", args.model, n_total, n_train,
                len(trainable), ", ".join(sorted({n.split(".")[0] for n in trainable})))


def prepare_model(args, device) -> PreparedModel:
    """Create the model, load --pretrained / --resume weights, apply the --lock-* flags and checkpointing.
    Sets ``args.resolved_quick_gelu`` (recorded in the run's model card)."""
    from harness.models import read_state_dict
    from harness.models.react import gated_parameter_names

    pretrained_path, quick_gelu = resolve_pretrained(args)
    args.resolved_quick_gelu = quick_gelu
    model, preprocess_train, preprocess_val = build(args, device, quick_gelu)
    is_react = bool(gated_parameter_names(model))
    if pretrained_path is not None:
        load_into(model, read_state_dict(pretrained_path), f"--pretrained {pretrained_path}", is_react)
    start_epoch, checkpoint = load_resume(args, model, is_react) if args.resume else (0, None)
    apply_locks(args, model, is_react)
    log_trainable(args, model)
    apply_checkpointing(args, model)
    return PreparedModel(model, preprocess_train, preprocess_val, is_react, start_epoch, checkpoint)
