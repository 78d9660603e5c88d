"""Zero-shot evaluation harness for CLIP/OpenCLIP and REACT models on ImageNet-1K and ELEVATER.

Python API (the command line's ``eval-all`` as a function; see docs/evaluation.md)::

    import harness
    records = harness.evaluate(model="react_vitb32_CLIP", datasets=["cifar-10", "imagenet-1k"],
                               data_root="/data/elevater", precision="amp", batch_size=256)
    for r in records:
        print(r["dataset"]["card"], r["metric"], r["score"])

Importing this package is cheap: torch and open_clip are imported lazily by the modules that need them,
so ``python -m harness ls`` / ``validate`` / ``--help`` start instantly.
"""
from __future__ import annotations

from typing import Any

from harness.core.errors import HarnessError

__all__ = ["HarnessError", "__version__", "evaluate"]
__version__ = "0.1.0"


def evaluate(model: Any, datasets: Any = None, data_root: Any = ".", **options: Any) -> list[dict]:
    """Evaluate a model card on dataset cards; returns the result records. See :func:`harness.run.api.evaluate`."""
    from harness.run.api import evaluate as _evaluate

    return _evaluate(model, datasets, data_root, **options)
