"""REACT gated-image architecture (harness.models.react / factory) on OpenCLIP 3.3: keys, exactness, counts,
loading, checkpointing, and the gated block's forward maths computed by hand."""
from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from scipy.special import erf

import open_clip
from harness.core.errors import HarnessError
from harness.models import factory, react

from conftest import REFERENCE_DIR

# Facts from reference/react.json (REACT's configs, gated-block keys, parameter counts).
REFERENCE = json.loads((REFERENCE_DIR / "react.json").read_text(encoding="utf-8"))
TINY, TINY_BASE = "react_tiny-ViT-32px", "tiny-ViT-32px"


def _build(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return factory.create_model(name, **kwargs).eval()


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


def test_react_architectures_are_the_reference_configs_on_openclip_bases():
    archs = factory.react_architectures()
    assert sorted(archs) == sorted(list(REFERENCE["react_configs"]) + [TINY])
    for name, arch in archs.items():
        if name in REFERENCE["react_configs"]:
            assert REFERENCE["react_configs"][name] == {"base": arch.base, "react_cfg": {
                "enabled": True, "last_k_layers": arch.last_k_layers}}
        # the JSON (REACT fork format) is OpenCLIP's base config plus react_cfg, and the guard accepts it
        assert factory.base_config_of(arch) == open_clip.get_model_config(arch.base)
        assert factory.model_config(name)["vision_cfg"]["react_cfg"]["last_k_layers"] == arch.last_k_layers
    assert set(archs) <= set(factory.list_architectures())
    assert factory.canonical_name("react_ViT-G-14") == "react_ViT-bigG-14"


def test_a_changed_openclip_base_config_fails_loudly(tmp_path, monkeypatch):
    """If OpenCLIP's base config ever differs from what a REACT JSON says, building fails with what to do."""
    cfg = copy.deepcopy(factory.model_config(TINY))
    cfg["vision_cfg"]["width"] = 96  # as if OpenCLIP had changed tiny-ViT-32px under us
    (tmp_path / f"{TINY}.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(factory, "REACT_CONFIG_DIR", tmp_path)
    factory.react_architectures.cache_clear()
    try:
        with pytest.raises(HarnessError, match="no longer matches OpenCLIP's 'tiny-ViT-32px' config"):
            factory.create_model(TINY)
    finally:
        monkeypatch.undo()
        factory.react_architectures.cache_clear()
    assert len(react.gated_blocks(factory.create_model(TINY))) == 1


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_fresh_gated_model_equals_base_exactly(quick_gelu):
    base, gated = _gated_from_base(quick_gelu)
    images, text = _inputs()
    with torch.no_grad():
        assert torch.equal(gated.encode_image(images), base.encode_image(images))
        assert torch.equal(gated.encode_text(text), base.encode_text(text))


def test_state_dict_keys_and_gates():
    k = factory.react_architecture(TINY).last_k_layers
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
        model = factory.create_model("react_ViT-B-32-quickgelu", device="meta")
    acts = {type(g.mlp.gelu) for g in react.gated_blocks(model).values()}
    assert acts == {open_clip.transformer.QuickGELU}


@pytest.mark.parametrize("name", ["react_ViT-B-32", "react_ViT-L-14", "react_ViT-bigG-14"])
def test_parameter_counts(name):
    with torch.device("meta"):
        model = factory.create_model(name, device="meta")
    counts = REFERENCE["gated_block"]["param_counts"][name]
    total = sum(p.numel() for p in model.parameters())
    gated = sum(p.numel() for n, p in model.named_parameters() if react.is_gated_key(n))
    assert (total, gated) == (counts["total"], counts["gated"])
    k = REFERENCE["react_configs"][name]["react_cfg"]["last_k_layers"]
    blocks = model.visual.transformer.resblocks
    assert sorted(react.gated_blocks(model)) == list(range(len(blocks) - k, len(blocks)))


def test_bigg_gated_mlp_ignores_host_mlp_ratio():
    with torch.device("meta"):
        model = factory.create_model("react_ViT-bigG-14", device="meta")
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
    with pytest.raises(ValueError, match="between 1 and the tower's 2 layers"):
        react.insert_gated_blocks(_build(TINY_BASE), 5)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gated_blocks_follow_openclip_precision_per_part(precision):
    """OpenCLIP's fp16/bf16 precisions cast linear layers and keep LayerNorms in fp32: the gated parts follow."""
    model = factory.create_model(TINY, precision=precision)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    for idx, gated in react.gated_blocks(model).items():
        host = model.visual.transformer.resblocks[idx]
        assert gated.attn.in_proj_weight.dtype == host.attn.in_proj_weight.dtype == dtype
        assert gated.mlp.c_fc.weight.dtype == host.mlp.c_fc.weight.dtype == dtype
        assert gated.ln_1.weight.dtype == host.ln_1.weight.dtype


# ----------------------------------------------------------------------------------------------------------------------
# the forward maths, by hand (numpy, float64) — not through any torch module

def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * _np(ln.weight) + _np(ln.bias)


def _attention(h, attn):
    """nn.MultiheadAttention (batch_first, self-attention, no mask) written out."""
    d = attn.embed_dim
    heads = attn.num_heads
    w, b = _np(attn.in_proj_weight), _np(attn.in_proj_bias)
    q, k, v = (h @ w[i * d:(i + 1) * d].T + b[i * d:(i + 1) * d] for i in range(3))
    B, N, _ = h.shape
    split = lambda t: t.reshape(B, N, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    out = (scores @ v).transpose(0, 2, 1, 3).reshape(B, N, d)
    return out @ _np(attn.out_proj.weight).T + _np(attn.out_proj.bias)


def _mlp(h, mlp):
    z = h @ _np(mlp.c_fc.weight).T + _np(mlp.c_fc.bias)
    if isinstance(mlp.gelu, open_clip.transformer.QuickGELU):
        z = z / (1 + np.exp(-1.702 * z))
    else:
        z = 0.5 * z * (1 + erf(z / np.sqrt(2)))  # exact GELU
    return z @ _np(mlp.c_proj.weight).T + _np(mlp.c_proj.bias)


def _block(x, blk, gates=None):
    """A pre-LN residual block; ``gates`` = (alpha_attn, alpha_dense) scales each branch by tanh(alpha)."""
    ga, gd = (np.tanh(gates[0]), np.tanh(gates[1])) if gates is not None else (1.0, 1.0)
    x = x + ga * _attention(_layer_norm(x, blk.ln_1), blk.attn)
    return x + gd * _mlp(_layer_norm(x, blk.ln_2), blk.mlp)


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_gated_block_forward_by_hand():
    """x + tanh(a_attn)·attn(ln_1 x), then + tanh(a_dense)·mlp(ln_2 x): tanh of the gates, not the gates."""
    torch.manual_seed(0)
    gated = react.GatedAttentionBlock(width=8, heads=2)
    _randomise(gated, 1)
    with torch.no_grad():
        gated.alpha_attn.fill_(0.9)
        gated.alpha_dense.fill_(-1.3)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = _np(gated(x))
    expected = _block(_np(x), gated, gates=(0.9, -1.3))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    ungated = _block(_np(x), gated)
    untanhed = _np(x) + 0.9 * _attention(_layer_norm(_np(x), gated.ln_1), gated.attn)
    untanhed = untanhed + -1.3 * _mlp(_layer_norm(untanhed, gated.ln_2), gated.mlp)
    assert np.abs(got - untanhed).max() > 1e-2  # gating by alpha itself would be caught
    assert np.abs(got - ungated).max() > 1e-2  # no gating at all would be caught


def test_gated_blocks_run_before_their_host_in_the_last_k_blocks_only():
    """Every vision block's output, from its captured input: host(x) for the first L-k blocks,
    host(gated(x)) for the last k — and not gated(host(x))."""
    torch.manual_seed(0)
    arch = factory.react_architecture(TINY)
    model = factory.create_model(TINY).eval()
    _randomise(model.visual, 5)
    blocks = model.visual.transformer.resblocks
    gates = {}
    with torch.no_grad():
        for i, g in react.gated_blocks(model).items():
            g.alpha_attn.fill_(0.6 + 0.1 * i)
            g.alpha_dense.fill_(-0.8)
            gates[i] = (0.6 + 0.1 * i, -0.8)
    assert sorted(gates) == list(range(len(blocks) - arch.last_k_layers, len(blocks)))
    seen = {}
    hooks = [b.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, (_np(inp[0]), _np(out))))
             for i, b in enumerate(blocks)]
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    for h in hooks:
        h.remove()
    assert sorted(seen) == list(range(len(blocks)))
    for i, blk in enumerate(blocks):
        x, out = seen[i]
        if i in gates:
            expected = _block(_block(x, blk.gated_attn_block, gates[i]), blk)
            swapped = _block(_block(x, blk), blk.gated_attn_block, gates[i])
            assert np.abs(out - swapped).max() > 1e-2, i
        else:
            assert not hasattr(blk, react.GATED_ATTR)
            expected = _block(x, blk)
        np.testing.assert_allclose(out, expected, atol=5e-5, err_msg=f"vision block {i}")
