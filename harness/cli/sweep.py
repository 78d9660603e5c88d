"""``sweep``: many models x many datasets, each dataset decoded once, a report at the end. The report is built
here, by the command line: the report stage sits above the run stage that runs the sweep."""
from __future__ import annotations

import time
from pathlib import Path

from harness.cli.common import Verb, add_data_root_flag, add_datasets_flag, add_eval_flags, add_list_flag, \
    options_from_args
from harness.core.errors import HarnessError


class Sweep(Verb):
    name = "sweep"
    help = "many models x many datasets: decode each dataset once (pixel cache), evaluate every model, write a report"

    def add_arguments(self, parser):
        add_list_flag(parser, "models", "model cards (names or card YAMLs)", required=True)
        add_datasets_flag(parser, "dataset cards (default: all)")
        add_data_root_flag(parser)
        parser.add_argument("--order", choices=("largest", "given"), default="largest",
                            help="model order: largest first (default; an out-of-memory shows up at once) or as "
                                 "given")
        parser.add_argument("--report-name", default="sweep",
                            help="report written at the end (default: sweep); 'none': no report")
        parser.add_argument("--reports", type=Path, default=None,
                            help="reports folder (default ./reports or HARNESS_REPORTS)")
        parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
        add_eval_flags(parser)

    def run(self, args):
        from harness.core import paths
        from harness.run.sweep import earlier_throughput, plan_sweep, run_sweep

        options = options_from_args(args)
        if not args.models:
            raise HarnessError("--models needs at least one model card.")
        plan = plan_sweep(args.models, args.datasets, args.data_root, options.protocol, args.order)
        results = Path(options.results_root or paths.results_dir())
        if options.is_main:
            print("\n".join(plan.lines(earlier_throughput(results) if results.is_dir() else None)), flush=True)
        if args.plan_only:
            return 0
        if not plan.data:
            raise HarnessError(f"no dataset of the sweep is under {args.data_root}; see `python -m harness prepare`.")
        start = time.perf_counter()
        summaries = run_sweep(plan, args.data_root, options)
        if not options.is_main:
            return 0
        failed = 0
        for summary in summaries.values():
            print("\n".join(summary.lines()))
            failed += len(summary.failed)
        print(f"sweep finished in {time.perf_counter() - start:.1f} s")
        if args.report_name != "none":
            from harness.report import ReportInputs, build

            folder = build(ReportInputs(name=args.report_name, run_sets=[("This harness", results)],
                                        protocol=options.protocol), args.reports or paths.reports_dir())
            print(f"report: {folder / 'index.html'}")
        return 1 if failed else 0


VERBS = [Sweep()]
