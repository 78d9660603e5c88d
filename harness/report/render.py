"""Rendering, the last stage: :func:`build` computes the sections and plots and writes ``reports/<name>/``.

``README.md`` (markdown, plots as files in ``plots/``), ``index.html`` (one self-contained page: inline CSS, plots
embedded as data URIs, a small script that records how many images decoded) and ``results.csv`` (every number:
the results, the cards' published numbers, the cross-checks). A pure function of its inputs: rerunning with no new
results gives identical files apart from the one "Generated" line.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.atomic import atomic_write
from harness.cards import ELEVATER_SUITE, ModelCard, get_suite
from harness.report.collect import (PAPER_LABEL, RESULT_ORDER, ReportInputs, collect, dataset_columns,
                                    load_crosschecks, load_training_runs, model_cards, published_frame,
                                    unusable_files, with_imported)
from harness.report.retrieval_sets import file_summaries, pairs_row, retrieval_section, run_summaries, with_pairs_rows
from harness.report.runsets import runset_tables
from harness.core.paths import slug
from harness.report.plots import gain_plots, published_scatter, training_plots
from harness.report.tables import (MISSING, Table, crosscheck_table, data_sources_table, measured_vs_published_table,
                                   per_method_tables,
                                   per_model_tables, react_comparison_tables, training_table,
                                   unusable_files_table)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

Sections = list[tuple[str, list[Table]]]


def markdown_table(t: Table) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"### {t.title}", "", "| " + " | ".join(esc(h) for h in t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    if not t.rows:
        lines.append("| " + " | ".join([MISSING] * len(t.header)) + " |")
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines) + "\n"


def html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)

    def cell(c: str) -> str:
        cls = ' class="text"' if len(c) > 40 else ""
        return f"<td{cls}>{html.escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return (f'<section><h3>{html.escape(t.title)}</h3><div class="scroll"><table class="results">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{note}</section>")


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1400px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table.results{border-collapse:collapse;font-size:.82rem}table.results th,table.results td{border:1px solid #ccc;
padding:.25rem .45rem;text-align:right;white-space:nowrap}table.results td:first-child,table.results th:first-child
{text-align:left}table.results td.text{white-space:normal;text-align:left;min-width:28em}table.results thead{background:#f3f3f3}.scroll{overflow-x:auto}.note{font-size:.8rem;color:#555}
figure{display:inline-block;margin:.5rem}figure img{max-width:640px;border:1px solid #eee}
figcaption{font-size:.75rem;color:#555}.meta{font-size:.8rem;color:#666}"""

# Lets a browser test (and a curious reader) see that every embedded plot decoded.
SCRIPT = ("<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call("
          "document.images);document.body.dataset.imagesTotal=i.length;document.body.dataset.imagesLoaded="
          "i.filter(function(x){return x.complete&&x.naturalWidth>0}).length;"
          "document.body.dataset.tables=document.querySelectorAll('table.results').length;});</script>")


def render_markdown(title: str, generated: str, summary: str, sections: Sections, plots: dict[str, bytes]) -> str:
    md = [f"# {title}", "", f"Generated: {generated}", "", summary, ""]
    for heading, tables in sections:
        md += [f"## {heading}", ""]
        md += [markdown_table(t) for t in tables] or ["(nothing to show)", ""]
    if plots:
        md += ["## Plots", ""]
        md += [f"![{name}](plots/{name})" for name in sorted(plots)] + [""]
    return "\n".join(md)


def render_html(title: str, generated: str, summary: str, sections: Sections, plots: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>Generated: {html.escape(generated)}</p>", f"<p>{html.escape(summary)}</p>"]
    for heading, tables in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [html_table(t) for t in tables] or ["<p>(nothing to show)</p>"]
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, blob in sorted(plots.items()):
            b64 = base64.b64encode(blob).decode()
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
    parts.append(SCRIPT)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def results_csv(df: "pd.DataFrame", cards: dict[str, ModelCard], crosschecks: list[tuple[str, dict]]) -> str:
    """The tidy results plus the cards' published numbers (run set :data:`PAPER_LABEL`, protocol ``published``) and
    both protocols' numbers of every cross-check."""
    import pandas as pd

    pub = published_frame(cards).rename(columns={"published": "score"})
    pub.insert(0, "run_set", PAPER_LABEL)
    pub["protocol"] = "published"
    pub["metric"] = "accuracy"
    extra = [pub] if not pub.empty else []
    cc_rows = [{"run_set": f"{label} (cross-check)", "model": cc["model"], "protocol": proto, "dataset": ds,
                "metric": "accuracy", "score": r[proto]["accuracy"], "n_images": r["n_images"]}
               for label, cc in crosschecks for ds, r in sorted(cc["datasets"].items())
               for proto in ("elevater", "openclip")]
    if cc_rows:
        extra.append(pd.DataFrame(cc_rows))
    csv = pd.concat([df, *extra], ignore_index=True) if extra else df.copy()
    csv = csv.sort_values(RESULT_ORDER, kind="stable")
    return csv.to_csv(index=False, lineterminator="\n")


def comparison_with_pairs(df: "pd.DataFrame", cards: dict[str, ModelCard], labels: list[str], inputs: ReportInputs,
                          runs: list) -> list[Table]:
    """The REACT comparison tables with the row they imply: pairs per set (:mod:`harness.report.retrieval_sets`)."""
    tables = react_comparison_tables(df, cards, labels, inputs.protocol, inputs.comparison_dataset, inputs.paper_label)
    models = {label: set(df[df.run_set == label].model) for label in labels}
    cells = pairs_row([inputs.paper_label] + labels, models, run_summaries(runs), file_summaries(inputs.pairs_sets))
    return with_pairs_rows(tables, cells)


def build(inputs: ReportInputs, out_root: Path, generated_at: str | None = None) -> Path:
    """Write the report to ``<out_root>/<slug of inputs.name>/``; returns that folder."""
    from harness.report.retrieved import retrieved_sections

    inputs = dataclasses.replace(inputs, run_sets=with_imported(inputs.run_sets))
    df = collect(inputs)
    cards = model_cards(inputs.model_card_dirs)
    datasets = dataset_columns()
    suite = get_suite(ELEVATER_SUITE)
    labels = [label for label, _ in inputs.run_sets]
    crosschecks = load_crosschecks(inputs.run_sets)
    runs = load_training_runs(inputs.logs)
    imported = runset_tables(inputs.run_sets, datasets)  # [] without imported run sets

    sections: Sections = [
        ("Results per model", per_model_tables(df, datasets, suite, inputs.protocol, inputs.allow_other_splits)),
        ("Data sources", [data_sources_table(df, datasets)]),
        ("Per method: baseline, locked-text, gated-image", per_method_tables(df, datasets, cards, inputs.protocol)),
        ("REACT comparison", comparison_with_pairs(df, cards, labels, inputs, runs)),
        ("Measured vs published", [measured_vs_published_table(df, cards, inputs.protocol)]),
        ("Cross-check: OpenCLIP vs ELEVATER protocol", [crosscheck_table(lbl, cc) for lbl, cc in crosschecks]),
        *([("Imported predictions vs this harness", imported)] if imported else []),
        ("Training", [training_table(runs)] if runs else []),
        ("Retrieval set", retrieval_section(df, cards, runs, inputs.pairs_sets)),
        *retrieved_sections(inputs.retrieved, inputs.run_sets, inputs.protocol),
    ]
    problems = unusable_files(inputs.run_sets)
    if problems:
        sections.append(("Result files not used", [unusable_files_table(problems)]))
    for other in sorted(set(df.protocol) - {inputs.protocol}):
        sections.insert(1, (f"Results per model ({other} protocol)",
                            per_model_tables(df, datasets, suite, other, inputs.allow_other_splits)))
    plots: dict[str, bytes] = {}
    plots.update(gain_plots(df, cards, datasets, inputs.protocol))
    plots.update(published_scatter(df, cards, inputs.protocol))
    plots.update(training_plots(runs))

    folder = Path(out_root) / slug(inputs.name)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    for old in (folder / "plots").glob("*.png"):
        if old.name not in plots:
            old.unlink()
    for name, blob in sorted(plots.items()):
        atomic_write(folder / "plots" / name, lambda f, b=blob: f.write(b))

    generated = generated_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    sources = ", ".join(f"{label} = {Path(p)}" for label, p in inputs.run_sets)
    summary = (f"{len(df)} results: {df.model.nunique()} models x {df.dataset.nunique()} datasets, "
               f"protocols {', '.join(sorted(df.protocol.unique())) or MISSING}; run sets: {sources}")
    md = render_markdown(inputs.title, generated, summary, sections, plots)
    atomic_write(folder / "README.md", lambda f: f.write(md), mode="w")
    page = render_html(inputs.title, generated, summary, sections, plots)
    atomic_write(folder / "index.html", lambda f: f.write(page), mode="w")
    csv = results_csv(df, cards, crosschecks)
    atomic_write(folder / "results.csv", lambda f: f.write(csv), mode="w")
    logger.debug("report written to %s", folder)
    return folder
