"""REACT gated-image architecture (training.react) on OpenCLIP 3.3: keys, exactness, counts, loading, checkpointing."""
from __future__ import annotations

import importlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

import open_clip
from harness.models import register_project_configs

register_project_configs()  # tiny-ViT-32px + imports training.react

from training import react  # noqa: E402

# Facts from shared/reference/react.json (REACT's configs, gated-block keys, parameter counts), kept here so the suite
# runs without shared/ beside the checkout; test_reference_facts_match_shared_copy checks them against it.
REFERENCE = {
 "react_configs": {
  "react_ViT-B-32": {
   "base": "ViT-B-32",
   "react_cfg": {
    "enabled": True,
    "last_k_layers": 6
   }
  },
  "react_ViT-B-32-quickgelu": {
   "base": "ViT-B-32-quickgelu",
   "react_cfg": {
    "enabled": True,
    "last_k_layers": 6
   }
  },
  "react_ViT-B-16": {
   "base": "ViT-B-16",
   "react_cfg": {
    "enabled": True,
    "last_k_layers": 6
   }
  },
  "react_ViT-L-14": {
   "base": "ViT-L-14",
   "react_cfg": {
    "enabled": True,
    "last_k_layers": 6
   }
  },
  "react_ViT-bigG-14": {
   "base": "ViT-bigG-14",
   "react_cfg": {
    "enabled": True,
    "last_k_layers": 12
   }
  }
 },
 "gated_block": {
  "keys_per_block": [
   "alpha_attn",
   "alpha_dense",
   "ln_1.weight",
   "ln_1.bias",
   "attn.in_proj_weight",
   "attn.in_proj_bias",
   "attn.out_proj.weight",
   "attn.out_proj.bias",
   "ln_2.weight",
   "ln_2.bias",
   "mlp.c_fc.weight",
   "mlp.c_fc.bias",
   "mlp.c_proj.weight",
   "mlp.c_proj.bias"
  ],
  "state_dict_prefix": "visual.transformer.resblocks.{N}.gated_attn_block.",
  "param_counts": {
   "react_ViT-B-32": {
    "total": 193804557,
    "gated": 42527244
   },
   "react_ViT-L-14": {
    "total": 503193869,
    "gated": 75577356
   },
   "react_ViT-bigG-14": {
    "total": 2938547737,
    "gated": 398980632
   }
  }
 }
}
SHARED_REACT_JSON = Path(__file__).resolve().parents[2] / "shared" / "reference" / "react.json"


@pytest.mark.skipif(not SHARED_REACT_JSON.is_file(), reason="shared/reference not beside this checkout")
def test_reference_facts_match_shared_copy():
    shared = json.loads(SHARED_REACT_JSON.read_text())
    assert REFERENCE["react_configs"] == shared["react_configs"]
    for key, value in REFERENCE["gated_block"].items():
        assert shared["gated_block"][key] == value
TINY, TINY_BASE = "react_tiny-ViT-32px", "tiny-ViT-32px"


def _build(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return open_clip.create_model(name, **kwargs).eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 32, 32, generator=g)
    text = torch.randint(1, 49407, (3, 77), generator=g)
    return images, text


def _gated_from_base(quick_gelu: bool):
    base = _build(TINY_BASE, seed=0, force_quick_gelu=quick_gelu)
    gated = _build(TINY, seed=1, force_quick_gelu=quick_gelu)
    result = gated.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(react.is_gated_key(k) for k in result.missing_keys)
    return base, gated


def test_configs_registered_and_match_base():
    assert react.react_config_names() == list(REFERENCE["react_configs"]) + [TINY]
    models = open_clip.list_models()
    for name in react.react_config_names():
        assert name in models
        base, k = react.REACT_CONFIGS[name]
        if name in REFERENCE["react_configs"]:
            assert REFERENCE["react_configs"][name] == {"base": base, "react_cfg": {"enabled": True,
                                                                                      "last_k_layers": k}}
        expected = react.make_react_config(base, k)
        assert react.read_config_file(name) == expected
        assert open_clip.get_model_config(name) == expected


def test_patch_is_idempotent():
    before = open_clip.model._build_vision_tower
    assert before._react_wrapped and not getattr(before._react_original, "_react_wrapped", False)
    # execute the module a second time (as a second import under another name would) and call the installers again
    spec = importlib.util.spec_from_file_location("_react_second_copy", react.__file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    react._install_patch()
    react._register_configs()
    assert open_clip.model._build_vision_tower is before
    paths = [str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS]
    assert paths.count(str(react.MODEL_CONFIG_DIR)) == 1
    model = _build(TINY)
    assert len(react.gated_blocks(model)) == 1
    assert isinstance(model.visual.transformer.resblocks[-1], react.ReactResidualAttentionBlock)
    assert not any(react.is_gated_key(k[len("visual.transformer.resblocks.1.gated_attn_block."):])
                   for k in model.state_dict() if react.is_gated_key(k))  # no nested gated blocks


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_fresh_gated_model_equals_base_exactly(quick_gelu):
    base, gated = _gated_from_base(quick_gelu)
    images, text = _inputs()
    with torch.no_grad():
        assert torch.equal(gated.encode_image(images), base.encode_image(images))
        assert torch.equal(gated.encode_text(text), base.encode_text(text))


def test_state_dict_keys_and_gates():
    k = react.parse_react_cfg(open_clip.get_model_config(TINY)["vision_cfg"]["react_cfg"])
    base_keys = set(_build(TINY_BASE).state_dict())
    model = _build(TINY)
    sd = model.state_dict()
    n_layers = len(model.visual.transformer.resblocks)
    assert tuple(REFERENCE["gated_block"]["keys_per_block"]) == react.GATED_BLOCK_KEYS
    expected = set(base_keys)
    for n in range(n_layers - k, n_layers):
        prefix = REFERENCE["gated_block"]["state_dict_prefix"].format(N=n)
        expected |= {prefix + key for key in react.GATED_BLOCK_KEYS}
    assert set(sd) == expected
    gated_names = react.gated_parameter_names(model)
    assert set(gated_names) == expected - base_keys
    assert [k for k in sd if react.is_gated_key(k)] == gated_names  # same order, no buffers
    for key in gated_names:
        if key.endswith(("alpha_attn", "alpha_dense")):
            assert sd[key].dim() == 0 and sd[key].item() == 0.0
    assert not react.is_gated_key("visual.transformer.resblocks.1.attn.in_proj_weight")


def test_gated_block_structure_follows_host():
    model = _build(TINY)
    (idx, gated), = react.gated_blocks(model).items()
    host = model.visual.transformer.resblocks[idx]
    width = host.attn.embed_dim
    assert type(gated.ln_1) is type(host.ln_1) is open_clip.transformer.LayerNorm
    assert gated.ln_1.eps == host.ln_1.eps == 1e-5
    assert gated.attn.batch_first == host.attn.batch_first is True
    assert gated.attn.num_heads == host.attn.num_heads
    assert gated.mlp.c_fc.out_features == int(4.0 * width)
    assert type(gated.mlp.gelu) is type(host.mlp.gelu) is torch.nn.GELU


def test_force_quick_gelu_uses_quickgelu():
    for gated in react.gated_blocks(_build(TINY, force_quick_gelu=True)).values():
        assert type(gated.mlp.gelu) is open_clip.transformer.QuickGELU
    with torch.device("meta"):  # a config with quick_gelu set in the JSON itself
        model = open_clip.create_model("react_ViT-B-32-quickgelu", device="meta")
    acts = {type(g.mlp.gelu) for g in react.gated_blocks(model).values()}
    assert acts == {open_clip.transformer.QuickGELU}


@pytest.mark.parametrize("name", ["react_ViT-B-32", "react_ViT-L-14", "react_ViT-bigG-14"])
def test_parameter_counts(name):
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    counts = REFERENCE["gated_block"]["param_counts"][name]
    total = sum(p.numel() for p in model.parameters())
    gated = sum(p.numel() for n, p in model.named_parameters() if react.is_gated_key(n))
    assert (total, gated) == (counts["total"], counts["gated"])
    k = REFERENCE["react_configs"][name]["react_cfg"]["last_k_layers"]
    blocks = model.visual.transformer.resblocks
    assert sorted(react.gated_blocks(model)) == list(range(len(blocks) - k, len(blocks)))


def test_bigg_gated_mlp_ignores_host_mlp_ratio():
    with torch.device("meta"):
        model = open_clip.create_model("react_ViT-bigG-14", device="meta")
    gated = next(iter(react.gated_blocks(model).values()))
    assert gated.mlp.c_fc.out_features == 6656
    assert model.visual.transformer.resblocks[-1].mlp.c_fc.out_features != 6656


def test_nonzero_gate_changes_image_not_text():
    base, gated = _gated_from_base(False)
    images, text = _inputs()
    with torch.no_grad():
        next(iter(react.gated_blocks(gated).values())).alpha_attn.fill_(0.5)
        assert not torch.equal(gated.encode_image(images), base.encode_image(images))
        assert torch.equal(gated.encode_text(text), base.encode_text(text))


def test_state_dict_roundtrip_strict():
    model = _build(TINY, seed=3)
    with torch.no_grad():
        for g in react.gated_blocks(model).values():
            g.alpha_attn.fill_(0.3)
            g.alpha_dense.fill_(-0.2)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _build(TINY, seed=4)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    images, text = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), model.encode_image(images))
        assert torch.equal(fresh.encode_text(text), model.encode_text(text))


def test_grad_checkpointing_trains_gated_params():
    model = _build(TINY).train()
    model.set_grad_checkpointing(True)
    assert model.visual.transformer.grad_checkpointing
    with torch.no_grad():
        for g in react.gated_blocks(model).values():
            g.alpha_attn.fill_(0.1)
            g.alpha_dense.fill_(0.1)
    images, text = _inputs()
    out = model(images, text)
    loss = out[0].square().sum() + out[1].square().sum()
    loss.backward()
    params = dict(model.named_parameters())
    names = react.gated_parameter_names(model)
    assert names
    for n in names:
        assert params[n].grad is not None and params[n].grad.abs().sum() > 0, n


def test_invalid_react_cfg_rejected():
    with pytest.raises(ValueError):
        react.parse_react_cfg({"enabled": True, "last_k_layers": 0})
    with pytest.raises(ValueError):
        react.parse_react_cfg({"enabled": True, "last_k": 2})
    assert react.parse_react_cfg({"enabled": False, "last_k_layers": 3}) == 0
    cfg = react.make_react_config(TINY_BASE, 5)  # more than the tower's 2 layers
    with pytest.raises(ValueError):
        open_clip.model.CLIP(**cfg)
