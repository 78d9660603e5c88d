"""Cards: every card validates, dataset cards equal ELEVATER's definitions exactly, strictness and errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import cards
from harness.core.errors import HarnessError

from conftest import REFERENCE_DIR, REPO

CARDS = REPO / "harness" / "cards" / "model_cards"

ELEVATER_20 = ["caltech-101", "cifar-10", "cifar-100", "country211", "dtd", "eurosat_clip", "fer-2013",
               "fgvc-aircraft-2013b-variants102", "oxford-flower-102", "food-101", "gtsrb", "hateful-memes",
               "kitti-distance", "mnist", "oxford-iiit-pets", "patch-camelyon", "rendered-sst2", "resisc45_clip",
               "stanford-cars", "voc-2007-classification"]
TOOLKIT_MODEL_YAML_NAMES = ["react_vitb32_CLIP", "react_vitb16_CLIP", "react_vitl14_CLIP", "react_vitG14_OpenCLIP",
                            "vitb32_CLIP", "vitb16_CLIP"]


def test_all_cards_validate():
    """Every card in the registry validates: one ok line per card (counts from the registry, so adding a card
    keeps this passing)."""
    ok, errors = cards.validate_all()
    assert errors == []
    assert sorted(x.split()[1].rstrip(":") for x in ok if x.startswith("dataset ")) == \
        sorted(cards.dataset_card_names())
    assert sorted(x.split()[1].rstrip(":") for x in ok if x.startswith("model ")) == sorted(cards.model_card_names())


def test_dataset_registry_has_imagenet_and_every_elevater_set():
    """Every dataset of ELEVATER's definitions (reference/elevater_datasets.json) is a card; more cards may be added."""
    ref = json.loads((REFERENCE_DIR / "elevater_datasets.json").read_text(encoding="utf-8"))["datasets"]
    assert sorted(e["dataset_name"] for e in ref.values()) == sorted(ELEVATER_20 + ["imagenet-1k"])
    assert set(ELEVATER_20 + ["imagenet-1k"]) <= set(cards.dataset_card_names())


def test_model_registry_has_baselines_and_every_released_react_checkpoint():
    models = {c.name: c for c in cards.all_model_cards()}
    for name in TOOLKIT_MODEL_YAML_NAMES:
        assert name in models
    released = json.loads((REFERENCE_DIR / "react.json").read_text())["released_checkpoints"]["entries"]
    assert released, "reference/react.json lists REACT's released checkpoints"
    # exactly one card per released checkpoint; further cards (a checkpoint trained here, say) may be added
    holders = {e["file"]: [c for c in models.values() if c.weights.file == e["file"]] for e in released}
    assert {f: len(cs) for f, cs in holders.items()} == {e["file"]: 1 for e in released}
    for e in released:
        card, = holders[e["file"]]
        assert card.method == e["method"] != "baseline"
        assert card.architecture.replace("react_", "") == e["model"].replace("react_", "")
        assert card.is_react_arch == e["model"].startswith("react_")
        assert card.preprocess.quick_gelu == bool(e.get("quick_gelu", False)), card.name
        if e.get("mean_std") == 0.5:
            assert card.preprocess.mean == (0.5, 0.5, 0.5) and card.preprocess.std == (0.5, 0.5, 0.5)
        # every released REACT card names its baseline card and carries a published ImageNet number
        assert models[card.base_model].method == "baseline"
        assert "imagenet-1k" in card.published
    assert models["react_vitb32_CLIP"].published["imagenet-1k"] == 68.6
    assert models["react_vitb32_CLIP"].elevater.TEST_MODEL_FILE == \
        "hf:react-vl/react-in1k:clip-vit-base-32-gated-image.pt"


def test_dataset_cards_transcribe_elevater_exactly():
    ref = json.loads((REFERENCE_DIR / "elevater_datasets.json").read_text(encoding="utf-8"))["datasets"]
    by_name = {c.name: c for c in cards.all_dataset_cards()}
    assert len(ref) == 21
    for entry in ref.values():
        card = by_name[entry["dataset_name"]]
        names = entry["classnames"]
        if any(isinstance(n, list) for n in names):  # FER: synonym lists, first entry prompts
            assert [list(s) for s in card.class_synonyms] == names
            assert list(card.classnames) == [n[0] for n in names]
        else:
            assert list(card.classnames) == names  # exact, duplicates and odd spacing included
        assert list(card.templates) == entry["templates"]
        assert card.metric == entry["metric"]
        assert card.multilabel == (entry["type"] == "classification_multilabel")
        assert card.format == entry["format"]
        assert card.root_folder == entry["root_folder"]
        assert card.elevater.CENTER_CROP == entry["center_crop"]
        assert card.elevater.NUM_CLASSES == entry["num_classes_yaml"]
        assert card.labelmap == entry["labelmap_file"]
        for split, s in entry["splits"].items():
            assert card.splits[split].index == s["index_path"]
            assert list(card.splits[split].files) == s["files_for_local_usage"]
            assert card.splits[split].num_images == s["num_images"]


def test_imagenet_keeps_duplicate_class_names():
    card = cards.get_dataset_card("imagenet-1k")
    assert card.num_classes == 1000
    # ELEVATER's list names two classes 'missile' and two 'sunglasses'; they stay as the toolkit has them
    assert len(set(card.classnames)) == 998
    assert card.classnames.count("missile") == 2 and card.classnames.count("sunglasses") == 2


def test_text_hash_tracks_names_and_templates():
    card = cards.get_dataset_card("cifar-10")
    data = cards.card_to_dict(card)
    data["templates"] = data["templates"][:-1]
    other = cards.parse_dataset_card(data, "test")
    assert other.text_hash != card.text_hash
    data2 = cards.card_to_dict(card)
    data2["description"] = "changed"
    same_text = cards.parse_dataset_card(data2, "test")
    assert same_text.text_hash == card.text_hash and same_text.card_hash != card.card_hash


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_unknown_key_names_key_and_closest_valid_one(tmp_path):
    data = yaml.safe_load((CARDS / "vitb32_CLIP.yaml").read_text())
    data["archtecture"] = data.pop("architecture")
    _write(tmp_path / "vitb32_CLIP.yaml", data)
    (tmp_path / "_base").symlink_to(CARDS / "_base")
    with pytest.raises(HarnessError, match=r"unknown key 'archtecture'.*Did you mean 'architecture'"):
        cards.load_model_card(tmp_path / "vitb32_CLIP.yaml")


def test_nested_unknown_key_and_bad_choice(tmp_path):
    data = cards.card_to_dict(cards.get_dataset_card("mnist"))
    data["elevater"]["CENTRE_CROP"] = data["elevater"].pop("CENTER_CROP")
    with pytest.raises(HarnessError, match=r"elevater: unknown key 'CENTRE_CROP'.*'CENTER_CROP'"):
        cards.parse_dataset_card(data, "mnist.yaml")
    data = cards.card_to_dict(cards.get_dataset_card("mnist"))
    data["elevater"]["METRIC"] = "acuracy"
    with pytest.raises(HarnessError, match=r"'acuracy' is not one of .*Did you mean 'accuracy'"):
        cards.parse_dataset_card(data, "mnist.yaml")


def test_num_classes_and_template_checks():
    data = cards.card_to_dict(cards.get_dataset_card("mnist"))
    data["classnames"] = data["classnames"][:-1]
    with pytest.raises(HarnessError, match="NUM_CLASSES is 10 but there are 9 classnames"):
        cards.parse_dataset_card(data, "mnist.yaml")
    data = cards.card_to_dict(cards.get_dataset_card("mnist"))
    data["templates"] = ["a photo of the number"]
    with pytest.raises(HarnessError, match="exactly one"):
        cards.parse_dataset_card(data, "mnist.yaml")


def test_include_chain_merges_and_cycles_fail(tmp_path):
    _write(tmp_path / "a.yaml", {"include": "b.yaml", "name": "a"})
    _write(tmp_path / "b.yaml", {"include": "a.yaml", "description": "b"})
    with pytest.raises(HarnessError, match="include cycle"):
        cards.load_yaml_with_includes(tmp_path / "a.yaml")
    card = cards.get_model_card("react_vitl14_OpenCLIP_laion2b_gated_image")
    assert card.preprocess.mean == (0.5, 0.5, 0.5)  # from _base/openclip_laion_l14.yaml over openclip_laion.yaml
    assert card.preprocess.quick_gelu is False
    assert card.weights.repo == "react-vl/react-in1k"  # from _base/react_hf.yaml


def test_unknown_card_name_suggests_closest():
    with pytest.raises(HarnessError, match="Did you mean 'react_vitb32_CLIP'"):
        cards.get_model_card("react_vitb32_clip")
    with pytest.raises(HarnessError, match="Did you mean 'cifar-10'"):
        cards.get_dataset_card("cifar10")


@pytest.mark.slow
def test_ls_and_validate_do_not_import_torch():
    code = ("import sys; from harness.cli import main; rc = main(['ls']); rc2 = main(['validate']); "
            "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc or rc2)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{len(cards.dataset_card_names())} dataset cards" in out.stdout
    assert f"{len(cards.model_card_names())} model cards" in out.stdout
    assert "0 invalid" in out.stdout


def test_react_pretrained_tags_are_card_data_matching_the_released_registry():
    """Every (model, tag) of REACT's released checkpoints is claimed by exactly the card holding that file."""
    from harness.models.tags import react_card_for, react_tag_cards

    released = json.loads((REFERENCE_DIR / "react.json").read_text())["released_checkpoints"]["entries"]
    pairs = react_tag_cards()
    assert sorted(pairs) == sorted((e["model"], e["tag"]) for e in released)
    for e in released:
        assert pairs[(e["model"], e["tag"])].weights.file == e["file"]
    assert react_card_for("react_ViT-B-32-quickgelu", "react_clip_ret_laion400m").name == "react_vitb32_CLIP"
    assert react_card_for("react_ViT-G-14", "react_openclip_laion2b_ret_laion2b").name == "react_vitG14_OpenCLIP"
    assert react_card_for("ViT-B-32", "openai") is None


def test_duplicate_pretrained_tag_is_a_validation_error(tmp_path, monkeypatch):
    data = yaml.safe_load((CARDS / "react_vitb32_CLIP.yaml").read_text())
    data["name"] = "react_copy"
    _write(tmp_path / "react_copy.yaml", data)
    (tmp_path / "_base").symlink_to(CARDS / "_base")
    monkeypatch.setenv("HARNESS_MODEL_CARDS", str(tmp_path))
    ok, errors = cards.validate_all()
    assert any("pretrained tag (react_ViT-B-32, react_clip_ret_laion400m) is also claimed" in e for e in errors)


def test_elevater_suite_is_data_and_excludes_imagenet():
    suite = cards.get_suite(cards.ELEVATER_SUITE)
    assert sorted(suite.members) == sorted(ELEVATER_20)
    assert suite.title == "ELEVATER avg"
    with pytest.raises(HarnessError, match="No dataset suite 'elevater-21'.*Did you mean 'elevater-20'"):
        cards.get_suite("elevater-21")


def test_suite_member_must_be_a_card(tmp_path, monkeypatch):
    (tmp_path / cards.SUITES_FILE).write_text("elevater-20:\n  title: X\n  members: [cifar-10, cifar-1000]\n")
    monkeypatch.setenv("HARNESS_DATASET_CARDS", str(tmp_path))
    assert cards.get_suite(cards.ELEVATER_SUITE).members == ("cifar-10", "cifar-1000")  # the earlier folder wins
    ok, errors = cards.validate_all()
    assert any("suite elevater-20" in e and "cifar-1000" in e for e in errors)


def test_display_names_and_openclip_text_are_card_fields():
    assert cards.get_dataset_card("fgvc-aircraft-2013b-variants102").display_name == "fgvc-aircraft"
    assert cards.get_dataset_card("cifar-10").display_name == "cifar-10"
    with_openclip_text = [c.name for c in cards.all_dataset_cards() if c.openclip_text]
    assert with_openclip_text == [cards.IMAGENET]
    assert [cards.method_rank(m) for m in ("baseline", "locked-text", "gated-image")] == [0, 1, 2]


def test_user_card_folders_are_searched_before_builtin(tmp_path, monkeypatch):
    data = cards.card_to_dict(cards.get_model_card("tiny_demo_clip"))
    data["description"] = "my own copy"
    _write(tmp_path / "tiny_demo_clip.yaml", data)
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("HARNESS_MODEL_CARDS", str(tmp_path))
    assert cards.get_model_card("tiny_demo_clip").description == "my own copy"
    assert cards.model_card_names().count("tiny_demo_clip") == 1


@pytest.mark.slow
def test_generated_cards_are_what_the_generator_writes(tmp_path):
    """scripts/make_dataset_cards.py runs from the repo alone and reproduces the committed cards and suites: one
    card per ELEVATER dataset of the reference. Cards added by hand beside them (README: add a dataset) are allowed."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_dataset_cards.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    committed = REPO / "harness" / "cards" / "dataset_yamls"
    written = sorted(p.name for p in tmp_path.glob("*.yaml"))
    ref = json.loads((REFERENCE_DIR / "elevater_datasets.json").read_text(encoding="utf-8"))["datasets"]
    assert written == sorted([cards.SUITES_FILE] + [f"{e['dataset_name']}.yaml" for e in ref.values()])
    assert set(written) <= {p.name for p in committed.glob("*.yaml")}
    for name in written:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
