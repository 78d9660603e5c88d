"""Reports: result files (+ cards, cross-checks, training logs) -> ``reports/<name>/``.

Writes ``README.md`` (markdown, plots as files in ``plots/``), ``index.html`` (one self-contained page, plots
embedded) and ``results.csv`` (every number). A pure function of its inputs: rerunning with no new results gives
identical files apart from the one "Generated" line.

Tables: per model (ImageNet-1K, the 20 ELEVATER datasets with their own metrics, the ELEVATER average with how many
datasets went in); per method (baseline / locked-text / gated-image of one base model, with gains); the REACT
README's comparison form (rows = methods, columns = run sets, the first being the cards' published numbers);
measured vs published; the OpenCLIP-vs-ELEVATER cross-check; training runs.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from harness.atomic import atomic_write
from harness.cards import ModelCard, all_dataset_cards, all_model_cards, load_model_card
from harness.errors import HarnessError
from harness.metrics import METRIC_LABELS
from harness.results import iter_results

logger = logging.getLogger(__name__)

PAPER_LABEL = "Paper (published)"
MISSING = "—"
METHOD_ORDER = {"baseline": 0, "locked-text": 1, "gated-image": 2, "fine-tuned": 3}
SHORT_NAMES = {"fgvc-aircraft-2013b-variants102": "fgvc-aircraft", "voc-2007-classification": "voc-2007",
               "oxford-flower-102": "flowers-102", "oxford-iiit-pets": "pets", "hateful-memes": "hateful-memes",
               "patch-camelyon": "pcam", "rendered-sst2": "sst2", "resisc45_clip": "resisc45",
               "eurosat_clip": "eurosat", "kitti-distance": "kitti", "stanford-cars": "cars"}


@dataclass
class ReportInputs:
    name: str
    run_sets: list[tuple[str, Path]]  # (label, results folder)
    logs: list[Path] = field(default_factory=list)  # training log roots (<root>/<run>/metrics.jsonl)
    model_card_dirs: list[Path] = field(default_factory=list)  # extra card folders (e.g. trained checkpoints)
    protocol: str = "elevater"
    title: str = "REACT / ELEVATER zero-shot report"
    comparison_dataset: str = "imagenet-1k"  # the dataset of the REACT README-style comparison table
    paper_label: str = PAPER_LABEL  # header of the published-numbers column, e.g. "Paper (Dec 2021 set)"


# ----------------------------------------------------------------------------------------------------------------------
# loading

def _cards(extra_dirs: Iterable[Path]) -> dict[str, ModelCard]:
    cards = {c.name: c for c in all_model_cards()}
    for folder in extra_dirs:
        for path in sorted(Path(folder).glob("*.yaml")):
            try:
                card = load_model_card(path)
                cards.setdefault(card.name, card)
            except HarnessError as exc:
                logger.warning("skipping card %s: %s", path, exc)
    return cards


def collect(inputs: ReportInputs):
    """All results as a DataFrame (one row per run set x model x protocol x dataset)."""
    import pandas as pd

    rows = []
    for label, folder in inputs.run_sets:
        if not Path(folder).is_dir():
            raise HarnessError(f"Results folder {folder} (run set '{label}') does not exist.")
        for r in iter_results(folder):
            rows.append({
                "run_set": label, "model": r["model"]["card"], "method": r["model"]["method"],
                "base_model": r["model"].get("base_model"), "protocol": r["protocol"]["name"],
                "dataset": r["dataset"]["card"], "metric": r["metric"], "score": float(r["score"]),
                "n_images": int(r["n_images"]), "images_per_second": r["provenance"].get("images_per_second"),
                "precision": r["provenance"].get("precision"), "dataset_hash": r["dataset"]["content_hash"],
                "weights_sha256": (r["model"].get("weights") or {}).get("sha256"),
            })
    columns = ["run_set", "model", "method", "base_model", "protocol", "dataset", "metric", "score", "n_images",
               "images_per_second", "precision", "dataset_hash", "weights_sha256"]
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values(["run_set", "model", "protocol", "dataset"], kind="stable").reset_index(drop=True)


def _crosschecks(run_sets: list[tuple[str, Path]]) -> list[tuple[str, dict]]:
    out = []
    for label, folder in run_sets:
        for path in sorted(Path(folder).glob("*/crosscheck.json")):
            try:
                out.append((label, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("skipping %s: %s", path, exc)
    return out


def _training_runs(roots: list[Path]) -> list[tuple[str, list[dict]]]:
    runs = []
    for root in roots:
        for path in sorted(Path(root).glob("*/metrics.jsonl")):
            rows = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            if rows:
                runs.append((path.parent.name, rows))
    return runs


# ----------------------------------------------------------------------------------------------------------------------
# tables (as lists of rows of strings; rendered to markdown and HTML by the same code)

@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return MISSING
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _short(name: str) -> str:
    return SHORT_NAMES.get(name, name)


def per_model_tables(df, datasets, protocol: str) -> list[Table]:
    elevater = [d for d in datasets if d.name != "imagenet-1k"]
    tables = []
    sub = df[df.protocol == protocol]
    for run_set in sorted(sub.run_set.unique()):
        part = sub[sub.run_set == run_set]
        header = ["model", "ImageNet-1K"] + [_short(d.name) for d in elevater] + ["ELEVATER avg (n/20)"]
        rows = []
        for model in sorted(part.model.unique()):
            scores = dict(zip(part[part.model == model].dataset, part[part.model == model].score))
            present = [scores[d.name] for d in elevater if d.name in scores]
            avg = f"{sum(present) / len(present):.2f} ({len(present)}/{len(elevater)})" if present else \
                f"{MISSING} (0/{len(elevater)})"
            rows.append([model, _fmt(scores.get("imagenet-1k"))] + [_fmt(scores.get(d.name)) for d in elevater]
                        + [avg])
        if protocol == "elevater":
            metrics = ", ".join(f"{_short(d.name)}: {METRIC_LABELS[d.metric]}" for d in elevater
                                if d.metric != "accuracy")
            what = f"each dataset with its own ELEVATER metric (top-1 accuracy unless noted: {metrics})"
        else:
            what = "top-1 accuracy on every dataset (multilabel sets are not scored under this protocol)"
        tables.append(Table(
            f"Results per model — {run_set}, {protocol} protocol", header, rows,
            note=f"Scores in percent; {what}. {MISSING} = not evaluated. The ELEVATER average is over the "
                 f"evaluated datasets only; (n/20) says how many went in."))
    return tables


def _react_family(cards: dict[str, ModelCard], models: Iterable[str]) -> dict[str, list[str]]:
    """baseline card -> [baseline, tuned cards...] for models that have results."""
    models = set(models)
    fams: dict[str, list[str]] = {}
    for name in sorted(models):
        card = cards.get(name)
        if card and card.method != "baseline" and card.base_model:
            fams.setdefault(card.base_model, []).append(name)
    return {b: sorted(ms, key=lambda m: (METHOD_ORDER.get(cards[m].method, 9), m)) for b, ms in sorted(fams.items())}


def _families_with_scores(df, cards: dict[str, ModelCard], protocol: str):
    """(run set, baseline card, tuned cards, {model: {dataset: score}}) for every base model with results."""
    sub = df[df.protocol == protocol]
    for run_set in sorted(sub.run_set.unique()):
        part = sub[sub.run_set == run_set]
        for base, tuned in _react_family(cards, part.model.unique()).items():
            if base not in set(part.model):
                continue
            scores = {m: dict(zip(part[part.model == m].dataset, part[part.model == m].score))
                      for m in [base] + tuned}
            yield run_set, base, tuned, scores


def per_method_tables(df, datasets, cards: dict[str, ModelCard], protocol: str) -> list[Table]:
    tables = []
    order = [d.name for d in datasets]
    for run_set, base, tuned, scores in _families_with_scores(df, cards, protocol):
        cols = [d for d in order if any(d in scores[m] for m in scores)]
        header = ["method", "model"] + [_short(d) for d in cols]
        rows = [["Baseline", base] + [_fmt(scores[base].get(d)) for d in cols]]
        for m in tuned:
            cells = []
            for d in cols:
                v, b = scores[m].get(d), scores[base].get(d)
                cells.append(MISSING if v is None else (f"{v:.2f} ({v - b:+.2f})" if b is not None else f"{v:.2f}"))
            rows.append([cards[m].method.capitalize(), m] + cells)
        tables.append(Table(f"Per method — base {base}, {run_set}, {protocol} protocol", header, rows,
                            note="Gains over the baseline in parentheses (points)."))
    return tables


def react_comparison_table(df, cards: dict[str, ModelCard], run_labels: list[str], protocol: str,
                           dataset: str = "imagenet-1k", paper_label: str = PAPER_LABEL) -> list[Table]:
    """The REACT README's table form: rows Baseline / Locked-text / Gated-image, columns = run sets."""
    tables = []
    sub = df[(df.protocol == protocol) & (df.dataset == dataset)]
    measured = {(r.run_set, r.model): r.score for r in sub.itertuples()}
    families = {}
    for card in cards.values():
        if card.method != "baseline" and card.base_model and card.base_model in cards:
            families.setdefault(card.base_model, []).append(card.name)
    for base, tuned in sorted(families.items()):
        members = [base] + sorted(tuned, key=lambda m: (METHOD_ORDER.get(cards[m].method, 9), m))
        has_any = any((label, m) in measured for label in run_labels for m in members)
        if not has_any:
            continue
        method_counts: dict[str, int] = {}
        for m in members:
            method_counts[cards[m].method] = method_counts.get(cards[m].method, 0) + 1
        header = ["", paper_label] + run_labels
        rows = []
        for m in members:
            card = cards[m]
            label = card.method.capitalize()
            if method_counts[card.method] > 1 and card.retrieval_set:
                label += f" ({card.retrieval_set})"
            rows.append([label, _fmt(card.published.get(dataset))] + [_fmt(measured.get((r, m))) for r in run_labels])
        tables.append(Table(f"REACT comparison — {base} family, {dataset} zero-shot", header, rows,
                            note=f"'{paper_label}': the number on each model card (published_source); the other "
                                 f"columns are runs of this harness ({protocol} protocol), labelled by run set. "
                                 f"Rows: " + ", ".join(f"{cards[m].method} = {m}" for m in members) + "."))
    return tables


def measured_vs_published_table(df, cards: dict[str, ModelCard], protocol: str) -> Table:
    sub = df[df.protocol == protocol]
    rows = []
    for r in sub.sort_values(["model", "dataset", "run_set"]).itertuples():
        card = cards.get(r.model)
        if card is None or r.dataset not in card.published:
            continue
        pub = card.published[r.dataset]
        rows.append([r.model, r.dataset, r.run_set, f"{pub:.2f}", f"{r.score:.2f}", f"{r.score - pub:+.2f}"])
    return Table(f"Measured vs published ({protocol} protocol)",
                 ["model", "dataset", "run set", "published", "measured", "Δ"], rows,
                 note="Every card with a published number and a finished result." if rows else
                 "No finished result for a card that carries a published number.")


def crosscheck_table(label: str, cc: dict) -> Table:
    rows = []
    for name, r in sorted(cc["datasets"].items()):
        rows.append([name, f"{r['elevater']:.2f}", f"{r['openclip']:.2f}", f"{r['delta']:+.2f}",
                     "⚠ |Δ| > %.1f" % cc["threshold"] if r["flagged"] else "ok", "; ".join(r["differences"])])
    note = f"Top-1 accuracy of the same weights and data under both protocols; flagged when |Δ| > " \
           f"{cc['threshold']} point (the REACT README reports < 0.1 for almost all cases)."
    if cc.get("skipped_multilabel"):
        note += " Not comparable (multilabel): " + ", ".join(cc["skipped_multilabel"]) + "."
    return Table(f"Cross-check OpenCLIP vs ELEVATER — {cc['model']} ({label})",
                 ["dataset", "ELEVATER", "OpenCLIP", "Δ (OpenCLIP − ELEVATER)", "flag",
                  "what differs (from the cards)"], rows, note=note)


def training_table(runs: list[tuple[str, list[dict]]]) -> Table:
    rows = []
    for name, log in runs:
        epochs = [r for r in log if "train_loss_mean" in r]
        evals = [r for r in log if any(k.endswith("-top1") for k in r)]
        last_eval = evals[-1] if evals else {}
        top1 = next((v for k, v in last_eval.items() if k.endswith("-top1")), None)
        rows.append([name, str(len(epochs)), _fmt(epochs[0]["train_loss_mean"]) if epochs else MISSING,
                     _fmt(epochs[-1]["train_loss_mean"]) if epochs else MISSING,
                     last_eval.get("eval_dataset", MISSING), _fmt(100 * top1) if top1 is not None else MISSING])
    return Table("Training runs", ["run", "epochs", "loss (first epoch)", "loss (last epoch)", "eval dataset",
                                   "zero-shot top-1 (last eval)"], rows)


# ----------------------------------------------------------------------------------------------------------------------
# plots

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def gain_plots(df, cards: dict[str, ModelCard], datasets, protocol: str) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    order = [d.name for d in datasets]
    for run_set, base, tuned, all_scores in _families_with_scores(df, cards, protocol):
        base_scores = all_scores[base]
        for m in tuned:
            scores = all_scores[m]
            names = [d for d in order if d in scores and d in base_scores]
            if not names:
                continue
            gains = [scores[d] - base_scores[d] for d in names]
            fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(names) + 2), 3.4))
            colors = ["#2e7d32" if g >= 0 else "#c62828" for g in gains]
            ax.bar(range(len(names)), gains, color=colors)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("gain over baseline (points)")
            ax.set_title(f"{m} vs {base} — {run_set}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            out[f"gain_{_slug(run_set)}_{m}.png"] = _png(fig)
    return out


def published_scatter(df, cards: dict[str, ModelCard], protocol: str) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = df[df.protocol == protocol]
    pts = [(cards[r.model].published[r.dataset], r.score, r.model) for r in sub.itertuples()
           if r.model in cards and r.dataset in cards[r.model].published]
    if not pts:
        return {}
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    lo, hi = min(xs + ys) - 2, max(xs + ys) + 2
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1, label="measured = published")
    ax.scatter(xs, ys, s=28, color="#1565c0")
    for x, y, m in pts:
        ax.annotate(m, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published (%)")
    ax.set_ylabel("measured by this harness (%)")
    ax.set_title("Measured vs published", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return {"measured_vs_published.png": _png(fig)}


def training_plots(runs: list[tuple[str, list[dict]]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, log in runs:
        steps = [(r["step"], r["loss"]) for r in log if "loss" in r and "step" in r]
        evals = [(r["epoch"], 100 * v) for r in log for k, v in r.items() if k.endswith("-top1")]
        if not steps and not evals:
            continue
        fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
        if steps:
            a.plot([s for s, _ in steps], [v for _, v in steps], color="#6a1b9a", linewidth=1)
        a.set_xlabel("step")
        a.set_ylabel("contrastive loss")
        a.set_title("training loss", fontsize=9)
        a.grid(alpha=0.3)
        if evals:
            b.plot([e for e, _ in evals], [v for _, v in evals], marker="o", color="#ef6c00")
        b.set_xlabel("epoch")
        b.set_ylabel("zero-shot top-1 (%)")
        b.set_title("zero-shot accuracy", fontsize=9)
        b.grid(alpha=0.3)
        fig.suptitle(name, fontsize=9)
        out[f"training_{_slug(name)}.png"] = _png(fig)
    return out


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^0-9A-Za-z._-]+", "_", text).strip("_")


# ----------------------------------------------------------------------------------------------------------------------
# rendering

def _md_table(t: Table) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"### {t.title}", "", "| " + " | ".join(esc(h) for h in t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    if not t.rows:
        lines.append("| " + " | ".join([MISSING] * len(t.header)) + " |")
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines) + "\n"


def _html_table(t: Table) -> str:
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


def build(inputs: ReportInputs, out_root: Path, generated_at: str | None = None) -> Path:
    """Write the report; returns its folder."""
    import pandas as pd

    df = collect(inputs)
    cards = _cards(inputs.model_card_dirs)
    datasets = sorted(all_dataset_cards(), key=lambda d: (d.name != "imagenet-1k", d.name))
    labels = [label for label, _ in inputs.run_sets]
    crosschecks = _crosschecks(inputs.run_sets)
    runs = _training_runs(inputs.logs)

    sections: list[tuple[str, list[Table]]] = [
        ("Results per model", per_model_tables(df, datasets, inputs.protocol)),
        ("Per method: baseline, locked-text, gated-image", per_method_tables(df, datasets, cards, inputs.protocol)),
        ("REACT comparison", react_comparison_table(df, cards, labels, inputs.protocol,
                                                    inputs.comparison_dataset, inputs.paper_label)),
        ("Measured vs published", [measured_vs_published_table(df, cards, inputs.protocol)]),
        ("Cross-check: OpenCLIP vs ELEVATER protocol", [crosscheck_table(lbl, cc) for lbl, cc in crosschecks]),
        ("Training", [training_table(runs)] if runs else []),
    ]
    if (df.protocol != inputs.protocol).any():
        for other in sorted(set(df.protocol) - {inputs.protocol}):
            sections.insert(1, (f"Results per model ({other} protocol)", per_model_tables(df, datasets, other)))
    plots: dict[str, bytes] = {}
    plots.update(gain_plots(df, cards, datasets, inputs.protocol))
    plots.update(published_scatter(df, cards, inputs.protocol))
    plots.update(training_plots(runs))

    folder = Path(out_root) / _slug(inputs.name)
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

    md = [f"# {inputs.title}", "", f"Generated: {generated}", "", summary, ""]
    for title, tables in sections:
        md += [f"## {title}", ""]
        md += [_md_table(t) for t in tables] or ["(nothing to show)", ""]
    if plots:
        md += ["## Plots", ""]
        md += [f"![{name}](plots/{name})" for name in sorted(plots)] + [""]
    atomic_write(folder / "README.md", lambda f: f.write("\n".join(md)), mode="w")

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(inputs.title)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>{html.escape(inputs.title)}</h1>",
             f"<p class='meta'>Generated: {html.escape(generated)}</p>", f"<p>{html.escape(summary)}</p>"]
    for title, tables in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [_html_table(t) for t in tables] or ["<p>(nothing to show)</p>"]
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, blob in sorted(plots.items()):
            b64 = base64.b64encode(blob).decode()
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
    # Lets a browser test (and a curious reader) see that every embedded plot decoded.
    parts.append("<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call("
                 "document.images);document.body.dataset.imagesTotal=i.length;document.body.dataset.imagesLoaded="
                 "i.filter(function(x){return x.complete&&x.naturalWidth>0}).length;"
                 "document.body.dataset.tables=document.querySelectorAll('table.results').length;});</script>")
    parts.append("</body></html>")
    atomic_write(folder / "index.html", lambda f: f.write("\n".join(parts) + "\n"), mode="w")

    csv = df.copy()
    extra = []
    for card in cards.values():
        for ds, value in sorted(card.published.items()):
            extra.append({"run_set": PAPER_LABEL, "model": card.name, "method": card.method,
                          "base_model": card.base_model, "protocol": "published", "dataset": ds,
                          "metric": "accuracy", "score": value})
    for label, cc in crosschecks:
        for ds, r in sorted(cc["datasets"].items()):
            for proto in ("elevater", "openclip"):
                extra.append({"run_set": f"{label} (cross-check)", "model": cc["model"], "protocol": proto,
                              "dataset": ds, "metric": "accuracy", "score": r[proto], "n_images": r["n_images"]})
    if extra:
        csv = pd.concat([csv, pd.DataFrame(extra)], ignore_index=True)
    csv = csv.sort_values(["run_set", "model", "protocol", "dataset"], kind="stable")
    atomic_write(folder / "results.csv", lambda f: f.write(csv.to_csv(index=False, lineterminator="\n")), mode="w")
    return folder


def log_to_wandb(inputs: ReportInputs, project: str = "react-elevater") -> str:
    """Log every result as a wandb Table (offline when the wandb server is unreachable); returns the run dir."""
    import os

    try:
        import wandb
    except ImportError as exc:
        raise HarnessError("--report-to wandb needs wandb: pip install -e '.[wandb]'") from exc
    from harness.models import hub_reachable

    if "WANDB_MODE" not in os.environ and not hub_reachable("api.wandb.ai"):
        os.environ["WANDB_MODE"] = "offline"
        logger.info("wandb: server unreachable, logging offline (wandb sync later)")
    df = collect(inputs)
    run = wandb.init(project=project, name=f"report-{inputs.name}", job_type="report", reinit=True)
    try:
        run.log({"results": wandb.Table(dataframe=df.astype({"images_per_second": float}))})
        run.summary["n_results"] = len(df)
        return str(run.dir)
    finally:
        run.finish()
