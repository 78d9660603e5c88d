"""Logging a report's results to Weights & Biases (named ``wandb_log`` so it never shadows the ``wandb`` package)."""
from __future__ import annotations

import logging

from harness.core.errors import HarnessError
from harness.report.collect import ReportInputs, collect

logger = logging.getLogger(__name__)

def log_to_wandb(inputs: ReportInputs, project: str = "react-elevater") -> str:
    """Log every result as a wandb Table (offline when the wandb server is unreachable); returns the run dir."""
    try:
        import wandb
    except ImportError as exc:
        raise HarnessError("--report-to wandb needs wandb: pip install -e '.[wandb]'") from exc
    from harness.core.network import wandb_offline_if_unreachable

    wandb_offline_if_unreachable()
    df = collect(inputs)
    run = wandb.init(project=project, name=f"report-{inputs.name}", job_type="report", reinit=True)
    try:
        run.log({"results": wandb.Table(dataframe=df.astype({"images_per_second": float}))})
        run.summary["n_results"] = len(df)
        return str(run.dir)
    finally:
        run.finish()
