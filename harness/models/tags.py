"""REACT's ``--pretrained`` tags: which model card a (``--model``, ``--pretrained``) pair of the REACT README names.

The pairs are data: each REACT model card lists its own under ``pretrained_tags`` (e.g. ``react_ViT-B-32`` +
``react_clip_ret_laion400m`` -> ``react_vitb32_CLIP``). Tags are resolved here to the card (hence its Hugging Face
file and preprocessing); OpenCLIP's pretrained registry is not touched.
"""
from __future__ import annotations

from harness.cards import ModelCard, all_model_cards
from harness.models.factory import canonical_name

QUICKGELU_SUFFIX = "-quickgelu"


def react_tag_cards() -> dict[tuple[str, str], ModelCard]:
    """(model, tag) -> the card that claims it (``harness validate`` checks that no pair is claimed twice)."""
    out: dict[tuple[str, str], ModelCard] = {}
    for card in all_model_cards():
        for t in card.pretrained_tags:
            out.setdefault((t.model, t.tag), card)
    return out


def react_card_for(model: str, tag: str) -> ModelCard | None:
    """The card of a REACT (model, tag) pair; a ``-quickgelu`` model name maps like its base name."""
    model = canonical_name(model)
    cards = react_tag_cards()
    return cards.get((model, tag)) or cards.get((model.removesuffix(QUICKGELU_SUFFIX), tag))


def react_tags() -> list[str]:
    return sorted({tag for _, tag in react_tag_cards()})
