"""Zero-shot evaluation during training (``--imagenet-val``, or ``--zeroshot-dataset`` + ``--zeroshot-data-root``).

The dataset is opened once, on rank 0, by :func:`open_eval_target`; :func:`zero_shot_row` evaluates the model in
memory through the harness's own path (:func:`harness.engine.zeroshot.evaluate_dataset`, ``--zeroshot-protocol``) and
returns the eval row of the training log (:mod:`harness.core.training_log`: OpenCLIP's key names).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from harness.core import training_log as tl
from harness.cards import IMAGENET
from harness.core.errors import HarnessError

logger = logging.getLogger("training")


@dataclass
class EvalTarget:
    dataset: Any  # harness.cards.DatasetCard
    data: Any  # harness.data.testsets.EvalData


def open_eval_target(args, is_master: bool) -> EvalTarget | None:
    """The zero-shot dataset the flags name, opened (rank 0); None on other ranks or when none is named."""
    from harness.cards import get_dataset_card
    from harness.data.testsets import open_eval_data

    if not is_master or not (args.imagenet_val or args.zeroshot_dataset):
        return None
    if args.zeroshot_dataset:
        if not args.zeroshot_data_root:
            raise HarnessError("--zeroshot-dataset needs --zeroshot-data-root.")
        dataset, root = get_dataset_card(args.zeroshot_dataset), args.zeroshot_data_root
    else:
        dataset, root = get_dataset_card(IMAGENET), args.imagenet_val
    target = EvalTarget(dataset, open_eval_data(dataset, root))
    logger.info("zero-shot eval: %s (%d images, %s) every %d epoch(s), protocol %s", dataset.name,
                len(target.data), target.data.location, args.zeroshot_frequency, args.zeroshot_protocol)
    return target


def zero_shot_row(args, target: EvalTarget, net: Any, tokenizer: Any, preprocess_val: Any, device: Any,
                  epoch: int) -> dict:
    """Evaluate ``net`` (the model without its DDP wrapper) after ``epoch`` epochs; the training log's eval row."""
    from harness.engine.options import EvalOptions
    from harness.engine.zeroshot import evaluate_dataset
    from harness.models import LoadedModel, precision
    from training.model_card import run_model_card

    loaded = LoadedModel(card=run_model_card(args, net, None), model=net, tokenizer=tokenizer,
                         preprocess_val=preprocess_val,
                         weights_identity={"sha256": f"training:{args.name}:epoch{epoch}"},
                         device=str(device), precision=precision.canonical(args.precision))
    was_training = net.training
    net.eval()
    try:
        # the weights change every epoch: no cache would ever be read again
        options = EvalOptions(protocol=args.zeroshot_protocol, batch_size=args.batch_size, workers=args.workers,
                              progress=False).without_caches()
        outcome = evaluate_dataset(loaded, target.dataset, target.data, options)
    finally:
        net.train(was_training)
    row = {tl.EPOCH: epoch, tl.EVAL_DATASET: target.dataset.name}
    for metric, value in outcome.metrics.items():
        row[tl.zeroshot_key(target.dataset.name, metric, IMAGENET)] = value
    return row
