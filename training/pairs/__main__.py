"""``python -m training.pairs {fetch,download,stats}`` (see :mod:`training.pairs`)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from harness.core.errors import HarnessError


def build_parser() -> argparse.ArgumentParser:
    from training.pairs import facts
    from training.pairs.img2dataset_program import DISTRIBUTORS

    parser = argparse.ArgumentParser(prog="python -m training.pairs", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    f = sub.add_parser("fetch", help="the pairs parquet from the Hugging Face hub (resumable; HF_ENDPOINT mirrors)")
    f.add_argument("--out", type=Path, required=True, help="pairs folder: the parquet goes here")
    f.add_argument("--repo", default=facts.default_repo(), help="hub dataset repo (default: %(default)s)")
    f.add_argument("--file", default=facts.default_file(), help="file in the repo (default: %(default)s)")
    f.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")

    d = sub.add_parser("download", help="the real img2dataset (from .venv-pairs): parquet -> webdataset shards "
                                        "in OUT/shards (resumable)")
    d.add_argument("--parquet", type=Path, required=True, help="pairs parquet (columns URL, TEXT)")
    d.add_argument("--out", type=Path, required=True, help="pairs folder: shards go to OUT/shards/")
    d.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="img2dataset --processes_count (default: the CPU count; REACT's README used 64)")
    d.add_argument("--threads", type=int, default=12, help="img2dataset --thread_count (default, REACT's: 12)")
    d.add_argument("--distributor", choices=DISTRIBUTORS, default="multiprocessing",
                   help="img2dataset --distributor (default: multiprocessing)")
    d.add_argument("--number-sample-per-shard", type=int, default=None,
                   help="img2dataset --number_sample_per_shard (default 10000, img2dataset's; fixed per folder)")
    d.add_argument("--timeout", type=int, default=10, help="img2dataset --timeout, seconds per URL (default 10)")
    d.add_argument("--retries", type=int, default=0, help="img2dataset --retries per URL (default 0)")
    d.add_argument("--url-col", default="URL", help="URL column (default URL)")
    d.add_argument("--caption-col", default="TEXT", help="caption column (default TEXT)")
    d.add_argument("--img2dataset", default=None, metavar="PATH",
                   help="the img2dataset program or its venv (default: .venv-pairs, from `make install-pairs`)")
    d.add_argument("--retry-failed", action="store_true",
                   help="download the rows whose last try failed again, into new shards")
    d.add_argument("--enable-wandb", action="store_true", help="img2dataset --enable_wandb (offline when unreachable)")
    d.add_argument("--restart", action="store_true",
                   help="delete OUT's shards, retry parquets and download state first, and download afresh (a "
                        "changed --parquet is refused without it)")

    s = sub.add_parser("stats", help="DIR/availability.json and a table: URLs tried, successes, failures by cause")
    s.add_argument("dir", type=Path, help="pairs folder (the --out of download)")
    w = sub.add_parser("show", help="one field of DIR/availability.json (the Makefile's train-* targets read "
                                    "train_data_pattern and successes with it)")
    w.add_argument("dir", type=Path, help="pairs folder")
    w.add_argument("--field", default=None, help="print only this field (default: the summary)")
    z = sub.add_parser("shard-size", help="print the --number-sample-per-shard that gives at least RANKS x WORKERS "
                                          "shards for PARQUET (make customize uses it)")
    z.add_argument("--parquet", type=Path, required=True, help="pairs parquet (columns URL, TEXT)")
    z.add_argument("--ranks", type=int, required=True, help="training processes (NGPUS)")
    z.add_argument("--workers", type=int, required=True, help="data-loading workers per process (--workers)")
    z.add_argument("--most", type=int, default=10000, help="largest shard size (default: img2dataset's 10000)")
    return parser


def run_shard_size(args) -> int:
    from training.pairs.download import parquet_rows
    from training.pairs.sizing import samples_per_shard

    rows = parquet_rows(args.parquet, ("URL", "TEXT"))
    size = samples_per_shard(rows, args.ranks, args.workers, args.most, str(args.parquet))
    print(f"--number-sample-per-shard {size}")
    return 0


def run_show(args) -> int:
    import json

    from harness.core import pairs_availability

    data = pairs_availability.read(args.dir)
    if args.field is None:
        print(pairs_availability.label(pairs_availability.summary(data)))
        return 0
    if args.field not in data:
        raise HarnessError(f"--field {args.field}: {args.dir} has no such field (it has {', '.join(data)}).")
    value = data[args.field]
    if args.field == "train_data_pattern":  # stored relative to the pairs folder: a moved folder still trains
        value = pairs_availability.resolve_pattern(value, args.dir)
    print(value if isinstance(value, (str, int, float)) else json.dumps(value))
    return 0


def run_fetch(args) -> int:
    from training.pairs.fetch import fetch

    path = fetch(args.out, args.repo, args.file, args.revision)
    print(f"parquet: {path}")
    return 0


def run_download(args) -> int:
    from tqdm import tqdm

    from harness.core.network import wandb_offline_if_unreachable
    from training.pairs.download import dns_advice, download, parquet_rows
    from training.pairs.img2dataset_program import DownloadFlags, find_program

    program = find_program(args.img2dataset)
    flags = DownloadFlags(processes=args.processes, threads=args.threads, distributor=args.distributor,
                          number_sample_per_shard=args.number_sample_per_shard or 10000, timeout=args.timeout,
                          retries=args.retries, enable_wandb=args.enable_wandb, url_col=args.url_col,
                          caption_col=args.caption_col)
    rows = parquet_rows(args.parquet, (args.url_col, args.caption_col))
    print(f"img2dataset {program.version or '(version unknown)'}: {program.path}")
    advice = None if args.retry_failed else dns_advice(rows)
    if advice:
        print(f"{rows:,} URLs. {advice}")
    if args.enable_wandb:
        wandb_offline_if_unreachable(str(args.out))
    bar = tqdm(total=0, unit="shard", desc="shards", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if (bar.n, bar.total) != (done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        outcome = download(args.parquet, args.out, flags, program, retry_failed=args.retry_failed,
                           nps_given=args.number_sample_per_shard is not None, progress=progress,
                           fresh=args.restart)
    finally:
        bar.close()
    print(outcome.message)
    print(f"next: python -m training.pairs stats {args.out}")
    return 0


def print_table(data: dict, path: Path) -> None:
    from harness.core.pairs_availability import resolve_pattern
    from harness.core.units import human_bytes
    from training.pairs.causes import cause_group

    total, succ = data["total"], data["successes"]
    rate = f"{100 * data['success_rate']:.2f}%" if data["success_rate"] is not None else "n/a"
    src = data["source_parquet"]
    lines = [("source parquet", f"{src.get('name')} ({src.get('rows') or 0:,} rows)" if src.get("name") else "?"),
             ("URLs tried", f"{total:,}"), ("successes", f"{succ:,}"), ("success rate", rate),
             ("failed", f"{data['failed']:,}")]
    groups: dict[str, list[tuple[str, int]]] = {}
    for cls, n in data["failures"].items():
        groups.setdefault(cause_group(cls), []).append((cls, n))
    for group, items in sorted(groups.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        if group == "http":
            detail = ", ".join(f"{c.split('_', 1)[1]}: {n:,}" for c, n in sorted(items))
            lines.append(("  HTTP", f"{sum(n for _, n in items):,} ({detail})"))
        else:
            lines.append((f"  {group}", f"{items[0][1]:,}"))
    lines += [("shards", f"{data['shards']:,}"), ("bytes", f"{data['bytes']:,} ({human_bytes(data['bytes'])})")]
    if data["partial_shards"]:
        lines.append(("partial shards", f"{len(data['partial_shards'])} (holding {data['partial_samples']:,} samples, "
                                        f"not counted above; run download again to finish them)"))
    if data.get("retry_rounds"):
        lines.append(("retry rounds", str(data["retry_rounds"])))
    lines.append(("downloaded", data.get("downloaded_at") or "?"))
    for name, n in data["published"].items():
        lines.append((f"REACT {name}", f"{n:,} pairs" + (f" (this download: {100 * succ / n:.1f}% of it)" if n
                                                         else "")))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    print(f"--train-data '{resolve_pattern(data['train_data_pattern'], path.parent)}' --train-num-samples {succ}")
    print(f"written: {path}")


def run_stats(args) -> int:
    from training.pairs.availability import write
    from training.pairs.layout import open_layout

    data = write(args.dir)
    print_table(data, open_layout(args.dir).availability)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return {"fetch": run_fetch, "download": run_download, "stats": run_stats, "show": run_show,
                "shard-size": run_shard_size}[args.verb](args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
