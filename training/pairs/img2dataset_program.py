"""The real img2dataset, run as a program from its own venv.

img2dataset 1.47.0 pins ``webdataset<0.3`` (the project needs >= 1.0), ``pandas<3``, ``albumentations<2``: it cannot
live in the project's environment. ``make install-pairs`` makes ``.venv-pairs`` with it; :func:`find_program` finds
that venv next to the repository (or next to the running interpreter's venv), or takes ``--img2dataset PATH``
(the program, or a venv folder holding ``bin/img2dataset``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError

PAIRS_VENV = ".venv-pairs"
PINNED_VERSION = "1.47.0"
INSTALL_HINT = (f"Run `make install-pairs` (creates {PAIRS_VENV}/ with img2dataset=={PINNED_VERSION}, which cannot "
                f"share the project's venv: it pins webdataset<0.3), or pass --img2dataset PATH.")

# REACT README, "Download Retrieved Pairs": the flags of its img2dataset command (minus the folders and counts)
README_FLAGS = ("--input_format", "parquet", "--output_format", "webdataset", "--image_size", "384",
                "--resize_only_if_bigger=True", "--resize_mode=keep_ratio", "--skip_reencode=True")
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")


@dataclass(frozen=True)
class Program:
    path: Path  # the img2dataset executable
    version: str | None

    @property
    def python(self) -> Path:
        return self.path.parent / "python"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def candidates() -> list[Path]:
    """Where img2dataset is looked for: the repository's .venv-pairs, then one beside the running venv."""
    places = [repo_root() / PAIRS_VENV, Path(sys.prefix).parent / PAIRS_VENV]
    seen: list[Path] = []
    for p in places:
        exe = p / "bin" / "img2dataset"
        if exe not in seen:
            seen.append(exe)
    return seen


def _version(exe: Path) -> str | None:
    python = exe.parent / "python"
    if not python.exists():
        return None
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def find_program(explicit: str | os.PathLike | None = None) -> Program:
    """The img2dataset program to run; a HarnessError saying what to do when there is none."""
    if explicit is not None:
        p = Path(explicit).absolute()  # the program runs with the pairs folder as its working directory
        exe = p / "bin" / "img2dataset" if p.is_dir() else p
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            raise HarnessError(f"--img2dataset {explicit}: no executable img2dataset there (looked at {exe}). "
                               f"{INSTALL_HINT}")
        return Program(exe, _version(exe))
    looked = candidates()
    for exe in looked:
        if exe.is_file() and os.access(exe, os.X_OK):
            return Program(exe, _version(exe))
    raise HarnessError(f"img2dataset not found (looked at {', '.join(str(p) for p in looked)}). {INSTALL_HINT}")


@dataclass(frozen=True)
class DownloadFlags:
    processes: int
    threads: int
    distributor: str = "multiprocessing"
    number_sample_per_shard: int = 10000
    timeout: int = 10
    retries: int = 0
    enable_wandb: bool = False
    url_col: str = "URL"
    caption_col: str = "TEXT"


def command(program: Program, parquet: Path, shards: Path, flags: DownloadFlags, incremental_mode: str,
            additional_columns: list[str] | None = None) -> list[str]:
    """The img2dataset command line: the REACT README's flags, the counts and the distributor passed through."""
    if flags.distributor not in DISTRIBUTORS:
        raise HarnessError(f"--distributor {flags.distributor}: img2dataset knows {', '.join(DISTRIBUTORS)}.")
    cmd = [str(program.path), "--url_list", str(parquet), "--url_col", flags.url_col,
           "--caption_col", flags.caption_col, *README_FLAGS, "--output_folder", str(shards),
           "--processes_count", str(flags.processes), "--thread_count", str(flags.threads),
           "--distributor", flags.distributor, "--number_sample_per_shard", str(flags.number_sample_per_shard),
           "--timeout", str(flags.timeout), "--retries", str(flags.retries),
           "--incremental_mode", incremental_mode, "--enable_wandb", str(bool(flags.enable_wandb))]
    if additional_columns:
        cmd += ["--save_additional_columns", "[" + ",".join(f"'{c}'" for c in additional_columns) + "]"]
    return cmd
