"""What the verbs share: the :class:`Verb` shape, the evaluation flags generated from
:class:`~harness.engine.options.EvalOptions` (its defaults and help are the flags' only source), and list flags.

Importing this module imports no torch: ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Iterable

from harness.engine.options import GROUPS, EvalOptions, cli_spec, option_fields


class Verb:
    """One command-line verb: its name, one-line help, its flags and what it does. ``run`` returns the exit code
    (0 done, 1 something failed, 2 a user error)."""
    name: str = ""
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class ListAction(argparse.Action):
    """A list flag given repeated, comma-separated, or both: ``--datasets a,b --datasets c`` -> [a, b, c]."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.extend(n.strip() for n in str(values).split(",") if n.strip())
        setattr(namespace, self.dest, items)


def add_list_flag(parser: argparse.ArgumentParser, name: str, help: str, required: bool = False,
                  alias: str | None = None) -> None:
    flags = [f"--{name}"] + ([f"--{alias}"] if alias else [])
    parser.add_argument(*flags, dest=name.replace("-", "_"), action=ListAction, default=None, required=required,
                        metavar="NAME[,NAME...]", help=f"{help} (repeat the flag or comma-separate)")


def add_datasets_flag(parser: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    add_list_flag(parser, "datasets", help, required=required, alias="dataset")


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model card name (see `ls`), a card YAML, or an ELEVATER toolkit model YAML")


def add_data_root_flag(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--data-root", required=True, type=_path,
                        help=help or "folder holding the datasets in the ELEVATER toolkit's layout (DATASET.ROOT)")


def _path(text: str):
    from pathlib import Path

    return Path(text)


def add_eval_flags(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """Every EvalOptions field that has a flag, in its argument group, with the dataclass's default; plus
    ``--no-cache`` (all three caches off)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    skip = set(exclude)
    for f in option_fields():
        spec = cli_spec(f)
        if spec is None or f.name in skip:
            continue
        group = groups[spec["group"]]
        flag = spec["flag"] or "--" + f.name.replace("_", "-")
        if spec["negative"]:  # tri-state: --x sets True, --no-x False, neither leaves the default (None)
            group.add_argument(flag, dest=f.name, action="store_true", default=f.default, help=spec["help"])
            group.add_argument(spec["negative"][0], dest=f.name, action="store_false", default=f.default,
                               help=spec["negative"][1])
        elif f.default is True:
            group.add_argument(flag, dest=f.name, action="store_false", help=spec["help"])
        elif f.default is False:
            group.add_argument(flag, dest=f.name, action="store_true", help=spec["help"])
        else:
            group.add_argument(flag, dest=f.name, default=f.default, help=spec["help"], **spec["argparse"])
    groups["caches"].add_argument("--no-cache", action="store_true",
                                  help="no caches at all (classifiers, pixels, features)")


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The EvalOptions of a parsed command line; under torchrun, this rank's shard and device (ranks other than 0
    log warnings only and show no progress)."""
    from harness.core.distributed import shard_from_env

    given = {f.name: getattr(args, f.name) for f in option_fields() if cli_spec(f) and hasattr(args, f.name)}
    shard, device = shard_from_env(given.get("device"))
    main = shard is None or shard.is_main
    if not main:
        logging.getLogger("harness").setLevel(logging.WARNING)
    given.update(device=device, shard=shard, progress=given.get("progress", True) and sys.stderr.isatty() and main)
    options = EvalOptions(**given).check()
    return options.without_caches() if getattr(args, "no_cache", False) else options
