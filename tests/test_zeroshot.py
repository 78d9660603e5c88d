"""The engine: classifier equals open_clip's builder and a hand computation; probabilities equal an independent
pipeline (PIL from the zip + torchvision transform + encode + 100*cos + softmax); the cache is keyed correctly."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from PIL import Image
from torchvision import transforms as T

from harness.cards import get_dataset_card
from harness.data.testsets import TransformedDataset, open_eval_data
from harness.engine.protocols import make_protocol
from harness.engine.zeroshot import build_classifier, cached_classifier, make_loader, predict


def _manual_classifier(model, tokenizer, classnames, templates):
    """Independent of open_clip's builder: one class at a time, plain torch."""
    columns = []
    with torch.no_grad():
        for name in classnames:
            emb = model.encode_text(tokenizer([t.format(name) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def test_classifier_equals_open_clip_builder_and_hand_computation(tiny_loaded, tmp_path):
    card = get_dataset_card("cifar-10")
    ours = build_classifier(tiny_loaded.model, tiny_loaded.tokenizer, card.classnames, card.templates)
    ref = build_zero_shot_classifier(tiny_loaded.model, tiny_loaded.tokenizer, list(card.classnames),
                                     list(card.templates), num_classes_per_batch=3)
    manual = _manual_classifier(tiny_loaded.model, tiny_loaded.tokenizer, card.classnames, card.templates)
    assert ours.shape == (32, 10)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=0), torch.ones(10))
    # cached: first call computes, second reads, both equal
    w1, key1, hit1 = cached_classifier(tiny_loaded, card.classnames, card.templates, cache_root=tmp_path)
    w2, key2, hit2 = cached_classifier(tiny_loaded, card.classnames, card.templates, cache_root=tmp_path)
    assert (hit1, hit2) == (False, True) and key1 == key2
    assert torch.equal(w1, w2)
    torch.testing.assert_close(w1, ours, rtol=0, atol=1e-6)


def test_cache_key_changes_with_everything_that_changes_the_classifier(tiny_loaded, tmp_path):
    card = get_dataset_card("cifar-10")
    _, base, _ = cached_classifier(tiny_loaded, card.classnames, card.templates, cache_root=tmp_path)
    _, k_templates, hit = cached_classifier(tiny_loaded, card.classnames, card.templates[:-1], cache_root=tmp_path)
    assert k_templates != base and not hit
    names = list(card.classnames)
    names[0] = "aeroplane"
    _, k_names, hit = cached_classifier(tiny_loaded, names, card.templates, cache_root=tmp_path)
    assert k_names != base and not hit
    other = type(tiny_loaded)(**{**tiny_loaded.__dict__, "weights_identity": {"sha256": "0" * 64},
                                 "precision": tiny_loaded.precision})
    _, k_weights, hit = cached_classifier(other, card.classnames, card.templates, cache_root=tmp_path)
    assert k_weights != base and not hit
    amp = type(tiny_loaded)(**{**tiny_loaded.__dict__, "precision": "amp"})
    _, k_prec, _ = cached_classifier(amp, card.classnames, card.templates, cache_root=tmp_path)
    assert k_prec != base
    # refresh recomputes even when present
    _, _, hit = cached_classifier(tiny_loaded, card.classnames, card.templates, cache_root=tmp_path, refresh=True)
    assert not hit


def test_corrupt_cache_entry_is_recomputed(tiny_loaded, tmp_path):
    card = get_dataset_card("mnist")
    w, key, _ = cached_classifier(tiny_loaded, card.classnames, card.templates, cache_root=tmp_path)
    (tmp_path / "classifiers" / f"{key}.pt").write_bytes(b"not a tensor")
    w2, _, hit = cached_classifier(tiny_loaded, card.classnames, card.templates, cache_root=tmp_path)
    assert not hit and torch.equal(w, w2)


@pytest.mark.parametrize("dataset", ["cifar-10", "kitti-distance"])
def test_probabilities_equal_an_independent_pipeline(tiny_loaded, demo_root, dataset):
    """kitti-distance has CENTER_CROP false: a plain size x size resize."""
    card = get_dataset_card(dataset)
    data = open_eval_data(card, demo_root)
    spec = make_protocol("elevater", tiny_loaded.card, card, tiny_loaded.preprocess_val)
    classifier = build_classifier(tiny_loaded.model, tiny_loaded.tokenizer, spec.classnames, spec.templates)
    loader = make_loader(TransformedDataset(data, spec.transform), batch_size=7, workers=2)
    ours = predict(tiny_loaded.model, classifier, loader, len(data)).probs

    pp = tiny_loaded.card.preprocess
    size = pp.image_size
    resize = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC) if card.elevater.CENTER_CROP else \
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)
    folder = demo_root / card.root_folder
    images = []
    if card.format == "iris":
        lines = (folder / card.eval_spec.index).read_text().split("\n")
        entries = [ln.rsplit(" ", 1)[0] for ln in lines if ln]
    else:
        import json

        entries = [im["file_name"] for im in json.loads((folder / card.eval_spec.index).read_text())["images"]]
    for entry in entries:
        zip_name, inner = entry.split("@", 1)
        with zipfile.ZipFile(folder / zip_name) as zf:
            img = Image.open(io.BytesIO(zf.read(inner))).convert("RGB")
        img = resize(img)
        if card.elevater.CENTER_CROP:
            img = T.CenterCrop(size)(img)
        x = T.ToTensor()(img)
        images.append(T.Normalize(pp.mean, pp.std)(x))
    with torch.no_grad():
        feats = F.normalize(tiny_loaded.model.encode_image(torch.stack(images)), dim=-1)
        ref = (100.0 * feats @ classifier).softmax(dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5)
    assert ours.shape == (len(entries), card.num_classes)


def test_openclip_protocol_uses_open_clip_imagenet_text_and_model_transform(tiny_loaded):
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    card = get_dataset_card("imagenet-1k")
    spec = make_protocol("openclip", tiny_loaded.card, card, tiny_loaded.preprocess_val)
    assert spec.classnames == tuple(IMAGENET_CLASSNAMES)
    assert list(spec.templates) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert spec.transform is tiny_loaded.preprocess_val
    assert spec.metrics == ["accuracy", "accuracy_top5"]
    elev = make_protocol("elevater", tiny_loaded.card, card, tiny_loaded.preprocess_val)
    # A fact worth pinning: ELEVATER's ImageNet names and templates are exactly OpenCLIP's (same OpenAI lists),
    # so on ImageNet the protocols can only differ through preprocessing, precision and batching.
    assert elev.classnames == card.classnames == spec.classnames
    assert elev.templates == spec.templates
