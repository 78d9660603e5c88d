"""The "Retrieval set" section: which retrieved-pairs set each model was trained on, and how much of it was online.

Sources: a training run's ``train_data_set`` row (:mod:`harness.core.training_log`, the summary of the shards'
``availability.json`` that ``training.main`` records), ``availability.json`` files given to the report
(``--pairs-set LABEL=PATH``), the model cards' ``retrieval_set``, and REACT's published set sizes
(:func:`harness.core.pairs_availability.published_sets`).

- :func:`runs_table`: per training run, the set it trained on (source parquet, download date, successes / URLs, rate);
- :func:`run_sets_table`: per run set, its trained models and their sets (a card is matched to its training run by
  name, as ``training.main`` names the card after the run);
- :func:`pairs_table`: pairs per set — REACT's Dec 2021 and Feb 2023 sets beside every set downloaded here;
- :func:`pairs_row`: the same number for each column of the REACT comparison table (the row that table implies).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from harness.cards import ModelCard
from harness.core import pairs_availability, training_log
from harness.core.errors import HarnessError
from harness.report.tables import MISSING, Table

logger = logging.getLogger(__name__)

Summary = dict  # harness.core.pairs_availability.summary
PAIRS_ROW = "Pairs per set"


def run_summaries(runs: list[tuple[str, list[dict]]]) -> dict[str, Summary]:
    """Training run name -> the pairs set it recorded (runs that recorded none are left out)."""
    out = {}
    for name, rows in runs:
        s = training_log.train_data_set(rows)
        if s:
            out[name] = s
    return out


def file_summaries(pairs_sets: list[tuple[str, Path]]) -> dict[str, Summary]:
    """--pairs-set LABEL=PATH: label -> summary of that availability.json (an unreadable one is logged, left out)."""
    out = {}
    for label, path in pairs_sets:
        try:
            out[label] = pairs_availability.summary(pairs_availability.read(path), Path(path).resolve())
        except HarnessError as exc:
            logger.warning("--pairs-set %s: %s", label, exc)
    return out


def _card_key(run_name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", run_name)  # training.model_card.card_name's default


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else MISSING


def _rate(s: Summary) -> str:
    r = s.get("success_rate")
    return f"{100 * r:.1f}%" if isinstance(r, (int, float)) else MISSING


def _date(s: Summary) -> str:
    return (s.get("downloaded_at") or MISSING)[:10]


def runs_table(summaries: dict[str, Summary], runs: list[tuple[str, list[dict]]]) -> Table:
    rows = []
    for name, _ in runs:
        s = summaries.get(name)
        rows.append([name, s.get("source_parquet") or MISSING, _date(s), f"{_count(s.get('successes'))} / "
                     f"{_count(s.get('total'))}", _rate(s)] if s else [name, MISSING, MISSING, MISSING, MISSING])
    return Table("Retrieval set of each training run",
                 ["run", "source parquet", "downloaded", "successes / URLs", "rate"], rows,
                 note="From the run's training log (its shards' availability.json, written by `python -m "
                      f"training.pairs stats`). {MISSING}: the run trained on shards made otherwise.")


def run_sets_table(df, cards: dict[str, ModelCard], summaries: dict[str, Summary]) -> Table | None:
    """Per run set, each model whose set is known: from its training run's log, else its card's retrieval_set."""
    by_card = {_card_key(run): s for run, s in summaries.items()}
    rows = []
    for run_set, model in sorted(set(zip(df.run_set, df.model))) if len(df) else []:
        s = by_card.get(model)
        card = cards.get(model)
        if s:
            rows.append([run_set, model, s.get("source_parquet") or MISSING, _date(s),
                         f"{_count(s.get('successes'))} / {_count(s.get('total'))}", _rate(s)])
        elif card is not None and card.retrieval_set:
            rows.append([run_set, model, card.retrieval_set, MISSING, MISSING, MISSING])
    if not rows:
        return None
    return Table("Retrieval set of each run set's models",
                 ["run set", "model", "retrieval set", "downloaded", "successes / URLs", "rate"], rows,
                 note="Trained models: from their training run's log (card name = run name); released models: "
                      "their card's retrieval_set.")


def pairs_table(files: dict[str, Summary], summaries: dict[str, Summary]) -> Table:
    """Pairs per set: REACT's published sets, then each downloaded set (--pairs-set files, then training logs)."""
    published = pairs_availability.published_sets()
    sets: dict[str, Summary] = dict(files)
    for run, s in summaries.items():
        key = s.get("availability_file") or run
        if not any(v.get("availability_file") == key for v in sets.values()):
            sets[f"Downloaded {_date(s)} ({s.get('source_parquet') or run})"] = s
    header = [""] + [f"REACT {name}" for name in published] + list(sets)
    first = next(iter(published.values()))
    rows = [[PAIRS_ROW] + [_count(n) for n in published.values()] + [_count(s.get("successes")) for s in sets.values()],
            ["URLs tried"] + [MISSING] * len(published) + [_count(s.get("total")) for s in sets.values()],
            ["online (successes / URLs)"] + [MISSING] * len(published) + [_rate(s) for s in sets.values()],
            [f"vs REACT's {next(iter(published))}"] + [f"{100 * n / first:.1f}%" for n in published.values()] +
            [f"{100 * s['successes'] / first:.1f}%" if isinstance(s.get("successes"), int) else MISSING
             for s in sets.values()]]
    facts = pairs_availability.react_sets()["published_sets"]
    told = "; ".join(f"{name}: {f['as_published']} pairs, {f['note']}" for name, f in facts.items())
    return Table("Pairs per set", header, rows,
                 note=f"REACT's sets as its README gives them ({told}). A set downloaded here: `make pairs "
                      f"PAIRS_DIR=...`, then `python -m harness report --pairs-set LABEL=PAIRS_DIR/availability.json` "
                      f"(or the logs of a run trained on it).")


def pairs_row(labels: list[str], run_set_models: dict[str, set[str]], summaries: dict[str, Summary],
              files: dict[str, Summary]) -> list[str]:
    """The pairs-per-set cell of each comparison-table column: an availability.json given for that label, else the
    training runs of that run set's models (when they agree), else the published set the label names, else n/a."""
    by_card = {_card_key(run): s for run, s in summaries.items()}
    published = pairs_availability.published_sets()
    cells = []
    for label in labels:
        found = files.get(label)
        if found is None:
            counts = {by_card[m]["successes"] for m in run_set_models.get(label, ()) if m in by_card}
            found = {"successes": counts.pop()} if len(counts) == 1 else None
        if found is not None:
            cells.append(_count(found.get("successes")))
            continue
        named = [n for name, n in published.items() if name.lower() in label.lower()]
        cells.append(_count(named[0]) if named else MISSING)
    return cells


def with_pairs_rows(tables: list[Table], cells: list[str]) -> list[Table]:
    """The REACT comparison tables with the pairs-per-set row appended (columns: paper label, then run sets)."""
    if all(c == MISSING for c in cells):
        return tables
    return [Table(t.title, t.header, t.rows + [[PAIRS_ROW] + cells], t.note + f" '{PAIRS_ROW}': the "
                  "retrieved pairs each column's models trained on (availability.json or the set its label names).")
            for t in tables]


def retrieval_section(df, cards: dict[str, ModelCard], runs: list[tuple[str, list[dict]]],
                      pairs_sets: list[tuple[str, Path]]) -> list[Table]:
    """The section's tables (empty when no run, file or card says anything about a retrieval set)."""
    summaries = run_summaries(runs)
    files = file_summaries(pairs_sets)
    tables: list[Table] = []
    if summaries:
        tables.append(runs_table(summaries, runs))
    per_set = run_sets_table(df, cards, summaries)
    if per_set is not None:
        tables.append(per_set)
    if summaries or files:
        tables.append(pairs_table(files, summaries))
    return tables
