"""The data verbs: ``prepare`` (download the test sets), ``make-demo-data``, ``make-demo-shards``."""
from __future__ import annotations

import sys
from pathlib import Path

from harness.cli.common import Verb, add_data_root_flag, add_datasets_flag
from harness.core.errors import HarnessError


class Prepare(Verb):
    name = "prepare"
    help = "download the ELEVATER test sets into the layout the harness reads (resumable, verified)"

    def add_arguments(self, parser):
        add_data_root_flag(parser, "folder to download into (eval's --data-root)")
        add_datasets_flag(parser, "dataset cards, or 'all' (default): every card but imagenet-1k, which is "
                                  "downloaded only when named (licence)")
        parser.add_argument("--storage-url", default=None,
                            help="container URL holding <root_folder>/<file>, SAS query string allowed (default: env "
                                 "HARNESS_DATA_URL, else the ELEVATER toolkit's container)")
        parser.add_argument("--split", default="test", help="which split of each card (default: test, what eval "
                                                            "reads)")
        parser.add_argument("--tries", type=int, default=4,
                            help="attempts per file on connection errors/5xx (default 4)")
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="seconds of silence before a read fails (default 60)")
        parser.add_argument("--min-rate", type=float, default=None, metavar="BYTES_PER_S",
                            help="slowest download accepted, averaged over every --timeout seconds: a file arriving "
                                 "slower fails like a timeout and is retried, resuming (default 1024; 0: no limit)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("--source", default=None,
                            choices=("auto", "elevater", "elevater-rehost", "clip-benchmark", "hf-jsonl"),
                            help="where from: auto (default) = per dataset the most faithful source that answers "
                                 "(the toolkit's container, then the ELEVATER re-host OFA-Sys/chinese-clip-eval, then "
                                 "CLIP_benchmark's webdatasets on the Hugging Face hub, then a jsonl + images repo "
                                 "such as neuralcatcher/hateful_memes); with --storage-url the "
                                 "default is elevater. Hub downloads honour HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE "
                                 "(docs/data.md)")
        parser.add_argument("--plan-only", action="store_true",
                            help="print per dataset the source, files, bytes and fidelity from the hub's metadata; "
                                 "download nothing")
        parser.add_argument("--whole-zip", action="store_true",
                            help="elevater-rehost only: when the server ignores HTTP Range requests, download the "
                                 "whole ELEVATER_all.zip (~37 GB) instead of refusing")

    def run(self, args):
        from harness.data.prepare import DownloadOptions, PrepareOptions, prepare

        if args.tries < 1 or args.timeout <= 0:
            raise HarnessError(f"--tries must be at least 1 and --timeout positive, got {args.tries} and "
                               f"{args.timeout}.")
        if args.min_rate is not None and args.min_rate < 0:
            raise HarnessError(f"--min-rate must be 0 (no limit) or a positive number of bytes per second, got "
                               f"{args.min_rate}.")
        download = DownloadOptions(tries=args.tries, read_timeout_s=args.timeout,
                                   progress=not args.no_progress and sys.stderr.isatty(),
                                   **({} if args.min_rate is None else {"min_rate_bps": args.min_rate}))
        source = args.source or ("elevater" if args.storage_url else "auto")
        summary = prepare(args.data_root, args.datasets,
                          PrepareOptions(storage_url=args.storage_url, split=args.split, download=download,
                                         source=source, plan_only=args.plan_only, whole_zip=args.whole_zip))
        print("\n".join(summary.lines()))
        return 1 if summary.failed else 0


class MakeDemoData(Verb):
    name = "make-demo-data"
    help = "generate the tiny offline demo suite in ELEVATER formats"

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--images-per-class", type=int, default=4)

    def run(self, args):
        from harness.data.synthetic import make_demo_suite

        made = make_demo_suite(args.out, images_per_class=args.images_per_class)
        for name, where in made.items():
            print(f"{name:28s} {where}")
        return 0


class MakeDemoShards(Verb):
    name = "make-demo-shards"
    help = "generate tiny img2dataset-style webdataset shards (demo training)"

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--shards", type=int, default=8)
        parser.add_argument("--samples-per-shard", type=int, default=128)
        parser.add_argument("--classes-from", default="cifar-10",
                            help="dataset card whose class names the captions use")

    def run(self, args):
        from harness.cards import get_dataset_card
        from harness.data.synthetic import write_img2dataset_shards

        names = get_dataset_card(args.classes_from).classnames
        shards = write_img2dataset_shards(args.out, names, n_shards=args.shards,
                                          samples_per_shard=args.samples_per_shard)
        print(f"wrote {len(shards)} shards x {args.samples_per_shard} samples to {args.out} "
              f"({{{shards[0].stem}..{shards[-1].stem}}}.tar)")
        return 0


VERBS = [Prepare(), MakeDemoData(), MakeDemoShards()]
