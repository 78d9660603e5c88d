"""Command-line flags of ``python -m training.main``.

Every flag of OpenCLIP's trainer (open_clip_train.params) is accepted with OpenCLIP's name, default and meaning —
we hand those to OpenCLIP's own parser rather than keep a copy. REACT adds ``--lock-image-unlock-gated``; this
project adds a few flags of its own, all prefixed so they cannot collide with OpenCLIP's.
"""
from __future__ import annotations

import argparse
from typing import Sequence

REACT_FLAGS_HELP = "REACT and harness flags (OpenCLIP's trainer flags are accepted as well: see --help-openclip)"


def _react_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.main", add_help=False, allow_abbrev=False,
                                description="REACT customization (locked-text / gated-image tuning) on OpenCLIP.")
    g = p.add_argument_group(REACT_FLAGS_HELP)
    g.add_argument("-h", "--help", action="store_true", help="show this help (REACT flags) and exit")
    g.add_argument("--help-openclip", action="store_true", help="show OpenCLIP's trainer flags and exit")
    g.add_argument("--lock-image-unlock-gated", action="store_true",
                   help="REACT gated-image tuning: freeze the whole image tower except its gated blocks")
    g.add_argument("--react-always-checkpoint-gated", action="store_true",
                   help="checkpoint every gated block even without --grad-checkpointing (the original code's "
                        "behaviour; slower, less memory)")
    g.add_argument("--zeroshot-dataset", default=None,
                   help="evaluate zero-shot on this dataset card instead of ImageNet-1K (needs --zeroshot-data-root)")
    g.add_argument("--zeroshot-data-root", default=None,
                   help="data root (ELEVATER layout) for --zeroshot-dataset")
    g.add_argument("--zeroshot-protocol", choices=("openclip", "elevater"), default="openclip",
                   help="protocol of the periodic zero-shot eval (default openclip, as open_clip_train)")
    g.add_argument("--model-card-dir", default=None,
                   help="where to write the model card of the trained checkpoint (default: the first "
                        "HARNESS_MODEL_CARDS folder, else ./model_cards); 'none' to skip")
    g.add_argument("--model-card-name", default=None, help="name of that card (default: derived from --name)")
    g.add_argument("--base-model-card", default=None,
                   help="the model card this run starts from (recorded in the written card)")
    g.add_argument("--debug-rank-stats", action="store_true",
                   help="write logs/<name>/rank<R>_stats.json (sample keys read, losses, parameter checksum): "
                        "used by the DDP test")
    return p


def _quote_bare_aug_strings(argv: list[str]) -> list[str]:
    """OpenCLIP's --aug-cfg parser falls back to a plain string only on ValueError, so an unquoted
    ``auto_augment=rand-m9-mstd0.5-inc1`` (a SyntaxError for ast.literal_eval) crashes it with a traceback. Quote
    such values, as OpenCLIP intends ("avoid need to escape on command line")."""
    import ast

    out, in_aug = [], False
    for token in argv:
        if token.startswith("--"):
            in_aug = token == "--aug-cfg"
        elif in_aug and "=" in token:
            key, value = token.split("=", 1)
            try:
                ast.literal_eval(value)
            except (ValueError, SyntaxError):
                token = f"{key}={value!r}"
        out.append(token)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """REACT flags first (parse_known_args), the rest through OpenCLIP's own parser."""
    import sys

    from open_clip_train.params import parse_args as openclip_parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    react, rest = _react_parser().parse_known_args(_quote_bare_aug_strings(argv))
    if react.help:
        _react_parser().print_help()
        raise SystemExit(0)
    if react.help_openclip:
        openclip_parse_args(["--help"])
    args = openclip_parse_args(rest)
    for key, value in vars(react).items():
        if key not in ("help", "help_openclip"):
            setattr(args, key, value)
    return args
