"""Precision: the one place that maps a precision name to autocast, input dtype and weight dtype.

Built on OpenCLIP's own helpers (``open_clip_train.precision.get_autocast``, ``open_clip.get_input_dtype``,
``open_clip.get_cast_dtype``). The harness's names are OpenCLIP's short ones; OpenCLIP's long aliases are accepted::

    fp32       fp32 weights, no autocast
    amp        fp32 weights, autocast fp16 on GPU (with a GradScaler when training) — bf16 on CPU, where fp16
               autocast is not a practical option
    amp_bf16   fp32 weights, autocast bf16 (alias amp_bfloat16)
    fp16, bf16 pure half weights and inputs (aliases pure_fp16, pure_bf16)
"""
from __future__ import annotations

from typing import Any, Callable

PRECISIONS = ("fp32", "amp", "amp_bf16", "fp16", "bf16")
_ALIASES = {"amp_bfloat16": "amp_bf16", "pure_fp16": "fp16", "pure_bf16": "bf16"}


def canonical(precision: str) -> str:
    """The harness name of a precision (OpenCLIP's aliases accepted); a ValueError for anything else."""
    name = _ALIASES.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    return name


def _device_type(device: Any) -> str:
    return "cuda" if str(getattr(device, "type", device)).startswith("cuda") else "cpu"


def autocast(precision: str, device: Any) -> Callable[[], Any]:
    """A zero-argument factory of the autocast context for this precision on this device (a no-op context for the
    non-amp precisions), as OpenCLIP's ``get_autocast`` returns it."""
    from open_clip_train.precision import get_autocast

    name = canonical(precision)
    device_type = _device_type(device)
    if name == "amp" and device_type == "cpu":
        name = "amp_bf16"
    return get_autocast(name, device_type=device_type)


def input_dtype(precision: str):
    """dtype of the images fed to the model: the weights' dtype for pure half precisions, fp32 otherwise."""
    import open_clip
    import torch

    return open_clip.get_input_dtype(canonical(precision)) or torch.float32


def weights_dtype(precision: str):
    """dtype the whole model is cast to for the pure half precisions; None keeps fp32 weights."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(canonical(precision))


def needs_grad_scaler(precision: str, device: Any) -> bool:
    """fp16 autocast training on GPU needs loss scaling; bf16 and CPU (bf16 autocast) do not."""
    return canonical(precision) == "amp" and _device_type(device) == "cuda"
