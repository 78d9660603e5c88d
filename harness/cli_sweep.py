"""Command line of the sweep-scale verbs: ``sweep``, ``rescore`` and ``cache {ls,prune}`` (see harness.cli)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from harness.errors import HarnessError


def add_parsers(sub, add_eval_flags) -> None:
    p = sub.add_parser("sweep", help="many models x many datasets: decode each dataset once (pixel cache), evaluate "
                                     "every model, write a report")
    add_eval_flags(p, model_flag=False)
    p.add_argument("--models", required=True, help="comma-separated model cards (names or card YAMLs)")
    p.add_argument("--datasets", default=None, help="comma-separated dataset cards (default: all)")
    p.add_argument("--order", choices=("largest", "given"), default="largest",
                   help="model order: largest first (default; an out-of-memory shows up at once) or as given")
    p.add_argument("--report-name", default="sweep", help="report written at the end (default: sweep); 'none': no "
                                                          "report")
    p.add_argument("--reports", type=Path, default=None, help="reports folder (default ./reports or HARNESS_REPORTS)")
    p.add_argument("--plan-only", action="store_true", help="print the plan and stop")

    p = sub.add_parser("rescore", help="recompute results from cached image features only (after changing templates, "
                                       "class names or a metric): no image is read")
    add_eval_flags(p)
    p.add_argument("--datasets", default=None, help="comma-separated dataset cards (default: all with features)")

    p = sub.add_parser("cache", help="what the cache folder (HARNESS_CACHE) holds, and pruning it")
    p.add_argument("action", choices=("ls", "prune"))
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default ./cache or HARNESS_CACHE)")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="prune: only entries not used for DAYS days (default: all)")
    p.add_argument("--kind", action="append", choices=("pixels", "features", "classifiers", "sha256"),
                   help="prune: only this kind (repeatable; default: all)")
    p.add_argument("--dry-run", action="store_true", help="prune: list what would be removed")


def csv_list(text: str | None) -> list[str] | None:
    """Names from a comma-separated flag value (None when empty)."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def cmd_sweep(args, options) -> int:
    from harness import paths
    from harness.sweep import earlier_throughput, plan_sweep, run_sweep

    models = csv_list(args.models)
    if not models:
        raise HarnessError("--models needs at least one model card.")
    plan = plan_sweep(models, csv_list(args.datasets), args.data_root, options.protocol, args.order)
    main = options.shard is None or options.shard.is_main
    results = Path(options.results_root or paths.results_dir())
    if main:
        print("\n".join(plan.lines(earlier_throughput(results) if results.is_dir() else None)), flush=True)
    if args.plan_only:
        return 0
    if not plan.data:
        raise HarnessError(f"no dataset of the sweep is under {args.data_root}; see `python -m harness prepare`.")
    start = time.perf_counter()
    summaries = run_sweep(plan, args.data_root, options, None if args.report_name == "none" else args.report_name,
                          args.reports)
    if not main:
        return 0
    report = summaries.pop("_report", None)
    failed = 0
    for summary in summaries.values():
        print("\n".join(summary.lines()))
        failed += len(summary.failed)
    print(f"sweep finished in {time.perf_counter() - start:.1f} s")
    if report is not None:
        print(f"report: {report}")
    return 1 if failed else 0


def cmd_rescore(args, options) -> int:
    from harness.runner import evaluate

    options = dataclasses.replace(options, features_only=True, force=True, pixel_cache=False, feature_cache=True)
    summary = evaluate(args.model, csv_list(args.datasets), args.data_root, options)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


def cmd_cache(args) -> int:
    from harness.cachestore import KINDS, human_bytes, list_cache, prune

    if args.action == "ls":
        items = list_cache(args.cache)
        if not items:
            print("the cache is empty")
            return 0
        print(f"{'kind':11s} {'of':30s} {'size':>10s}  {'last used':16s}  detail")
        for it in items:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(it.last_used))
            print(f"{it.kind:11s} {it.name[:30]:30s} {human_bytes(it.bytes):>10s}  {used:16s}  {it.detail}")
        print(f"total {human_bytes(sum(it.bytes for it in items))} in {args.cache or 'the cache folder'}")
        return 0
    removed = prune(args.cache, args.older_than, tuple(args.kind or KINDS), dry_run=args.dry_run)
    for it in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {it.kind} {it.name} ({human_bytes(it.bytes)})")
    print(f"{len(removed)} entries, {human_bytes(sum(it.bytes for it in removed))}"
          f"{' (dry run)' if args.dry_run else ' freed'}")
    return 0

