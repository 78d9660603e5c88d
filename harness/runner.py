"""Runs evaluations: one model over one or many datasets, resumable, with a summary of what happened.

The model is built once per run, and only when some dataset still needs computing (or to hash seeded random
weights). A dataset whose stored result has the same run key (harness.runkey) is skipped; one whose data is missing
is listed and the rest still run; one that fails for any reason (bad image, bad zip, NaN output, out of memory) is
reported in one line and the others still run. Each result is computed and written under its lock
(harness.results), so concurrent runs on one results folder never write the same result at once.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from harness.atomic import check_writable_dir, file_lock, remove_stale_temp_files, write_json, write_npy
from harness.cards import DatasetCard, ModelCard, dataset_card_names, get_dataset_card
from harness.data import ImageReadError, MissingDataError, open_eval_data
from harness.errors import HarnessError
from harness.records import eval_record
from harness.results import (data_file_names, elevater_predictions, finished_result, lock_path, refuse_newer,
                             remove_unlisted_data_files, result_json)
from harness.runkey import RunKey, changed_parts, make_run_key

logger = logging.getLogger(__name__)

# The predictions JSON (the toolkit's submission format) of ImageNet-1K is 50M numbers, ~0.5 GB and a minute of
# writing per model: by default it is written only up to this many probabilities (all ELEVATER sets but the largest);
# --predictions-json asks for it always, --no-predictions-json never. The .probs.npy file is always written.
PREDICTIONS_JSON_AUTO_LIMIT = 2_000_000
# Batch size on a GPU when --batch-size is not given: fills an H100 with ViT-B/32 (fp32 or amp) and fits ViT-L/14 at
# 336 px in 16 GB; larger batches bring < 5% there (the device tool's measurements). The batch size is not part of
# the run key; the toolkit's 64 stays the CPU default.
GPU_BATCH_SIZE = 256


@dataclass
class EvalOptions:
    protocol: str = "elevater"
    weights: str | None = None
    batch_size: int | None = None  # None: 64 on CPU (the toolkit's), GPU_BATCH_SIZE on a GPU
    workers: int | None = None
    device: str | None = None
    precision: str = "fp32"
    use_cache: bool = True
    refresh_cache: bool = False
    force: bool = False
    results_root: Path | None = None
    save_predictions: bool | None = None  # the ELEVATER predictions JSON; None: only for sets of <= 2M probabilities
    progress: bool = True
    skip_bad_images: bool = False
    numerics: str | None = None  # "toolkit" / "openclip"; None: the protocol's (harness.models.numerics)
    pixel_cache: bool = True  # decoded crops kept per data + geometry (harness.pixels)
    feature_cache: bool = True  # image features kept per model + data (harness.imagepass)
    shard: Any = None  # harness.parallel.Shard under torchrun
    features_only: bool = False  # rescore: read cached image features, never an image
    on_dataset_done: Any = None  # called (dataset name, images) as each dataset is finished or skipped (sweep)

    def resolved_batch_size(self, device: str) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return GPU_BATCH_SIZE if str(device).startswith("cuda") else 64

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return min(8, os.cpu_count() or 1)

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunSummary:
    model: str
    protocol: str
    done: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, dict] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)  # the protocol cannot score this dataset

    def lines(self) -> list[str]:
        out = [f"model {self.model}, protocol {self.protocol}: {len(self.done)} evaluated, "
               f"{len(self.skipped)} already done, {len(self.missing)} missing, {len(self.failed)} failed"]
        for name, res in {**self.skipped, **self.done}.items():
            bad = res.get("skipped_images", {}).get("count")
            note = f", {bad} unreadable left out" if bad else ""
            out.append(f"  {name:34s} {res['metric']:>15s} {res['score']:7.2f}  ({res['n_images']} images{note})")
        if self.missing:
            out.append("  missing from the data root: " + ", ".join(sorted(self.missing)))
        if self.not_applicable:
            out.append(f"  not scored under the {self.protocol} protocol: " + ", ".join(sorted(self.not_applicable)))
        for name, msg in self.failed.items():
            out.append(f"  FAILED {name}: {msg}")
        return out


def _usable_cache(use_cache: bool) -> bool:
    """The cache folder is checked up front: unusable degrades to no cache with a warning, never a failed run."""
    if not use_cache:
        return False
    try:
        folder = check_writable_dir(paths.cache_dir(), "cache folder", "HARNESS_CACHE")
    except HarnessError as exc:
        logger.warning("%s Continuing without the classifier cache.", exc)
        return False
    remove_stale_temp_files(folder / "classifiers")
    return True


def _failure_line(exc: BaseException) -> str:
    """One line that says what failed and what to do, for the run summary."""
    if isinstance(exc, HarnessError):
        return str(exc).replace("\n", " ")
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return f"out of memory ({exc}); lower --batch-size or use --precision amp."
    return f"{name}: {exc or 'no detail'} (unexpected; rerun with -v for the traceback and report it)."


def _with_numerics(options: EvalOptions, model_card: ModelCard, device: str) -> EvalOptions:
    """Resolve the numerics (the protocol's unless --numerics says otherwise); the toolkit's clip-package rule
    runs OpenAI-named models in fp16 on CUDA, which is then this run's precision."""
    from harness.models.numerics import default_numerics, plan

    name = options.numerics or default_numerics(options.protocol, model_card)
    nplan = plan(name, model_card, device)
    if nplan.fp16_on_cuda and options.precision == "fp32":
        logger.info("toolkit numerics for %s on CUDA: fp16 weights, as the clip package runs it", model_card.name)
        options = dataclasses.replace(options, precision="fp16")
    return dataclasses.replace(options, numerics=name)


def _record_failure(summary: RunSummary, dataset: str, exc: BaseException, reraise: bool) -> None:
    """One dataset failed: a one-line cause in the summary (a user error of a single-dataset run is re-raised so
    the command line shows it as the error)."""
    if reraise and isinstance(exc, HarnessError):
        raise exc
    summary.failed[dataset] = _failure_line(exc)
    logger.error("%s: %s", dataset, summary.failed[dataset])
    logger.debug("traceback", exc_info=True)


def _weights_sha256(model_card: ModelCard, options: EvalOptions, loaded: Any) -> tuple[str, Any]:
    """The weights' content hash, whatever way they were given; builds the model only for random weights."""
    from harness.hashing import file_sha256
    from harness.models import build_model, resolve_weights

    if loaded is not None:
        return loaded.weights_identity["sha256"], loaded
    path = resolve_weights(model_card, options.weights)
    if path is not None:
        return file_sha256(path), None
    loaded = build_model(model_card, options.weights, device=options.resolved_device(), precision=options.precision)
    return loaded.weights_identity["sha256"], loaded


def evaluate(model: str | ModelCard, datasets: list[str | DatasetCard] | None, data_root: str | Path,
             options: EvalOptions | None = None, loaded: Any = None) -> RunSummary:
    """Evaluate one model card on datasets (all dataset cards when None)."""
    options = options or EvalOptions()
    from harness.models.elevater_yaml import resolve_model_card  # a card name, card YAML or toolkit model YAML

    model_card = model if isinstance(model, ModelCard) else resolve_model_card(model)
    names = datasets if datasets is not None else dataset_card_names()
    dataset_cards = [d if isinstance(d, DatasetCard) else get_dataset_card(d) for d in names]
    results_root = check_writable_dir(Path(options.results_root or paths.results_dir()), "results folder",
                                      "--results")
    usable = _usable_cache(options.use_cache or options.pixel_cache or options.feature_cache)
    options = dataclasses.replace(options, use_cache=options.use_cache and usable,
                                  pixel_cache=options.pixel_cache and usable,
                                  feature_cache=options.feature_cache and usable)
    summary = RunSummary(model=model_card.name, protocol=options.protocol)
    device = options.resolved_device()
    options = _with_numerics(dataclasses.replace(options, batch_size=options.resolved_batch_size(device)), model_card,
                             device)
    single = len(dataset_cards) == 1
    weights_sha, loaded = _weights_sha256(model_card, options, loaded)

    todo: list[tuple[DatasetCard, Any, RunKey]] = []
    # under torchrun, ranks other than 0 keep every dataset in their plan and follow rank 0's list
    plan_options = options if options.shard is None or options.shard.is_main else dataclasses.replace(options,
                                                                                                     force=True)
    for dcard in dataset_cards:
        if options.protocol == "openclip" and dcard.multilabel and not single:
            summary.not_applicable[dcard.name] = "multilabel: the openclip protocol scores top-1/top-5 only"
            continue
        try:
            item = _plan_dataset(model_card, dcard, data_root, plan_options, results_root, weights_sha, device,
                                 summary)
        except MissingDataError as exc:
            summary.missing[dcard.name] = str(exc)
            logger.info("%s", exc)
            continue
        except Exception as exc:  # one dataset's failure never stops the others
            _record_failure(summary, dcard.name, exc, reraise=single)
            continue
        if item is not None:
            todo.append(item)
        elif options.on_dataset_done is not None:
            options.on_dataset_done(dcard.name, summary.skipped[dcard.name]["n_images"])
    if options.shard is not None:  # every rank computes what rank 0 planned, in its order
        names = options.shard.broadcast([d.name for d, _, _ in todo])
        todo = [t for name in names for t in todo if t[0].name == name]
    if not todo:
        return summary

    if loaded is None:
        from harness.models import build_model

        loaded = build_model(model_card, options.weights, device=device, precision=options.precision)
    for dcard, data, key in todo:
        try:
            result = _evaluate_locked(loaded, dcard, data, key, options, results_root)
        except Exception as exc:  # one dataset's failure never stops the others
            if options.shard is not None and not isinstance(exc, ImageReadError):
                raise  # under torchrun the ranks would fall out of step: stop (a rerun resumes)
            _record_failure(summary, dcard.name, exc, reraise=single)
            continue
        if options.on_dataset_done is not None:
            options.on_dataset_done(dcard.name, len(data))
        if result.get("_rank_only"):
            continue
        if result.get("_reused"):
            summary.skipped[dcard.name] = result
        else:
            summary.done[dcard.name] = result
    return summary


def _plan_dataset(model_card: ModelCard, dcard: DatasetCard, data_root: str | Path, options: EvalOptions,
                  results_root: Path, weights_sha: str, device: str, summary: RunSummary):
    """Open the data and decide: (card, data, run key) to compute, or None when a finished result matches."""
    data = open_eval_data(dcard, data_root)
    from harness.models.numerics import plan

    key = make_run_key(model_card, weights_sha, dcard, data.fingerprint(), options.protocol, options.precision,
                       device, numerics=plan(options.numerics, model_card, device).key,
                       skip_bad_images=options.skip_bad_images)
    path = result_json(results_root, model_card.name, options.protocol, dcard.name)
    refuse_newer(path)
    if not options.force:
        prev = finished_result(path, key.hash)
        if prev is not None:
            summary.skipped[dcard.name] = prev
            logger.info("%s: already done (%s), skipping", dcard.name, path)
            return None
        stored = finished_result(path)
        if stored is not None:
            logger.info("%s: stored result is stale (changed: %s), recomputing", dcard.name,
                        ", ".join(changed_parts(stored.get("run_key"), key)))
    return dcard, data, key


def _evaluate_locked(loaded: Any, dcard: DatasetCard, data: Any, key: RunKey, options: EvalOptions,
                     results_root: Path) -> dict:
    """Compute and write one result while holding its lock; a result another run finished meanwhile is reused."""
    card = loaded.card
    path = result_json(results_root, card.name, options.protocol, dcard.name)

    def waiting() -> None:
        logger.info("%s: another run is computing this result; waiting for it", dcard.name)

    shard = options.shard
    if shard is not None and not shard.is_main:  # rank 0 holds the lock and decides; the others follow
        if shard.broadcast(None) is not None:
            return {"_rank_only": True}
        _compute_features_only(loaded, dcard, data, options)
        return {"_rank_only": True}
    with file_lock(lock_path(results_root, card.name, options.protocol, dcard.name), on_wait=waiting):
        if not options.force:
            prev = finished_result(path, key.hash)
            if prev is not None:
                logger.info("%s: finished by another run meanwhile, skipping", dcard.name)
                if shard is not None:
                    shard.broadcast(True)
                return {**prev, "_reused": True}
        if shard is not None:
            shard.broadcast(None)
        refuse_newer(path)
        remove_stale_temp_files(path.parent)  # safe: writers of this result hold this lock
        return _evaluate_one(loaded, dcard, data, key, options, path)


def _compute_features_only(loaded: Any, dcard: DatasetCard, data: Any, options: EvalOptions) -> None:
    """A rank other than 0: its share of the image pass (rank 0 scores and writes)."""
    from harness.zeroshot import evaluate_dataset

    evaluate_dataset(loaded, dcard, data, options.protocol, options.batch_size, options.resolved_workers(),
                     use_cache=options.use_cache, refresh=options.refresh_cache, progress=False,
                     skip_bad_images=options.skip_bad_images, numerics=options.numerics,
                     pixel_cache=options.pixel_cache, feature_cache=options.feature_cache, shard=options.shard,
                     features_only=options.features_only)


def _evaluate_one(loaded: Any, dcard: DatasetCard, data: Any, key: RunKey, options: EvalOptions, path: Path
                  ) -> dict:
    import math
    import secrets

    from harness.zeroshot import NonFiniteOutputError, evaluate_dataset

    card = loaded.card
    workers = options.resolved_workers()
    outcome = evaluate_dataset(loaded, dcard, data, options.protocol, options.batch_size, workers,
                               use_cache=options.use_cache, refresh=options.refresh_cache, progress=options.progress,
                               skip_bad_images=options.skip_bad_images, numerics=options.numerics,
                               pixel_cache=options.pixel_cache, feature_cache=options.feature_cache,
                               shard=options.shard, features_only=options.features_only)
    spec, preds, values = outcome.spec, outcome.predictions, outcome.metrics
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteOutputError(f"non-finite metric {values}: check the weights. Nothing was recorded.")
    folder = path.parent
    names = data_file_names(dcard.name, f"{key.hash[:8]}{secrets.token_hex(3)}")
    write_npy(folder / names["probs"], preds.probs)
    files = {"probs": names["probs"]}
    if options.save_predictions or (options.save_predictions is None
                                    and preds.probs.size <= PREDICTIONS_JSON_AUTO_LIMIT):
        n_params = sum(x.numel() for x in loaded.model.parameters())
        n_visual = sum(x.numel() for x in loaded.model.visual.parameters())
        write_json(folder / names["predictions"], elevater_predictions(
            card.elevater.MODEL_NAME if card.elevater else card.name, dcard.elevater.DATASET, preds.probs,
            n_params, n_visual), indent=None)
        files["predictions"] = names["predictions"]
    result = eval_record(loaded, dcard, data, key, options, outcome, files, workers)
    write_json(path, result)  # the commit point: from here on the new files are the result
    remove_unlisted_data_files(folder, dcard.name, files)
    logger.info("%s: %s = %.2f (%d images, %.1f img/s)", dcard.name, spec.primary_metric, result["score"],
                preds.n_images, preds.images_per_second)
    return result
