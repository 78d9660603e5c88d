"""`python -m harness import-predictions`: the official toolkit's predictions JSONs in as a run set, scored as the
harness scores, rejected whole when they do not fit, and compared with the harness's own run set in reports.

Reference: tests/fixtures/elevater_toolkit/predictions/ — the files the toolkit wrote (--save-predictions) for the
data make_demo_suite(root, images_per_class=3) generates (the `demo_root` fixture)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cards import get_dataset_card
from harness.cli import main
from harness.data.testsets import open_eval_data
from harness.core.errors import HarnessError
from harness.run.predictions_import import (DEFAULT_LABEL, default_model, import_predictions, load_imported,
                                            run_set_folder)
from harness.engine.metrics import compute
from harness.report import ReportInputs, build
from harness.report.runsets import compare, index_run_sets
from harness.store.results import REQUIRED_KEYS, read_result, scan_results

FIXTURES = Path(__file__).parent / "fixtures" / "elevater_toolkit"
PREDICTIONS = FIXTURES / "predictions"
# The toolkit's metric values of this run (/work/elevater_parity/fixture.json, datasets.<name>.value), computed by
# the toolkit on its full-precision probabilities.
TOOLKIT_VALUES = {"cifar-10": 0.0, "kitti-distance": 0.25, "voc-2007-classification": 0.26934539837841387,
                  "hateful-memes": 0.0}
DATASETS = list(TOOLKIT_VALUES)
RANKING = {"voc-2007-classification"}  # 11-point mAP: 6-decimal rounding ties values, which moves it (see below)


def _cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def world(demo_root, tmp_path_factory):
    """A results folder holding tiny_demo_clip's own eval of the four datasets, the toolkit's files imported twice
    (as they are, model 'clip_react'; and paired with tiny_demo_clip for the report — the toolkit ran a tiny REACT
    model, so the numbers differ: the pairing only exercises the comparison) and the harness's own exports."""
    root = tmp_path_factory.mktemp("imports")
    results = root / "results"
    assert _cli("eval", "--model", "tiny_demo_clip", "--dataset", ",".join(DATASETS), "--data-root", demo_root,
                "--results", results, "--workers", "0", "--no-progress") == 0
    for ds in DATASETS:
        assert _cli("import-predictions", PREDICTIONS / f"{ds}.json", "--dataset", ds, "--data-root", demo_root,
                    "--results", results) == 0
        assert _cli("import-predictions", PREDICTIONS / f"{ds}.json", "--dataset", ds, "--data-root", demo_root,
                    "--results", results, "--model", "tiny_demo_clip", "--label", "Toolkit as tiny_demo_clip") == 0
        own = read_result(results / "tiny_demo_clip" / "elevater" / f"{ds}.json")
        export = results / "tiny_demo_clip" / "elevater" / own["files"]["predictions"]
        assert _cli("import-predictions", export, "--dataset", ds, "--data-root", demo_root, "--results", results,
                    "--label", "Re-export") == 0
    return {"root": root, "results": results, "data": demo_root}


def _imported(world, label: str, model: str, ds: str) -> dict:
    return read_result(run_set_folder(world["results"], label) / model / "elevater" / f"{ds}.json")


@pytest.mark.parametrize("ds", DATASETS)
def test_toolkit_predictions_score_as_the_toolkit(world, ds):
    r = _imported(world, DEFAULT_LABEL, "clip_react", ds)
    card = get_dataset_card(ds)
    assert r["metric"] == card.metric and r["n_images"] == len(open_eval_data(card, world["data"]))
    if ds not in RANKING:
        assert r["metrics"][card.metric] == pytest.approx(TOOLKIT_VALUES[ds], abs=1e-12)
        assert r["score"] == pytest.approx(100 * TOOLKIT_VALUES[ds], abs=1e-9)
        return
    # The toolkit's JSON rounds to 6 decimals: 252 values of this tiny model tie (209 become 0), so the 11-point mAP
    # of the file (26.78) is not the toolkit's (26.93, on full precision). The scorer is the toolkit's: on the
    # toolkit's full-precision probabilities (toolkit_probs.npz, same run) it gives the toolkit's number exactly.
    labels = open_eval_data(card, world["data"]).labels
    full = np.load(FIXTURES / "toolkit_probs.npz")[ds]
    assert compute([card.metric], full, labels)[card.metric] == pytest.approx(TOOLKIT_VALUES[ds], abs=1e-12)
    rounded = json.loads((PREDICTIONS / f"{ds}.json").read_text())["predictions"][0]
    assert r["metrics"][card.metric] == compute([card.metric], np.asarray(rounded, np.float32), labels)[card.metric]
    assert abs(r["metrics"][card.metric] - TOOLKIT_VALUES[ds]) < 0.002


def test_imported_result_is_a_normal_result_in_its_own_folder(world):
    results = world["results"]
    r = _imported(world, DEFAULT_LABEL, "clip_react", "cifar-10")
    own = read_result(results / "tiny_demo_clip" / "elevater" / "cifar-10.json")
    assert set(r) == set(own) and set(REQUIRED_KEYS) <= set(r)
    assert set(r["model"]) == set(own["model"]) and set(r["dataset"]) == set(own["dataset"])
    assert set(r["protocol"]) == set(own["protocol"]) and r["protocol"]["name"] == "elevater"
    card = get_dataset_card("cifar-10")
    data = open_eval_data(card, world["data"])
    parts = r["run_key"]["parts"]
    assert set(parts) == {"source", "predictions_sha256", "dataset", "data"} and parts["source"] == "imported"
    assert parts["data"] == data.fingerprint() == own["run_key"]["parts"]["data"]
    assert parts["dataset"] == own["run_key"]["parts"]["dataset"]
    prov = r["provenance"]
    assert prov["label"] == DEFAULT_LABEL and prov["imported_from"] == str((PREDICTIONS / "cifar-10.json").resolve())
    assert prov["imported_at"] and prov["packages"]["numpy"] and prov["source"]["model_name"] == "CLIP-clip_react"
    folder = run_set_folder(results, DEFAULT_LABEL) / "clip_react" / "elevater"
    assert list(r["files"]) == ["probs"] and sorted(p.name for p in folder.glob("cifar-10.*")) == \
        sorted([r["files"]["probs"], "cifar-10.json", "cifar-10.lock"])
    probs = np.load(folder / r["files"]["probs"])
    assert probs.dtype == np.float32 and probs.shape == (30, 10)
    # the harness's own folder does not mix imports in; each imported folder is a results folder of its own
    assert {x["model"]["card"] for x in scan_results(results)[0]} == {"tiny_demo_clip"}
    assert len(scan_results(run_set_folder(results, DEFAULT_LABEL))[0]) == len(DATASETS)
    assert default_model("CLIP-clip_react") == "clip_react"


def test_table_lists_an_imported_run_set(world, capsys):
    capsys.readouterr()
    assert _cli("table", "--results", run_set_folder(world["results"], DEFAULT_LABEL)) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("clip_react")]
    assert [line.split()[2] for line in rows] == sorted(DATASETS)


def test_importing_the_same_file_again_writes_nothing(world, tmp_path):
    results = tmp_path / "results"
    args = (PREDICTIONS / "kitti-distance.json", "kitti-distance", world["data"])
    first = import_predictions(*args, results_root=results)
    files = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.suffix != ".lock"}
    again = import_predictions(*args, results_root=results)
    assert again.reused and not first.reused and again.result["run_key"] == first.result["run_key"]
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.suffix != ".lock"} == files
    # another file for the same result replaces it: one probabilities file stays, the new one
    other = json.loads(args[0].read_text())
    other["predictions"][0] = other["predictions"][0][::-1]
    (tmp_path / "k.json").write_text(json.dumps(other))
    third = import_predictions(tmp_path / "k.json", "kitti-distance", world["data"], results_root=results)
    assert not third.reused and sorted(p.name for p in third.path.parent.glob("*.npy")) == \
        [third.result["files"]["probs"]]


def test_seed_index_picks_one_of_several_seed_lists(world, tmp_path):
    data = json.loads((PREDICTIONS / "kitti-distance.json").read_text())
    labels = open_eval_data(get_dataset_card("kitti-distance"), world["data"]).labels
    onehot = np.eye(4)[labels].tolist()
    data["predictions"], data["rnd_seeds"] = [data["predictions"][0], onehot], [0, 1]
    (tmp_path / "two.json").write_text(json.dumps(data))
    with pytest.raises(HarnessError, match=r"2 seed lists .* --seed-index"):
        import_predictions(tmp_path / "two.json", "kitti-distance", world["data"], results_root=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    out = import_predictions(tmp_path / "two.json", "kitti-distance", world["data"], results_root=tmp_path / "r",
                             seed_index=1)
    assert out.result["score"] == 100.0 and out.result["provenance"]["source"]["seed_index"] == 1


def _bad(case: str, tmp_path: Path) -> tuple[Path, str]:
    """A broken copy of the toolkit's cifar-10 file and the message it must raise."""
    data = json.loads((PREDICTIONS / "cifar-10.json").read_text())
    rows = data["predictions"][0]
    path = tmp_path / f"{case}.json"
    if case == "not-json":
        path.write_text('{"model_name": "CLIP-clip_react", "predictions": [[')
        return path, "not JSON"
    if case == "not-this-format":
        path.write_text(json.dumps({"model": "x", "scores": rows}))
        return path, r"expected an ELEVATER predictions JSON .* found keys model, scores"
    if case == "a-list":
        path.write_text(json.dumps(rows))
        return path, "found a JSON list"
    if case == "dataset-name":
        data["dataset_name"] = "cifar-100"
        expect = "dataset_name is 'cifar-100', expected 'cifar-10'"
    elif case == "rows":
        data["predictions"][0] = rows[:-1]
        expect = "29 rows, expected 30"
    elif case == "columns":
        data["predictions"][0] = [r[:-1] for r in rows]
        expect = "9 columns, expected 10"
    elif case == "ragged":
        data["predictions"][0] = [rows[0][:-1]] + rows[1:]
        expect = "rows of different lengths"
    elif case == "nan":
        rows[3][2] = float("nan")
        expect = r"1 values are not finite \(first: row 3, column 2"
    elif case == "logits":
        data["predictions"][0] = [[10 * v for v in r] for r in rows]
        expect = r"expected probabilities in \[0, 1\]"
    elif case == "row-sum":
        rows[0] = [v / 2 for v in rows[0]]
        expect = r"row 0 sums to 0\.49\d+, expected 1"
    elif case == "no-seeds":
        data["predictions"] = []
        expect = "non-empty list"
    else:
        raise AssertionError(case)
    path.write_text(json.dumps(data))  # NaN is written as the JSON extension NaN, which Python reads back
    return path, expect


@pytest.mark.parametrize("case", ["not-json", "not-this-format", "a-list", "dataset-name", "rows", "columns",
                                  "ragged", "nan", "logits", "row-sum", "no-seeds"])
def test_a_bad_file_is_refused_and_writes_nothing(world, tmp_path, case, capsys):
    path, expect = _bad(case, tmp_path)
    results = tmp_path / "results"
    with pytest.raises(HarnessError, match=expect) as info:
        import_predictions(path, "cifar-10", world["data"], results_root=results)
    assert str(path) in str(info.value)
    assert not results.exists()
    capsys.readouterr()
    assert _cli("import-predictions", path, "--dataset", "cifar-10", "--data-root", world["data"],
                "--results", results) == 2
    assert str(path) in capsys.readouterr().err and not results.exists()


def test_the_wrong_dataset_card_is_refused(world, tmp_path):
    with pytest.raises(HarnessError, match="dataset_name is 'cifar-10', expected 'kitti-distance'"):
        import_predictions(PREDICTIONS / "cifar-10.json", "kitti-distance", world["data"], results_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ds", DATASETS)
def test_own_export_round_trip(world, ds):
    """The harness's own predictions export imports as its card and scores as the result it came from."""
    own_path = world["results"] / "tiny_demo_clip" / "elevater" / f"{ds}.json"
    own = read_result(own_path)
    r = _imported(world, "Re-export", "tiny_demo_clip", ds)
    assert r["model"]["card"] == "tiny_demo_clip" and r["model"]["method"] == "baseline"
    card = get_dataset_card(ds)
    probs = np.load(own_path.parent / own["files"]["probs"])
    labels = open_eval_data(card, world["data"]).labels
    if ds in RANKING:  # the export's 6-decimal rounding ties values: the score is that of the rounded values
        rounded = np.round(probs.astype(np.float64), 6).astype(np.float32)
        assert r["metrics"] == compute(list(own["metrics"]), rounded, labels)
        assert abs(r["score"] - own["score"]) < 1.0
    else:
        assert r["metrics"] == pytest.approx(own["metrics"], abs=1e-12) and r["score"] == own["score"]
    imported, harness = index_run_sets([("Re-export", run_set_folder(world["results"], "Re-export")),
                                        ("This harness", world["results"])])
    c = compare(imported["Re-export"][("tiny_demo_clip", ds)], harness["This harness"][("tiny_demo_clip", ds)],
                card.multilabel)
    assert c["max_abs_dprob"] <= 6e-7 and c["note"] == ""  # 6-decimal rounding, then float32
    assert c["agreement"] == (None if card.multilabel else 100.0)


def test_load_imported_for_the_crosscheck(world):
    found = load_imported(world["results"], "tiny_demo_clip", "cifar-10")
    assert [label for label, _, _ in found] == ["Re-export", "Toolkit as tiny_demo_clip"]
    for label, result, probs in found:
        assert result["provenance"]["label"] == label and probs.shape == (30, 10)
    assert load_imported(world["results"], "tiny_demo_clip", "imagenet-1k") == []


def test_report_compares_imported_run_sets_with_the_harness(world):
    results = world["results"]
    folder = build(ReportInputs(name="imports", run_sets=[("This harness", results)]), world["root"] / "reports",
                   generated_at="T0")
    md = (folder / "README.md").read_text()
    assert "## Imported predictions vs this harness" in md
    # every imported run set became a run set of the report, labelled by its recorded label
    for label in (DEFAULT_LABEL, "Re-export", "Toolkit as tiny_demo_clip"):
        assert f"Results per model — {label}, elevater protocol" in md
    title = "### Imported vs harness — Toolkit as tiny_demo_clip vs This harness"
    section = md[md.index(title):].split("\n### ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[3:8] == ["Toolkit as tiny_demo_clip", "This harness", "Δ (imported − harness)",
                           "top-1 agreement (%)", "max abs Δ prob"]
    rows = {c[1]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}
    for ds in DATASETS:
        card = get_dataset_card(ds)
        imp = _imported(world, "Toolkit as tiny_demo_clip", "tiny_demo_clip", ds)
        own = read_result(results / "tiny_demo_clip" / "elevater" / f"{ds}.json")
        row = rows[card.display_name]
        assert row[3:6] == [f"{imp['score']:.2f}", f"{own['score']:.2f}", f"{imp['score'] - own['score']:+.2f}"]
        assert row[6] == "n/a" if card.multilabel else 0 <= float(row[6]) <= 100
        assert float(row[7]) > 0 and row[8] == str(own["n_images"])
    # the toolkit's files as they are (model clip_react) pair with no harness result: shown, and said so
    plain = md[md.index(f"### Imported vs harness — {DEFAULT_LABEL} vs This harness"):].split("\n### ")[0]
    assert "no harness result for this model and dataset" in plain
    csv = (folder / "results.csv").read_text()
    assert f"{DEFAULT_LABEL},clip_react" in csv and "Re-export,tiny_demo_clip" in csv
    assert "Result files not used" not in md
