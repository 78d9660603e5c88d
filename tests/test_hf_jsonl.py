"""The ``hf-jsonl`` source (hateful-memes from neuralcatcher/hateful_memes: dev_seen.jsonl + img/): read in place with
the same probabilities as the ELEVATER layout for the same pixels, refused with one line naming the file when the
split does not match, and prepared through the REAL huggingface_hub against a loopback hub (gated: 401 without a
token, downloads with HF_TOKEN; only dev_seen.jsonl and the images it names travel)."""
from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cards import get_dataset_card
from harness.core.errors import HarnessError
from harness.data import sources
from harness.data.prepare import DownloadOptions, PrepareOptions, prepare
from harness.data.prepare.record import RECORD_FILE
from harness.data.prepare.sources_run import STAGING_DIR
from harness.data.synthetic import write_coco
from harness.data.synthetic_sources import write_hf_jsonl
from harness.data.testsets import open_eval_data
from harness.engine.options import EvalOptions
from harness.engine.zeroshot import evaluate_dataset

NAME, REPO = "hateful-memes", "neuralcatcher/hateful_memes"
LABELS = [0, 1, 1, 0, 1, 0, 0, 1]
CLOSED = "http://127.0.0.1:9/container"  # nothing listens: the toolkit's container does not answer


def _source(n: int = len(LABELS)) -> sources.DataSource:
    src = next(s for s in sources.sources_for(NAME) if s.kind == "hf-jsonl")
    return dataclasses.replace(src, expected_count=n)


def _elevater_pngs(root: Path) -> list[bytes]:
    """The ELEVATER coco layout of the card with PNG images, and those images' bytes in index order."""
    card = get_dataset_card(NAME)
    folder = write_coco(card, root, LABELS, fmt="PNG")
    index = json.loads((folder / card.eval_spec.index).read_text())
    with zipfile.ZipFile(folder / card.eval_spec.files[0]) as zf:
        return [zf.read(im["file_name"].split("@", 1)[1]) for im in index["images"]]


def _probs(loaded, data):
    opts = EvalOptions(protocol="elevater", pixel_cache=False, feature_cache=False, classifier_cache=False,
                       batch_size=4, workers=0, progress=False)
    out = evaluate_dataset(loaded, data.card, data, opts)
    return out.predictions.probs, out.metrics


def _error(fn) -> str:
    with pytest.raises(HarnessError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_same_pixels_same_probabilities_as_the_elevater_layout(tiny_loaded, cache, tmp_path):
    card = get_dataset_card(NAME)
    pngs = _elevater_pngs(tmp_path / "elevater")
    reference = open_eval_data(card, tmp_path / "elevater")
    src = _source()
    write_hf_jsonl(src.local_dir(tmp_path / "hf"), images=pngs, labels=LABELS)
    found = sources.present_sources(card, tmp_path / "hf")[0]  # DATA_ROOT/neuralcatcher/hateful_memes/
    assert [(s.kind, p) for s, p in found] == [("hf-jsonl", src.local_dir(tmp_path / "hf"))]
    data = sources.open_source(card, src, tmp_path / "hf")
    assert data.layout == "hf-jsonl" and len(data) == len(reference)
    assert np.array_equal(data.labels, reference.labels) and list(data.labels) == LABELS
    assert data.source["kind"] == "hf-jsonl" and data.source["split"] == "dev_seen"
    assert data.source["fidelity"] == "same images in another order"
    assert data.source["revision"] is None and data.source["revision_verified"] is False  # a hand download
    assert data.source["label_map"]["rule"] == "hateful-memes-index"
    assert data.image_ids[0].startswith("img/") and data.image_ids[0].endswith(".png")
    for i in range(len(data)):
        assert np.array_equal(np.asarray(data.load_image(i)), np.asarray(reference.load_image(i)))
    probs, metrics = _probs(tiny_loaded, data)
    ref_probs, ref_metrics = _probs(tiny_loaded, reference)
    assert np.array_equal(probs, ref_probs) and metrics == ref_metrics
    assert "roc_auc" in json.dumps(metrics)


def test_label_meaning_is_checked_against_the_card(tmp_path):
    """label_names in another order (1 = not-hateful) is not the rule's mapping: refused, naming the position."""
    card = get_dataset_card(NAME)
    src = dataclasses.replace(_source(), label_names=("hateful", "not-hateful"))
    write_hf_jsonl(src.local_dir(tmp_path), images=_elevater_pngs(tmp_path / "e"), labels=LABELS)
    msg = _error(lambda: sources.open_source(card, src, tmp_path))
    assert "dev_seen.jsonl" in msg and "'hateful'" in msg and "hateful-memes-index" in msg


def _rewrite(jsonl: Path, edit) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows = edit(rows)
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("edit, words", [
    (lambda rows: rows[:-1], ["7 entries, expected 8", "neuralcatcher/hateful_memes (dev_seen)"]),
    (lambda rows: [{**r, "label": 2} if i == 3 else r for i, r in enumerate(rows)],
     ["line 4", "label 2 is not one of the source's labels 0..1"]),
    (lambda rows: [{**r, "label": "1"} if i == 0 else r for i, r in enumerate(rows)], ["line 1", "label '1'"]),
    (lambda rows: [{**r, "img": "../x.png"} if i == 2 else r for i, r in enumerate(rows)],
     ["line 3", "'../x.png'"]),
    (lambda rows: rows + rows[:1], ["line 9", "already named on line 1"]),
], ids=["count", "label-2", "label-text", "path-outside", "twice"])
def test_a_split_that_does_not_match_is_refused_naming_the_file(tmp_path, edit, words):
    card = get_dataset_card(NAME)
    src = _source()
    jsonl = write_hf_jsonl(src.local_dir(tmp_path), images=_elevater_pngs(tmp_path / "e"), labels=LABELS)
    _rewrite(jsonl, edit)
    msg = _error(lambda: sources.open_source(card, src, tmp_path))
    for w in [str(jsonl), *words, "prepare --source hf-jsonl --datasets hateful-memes"]:
        assert w in msg, msg


def test_a_missing_image_and_a_lenient_count(tmp_path, caplog):
    card = get_dataset_card(NAME)
    src = _source()
    jsonl = write_hf_jsonl(src.local_dir(tmp_path), images=_elevater_pngs(tmp_path / "e"), labels=LABELS)
    first = json.loads(jsonl.read_text().splitlines()[5])["img"]
    (src.local_dir(tmp_path) / first).unlink()
    msg = _error(lambda: sources.open_source(card, src, tmp_path))
    assert f"{src.local_dir(tmp_path) / first} is missing (1 of the 8 images" in msg
    write_hf_jsonl(src.local_dir(tmp_path), images=_elevater_pngs(tmp_path / "e"), labels=LABELS)
    data = sources.open_source(card, dataclasses.replace(src, expected_count=500), tmp_path, strict=False)
    assert len(data) == 8 and "8 entries, expected 500" in caplog.text


# ------------------------------------------------------------------------------------------------ prepare (loopback)


class World:
    def __init__(self, hub, tmp_path: Path, monkeypatch):
        self.hub, self.root = hub, tmp_path / "data"
        cards = tmp_path / "cards"
        cards.mkdir()
        card = get_dataset_card(NAME)
        data = yaml.safe_load(card.path.read_text())
        data["splits"][card.eval_split]["num_images"] = len(LABELS)
        (cards / f"{NAME}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        monkeypatch.setenv("HARNESS_DATASET_CARDS", str(cards))
        raw = yaml.safe_load(sources.SOURCES_FILE.read_text(encoding="utf-8"))
        raw["datasets"][NAME]["hf-jsonl"].update(count=len(LABELS), revision=None)  # the loopback's own commits
        path = tmp_path / "sources.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        monkeypatch.setattr(sources, "SOURCES_FILE", path)
        sources.load_sources.cache_clear()
        repo = tmp_path / "repo"
        pngs = _elevater_pngs(tmp_path / "e")
        write_hf_jsonl(repo, images=pngs, labels=LABELS, ids=range(101, 109))
        write_hf_jsonl(repo, images=pngs[:3], labels=LABELS[:3], split="train", ids=range(201, 204))  # not fetched
        (repo / "README.md").write_text("the release's README\n")
        hub.add_folder(REPO, repo)
        self.named = sorted(f"img/{i:05d}.png" for i in range(101, 109))

    def prepare(self, source: str = "hf-jsonl", **kw):
        opts = PrepareOptions(storage_url=CLOSED, source=source, merge_gap=0,
                              download=DownloadOptions(tries=1, backoff_s=0.01, read_timeout_s=10), **kw)
        (outcome,) = prepare(self.root, NAME, opts).outcomes
        return outcome

    def final_files(self) -> list[str]:
        folder = self.root / REPO
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
            if folder.exists() else []


@pytest.fixture
def world(loopback_hub, tmp_path, monkeypatch):
    yield World(loopback_hub, tmp_path, monkeypatch)
    sources.load_sources.cache_clear()


def test_prepare_gated_then_with_token_fetches_only_the_split(world, monkeypatch):
    world.hub.gated.add(REPO)
    o = world.prepare()
    assert o.status == "failed" and "\n" not in o.detail
    for w in (REPO, "gated", "accept its terms", "HF_TOKEN", f"{world.hub.url}/datasets/{REPO}"):
        assert w in o.detail, o.detail
    assert world.final_files() == []
    monkeypatch.setenv("HF_TOKEN", world.hub.token)
    world.hub.requests.clear()
    o = world.prepare(source="auto")  # the container and the re-host do not answer here: hf-jsonl is next
    assert o.status == "downloaded", o.detail
    assert o.source.startswith(f"hf-jsonl {REPO}@{world.hub.commit(REPO)[:8]}") and "passed over" in o.detail
    assert world.final_files() == sorted([RECORD_FILE, "dev_seen.jsonl", *world.named])
    got = {r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in world.hub.requests
           if r.method == "GET" and "/resolve/" in r.path}
    assert got == {"dev_seen.jsonl", *world.named}  # not train.jsonl, its images, nor the README
    record = json.loads((world.root / REPO / RECORD_FILE).read_text())
    assert record["revision"] == world.hub.commit(REPO) and record["datasets"] == [NAME]
    assert record["files"]["img/00101.png"]["sha256"] == world.hub.sha256(REPO, "img/00101.png")
    assert not (world.root / STAGING_DIR).exists()
    data = open_eval_data(get_dataset_card(NAME), world.root)
    assert data.source["kind"] == "hf-jsonl" and data.source["revision"] == world.hub.commit(REPO)
    assert data.source["revision_verified"] is True and list(data.labels) == LABELS
    assert world.prepare().status == "present"


def test_prepare_refuses_a_count_mismatch_before_any_image(world):
    world.hub.add_file(REPO, "dev_seen.jsonl", b"".join(
        line.encode() + b"\n" for line in (world.hub.repo_dir(REPO) / "dev_seen.jsonl").read_text().splitlines()[:5]))
    o = world.prepare()
    assert o.status == "failed" and "5 entries, expected 8" in o.detail and "before any image" in o.detail
    assert not [r for r in world.hub.requests if r.method == "GET" and "/img/" in r.path]
    assert world.final_files() == []


def test_prepare_names_images_the_hub_lacks(world):
    world.hub.remove_file(REPO, "img/00104.png")
    o = world.prepare()
    assert o.status == "failed" and "\n" not in o.detail
    assert "1 of the 8 images named by dev_seen.jsonl are not in the repo" in o.detail and "img/00104.png" in o.detail
    assert world.final_files() == []


def test_plan_only_counts_the_named_images(world):
    summary = prepare(world.root, NAME, PrepareOptions(storage_url=CLOSED, source="hf-jsonl", plan_only=True,
                                                       download=DownloadOptions(tries=1, read_timeout_s=10)))
    (row,) = summary.plan
    size = sum((world.hub.repo_dir(REPO) / p).stat().st_size for p in ["dev_seen.jsonl", *world.named])
    assert (row.kind, row.files, row.bytes) == ("hf-jsonl", 9, size), row.line()
    assert "8 images named by dev_seen.jsonl" in row.line() and "caveat" in row.line()
    assert not [r for r in world.hub.requests if r.method == "GET" and "/img/" in r.path]
