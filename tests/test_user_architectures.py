"""The user's own architectures (harness.models.user_configs): HARNESS_MODEL_CONFIGS folders and a model card's
``architecture_config``, plain OpenCLIP JSONs and REACT-fork JSONs, built through the public factory, checked like the
built-in configs, loaded strictly; OpenCLIP's registry gets only the plain configs, and only when a model is built.

OpenCLIP's registry is process-wide: each architecture name below always has the same content, so tests may run in
any order in one process."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import open_clip
from harness import cards
from harness.core.errors import HarnessError
from harness.models import build_model, factory, react, user_configs

from conftest import REPO

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
# a tiny ViT of 3 vision blocks (the project's tiny-ViT-32px has 2), and its REACT-fork config: gates in the last 2
USER_BASE, USER_REACT, USER_K = "tiny-user-ViT", "react_tiny-user-ViT", 2
BASE_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": TEXT_CFG}
# the card route's own pair (another name, since names are process-wide)
CARD_BASE, CARD_REACT = "tiny-card-ViT", "react_tiny-card-ViT"
CARD_BASE_CFG = {"embed_dim": 24,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 16},
                 "text_cfg": TEXT_CFG}


def _react(cfg: dict, k: int) -> dict:
    out = copy.deepcopy(cfg)
    out["vision_cfg"]["react_cfg"] = {"enabled": True, "last_k_layers": k}
    return out


def _write(folder: Path, name: str, cfg) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=4), encoding="utf-8")
    return path


@pytest.fixture
def user_folder(tmp_path, monkeypatch) -> Path:
    """A HARNESS_MODEL_CONFIGS folder holding the tiny user base and its REACT-fork config."""
    folder = tmp_path / "my_configs"
    _write(folder, USER_BASE, BASE_CFG)
    _write(folder, USER_REACT, _react(BASE_CFG, USER_K))
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(folder))
    return folder


def _card(folder: Path, name: str, **fields) -> Path:
    """A model card YAML (the tiny demo card's preprocessing) written to folder/<name>.yaml."""
    data = cards.card_to_dict(cards.get_model_card("tiny_demo_clip"))
    data = {"name": name, "preprocess": data["preprocess"], "method": "gated-image", **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _outputs(model):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=g)
    text = torch.randint(1, 49407, (3, 77), generator=g)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)


# ----------------------------------------------------------------------------------------------------------------------
# HARNESS_MODEL_CONFIGS

def test_user_react_config_puts_gated_blocks_in_the_last_k_blocks(user_folder):
    assert {USER_BASE, USER_REACT} <= set(factory.list_architectures())
    model, _, preprocess = factory.create_model_and_transforms(USER_REACT)
    blocks = model.visual.transformer.resblocks
    assert len(blocks) == 3
    assert sorted(react.gated_blocks(model)) == [1, 2]  # the last k = 2 of 3 blocks
    base_keys = set(factory.create_model(USER_BASE).state_dict())
    gated_keys = {f"visual.transformer.resblocks.{n}.gated_attn_block.{k}" for n in (1, 2)
                  for k in react.GATED_BLOCK_KEYS}
    assert set(model.state_dict()) == base_keys | gated_keys
    arch = factory.react_architecture(USER_REACT)
    assert (arch.base, arch.last_k_layers, arch.path, arch.user) == (USER_BASE, USER_K,
                                                                      user_folder / f"{USER_REACT}.json", True)
    assert factory.model_config(USER_REACT) == _react(BASE_CFG, USER_K)
    assert factory.model_config(USER_BASE) == BASE_CFG
    assert factory.get_tokenizer(USER_REACT)(["a photo"]).shape == (1, 77)
    assert preprocess is not None


def test_fresh_user_react_model_equals_its_base_exactly(user_folder):
    torch.manual_seed(0)
    base = factory.create_model(USER_BASE).eval()
    torch.manual_seed(1)
    gated = factory.create_model(USER_REACT).eval()
    result = gated.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(react.is_gated_key(k) for k in result.missing_keys)
    for got, want in zip(_outputs(gated), _outputs(base)):
        assert torch.equal(got, want)


def test_user_react_weights_round_trip_strictly_through_a_card(user_folder, tmp_path):
    torch.manual_seed(3)
    model = factory.create_model(USER_REACT).eval()
    with torch.no_grad():  # trained-looking gates, so the gated blocks count in the outputs
        for g in react.gated_blocks(model).values():
            g.alpha_attn.fill_(0.4)
            g.alpha_dense.fill_(-0.3)
    card_dir = tmp_path / "cards"
    card_dir.mkdir()
    torch.save(model.state_dict(), card_dir / "my_react.pt")
    card = cards.load_model_card(_card(card_dir, "my_react", architecture=USER_REACT,
                                       weights={"source": "local", "path": "my_react.pt"}))
    loaded = build_model(card)
    assert sorted(react.gated_blocks(loaded.model)) == [1, 2]
    for got, want in zip(_outputs(loaded.model), _outputs(model)):
        assert torch.equal(got, want)
    base = factory.create_model(USER_BASE)
    torch.save(base.state_dict(), card_dir / "base_only.pt")
    with pytest.raises(HarnessError, match=r"missing keys \(28\):\n    visual.transformer.resblocks.1.gated_attn"):
        build_model(card, weights=card_dir / "base_only.pt")  # strict: a base checkpoint lacks the gated blocks


def test_react_config_on_an_openclip_base(tmp_path, monkeypatch):
    """A REACT-fork JSON for an OpenCLIP config that has no built-in REACT config (ViT-S-32)."""
    folder = tmp_path / "s32"
    _write(folder, "react_ViT-S-32", _react(open_clip.get_model_config("ViT-S-32"), 4))
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(folder))
    with torch.device("meta"):
        model = factory.create_model("react_ViT-S-32", device="meta")
    assert sorted(react.gated_blocks(model)) == [8, 9, 10, 11]


def test_react_config_that_differs_from_its_base_names_file_key_expected_and_found(tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    _write(folder, "tiny-mismatch-ViT", BASE_CFG)
    wrong = _react(BASE_CFG, 1)
    wrong["vision_cfg"]["width"] = 96
    wrong["embed_dim"] = 16
    bad = _write(folder, "react_tiny-mismatch-ViT", wrong)
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(folder))
    with pytest.raises(HarnessError) as err:
        factory.create_model("react_tiny-mismatch-ViT")
    msg = str(err.value)
    assert f"{bad} does not match OpenCLIP's 'tiny-mismatch-ViT' config" in msg
    assert "vision_cfg.width: expected 64 (base 'tiny-mismatch-ViT'), found 96" in msg
    assert "embed_dim: expected 32 (base 'tiny-mismatch-ViT'), found 16" in msg
    assert f"Copy the base config's values from {folder / 'tiny-mismatch-ViT.json'} into the file" in msg
    # the same check against an OpenCLIP base, and a base that exists nowhere
    m32 = _react(open_clip.get_model_config("ViT-M-32"), 2)
    heads = m32["text_cfg"]["heads"]
    m32["text_cfg"]["heads"] = heads * 2
    folder2 = tmp_path / "bad2"
    _write(folder2, "react_ViT-M-32", m32)
    _write(folder2, "react_ViT-Z-99", _react(BASE_CFG, 1))
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(folder2))
    with pytest.raises(HarnessError) as err:
        factory.list_architectures()
    msg = str(err.value)
    assert f"text_cfg.heads: expected {heads} (base 'ViT-M-32'), found {heads * 2}" in msg
    assert "react_ViT-Z-99.json): expected an OpenCLIP config named 'ViT-Z-99'" in msg
    assert "Put ViT-Z-99.json in a HARNESS_MODEL_CONFIGS folder" in msg


def test_plain_user_config_builds_and_reaches_openclip_only_as_that_file(user_folder):
    model = factory.create_model(USER_BASE)
    assert len(model.visual.transformer.resblocks) == 3 and not react.gated_blocks(model)
    assert open_clip.get_model_config(USER_BASE) == BASE_CFG
    assert not [m for m in open_clip.list_models() if m.startswith("react_")]  # REACT names never reach OpenCLIP


def test_name_clashes_are_errors_naming_both_files(tmp_path, monkeypatch):
    """A user config may not redefine an existing name (OpenCLIP's, the project's, a built-in REACT one, another user
    file's); an identical copy is accepted and changes nothing."""
    openclip_file = Path(open_clip.__file__).parent / "model_configs" / "ViT-B-32.json"
    builtin_react = factory.REACT_CONFIG_DIR / "react_tiny-ViT-32px.json"
    changed_b32 = open_clip.get_model_config("ViT-B-32")
    changed_b32["embed_dim"] = 256
    cases = {
        "ViT-B-32": (changed_b32, str(openclip_file)),
        "tiny-ViT-32px": (BASE_CFG, str(factory.paths.MODEL_CONFIG_DIR / "tiny-ViT-32px.json")),
        "react_tiny-ViT-32px": (_react(factory.model_config("tiny-ViT-32px"), 2), str(builtin_react)),
    }
    for name, (cfg, other) in cases.items():
        folder = tmp_path / name
        mine = _write(folder, name, cfg)
        monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(folder))
        with pytest.raises(HarnessError) as err:
            factory.list_architectures()
        msg = str(err.value)
        assert f"Architecture '{name}' is defined twice with different configs: {mine} and {other}" in msg
        assert "rename your file" in msg
    assert open_clip.get_model_config("ViT-B-32")["embed_dim"] == 512  # OpenCLIP's config untouched
    # the same name in two user folders
    one, two = _write(tmp_path / "one", "tiny-twice-ViT", BASE_CFG), _write(tmp_path / "two", "tiny-twice-ViT",
                                                                            CARD_BASE_CFG)
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", f"{one.parent}:{two.parent}")
    with pytest.raises(HarnessError, match=f"defined twice with different configs: {two} and {one}"):
        factory.list_architectures()
    # identical copies are no clash
    same = tmp_path / "same"
    _write(same, "ViT-B-32", open_clip.get_model_config("ViT-B-32"))
    _write(same, "react_tiny-ViT-32px", json.loads(builtin_react.read_text(encoding="utf-8")))
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(same))
    assert factory.react_architecture("react_tiny-ViT-32px").path == builtin_react  # the built-in one still
    assert len(react.gated_blocks(factory.create_model("react_tiny-ViT-32px"))) == 1


@pytest.mark.parametrize("name, content, needle", [
    ("tiny-broken-ViT", "{not json", "is not valid JSON (Expecting property name"),
    ("tiny-notext-ViT", {"embed_dim": 32, "vision_cfg": BASE_CFG["vision_cfg"]},
     "expected OpenCLIP's keys embed_dim, vision_cfg, text_cfg, missing text_cfg"),
    ("tiny-typo-ViT", {**BASE_CFG, "vision_cfg": {**BASE_CFG["vision_cfg"], "widht": 64}},
     "unknown key 'vision_cfg.widht' for OpenCLIP. Did you mean 'width'?"),
    ("react_tiny-user-ViT", {**BASE_CFG, "vision_cfg": {**BASE_CFG["vision_cfg"], "react_cfg": {"enabled": False}}},
     "vision_cfg.react_cfg is disabled; OpenCLIP cannot build"),
    ("react_tiny-nocfg-ViT", BASE_CFG, "are REACT architectures, but the file has no vision_cfg.react_cfg"),
    ("tiny-noprefix-ViT", _react(BASE_CFG, 1), "is named react_<base>.json"),
    ("react_tiny-deep-ViT", _react(BASE_CFG, 4), "last_k_layers is 4, but the vision tower has 3 layers"),
    ("react_tiny-key-ViT", {**BASE_CFG, "vision_cfg": {**BASE_CFG["vision_cfg"], "react_cfg": {"last_k": 1}}},
     "vision_cfg.react_cfg has unknown keys ['last_k']"),
])
def test_bad_config_files_say_which_file_and_what_to_do(tmp_path, monkeypatch, name, content, needle):
    path = _write(tmp_path / "configs", name, content)
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(path.parent))
    with pytest.raises(HarnessError) as err:
        factory.create_model("tiny-ViT-32px")  # any build reads the folders: a bad file is never silently skipped
    assert str(path) in str(err.value) and needle in str(err.value)


def test_config_folders_are_read_when_needed_and_reread_when_they_change(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(tmp_path / "absent"))
    with pytest.raises(HarnessError, match="HARNESS_MODEL_CONFIGS names .*absent, which is not a folder"):
        factory.list_architectures()
    folder = tmp_path / "later"
    folder.mkdir()
    monkeypatch.setenv("HARNESS_MODEL_CONFIGS", str(folder))
    assert "tiny-late-ViT" not in factory.list_architectures()
    _write(folder, "tiny-late-ViT", {**BASE_CFG, "embed_dim": 40})
    assert "tiny-late-ViT" in factory.list_architectures()


def test_every_openclip_config_passes_the_key_check():
    """The unknown-key check reads OpenCLIP's own dataclasses and model classes; none of its configs trips it."""
    from harness.cards.model import ArchitectureConfig

    for name in open_clip.list_models():
        user_configs._check_openclip_keys(ArchitectureConfig(name, Path(f"{name}.json"),
                                                             open_clip.get_model_config(name), 0))


# ----------------------------------------------------------------------------------------------------------------------
# a model card's architecture_config

def test_card_architecture_config_builds_its_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_MODEL_CONFIGS", raising=False)
    card_dir = tmp_path / "cards"
    _write(card_dir / "archs", CARD_BASE, CARD_BASE_CFG)  # the base beside the REACT file travels with it
    _write(card_dir / "archs", CARD_REACT, _react(CARD_BASE_CFG, 1))
    path = _card(card_dir, "my_card_react", architecture_config=f"archs/{CARD_REACT}.json",
                 weights={"source": "random", "seed": 0})
    monkeypatch.chdir(tmp_path)  # relative to the card's folder, not the current directory
    card = cards.load_model_card(path)
    assert card.architecture == CARD_REACT
    assert card.architecture_config_path == card_dir / "archs" / f"{CARD_REACT}.json"
    assert cards.card_to_dict(card)["architecture_config"] == f"archs/{CARD_REACT}.json"
    assert "architecture_config" not in cards.card_to_dict(cards.get_model_card("tiny_demo_clip"))  # hashes kept
    loaded = build_model(card)
    assert sorted(react.gated_blocks(loaded.model)) == [1]
    assert loaded.model.visual.transformer.resblocks[0].attn.embed_dim == 48
    assert factory.model_config(CARD_BASE) == CARD_BASE_CFG


def test_card_architecture_config_is_checked_by_validate(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_MODEL_CONFIGS", raising=False)
    folder = tmp_path / "cards"
    _write(folder, "tiny-valid-ViT", {**BASE_CFG, "embed_dim": 48})
    _write(folder, "react_tiny-valid-ViT", {**_react(BASE_CFG, 1), "embed_dim": 40})  # base mismatch
    _card(folder, "good", architecture_config="tiny-valid-ViT.json", weights={"source": "random"})
    _card(folder, "mismatch", architecture_config="react_tiny-valid-ViT.json", weights={"source": "random"})
    _card(folder, "missing", architecture_config="nowhere/tiny-gone-ViT.json", weights={"source": "random"})
    _card(folder, "disagrees", architecture="ViT-B-32", architecture_config="tiny-valid-ViT.json",
          weights={"source": "random"})
    _card(folder, "typo", architecture_cfg="tiny-valid-ViT.json", weights={"source": "random"})
    ok, errors = cards.validate_all(model_folder=folder)
    text = "\n".join(errors)
    assert f"architecture config {folder / 'nowhere' / 'tiny-gone-ViT.json'} does not exist" in text
    assert "architecture 'ViT-B-32' differs from the architecture_config file's name 'tiny-valid-ViT'" in text
    assert "unknown key 'architecture_cfg'. Did you mean 'architecture_config'?" in text
    assert any("model good: tiny-valid-ViT" in line for line in ok)
    # the OpenCLIP-side checks (base comparison, clashes) need the models layer
    ok, errors = user_configs.validate([cards.load_model_card(folder / f"{n}.yaml") for n in ("good", "mismatch")])
    assert any(line.startswith("architecture tiny-valid-ViT (OpenCLIP)") for line in ok)
    assert len(errors) == 1 and "embed_dim: expected 48 (base 'tiny-valid-ViT'), found 40" in errors[0]


# ----------------------------------------------------------------------------------------------------------------------
# OpenCLIP's registry

@pytest.mark.slow
def test_openclip_registry_untouched_by_import_and_given_only_plain_files_when_building(user_folder):
    """In a fresh process with HARNESS_MODEL_CONFIGS set: importing every harness module changes nothing in OpenCLIP;
    building the user's REACT model adds exactly the project's and the user's plain configs (each as its own file, not
    the user's folder), changes no existing config and leaks no REACT name."""
    code = r"""
import importlib, json, pkgutil, sys
import open_clip, open_clip.factory
def snapshot():
    return ({n: open_clip.get_model_config(n) for n in open_clip.list_models()},
            list(map(str, open_clip.factory._MODEL_CONFIG_PATHS)))
before, before_paths = snapshot()
import harness
for info in pkgutil.walk_packages(harness.__path__, "harness."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
assert snapshot() == (before, before_paths), "importing changed OpenCLIP's registry"
from harness.models.factory import create_model
create_model("react_tiny-user-ViT")
after, after_paths = snapshot()
print(json.dumps({"added": sorted(set(after) - set(before)),
                  "changed": sorted(n for n in before if after[n] != before[n]),
                  "paths": after_paths[len(before_paths):]}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["added"] == ["tiny-ViT-32px", USER_BASE]
    assert result["changed"] == []
    assert result["paths"] == [str(factory.paths.MODEL_CONFIG_DIR), str(user_folder / f"{USER_BASE}.json")]


def test_a_user_architecture_is_in_the_run_key_by_content(tmp_path, monkeypatch):
    """Editing a user's config (even where the weights stay the same, e.g. quick_gelu) must recompute: the run key
    holds the file's content hash; built-in architectures keep their keys (no hash part)."""
    from harness.cards import content_hash, get_dataset_card
    from harness.run.runner import _user_architecture_hash
    from harness.store.runkey import make_run_key

    monkeypatch.delenv("HARNESS_MODEL_CONFIGS", raising=False)
    card_dir = tmp_path / "cards"
    _write(card_dir / "archs", CARD_BASE, CARD_BASE_CFG)
    _write(card_dir / "archs", CARD_REACT, _react(CARD_BASE_CFG, 1))
    card = cards.load_model_card(_card(card_dir, "my_card_react", architecture_config=f"archs/{CARD_REACT}.json",
                                       weights={"source": "random", "seed": 0}))
    assert _user_architecture_hash(card) == content_hash(factory.model_config(CARD_REACT))
    builtin = cards.get_model_card("tiny_demo_clip")
    assert _user_architecture_hash(builtin) is None
    dataset = get_dataset_card("cifar-10")

    def key(arch_hash):
        return make_run_key(card, "0" * 64, dataset, {"n": 1}, "elevater", "fp32", "cpu",
                            architecture_config=arch_hash)

    assert "architecture_config" not in key(None).parts
    assert key("a" * 16).hash != key("b" * 16).hash != key(None).hash
