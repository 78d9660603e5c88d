"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.

A run killed mid-write therefore leaves either the old file or no file, never a partial one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    text = json.dumps(payload, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_npy(path: str | os.PathLike, array) -> Path:
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
