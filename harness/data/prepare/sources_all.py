"""``prepare --source auto|elevater-rehost|clip-benchmark|hf-jsonl`` and ``--plan-only`` over every dataset asked: one
:class:`~harness.data.prepare.sources_run.SourcePreparer` (hub client, snapshots, the re-host zip opened once), the
overall progress bar, the summary, and the staging folder tidied afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.cards import DatasetCard
from harness.core.errors import HarnessError
from harness.data.prepare.hub import OFFLINE_LINE, endpoint, offline
from harness.data.prepare.sources_run import SOURCE_CHOICES, STAGING_DIR, SourcePreparer


def prepare_sources(data_root: Path, cards: list[DatasetCard], skipped: list[DatasetCard], opts: Any,
                    storage_url: str, storage_from: str) -> Any:
    """``prepare`` with ``--source`` other than the toolkit's container alone, or ``--plan-only``."""
    import requests

    from harness.data.prepare.plan import plan_rows
    from harness.data.prepare.run import DatasetOutcome, PrepareSummary, imagenet_skip_message, prepare_dataset
    from harness.data.prepare.storage import public_url

    if opts.source not in SOURCE_CHOICES:
        raise HarnessError(f"--source must be one of {', '.join(SOURCE_CHOICES)}, got '{opts.source}'.")
    if opts.source not in ("auto", "elevater"):
        from harness.data.sources import sources_for

        for card in cards:
            for source in sources_for(card.name):
                if source.kind == opts.source:
                    SourcePreparer.check_split_of(source, opts.split)
    summary = PrepareSummary(data_root, public_url(storage_url), storage_from, mode=opts.source, hub=endpoint())
    summary.outcomes += [DatasetOutcome(c.name, "skipped", imagenet_skip_message(c)) for c in skipped]
    is_offline = offline()
    if is_offline:
        summary.notes.append(f"  {OFFLINE_LINE}")
    if not opts.plan_only:
        data_root.mkdir(parents=True, exist_ok=True)
    bar = None
    if opts.download.progress and not opts.plan_only:
        from tqdm.auto import tqdm

        bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc="overall", position=0,
                   dynamic_ncols=True, bar_format="{desc}: {n_fmt}{unit} [{elapsed}, {rate_fmt}]")
    session = requests.Session()
    session.headers["User-Agent"] = "react-elevater-harness-prepare"
    runner = SourcePreparer(data_root, opts, storage_url, overall=bar, elevater_prepare=prepare_dataset,
                            session=session)
    try:
        for card in cards:
            if opts.plan_only:
                summary.plan += plan_rows(runner, card)
                continue
            outcome = runner.prepare(card)
            if is_offline and outcome.status == "failed" and OFFLINE_LINE in outcome.detail:
                outcome.detail = "not under DATA_ROOT; no hub contacted (HF_HUB_OFFLINE, see above)"
            summary.outcomes.append(outcome)
    finally:
        session.close()
        if runner.rehost_reader is not None:
            runner.rehost_reader.close()
        if bar is not None:
            bar.close()
        staging = data_root / STAGING_DIR
        if staging.is_dir():
            for folder in sorted(staging.rglob("*"), reverse=True):  # drop empty staging folders
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any(staging.iterdir()):
                staging.rmdir()
    return summary
