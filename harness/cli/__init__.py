"""Command line: ``python -m harness VERB`` (also the ``harness`` command). One module per verb group, one class per
verb (:class:`harness.cli.common.Verb`); the evaluation flags, their defaults and their help come from
:class:`harness.engine.options.EvalOptions`. ``docs/cli.md`` is generated from this parser
(``scripts/make_cli_docs.py``).

torch is imported only by the verbs that run models, so ``ls``, ``validate`` and ``--help`` are instant.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from harness.cli import cache, cards, data, evaluate, report, sweep
from harness.cli.common import Verb
from harness.core.errors import HarnessError

# Verb groups in the order --help lists them.
GROUPS = (cards, evaluate, sweep, cache, report, data)
DESCRIPTION = "Zero-shot evaluation of CLIP/OpenCLIP/REACT model cards on ImageNet-1K and the ELEVATER datasets."


def verbs() -> dict[str, Verb]:
    return {verb.name: verb for group in GROUPS for verb in group.VERBS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for name, verb in verbs().items():
        p = sub.add_parser(name, help=verb.help, description=verb.help)
        verb.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Libraries (open_clip logs through the root logger) speak at WARNING; the harness at INFO.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("harness").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("training").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return verbs()[args.command].run(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m harness ls | head`: the reader left; nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
