"""Runs evaluations: one model over one or many datasets, resumable, with a summary of what happened.

The model is built once per run, and only when some dataset still needs computing (or to hash seeded random
weights). A dataset whose stored result has the same run key (harness.store.runkey) is skipped; one whose data is missing
is listed and the rest still run; one that fails for any reason (bad image, bad zip, NaN output, out of memory) is
reported in one line and the others still run. Each result is computed and written under its lock
(harness.store.results), so concurrent runs on one results folder never write the same result at once.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from harness.core import paths
from harness.core.atomic import (OutOfSpaceError, check_writable_dir, file_lock, remove_stale_temp_files, write_json,
                                 write_npy)
from harness.cards import DatasetCard, ModelCard, dataset_card_names, get_dataset_card
from harness.data.testsets import ImageReadError, MissingDataError, open_eval_data
from harness.core.errors import HarnessError
from harness.engine.options import EvalOptions
from harness.run.eval_record import eval_record
from harness.store.results import (data_file_names, elevater_predictions, finished_result,
                                   listed_files, lock_path, refuse_newer, remove_unlisted_data_files, result_json)
from harness.store.runkey import RunKey, changed_parts, make_run_key

if TYPE_CHECKING:
    from harness.data.testsets import EvalData
    from harness.models.build import LoadedModel

logger = logging.getLogger(__name__)

__all__ = ["EvalOptions", "RunSummary", "evaluate"]  # EvalOptions lives in harness.engine.options


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


def _usable_cache(options: EvalOptions) -> bool:
    """The cache folder is checked up front: unusable degrades to no cache with a warning, never a failed run."""
    if not (options.classifier_cache or options.pixel_cache or options.feature_cache):
        return False
    try:
        folder = check_writable_dir(paths.cache_dir(), "cache folder", "HARNESS_CACHE")
    except HarnessError as exc:
        logger.warning("%s Continuing without caches.", exc)
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


def _weights_sha256(model_card: ModelCard, options: EvalOptions, loaded: "LoadedModel | None"
                    ) -> tuple[str, "LoadedModel | None"]:
    """The weights' content hash, whatever way they were given; builds the model only for random weights. A weights
    file is hashed afresh, never taken from the remembered hashes, under ``options.rehash_files`` (--verify-data,
    --refresh-cache, --no-cache)."""
    from harness.core.hashing import file_sha256
    from harness.models import build_model, resolve_weights

    if loaded is not None:
        file = loaded.weights_identity.get("file")
        if options.rehash_files and file:
            loaded = _with_weights_sha(loaded, file_sha256(file, fresh=True))
        return loaded.weights_identity["sha256"], loaded
    path = resolve_weights(model_card, options.weights)
    if path is not None:
        return file_sha256(path, fresh=options.rehash_files), None
    loaded = build_model(model_card, options.weights, device=options.resolved_device(), precision=options.precision)
    return loaded.weights_identity["sha256"], loaded


def _with_weights_sha(loaded: "LoadedModel", sha: str) -> "LoadedModel":
    """``loaded`` recording ``sha`` as its weights' hash (the one the run key holds)."""
    if loaded.weights_identity.get("sha256") == sha:
        return loaded
    logger.warning("%s: the remembered sha256 of the weights file %s was wrong (%s); recording the content's (%s)",
                   loaded.card.name, loaded.weights_identity.get("file"), loaded.weights_identity.get("sha256"), sha)
    return dataclasses.replace(loaded, weights_identity={**loaded.weights_identity, "sha256": sha})


def _agreeing(loaded: "LoadedModel", weights_sha: str) -> "LoadedModel":
    """The model built after planning records the weights hash the run keys were made with. The two differ only
    when the remembered hash the build used is wrong (corrected here) or the file changed since the plan (an error:
    the results would be keyed to other weights than those computed with)."""
    from harness.core.hashing import file_sha256

    file = loaded.weights_identity.get("file")
    if not file or loaded.weights_identity.get("sha256") == weights_sha:
        return loaded
    now = file_sha256(file, fresh=True)
    if now != weights_sha:
        raise HarnessError(f"{file}: the weights file changed while this run was starting (sha256 {weights_sha[:12]}… "
                           f"when the run was planned, {now[:12]}… now); nothing was computed. Rerun once it no "
                           f"longer changes.")
    return _with_weights_sha(loaded, weights_sha)


def evaluate(model: str | ModelCard, datasets: list[str | DatasetCard] | None, data_root: str | Path,
             options: EvalOptions | None = None, loaded: "LoadedModel | None" = None,
             on_dataset_done: Callable[[str, int], None] | None = None) -> RunSummary:
    """Evaluate one model card on datasets (all dataset cards when None). ``on_dataset_done(dataset, images)`` is
    called as each dataset is finished or found already done (a sweep's overall progress)."""
    options = (options or EvalOptions()).check()
    from harness.models.elevater_yaml import resolve_model_card  # a card name, card YAML or toolkit model YAML

    model_card = model if isinstance(model, ModelCard) else resolve_model_card(model)
    names = datasets if datasets is not None else dataset_card_names()
    dataset_cards = [d if isinstance(d, DatasetCard) else get_dataset_card(d) for d in names]
    results_root = check_writable_dir(Path(options.results_root or paths.results_dir()), "results folder",
                                      "--results")
    if not _usable_cache(options):
        options = options.without_caches()
    summary = RunSummary(model=model_card.name, protocol=options.protocol)
    options = options.resolved()
    device = options.device
    options = _with_numerics(options, model_card, device)
    single = len(dataset_cards) == 1
    weights_sha, loaded = _weights_sha256(model_card, options, loaded)

    todo: list[tuple[DatasetCard, "EvalData", RunKey]] = []
    # under torchrun, ranks other than 0 keep every dataset in their plan and follow rank 0's list
    plan_options = options if options.is_main else dataclasses.replace(options, force=True)
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
        elif on_dataset_done is not None:
            on_dataset_done(dcard.name, summary.skipped[dcard.name]["n_images"])
    if options.shard is not None:  # every rank computes what rank 0 planned, in its order
        names = options.shard.broadcast([d.name for d, _, _ in todo])
        todo = [t for name in names for t in todo if t[0].name == name]
    if not todo:
        return summary

    if loaded is None:
        from harness.models import build_model

        loaded = _agreeing(build_model(model_card, options.weights, device=device, precision=options.precision),
                           weights_sha)
    for dcard, data, key in todo:
        try:
            computed = _evaluate_locked(loaded, dcard, data, key, options, results_root)
        except Exception as exc:  # one dataset's failure never stops the others
            if options.shard is not None and not isinstance(exc, (ImageReadError, OutOfSpaceError)):
                raise  # under torchrun the ranks would fall out of step: stop (a rerun resumes). Both kept are
                # raised on rank 0 after the dataset's last collective step (a full results folder: at the write)
            _record_failure(summary, dcard.name, exc, reraise=single)
            continue
        if on_dataset_done is not None:
            on_dataset_done(dcard.name, len(data))
        if computed.result is None:  # a torchrun rank other than 0: rank 0 records
            continue
        (summary.skipped if computed.reused else summary.done)[dcard.name] = computed.result
    return summary


def _user_architecture_hash(model_card: ModelCard) -> str | None:
    """The content hash of the card's architecture when a user's file defines it (part of the run key), else None."""
    from harness.cards import content_hash
    from harness.models import factory, user_configs

    name = factory.architecture_of(model_card)
    return content_hash(factory.model_config(name)) if user_configs.is_user(name) else None


@dataclass(frozen=True)
class Computed:
    """What :func:`_evaluate_locked` did for one dataset: the result (None on a torchrun rank other than 0, which
    only computed its share), and whether another run had finished it meanwhile."""
    result: dict | None
    reused: bool = False


def _plan_dataset(model_card: ModelCard, dcard: DatasetCard, data_root: str | Path, options: EvalOptions,
                  results_root: Path, weights_sha: str, device: str, summary: RunSummary):
    """Open the data and decide: (card, data, run key) to compute, or None when a finished result matches."""
    data = open_eval_data(dcard, data_root)
    from harness.models.numerics import plan

    fingerprint = data.fingerprint(fresh=options.rehash_files)  # --verify-data etc.: files hashed afresh
    key = make_run_key(model_card, weights_sha, dcard, fingerprint, options.protocol, options.precision, device,
                       numerics=plan(options.numerics, model_card, device).key,
                       skip_bad_images=options.skip_bad_images,
                       architecture_config=_user_architecture_hash(model_card))
    path = result_json(results_root, model_card.name, options.protocol, dcard.name)
    refuse_newer(path)
    if not options.force:
        prev = finished_result(path, key.hash)
        if prev is not None:
            summary.skipped[dcard.name] = prev
            logger.info("%s: already done (%s), skipping", dcard.name, path)
            return None
        stored = finished_result(path, verify=False)  # only to say why it is stale
        if stored is not None and (stored.get("run_key") or {}).get("hash") != key.hash:
            logger.info("%s: stored result is stale (changed: %s), recomputing", dcard.name,
                        ", ".join(changed_parts(stored.get("run_key"), key)))
    return dcard, data, key


def _evaluate_locked(loaded: "LoadedModel", dcard: DatasetCard, data: "EvalData", key: RunKey,
                     options: EvalOptions, results_root: Path) -> Computed:
    """Compute and write one result while holding its lock; a result another run finished meanwhile is reused."""
    card = loaded.card
    path = result_json(results_root, card.name, options.protocol, dcard.name)

    def waiting() -> None:
        logger.info("%s: another run is computing this result; waiting for it", dcard.name)

    shard = options.shard
    if shard is not None and not shard.is_main:  # rank 0 holds the lock and decides; the others follow
        if shard.broadcast(None) is None:  # rank 0 computes it: take this rank's share of the image pass
            from harness.engine.zeroshot import evaluate_dataset

            evaluate_dataset(loaded, dcard, data, options)
        return Computed(None)
    with file_lock(lock_path(results_root, card.name, options.protocol, dcard.name), on_wait=waiting):
        if not options.force:
            prev = finished_result(path, key.hash)
            if prev is not None:
                logger.info("%s: finished by another run meanwhile, skipping", dcard.name)
                if shard is not None:
                    shard.broadcast(True)
                return Computed(prev, reused=True)
        if shard is not None:
            shard.broadcast(None)
        refuse_newer(path)
        remove_stale_temp_files(path.parent)  # safe: writers of this result hold this lock
        return Computed(_evaluate_one(loaded, dcard, data, key, options, path))


def _evaluate_one(loaded: "LoadedModel", dcard: DatasetCard, data: "EvalData", key: RunKey, options: EvalOptions,
                  path: Path) -> dict:
    import math
    import secrets

    from harness.engine.zeroshot import NonFiniteOutputError, evaluate_dataset

    card = loaded.card
    outcome = evaluate_dataset(loaded, dcard, data, options)
    spec, preds, values = outcome.spec, outcome.predictions, outcome.metrics
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteOutputError(f"non-finite metric {values}: check the weights. Nothing was recorded.")
    folder = path.parent
    names = data_file_names(dcard.name, f"{key.hash[:8]}{secrets.token_hex(3)}")
    files: dict[str, str] = {}
    try:  # a write that fails (a full results folder: one line naming it) leaves none of this run's files behind
        write_npy(folder / names["probs"], preds.probs)
        files["probs"] = names["probs"]
        if options.writes_predictions_json(preds.probs.size):
            n_params = sum(x.numel() for x in loaded.model.parameters())
            n_visual = sum(x.numel() for x in loaded.model.visual.parameters())
            files["predictions"] = names["predictions"]
            write_json(folder / names["predictions"], elevater_predictions(
                card.elevater.MODEL_NAME if card.elevater else card.name, dcard.elevater.DATASET, preds.probs,
                n_params, n_visual), indent=None)
        result = eval_record(loaded, dcard, data, key, outcome, files, options, folder)  # files_sha256: checked on reuse
        write_json(path, result)  # the commit point: from here on the new files are the result
    except BaseException:
        if listed_files(path) != files:  # not committed (an interrupt could come just after the rename)
            for name in files.values():
                (folder / name).unlink(missing_ok=True)
        raise
    remove_unlisted_data_files(folder, dcard.name, files)
    logger.info("%s: %s = %.2f (%d images, %.1f img/s)", dcard.name, spec.primary_metric, result["score"],
                preds.n_images, preds.images_per_second)
    return result
