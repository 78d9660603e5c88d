"""Reports: result files (+ cards, cross-checks, training logs) -> ``reports/<name>/``.

Writes ``README.md`` (markdown, plots as files in ``plots/``), ``index.html`` (one self-contained page, plots
embedded) and ``results.csv`` (every number). A pure function of its inputs: rerunning with no new results gives
identical files apart from the one "Generated" line.

Stages, one module each: ``collect`` (results -> one tidy DataFrame; cards, families, cross-checks, training logs),
``tables`` (pivots of that frame: per model, per method, the REACT README comparison, measured vs published,
cross-check, training), ``plots`` (PNG bytes), ``render`` (markdown, HTML, CSV and :func:`build`), ``wandb_log``.
Which datasets are averaged, their display names and the method order come from the cards
(:mod:`harness.cards`), not from this package.
"""
from __future__ import annotations

from harness.report.collect import (PAPER_LABEL, Family, ReportInputs, collect, dataset_columns, families,
                                    load_crosschecks, load_training_runs, model_cards, published_frame)
from harness.report.render import build, render_html, render_markdown, results_csv
from harness.report.tables import (MISSING, Table, crosscheck_table, measured_vs_published_table, per_method_tables,
                                   per_model_tables, react_comparison_tables, training_table)
from harness.report.wandb_log import log_to_wandb

__all__ = [
    "MISSING", "PAPER_LABEL", "Family", "ReportInputs", "Table", "build", "collect", "crosscheck_table",
    "dataset_columns", "families", "load_crosschecks", "load_training_runs", "log_to_wandb",
    "measured_vs_published_table", "model_cards", "per_method_tables", "per_model_tables", "published_frame",
    "react_comparison_tables", "render_html", "render_markdown", "results_csv", "training_table",
]
