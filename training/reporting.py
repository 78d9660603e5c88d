"""Reporting of ``python -m training.main``: one :meth:`Reporter.log` call per training-log row.

Each row goes (rank 0 only; other ranks' reporters do nothing) to ``<logs>/<name>/metrics.jsonl`` (schema:
:mod:`harness.core.training_log`, read by ``python -m harness report``), to the log (``out.log``), and with
``--report-to tensorboard`` / ``wandb`` / ``all`` to TensorBoard (``<logs>/<name>/tensorboard``) and Weights &
Biases (offline under ``<logs>/<name>/wandb`` when api.wandb.ai cannot be reached).
"""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.core import training_log as tl
from harness.core.errors import HarnessError

logger = logging.getLogger("training")


def _wants(report_to: str | None, backend: str) -> bool:
    report_to = report_to or ""
    return backend in report_to or "all" in report_to


def open_tensorboard(log_base: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise HarnessError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(str(log_base / "tensorboard"))


def open_wandb(args, log_base: Path) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise HarnessError("--report-to wandb needs wandb: pip install -e '.[wandb]'") from exc
    from harness.core.network import wandb_offline_if_unreachable

    wandb_offline_if_unreachable(str(log_base))
    return wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, dir=str(log_base),
                      resume="allow", config={k: v for k, v in vars(args).items()
                                              if isinstance(v, (int, float, str, bool, type(None)))})


class Reporter:
    """The training log's destinations. Use as a context manager (or call :meth:`close`) to finish them."""

    def __init__(self, metrics_path: Path | None, writer: Any = None, wandb_run: Any = None):
        self.metrics_path = metrics_path  # None: this rank does not report
        self.writer = writer
        self.wandb_run = wandb_run

    @classmethod
    def open(cls, args, log_base: Path, is_master: bool) -> "Reporter":
        """The reporter of this rank: rank 0 writes metrics.jsonl and opens the --report-to backends."""
        if not is_master:
            return cls(None)
        writer = open_tensorboard(log_base) if _wants(args.report_to, "tensorboard") else None
        wandb_run = open_wandb(args, log_base) if _wants(args.report_to, "wandb") else None
        return cls(log_base / tl.METRICS_FILE, writer, wandb_run)

    def log(self, row: dict) -> None:
        """Record one row (``time`` added first) everywhere this rank reports to."""
        if self.metrics_path is None:
            return
        row = {tl.TIME: datetime.now().isoformat(timespec="seconds"), **row}
        tl.append_row(self.metrics_path, row)
        logger.info("%s", " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items() if k != tl.TIME))
        step = row.get(tl.STEP)
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        if self.writer is not None:
            for k, v in numbers.items():
                if k not in (tl.STEP, tl.EPOCH):
                    self.writer.add_scalar(k, v, step or 0)
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
