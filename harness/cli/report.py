"""The result verbs: ``report`` (markdown + HTML), ``table`` (print), ``import-predictions`` (the official
toolkit's predictions in as a labelled run set)."""
from __future__ import annotations

from pathlib import Path

from harness.cards import IMAGENET
from harness.cli.common import Verb, add_data_root_flag
from harness.core.errors import HarnessError


class Report(Verb):
    name = "report"
    help = "markdown + HTML report with tables and plots from result files"

    def add_arguments(self, parser):
        parser.add_argument("--name", default="latest", help="report name: written to <out>/<name>/ (default: latest)")
        parser.add_argument("--out", type=Path, default=None,
                            help="reports folder (default: ./reports or HARNESS_REPORTS)")
        parser.add_argument("--results", type=Path, action="append", default=None,
                            help="results folder (repeatable; default ./results or HARNESS_RESULTS); labelled "
                                 "'This harness' unless --run-set is used")
        parser.add_argument("--run-set", action="append", default=[], metavar="LABEL=DIR",
                            help="a labelled results folder, e.g. 'OpenCLIP (Feb 2023 set)=results_feb23' "
                                 "(repeatable)")
        parser.add_argument("--logs", type=Path, action="append", default=[],
                            help="training logs folder (repeatable)")
        parser.add_argument("--model-cards", type=Path, action="append", default=[],
                            help="extra model card folder, e.g. cards written by training (repeatable)")
        # The defaults of the flags below are ReportInputs' (None = not given): stated once, in harness.report.
        parser.add_argument("--protocol", default=None, help="protocol of the main tables (default elevater)")
        parser.add_argument("--title", default=None,
                            help="report title (default: 'REACT / ELEVATER zero-shot report')")
        parser.add_argument("--comparison-dataset", default=None,
                            help=f"dataset of the REACT README-style comparison table (default {IMAGENET})")
        parser.add_argument("--paper-label", default=None,
                            help="header of the comparison table's published-numbers column (default 'Paper "
                                 "(published)'), e.g. 'Paper (Dec 2021 set)'")
        parser.add_argument("--report-to", choices=("none", "wandb"), default="none",
                            help="also log the results table to wandb (offline when unreachable)")

    def run(self, args):
        from harness.core import paths
        from harness.report import ReportInputs, build, log_to_wandb

        run_sets = []
        for item in args.run_set:
            if "=" not in item:
                raise HarnessError(f"--run-set expects LABEL=DIR, got '{item}'.")
            label, folder = item.split("=", 1)
            run_sets.append((label.strip(), Path(folder)))
        for folder in args.results or ([] if run_sets else [paths.results_dir()]):
            run_sets.append(("This harness" if len(args.results or [1]) == 1 else str(folder), Path(folder)))
        given = {"protocol": args.protocol, "title": args.title, "comparison_dataset": args.comparison_dataset,
                 "paper_label": args.paper_label}
        inputs = ReportInputs(name=args.name, run_sets=run_sets, logs=list(args.logs),
                              model_card_dirs=list(args.model_cards),
                              **{key: value for key, value in given.items() if value is not None})
        folder = build(inputs, args.out or paths.reports_dir())
        print(f"report: {folder / 'index.html'}")
        print(f"        {folder / 'README.md'}")
        print(f"        {folder / 'results.csv'}")
        if args.report_to == "wandb":
            print(f"wandb run: {log_to_wandb(inputs)}")
        return 0


class Table(Verb):
    name = "table"
    help = "print a table of finished results"

    def add_arguments(self, parser):
        parser.add_argument("--results", type=Path, default=None,
                            help="results folder (default: ./results or HARNESS_RESULTS)")
        parser.add_argument("--protocol", default=None, help="only this protocol")

    def run(self, args):
        from harness.core import paths
        from harness.store.results import scan_results

        folder = args.results or paths.results_dir()
        good, skipped = scan_results(folder)
        rows = [r for r in good if not args.protocol or r["protocol"]["name"] == args.protocol]
        if rows:
            print(f"{'model':34s} {'protocol':9s} {'dataset':34s} {'metric':15s} {'score':>7s} {'images':>7s} "
                  f"{'img/s':>8s}")
        for r in rows:
            ips = r["provenance"].get("images_per_second")
            print(f"{r['model']['card']:34s} {r['protocol']['name']:9s} {r['dataset']['card']:34s} "
                  f"{r['metric']:15s} {r['score']:7.2f} {r['n_images']:7d} "
                  f"{ips if ips is not None else float('nan'):8.1f}")
        for s in skipped:
            print(f"skipped {s.reason}")
        if not rows:
            print(f"no finished results under {folder}")
            return 1
        return 0


class ImportPredictions(Verb):
    name = "import-predictions"
    help = ("an ELEVATER predictions JSON (the toolkit's --save-predictions) in as a result of a labelled run set")

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="<dataset>.json as the toolkit writes it (or this harness's "
                                                    "export)")
        parser.add_argument("--dataset", required=True, help="dataset card the predictions are of")
        add_data_root_flag(parser, "the data the predictions were made on (labels)")
        parser.add_argument("--model", default=None,
                            help="model card the predictions are of (default: from the file's model_name, "
                                 "'CLIP-clip_react' -> clip_react)")
        parser.add_argument("--label", default=None,
                            help="run set label (default 'ELEVATER toolkit (official)'); results go to "
                                 "<results>/imported/<slug of label>/")
        parser.add_argument("--results", type=Path, default=None,
                            help="results folder (default: ./results or HARNESS_RESULTS)")
        parser.add_argument("--seed-index", type=int, default=None, help="which seed list of a file holding several")

    def run(self, args):
        from harness.run.predictions_import import DEFAULT_LABEL, import_predictions

        out = import_predictions(args.file, args.dataset, args.data_root, model=args.model,
                                 label=args.label or DEFAULT_LABEL, results_root=args.results,
                                 seed_index=args.seed_index)
        r = out.result
        print(f"{'already imported' if out.reused else 'imported'}: {r['model']['card']} {r['dataset']['card']} "
              f"{r['metric']} {r['score']:.2f} ({r['n_images']} images), run set '{r['provenance']['label']}'")
        print(f"        {out.path}")
        return 0


VERBS = [Report(), Table(), ImportPredictions()]
