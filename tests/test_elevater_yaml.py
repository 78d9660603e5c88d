"""ELEVATER toolkit model YAMLs in (`--model toolkit.yaml`, built from the SPEC) and out (`export-elevater`), and
round trips: importing an exported YAML builds the card's own model."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.cards import WeightsSpec, all_model_cards, get_model_card
from harness.cli import main
from harness.core.errors import HarnessError
from harness.models import build_model, factory
from harness.models.elevater_export import export_toolkit_yaml, toolkit_yaml_for
from harness.models.elevater_yaml import resolve_model_card
from harness.models.react import gated_blocks

from conftest import REPO

# /work/elevater_parity/configs/react_tiny_vit32px.yaml, the tiny REACT model the toolkit really ran (RESULTS.md):
# verbatim but for TEST.MODEL_FILE (here a path relative to the YAML) and OUTPUT_DIR.
EXAMPLE_YAML = """\
OUTPUT_DIR: 'outputs'

INPUT:
  MEAN: [0.48145466, 0.4578275, 0.40821073]
  STD: [0.26862954, 0.26130258, 0.27577711]

MODEL:
  NAME: 'clip_react'
  CLIP_FP32: true
  SPEC:
    EMBED_DIM: 32
    USE_QUICK_GELU: true
    VISION:
      MODEL: vit
      PATCH_SIZE: 8
      WIDTH: 64
      HEADS: 2          # width 64 / head_width 32; toolkit default would be WIDTH//64 = 1
      LAYERS: 2
      USE_RCP_BLOCK: true
    TEXT:
      TOKENIZER: clip
      STYLE: clip
      CONTEXT_LENGTH: 77
      VOCAB_SIZE: 49408
      WIDTH: 32
      HEADS: 2
      LAYERS: 2
      USE_RCP_BLOCK: false
    RCP_BLOCK:
      MODE: gated_attn
      GUMBEL_SAMPLE: False
      USE_LAST_K: 1

TEST:
  BATCH_SIZE_PER_GPU: 64
  MODEL_FILE: 'tiny_react.pt'

TRAIN:
  IMAGE_SIZE: [32, 32]
"""
TINY_REACT = "react_tiny-ViT-32px"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # registered configs are written under the cache


@pytest.fixture(scope="module")
def tiny_react_sd(tmp_path_factory) -> Path:
    """A react_tiny-ViT-32px state dict with open gates (the toolkit run's recipe)."""
    torch.manual_seed(0)
    model = factory.create_model(TINY_REACT, force_quick_gelu=True)
    with torch.no_grad():
        for g in gated_blocks(model).values():
            g.alpha_attn.fill_(0.5)
            g.alpha_dense.fill_(-0.3)
    path = tmp_path_factory.mktemp("weights") / "tiny_react.pt"
    torch.save(model.state_dict(), path)
    return path


def _write(folder: Path, data: dict | str, name: str = "react_tiny.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _example(folder: Path, weights: Path, edit=None, name: str = "react_tiny.yaml") -> Path:
    data = yaml.safe_load(EXAMPLE_YAML)
    data["TEST"]["MODEL_FILE"] = str(weights)
    if edit:
        edit(data)
    return _write(folder, data, name)


def _outputs(loaded) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images, text = torch.randn(2, 3, 32, 32, generator=g), torch.randint(1, 49407, (2, 77), generator=g)
    with torch.no_grad():
        return loaded.model.encode_image(images), loaded.model.encode_text(text)


def _heads(model) -> set[int]:
    return {b.attn.num_heads for b in model.visual.transformer.resblocks} | {
        g.attn.num_heads for g in gated_blocks(model).values()}


# ----------------------------------------------------------------------------------------------------------------------
# in

def test_the_toolkit_example_yaml_builds_react_tiny_with_2_heads(tmp_path, tiny_react_sd):
    (tmp_path / "tiny_react.pt").write_bytes(tiny_react_sd.read_bytes())
    path = _write(tmp_path, EXAMPLE_YAML)
    card = resolve_model_card(str(path))
    assert (card.name, card.architecture, card.method) == ("react_tiny", TINY_REACT, "gated-image")
    assert card.weights == WeightsSpec(source="local", path=str((tmp_path / "tiny_react.pt").resolve()),
                                       file="tiny_react.pt")  # relative to the YAML's folder
    assert (card.preprocess.image_size, card.preprocess.quick_gelu, card.preprocess.interpolation,
            card.preprocess.resize_mode) == (32, True, "bicubic", "shortest")
    assert card.preprocess.mean == (0.48145466, 0.4578275, 0.40821073)
    assert (card.elevater.MODEL_NAME, card.elevater.TEST_MODEL_FILE, card.elevater.yaml) == (
        "clip_react", "tiny_react.pt", "react_tiny.yaml")
    loaded = build_model(card)  # strict loading of the react_tiny state dict
    assert _heads(loaded.model) == {2} and sorted(gated_blocks(loaded.model)) == [1]
    reference = build_model(dataclasses.replace(get_model_card("tiny_demo_clip"), architecture=TINY_REACT,
                                                weights=WeightsSpec(source="local", path=str(tiny_react_sd)),
                                                preprocess=card.preprocess))
    for a, b in zip(_outputs(loaded), _outputs(reference)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_without_heads_the_toolkit_default_applies_and_a_new_architecture_is_registered(tmp_path, tiny_react_sd):
    path = _example(tmp_path, tiny_react_sd, lambda d: d["MODEL"]["SPEC"]["VISION"].pop("HEADS"))
    card = resolve_model_card(path)
    assert card.architecture.startswith("react_elevater-") and card.architecture in factory.list_architectures()
    assert resolve_model_card(path).architecture == card.architecture  # deterministic from the SPEC
    cfg = factory.model_config(card.architecture)
    assert cfg["vision_cfg"]["head_width"] == 64 and cfg["vision_cfg"]["react_cfg"]["last_k_layers"] == 1
    loaded = build_model(card)  # same shapes as the 2-head checkpoint: loads strictly, computes otherwise
    assert _heads(loaded.model) == {1}
    two_heads = build_model(resolve_model_card(_example(tmp_path, tiny_react_sd, name="two.yaml")))
    assert not torch.allclose(_outputs(loaded)[0], _outputs(two_heads)[0])
    assert factory.get_tokenizer(card.architecture)(["a photo"]).shape == (1, 77)


def test_a_plain_spec_and_base_includes(tmp_path, tiny_react_sd):
    sd = torch.load(tiny_react_sd)
    plain = tmp_path / "plain.pt"
    torch.save({k: v for k, v in sd.items() if ".gated_attn_block." not in k}, plain)
    _write(tmp_path, {"INPUT": yaml.safe_load(EXAMPLE_YAML)["INPUT"], "TRAIN": {"IMAGE_SIZE": [32, 32]}}, "base.yaml")

    def edit(d):
        d["BASE"] = ["base.yaml"]
        del d["INPUT"], d["TRAIN"]
        d["MODEL"]["SPEC"]["VISION"]["USE_RCP_BLOCK"] = False
        d["MODEL"]["SPEC"]["USE_QUICK_GELU"] = False
    card = resolve_model_card(_example(tmp_path, plain, edit))
    assert (card.architecture, card.method, card.preprocess.quick_gelu) == ("tiny-ViT-32px", "baseline", False)
    assert card.preprocess.image_size == 32 and card.preprocess.std == (0.26862954, 0.26130258, 0.27577711)
    assert not gated_blocks(build_model(card).model)


def test_card_names_and_card_yamls_still_resolve():
    assert resolve_model_card("react_vitb32_CLIP") == get_model_card("react_vitb32_CLIP")
    path = REPO / "harness" / "cards" / "model_cards" / "tiny_demo_clip.yaml"
    assert resolve_model_card(str(path)) == get_model_card("tiny_demo_clip")


def _set(keys: str, value):
    def edit(d):
        *parents, last = keys.split(".")
        node = d
        for k in parents:
            node = node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("keys, value, needle", [
    ("MODEL.NAME", "clip_swin", "MODEL.NAME 'clip_swin' is not supported"),
    ("MODEL.NAME", "RN50", "MODEL.NAME 'RN50' is not supported"),
    ("MODEL.NAME", "vit_base_patch16_224", "is not supported"),
    ("MODEL.NAME", "ViT-B/32", "224px model but TRAIN.IMAGE_SIZE is 32"),
    ("MODEL.SPEC.VISION.MODEL", "resnet", "VISION.MODEL is 'resnet'"),
    ("MODEL.SPEC.RCP_BLOCK.MODE", "prompt_tuning", "RCP_BLOCK.MODE is 'prompt_tuning'"),
    ("MODEL.SPEC.RCP_BLOCK.GUMBEL_SAMPLE", True, "GUMBEL_SAMPLE"),
    ("MODEL.SPEC.RCP_BLOCK.WIDTH", 32, "RCP_BLOCK.WIDTH"),
    ("MODEL.SPEC.RCP_BLOCK.USE_LAST_K", 5, "USE_LAST_K must be -1 or 1..2"),
    ("MODEL.SPEC.TEXT.HEADS", KeyError, "MODEL.SPEC.TEXT.HEADS is missing"),
    ("MODEL.SPEC.EMBED_DIM", KeyError, "MODEL.SPEC.EMBED_DIM is missing"),
    ("MODEL.SPEC.TEXT.USE_RCP_BLOCK", True, "TEXT.USE_RCP_BLOCK"),
    ("MODEL.SPEC.TEXT.VOCAB_SIZE", 1000, "VOCAB_SIZE"),
    ("MODEL.SPEC.TEXT.STYLE", "hf_bert-base-uncased", "TEXT.STYLE"),
    ("MODEL.SPEC.VISION.HEADS", 3, "not divisible by HEADS 3"),
    ("MODEL.SPEC.VISION.HEAD", 2, "keys the toolkit does not read: HEAD"),
    ("MODEL.SPEC.VISION.WIDTH", "64", "expected int"),
    ("TRAIN.IMAGE_SIZE", [32, 48], "is not square"),
    ("TEST.MODEL_FILE", "", "TEST.MODEL_FILE is empty"),
    ("TEST.MODEL_FILE", "hf:react-vl/react-in1k", "not 'hf:<repo>:<file>'"),
    ("TEST.MODEL_FILE", "https://example.org/w.pt", "is a URL"),
])
def test_unsupported_specs_are_errors_naming_the_value_and_the_file(tmp_path, tiny_react_sd, keys, value, needle):
    path = _example(tmp_path, tiny_react_sd, _set(keys, value))
    with pytest.raises(HarnessError) as err:
        resolve_model_card(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_a_registered_name_cannot_change_its_config():
    cfg = copy.deepcopy(factory.model_config("tiny-ViT-32px"))
    with pytest.raises(HarnessError, match="already registered"):
        factory.register_config("tiny-ViT-32px", {**cfg, "embed_dim": 16})
    assert factory.register_config("tiny-ViT-32px", cfg) == "tiny-ViT-32px"


# ----------------------------------------------------------------------------------------------------------------------
# out, and round trips

def _meta_model(card):
    with torch.device("meta"):
        return factory.create_model(card.architecture, device="meta", force_quick_gelu=card.preprocess.quick_gelu,
                                    force_image_size=card.preprocess.image_size)


def _exportable(card) -> bool:
    return card.weights.source != "random"


@pytest.mark.parametrize("name", [c.name for c in all_model_cards() if _exportable(c)])
def test_round_trip_of_every_built_in_card_builds_the_same_model(tmp_path, name):
    card = get_model_card(name)
    path = export_toolkit_yaml(card, tmp_path)
    assert path.name == ((card.elevater.yaml if card.elevater else None) or f"{card.name}.yaml")
    back = resolve_model_card(path)
    assert back.architecture == card.architecture
    assert back.preprocess == card.preprocess
    ours, theirs = _meta_model(card), _meta_model(back)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sorted(gated_blocks(ours)) == sorted(gated_blocks(theirs))
    assert _heads(ours) == _heads(theirs)
    if card.elevater is not None:  # cards with a section: the toolkit's own fields and the same weights
        assert (back.elevater.MODEL_NAME, dict(back.elevater.MODEL_SPEC)) == (card.elevater.MODEL_NAME,
                                                                             dict(card.elevater.MODEL_SPEC))
        assert back.weights.identity == card.weights.identity
        assert back.method == card.method or card.method == "locked-text"


def test_tiny_round_trips_through_the_cli_give_the_same_outputs(tmp_path, tiny_react_sd, tiny_loaded):
    tiny = tmp_path / "tiny.pt"
    torch.save(tiny_loaded.model.state_dict(), tiny)
    assert main(["export-elevater", "tiny_demo_clip", "--out", str(tmp_path / "out"), "--weights", str(tiny)]) == 0
    data = yaml.safe_load((tmp_path / "out" / "tiny_demo_clip.yaml").read_text())
    assert data["MODEL"]["NAME"] == "clip_react" and data["TEST"]["MODEL_FILE"] == str(tiny.resolve())
    assert data["MODEL"]["SPEC"]["VISION"]["HEADS"] == 2 and data["MODEL"]["SPEC"]["USE_QUICK_GELU"] is False
    back = build_model(resolve_model_card(tmp_path / "out" / "tiny_demo_clip.yaml"))
    assert back.card.architecture == "tiny-ViT-32px" and back.card.method == "baseline"
    for a, b in zip(_outputs(back), _outputs(tiny_loaded)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    react_card = dataclasses.replace(get_model_card("tiny_demo_clip"), name="tiny_react", architecture=TINY_REACT,
                                     method="gated-image", weights=WeightsSpec(source="local", path=str(tiny_react_sd)),
                                     preprocess=dataclasses.replace(tiny_loaded.card.preprocess, quick_gelu=True))
    spec = toolkit_yaml_for(react_card)["MODEL"]["SPEC"]
    assert spec["RCP_BLOCK"] == {"MODE": "gated_attn", "GUMBEL_SAMPLE": False, "USE_LAST_K": 1}
    assert spec["VISION"]["HEADS"] == 2 and spec["USE_QUICK_GELU"] is True
    react_back = build_model(resolve_model_card(export_toolkit_yaml(react_card, tmp_path / "out")))
    assert react_back.card.architecture == TINY_REACT
    for a, b in zip(_outputs(react_back), _outputs(build_model(react_card))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_new_spec_round_trips_to_the_same_registered_architecture(tmp_path):
    def edit(d):
        d["MODEL"]["SPEC"]["VISION"].update(HEADS=4, MLP_RATIO=2)
        d["MODEL"]["SPEC"]["RCP_BLOCK"]["USE_LAST_K"] = -1  # the toolkit's "every layer"
    weights = tmp_path / "w.pt"
    first = resolve_model_card(_example(tmp_path, weights, edit))
    torch.manual_seed(3)
    torch.save(factory.create_model(first.architecture).state_dict(), weights)
    loaded = build_model(first)
    assert _heads(loaded.model) == {4} and sorted(gated_blocks(loaded.model)) == [0, 1]
    assert loaded.model.visual.transformer.resblocks[0].mlp.c_fc.out_features == 128
    again = build_model(resolve_model_card(export_toolkit_yaml(first, tmp_path / "out")))
    assert again.card.architecture == first.architecture
    for a, b in zip(_outputs(again), _outputs(loaded)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("card, architecture, needle", [
    ("tiny_demo_clip", None, "seeded random.*--weights"),
    ("vitb32_OpenCLIP_laion2b", "RN50", "cannot build this architecture.*layers"),
    ("vitb32_OpenCLIP_laion2b", "ViT-B-16-SigLIP", "cannot build this architecture"),
    ("react_vitb32_CLIP", "react_ViT-B-16", "elevater section .* fix the card"),
])
def test_export_refusals(card, architecture, needle):
    card = get_model_card(card)
    with pytest.raises(HarnessError, match=needle):
        toolkit_yaml_for(dataclasses.replace(card, architecture=architecture or card.architecture))


def test_cli_export_refusal_is_a_clear_error(tmp_path, capsys):
    assert main(["export-elevater", "tiny_demo_clip", "--out", str(tmp_path)]) == 2
    assert "pass --weights FILE" in capsys.readouterr().err and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------------
# end to end

@pytest.mark.slow
def test_cli_eval_of_a_toolkit_yaml(tmp_path, tiny_react_sd):
    from harness.data.synthetic import make_demo_suite

    data = tmp_path / "data"
    make_demo_suite(data, 3, names=("cifar-10",))
    (tmp_path / "models").mkdir()
    path = _example(tmp_path / "models", Path("..") / "tiny_react.pt")
    (tmp_path / "tiny_react.pt").write_bytes(tiny_react_sd.read_bytes())
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "--model", str(path), "--dataset", "cifar-10",
                          "--data-root", str(data), "--results", str(tmp_path / "results"), "--workers", "0",
                          "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "react_tiny" / "elevater" / "cifar-10.json").read_text())
    assert result["n_images"] == 30 and result["run_key"]["parts"]["architecture"] == TINY_REACT
    assert result["run_key"]["parts"]["numerics"].startswith("toolkit:ln_eps=1e-12")  # clip_react's numerics
