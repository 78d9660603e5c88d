"""The evaluating verbs: ``eval``, ``eval-all``, ``crosscheck``, ``rescore``."""
from __future__ import annotations

import dataclasses
import sys

from harness.cli.common import (Verb, add_data_root_flag, add_datasets_flag, add_eval_flags, add_model_flag,
                                options_from_args)
from harness.core.errors import HarnessError


def _print_summary(summary, options) -> bool:
    """Print a run summary on the process that records results; False on other torchrun ranks."""
    if not options.is_main:
        return False
    print("\n".join(summary.lines()))
    return True


class Eval(Verb):
    name = "eval"
    help = "evaluate one model on one or more datasets"
    datasets_help = "dataset cards to evaluate"
    datasets_required = True  # and a named dataset missing from the data root is an error (exit 2)

    def add_arguments(self, parser):
        add_model_flag(parser)
        add_datasets_flag(parser, self.datasets_help, required=self.datasets_required)
        add_data_root_flag(parser)
        add_eval_flags(parser)

    def run(self, args):
        from harness.run.runner import evaluate

        options = options_from_args(args)
        summary = evaluate(args.model, args.datasets, args.data_root, options)
        if not _print_summary(summary, options):
            return 0  # rank 0 reports
        if self.datasets_required and summary.missing:
            print("\n".join(summary.missing.values()), file=sys.stderr)
            return 2
        return 1 if summary.failed else 0


class EvalAll(Eval):
    name = "eval-all"
    help = "evaluate one model on every dataset card (ImageNet-1K + 20 ELEVATER)"
    datasets_help = "subset of dataset cards (default: all; those missing from the data root are listed)"
    datasets_required = False


class Crosscheck(Verb):
    name = "crosscheck"
    help = "same weights and data under both protocols, with the differences"

    def add_arguments(self, parser):
        add_model_flag(parser)
        add_datasets_flag(parser, "dataset cards (default: all found)")
        add_data_root_flag(parser)
        add_eval_flags(parser, exclude=("protocol", "numerics"))  # each protocol runs with its own numerics

    def run(self, args):
        from harness.run.crosscheck import crosscheck, crosscheck_lines

        options = options_from_args(args)
        if options.shard is not None:
            raise HarnessError("crosscheck runs in one process; run eval-all under torchrun for each protocol "
                               "instead.")
        result = crosscheck(args.model, args.datasets, args.data_root, options)
        print("\n".join(crosscheck_lines(result)))
        return 0 if result["datasets"] else 1


class Rescore(Verb):
    name = "rescore"
    help = ("recompute results from cached image features only (after changing templates, class names or a "
            "metric): no image is read")

    def add_arguments(self, parser):
        add_model_flag(parser)
        add_datasets_flag(parser, "dataset cards (default: all with features)")
        add_data_root_flag(parser)
        add_eval_flags(parser)

    def run(self, args):
        from harness.run.runner import evaluate

        options = dataclasses.replace(options_from_args(args), features_only=True, force=True, pixel_cache=False,
                                      feature_cache=True)
        summary = evaluate(args.model, args.datasets, args.data_root, options)
        print("\n".join(summary.lines()))
        return 1 if summary.failed else 0


VERBS = [Eval(), EvalAll(), Crosscheck(), Rescore()]
