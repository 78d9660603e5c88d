"""Reports and `table` say where each dataset's numbers came from: the data source per dataset, `different split`
numbers marked (dagger + footnote) and kept out of the ELEVATER-20 average unless --allow-other-splits (then the
average is labelled so); results written before sources were recorded count as the toolkit's own layout."""
from __future__ import annotations

import pytest

from harness.cards import ELEVATER_SUITE, get_suite
from harness.cli import main
from harness.report.collect import RESULT_COLUMNS, TOOLKIT_SOURCE, data_source, dataset_columns
from harness.report.tables import OTHER_SPLIT_MARK, data_sources_table, per_model_tables

EUROSAT = {"kind": "clip-benchmark", "repo": "clip-benchmark/wds_vtab-eurosat", "revision": "ab" * 20,
           "split": "test", "fidelity": "different split"}
CIFAR = {"kind": "elevater-rehost", "repo": "OFA-Sys/chinese-clip-eval", "revision": "cd" * 20, "split": "test",
         "fidelity": "same split"}


def _frame(rows):
    import pandas as pd

    out = []
    for model, dataset, score, src in rows:
        row = {"run_set": "R", "model": model, "protocol": "elevater", "dataset": dataset, "score": score}
        row.update({f"source_{k}": v for k, v in (src or {}).items()})
        out.append(row)
    return pd.DataFrame(out, columns=RESULT_COLUMNS)


def _cells(table, row=0):
    return dict(zip(table.header, table.rows[row]))


def test_old_results_count_as_the_toolkit_layout():
    assert data_source({"score": 1.0}) == TOOLKIT_SOURCE == data_source({"data_source": None})
    assert data_source({"data_source": EUROSAT}) == EUROSAT


def test_a_different_split_is_marked_and_left_out_of_the_average_unless_allowed():
    suite = get_suite(ELEVATER_SUITE)
    datasets = dataset_columns()
    df = _frame([("m", "cifar-10", 40.0, CIFAR), ("m", "eurosat_clip", 90.0, EUROSAT),
                 ("m", "kitti-distance", 20.0, None)])  # kitti: an old result, no source recorded
    (table,) = per_model_tables(df, datasets, suite, "elevater")
    cells = _cells(table)
    assert cells["eurosat"] == f"90.00 {OTHER_SPLIT_MARK}" and cells["cifar-10"] == "40.00"
    assert table.header[-1] == f"{suite.title} (n/20)"
    assert cells[f"{suite.title} (n/20)"] == "30.00 (2/20)"  # (40 + 20) / 2: eurosat left out
    assert "different split" in table.note and "clip-benchmark/wds_vtab-eurosat@abababab" in table.note
    assert "--allow-other-splits" in table.note
    (table,) = per_model_tables(df, datasets, suite, "elevater", allow_other_splits=True)
    label = f"{suite.title}, other splits included (n/20)"
    assert table.header[-1] == label
    assert _cells(table)[label] == f"50.00 {OTHER_SPLIT_MARK} (3/20)"  # (40 + 90 + 20) / 3
    # a model without any other-split score keeps the plain average even when allowed
    df2 = _frame([("m", "cifar-10", 40.0, CIFAR)])
    (table,) = per_model_tables(df2, datasets, suite, "elevater", allow_other_splits=True)
    assert table.header[-1] == f"{suite.title} (n/20)" and OTHER_SPLIT_MARK not in table.note


def test_data_sources_table_names_kind_repo_revision_and_fidelity():
    df = _frame([("m", "cifar-10", 40.0, CIFAR), ("n", "cifar-10", 41.0, CIFAR), ("m", "eurosat_clip", 90.0, EUROSAT),
                 ("m", "kitti-distance", 20.0, None)])
    t = data_sources_table(df, dataset_columns())
    rows = {r[1]: r for r in t.rows}
    assert rows["cifar-10"][2:] == ["elevater-rehost", "OFA-Sys/chinese-clip-eval@cdcdcdcd", "test", "same split",
                                    "—", "2"]
    assert rows["eurosat"][5] == f"different split {OTHER_SPLIT_MARK}"
    assert rows["kitti"][2:7] == ["elevater", "the toolkit's container layout", "—", "same split", "—"]


def test_hand_downloads_and_caveats_are_shown():
    voc = {"kind": "clip-benchmark", "repo": "clip-benchmark/wds_voc2007_multilabel", "revision": None,
           "split": "test", "fidelity": "same images in another order"}
    t = data_sources_table(_frame([("m", "voc-2007-classification", 50.0, voc)]), dataset_columns())
    cells = dict(zip(t.header, t.rows[0]))
    assert cells["repo@revision"] == "clip-benchmark/wds_voc2007_multilabel (hand download, revision unknown)"
    assert "difficult" in cells["caveat"] and "caveat" in t.note


def _family_cards():
    from harness.report.collect import model_cards

    cards = model_cards([])
    base = next(c for c in cards.values() if c.method == "baseline" and any(
        o.base_model == c.name and o.method != "baseline" for o in cards.values()))
    tuned = next(o for o in cards.values() if o.base_model == base.name and o.method != "baseline")
    return cards, base, tuned


def test_every_section_with_per_dataset_scores_marks_or_drops_other_splits():
    """Per method (scores and gains), measured vs published (Δ vs paper), the gain plots and the scatter: a score
    read from a different split is marked with the footnote, or left out of a plot."""
    from harness.report.plots import gain_plots, published_scatter
    from harness.report.tables import measured_vs_published_table, per_method_tables

    cards, base, tuned = _family_cards()
    pub = next(iter(tuned.published), None) or next(iter(base.published))
    with_pub = tuned if pub in tuned.published else base
    rows = [(base.name, "eurosat_clip", 50.0, EUROSAT), (tuned.name, "eurosat_clip", 60.0, EUROSAT),
            (base.name, "cifar-10", 40.0, CIFAR), (tuned.name, "cifar-10", 45.0, CIFAR),
            (with_pub.name, pub, 70.0, EUROSAT)]
    df = _frame(rows)
    (table,) = [t for t in per_method_tables(df, dataset_columns(), cards, "elevater") if base.name in t.title]
    tuned_row = dict(zip(table.header, next(r for r in table.rows if r[1] == tuned.name)))
    base_row = dict(zip(table.header, table.rows[0]))
    assert tuned_row["eurosat"] == f"60.00 (+10.00) {OTHER_SPLIT_MARK}" and tuned_row["cifar-10"] == "45.00 (+5.00)"
    assert base_row["eurosat"] == f"50.00 {OTHER_SPLIT_MARK}" and base_row["cifar-10"] == "40.00"
    assert "different split" in table.note and "wds_vtab-eurosat@abababab" in table.note
    mvp = measured_vs_published_table(df, cards, "elevater")
    (row,) = [r for r in mvp.rows if r[0] == with_pub.name and r[1] == pub]
    assert row[4].endswith(OTHER_SPLIT_MARK) and row[5].endswith(OTHER_SPLIT_MARK) and "different split" in mvp.note
    assert published_scatter(df, cards, "elevater") == {}  # its only point is from a different split
    same = _frame([(with_pub.name, pub, 70.0, CIFAR)])
    assert "measured_vs_published.png" in published_scatter(same, cards, "elevater")
    plots = gain_plots(df, cards, dataset_columns(), "elevater")
    only_cifar = gain_plots(df[df.dataset != "eurosat_clip"], cards, dataset_columns(), "elevater")
    assert plots and plots == only_cifar  # the eurosat bar is not drawn


@pytest.fixture
def results_with_sources(tmp_path, demo_root):
    """Real results of the tiny model (the demo suite), one of them rewritten as read from a different split."""
    import json

    from harness.run.runner import EvalOptions, evaluate
    from harness.store.results import iter_results

    results = tmp_path / "results"
    evaluate("tiny_demo_clip", ["cifar-10", "kitti-distance"], demo_root,
             EvalOptions(results_root=results, progress=False, workers=0))
    for path in results.rglob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("dataset", {}).get("card") == "kitti-distance" and "score" in data:
            data["data_source"] = {**EUROSAT, "repo": "clip-benchmark/wds_vtab-kitti_closest_vehicle_distance"}
            path.write_text(json.dumps(data))
    scores = {r["dataset"]["card"]: r["score"] for r in iter_results(results)}
    return results, scores


def test_report_and_table_cli(results_with_sources, tmp_path, capsys):
    results, scores = results_with_sources
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"), "--name", "x"]) == 0
    md = (tmp_path / "rep" / "x" / "README.md").read_text()
    assert "## Data sources" in md and "wds_vtab-kitti_closest_vehicle_distance@abababab" in md
    assert f"{scores['kitti-distance']:.2f} {OTHER_SPLIT_MARK}" in md
    assert f"{scores['cifar-10']:.2f} (1/20)" in md  # kitti left out of the average
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"), "--name", "y",
                 "--allow-other-splits"]) == 0
    md = (tmp_path / "rep" / "y" / "README.md").read_text()
    avg = (scores["cifar-10"] + scores["kitti-distance"]) / 2
    assert "other splits included (n/20)" in md and f"{avg:.2f} {OTHER_SPLIT_MARK} (2/20)" in md
    capsys.readouterr()
    assert main(["table", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"tiny_demo_clip (elevater) — ELEVATER avg: {scores['cifar-10']:.2f} (1/20)" in out
    assert "different split" in out and OTHER_SPLIT_MARK in out
    assert main(["table", "--results", str(results), "--allow-other-splits"]) == 0
    out = capsys.readouterr().out
    assert f"tiny_demo_clip (elevater) — ELEVATER avg, other splits included: {avg:.2f} (2/20)" in out
