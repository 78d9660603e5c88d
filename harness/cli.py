"""Command line: ``python -m harness {ls,validate,eval,eval-all,sweep,rescore,cache,crosscheck,report,table,...}``.

torch is imported only by the commands that run models, so ``ls``, ``validate`` and ``--help`` are instant.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness.cards import IMAGENET
from harness.errors import HarnessError
from harness.models.precision import PRECISIONS

logger = logging.getLogger("harness")


def _add_eval_flags(p: argparse.ArgumentParser, model_flag: bool = True) -> None:
    if model_flag:
        p.add_argument("--model", required=True, help="model card name (see `ls`) or path to a card YAML")
    p.add_argument("--data-root", required=True, type=Path,
                   help="folder holding the datasets in the ELEVATER toolkit's layout (DATASET.ROOT)")
    if p.prog.split()[-1] != "crosscheck":
        p.add_argument("--protocol", choices=("elevater", "openclip"), default="elevater",
                       help="zero-shot protocol (default: elevater)")
    p.add_argument("--weights", help="weights file to use instead of the card's source (also: env "
                                     "HARNESS_WEIGHTS_<CARD>, or a folder in HARNESS_WEIGHTS_DIR)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: 64 on CPU, as the toolkit; 256 on a GPU)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: min(8, CPUs))")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (toolkit default for REACT), amp (autocast fp16 on GPU / bf16 on CPU), amp_bf16, "
                        "fp16, bf16 (pure half weights)")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: ./results or "
                                                              "HARNESS_RESULTS)")
    p.add_argument("--no-cache", action="store_true", help="no caches at all (classifiers, pixels, features)")
    p.add_argument("--no-pixel-cache", action="store_true",
                   help="decode every image again with the plain torchvision transform (default: decoded crops are "
                        "kept per dataset and geometry under HARNESS_CACHE/pixels and shared by every model)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="recompute image features (default: kept per model and dataset, so a changed template, "
                        "class name or metric rescores without touching an image)")
    p.add_argument("--refresh-cache", action="store_true",
                   help="recompute and overwrite cached classifiers, pixels and features")
    p.add_argument("--force", action="store_true", help="recompute results that are already finished")
    if p.prog.split()[-1] != "crosscheck":  # the cross-check runs each protocol with its own numerics
        p.add_argument("--numerics", choices=("toolkit", "openclip"), default=None,
                       help="whose model code computes the forward pass: the ELEVATER toolkit's (its LayerNorm; "
                            "default under --protocol elevater for cards with an elevater section) or OpenCLIP's "
                            "(default under --protocol openclip)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out instead of failing the dataset; the result records how many and "
                        "which (the score is then over fewer images than the test set)")
    p.add_argument("--predictions-json", dest="predictions_json", action="store_true", default=None,
                   help="always write the ELEVATER-style predictions JSON (default: only for sets of up to 2M "
                        "probabilities, i.e. not ImageNet-1K)")
    p.add_argument("--no-predictions-json", dest="predictions_json", action="store_false", default=None,
                   help="never write the predictions JSON (the .probs.npy file is always written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=(
        "Zero-shot evaluation of CLIP/OpenCLIP/REACT model cards on ImageNet-1K and the ELEVATER datasets."))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ls", help="list model and dataset cards")
    p.add_argument("what", nargs="?", choices=("all", "models", "datasets"), default="all")

    sub.add_parser("validate", help="check every card strictly (unknown keys, types, cross references)")

    p = sub.add_parser("eval", help="evaluate one model on one or more datasets")
    _add_eval_flags(p)
    p.add_argument("--dataset", required=True, action="append",
                   help="dataset card name (repeat or comma-separate for several)")

    p = sub.add_parser("eval-all", help="evaluate one model on every dataset card (ImageNet-1K + 20 ELEVATER)")
    _add_eval_flags(p)
    p.add_argument("--datasets", default=None, help="comma-separated subset of dataset cards (default: all)")

    p = sub.add_parser("crosscheck", help="same weights and data under both protocols, with the differences")
    _add_eval_flags(p)
    p.add_argument("--datasets", default=None, help="comma-separated dataset cards (default: all found)")

    from harness.cli_sweep import add_parsers

    add_parsers(sub, _add_eval_flags)

    p = sub.add_parser("report", help="markdown + HTML report with tables and plots from result files")
    p.add_argument("--name", default="latest", help="report name: written to <out>/<name>/ (default: latest)")
    p.add_argument("--out", type=Path, default=None, help="reports folder (default: ./reports or HARNESS_REPORTS)")
    p.add_argument("--results", type=Path, action="append", default=None,
                   help="results folder (repeatable; default ./results or HARNESS_RESULTS); labelled 'This harness' "
                        "unless --run-set is used")
    p.add_argument("--run-set", action="append", default=[], metavar="LABEL=DIR",
                   help="a labelled results folder, e.g. 'OpenCLIP (Feb 2023 set)=results_feb23' (repeatable)")
    p.add_argument("--logs", type=Path, action="append", default=[], help="training logs folder (repeatable)")
    p.add_argument("--model-cards", type=Path, action="append", default=[],
                   help="extra model card folder, e.g. cards written by training (repeatable)")
    # Defaults of the flags below are ReportInputs' (None = not given), so they are stated once, in harness.report.
    p.add_argument("--protocol", default=None, help="protocol of the main tables (default elevater)")
    p.add_argument("--title", default=None, help="report title (default: 'REACT / ELEVATER zero-shot report')")
    p.add_argument("--comparison-dataset", default=None,
                   help=f"dataset of the REACT README-style comparison table (default {IMAGENET})")
    p.add_argument("--paper-label", default=None,
                   help="header of the comparison table's published-numbers column (default 'Paper (published)'), "
                        "e.g. 'Paper (Dec 2021 set)'")
    p.add_argument("--report-to", choices=("none", "wandb"), default="none",
                   help="also log the results table to wandb (offline when unreachable)")

    p = sub.add_parser("import-predictions", help="an ELEVATER predictions JSON (the toolkit's --save-predictions) "
                                                  "in as a result of a labelled run set")
    p.add_argument("file", type=Path, help="<dataset>.json as the toolkit writes it (or this harness's export)")
    p.add_argument("--dataset", required=True, help="dataset card the predictions are of")
    p.add_argument("--data-root", required=True, type=Path, help="the data the predictions were made on (labels)")
    p.add_argument("--model", default=None, help="model card the predictions are of (default: from the file's "
                                                 "model_name, 'CLIP-clip_react' -> clip_react)")
    p.add_argument("--label", default=None, help="run set label (default 'ELEVATER toolkit (official)'); results go "
                                                 "to <results>/imported/<slug of label>/")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: ./results or "
                                                              "HARNESS_RESULTS)")
    p.add_argument("--seed-index", type=int, default=None, help="which seed list of a file holding several")

    p = sub.add_parser("table", help="print a table of finished results")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--protocol", default=None, help="only this protocol")

    p = sub.add_parser("make-demo-data", help="generate the tiny offline demo suite in ELEVATER formats")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images-per-class", type=int, default=4)
    p = sub.add_parser("make-demo-shards", help="generate tiny img2dataset-style webdataset shards (demo training)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--samples-per-shard", type=int, default=128)
    p.add_argument("--classes-from", default="cifar-10", help="dataset card whose class names the captions use")

    p = sub.add_parser("prepare", help="download the ELEVATER test sets into the layout the harness reads "
                                       "(resumable, verified)")
    p.add_argument("--data-root", required=True, type=Path, help="folder to download into (eval's --data-root)")
    p.add_argument("--datasets", default="all",
                   help="comma-separated dataset cards, or 'all' (default): every card but imagenet-1k, which is "
                        "downloaded only when named (licence)")
    p.add_argument("--storage-url", default=None,
                   help="container URL holding <root_folder>/<file>, SAS query string allowed (default: env "
                        "HARNESS_DATA_URL, else the ELEVATER toolkit's container)")
    p.add_argument("--split", default="test", help="which split of each card (default: test, what eval reads)")
    p.add_argument("--tries", type=int, default=4, help="attempts per file on connection errors/5xx (default 4)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds of silence before a read fails (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("export-elevater", help="write the ELEVATER toolkit model YAML of a model card (to run the "
                                               "official toolkit on the same weights)")
    p.add_argument("card", help="model card name, card YAML, or toolkit model YAML")
    p.add_argument("--out", type=Path, default=Path("elevater_models"),
                   help="folder for <card>.yaml (default ./elevater_models)")
    p.add_argument("--weights", default=None, help="weights file to name in TEST.MODEL_FILE instead of the card's")
    return parser


def _cmd_make_demo_shards(args) -> int:
    from harness.cards import get_dataset_card
    from harness.synthetic import write_img2dataset_shards

    names = get_dataset_card(args.classes_from).classnames
    shards = write_img2dataset_shards(args.out, names, n_shards=args.shards, samples_per_shard=args.samples_per_shard)
    print(f"wrote {len(shards)} shards x {args.samples_per_shard} samples to {args.out} "
          f"({{{shards[0].stem}..{shards[-1].stem}}}.tar)")
    return 0


def _cmd_ls(args) -> int:
    from harness import cards

    if args.what in ("all", "models"):
        models = cards.all_model_cards()
        print(f"{len(models)} model cards:")
        for c in models:
            pub = ", ".join(f"{k} {v:g}" for k, v in c.published.items())
            print(f"  {c.name:44s} {c.architecture:28s} {c.method:12s} {c.weights.identity}"
                  + (f"  [published: {pub}]" if pub else ""))
    if args.what in ("all", "datasets"):
        datasets = cards.all_dataset_cards()
        print(f"{len(datasets)} dataset cards:")
        for d in datasets:
            print(f"  {d.name:34s} {d.type:11s} {d.format:5s} {d.num_classes:5d} classes "
                  f"{len(d.templates):3d} templates  {d.metric:15s} test {d.eval_spec.num_images} images")
    return 0


def _cmd_validate(args) -> int:
    from harness import cards

    ok, errors = cards.validate_all()
    for line in ok:
        print(f"ok    {line}")
    for line in errors:
        print(f"ERROR {line}")
    print(f"{len(ok)} cards valid, {len(errors)} invalid")
    return 1 if errors else 0


def _options(args):
    from harness.parallel import shard_from_env
    from harness.runner import EvalOptions

    if args.batch_size is not None and args.batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.workers is not None and args.workers < 0:
        raise HarnessError(f"--workers must be 0 or more, got {args.workers}.")
    shard, device = shard_from_env(args.device)  # torchrun: this rank's share and device
    if shard is not None and not shard.is_main:
        logging.getLogger("harness").setLevel(logging.WARNING)
    return EvalOptions(protocol=getattr(args, "protocol", "elevater"), weights=args.weights, batch_size=args.batch_size,
                       workers=args.workers, device=device, precision=args.precision,
                       use_cache=not args.no_cache, refresh_cache=args.refresh_cache, force=args.force,
                       results_root=args.results, save_predictions=args.predictions_json,
                       skip_bad_images=args.skip_bad_images, numerics=getattr(args, "numerics", None),
                       progress=not args.no_progress and sys.stderr.isatty() and (shard is None or shard.is_main),
                       pixel_cache=not (args.no_cache or args.no_pixel_cache),
                       feature_cache=not (args.no_cache or args.no_feature_cache), shard=shard)


def _cmd_eval(args) -> int:
    from harness.cli_sweep import csv_list
    from harness.runner import evaluate

    if args.command == "eval":
        names = [n.strip() for item in args.dataset for n in item.split(",") if n.strip()]
    else:
        names = csv_list(args.datasets)
    options = _options(args)
    summary = evaluate(args.model, names, args.data_root, options)
    if options.shard is not None and not options.shard.is_main:
        return 0  # rank 0 reports
    print("\n".join(summary.lines()))
    if args.command == "eval" and summary.missing:
        print("\n".join(summary.missing.values()), file=sys.stderr)
        return 2
    return 1 if summary.failed else 0


def _cmd_sweep(args) -> int:
    from harness import cli_sweep

    if args.command == "cache":
        return cli_sweep.cmd_cache(args)
    run = cli_sweep.cmd_sweep if args.command == "sweep" else cli_sweep.cmd_rescore
    return run(args, _options(args))


def _cmd_crosscheck(args) -> int:
    from harness.cli_sweep import csv_list
    from harness.crosscheck import crosscheck, crosscheck_lines

    names = csv_list(args.datasets)
    opts = _options(args)
    if opts.shard is not None:
        raise HarnessError("crosscheck runs in one process; run eval-all under torchrun for each protocol instead.")
    result = crosscheck(args.model, names, args.data_root, opts)
    print("\n".join(crosscheck_lines(result)))
    return 0 if result["datasets"] else 1


def _cmd_report(args) -> int:
    from harness import paths
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


def _cmd_table(args) -> int:
    from harness import paths
    from harness.results import scan_results

    folder = args.results or paths.results_dir()
    good, skipped = scan_results(folder)
    rows = [r for r in good if not args.protocol or r["protocol"]["name"] == args.protocol]
    if rows:
        print(f"{'model':34s} {'protocol':9s} {'dataset':34s} {'metric':15s} {'score':>7s} {'images':>7s} "
              f"{'img/s':>8s}")
    for r in rows:
        ips = r["provenance"].get("images_per_second")
        print(f"{r['model']['card']:34s} {r['protocol']['name']:9s} {r['dataset']['card']:34s} {r['metric']:15s} "
              f"{r['score']:7.2f} {r['n_images']:7d} {ips if ips is not None else float('nan'):8.1f}")
    for s in skipped:
        print(f"skipped {s.reason}")
    if not rows:
        print(f"no finished results under {folder}")
        return 1
    return 0


def _cmd_import_predictions(args) -> int:
    from harness.imports import DEFAULT_LABEL, import_predictions

    out = import_predictions(args.file, args.dataset, args.data_root, model=args.model,
                             label=args.label or DEFAULT_LABEL, results_root=args.results, seed_index=args.seed_index)
    r = out.result
    print(f"{'already imported' if out.reused else 'imported'}: {r['model']['card']} {r['dataset']['card']} "
          f"{r['metric']} {r['score']:.2f} ({r['n_images']} images), run set '{r['provenance']['label']}'")
    print(f"        {out.path}")
    return 0


def _cmd_make_demo_data(args) -> int:
    from harness.synthetic import make_demo_suite

    made = make_demo_suite(args.out, images_per_class=args.images_per_class)
    for name, where in made.items():
        print(f"{name:28s} {where}")
    return 0


def _cmd_prepare(args) -> int:
    from harness.prepare import DownloadOptions, PrepareOptions, prepare

    if args.tries < 1 or args.timeout <= 0:
        raise HarnessError(f"--tries must be at least 1 and --timeout positive, got {args.tries} and {args.timeout}.")
    download = DownloadOptions(tries=args.tries, read_timeout_s=args.timeout,
                               progress=not args.no_progress and sys.stderr.isatty())
    summary = prepare(args.data_root, args.datasets,
                      PrepareOptions(storage_url=args.storage_url, split=args.split, download=download))
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


def _cmd_export_elevater(args) -> int:
    from harness.models.elevater_export import export_toolkit_yaml
    from harness.models.elevater_yaml import resolve_model_card

    path = export_toolkit_yaml(resolve_model_card(args.card), args.out, weights=args.weights)
    print(f"toolkit model YAML: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Libraries (open_clip logs through the root logger) speak at WARNING; the harness at INFO.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("harness").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("training").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    commands = {"ls": _cmd_ls, "validate": _cmd_validate, "eval": _cmd_eval, "eval-all": _cmd_eval,
                "crosscheck": _cmd_crosscheck, "report": _cmd_report,
                "table": _cmd_table, "make-demo-data": _cmd_make_demo_data,
                "import-predictions": _cmd_import_predictions,
                "make-demo-shards": _cmd_make_demo_shards, "prepare": _cmd_prepare,
                "export-elevater": _cmd_export_elevater, "sweep": _cmd_sweep, "rescore": _cmd_sweep,
                "cache": _cmd_sweep}
    try:
        return commands[args.command](args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume", file=sys.stderr)
        return 130
