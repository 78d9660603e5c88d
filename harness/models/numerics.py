"""Numerics: whose model code computes the forward pass — OpenCLIP's, or the ELEVATER toolkit's.

The same weights give visibly different probabilities under the two (measured on a tiny REACT checkpoint: up to
1.6e-2 per probability), so numerics are part of a protocol and of every result's run key:

- ``openclip``: OpenCLIP 3.3's modules as built (LayerNorm eps 1e-5, computed in fp32 by OpenCLIP's LayerNorm).
- ``toolkit``: what the official toolkit (``vision_benchmark``) computes for the card's ``elevater.MODEL_NAME``:
  - ``clip_react`` and the toolkit's other ``clip_*`` model codes: its own TF-style LayerNorm — computed in fp32,
    epsilon **1e-12** inside the square root — in every LayerNorm of both towers; the model runs in the dtype it is
    built in (fp32);
  - OpenAI names (``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ...): the ``clip`` package — LayerNorm eps 1e-5 computed
    in fp32, weights converted to fp16 on CUDA (unless the toolkit's ``CLIP_FP32``), fp32 on CPU. On CPU that is
    OpenCLIP's arithmetic; on CUDA it is OpenCLIP's ``fp16`` precision.
  Cards without an ``elevater`` section have no toolkit model code: they keep OpenCLIP numerics.

The toolkit's LayerNorm is swapped in for the duration of a block (:func:`numerics_applied`) and swapped back after,
on the same module objects and parameters, so one loaded model serves both numerics in one process and the state
dict never changes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

NUMERICS = ("toolkit", "openclip")
TOOLKIT_LN_EPS = 1e-12
# The toolkit's model codes that build their own towers with its TF-style LayerNorm (vision_benchmark/models/).
TOOLKIT_OWN_LAYERNORM_PREFIX = "clip_"


@dataclass(frozen=True)
class NumericsPlan:
    """What a numerics choice means for one model card on one device."""
    name: str  # "toolkit" or "openclip"
    layernorm_eps: float | None  # None: keep OpenCLIP's LayerNorm; else the toolkit's, with this eps
    fp16_on_cuda: bool  # the clip package's dtype rule (weights fp16 on CUDA)
    description: str

    @property
    def key(self) -> str:
        """What of the plan changes numbers (the run key's ``numerics`` part)."""
        if self.name == "openclip":
            return "openclip"
        return f"toolkit:ln_eps={self.layernorm_eps}" if self.layernorm_eps is not None else \
            f"toolkit:clip_package:fp16_on_cuda={self.fp16_on_cuda}"


def default_numerics(protocol: str, card: Any) -> str:
    """``elevater`` runs the toolkit's numerics (when the card names a toolkit model); ``openclip`` runs OpenCLIP's."""
    return "toolkit" if protocol == "elevater" and getattr(card, "elevater", None) is not None else "openclip"


def plan(numerics: str, card: Any, device: str = "cpu") -> NumericsPlan:
    from harness.core.errors import HarnessError

    if numerics not in NUMERICS:
        raise HarnessError(f"--numerics {numerics!r}: choose one of {', '.join(NUMERICS)}.")
    elevater = getattr(card, "elevater", None)
    if numerics == "openclip" or elevater is None:
        why = "" if numerics == "openclip" else " (the card names no toolkit model: OpenCLIP's is the only code)"
        return NumericsPlan("openclip", None, False, f"OpenCLIP 3.3 modules, LayerNorm eps 1e-5{why}")
    name = elevater.MODEL_NAME
    if name.startswith(TOOLKIT_OWN_LAYERNORM_PREFIX):
        return NumericsPlan("toolkit", TOOLKIT_LN_EPS, False,
                            f"toolkit {name}: TF-style LayerNorm in fp32, eps 1e-12, both towers; fp32")
    on_cuda = str(device).startswith("cuda")
    return NumericsPlan("toolkit", None, on_cuda,
                        f"toolkit clip package ({name}): LayerNorm eps 1e-5 in fp32; weights "
                        f"{'fp16 on CUDA' if on_cuda else 'fp32 on CPU'}")


def _toolkit_layernorm_forward(self, x):
    """The toolkit's LayerNorm: statistics in fp32, ``eps`` inside the square root, affine, cast back."""
    import torch

    dtype = x.dtype
    x = x.float()
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + self._toolkit_eps)
    return (self.weight.float() * x + self.bias.float()).to(dtype)


def _layernorms(model: Any) -> list[Any]:
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.LayerNorm)]


@contextlib.contextmanager
def numerics_applied(model: Any, numerics_plan: NumericsPlan) -> Iterator[None]:
    """Run the block with the plan's LayerNorm in every LayerNorm of the model (both towers, gated blocks
    included); the modules, parameters and their classes are restored afterwards."""
    if numerics_plan.layernorm_eps is None:
        yield
        return
    import types

    swapped = []
    for ln in _layernorms(model):
        ln._toolkit_eps = numerics_plan.layernorm_eps
        ln.forward = types.MethodType(_toolkit_layernorm_forward, ln)  # this instance only
        swapped.append(ln)
    try:
        yield
    finally:
        for ln in swapped:
            del ln.forward
            del ln._toolkit_eps
