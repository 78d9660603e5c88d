"""``cache {ls,prune}``: what the cache folder (HARNESS_CACHE) holds, and pruning it."""
from __future__ import annotations

import time
from pathlib import Path

from harness.cli.common import Verb


class Cache(Verb):
    name = "cache"
    help = "what the cache folder (HARNESS_CACHE) holds, and pruning it"

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("ls", "prune"))
        parser.add_argument("--cache", type=Path, default=None, help="cache folder (default ./cache or HARNESS_CACHE)")
        parser.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                            help="prune: only entries not used for DAYS days (default: all)")
        parser.add_argument("--kind", action="append", choices=("pixels", "features", "classifiers", "sha256"),
                            help="prune: only this kind (repeatable; default: all)")
        parser.add_argument("--dry-run", action="store_true", help="prune: list what would be removed")

    def run(self, args):
        from harness.core.units import human_bytes
        from harness.store.entries import KINDS, list_cache, prune

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


VERBS = [Cache()]
