"""The `elevater` protocol reproduces the official toolkit's numbers per image, and the cross-check measures what
the REACT README compared: two model codes (numerics), not this harness against itself.

Reference: tests/fixtures/elevater_toolkit/ — the toolkit's own zero-shot run on data generated here, with a tiny
REACT checkpoint rebuilt below from its recipe (the state dict's sha256 is checked first)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cards import ElevaterModelFields, WeightsSpec, get_model_card
from harness.models import state_dict_sha256
from harness.models.numerics import TOOLKIT_LN_EPS, numerics_applied, plan
from harness.store.results import read_result
from harness.run.runner import EvalOptions, evaluate
from harness.data.synthetic import DEMO_DATASETS, make_demo_suite

FIXTURES = Path(__file__).parent / "fixtures" / "elevater_toolkit"
RUN = json.loads((FIXTURES / "toolkit_run.json").read_text())
TOOLKIT_PROBS = np.load(FIXTURES / "toolkit_probs.npz")
# float32 round-off between two implementations of the same arithmetic (measured: < 2e-6)
ATOL = 1e-5


def _checkpoint(path: Path) -> Path:
    from harness.models.factory import create_model
    from harness.models.react import gated_blocks

    torch.manual_seed(0)
    model = create_model("react_tiny-ViT-32px", force_quick_gelu=True)
    with torch.no_grad():
        for g in gated_blocks(model).values():
            g.alpha_attn.fill_(0.5)
            g.alpha_dense.fill_(-0.3)
    assert state_dict_sha256(model) == RUN["model"]["state_dict_sha256"], \
        "the recipe no longer gives the checkpoint the toolkit ran (torch's RNG or OpenCLIP's init changed)"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    data = root / "data"
    make_demo_suite(data, images_per_class=3)
    spec = RUN["model"]["MODEL.SPEC"]
    card = dataclasses.replace(
        get_model_card("tiny_demo_clip"), name="tiny_react_toolkit", architecture="react_tiny-ViT-32px",
        method="gated-image", weights=WeightsSpec(source="local", path=str(_checkpoint(root / "tiny_react.pt"))),
        preprocess=dataclasses.replace(get_model_card("tiny_demo_clip").preprocess, quick_gelu=True),
        elevater=ElevaterModelFields(yaml=None, MODEL_NAME="clip_react", MODEL_SPEC=spec,
                                     TEST_MODEL_FILE="tiny_react.pt"))
    return {"root": root, "data": data, "card": card}


def _probs(results: Path, card: str, protocol: str, dataset: str) -> tuple[dict, np.ndarray]:
    res = read_result(results / card / protocol / f"{dataset}.json")
    return res, np.load(results / card / protocol / res["files"]["probs"])


@pytest.mark.slow
def test_elevater_protocol_matches_the_toolkit_per_image(parity):
    from harness.data.testsets import open_eval_data
    from harness.cards import get_dataset_card

    results = parity["root"] / "results"
    summary = evaluate(parity["card"], list(DEMO_DATASETS), parity["data"],
                       EvalOptions(results_root=results, progress=False, workers=0))
    assert sorted(summary.done) == sorted(RUN["datasets"])
    for name, ref in RUN["datasets"].items():
        labels = open_eval_data(get_dataset_card(name), parity["data"]).labels
        assert labels.tolist() == ref["labels"], f"{name}: the generated data is not the data the toolkit read"
        res, probs = _probs(results, "tiny_react_toolkit", "elevater", name)
        assert res["run_key"]["parts"]["numerics"] == f"toolkit:ln_eps={TOOLKIT_LN_EPS}"
        assert probs.shape == TOOLKIT_PROBS[name].shape
        np.testing.assert_allclose(probs, TOOLKIT_PROBS[name], rtol=0, atol=ATOL, err_msg=name)
        assert (probs.argmax(1) == TOOLKIT_PROBS[name].argmax(1)).all(), name
        assert res["metrics"][ref["metric"]] == pytest.approx(ref["value"], abs=1e-9), name


def test_openclip_numerics_on_the_same_weights_do_not_match_the_toolkit(parity):
    """The difference the toolkit's LayerNorm makes (the reason numerics are part of a protocol)."""
    results = parity["root"] / "results-openclip-numerics"
    evaluate(parity["card"], ["cifar-10", "kitti-distance"], parity["data"],
             EvalOptions(results_root=results, progress=False, workers=0, numerics="openclip"))
    for name in ("cifar-10", "kitti-distance"):
        res, probs = _probs(results, "tiny_react_toolkit", "elevater", name)
        assert res["run_key"]["parts"]["numerics"] == "openclip"
        assert np.abs(probs - TOOLKIT_PROBS[name]).max() > 1e-3


def test_crosscheck_shows_openclip_differing_by_the_numerics_only(parity, tmp_path, monkeypatch):
    import yaml

    from harness.cards import card_to_dict
    from harness.run.crosscheck import crosscheck
    from harness.run.predictions_import import import_predictions

    results = parity["root"] / "results-cc"
    # the toolkit's own predictions file, imported as a run set for this card, appears beside the two columns
    data = {k: v for k, v in card_to_dict(parity["card"]).items() if v not in (None, {}, [], ())}
    (tmp_path / "tiny_react_toolkit.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("HARNESS_MODEL_CARDS", str(tmp_path))
    import_predictions(FIXTURES / "predictions" / "cifar-10.json", "cifar-10", parity["data"],
                       model="tiny_react_toolkit", results_root=results)
    out = crosscheck(parity["card"], ["cifar-10", "kitti-distance", "voc-2007-classification"], parity["data"],
                     EvalOptions(results_root=results, progress=False, workers=0))
    assert out["skipped_multilabel"] == ["voc-2007-classification"]
    row = out["datasets"]["cifar-10"]
    diffs = row["differences"]
    assert diffs[0].startswith("numerics: elevater = toolkit clip_react: TF-style LayerNorm in fp32, eps 1e-12")
    assert "openclip = OpenCLIP 3.3 modules, LayerNorm eps 1e-5" in diffs[0]
    assert "class names: identical (10)" in diffs and "templates: identical (18)" in diffs
    assert "preprocessing: identical (shorter side, bicubic, center crop, card mean/std)" in diffs
    # the ELEVATER column is the toolkit's numbers; the OpenCLIP column the same weights under OpenCLIP's code
    _, ev = _probs(results, "tiny_react_toolkit", "elevater", "cifar-10")
    _, oc = _probs(results, "tiny_react_toolkit", "openclip", "cifar-10")
    np.testing.assert_allclose(ev, TOOLKIT_PROBS["cifar-10"], atol=ATOL)
    assert row["max_abs_dprob"] == pytest.approx(float(np.abs(ev - oc).max()))
    assert row["agreement"] == pytest.approx(100 * float((ev.argmax(1) == oc.argmax(1)).mean()))
    assert row["max_abs_dprob"] > 1e-3
    assert row["elevater"]["accuracy"] == pytest.approx(100 * RUN["datasets"]["cifar-10"]["value"])
    official = row["imported"]["ELEVATER toolkit (official)"]
    assert official["agreement"] == 100.0 and official["delta_vs_elevater"] == 0.0
    assert official["max_abs_dprob"] < ATOL  # the toolkit's 6-decimal file vs this harness's float32


# ----------------------------------------------------------------------------------------------------------------------
# the toolkit's LayerNorm, by hand

def test_toolkit_layernorm_against_an_independent_computation():
    ln = torch.nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(0.5, 1.5, 16))
        ln.bias.copy_(torch.linspace(-0.2, 0.2, 16))
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * 1e-4  # tiny variance: eps matters
    card = get_model_card("react_vitb32_CLIP")
    with numerics_applied(ln, plan("toolkit", card)):
        got = ln(x).double().detach().numpy()
    xd = x.double().numpy()
    mu = xd.mean(-1, keepdims=True)
    var = ((xd - mu) ** 2).mean(-1, keepdims=True)
    expected = (xd - mu) / np.sqrt(var + 1e-12) * ln.weight.double().detach().numpy() + ln.bias.double().detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    openclip = ln(x).double().detach().numpy()  # swapped back: torch's own LayerNorm with eps 1e-5
    assert np.abs(openclip - expected).max() > 1e-2
    half = x.half()
    with numerics_applied(ln, plan("toolkit", card)):
        assert ln(half).dtype == torch.float16  # computed in fp32, returned in the input's dtype


def test_swapping_back_restores_openclip_bit_for_bit_and_only_layernorms_differ(tiny_loaded):
    from harness.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("react_tiny-ViT-32px", force_quick_gelu=True).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    text = torch.randint(1, 49407, (2, 77), generator=torch.Generator().manual_seed(2))
    card = dataclasses.replace(get_model_card("react_vitb32_CLIP"))
    with torch.no_grad():
        before = (model.encode_image(images), model.encode_text(text))
        sd_before = {k: v.clone() for k, v in model.state_dict().items()}
        with numerics_applied(model, plan("toolkit", card)):
            toolkit = (model.encode_image(images), model.encode_text(text))
            assert model.state_dict().keys() == sd_before.keys()
        after = (model.encode_image(images), model.encode_text(text))
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd_before.items())
    assert not torch.equal(before[0], toolkit[0]) and not torch.equal(before[1], toolkit[1])
    # with the toolkit's eps set to OpenCLIP's, the swapped code computes OpenCLIP's numbers: LayerNorm is all
    eps_as_openclip = dataclasses.replace(plan("toolkit", card), layernorm_eps=1e-5)
    with torch.no_grad(), numerics_applied(model, eps_as_openclip):
        same = (model.encode_image(images), model.encode_text(text))
    for a, b in zip(before, same):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)


def test_numerics_plans_follow_the_cards_toolkit_model():
    react = get_model_card("react_vitb32_CLIP")  # MODEL_NAME clip_react
    openai = get_model_card("vitb32_CLIP")  # MODEL_NAME ViT-B/32: the clip package
    tiny = get_model_card("tiny_demo_clip")  # no elevater section
    assert plan("toolkit", react).layernorm_eps == 1e-12
    assert plan("toolkit", openai, "cpu").layernorm_eps is None and not plan("toolkit", openai, "cpu").fp16_on_cuda
    assert plan("toolkit", openai, "cuda").fp16_on_cuda
    assert plan("toolkit", tiny).name == "openclip"
    assert plan("openclip", react).key == "openclip"
