"""What the result of an evaluation records: model, dataset, protocol, metrics and the run's provenance (device,
precision, numerics, batch size, ranks, throughput, where the image features came from)."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cards import DatasetCard, content_hash
from harness.store.results import device_name, result_record
from harness.store.runkey import RunKey

if TYPE_CHECKING:
    from harness.data.testsets import EvalData
    from harness.engine.options import EvalOptions
    from harness.engine.zeroshot import EvalOutcome
    from harness.models.build import LoadedModel


def eval_record(loaded: "LoadedModel", dcard: DatasetCard, data: "EvalData", key: RunKey, outcome: "EvalOutcome",
                files: dict[str, str], options: "EvalOptions", folder: Path) -> dict:
    """The record of an evaluation whose ``files`` are written in ``folder``; ``options`` are the resolved ones it ran
    with (batch size, workers, ranks)."""
    from harness.store.runkey import PROTOCOL_VERSIONS

    card = loaded.card
    spec, preds, values = outcome.spec, outcome.predictions, outcome.metrics
    model = {"card": card.name, "card_hash": card.card_hash, "architecture": card.architecture, "method": card.method,
             "base_model": card.base_model, "retrieval_set": card.retrieval_set, "weights": loaded.weights_identity}
    protocol = {
        "name": spec.name, "version": PROTOCOL_VERSIONS[spec.name], "text_source": spec.text_source,
        "n_classes": len(spec.classnames), "n_templates": len(spec.templates),
        "text_hash": content_hash([spec.classnames, spec.templates]), "transform": spec.transform_desc,
        "logit_scale": 100.0, "classifier_cache_key": outcome.classifier_key,
    }
    result = result_record(key, model, dcard, data, protocol, spec.primary_metric, values, preds.n_images, files, {
        "device": loaded.device,
        "device_name": device_name(loaded.device),
        "precision": loaded.precision,
        "numerics": outcome.numerics.description,
        "batch_size": options.batch_size,
        "workers": options.workers,
        # torchrun: how many ranks computed the image features (rank 0 gathered them in dataset order, scored and
        # wrote); 1 for a single process
        "world_size": options.shard.world if options.shard is not None else 1,
        "gathered_by_rank_0": options.shard is not None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(preds.seconds, 3),
        "images_per_second": round(preds.images_per_second, 2),
        "classifier_from_cache": outcome.classifier_from_cache,
        "image_source": preds.source,  # feature cache, pixel cache, decoded (pixel cache written), decoded
    }, folder)
    if preds.skipped:
        result["skipped_images"] = {"count": len(preds.skipped),
                                    "ids": [data.image_ids[i] for i in preds.skipped],
                                    "reasons": preds.skip_reasons}
    return result
