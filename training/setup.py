"""Set-up step of ``python -m training.main``: everything before the model is built.

:func:`setup_run` validates the flags, starts the distributed process group (OpenCLIP's
``init_distributed_device``), names the run, creates ``<logs>/<name>/`` and ``checkpoints/``, configures logging
(``out.log``), turns ``--resume latest`` into a checkpoint path and seeds the random generators. Like OpenCLIP's
trainer it records what it derives on ``args`` (``name``, ``checkpoint_path``, ``log_path``, ``save_logs``,
``resume``; ``rank``/``world_size``/``distributed``/``device`` come from OpenCLIP); the rest is in :class:`RunSetup`.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError, did_you_mean
from harness.core.training_log import METRICS_FILE

logger = logging.getLogger("training")

UNSUPPORTED = {  # OpenCLIP trainer features this trainer does not implement: fail loudly instead of ignoring them
    "accum_freq": (lambda v: v != 1, "--accum-freq > 1"),
    "distill_model": (lambda v: bool(v), "--distill-model"),
    "siglip": (lambda v: bool(v), "--siglip"),
    "horovod": (lambda v: bool(v), "--horovod"),
    "val_data": (lambda v: bool(v), "--val-data (contrastive validation)"),
    "imagenet_v2": (lambda v: bool(v), "--imagenet-v2"),
    "remote_sync": (lambda v: bool(v), "--remote-sync"),
    "torchcompile": (lambda v: bool(v), "--torchcompile"),
    "use_bnb_linear": (lambda v: bool(v), "--use-bnb-linear"),
    "dataset_resampled": (lambda v: bool(v), "--dataset-resampled"),
    "train_data_upsampling_factors": (lambda v: bool(v), "--train-data-upsampling-factors"),
}
# Third-party loggers kept at WARNING unless --debug, so out.log is about training. "torch" covers TorchDynamo's
# exit summary ("I1128 ... torch/_dynamo/utils.py] TorchDynamo compilation metrics"), printed at interpreter exit
# when its loggers are at INFO.
QUIET_LOGGERS = ("torch", "PIL", "urllib3", "matplotlib")
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(message)s"  # OpenCLIP's (open_clip_train.logger.setup_logging)
LOG_DATE_FORMAT = "%Y-%m-%d,%H:%M:%S"


@dataclass
class RunSetup:
    """What the set-up step derived, besides what it recorded on ``args``."""
    device: Any  # torch.device
    log_base: Path  # <logs>/<name>
    is_master: bool  # rank 0: the process that writes logs, checkpoints, metrics and the card

    @property
    def metrics_path(self) -> Path:
        return self.log_base / METRICS_FILE


def validate_flags(args) -> None:
    """Unsupported OpenCLIP features and unknown architectures fail here, before anything starts.
    ``args.model`` becomes the architecture's registered name (REACT's ``ViT-G-14`` is ``ViT-bigG-14``)."""
    from harness.models.factory import canonical_name, list_architectures, react_architectures

    for key, (is_set, flag) in UNSUPPORTED.items():
        if is_set(getattr(args, key, None)):
            raise HarnessError(f"{flag} is an OpenCLIP trainer feature that training.main does not implement; "
                               f"drop the flag or use open_clip_train for it.")
    args.model = canonical_name(args.model)
    known = list_architectures()
    if args.model not in known:
        raise HarnessError(f"--model {args.model} is neither an OpenCLIP config nor a REACT architecture."
                           f"{did_you_mean(args.model, known)} REACT architectures: "
                           f"{', '.join(react_architectures())}.")


def configure_logging(log_path: str | None, debug: bool) -> None:
    """OpenCLIP's log format on stderr and in ``out.log``. Unlike ``open_clip_train.logger.setup_logging``, which
    sets EVERY existing logger to the level (so TorchDynamo's INFO exit summary ends every run), third-party
    loggers keep their own levels and :data:`QUIET_LOGGERS` are at WARNING. ``--debug`` sets every logger to DEBUG
    as OpenCLIP does (only the top-level quiet loggers stay at WARNING; their children, TorchDynamo's included,
    log)."""
    level = logging.DEBUG if debug else logging.INFO
    formatter = logging.Formatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        handlers.append(logging.FileHandler(filename=log_path))
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if debug:
        for name in list(logging.root.manager.loggerDict):
            logging.getLogger(name).setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def default_run_name(args) -> str:
    """OpenCLIP's default ``--name``: date, model, lr, batch size, workers, precision (rank 0's date on all)."""
    from open_clip_train.distributed import broadcast_object

    date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
    if args.distributed:
        date_str = broadcast_object(args, date_str)
    return "-".join([date_str, f"model_{args.model}", f"lr_{args.lr}", f"b_{args.batch_size}", f"j_{args.workers}",
                     f"p_{args.precision}"])


def make_log_folders(args, is_master: bool) -> Path:
    """``<logs>/<name>/`` and its ``checkpoints/`` (rank 0); sets args.checkpoint_path, log_path, save_logs."""
    args.save_logs = bool(args.logs) and args.logs.lower() != "none"
    log_base = Path(args.logs) / args.name
    args.checkpoint_path = str(log_base / "checkpoints")
    args.log_path = None
    if is_master:
        log_base.mkdir(parents=True, exist_ok=True)
        args.log_path = str(log_base / "out.log")
        if os.path.exists(args.log_path) and args.resume != "latest" and args.train_data:
            raise HarnessError(f"Experiment {log_base} already exists. Use another --name, or --resume latest to "
                               f"continue it.")
        Path(args.checkpoint_path).mkdir(parents=True, exist_ok=True)
    return log_base


def resolve_resume_latest(args, is_master: bool) -> None:
    """``--resume latest``: the newest checkpoint of this run (rank 0 looks, every rank gets its answer) or none."""
    from open_clip_train.distributed import broadcast_object

    from training.checkpoints import latest_checkpoint

    if args.resume != "latest":
        return
    found = latest_checkpoint(Path(args.checkpoint_path)) if is_master else None
    if args.distributed:
        found = broadcast_object(args, found)
    args.resume = str(found) if found else None
    logger.info("--resume latest: %s", found or f"no checkpoint in {args.checkpoint_path}, starting fresh")


def seed_everything(args) -> None:
    import numpy as np
    import torch

    random.seed(args.seed + args.rank)
    np.random.seed(args.seed + args.rank)
    torch.manual_seed(args.seed)  # same initial weights on every rank


def setup_run(args) -> RunSetup:
    """The set-up step: flags, distributed init, run name, log folders and logging, --resume latest, seeds."""
    import torch
    from open_clip_train.distributed import init_distributed_device, is_master

    validate_flags(args)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    device = init_distributed_device(args)
    if args.name is None:
        args.name = default_run_name(args)
    master = is_master(args)
    log_base = make_log_folders(args, master)
    configure_logging(args.log_path, args.debug)
    resolve_resume_latest(args, master)
    seed_everything(args)
    return RunSetup(device=device, log_base=log_base, is_master=master)
