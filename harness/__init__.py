"""Zero-shot evaluation harness for CLIP/OpenCLIP and REACT models on ImageNet-1K and ELEVATER.

Importing this package is cheap: torch and open_clip are imported lazily by the modules that need them,
so ``python -m harness ls`` / ``validate`` / ``--help`` start instantly.
"""
from __future__ import annotations

from harness.errors import HarnessError

__all__ = ["HarnessError", "__version__"]
__version__ = "0.1.0"
