"""Write a model card's weights as a plain state dict: the ``--resume`` base checkpoint of the REACT README.

    python -m training.export_base --card vitb32_CLIP --out checkpoints/ViT-B-32.pt

(OpenAI CLIP ViT-B/32 -> ``checkpoints/ViT-B-32.pt``, what ``--model ViT-B-32-quickgelu`` / ``react_ViT-B-32-quickgelu
--resume ./checkpoints/ViT-B-32.pt`` expect.) Weights come from the card's source (hub download when online) or a
local copy (``--weights``, ``HARNESS_WEIGHTS_<CARD>``, ``HARNESS_WEIGHTS_DIR``); offline without a copy it fails at
once and says how to point at one.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def export_base(card_name: str, out: Path, weights: str | None = None) -> Path:
    from harness.core.atomic import write_torch
    from harness.cards import get_model_card
    from harness.models import build_model

    loaded = build_model(get_model_card(card_name), weights)
    state = {k: v.detach().cpu().clone() for k, v in loaded.model.state_dict().items()}
    write_torch(out, state)
    return out


def main(argv: list[str] | None = None) -> int:
    from harness.core.errors import HarnessError

    parser = argparse.ArgumentParser(prog="python -m training.export_base", description=__doc__.splitlines()[0])
    parser.add_argument("--card", default="vitb32_CLIP", help="model card to export (default: vitb32_CLIP)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints/ViT-B-32.pt"))
    parser.add_argument("--weights", default=None, help="local weights file to use instead of the card's source")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = export_base(args.card, args.out, args.weights)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (plain state dict of model card {args.card})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
