"""Training augmentation from ``--aug-cfg``, accepting the REACT README's keys.

OpenCLIP 3.3's AugmentationCfg knows scale, ratio, color_jitter, re_prob, re_count, use_timm (and two SimCLR-style
probabilities); with use_timm it fixes hflip at 0 and takes interpolation from the model. REACT's fork also passed
``hflip``, ``interpolation`` and ``auto_augment`` through to timm, and its README uses all three. So with
``use_timm=True`` we build the transform with timm's ``create_transform`` ourselves, passing every key; without
timm, OpenCLIP's own transform is used and timm-only keys are an error rather than silently ignored.
"""
from __future__ import annotations

from typing import Any

from harness.core.errors import HarnessError, did_you_mean

OPENCLIP_KEYS = {"scale", "ratio", "color_jitter", "re_prob", "re_count", "use_timm", "color_jitter_prob",
                 "gray_scale_prob"}
TIMM_KEYS = {"scale", "ratio", "hflip", "vflip", "interpolation", "color_jitter", "auto_augment", "re_prob",
             "re_count", "re_mode", "re_split", "use_timm"}


def needs_own_transform(aug_cfg: dict[str, Any] | None) -> bool:
    return bool(aug_cfg) and bool(aug_cfg.get("use_timm"))


def check_aug_cfg(aug_cfg: dict[str, Any] | None) -> None:
    if not aug_cfg:
        return
    valid = TIMM_KEYS if aug_cfg.get("use_timm") else OPENCLIP_KEYS
    for key in aug_cfg:
        if key not in valid:
            extra = " (timm-only keys such as hflip, interpolation, auto_augment need use_timm=True)" \
                if key in TIMM_KEYS else ""
            raise HarnessError(f"--aug-cfg: unknown key '{key}'.{did_you_mean(key, valid)}{extra} "
                               f"Valid keys: {', '.join(sorted(valid))}.")


def _posterize_keeping_zero_bits(img, bits_to_keep, **_):
    """timm's posterize, defined for bits_to_keep=0 as well.

    timm's 'inc1' RandAugment ops map the top magnitudes to "keep 0 bits" (a black image), which Pillow < 11
    accepted; Pillow 11+ raises for bits < 1, so every such sample would be dropped. Keeping 0 bits clears every
    channel value, which we do directly.
    """
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def _fix_posterize_ops(transform: Any) -> int:
    """Give the posterize ops of this transform's RandAugment/AutoAugment the 0-bit meaning, in place.

    Only this transform instance changes (its ``AugmentOp.aug_fn`` attributes): timm's own tables stay as they are.
    Returns how many ops were changed; tests/test_training.py fails loudly when timm renames these attributes.
    """
    changed = 0
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", None) or []:
            if getattr(op, "name", None) in POSTERIZE_OPS and hasattr(op, "aug_fn"):
                op.aug_fn = _posterize_keeping_zero_bits
                changed += 1
    return changed


def timm_train_transform(aug_cfg: dict[str, Any], image_size: int | tuple[int, int], mean, std):
    """timm's training transform with every --aug-cfg key (REACT: scale, ratio, hflip, interpolation,
    color_jitter, auto_augment, re_prob, re_count)."""
    from timm.data import create_transform

    cfg = {k: v for k, v in aug_cfg.items() if k != "use_timm"}
    size = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    cfg.setdefault("re_mode", "pixel")
    cfg.setdefault("hflip", 0.0)  # OpenCLIP's default when hflip is not given
    cfg.setdefault("color_jitter", None)
    for key in ("scale", "ratio"):
        if key in cfg:
            cfg[key] = tuple(float(x) for x in cfg[key])
    transform = create_transform(input_size=(3, *size[-2:]), is_training=True, mean=tuple(mean), std=tuple(std),
                                 **cfg)
    _fix_posterize_ops(transform)
    return transform
