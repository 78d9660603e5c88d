"""Reports and the cross-check: tables from result files, purity, CSV, wandb offline, a real browser render."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.core import paths
from harness.core import training_log
from harness.cards import ELEVATER_SUITE, IMAGENET, METHODS, Suite, get_dataset_card, get_model_card, get_suite
from harness.run.crosscheck import crosscheck
from harness.report import ReportInputs, build, log_to_wandb
from harness.report.collect import RESULT_COLUMNS, dataset_columns, families, load_training_runs
from harness.report.plots import training_plots
from harness.report.tables import per_method_tables, per_model_tables, react_comparison_tables, training_table
from harness.run.runner import EvalOptions, evaluate

DATASETS = ["cifar-10", "kitti-distance", "hateful-memes", "voc-2007-classification", "oxford-iiit-pets"]


@pytest.fixture(scope="module")
def setup(demo_root, tmp_path_factory):
    """Results of the tiny baseline and of a tiny gated-image card (with a published number) on the demo suite,
    plus a cross-check of the baseline, and a fake-but-real training log."""
    root = tmp_path_factory.mktemp("report")
    cards = root / "cards"
    cards.mkdir()
    base = yaml.safe_load((paths.BUILTIN_MODEL_CARDS / "tiny_demo_clip.yaml").read_text())
    gated = {**base, "name": "tiny_gated_test", "architecture": "react_tiny-ViT-32px", "method": "gated-image",
             "base_model": "tiny_demo_clip", "retrieval_set": "synthetic", "weights": {"source": "random", "seed": 3},
             "published": {"cifar-10": 12.5}, "published_source": "test fixture"}
    (cards / "tiny_gated_test.yaml").write_text(yaml.safe_dump(gated))
    results = root / "results"
    opts = EvalOptions(results_root=results, progress=False, workers=0)
    evaluate("tiny_demo_clip", DATASETS, demo_root, opts)
    evaluate(str(cards / "tiny_gated_test.yaml"), DATASETS, demo_root, opts)
    cc = crosscheck("tiny_demo_clip", ["cifar-10", "kitti-distance", "voc-2007-classification"], demo_root, opts)
    logs = root / "logs" / "run1"
    logs.mkdir(parents=True)
    tl = training_log
    rows = [{tl.EPOCH: 0, tl.STEP: s, tl.LOSS: 4 - 0.1 * s} for s in range(1, 9)]
    rows += [{tl.EPOCH: e, tl.TRAIN_LOSS_MEAN: 4 - e / 3} for e in (1, 2)]
    rows += [{tl.EPOCH: e, tl.EVAL_DATASET: "cifar-10", tl.zeroshot_key("cifar-10", "accuracy", IMAGENET): 0.1 * e}
             for e in (1, 2)]
    for row in rows:
        tl.append_row(logs / tl.METRICS_FILE, row)
    inputs = ReportInputs(name="test", run_sets=[("This harness", results)], logs=[root / "logs"],
                          model_card_dirs=[cards])
    folder = build(inputs, root / "reports", generated_at="T0")
    return {"root": root, "results": results, "folder": folder, "inputs": inputs, "crosscheck": cc}


def _md(setup) -> str:
    return (setup["folder"] / "README.md").read_text()


def _row(md: str, title_part: str, first_cell: str) -> list[str]:
    section = md[md.index(title_part):]
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row '{first_cell}' under '{title_part}'")


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_report_files_and_purity(setup, tmp_path):
    """A second build from the same inputs (another time stamp) writes the same bytes and changes none of its inputs.
    It goes to this test's own folder: the report the other tests read stays as the fixture built it."""
    folder = setup["folder"]
    assert {p.name for p in folder.iterdir()} == {"README.md", "index.html", "results.csv", "plots"}
    first = _files(folder)
    inputs_before = {where: _files(where) for where in (setup["results"], setup["root"] / "logs")}
    again = build(setup["inputs"], tmp_path / "reports", generated_at="T1")
    assert again == tmp_path / "reports" / folder.name
    second = _files(again)
    assert first.keys() == second.keys()
    for name in first:
        a = first[name].replace(b"T0", b"").replace(b"T1", b"")
        b = second[name].replace(b"T0", b"").replace(b"T1", b"")
        assert a == b, f"{name} changed between two builds from the same inputs"
    assert {where: _files(where) for where in inputs_before} == inputs_before, "building changed its inputs"
    assert _files(folder) == first  # the shared report is untouched


def test_per_model_table_shows_missing_and_counts_the_average(setup):
    md = _md(setup)
    row = _row(md, "Results per model — This harness, elevater protocol", "tiny_demo_clip")
    header = _row(md, "Results per model — This harness, elevater protocol", "model")
    cells = dict(zip(header, row))
    assert cells["ImageNet-1K"] == "—" and cells["caltech-101"] == "—"
    results = {json.loads(p.read_text())["dataset"]["card"]: json.loads(p.read_text())["score"]
               for p in (setup["results"] / "tiny_demo_clip" / "elevater").glob("*.json")
               if not p.name.endswith("predictions.json")}
    assert cells["cifar-10"] == f"{results['cifar-10']:.2f}" and cells["voc-2007"] == \
        f"{results['voc-2007-classification']:.2f}"
    expected = np.mean([results[d] for d in DATASETS])
    suite = get_suite(ELEVATER_SUITE)
    n = len(suite.members)
    assert cells[f"{suite.title} (n/{n})"] == f"{expected:.2f} ({len(DATASETS)}/{n})"


def test_per_method_table_and_gain_plot(setup):
    md = _md(setup)
    title = "Per method — base tiny_demo_clip"
    base = _row(md, title, "Baseline")
    gated = _row(md, title, "Gated-image")
    header = _row(md, title, "method")
    i = header.index("cifar-10")
    b, g = float(base[i]), float(gated[i].split()[0])
    assert gated[i] == f"{g:.2f} ({g - b:+.2f})"
    plot = setup["folder"] / "plots" / "gain_This_harness_tiny_gated_test.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_react_comparison_and_measured_vs_published(setup):
    import dataclasses

    md = _md(setup)
    measured = json.loads((setup["results"] / "tiny_gated_test" / "elevater" / "cifar-10.json").read_text())["score"]
    base = json.loads((setup["results"] / "tiny_demo_clip" / "elevater" / "cifar-10.json").read_text())["score"]
    assert "REACT comparison — tiny_demo_clip family" not in md  # no ImageNet result: no table, not an empty one
    inputs = dataclasses.replace(setup["inputs"], name="cmp", comparison_dataset="cifar-10",
                                 paper_label="Paper (Dec 2021 set)",
                                 run_sets=setup["inputs"].run_sets + [("Second run", setup["results"])])
    cmp_md = (build(inputs, setup["root"] / "reports", generated_at="T0") / "README.md").read_text()
    title = "REACT comparison — tiny_demo_clip family, cifar-10 zero-shot"
    assert _row(cmp_md, title, "") == ["", "Paper (Dec 2021 set)", "This harness", "Second run"]
    assert _row(cmp_md, title, "Baseline") == ["Baseline", "—", f"{base:.2f}", f"{base:.2f}"]
    assert _row(cmp_md, title, "Gated-image") == ["Gated-image", "12.50", f"{measured:.2f}", f"{measured:.2f}"]
    measured = json.loads((setup["results"] / "tiny_gated_test" / "elevater" / "cifar-10.json").read_text())["score"]
    row = _row(md, "Measured vs published", "tiny_gated_test")
    assert row[1:] == ["cifar-10", "This harness", "12.50", f"{measured:.2f}", f"{measured - 12.5:+.2f}"]
    assert (setup["folder"] / "plots" / "measured_vs_published.png").is_file()


def test_crosscheck_json_and_report_section(setup):
    cc = setup["crosscheck"]
    assert set(cc["datasets"]) == {"cifar-10", "kitti-distance"}
    assert cc["skipped_multilabel"] == ["voc-2007-classification"]
    for name, r in cc["datasets"].items():
        ev = json.loads((setup["results"] / "tiny_demo_clip" / "elevater" / f"{name}.json").read_text())
        oc = json.loads((setup["results"] / "tiny_demo_clip" / "openclip" / f"{name}.json").read_text())
        assert r["elevater"]["accuracy"] == pytest.approx(100 * ev["metrics"]["accuracy"])
        assert r["openclip"]["accuracy"] == pytest.approx(100 * oc["metrics"]["accuracy"])
        assert r["elevater"]["score"] == ev["score"] and r["elevater"]["metric"] == ev["metric"]
        # tiny_demo_clip names no toolkit model: both runs use OpenCLIP's code
        assert r["differences"][0] == f"numerics: identical ({ev['provenance']['numerics']})"
        assert r["flagged"] == (abs(r["delta"]) > 0.1)
    kitti = " ".join(cc["datasets"]["kitti-distance"]["differences"])
    assert "squashes to 32x32 (CENTER_CROP false)" in kitti
    assert "templates: identical (18)" in " ".join(cc["datasets"]["cifar-10"]["differences"])
    md = _md(setup)
    assert "Cross-check OpenCLIP vs ELEVATER — tiny_demo_clip" in md
    assert "Not comparable (multilabel): voc-2007-classification" in md


def test_results_csv_holds_every_number(setup):
    import pandas as pd

    csv = pd.read_csv(setup["folder"] / "results.csv")
    n_json = len([p for p in setup["results"].rglob("*.json")
                  if not p.name.endswith("predictions.json") and p.name != "crosscheck.json"])
    assert len(csv[csv.run_set == "This harness"]) == n_json
    published = csv[(csv.run_set == "Paper (published)") & (csv.model == "react_vitb32_CLIP")]
    assert published.score.tolist() == [68.6]
    assert len(csv[csv.run_set.str.endswith("(cross-check)")]) == 4


def test_training_curves_from_logs(setup):
    md = _md(setup)
    row = _row(md, "Training runs", "run1")
    assert row[1:] == ["2", "3.67", "3.33", "cifar-10", "20.00"]
    assert (setup["folder"] / "plots" / "training_run1.png").is_file()


def test_wandb_offline_logs_the_results_table(setup, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = Path(log_to_wandb(setup["inputs"], project="test"))
    assert str(run_dir).startswith(str(tmp_path))
    tables = list(run_dir.rglob("*.table.json"))
    assert tables, list(run_dir.rglob("*"))
    data = json.loads(tables[0].read_text())
    assert "model" in data["columns"] and len(data["data"]) == len(
        [p for p in setup["results"].rglob("*.json") if not p.name.endswith("predictions.json")
         and p.name != "crosscheck.json"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(setup, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does) for the browser test")
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = (setup["folder"] / "index.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    tables = re.search(r'data-tables="(\d+)"', dom)
    n_plots = len(list((setup["folder"] / "plots").glob("*.png")))
    assert total and loaded and tables, dom[:2000]
    assert int(total.group(1)) == int(loaded.group(1)) == n_plots >= 3  # every embedded plot decoded
    assert int(tables.group(1)) >= 6
    assert "tiny_gated_test" in dom and "Cross-check OpenCLIP vs ELEVATER" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1280,1600", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1280) and pixels.std() > 10  # not a blank page


# ----------------------------------------------------------------------------------------------------------------------
# facts from the cards, not from the report's code (tables computed on hand-made tidy frames)

def _frame(rows):
    """A tidy results frame from (run set, model, protocol, dataset, score) tuples."""
    import pandas as pd

    return pd.DataFrame([{"run_set": r, "model": m, "protocol": p, "dataset": d, "score": s}
                         for r, m, p, d, s in rows], columns=RESULT_COLUMNS)


def _extra_dataset_card(folder: Path, name: str, short_name: str) -> None:
    data = yaml.safe_load((paths.BUILTIN_DATASET_CARDS / "cifar-10.yaml").read_text())
    data.update(name=name, short_name=short_name)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))


def test_suite_average_leaves_out_a_dataset_outside_the_suite(tmp_path, monkeypatch):
    _extra_dataset_card(tmp_path, "imagenet-v2-test", "IN-v2 (test)")
    monkeypatch.setenv("HARNESS_DATASET_CARDS", str(tmp_path))
    suite = get_suite(ELEVATER_SUITE)
    datasets = dataset_columns()
    names = [d.name for d in datasets]
    # datasets in no suite first (by name), then the suite's members by card name
    assert names[:2] == [IMAGENET, "imagenet-v2-test"] and names[2:] == sorted(suite.members)
    scores = {IMAGENET: 70.0, "imagenet-v2-test": 90.0, "cifar-10": 40.0, "kitti-distance": 21.0}
    df = _frame([("R", "m", "elevater", d, s) for d, s in scores.items()])
    (table,) = per_model_tables(df, datasets, suite, "elevater")
    assert table.header[0] == "model" and table.header[1:3] == ["ImageNet-1K", "IN-v2 (test)"]
    assert table.header[-1] == "ELEVATER avg (n/20)" == f"{suite.title} (n/{len(suite.members)})"
    cells = dict(zip(table.header, table.rows[0]))
    assert cells["IN-v2 (test)"] == "90.00" and cells["ImageNet-1K"] == "70.00" and cells["kitti"] == "21.00"
    assert cells["ELEVATER avg (n/20)"] == f"{(40.0 + 21.0) / 2:.2f} (2/20)" == "30.50 (2/20)"


def test_suite_title_and_members_come_from_the_suites_file(tmp_path, monkeypatch):
    (tmp_path / "_suites.yaml").write_text(yaml.safe_dump(
        {ELEVATER_SUITE: {"title": "Mini avg", "members": ["kitti-distance", "cifar-10"]}}))
    monkeypatch.setenv("HARNESS_DATASET_CARDS", str(tmp_path))
    suite = get_suite(ELEVATER_SUITE)
    datasets = dataset_columns()
    names = [d.name for d in datasets]
    assert names[-2:] == ["cifar-10", "kitti-distance"] and names.index("oxford-iiit-pets") < names.index("cifar-10")
    df = _frame([("R", "m", "openclip", "cifar-10", 10.0), ("R", "m", "openclip", "kitti-distance", 35.0),
                 ("R", "m", "openclip", "oxford-iiit-pets", 99.0)])
    (table,) = per_model_tables(df, datasets, suite, "openclip")
    assert table.header[-1] == "Mini avg (n/2)"
    assert table.rows[0][-1] == f"{(10.0 + 35.0) / 2:.2f} (2/2)"  # pets (no longer a member) is not averaged
    # and the same with a suite passed directly, no card folders involved
    (table,) = per_model_tables(df, datasets, Suite("s", "S avg", "", ("oxford-iiit-pets",)), "openclip")
    assert table.header[-1] == "S avg (n/1)" and table.rows[0][-1] == "99.00 (1/1)"


def test_display_names_come_from_the_dataset_cards():
    datasets = dataset_columns()
    df = _frame([("R", "m", "elevater", "cifar-10", 1.0)])
    (table,) = per_model_tables(df, datasets, get_suite(ELEVATER_SUITE), "elevater")
    expected = []
    for d in datasets:
        data = yaml.safe_load(get_dataset_card(d.name).path.read_text())  # the card file, wherever it is found
        expected.append(data.get("short_name") or data["name"])
    assert table.header[1:-1] == expected
    assert "voc-2007" in expected and "cifar-10" in expected and "voc-2007-classification" not in expected


def _card(name: str, method: str, base_model: str | None, **extra):
    import dataclasses

    return dataclasses.replace(get_model_card("tiny_demo_clip"), name=name, method=method, base_model=base_model,
                               **extra)


def test_method_order_comes_from_the_cards():
    # names sort the opposite way to METHODS, so only the method rank can give this order
    cards = {c.name: c for c in [_card("a_base", "baseline", None), _card("a_1", "fine-tuned", "a_base"),
                                 _card("a_2", "gated-image", "a_base"), _card("a_3", "locked-text", "a_base")]}
    expected = ["a_base"] + sorted(["a_1", "a_2", "a_3"], key=lambda m: METHODS.index(cards[m].method))
    assert expected == ["a_base", "a_3", "a_2", "a_1"]
    assert [f.members for f in families(cards)] == [tuple(expected)]
    scores = {"a_base": 50.0, "a_1": 51.0, "a_2": 52.0, "a_3": 53.0}
    df = _frame([("R", m, "elevater", IMAGENET, s) for m, s in scores.items()])
    (cmp,) = react_comparison_tables(df, cards, ["R"], "elevater")
    assert [row[0] for row in cmp.rows] == ["Baseline", "Locked-text", "Gated-image", "Fine-tuned"]
    assert [row[2] for row in cmp.rows] == ["50.00", "53.00", "52.00", "51.00"]
    (per_method,) = per_method_tables(df, dataset_columns(), cards, "elevater")
    assert [row[1] for row in per_method.rows] == expected


def test_per_method_and_comparison_tables_agree_on_families():
    cards = {c.name: c for c in [
        _card("a_base", "baseline", None), _card("a_gated", "gated-image", "a_base"),
        _card("a_locked", "locked-text", "a_base", published={IMAGENET: 61.5}),
        _card("b_base", "baseline", None), _card("b_ft", "fine-tuned", "b_base"),
        _card("orphan", "gated-image", "not_a_card"), _card("lonely_base", "baseline", None)]}
    scores = {"a_base": (60.0, 30.0), "a_gated": (63.25, 33.5), "a_locked": (62.0, 29.0), "b_base": (50.0, 10.0),
              "b_ft": (49.5, 12.0), "orphan": (70.0, 70.0), "lonely_base": (10.0, 10.0)}
    df = _frame([("R", m, "elevater", d, s) for m, (inet, cifar) in scores.items()
                 for d, s in ((IMAGENET, inet), ("cifar-10", cifar))])
    want = {"a_base": ["a_base", "a_locked", "a_gated"], "b_base": ["b_base", "b_ft"]}
    assert {f.base: list(f.members) for f in families(cards)} == want

    per_method = per_method_tables(df, dataset_columns(), cards, "elevater")
    got_pm = {t.title.split("base ")[1].split(",")[0]: [row[1] for row in t.rows] for t in per_method}
    comparison = react_comparison_tables(df, cards, ["R"], "elevater")
    got_cmp = {t.title.split("— ")[1].split(" family")[0]: t for t in comparison}
    assert got_pm == want and set(got_cmp) == set(want)
    for table in per_method:
        base = table.rows[0][1]
        i = table.header.index("ImageNet-1K")
        cmp_rows = got_cmp[base].rows
        # same members, same order, same ImageNet numbers in both tables
        assert [row[2] for row in cmp_rows] == [row[i].split()[0] for row in table.rows] == \
            [f"{scores[m][0]:.2f}" for m in want[base]]
        for row in table.rows[1:]:  # gains over the baseline, computed independently
            m, j = row[1], table.header.index("cifar-10")
            assert row[j] == f"{scores[m][1]:.2f} ({scores[m][1] - scores[base][1]:+.2f})"
    assert [row[1] for row in got_cmp["a_base"].rows] == ["—", "61.50", "—"]


def test_training_table_reads_the_training_log_schema(tmp_path):
    tl = training_log
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_a.mkdir()
    run_b.mkdir()
    losses = [2.5, 2.0, 1.75]
    top1 = [0.31, 0.42]
    for step in range(1, 7):
        tl.append_row(run_a / tl.METRICS_FILE, {tl.EPOCH: (step - 1) // 2, tl.STEP: step, tl.LOSS: 3 - 0.2 * step})
    for epoch, loss in enumerate(losses, 1):
        tl.append_row(run_a / tl.METRICS_FILE, {tl.EPOCH: epoch, tl.TRAIN_LOSS_MEAN: loss, tl.TRAIN_STEPS: 2})
    for epoch, value in zip((2, 3), top1):
        tl.append_row(run_a / tl.METRICS_FILE, {tl.EPOCH: epoch, tl.EVAL_DATASET: IMAGENET,
                                                tl.zeroshot_key(IMAGENET, "accuracy", IMAGENET): value,
                                                tl.zeroshot_key(IMAGENET, "accuracy_top5", IMAGENET): 0.9})
    with open(run_a / tl.METRICS_FILE, "a") as f:
        f.write('{"epoch": 4, "train_lo')  # a run killed mid-write
    for step in (1, 2):
        tl.append_row(run_b / tl.METRICS_FILE, {tl.EPOCH: 0, tl.STEP: step, tl.LOSS: 1.0})
    runs = load_training_runs([tmp_path])
    assert [name for name, _ in runs] == ["a", "b"]
    table = training_table(runs)
    assert table.rows == [["a", str(len(losses)), f"{losses[0]:.2f}", f"{losses[-1]:.2f}", IMAGENET,
                           f"{100 * top1[-1]:.2f}"],
                          ["b", "0", "—", "—", "—", "—"]]
    assert table.rows[0][2:] == ["2.50", "1.75", "imagenet-1k", "42.00"]
    assert set(training_plots(runs)) == {"training_a.png", "training_b.png"}


def test_report_package_names_no_fact_literals():
    """Dataset names, training-log keys and display names live in the cards and harness.core.training_log."""
    sources = {p.name: p.read_text() for p in (paths.PACKAGE_DIR / "report").glob("*.py")}
    assert {"__init__.py", "collect.py", "tables.py", "plots.py", "render.py"} <= set(sources)
    for name, text in sources.items():
        for literal in ('"imagenet-1k"', "train_loss_mean", '-top1"', "SHORT_NAMES", "METHOD_ORDER", "(n/20)"):
            assert literal not in text, f"{literal} in harness/report/{name}"
        assert len(text.splitlines()) < 400
