"""The REACT gated-image architecture on OpenCLIP 3.3's own modules.

A REACT model is an OpenCLIP CLIP whose last k vision ``ResidualAttentionBlock``s each hold a
:class:`GatedAttentionBlock` (attribute ``gated_attn_block``) that runs on the block input before the block's own
attention and MLP::

    x = x + tanh(alpha_attn)  * attn(ln_1(x))        # gated block (trainable in gated-image tuning)
    x = x + tanh(alpha_dense) * mlp(ln_2(x))
    x = host_block(x)                                # OpenCLIP's block, frozen

State-dict keys of the gated parts are ``visual.transformer.resblocks.{N}.gated_attn_block.<key>`` with the 14 keys in
:data:`GATED_BLOCK_KEYS`. Both gates start at 0, so a fresh gated model computes exactly what its base model computes.

Nothing here changes OpenCLIP: :func:`insert_gated_blocks` edits one built model instance. Building a REACT model by
name (``react_ViT-B-32`` ...) is :func:`harness.models.factory.create_model_and_transforms`.
"""
from __future__ import annotations

import copy
import functools
import logging
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn

from open_clip.transformer import LayerNorm, ResidualAttentionBlock

from harness.cards.model import parse_react_cfg  # noqa: F401  (lives with the config files: torch-free)

logger = logging.getLogger(__name__)

GATED_ATTR = "gated_attn_block"
GATED_MLP_RATIO = 4.0  # always 4.0, whatever the host block's mlp_ratio (bigG: 4.9231)
GATED_BLOCK_KEYS = (
    "alpha_attn", "alpha_dense",
    "ln_1.weight", "ln_1.bias",
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
    "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
)


# ----------------------------------------------------------------------------------------------------------------------
# modules

class GatedAttentionBlock(nn.Module):
    """Pre-LN self-attention + MLP, each residual branch scaled by tanh of a scalar gate initialised to 0."""

    def __init__(
            self,
            width: int,
            heads: int,
            act_layer: Callable[[], nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = LayerNorm,
            mlp_ratio: float = GATED_MLP_RATIO,
            batch_first: bool = True,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.alpha_attn = nn.Parameter(torch.zeros((), **fk))
        self.alpha_dense = nn.Parameter(torch.zeros((), **fk))
        self.ln_1 = norm_layer(width, **fk)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first, **fk)
        self.ln_2 = norm_layer(width, **fk)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden, **fk)),
            ("gelu", act_layer()),  # same child name as OpenCLIP's blocks; holds no parameters
            ("c_proj", nn.Linear(hidden, width, **fk)),
        ]))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attn_mask is not None:
            attn_mask = attn_mask.to(x.dtype)
        h = self.ln_1(x)
        x = x + torch.tanh(self.alpha_attn) * self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        x = x + torch.tanh(self.alpha_dense) * self.mlp(self.ln_2(x))
        return x


class ReactResidualAttentionBlock(ResidualAttentionBlock):
    """OpenCLIP's ResidualAttentionBlock with ``gated_attn_block`` run on the block input first.

    Instances are made by :func:`insert_gated_blocks`, which switches a built block's class in place (its own
    parameters and their keys are untouched) and adds the gated block. The forward signature is the host's, so
    OpenCLIP's ``checkpoint(block, x, None, None, attn_mask)`` grad-checkpointing call covers the gated block too.
    """

    gated_attn_block: GatedAttentionBlock

    def forward(
            self,
            q_x: torch.Tensor,
            k_x: Optional[torch.Tensor] = None,
            v_x: Optional[torch.Tensor] = None,
            attn_mask: Optional[torch.Tensor] = None,
    ):
        q_x = self.gated_attn_block(q_x, attn_mask=attn_mask)
        return super().forward(q_x, k_x, v_x, attn_mask=attn_mask)


def _host_activation(block: ResidualAttentionBlock) -> nn.Module:
    acts = [m for name, m in block.mlp.named_children() if name not in ("c_fc", "c_proj")]
    if len(acts) != 1:
        raise TypeError(f"cannot find the activation of host block mlp {block.mlp}")
    return acts[0]


def gated_block_for(block: ResidualAttentionBlock) -> GatedAttentionBlock:
    """A fresh gated block matching a host block: width, heads, layout, norm class/eps, activation, device, and the
    dtype of each part as the host's counterpart (OpenCLIP's ``fp16``/``bf16`` precisions keep LayerNorms in fp32 and
    cast linear layers; the gates follow the LayerNorms)."""
    act = _host_activation(block)
    ln = block.ln_1
    ref = ln.weight
    norm_layer = functools.partial(type(ln), eps=ln.eps)
    gated = GatedAttentionBlock(
        block.attn.embed_dim,
        block.attn.num_heads,
        act_layer=lambda: copy.deepcopy(act),
        norm_layer=norm_layer,
        batch_first=block.attn.batch_first,
        device=ref.device,
        dtype=ref.dtype,
    )
    gated.attn.to(block.attn.in_proj_weight.dtype)
    gated.mlp.to(block.mlp.c_fc.weight.dtype)
    return gated


def insert_gated_blocks(model: nn.Module, last_k_layers: int) -> list[int]:
    """Put a gated block into each of the last k blocks of a built ViT tower (or a CLIP's ``.visual``), in place.

    Returns the block indices that received one.
    """
    visual = getattr(model, "visual", model)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "conv1"):
        raise TypeError(f"REACT gated blocks need an OpenCLIP VisionTransformer tower, got {type(visual).__name__}")
    k = int(last_k_layers)
    if not 1 <= k <= len(blocks):
        raise ValueError(f"react_cfg.last_k_layers={last_k_layers} must be between 1 and the tower's "
                         f"{len(blocks)} layers")
    indices = list(range(len(blocks) - k, len(blocks)))
    for i in indices:
        blk = blocks[i]
        if hasattr(blk, GATED_ATTR):
            raise ValueError(f"vision block {i} already holds a gated block")
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            raise TypeError(f"REACT gated blocks support OpenCLIP's default self-attention ResidualAttentionBlock; "
                            f"vision block {i} is {type(blk).__name__} (block_type 'custom' is not supported)")
        gated = gated_block_for(blk)
        blk.__class__ = ReactResidualAttentionBlock
        blk.add_module(GATED_ATTR, gated)
    return indices


# ----------------------------------------------------------------------------------------------------------------------
# helpers

def is_gated_key(key: str) -> bool:
    """True for state-dict / parameter names inside a gated block."""
    return f".{GATED_ATTR}." in key or key.startswith(f"{GATED_ATTR}.")


def gated_parameter_names(model: nn.Module) -> list[str]:
    """Names of all parameters that belong to gated blocks (in ``named_parameters`` order)."""
    return [name for name, _ in model.named_parameters() if is_gated_key(name)]


def gated_blocks(model: nn.Module) -> dict[int, GatedAttentionBlock]:
    """Vision block index -> its gated block (empty for a plain CLIP)."""
    visual = getattr(model, "visual", model)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", [])
    return {i: getattr(b, GATED_ATTR) for i, b in enumerate(blocks) if isinstance(getattr(b, GATED_ATTR, None), nn.Module)}
