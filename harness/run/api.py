"""The Python API: ``harness.evaluate(model=..., datasets=..., data_root=..., **options)``.

The same run as ``python -m harness eval-all`` (resumable, results written to the results folder), returning the
result records (the dicts of the result JSON files, schema in :mod:`harness.store.results`) in dataset order.
``options`` are the fields of :class:`harness.engine.options.EvalOptions` (protocol, precision, batch_size, ...),
with the same defaults as the command line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from harness.cards import DatasetCard, ModelCard
from harness.core.errors import HarnessError


def evaluate(model: str | ModelCard, datasets: str | Sequence[str | DatasetCard] | None = None,
             data_root: str | Path = ".", *, allow_failures: bool = False, **options: Any) -> list[dict]:
    """Evaluate ``model`` (a card name, card YAML path or ModelCard) on ``datasets`` (names, cards, a
    comma-separated string; None: every dataset card) found under ``data_root``. Returns one result record per
    dataset evaluated or already finished. A dataset that is missing from the data root or fails raises
    :class:`~harness.core.errors.HarnessError` naming each (after every other dataset ran and was written), unless
    ``allow_failures``; then they are left out of the list."""
    from harness.engine.options import make_options
    from harness.run.runner import evaluate as run

    if isinstance(datasets, str):
        datasets = [n.strip() for n in datasets.split(",") if n.strip()]
    summary = run(model, list(datasets) if datasets is not None else None, data_root,
                  make_options(**{"progress": False, **options}))
    problems = dict(summary.failed)
    if datasets is not None:  # asked for by name: a missing one is a problem (all cards: only those found run)
        problems.update({name: f"missing: {why}" for name, why in summary.missing.items()})
    if problems and not allow_failures:
        raise HarnessError("; ".join(f"{name}: {why}" for name, why in problems.items())
                           + f" ({len(summary.done) + len(summary.skipped)} other result(s) written under the results "
                             "folder; allow_failures=True returns them)")
    found = {**summary.skipped, **summary.done}
    # as the result files hold them (JSON types: lists, not tuples), whether computed now or read back
    return [json.loads(json.dumps(found[name])) for name in _order(model, datasets, found)]


def _order(model: Any, datasets: Any, found: dict[str, dict]) -> list[str]:
    """Dataset names in the order asked (every card's order when None), of those with a result."""
    from harness.cards import dataset_card_names

    names = [d.name if isinstance(d, DatasetCard) else d for d in datasets] if datasets is not None \
        else dataset_card_names()
    return [n for n in names if n in found]
