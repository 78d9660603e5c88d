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
        parser.add_argument("--pairs-set", action="append", default=[], metavar="LABEL=PATH",
                            help="a retrieved-pairs download's availability.json (`python -m training.pairs stats`), "
                                 "shown in the Retrieval set section and as the pairs of the comparison column "
                                 "LABEL, e.g. 'OpenCLIP (Dec 2026 set)=pairs/availability.json' (repeatable)")
        parser.add_argument("--retrieved", type=Path, action="append", default=[], metavar="JSON",
                            help="the statistics JSON of `python -m retrieval query` (beside its parquet): a "
                                 "'Retrieved for <card>' section, per class pairs, mean score and the tuned "
                                 "models' gain over their base (repeatable)")
        add_other_splits_flag(parser)

    def run(self, args):
        from harness.core import paths
        from harness.report import ReportInputs, build, log_to_wandb

        run_sets = _labelled_paths(args.run_set, "--run-set", "LABEL=DIR")
        for folder in args.results or ([] if run_sets else [paths.results_dir()]):
            run_sets.append(("This harness" if len(args.results or [1]) == 1 else str(folder), Path(folder)))
        given = {"protocol": args.protocol, "title": args.title, "comparison_dataset": args.comparison_dataset,
                 "paper_label": args.paper_label}
        pairs_sets = _labelled_paths(args.pairs_set, "--pairs-set", "LABEL=PATH (an availability.json)")
        inputs = ReportInputs(name=args.name, run_sets=run_sets, logs=list(args.logs),
                              model_card_dirs=list(args.model_cards), allow_other_splits=args.allow_other_splits,
                              pairs_sets=pairs_sets, retrieved=list(args.retrieved),
                              **{key: value for key, value in given.items() if value is not None})
        folder = build(inputs, args.out or paths.reports_dir())
        print(f"report: {folder / 'index.html'}")
        print(f"        {folder / 'README.md'}")
        print(f"        {folder / 'results.csv'}")
        if args.report_to == "wandb":
            print(f"wandb run: {log_to_wandb(inputs)}")
        return 0


def _labelled_paths(items: list[str], flag: str, shape: str) -> list[tuple[str, Path]]:
    """``LABEL=PATH`` flag values as (label, path) pairs; anything else is an error naming the flag."""
    out = []
    for item in items:
        if "=" not in item:
            raise HarnessError(f"{flag} expects {shape}, got '{item}'.")
        label, path = item.split("=", 1)
        out.append((label.strip(), Path(path)))
    return out


def add_other_splits_flag(parser) -> None:
    parser.add_argument("--allow-other-splits", action="store_true",
                        help="average scores read from a 'different split' source (e.g. CLIP_benchmark's eurosat, "
                             "resisc45, fer-2013 test splits) into the ELEVATER average too; the average is then "
                             "labelled so (default: they are shown, marked with a dagger, and left out)")


class Table(Verb):
    name = "table"
    help = "print a table of finished results"

    def add_arguments(self, parser):
        parser.add_argument("--results", type=Path, default=None,
                            help="results folder (default: ./results or HARNESS_RESULTS)")
        parser.add_argument("--protocol", default=None, help="only this protocol")
        add_other_splits_flag(parser)

    def run(self, args):
        from harness.cards import ELEVATER_SUITE, get_suite
        from harness.core import paths
        from harness.report.collect import DIFFERENT_SPLIT, data_source
        from harness.report.tables import OTHER_SPLIT_MARK
        from harness.store.results import scan_results

        folder = args.results or paths.results_dir()
        good, skipped = scan_results(folder)
        rows = [r for r in good if not args.protocol or r["protocol"]["name"] == args.protocol]
        if rows:
            print(f"{'model':34s} {'protocol':9s} {'dataset':34s} {'metric':15s} {'score':>9s} {'images':>7s} "
                  f"{'img/s':>8s}  source")
        suite = get_suite(ELEVATER_SUITE)
        averages: dict[tuple[str, str], list[float]] = {}
        other_in: set[tuple[str, str]] = set()
        marked = False
        for r in rows:
            ips = r["provenance"].get("images_per_second")
            src = data_source(r)
            other = src["fidelity"] == DIFFERENT_SPLIT
            marked |= other
            where = src["kind"] + (f" {src['repo']}@{(src['revision'] or '?')[:8]}" if src["repo"] else "")
            print(f"{r['model']['card']:34s} {r['protocol']['name']:9s} {r['dataset']['card']:34s} "
                  f"{r['metric']:15s} {r['score']:7.2f}{' ' + OTHER_SPLIT_MARK if other else '  '} {r['n_images']:7d} "
                  f"{ips if ips is not None else float('nan'):8.1f}  {where} ({src['fidelity']})")
            key = (r["model"]["card"], r["protocol"]["name"])
            if r["dataset"]["card"] in suite.members and (not other or args.allow_other_splits):
                averages.setdefault(key, []).append(float(r["score"]))
                if other:
                    other_in.add(key)
        for (model, protocol), scores in sorted(averages.items()):
            label = suite.title + (", other splits included" if (model, protocol) in other_in else "")
            print(f"  {model} ({protocol}) — {label}: {sum(scores) / len(scores):.2f} "
                  f"({len(scores)}/{len(suite.members)})")
        if marked:
            print(f"{OTHER_SPLIT_MARK} different split: not ELEVATER's test split, not comparable to published "
                  f"numbers; " + ("averaged in (--allow-other-splits)" if args.allow_other_splits else
                                 f"left out of {suite.title} (--allow-other-splits includes it)"))
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
