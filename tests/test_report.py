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

from harness.crosscheck import crosscheck
from harness.report import ReportInputs, build, log_to_wandb
from harness.runner import EvalOptions, evaluate

from conftest import REPO

DATASETS = ["cifar-10", "kitti-distance", "hateful-memes", "voc-2007-classification", "oxford-iiit-pets"]


@pytest.fixture(scope="module")
def setup(demo_root, tmp_path_factory):
    """Results of the tiny baseline and of a tiny gated-image card (with a published number) on the demo suite,
    plus a cross-check of the baseline, and a fake-but-real training log."""
    root = tmp_path_factory.mktemp("report")
    cards = root / "cards"
    cards.mkdir()
    base = yaml.safe_load((REPO / "model_cards" / "tiny_demo_clip.yaml").read_text())
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
    rows = [{"epoch": 0, "step": s, "loss": 4 - 0.1 * s} for s in range(1, 9)]
    rows += [{"epoch": e, "train_loss_mean": 4 - e / 3} for e in (1, 2)]
    rows += [{"epoch": e, "eval_dataset": "cifar-10", "cifar-10-zeroshot-top1": 0.1 * e} for e in (1, 2)]
    (logs / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
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


def test_report_files_and_purity(setup):
    folder = setup["folder"]
    assert {p.name for p in folder.iterdir()} == {"README.md", "index.html", "results.csv", "plots"}
    first = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    again = build(setup["inputs"], setup["root"] / "reports", generated_at="T1")
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    for name in first:
        a = first[name].replace(b"T0", b"").replace(b"T1", b"")
        b = second[name].replace(b"T0", b"").replace(b"T1", b"")
        assert a == b, f"{name} changed between two builds from the same inputs"
    build(setup["inputs"], setup["root"] / "reports", generated_at="T0")  # leave it as the other tests expect


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
    assert cells["ELEVATER avg (n/20)"] == f"{expected:.2f} (5/20)"


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
        assert r["elevater"] == pytest.approx(100 * ev["metrics"]["accuracy"])
        assert r["openclip"] == pytest.approx(100 * oc["metrics"]["accuracy"])
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
