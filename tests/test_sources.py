"""Sources as data (harness/data/sources.yaml) and the label rules, checked against the real CLIP_benchmark class
names (tests/fixtures/clip_benchmark_classnames.json): every rule maps them one-to-one onto the card's ELEVATER
order, and a deliberately wrong mapping of each is refused."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import yaml

from harness.cards import all_dataset_cards, get_dataset_card
from harness.core.errors import HarnessError
from harness.data import sources
from harness.data.label_rules import LabelRule, normalise

from conftest import REPO

REAL = json.loads((REPO / "tests" / "fixtures" / "clip_benchmark_classnames.json").read_text(encoding="utf-8"))


def _raw() -> dict:
    return yaml.safe_load(sources.SOURCES_FILE.read_text(encoding="utf-8"))


def _cards() -> dict:
    return {c.name: c for c in all_dataset_cards()}


def _cb(dataset: str) -> sources.DataSource:
    return next(s for s in sources.sources_for(dataset) if s.kind == "clip-benchmark")


def _mapping(dataset: str, names: list[str]) -> np.ndarray:
    src = _cb(dataset)
    card = get_dataset_card(dataset)
    return sources.label_rule(src.label_rule).mapping(names, card.classnames, f"wds/{src.repo}/classnames.txt",
                                                      src.remedy())


def test_every_card_has_its_sources_in_order_of_fidelity():
    cards = _cards()
    assert len(cards) == 21
    for name in cards:
        found = sources.sources_for(name)
        assert found[0].kind == "elevater" and found[0].fidelity == "same split"
        kinds = [s.kind for s in found]
        assert kinds == sorted(kinds, key=sources.SOURCE_KINDS.index)
        for s in found:
            assert s.fidelity in sources.FIDELITY
            assert s.revision is None or len(s.revision) == 40
    assert "clip-benchmark" not in [s.kind for s in sources.sources_for("hateful-memes")]
    assert "elevater-rehost" not in [s.kind for s in sources.sources_for("voc-2007-classification")]
    assert _cb("voc-2007-classification").repo == "clip-benchmark/wds_voc2007_multilabel"
    assert _cb("imagenet-1k").only_when_named and not _cb("cifar-10").only_when_named
    different = {n for n in cards if any(s.fidelity == "different split" for s in sources.sources_for(n))}
    assert different == {"eurosat_clip", "resisc45_clip", "fer-2013"}
    for name in cards:  # same images: the count is the card's
        for s in sources.sources_for(name):
            if s.fidelity != "different split" and s.kind != "elevater-rehost":
                assert s.expected_count == get_dataset_card(name).eval_spec.num_images
    assert (_cb("eurosat_clip").expected_count, _cb("resisc45_clip").expected_count,
            _cb("fer-2013").expected_count) == (5400, 6300, 7178)


def test_provenance_and_local_dir(tmp_path):
    src = _cb("cifar-100")
    assert src.local_dir(tmp_path) == tmp_path / "clip-benchmark" / "wds_vtab-cifar100"
    # a copy of unknown commit (a hand download) is not credited with the pinned one
    assert src.provenance() == {"kind": "clip-benchmark", "repo": "clip-benchmark/wds_vtab-cifar100",
                                "revision": None, "split": "test", "fidelity": "same images in another order",
                                "revision_verified": False, "note": "hand download, revision unknown"}
    verified = dataclasses.replace(src, revision_verified=True)
    assert verified.provenance() == {"kind": "clip-benchmark", "repo": "clip-benchmark/wds_vtab-cifar100",
                                     "revision": "c181ce0341d21e40ebe4f35a8fc56dd547e20418", "split": "test",
                                     "fidelity": "same images in another order", "revision_verified": True}
    assert "revision_verified" not in sources.sources_for("cifar-100")[0].provenance()  # the toolkit's: as before
    assert "--source clip-benchmark --datasets cifar-100" in src.remedy()


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["datasets"]["cifar-10"]["clip-benchmark"].update(fidelity="nearly"), ["cifar-10", "fidelity"]),
    (lambda r: r["datasets"]["cifar-10"]["clip-benchmark"].update(colour="red"), ["cifar-10", "colour"]),
    (lambda r: r["datasets"]["cifar-10"]["clip-benchmark"].update(revision="abc123"), ["revision", "40-hex"]),
    (lambda r: r["datasets"]["cifar-10"]["clip-benchmark"].update(label_rule="nope"), ["label_rule", "nope"]),
    (lambda r: r["datasets"]["cifar-10"]["clip-benchmark"].update(count=9999), ["count 9999", "fidelity"]),
    (lambda r: r["datasets"].update(cifar11={}), ["cifar11", "no dataset card"]),
    (lambda r: r["label_rules"]["by-name"].update(match="vibes"), ["by-name", "match"]),
    (lambda r: r["label_rules"]["caltech-101-tfds-index"].update(rename={"a": "b"}), ["rename", "index"]),
    (lambda r: r["datasets"]["voc-2007-classification"]["clip-benchmark"].update(label_rule="by-name"),
     ["single-label", "multilabel"]),
])
def test_sources_data_is_validated_strictly(edit, words):
    raw = copy.deepcopy(_raw())
    edit(raw)
    with pytest.raises(HarnessError) as err:
        sources.parse_sources(raw, "sources.yaml", _cards())
    assert "sources.yaml" in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_validate_command_checks_the_sources(monkeypatch, tmp_path, capsys):
    from harness.cli import main

    assert main(["validate"]) == 0
    assert "sources cifar-100: elevater, elevater-rehost" in capsys.readouterr().out
    bad = tmp_path / "sources.yaml"
    raw = _raw()
    raw["datasets"]["dtd"]["clip-benchmark"]["split"] = ""
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setattr(sources, "SOURCES_FILE", bad)
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {bad}: datasets.dtd.clip-benchmark.split" in out
    sources.load_sources.cache_clear()


def test_normalise():
    assert normalise("  Aquarium_Fish ") == normalise("aquarium fish") == "aquarium fish"
    assert normalise("Ram C/V") != normalise("Ram C V")


# -- every label rule against the real CLIP_benchmark names: the right mapping, and a wrong one refused

def test_cifar100_alphabetical_maps_to_elevaters_scrambled_order():
    names = REAL["wds_vtab-cifar100"]
    m = _mapping("cifar-100", names)
    card = get_dataset_card("cifar-100").classnames
    assert [card[j] for j in m] == [n.replace("_", " ") for n in names]
    assert (m != np.arange(100)).sum() > 90  # ELEVATER's order is scrambled
    with pytest.raises(HarnessError, match="aquarium fish.*more than once|more than once"):
        _mapping("cifar-100", ["aquarium_fish" if n == "apple" else n for n in names])
    with pytest.raises(HarnessError, match="none of the card's class names"):
        _mapping("cifar-100", ["aquarium-fish" if n == "aquarium_fish" else n for n in names])


def test_stanford_cars_ram_rename():
    names = REAL["wds_cars"]
    m = _mapping("stanford-cars", names)
    card = get_dataset_card("stanford-cars").classnames
    assert card[m[names.index("Ram C/V Cargo Van Minivan 2012")]] == "Ram C V Cargo Van Minivan 2012"
    assert int((m == np.arange(196)).sum()) == 32  # only 32 indices coincide
    wrong = LabelRule("by-name-only", "name")
    with pytest.raises(HarnessError, match="Ram C/V Cargo Van Minivan 2012.*none of the card's class names"):
        wrong.mapping(names, card, "classnames.txt", "")


def test_fgvc_aircraft_variants():
    names = REAL["wds_fgvc_aircraft"]
    m = _mapping("fgvc-aircraft-2013b-variants102", names)
    card = get_dataset_card("fgvc-aircraft-2013b-variants102").classnames
    assert card[m[names.index("F-16A/B")]] == "F-16A-B" and card[m[names.index("F/A-18")]] == "F-A-18"
    assert int((m != np.arange(100)).sum()) == 20
    with pytest.raises(HarnessError, match="'F-16A/B' is none of"):
        LabelRule("no-rename", "name").mapping(names, card, "classnames.txt", "")
    with pytest.raises(HarnessError, match="line 35 is 'ATR-42' but the card's class 34 is 'An-12'"):  # ASCII order
        LabelRule("index", "index").mapping(names, card, "classnames.txt", "")


def test_caltech101_maps_by_index_not_by_name():
    names = REAL["wds_vtab-caltech101"]
    card = get_dataset_card("caltech-101").classnames
    assert list(_mapping("caltech-101", names)) == list(range(102))
    by_name = LabelRule("by-name", "name").mapping(names, card, "classnames.txt", "")
    assert list(np.flatnonzero(by_name != np.arange(102))) == [37, 38]  # names would swap the two face classes
    swapped = list(names)
    swapped[37], swapped[38] = swapped[38], swapped[37]
    with pytest.raises(HarnessError, match="line 38 is 'centered face', expected 'off-center face'"):
        _mapping("caltech-101", swapped)


def test_flowers_map_by_index_with_tfds_strings():
    names = REAL["wds_vtab-flowers"]
    assert list(_mapping("oxford-flower-102", names)) == list(range(102))
    shuffled = names[1:] + names[:1]
    with pytest.raises(HarnessError, match="line 1 is 'hard-leaved pocket orchid'"):
        _mapping("oxford-flower-102", shuffled)
    with pytest.raises(HarnessError, match="line 16 'globe-flower' is none of"):  # names alone would fail
        LabelRule("by-name", "name").mapping(names, get_dataset_card("oxford-flower-102").classnames, "c.txt", "")


def test_pets_case_only():
    names = REAL["wds_vtab-pets"]
    assert list(_mapping("oxford-iiit-pets", names)) == list(range(37))
    assert names[1] == "American Bulldog" and get_dataset_card("oxford-iiit-pets").classnames[1] == "american bulldog"
    with pytest.raises(HarnessError, match="never"):
        _mapping("oxford-iiit-pets", [names[0]] + names[:-1])


def test_fer2013_names_and_kaggle_coding():
    names = REAL["wds_fer2013"]
    assert list(_mapping("fer-2013", names)) == list(range(7))
    kaggle = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # the CSV coding 0..6
    card = get_dataset_card("fer-2013").classnames
    m = _mapping("fer-2013", kaggle)
    assert [card[j] for j in m] == ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]
    with pytest.raises(HarnessError, match="line 2 'disgust' is none of"):
        LabelRule("by-name", "name").mapping(kaggle, card, "classnames.txt", "")


def test_voc2007_multihot_columns():
    names = REAL["wds_voc2007_multilabel"]
    assert list(_mapping("voc-2007-classification", names)) == list(range(20))
    assert sources.label_rule(_cb("voc-2007-classification").label_rule).multilabel
    with pytest.raises(HarnessError, match="19 class names, the card has 20"):
        _mapping("voc-2007-classification", names[:-1])


def test_mapping_errors_name_the_file_and_remedy():
    with pytest.raises(HarnessError) as err:
        _mapping("cifar-10", ["airplane"] * 10)
    msg = str(err.value)
    assert msg.startswith("wds/clip-benchmark/wds_vtab-cifar10/classnames.txt:")
    assert "python -m harness prepare --source clip-benchmark --datasets cifar-10" in msg


def test_imagenet_maps_by_index_because_names_repeat():
    """ELEVATER's ImageNet names (= CLIP_benchmark's imagenet1k classnames.txt, OpenAI CLIP's list) repeat 'missile'
    (657, 744) and 'sunglasses' (836, 837): by name they cannot be a bijection, by index they are the identity."""
    card = get_dataset_card("imagenet-1k").classnames
    names = list(card)
    assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
    assert list(_mapping("imagenet-1k", names)) == list(range(1000))
    with pytest.raises(HarnessError, match="not a one-to-one mapping"):
        LabelRule("by-name", "name").mapping(names, card, "classnames.txt", "")
    moved = names[1:] + names[:1]
    with pytest.raises(HarnessError, match="line 1 is"):
        _mapping("imagenet-1k", moved)


def _rehost_mapping(dataset: str, names: list[str]) -> np.ndarray:
    src = next(s for s in sources.sources_for(dataset) if s.kind == "elevater-rehost")
    return sources.label_rule(src.label_rule).mapping(names, get_dataset_card(dataset).classnames, "label.txt", "")


def test_rehost_is_the_identity_never_by_name():
    """The re-host's class ids are ELEVATER's: label.txt must be the card's names at every index. caltech-101's
    face classes 37/38 swapped in label.txt would be mapped 'correctly' by name and swap the labels silently."""
    names = list(get_dataset_card("caltech-101").classnames)
    assert list(_rehost_mapping("caltech-101", [n.upper() for n in names])) == list(range(102))  # normalised
    swapped = list(names)
    swapped[37], swapped[38] = swapped[38], swapped[37]
    assert list(LabelRule("by-name", "name").mapping(swapped, names, "label.txt", ""))[37:39] == [38, 37]
    with pytest.raises(HarnessError, match="line 38 is 'off-center face' but the card's class 37 is 'centered face'"):
        _rehost_mapping("caltech-101", swapped)
    raw = copy.deepcopy(_raw())  # a known spelling difference is data: differs, per dataset
    raw["datasets"]["caltech-101"]["elevater-rehost"]["differs"] = {37: "faces"}
    data = sources.parse_sources(raw, "sources.yaml", _cards())
    rule = data.rules[data.sources["caltech-101"][0].label_rule]
    named = list(names)
    named[37] = "faces"  # the re-host's spelling at 37
    assert list(rule.mapping(named, names, "label.txt", "")) == list(range(102))
    raw["datasets"]["caltech-101"]["elevater-rehost"]["differs"] = {500: "x"}
    with pytest.raises(HarnessError, match="elevater-rehost.differs names a position beyond"):
        sources.parse_sources(raw, "sources.yaml", _cards())


def test_voc_caveat_is_data():
    src = _cb("voc-2007-classification")
    assert "difficult" in src.caveat and src.fidelity == "same images in another order"
    assert _cb("cifar-10").caveat == ""
    raw = copy.deepcopy(_raw())
    raw["datasets"]["cifar-10"]["clip-benchmark"]["caveat"] = 3
    with pytest.raises(HarnessError, match="caveat must be text"):
        sources.parse_sources(raw, "sources.yaml", _cards())
