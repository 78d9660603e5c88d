"""REACT gated-image architecture on OpenCLIP 3.3's own modules.

Importing this module
* registers the ``react_*`` model configs (JSONs in ``training/model_configs``) with OpenCLIP, and
* wraps OpenCLIP's ``_build_vision_tower`` (idempotently) so that ANY config whose ``vision_cfg`` carries
  ``react_cfg = {"enabled": true, "last_k_layers": k}`` builds, through the normal ``open_clip.create_model`` /
  ``create_model_and_transforms`` calls, a vision tower whose last k ``ResidualAttentionBlock``s each hold a
  :class:`GatedAttentionBlock` (attribute ``gated_attn_block``) that runs on the block input before the block's own
  attention and MLP.

State-dict keys of the gated parts are ``visual.transformer.resblocks.{N}.gated_attn_block.<key>`` with the 14 keys in
:data:`GATED_BLOCK_KEYS`. Both gates start at 0, so a fresh gated model computes exactly what its base model computes.
"""
from __future__ import annotations

import copy
import functools
import importlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

import open_clip
from open_clip.transformer import LayerNorm, ResidualAttentionBlock

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
GATED_ATTR = "gated_attn_block"
GATED_MLP_RATIO = 4.0  # always 4.0, whatever the host block's mlp_ratio (bigG: 4.9231)
GATED_BLOCK_KEYS = (
    "alpha_attn", "alpha_dense",
    "ln_1.weight", "ln_1.bias",
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
    "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
)
# name -> (base OpenCLIP config, last_k_layers); the JSON files in MODEL_CONFIG_DIR are these, written out.
REACT_CONFIGS: dict[str, tuple[str, int]] = {
    "react_ViT-B-32": ("ViT-B-32", 6),
    "react_ViT-B-32-quickgelu": ("ViT-B-32-quickgelu", 6),
    "react_ViT-B-16": ("ViT-B-16", 6),
    "react_ViT-L-14": ("ViT-L-14", 6),
    "react_ViT-bigG-14": ("ViT-bigG-14", 12),
    "react_tiny-ViT-32px": ("tiny-ViT-32px", 1),  # base lives in harness/model_configs (tests only)
}


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
    """A fresh gated block matching a host block: width, heads, layout, norm class/eps, activation, device, dtype."""
    act = _host_activation(block)
    ln = block.ln_1
    ref = ln.weight
    norm_layer = functools.partial(type(ln), eps=ln.eps)
    return GatedAttentionBlock(
        block.attn.embed_dim,
        block.attn.num_heads,
        act_layer=lambda: copy.deepcopy(act),
        norm_layer=norm_layer,
        batch_first=block.attn.batch_first,
        device=ref.device,
        dtype=ref.dtype,
    )


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


def react_config_names() -> list[str]:
    """Names of the REACT model configs this module registers with OpenCLIP."""
    return list(REACT_CONFIGS)


def make_react_config(base_name: str, last_k_layers: int) -> dict:
    """An OpenCLIP model config: the base config plus ``vision_cfg.react_cfg = {enabled: true, last_k_layers}``."""
    cfg = open_clip.get_model_config(base_name)
    if cfg is None:
        raise ValueError(f"no OpenCLIP model config '{base_name}'")
    cfg = copy.deepcopy(cfg)
    cfg["vision_cfg"]["react_cfg"] = {"enabled": True, "last_k_layers": int(last_k_layers)}
    return cfg


def parse_react_cfg(react_cfg: Any) -> int:
    """last_k_layers from a ``react_cfg`` entry; 0 when absent or disabled. Unknown keys are errors."""
    if react_cfg is None:
        return 0
    if not isinstance(react_cfg, dict):
        raise ValueError(f"vision_cfg.react_cfg must be a mapping, got {react_cfg!r}")
    unknown = set(react_cfg) - {"enabled", "last_k_layers"}
    if unknown:
        raise ValueError(f"vision_cfg.react_cfg has unknown keys {sorted(unknown)}")
    if not react_cfg.get("enabled", True):
        return 0
    k = react_cfg.get("last_k_layers")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"vision_cfg.react_cfg.last_k_layers must be a positive int, got {k!r}")
    return k


# ----------------------------------------------------------------------------------------------------------------------
# OpenCLIP integration

def _wrap_build_vision_tower(original: Callable) -> Callable:
    @functools.wraps(original)
    def build_vision_tower(embed_dim, vision_cfg, quick_gelu: bool = False, cast_dtype=None):
        react_cfg = None
        if isinstance(vision_cfg, dict) and "react_cfg" in vision_cfg:
            vision_cfg = dict(vision_cfg)
            react_cfg = vision_cfg.pop("react_cfg")
        k = parse_react_cfg(react_cfg)
        visual = original(embed_dim, vision_cfg, quick_gelu, cast_dtype)
        if k:
            insert_gated_blocks(visual, k)
        return visual

    build_vision_tower._react_wrapped = True  # type: ignore[attr-defined]
    build_vision_tower._react_original = original  # type: ignore[attr-defined]
    return build_vision_tower


def _install_patch() -> None:
    """Wrap ``_build_vision_tower`` where OpenCLIP's model classes look it up (module globals); idempotent."""
    for mod_name in ("open_clip.model", "open_clip.coca_model"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # coca may be unavailable in stripped installs
            continue
        current = getattr(mod, "_build_vision_tower", None)
        if current is not None and not getattr(current, "_react_wrapped", False):
            setattr(mod, "_build_vision_tower", _wrap_build_vision_tower(current))


def _register_configs() -> None:
    """Add MODEL_CONFIG_DIR to OpenCLIP's config paths (once); fill in any built-in-based config whose JSON is
    missing (e.g. a non-editable install without package data) from its base config."""
    factory = open_clip.factory
    known = {str(Path(p).resolve()) for p in factory._MODEL_CONFIG_PATHS}
    if MODEL_CONFIG_DIR.is_dir() and str(MODEL_CONFIG_DIR) not in known:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    for name, (base, k) in REACT_CONFIGS.items():
        if name not in factory._MODEL_CONFIGS and open_clip.get_model_config(base) is not None:
            logger.warning("REACT config %s.json not found in %s; deriving it from %s", name, MODEL_CONFIG_DIR, base)
            factory._MODEL_CONFIGS[name] = make_react_config(base, k)


def config_file(name: str) -> Path:
    """The JSON file of a registered REACT config."""
    return MODEL_CONFIG_DIR / f"{name}.json"


def read_config_file(name: str) -> dict:
    with open(config_file(name)) as f:
        return json.load(f)


_install_patch()
_register_configs()

__all__ = [
    "GATED_ATTR", "GATED_BLOCK_KEYS", "GATED_MLP_RATIO", "MODEL_CONFIG_DIR", "REACT_CONFIGS",
    "GatedAttentionBlock", "ReactResidualAttentionBlock", "config_file", "gated_block_for", "gated_blocks",
    "gated_parameter_names", "insert_gated_blocks", "is_gated_key", "make_react_config", "parse_react_cfg",
    "react_config_names", "read_config_file",
]
