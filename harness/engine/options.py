"""The evaluation options: one frozen dataclass and one set of defaults.

:class:`EvalOptions` is what every evaluating caller receives — the command line (``harness.cli`` builds its flags,
their defaults and help from the fields below), the Python API (``harness.evaluate``), the runner, the engine and
its image pass, and training's periodic eval. A default is stated here and nowhere else.

Each field that is a command-line flag carries its flag, help text and argument group in ``metadata["cli"]``
(:func:`cli_spec`); ``None`` means "decided at run time" and the help says how.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.models.precision import PRECISIONS

PROTOCOLS = ("elevater", "openclip")
NUMERICS = ("toolkit", "openclip")
# Batch size on a GPU when none is given: fills an H100 with ViT-B/32 (fp32 or amp) and fits ViT-L/14 at 336 px in
# 16 GB; larger batches bring < 5% there. The toolkit's 64 stays the CPU default. Not part of the run key.
GPU_BATCH_SIZE = 256
CPU_BATCH_SIZE = 64
MAX_DEFAULT_WORKERS = 8
# The predictions JSON (the toolkit's submission format) of ImageNet-1K is 50M numbers, ~0.5 GB and a minute of
# writing per model: by default it is written only up to this many probabilities (every ELEVATER set but the
# largest). The .probs.npy file is always written.
PREDICTIONS_JSON_AUTO_LIMIT = 2_000_000

# Argument groups of the evaluating verbs, in the order --help shows them.
GROUPS = {
    "computation": "what is computed (part of the run key, with the device type)",
    "running": "how it runs",
    "caches": "caches (a cached path gives bit-identical probabilities; see docs/evaluation.md)",
    "results": "results",
}


def _cli(group: str, help: str, flag: str | None = None, negative: tuple[str, str] | None = None,
         **argparse: Any) -> dict:
    """A field's flag: ``flag`` defaults to --<field-name>; ``negative`` (flag, help) adds a flag that sets False (a
    tri-state ``bool | None`` field: neither flag leaves None, "decide by the data")."""
    return {"cli": {"group": group, "help": help, "flag": flag, "negative": negative, "argparse": argparse}}


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate. Fields without ``cli`` metadata are set by code (torchrun sharding, ``rescore``)."""

    # -- computation
    protocol: str = field(default="elevater", metadata=_cli(
        "computation", "zero-shot protocol", choices=PROTOCOLS))
    numerics: str | None = field(default=None, metadata=_cli(
        "computation", "whose model code computes the forward pass: the ELEVATER toolkit's (its LayerNorm; default "
        "under --protocol elevater for cards with an elevater section) or OpenCLIP's (default under --protocol "
        "openclip)", choices=NUMERICS))
    precision: str = field(default="fp32", metadata=_cli(
        "computation", "fp32 (toolkit default for REACT), amp (autocast fp16 on GPU / bf16 on CPU), amp_bf16, fp16, "
        "bf16 (pure half weights)", choices=PRECISIONS))
    weights: str | None = field(default=None, metadata=_cli(
        "computation", "weights file to use instead of the card's source (also: env HARNESS_WEIGHTS_<CARD>, or a "
        "folder in HARNESS_WEIGHTS_DIR)"))
    skip_bad_images: bool = field(default=False, metadata=_cli(
        "computation", "leave unreadable images out instead of failing the dataset; the result records how many and "
        "which (the score is then over fewer images than the test set)"))
    # -- running
    device: str | None = field(default=None, metadata=_cli(
        "running", "cuda, cuda:1, cpu (default: cuda when available)"))
    batch_size: int | None = field(default=None, metadata=_cli(
        "running", f"images per batch (default: {CPU_BATCH_SIZE} on CPU, as the toolkit; {GPU_BATCH_SIZE} on a GPU)",
        type=int))
    workers: int | None = field(default=None, metadata=_cli(
        "running", f"data-loading processes (default: min({MAX_DEFAULT_WORKERS}, CPUs))", type=int))
    progress: bool = field(default=True, metadata=_cli(
        "running", "no progress bars (they are shown only on a terminal anyway)", flag="--no-progress"))
    # -- caches
    classifier_cache: bool = field(default=True, metadata=_cli(
        "caches", "recompute the zero-shot classifiers (default: kept per weights, text and precision)",
        flag="--no-classifier-cache"))
    pixel_cache: bool = field(default=True, metadata=_cli(
        "caches", "decode every image again with the plain torchvision transform (default: decoded crops are kept "
        "per dataset and geometry under HARNESS_CACHE/pixels and shared by every model)", flag="--no-pixel-cache"))
    feature_cache: bool = field(default=True, metadata=_cli(
        "caches", "recompute image features (default: kept per model and dataset, so a changed template, class name "
        "or metric rescores without touching an image)", flag="--no-feature-cache"))
    refresh_cache: bool = field(default=False, metadata=_cli(
        "caches", "recompute and overwrite cached classifiers, pixels and features"))
    verify_data: bool = field(default=False, metadata=_cli(
        "caches", "re-hash every weights and data file instead of trusting remembered hashes (slow on large sets)"))
    # -- results
    results_root: Path | None = field(default=None, metadata=_cli(
        "results", "results folder (default: ./results or HARNESS_RESULTS)", flag="--results", type=Path, metavar="DIR"))
    force: bool = field(default=False, metadata=_cli("results", "recompute results that are already finished"))
    predictions_json: bool | None = field(default=None, metadata=_cli(
        "results", "always write the ELEVATER-style predictions JSON (default: only for sets of up to 2M "
        "probabilities, i.e. not ImageNet-1K)", flag="--predictions-json",
        negative=("--no-predictions-json", "never write the predictions JSON (the .probs.npy file is always written)")))
    # -- set by code
    shard: Any = None  # harness.core.distributed.Shard under torchrun
    features_only: bool = False  # rescore: read cached image features, never an image

    def without_caches(self) -> "EvalOptions":
        """``--no-cache``: no classifier, pixel or feature cache."""
        return dataclasses.replace(self, classifier_cache=False, pixel_cache=False, feature_cache=False)

    @property
    def rehash_files(self) -> bool:
        """Hash weights and data files afresh rather than trust the remembered hashes (harness.core.hashing):
        ``--verify-data``, ``--refresh-cache``, and ``--no-cache`` (no cache of any kind is trusted)."""
        return self.verify_data or self.refresh_cache or not (self.classifier_cache or self.pixel_cache
                                                              or self.feature_cache)

    @property
    def is_main(self) -> bool:
        """This process writes results and reports (always, unless it is a torchrun rank other than 0)."""
        return self.shard is None or self.shard.is_main

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_batch_size(self, device: str | None = None) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return GPU_BATCH_SIZE if str(device or self.resolved_device()).startswith("cuda") else CPU_BATCH_SIZE

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)

    def resolved(self) -> "EvalOptions":
        """A copy with the run-time defaults decided (device, batch size, workers)."""
        device = self.resolved_device()
        return dataclasses.replace(self, device=device, batch_size=self.resolved_batch_size(device),
                                   workers=self.resolved_workers())

    def writes_predictions_json(self, n_probabilities: int) -> bool:
        if self.predictions_json is not None:
            return self.predictions_json
        return n_probabilities <= PREDICTIONS_JSON_AUTO_LIMIT

    def check(self) -> "EvalOptions":
        """Refuse values no run can use, naming the flag."""
        from harness.core.errors import HarnessError

        if self.batch_size is not None and self.batch_size < 1:
            raise HarnessError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.workers is not None and self.workers < 0:
            raise HarnessError(f"--workers must be 0 or more, got {self.workers}.")
        if self.protocol not in PROTOCOLS:
            raise HarnessError(f"protocol must be one of {', '.join(PROTOCOLS)}, got '{self.protocol}'.")
        if self.numerics is not None and self.numerics not in NUMERICS:
            raise HarnessError(f"numerics must be one of {', '.join(NUMERICS)} or None, got '{self.numerics}'.")
        if self.precision not in PRECISIONS:
            raise HarnessError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'.")
        return self


def cli_spec(f: dataclasses.Field) -> dict | None:
    """The flag of a field (group, help, flag, extra argparse keywords), or None when code sets it."""
    return f.metadata.get("cli")


def option_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(EvalOptions))


def make_options(**given: Any) -> EvalOptions:
    """EvalOptions from keywords, with a clear error for an unknown one (the Python API's entry)."""
    import difflib

    from harness.core.errors import HarnessError

    names = [f.name for f in option_fields()]
    unknown = [k for k in given if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        raise HarnessError(f"unknown evaluation option '{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close
                                                                          else "")
                           + f"; the options are the fields of harness.engine.options.EvalOptions: {', '.join(names)}.")
    return EvalOptions(**given).check()
