"""Training-step benchmark: throughput and activation memory of the tuning modes on one tiny config.

Modes (same model family, same batch): full fine-tuning (plain CLIP), locked-text (image tower trains), gated-image
(only gated blocks + logit_scale; frozen prefix without autograd), and gated-image with the original REACT code's
always-checkpointed gated blocks. Memory is the bytes autograd saves for backward during one step (measured with
saved-tensor hooks, so it works on CPU); on a GPU, peak allocated memory is printed as well. Ratios are to full
fine-tuning measured in the same run. Nothing is asserted about speed.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

GATED_LAST_K = 2
MODES = ("full", "locked-text", "gated-image", "gated-image+always-ckpt")
BATCH = 64
RESULTS: dict[str, dict[str, float]] = {}


def _bench_config():
    """A ViT with more depth than the test model, so the frozen prefix and checkpointing matter: 6 layers, width 64,
    gated blocks in the last 2 (the react_ViT-B-32 ratio of 6 of 12 would be 3; 2 keeps the prefix visible)."""
    import json
    import tempfile

    import open_clip

    base = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 6, "width": 64, "head_width": 32,
                                            "patch_size": 4},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    folder = Path(tempfile.mkdtemp(prefix="bench-configs-"))
    (folder / "bench-ViT-6L.json").write_text(json.dumps(base))
    open_clip.add_model_config(folder)  # OpenCLIP's public way to add a config


def _make(mode: str):
    import open_clip

    from harness.models.react import insert_gated_blocks
    from training import loop

    torch.manual_seed(0)
    model = open_clip.create_model("bench-ViT-6L", output_dict=True)
    if mode.startswith("gated-image"):
        insert_gated_blocks(model, GATED_LAST_K)
    if mode == "locked-text":
        model.lock_text_tower(freeze_layer_norm=True)
    if mode.startswith("gated-image"):
        loop.lock_image_unlock_gated(model)
        model.lock_text_tower(freeze_layer_norm=True)
        loop.run_frozen_prefix_without_autograd(model)
    if mode == "gated-image+always-ckpt":
        loop.always_checkpoint_gated_blocks(model)
    model.train()
    opt = loop.make_optimizer(model, 1e-4, 0.1, 0.9, 0.98, 1e-6)
    return model, opt


def _step(model, opt, loss_fn, images, texts):
    opt.zero_grad(set_to_none=True)
    out = model(images, texts)
    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    opt.step()
    return loss


def _saved_bytes(model, opt, loss_fn, images, texts) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(model, opt, loss_fn, images, texts)
    return total


@pytest.fixture(scope="module", autouse=True)
def _report():
    _bench_config()
    yield
    if not RESULTS:
        return
    base = RESULTS.get("full")
    print("\n\nTraining step, tiny 6-layer ViT, batch", BATCH, "(ratios to full fine-tuning, same run)")
    print(f"{'mode':26s} {'samples/s':>10s} {'x full':>7s} {'saved MiB':>10s} {'x full':>7s} {'trainable':>10s}")
    for mode in MODES:
        r = RESULTS.get(mode)
        if not r:
            continue
        print(f"{mode:26s} {r['samples_per_s']:10.1f} {r['samples_per_s'] / base['samples_per_s']:7.2f} "
              f"{r['saved_bytes'] / 2**20:10.2f} {r['saved_bytes'] / base['saved_bytes']:7.2f} "
              f"{int(r['trainable']):10d}" + (f"  peak CUDA {r['cuda_peak'] / 2**20:.1f} MiB" if 'cuda_peak' in r
                                                else ""))


@pytest.mark.parametrize("mode", MODES)
def test_training_step(benchmark, mode):
    import open_clip

    model, opt = _make(mode)
    loss_fn = open_clip.ClipLoss()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    texts = torch.randint(1, 49407, (BATCH, 77), generator=g)
    _step(model, opt, loss_fn, images, texts)  # warm-up
    saved = _saved_bytes(model, opt, loss_fn, images, texts)
    start = time.perf_counter()
    benchmark.pedantic(_step, args=(model, opt, loss_fn, images, texts), rounds=5, iterations=1, warmup_rounds=1)
    stats = benchmark.stats.stats if benchmark.stats else None
    seconds = stats.mean if stats else (time.perf_counter() - start) / 6
    RESULTS[mode] = {"samples_per_s": BATCH / seconds, "saved_bytes": saved,
                     "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    # correctness, not speed: the right parameters train, and the always-checkpoint mode changes nothing numerically
    if mode.startswith("gated-image"):
        from harness.models.react import gated_parameter_names

        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert sorted(trainable) == sorted(gated_parameter_names(model) + ["logit_scale"])
