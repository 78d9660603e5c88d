"""REACT's ``--pretrained`` tags and base checkpoints.

The REACT README evaluates released checkpoints with ``--model react_ViT-B-32 --pretrained react_clip_ret_laion400m``
(format ``react_{base}_ret_{retrieval set}``). Each (model, tag) pair maps to one of our model cards, which knows the
Hugging Face file and the preprocessing; the tags are also registered in open_clip's pretrained registry so plain
``open_clip.create_model(..., pretrained=tag)`` finds them online. Tags starting with ``react_clip_`` force QuickGELU
(OpenAI CLIP was trained with it), as REACT's fork does.

``python -m training.export_base`` writes the plain state dict that the README's ``--resume ./checkpoints/ViT-B-32.pt``
expects but never explains how to make.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# (--model, --pretrained) -> model card. From react.json's released_checkpoints.
REACT_TAGS: dict[tuple[str, str], str] = {
    ("ViT-B-32", "react_clip_ret_laion400m"): "react_vitb32_CLIP_locked_text",
    ("ViT-B-32", "react_openclip_laion400m_ret_laion400m"): "react_vitb32_OpenCLIP_laion400m_locked_text",
    ("ViT-B-32", "react_openclip_laion2b_ret_laion400m"): "react_vitb32_OpenCLIP_laion2b_locked_text",
    ("react_ViT-B-32", "react_clip_ret_laion400m"): "react_vitb32_CLIP",
    ("react_ViT-B-32", "react_openclip_laion400m_ret_laion400m"): "react_vitb32_OpenCLIP_laion400m_gated_image",
    ("react_ViT-B-32", "react_openclip_laion2b_ret_laion400m"): "react_vitb32_OpenCLIP_laion2b_gated_image",
    ("ViT-B-16", "react_clip_ret_laion400m"): "react_vitb16_CLIP_locked_text",
    ("react_ViT-B-16", "react_clip_ret_laion400m"): "react_vitb16_CLIP",
    ("react_ViT-L-14", "react_clip_ret_laion400m"): "react_vitl14_CLIP",
    ("react_ViT-L-14", "react_clip_ret_laion2b"): "react_vitl14_CLIP_ret_laion2b",
    ("react_ViT-L-14", "react_openclip_laion2b_ret_laion400m"): "react_vitl14_OpenCLIP_laion2b_gated_image",
    ("react_ViT-L-14", "react_openclip_laion2b_ret_laion2b"): "react_vitl14_OpenCLIP_laion2b_gated_image_ret_laion2b",
    ("react_ViT-bigG-14", "react_openclip_laion2b_ret_laion2b"): "react_vitG14_OpenCLIP",
}
# The customization README calls the bigG models ViT-G-14 / react_ViT-G-14; the real configs are *bigG*.
MODEL_ALIASES = {"react_ViT-G-14": "react_ViT-bigG-14", "ViT-G-14": "ViT-bigG-14"}


def canonical_model_name(name: str) -> str:
    if name in MODEL_ALIASES:
        logger.info("--model %s is REACT's name for %s", name, MODEL_ALIASES[name])
    return MODEL_ALIASES.get(name, name)


def react_card_for(model: str, tag: str) -> str | None:
    """The model card of a REACT (model, tag) pair; '-quickgelu' model variants map like their base."""
    model = canonical_model_name(model)
    return REACT_TAGS.get((model, tag)) or REACT_TAGS.get((model.replace("-quickgelu", ""), tag))


def register_react_pretrained() -> None:
    """Add REACT's tags to open_clip's pretrained registry (idempotent)."""
    import open_clip.pretrained as p

    from harness.cards import get_model_card

    for (model, tag), card_name in REACT_TAGS.items():
        card = get_model_card(card_name)
        entry = p._pcfg(hf_hub=f"{card.weights.repo}/{card.weights.file}", quick_gelu=card.preprocess.quick_gelu,
                        mean=card.preprocess.mean, std=card.preprocess.std)
        for name in {model, f"{model}-quickgelu"} if card.preprocess.quick_gelu else {model}:
            p._PRETRAINED.setdefault(name, {}).setdefault(tag, entry)
