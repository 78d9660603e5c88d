"""``python -m retrieval {embed,index,query,card,demo-corpus,demo}``: REACT's retrieval stage (docs/retrieval.md)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from harness.core.errors import HarnessError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("embed", help="CLIP embeddings of an img2dataset webdataset corpus, per shard (resumable; "
                                       "torchrun deals the shards to the ranks)")
    p.add_argument("--shards", required=True, help="shard files: a brace pattern (/data/{00000..00099}.tar), a glob "
                                                   "or a comma-separated list")
    p.add_argument("--out", required=True, help="the index folder to write (INDEX_DIR)")
    p.add_argument("--model", required=True, help="model card name or YAML path")
    p.add_argument("--modality", default="image,text", help="image, text or image,text (default: both)")
    _device_flags(p)
    p.add_argument("--batch-size", type=int, default=None, help="default: the harness's (64 on CPU, 256 on a GPU)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding DataLoader workers (default 2)")

    p = verbs.add_parser("index", help="faiss inner-product indices over INDEX_DIR's embeddings")
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("--max-index-memory", default="4G", help="memory cap of each index (default 4G): exact Flat while "
                                                            "it fits and the corpus is small, else IVF-PQ")
    p.add_argument("--index-key", default=None, help="a faiss index_factory string instead of the automatic choice")

    p = verbs.add_parser("query", help="retrieve pairs for a dataset card's classes -> parquet + statistics JSON")
    p.add_argument("--index", required=True, help="an index folder (ours, or clip-retrieval's image.index/"
                                                  "text.index + metadata/*.parquet)")
    p.add_argument("--dataset", required=True, help="dataset card name or YAML path")
    p.add_argument("--out", required=True, help="the parquet to write (statistics go to <stem>.json beside it)")
    p.add_argument("--mode", default="text-to-image", choices=["text-to-image", "text-to-text"])
    p.add_argument("--per-class", type=int, default=50, help="images kept per class (default 50)")
    p.add_argument("--per-prompt", type=int, default=None, help="neighbours searched per prompt (default: "
                                                                "--per-class)")
    p.add_argument("--dedup", default="within-class", choices=["within-class", "global"])
    p.add_argument("--model", default=None, help="model card (default: the one that embedded the index; required "
                                                 "for a clip-retrieval folder)")
    p.add_argument("--nprobe", type=int, default=None, help="inverted lists searched by an IVF index (default: "
                                                            "index.json's; set it for a clip-retrieval folder)")
    _device_flags(p)

    p = verbs.add_parser("card", help="a dataset card for an ImageFolder of your own test images")
    p.add_argument("--imagefolder", required=True, help="folder of class folders holding images")
    p.add_argument("--name", required=True, help="the card's name")
    p.add_argument("--out", required=True, help="the YAML to write")
    p.add_argument("--classnames", default=None, help="a text file with one class name per line, in the sorted "
                                                      "order of the class folders (default: the folder names)")
    p.add_argument("--templates", default="clip", help="'clip' (CLIP's 80 ImageNet prompts, as the ImageNet "
                                                       "card), 'simple' ('a photo of a {}.') or a text file with "
                                                       "one template per line, each holding {} (default clip)")

    p = verbs.add_parser("demo-corpus", help="a generated captioned corpus with planted concepts + a tiny card")
    p.add_argument("--out", required=True)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)

    p = verbs.add_parser("demo", help="offline: generated corpus -> embed -> index -> make customize (loopback "
                                      "download, tiny training, eval) -> report; prints the measured precision")
    p.add_argument("--out", required=True, help="the demo's folder (recreated)")
    p.add_argument("--mode", default="text-to-image", choices=["text-to-image", "text-to-text"])
    p.add_argument("--per-class", type=int, default=15, help="default 15: the concept images each class has")
    p.add_argument("--epochs", type=int, default=4)
    return parser


def _device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", default=None, help="fp32, amp, amp_bf16, fp16, bf16 (default: amp on a GPU, "
                                                     "fp32 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        result = _run(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


def _run(args: argparse.Namespace):
    if args.verb == "embed":
        from retrieval.embed import EmbedOptions, run_embed
        from retrieval.layout import parse_modalities

        manifest = run_embed(args.shards, args.out, args.model, EmbedOptions(
            modalities=parse_modalities(args.modality), device=args.device, precision=args.precision,
            batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress))
        return None if manifest is None else {k: manifest[k] for k in ("model", "dim", "modalities", "count",
                                                                        "skipped")}
    if args.verb == "index":
        from retrieval.faiss_index import build_indices
        from retrieval.layout import parse_memory

        return build_indices(args.index_dir, parse_memory(args.max_index_memory), args.index_key)["indices"]
    if args.verb == "query":
        from retrieval.query import QueryOptions, run_query

        stats = run_query(args.index, args.dataset, args.out, QueryOptions(
            mode=args.mode, per_class=args.per_class, per_prompt=args.per_prompt, dedup=args.dedup,
            model=args.model, nprobe=args.nprobe, device=args.device, precision=args.precision, progress=not args.no_progress))
        for name, count in stats["short_classes"].items():
            print(f"warning: class {name!r} got {count} of {args.per_class} images", file=sys.stderr)
        return {k: stats[k] for k in ("dataset", "mode", "pairs", "duplicates", "short_classes")}
    if args.verb == "card":
        from retrieval.usercard import write_imagefolder_card

        path = write_imagefolder_card(args.imagefolder, args.name, args.out, args.classnames, args.templates)
        return {"card": str(path)}
    if args.verb == "demo-corpus":
        from retrieval.demo_corpus import write_demo_corpus

        return write_demo_corpus(args.out, shards=args.shards, samples_per_shard=args.samples_per_shard,
                                 seed=args.seed)
    if args.verb == "demo":
        from retrieval.demo import run_demo

        return run_demo(args.out, per_class=args.per_class, mode=args.mode, epochs=args.epochs)
    raise AssertionError(args.verb)
