"""A model card -> the ELEVATER toolkit model YAML that runs the official toolkit on the same architecture and weights
(``python -m harness export-elevater``). What the toolkit reads, and its defaults: :mod:`harness.models.elevater_yaml`.

- MODEL.NAME / SPEC: the card's ``elevater`` section, checked against the card's architecture; for cards without one,
  a ``clip_react`` SPEC derived from the architecture's config (HEADS and USE_QUICK_GELU always written), refused for
  what ``clip_react`` cannot build (ResNets, attentional pooling, other tokenizers, layer scale, ...).
- TEST.MODEL_FILE: ``hf:<repo>:<file>`` for Hugging Face weights (an OpenCLIP tag: its repo's
  ``open_clip_pytorch_model.bin``, which the toolkit's ``torch.load`` reads), the resolved path for local weights or
  ``--weights``, empty for OpenAI's weights under an OpenAI name; random weights need ``--weights``.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path

from harness.cards import ModelCard
from harness.core.errors import HarnessError
from harness.models.elevater_yaml import (CLIP_REACT, CLIP_VOCAB_SIZE, OPENAI_VIT, Architecture, normalized_config,
                                          spec_architecture)

logger = logging.getLogger(__name__)

# OpenCLIP config fields a toolkit SPEC can express (everything else must be OpenCLIP's default to export).
_SPEC_VISION = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "patch_dropout"}
_SPEC_TEXT = {"context_length", "vocab_size", "width", "heads", "layers"}


def card_architecture(card: ModelCard) -> Architecture:
    """What a card builds: its architecture's config at the card's image size and QuickGELU setting."""
    from harness.models import factory
    from harness.models.react import parse_react_cfg

    cfg = factory.model_config(factory.architecture_of(card))
    last_k = parse_react_cfg(cfg["vision_cfg"].pop("react_cfg", None)) or None
    cfg["vision_cfg"]["image_size"] = card.preprocess.image_size
    quick_gelu = bool(card.preprocess.quick_gelu or cfg.pop("quick_gelu", False))
    if quick_gelu:
        cfg["quick_gelu"] = True
    return Architecture(config=cfg, quick_gelu=quick_gelu, react_last_k=last_k)


def same_architecture(a: Architecture, b: Architecture) -> bool:
    return a.quick_gelu == b.quick_gelu and normalized_config(a.full_config) == normalized_config(b.full_config)


def spec_for(arch: Architecture, where: str) -> dict:
    """The clip_react SPEC of an architecture; HarnessError when the toolkit's clip_react cannot build it."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    n = normalized_config(arch.full_config)
    if n is None:
        raise HarnessError(f"{where}: its config is not an OpenCLIP CLIP config; the toolkit cannot build it.")
    v, t = n["vision"], n["text"]
    dv, dt = dataclasses.asdict(CLIPVisionCfg()), dataclasses.asdict(CLIPTextCfg())
    differ = [f"vision_cfg.{k}={v[k]!r}" for k in v if k not in _SPEC_VISION and v[k] != dv[k]]
    differ += [f"text_cfg.{k}={t[k]!r}" for k in t if k not in _SPEC_TEXT and t[k] != dt[k]]
    differ += [f"{k}={val!r}" for k, val in n["rest"].items() if k != "embed_dim"]
    if not isinstance(v["layers"], int) or not isinstance(v["image_size"], int):
        differ.append(f"vision_cfg.layers={v['layers']!r} / image_size={v['image_size']!r} (a ResNet or non-square "
                      f"tower)")
    if t["vocab_size"] != CLIP_VOCAB_SIZE:
        differ.append(f"text_cfg.vocab_size={t['vocab_size']} (the toolkit's clip tokenizer has {CLIP_VOCAB_SIZE})")
    if not differ and v["width"] % v["head_width"]:
        differ.append(f"vision width {v['width']} is not a multiple of head_width {v['head_width']}")
    if differ:
        raise HarnessError(f"{where}: the toolkit's {CLIP_REACT} cannot build this architecture ({'; '.join(differ)});"
                           f" it builds plain CLIP ViTs (ln_pre, CLS token, argmax text pooling, clip tokenizer) with "
                           f"optional REACT gated blocks. Export refused.")
    vision = {"MODEL": "vit", "PATCH_SIZE": v["patch_size"], "WIDTH": v["width"], "LAYERS": v["layers"],
              "HEADS": v["width"] // v["head_width"]}
    if float(v["mlp_ratio"]) != 4.0:
        vision["MLP_RATIO"] = v["mlp_ratio"]
    vision["USE_RCP_BLOCK"] = bool(arch.react_last_k)
    spec = {"EMBED_DIM": n["rest"]["embed_dim"], "USE_QUICK_GELU": arch.quick_gelu, "VISION": vision,
            "TEXT": {"TOKENIZER": "clip", "STYLE": "clip", "CONTEXT_LENGTH": t["context_length"],
                     "VOCAB_SIZE": t["vocab_size"], "WIDTH": t["width"], "HEADS": t["heads"], "LAYERS": t["layers"],
                     "USE_RCP_BLOCK": False}}
    if arch.react_last_k:
        spec["RCP_BLOCK"] = {"MODE": "gated_attn", "GUMBEL_SAMPLE": False, "USE_LAST_K": arch.react_last_k}
    return spec


def _model_file(card: ModelCard, weights: str | os.PathLike | None, model_name: str, where: str) -> str:
    import open_clip

    from harness.models.weights import resolve_weights

    w = card.weights
    if weights is not None or w.source == "local":
        return str(Path(resolve_weights(card, weights)).resolve())
    if w.source == "hf-hub":
        return f"hf:{w.repo}:{w.file}"
    if w.source == "openclip":
        if w.tag == "openai" and model_name in OPENAI_VIT:
            return ""  # the toolkit's clip.load(NAME) loads OpenAI's weights itself
        pcfg = open_clip.get_pretrained_cfg(card.architecture, w.tag) or open_clip.get_pretrained_cfg(
            card.architecture.replace("-quickgelu", ""), w.tag)
        parts = (pcfg or {}).get("hf_hub", "").strip("/").split("/")
        if len(parts) >= 2:  # the toolkit torch.loads the file: OpenCLIP's .bin, not its safetensors
            return f"hf:{parts[0]}/{parts[1]}:{parts[2] if len(parts) > 2 else 'open_clip_pytorch_model.bin'}"
        raise HarnessError(f"{where}: open_clip tag '{w.tag}' has no Hugging Face file the toolkit can load; pass "
                           f"--weights FILE (a state dict).")
    raise HarnessError(f"{where}: its weights are seeded random (no file); the toolkit loads TEST.MODEL_FILE. Save the "
                       f"state dict (torch.save) and pass --weights FILE.")


def toolkit_yaml_for(card: ModelCard, weights: str | os.PathLike | None = None) -> dict:
    """The toolkit model YAML (as data) that runs a card's architecture on its weights (or ``weights``)."""
    where = f"model card '{card.name}'"
    own = card_architecture(card)
    if card.elevater is not None:
        name, spec = card.elevater.MODEL_NAME, copy.deepcopy(dict(card.elevater.MODEL_SPEC))
        said = spec_architecture(name, spec, card.preprocess.image_size, f"{where}: elevater section")
        if not same_architecture(said, own):
            raise HarnessError(f"{where}: its elevater section (MODEL_NAME {name}) builds {said.full_config} "
                               f"(quick_gelu {said.quick_gelu}) but its architecture {card.architecture} is "
                               f"{own.full_config} (quick_gelu {own.quick_gelu}); fix the card.")
    else:
        name, spec = CLIP_REACT, spec_for(own, f"{where} ({card.architecture})")
    model_file = _model_file(card, weights, name, where)
    if card.elevater is not None and card.elevater.TEST_MODEL_FILE != model_file:
        logger.info("%s: TEST.MODEL_FILE %r (the card's elevater section says %r)", where, model_file,
                    card.elevater.TEST_MODEL_FILE)
    pp = card.preprocess
    return {"INPUT": {"MEAN": list(pp.mean), "STD": list(pp.std)}, "MODEL": {"NAME": name, "SPEC": spec},
            "TEST": {"MODEL_FILE": model_file}, "TRAIN": {"IMAGE_SIZE": [pp.image_size, pp.image_size]}}


def export_toolkit_yaml(card: ModelCard, out_dir: str | os.PathLike, weights: str | os.PathLike | None = None
                        ) -> Path:
    """Write ``out_dir/<card.elevater.yaml or card name>.yaml``; returns its path."""
    import yaml

    from harness.core.atomic import atomic_write

    data = toolkit_yaml_for(card, weights)
    file_name = (card.elevater.yaml if card.elevater is not None and card.elevater.yaml else f"{card.name}.yaml")
    text = (f"# ELEVATER toolkit model YAML (vision_benchmark/resources/model/) for model card {card.name},\n"
            f"# written by `python -m harness export-elevater`.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    out = atomic_write(Path(out_dir) / file_name, lambda f: f.write(text), mode="w")
    logger.info("%s: wrote %s", card.name, out)
    return out
