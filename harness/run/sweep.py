"""`harness sweep`: many models on many datasets, decoding every dataset once.

The plan groups the models by input geometry (what a protocol's transform does before ToTensor: size, interpolation,
resize mode, crop), builds the pixel cache of each (dataset, geometry) first — DataLoader workers decode in
parallel, no model involved — and then evaluates the models one at a time (largest first, or in the order given),
each built once, each reading crops from the memory map. It resumes like eval-all (finished results are skipped by
run key), prints the plan with the image counts and an estimate, shows a per-dataset and an overall progress bar,
and writes a report at the end. Under torchrun the ranks share the work of every pass (harness.core.distributed).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cards import DatasetCard, ModelCard, dataset_card_names, get_dataset_card
from harness.data.testsets import MissingDataError, open_eval_data

if TYPE_CHECKING:
    from harness.engine.options import EvalOptions
    from harness.run.runner import RunSummary

logger = logging.getLogger(__name__)


def validation_transform(card: ModelCard, dcard: DatasetCard, protocol: str) -> Any:
    """The transform a protocol applies for this model card and dataset, without building the model."""
    from harness.engine.protocols import elevater_transform

    if protocol == "elevater":
        return elevater_transform(card, dcard.elevater.CENTER_CROP)[0]
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = card.preprocess
    return image_transform_v2(PreprocessCfg(size=pp.image_size, mean=pp.mean, std=pp.std,
                                            interpolation=pp.interpolation, resize_mode=pp.resize_mode),
                              is_train=False)


def model_size(card: ModelCard) -> int:
    """Parameter count from the architecture's config (tower width² × depth), for largest-first ordering."""
    from harness.models.factory import architecture_of, model_config

    cfg = model_config(architecture_of(card))
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    return sum(12 * t.get("width", 0) ** 2 * t.get("layers", 0) for t in (vision, text) if isinstance(t, dict))


@dataclass
class CacheJob:
    dataset: str
    data: Any
    transform: Any
    geometry: str
    models: list[str]
    cached: bool


@dataclass
class SweepPlan:
    models: list[ModelCard]
    datasets: list[DatasetCard]
    data: dict[str, Any]
    missing: dict[str, str]
    cache_jobs: list[CacheJob] = field(default_factory=list)

    @property
    def images_per_model(self) -> int:
        return sum(len(d) for d in self.data.values())

    def lines(self, images_per_second: float | None = None) -> list[str]:
        n = self.images_per_model
        out = [f"sweep: {len(self.models)} models x {len(self.data)} datasets = {n * len(self.models):,} image "
               f"passes ({n:,} images per model)"]
        todo = [j for j in self.cache_jobs if not j.cached]
        decode = sum(len(j.data) for j in todo)
        out.append(f"  pixel caches: {len(self.cache_jobs) - len(todo)} ready, {len(todo)} to build "
                   f"({decode:,} images to decode, once)")
        for j in self.cache_jobs:
            out.append(f"    {j.dataset:28s} {j.geometry:46s} {'ready' if j.cached else 'build':5s} "
                       f"{len(j.data):7,} images  for {len(j.models)} model(s)")
        out.append("  models, in order: " + ", ".join(m.name for m in self.models))
        if images_per_second:
            eta = n * len(self.models) / images_per_second
            out.append(f"  estimate: {eta / 60:.1f} min at {images_per_second:,.0f} img/s (measured on this machine "
                       "by earlier results; finished results are skipped)")
        if self.missing:
            out.append("  missing from the data root (left out): " + ", ".join(sorted(self.missing)))
        return out


def plan_sweep(models: list[str], datasets: list[str] | None, data_root: str | Path, protocol: str,
               order: str = "largest") -> SweepPlan:
    from harness.engine.imagesource import ImageSource
    from harness.engine.options import EvalOptions
    from harness.models.elevater_yaml import resolve_model_card

    cards = [resolve_model_card(m) for m in models]
    if order == "largest":
        cards = sorted(cards, key=model_size, reverse=True)
    dcards = [get_dataset_card(d) for d in (datasets or dataset_card_names())]
    data: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for dcard in dcards:
        try:
            data[dcard.name] = open_eval_data(dcard, data_root)
        except MissingDataError as exc:
            missing[dcard.name] = str(exc)
    plan = SweepPlan(models=cards, datasets=[d for d in dcards if d.name in data], data=data, missing=missing)
    jobs: dict[tuple[str, str], CacheJob] = {}
    for card in cards:
        for dcard in plan.datasets:
            if protocol == "openclip" and dcard.multilabel:
                continue
            transform = validation_transform(card, dcard, protocol)
            source = ImageSource(data[dcard.name], transform, EvalOptions())
            if source.plan is None:
                continue
            geometry = "; ".join(re.sub(r", max_size=None, antialias=True|interpolation=", "", d.split(".")[-1])
                                 for d in source.plan.description)
            job = jobs.get((dcard.name, geometry))
            if job is None:
                job = jobs[(dcard.name, geometry)] = CacheJob(dcard.name, data[dcard.name], transform, geometry, [],
                                                              source.pixels_ready())
            job.models.append(card.name)
    plan.cache_jobs = list(jobs.values())
    return plan


def earlier_throughput(results_root: Path) -> float | None:
    """The median images/s of the results already in the folder (a rough estimate for the plan)."""
    from statistics import median

    from harness.store.results import scan_results

    good, _ = scan_results(results_root)
    rates = [r["provenance"].get("images_per_second") for r in good]
    rates = [r for r in rates if isinstance(r, (int, float)) and r > 0]
    return median(rates) if rates else None


def run_sweep(plan: SweepPlan, data_root: str | Path, options: "EvalOptions") -> dict[str, "RunSummary"]:
    """Build the missing pixel caches, then evaluate every model; returns {model: RunSummary}. (The report at the
    end of ``harness sweep`` is the command line's: the report stage sits above this one.)"""
    from tqdm import tqdm

    from harness.engine.imagesource import ImageSource
    from harness.run.runner import evaluate

    show = options.progress and options.is_main
    if options.pixel_cache:
        for job in plan.cache_jobs:
            if not job.cached:
                start = time.perf_counter()
                ImageSource(job.data, job.transform, options).build_pixels(options.resolved_batch_size(),
                                                                           options.resolved_workers(), progress=show)
                logger.info("%s: pixel cache built for %s in %.1f s", job.dataset, job.geometry,
                            time.perf_counter() - start)
    total = plan.images_per_model * len(plan.models)
    overall = tqdm(total=total, desc="sweep", unit="img", disable=not show, position=0, dynamic_ncols=True)
    summaries = {}

    def advance(dataset: str, n_images: int) -> None:
        overall.update(n_images)

    try:
        for card in plan.models:
            summaries[card.name] = evaluate(card, plan.datasets, data_root, options, on_dataset_done=advance)
    finally:
        overall.close()
    return summaries
