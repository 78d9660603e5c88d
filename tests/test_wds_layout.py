"""The new layouts read in place: a CLIP_benchmark webdataset split and the ELEVATER re-host (folder and zip).

The same pixels delivered in the toolkit's iris layout and as a webdataset in another label order (or as the
re-host's ImageFolder + index.json) give identical probabilities and labels with a real tiny model; every damaged
or mismatched download is one HarnessError naming the file and the remedy; the most faithful layout present wins.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from harness.cards import get_dataset_card
from harness.core.errors import HarnessError
from harness.data import sources
from harness.data.synthetic import class_image, write_iris
from harness.data.synthetic_sources import RehostSet, write_clip_benchmark_split, write_rehost
from harness.data.testsets import ImageReadError, MissingDataError, open_eval_data
from harness.engine.options import EvalOptions
from harness.engine.zeroshot import evaluate_dataset

CIFAR, VOC = "cifar-10", "voc-2007-classification"
REMEDY = "python -m harness prepare --source clip-benchmark --datasets cifar-10"


def _labels(card, n_per_class: int = 2) -> list:
    if card.multilabel:
        return [sorted({i % card.num_classes, (3 * i + 1) % card.num_classes}) for i in range(card.num_classes)]
    return [i % card.num_classes for i in range(n_per_class * card.num_classes)]


def _jpegs(card, labels) -> list[bytes]:
    """The bytes write_iris puts in the toolkit's zip (same function, same arguments)."""
    return [class_image(lab, i, card.num_classes) for i, lab in enumerate(labels)]


def _source(name: str, kind: str, n: int) -> sources.DataSource:
    src = next(s for s in sources.sources_for(name) if s.kind == kind)
    return dataclasses.replace(src, expected_count=n)


def _wds(root: Path, name: str, *, permute: bool = True, ext: str = "jpg", shards: int = 3, images=None):
    """The card's demo images as a clip-benchmark repo whose label order is the card's rotated by one (source label
    k = card class k + 1): not its own inverse, so a remap applied the wrong way round gives other labels."""
    card = get_dataset_card(name)
    labels = _labels(card)
    src = _source(name, "clip-benchmark", len(labels))
    order = [(k + 1) % card.num_classes if permute else k for k in range(card.num_classes)]
    names = [card.classnames[j] for j in order]
    where = {j: k for k, j in enumerate(order)}
    if card.multilabel:
        src_labels = [[where[j] for j in lab] for lab in labels]
    else:
        src_labels = [where[lab] for lab in labels]
    blobs = images if images is not None else _jpegs(card, labels)
    if ext != "jpg" and images is None:
        from PIL import Image
        blobs = [Image.open(io.BytesIO(b)) for b in blobs]  # decoded pixels, re-encoded losslessly
    write_clip_benchmark_split(src.local_dir(root), classnames=names, images=blobs, labels=src_labels, ext=ext,
                               shards=shards, multilabel=card.multilabel)
    return src


def _options(**kw) -> EvalOptions:
    return EvalOptions(protocol="elevater", **{"pixel_cache": False, "feature_cache": False,
                                               "classifier_cache": False, "batch_size": 8, "workers": 0,
                                               "progress": False, **kw})


def _probs(loaded, data, **kw):
    out = evaluate_dataset(loaded, data.card, data, _options(**kw))
    return out.predictions.probs, out.metrics


@pytest.fixture
def iris_root(tmp_path):
    root = tmp_path / "iris"
    for name in (CIFAR, VOC):
        card = get_dataset_card(name)
        write_iris(card, root, _labels(card))
    return root


@pytest.mark.parametrize("name, ext", [(CIFAR, "jpg"), (CIFAR, "webp"), (CIFAR, "png"), (VOC, "webp")])
def test_same_pixels_same_probabilities(tiny_loaded, cache, iris_root, tmp_path, name, ext):
    card = get_dataset_card(name)
    reference = open_eval_data(card, iris_root)
    assert reference.layout == "elevater-iris"
    src = _wds(tmp_path / "wds", name, ext=ext)
    data = sources.open_source(card, src, tmp_path / "wds")
    assert data.layout == "clip-benchmark-wds" and len(data) == len(reference)
    assert np.array_equal(data.labels, reference.labels)  # remapped from the rotated order
    for i in (0, len(data) - 1):
        assert np.array_equal(np.asarray(data.load_image(i)), np.asarray(reference.load_image(i)))
    probs, values = _probs(tiny_loaded, data)
    ref_probs, ref_values = _probs(tiny_loaded, reference)
    assert np.array_equal(probs, ref_probs) and values == ref_values


def test_unmapped_labels_would_differ(iris_root, tmp_path):
    """The remap is what makes them equal: the rotated repo's raw labels are other classes."""
    card = get_dataset_card(CIFAR)
    reference = open_eval_data(card, iris_root)
    src = _wds(tmp_path / "wds", CIFAR)
    with tarfile.open(src.local_dir(tmp_path / "wds") / "test" / "0.tar") as tar:
        raw = int(tar.extractfile("s0000000.cls").read())
    assert raw == 9 and reference.labels[0] == 0
    assert sources.open_source(card, src, tmp_path / "wds").labels[0] == 0


@pytest.mark.parametrize("as_zip", [False, True])
def test_rehost_same_probabilities_and_order(tiny_loaded, cache, iris_root, tmp_path, as_zip):
    card = get_dataset_card(CIFAR)
    reference = open_eval_data(card, iris_root)
    labels = _labels(card)
    src = _source(CIFAR, "elevater-rehost", len(labels))
    write_rehost(src.local_dir(tmp_path), {src.member: RehostSet(card.classnames, _jpegs(card, labels), labels)},
                 as_zip=as_zip, inner_zips=False)
    data = sources.open_source(card, src, tmp_path)
    assert data.layout == ("elevater-rehost-zip" if as_zip else "elevater-rehost")
    assert np.array_equal(data.labels, reference.labels)  # index.json restored ELEVATER's order
    assert data.source["fidelity"] == "same split" and data.source["member"] == CIFAR
    probs, _ = _probs(tiny_loaded, data)
    assert np.array_equal(probs, _probs(tiny_loaded, reference)[0])


def test_rehost_without_index_is_another_order(tmp_path):
    card = get_dataset_card(CIFAR)
    labels = _labels(card)
    src = _source(CIFAR, "elevater-rehost", len(labels))
    write_rehost(src.local_dir(tmp_path), {src.member: RehostSet(card.classnames, _jpegs(card, labels), labels,
                                                                 index_json=False)}, as_zip=False)
    data = sources.open_source(card, src, tmp_path)
    assert data.source["fidelity"] == "same images in another order"
    assert sorted(data.labels.tolist()) == sorted(labels) and data.labels.tolist() != labels


def test_shards_are_indexed_and_loader_pickles(tmp_path):
    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR, shards=4, ext="webp")
    repo = src.local_dir(tmp_path)
    assert (repo / "test" / "nshards.txt").read_text().strip() == "4"
    with tarfile.open(repo / "test" / "0.tar") as tar:
        assert [m.name for m in tar.getmembers()][:2] == ["s0000000.cls", "s0000000.webp"]
    data = sources.open_source(card, src, tmp_path)
    assert data.image_ids[0] == "test/0.tar:s0000000.webp" and data.image_ids[-1].startswith("test/3.tar:")
    clone = pickle.loads(pickle.dumps(data._loader))
    assert np.array_equal(np.asarray(clone.load(17)), np.asarray(data.load_image(17)))


def test_fingerprint_has_source_and_file_hashes(tmp_path):
    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR)
    fp = sources.open_source(card, src, tmp_path).fingerprint()
    label_map = fp["source"].pop("label_map")
    assert fp["source"] == src.provenance() and set(fp["files"]) == {"classnames.txt", "nshards.txt", "0.tar",
                                                                     "1.tar", "2.tar"}
    assert label_map["rule"] == "by-name" and set(label_map) == {"rule", "rule_hash", "mapping_hash"}
    shard = src.local_dir(tmp_path) / "test" / "1.tar"
    blob = bytearray(shard.read_bytes())
    blob[2000] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert sources.open_source(card, src, tmp_path).fingerprint(fresh=True)["files"]["1.tar"] != fp["files"]["1.tar"]


def test_a_corrected_label_rule_changes_the_fingerprint(tmp_path, iris_root):
    """Same files, another rule (a corrected one in the sources data): another data fingerprint, so the run key
    changes and the dataset is evaluated again. The toolkit layout's fingerprint carries no label map (its run keys
    stay as they were)."""
    from harness.data.label_rules import LabelRule
    from harness.data.wds_split import open_wds_split

    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR)
    repo = src.local_dir(tmp_path)
    rule = sources.label_rule(src.label_rule)
    first = open_wds_split(card, src, repo, rule).fingerprint()
    a, b = card.classnames[0], card.classnames[1]
    corrected = LabelRule(rule.name, "name", rename={a: b, b: a})  # same name, other content, other mapping
    second = open_wds_split(card, src, repo, corrected).fingerprint()
    assert second["files"] == first["files"] and second["source"]["label_map"] != first["source"]["label_map"]
    assert second != first
    toolkit = open_eval_data(card, iris_root).fingerprint()
    assert set(toolkit) == {"layout", "n_images", "files"}


def test_pixel_and_feature_caches_and_bad_images(tiny_loaded, cache, tmp_path):
    card = get_dataset_card(CIFAR)
    labels = _labels(card)
    blobs = _jpegs(card, labels)
    blobs[5] = b"\xff\xd8 not a jpeg"
    src = _wds(tmp_path, CIFAR, images=blobs)
    data = sources.open_source(card, src, tmp_path)
    with pytest.raises(ImageReadError, match="s0000005.jpg"):
        data.load_image(5)
    first = evaluate_dataset(tiny_loaded, card, data, _options(pixel_cache=True, feature_cache=True,
                                                                skip_bad_images=True))
    assert first.predictions.skipped == [5]
    again = evaluate_dataset(tiny_loaded, card, sources.open_source(card, src, tmp_path),
                             _options(pixel_cache=True, feature_cache=True, skip_bad_images=True))
    assert again.predictions.source == "feature cache"
    assert np.array_equal(again.predictions.probs, first.predictions.probs)


# -- errors: one line naming the file and the remedy

def _error(card, src, root) -> str:
    with pytest.raises(HarnessError) as err:
        sources.open_source(card, src, root)
    return str(err.value)


def test_wds_errors_name_file_and_remedy(tmp_path):
    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR)
    repo = src.local_dir(tmp_path)
    shard = repo / "test" / "2.tar"
    good = shard.read_bytes()

    msg = _error(card, dataclasses.replace(src, expected_count=21), tmp_path)
    assert "20 images in 3 shard(s), expected 21" in msg and REMEDY in msg
    assert sources.open_source(card, dataclasses.replace(src, expected_count=21), tmp_path, strict=False)

    shard.write_bytes(good[: len(good) // 2])
    msg = _error(card, src, tmp_path)
    assert str(shard) in msg and "truncated" in msg and REMEDY in msg
    shard.write_bytes(good)

    (repo / "test" / "nshards.txt").rename(repo / "test" / "n.txt")
    msg = _error(card, src, tmp_path)
    assert f"{repo / 'test' / 'nshards.txt'} is missing" in msg and REMEDY in msg
    (repo / "test" / "n.txt").write_text("4\n")
    (repo / "test" / "n.txt").rename(repo / "test" / "nshards.txt")
    assert f"{repo / 'test' / '3.tar'} is missing" in _error(card, src, tmp_path)
    (repo / "test" / "nshards.txt").write_text("3\n")

    names = (repo / "classnames.txt").read_text()
    (repo / "classnames.txt").write_text(names.replace("truck", "lorry"))
    msg = _error(card, src, tmp_path)
    assert f"{repo / 'classnames.txt'}: line 9 'lorry' is none of the card's class names" in msg and REMEDY in msg
    (repo / "classnames.txt").write_text(names)
    assert len(sources.open_source(card, src, tmp_path)) == 20


@pytest.mark.parametrize("drop, words", [("cls", "has no .cls label"), ("jpg", "has no image")])
def test_wds_sample_without_image_or_label(tmp_path, drop, words):
    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR)
    shard = src.local_dir(tmp_path) / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, blob in members:
            if m.name != f"s0000003.{drop}":
                tar.addfile(m, io.BytesIO(blob))
    msg = _error(card, src, tmp_path)
    assert f"{shard}: sample 's0000003' {words}" in msg and REMEDY in msg


def test_wds_multilabel_mismatch(tmp_path):
    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR)
    (src.local_dir(tmp_path) / "dataset_type.txt").write_text("multilabel\n")
    assert "the repo is multilabel but the card 'cifar-10' is multiclass" in _error(card, src, tmp_path)


def test_rehost_refuses_what_does_not_match(tmp_path):
    card = get_dataset_card(CIFAR)
    labels = _labels(card)
    src = _source(CIFAR, "elevater-rehost", len(labels))
    folder = src.local_dir(tmp_path) / CIFAR
    write_rehost(src.local_dir(tmp_path), {CIFAR: RehostSet(card.classnames, _jpegs(card, labels), labels)},
                 as_zip=False)
    remedy = "python -m harness prepare --source elevater-rehost --datasets cifar-10"
    msg = _error(card, dataclasses.replace(src, expected_count=10000), tmp_path)
    assert f"{folder}: 20 test images, the card 'cifar-10' has 10000" in msg and remedy in msg
    index = (folder / "index.json").read_text()
    (folder / "index.json").write_text("[0, 0, 1]")
    assert "index.json must be a permutation of the 20 test images' positions" in _error(card, src, tmp_path)
    (folder / "index.json").write_text(index)
    (folder / "test" / "0").rename(folder / "test" / "12")
    assert "class folder test/12 is outside the 10 classes of label.txt" in _error(card, src, tmp_path)
    (folder / "test" / "12").rename(folder / "test" / "0")
    rotated = list(card.classnames[1:]) + [card.classnames[0]]  # a consistent relabelling: names + folders
    (folder / "label.txt").write_text("\n".join(rotated) + "\n")
    assert "line 1 is 'automobile' but the card's class 0 is 'airplane'" in _error(card, src, tmp_path)
    (folder / "label.txt").write_text("\n".join(card.classnames[:9]) + "\n")
    assert f"{folder / 'label.txt'}: 9 class names, the card has 10" in _error(card, src, tmp_path)


def test_rehost_zip_layout_is_checked(tmp_path):
    card = get_dataset_card(CIFAR)
    labels = _labels(card)
    src = _source(CIFAR, "elevater-rehost", len(labels))
    base = src.local_dir(tmp_path)
    base.mkdir(parents=True)
    with zipfile.ZipFile(base / f"{CIFAR}.zip", "w") as zf:
        for top in ("a", "b"):
            zf.writestr(f"{top}/label.txt", "x\n")
            zf.writestr(f"{top}/test/0/1.jpg", b"")
    assert "found 2 such folders (top-level entries: a, b)" in _error(card, src, tmp_path)
    (base / f"{CIFAR}.zip").write_bytes(b"PK\x03\x04 truncated")
    assert "is not a readable zip file" in _error(card, src, tmp_path)


# -- choosing among layouts

@pytest.fixture
def small_counts(monkeypatch):
    """The packaged sources with the generated sets' image counts (the rest of the data as shipped)."""
    real = sources.load_sources()

    def small(n: int):
        data = dataclasses.replace(real, sources={d: [dataclasses.replace(s, expected_count=n) for s in found]
                                                  for d, found in real.sources.items()})
        monkeypatch.setattr(sources, "load_sources", lambda: data)
    return small


def test_most_faithful_layout_wins(iris_root, tmp_path, small_counts, caplog):
    import logging
    import shutil

    card = get_dataset_card(CIFAR)
    labels = _labels(card)
    small_counts(len(labels))
    root = iris_root
    _wds(root, CIFAR)
    rehost = _source(CIFAR, "elevater-rehost", len(labels))
    write_rehost(rehost.local_dir(root), {CIFAR: RehostSet(card.classnames, _jpegs(card, labels), labels)},
                 as_zip=True, inner_zips=False)
    with caplog.at_level(logging.INFO, logger="harness.data.sources"):
        assert open_eval_data(card, root).layout == "elevater-iris"
    assert "also present, less faithful: elevater-rehost" in caplog.text
    shutil.rmtree(root / card.root_folder)
    data = open_eval_data(card, root)
    assert data.layout == "elevater-rehost-zip" and data.source["kind"] == "elevater-rehost"
    (rehost.local_dir(root) / f"{CIFAR}.zip").unlink()
    assert open_eval_data(card, root).source["kind"] == "clip-benchmark"
    shutil.rmtree(root / "clip-benchmark")
    with pytest.raises(MissingDataError) as err:
        open_eval_data(card, root)
    msg = str(err.value)
    for place in (str(root / card.root_folder), str(rehost.local_dir(root) / CIFAR),
                  str(root / "clip-benchmark" / "wds_vtab-cifar10" / "test")):
        assert place in msg


def test_result_json_records_the_source(tiny_loaded, cache, tmp_path, small_counts):
    import json

    from harness.run.runner import evaluate

    card = get_dataset_card(CIFAR)
    small_counts(len(_labels(card)))
    src = _wds(tmp_path / "data", CIFAR)
    results = tmp_path / "results"
    evaluate("tiny_demo_clip", [CIFAR], tmp_path / "data",
             EvalOptions(results_root=str(results), progress=False, workers=0, pixel_cache=False,
                         feature_cache=False), loaded=tiny_loaded)
    record = json.loads(next(results.rglob(f"{CIFAR}.json")).read_text())
    assert record["data_source"] == record["run_key"]["parts"]["data"]["source"]
    assert record["data_source"].pop("label_map")["rule"] == src.label_rule
    assert record["data_source"] == src.provenance()


def test_recorded_revision_is_the_one_reported(tmp_path):
    import json

    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR)
    record = src.local_dir(tmp_path) / sources.RECORD_FILE
    record.write_text(json.dumps({"revision": "b" * 40}))
    data = sources.open_source(card, src, tmp_path)
    assert data.source["revision"] == "b" * 40 and data.fingerprint()["source"]["revision"] == "b" * 40
    assert data.source["revision_verified"] is True and "note" not in data.source
    pinned = dataclasses.replace(src, revision="a" * 40)
    msg = _error(card, pinned, tmp_path)
    assert f"{record}: this copy of clip-benchmark/wds_vtab-cifar10 was downloaded at commit {'b' * 40}" in msg
    record.unlink()  # a hand download: no record, so not credited with the commit the sources data pins
    hand = sources.open_source(card, dataclasses.replace(src, revision="a" * 40), tmp_path)
    assert hand.source["revision"] is None and hand.source["revision_verified"] is False
    assert hand.source["note"] == "hand download, revision unknown"


def test_worker_processes_read_the_same(tiny_loaded, cache, tmp_path):
    card = get_dataset_card(CIFAR)
    src = _wds(tmp_path, CIFAR, ext="webp")
    data = sources.open_source(card, src, tmp_path)
    assert np.array_equal(_probs(tiny_loaded, data, workers=2)[0], _probs(tiny_loaded, data)[0])


@pytest.mark.slow
def test_torchrun_ranks_read_a_webdataset_as_one_process(tmp_path):
    """kitti-distance as its real-size clip-benchmark split (711 images, the count the source must have), evaluated
    by one process and by two torchrun ranks: the same probabilities, run key and data_source."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    card = get_dataset_card("kitti-distance")
    src = next(s for s in sources.sources_for(card.name) if s.kind == "clip-benchmark")
    labels = [i % card.num_classes for i in range(src.expected_count)]
    n = card.num_classes  # rotated by one: source label k = card class k + 1
    write_clip_benchmark_split(src.local_dir(tmp_path / "data"),
                               classnames=[card.classnames[(k + 1) % n] for k in range(n)],
                               images=[class_image(lab, i, n, size=(24, 20)) for i, lab in enumerate(labels)],
                               labels=[(lab - 1) % n for lab in labels], ext="jpg", shards=2)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(REPO), HARNESS_CACHE=str(tmp_path / "cache"))
    common = ["-m", "harness", "eval-all", "--model", "tiny_demo_clip", "--datasets", card.name, "--data-root",
              str(tmp_path / "data"), "--device", "cpu", "--workers", "0", "--no-progress", "--no-pixel-cache",
              "--no-feature-cache"]
    runs = {"one": [sys.executable], "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                             "--standalone"]}
    out = {}
    for name, launcher in runs.items():
        done = subprocess.run([*launcher, *common, "--results", str(tmp_path / name)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        folder = tmp_path / name / "tiny_demo_clip" / "elevater"
        res = json.loads((folder / f"{card.name}.json").read_text())
        out[name] = (res, np.load(folder / res["files"]["probs"]))
    (one, p1), (two, p2) = out["one"], out["two"]
    np.testing.assert_array_equal(p1, p2)
    assert one["run_key"]["hash"] == two["run_key"]["hash"] and two["provenance"]["world_size"] == 2
    assert one["data_source"] == two["data_source"] and one["n_images"] == 711
    assert one["data_source"].pop("label_map")["rule"] == src.label_rule and one["data_source"] == src.provenance()


def test_incomplete_toolkit_copy_gives_way(iris_root, small_counts, caplog):
    import logging

    card = get_dataset_card(CIFAR)
    small_counts(len(_labels(card)))
    (iris_root / card.root_folder / card.labelmap).unlink()
    with pytest.raises(HarnessError, match="is incomplete: missing labels.txt"):
        open_eval_data(card, iris_root)
    _wds(iris_root, CIFAR)
    with caplog.at_level(logging.WARNING, logger="harness.data.sources"):
        assert open_eval_data(card, iris_root).layout == "clip-benchmark-wds"
    assert "toolkit layout" in caplog.text and "incomplete" in caplog.text


def test_a_broken_more_faithful_copy_does_not_block(iris_root, small_counts, caplog):
    """A damaged re-host zip (more faithful) beside a good webdataset: a warning naming the zip and why, then the
    webdataset is read."""
    import logging
    import shutil

    card = get_dataset_card(CIFAR)
    small_counts(len(_labels(card)))
    shutil.rmtree(iris_root / card.root_folder)
    rehost = _source(CIFAR, "elevater-rehost", len(_labels(card)))
    broken = rehost.local_dir(iris_root) / f"{CIFAR}.zip"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(HarnessError, match="is not a readable zip file"):
        open_eval_data(card, iris_root)  # nothing else present: its own error
    _wds(iris_root, CIFAR)
    with caplog.at_level(logging.WARNING, logger="harness.data.sources"):
        assert open_eval_data(card, iris_root).layout == "clip-benchmark-wds"
    assert f"the elevater-rehost copy at {broken} cannot be read" in caplog.text
    assert "is not a readable zip file" in caplog.text and "trying clip-benchmark" in caplog.text
