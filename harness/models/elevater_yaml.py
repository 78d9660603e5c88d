"""The ELEVATER toolkit's model YAMLs (``vision_benchmark/resources/model/*.yaml``), in and out.

In: :func:`resolve_model_card` takes a card name, a card YAML, or a toolkit model YAML as it is (a top-level ``MODEL:``
mapping with ``NAME``) and gives a :class:`ModelCard`. A toolkit YAML's architecture is built from its SPEC as the
toolkit reads it (Elevater_Toolkit_IC 00d0af7), never guessed from a name:

- ``MODEL.NAME`` picks the code (``evaluation/feature.py: get_model``): ``clip_react`` is
  ``models/clip_react.py: get_zeroshot_model``, built from the SPEC; an OpenAI name (``ViT-B/32`` ...) is the ``clip``
  package's ``clip.load(NAME)``, which ignores the SPEC (:data:`OPENAI_VIT`); other families are refused.
- Defaults (``clip_react.py``): VISION.HEADS = WIDTH // 64, VISION.MLP_RATIO 4, USE_QUICK_GELU true (both towers),
  VISION/TEXT.USE_RCP_BLOCK false, RCP_BLOCK.USE_LAST_K -1 (every layer), GUMBEL_SAMPLE false, USE_FFN true,
  RCP_BLOCK.WIDTH = VISION.WIDTH, POOL_TYPE ``default``; the text vocabulary is the clip tokenizer's 49408
  (TEXT.VOCAB_SIZE is never read). ``config/default.py``: TEXT.CONTEXT_LENGTH 77, TRAIN.IMAGE_SIZE [224, 224] (the
  model's resolution is IMAGE_SIZE[0]), INPUT.MEAN/STD ImageNet's. Images: Resize(IMAGE_SIZE[0], bicubic) + crop.
- ``TEST.MODEL_FILE``: ``hf:<repo>:<file>`` is a Hugging Face Hub file; otherwise a path (here: relative to the YAML's
  folder); empty: an OpenAI name's own weights.

A SPEC equal to a built-in OpenCLIP/REACT config (compared with OpenCLIP's defaults filled in) reuses its name; any
other is registered in memory as ``elevater-<hash8>`` / ``react_elevater-<hash8>`` (harness.models.factory).

Out (a card -> the toolkit YAML that runs it): :mod:`harness.models.elevater_export`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.cards import ElevaterModelFields, ModelCard, PreprocessSpec, WeightsSpec, content_hash, get_model_card
from harness.core.errors import HarnessError, did_you_mean

logger = logging.getLogger(__name__)

CLIP_REACT = "clip_react"  # the one toolkit model code built from a SPEC that this harness builds
GENERATED_PREFIX = "elevater-"
CLIP_VOCAB_SIZE = 49408  # datasets/languages/simple_tokenizer.py: get_vocab_size()
DEFAULT_IMAGE_SIZE = 224  # config/default.py: TRAIN.IMAGE_SIZE
DEFAULT_MEAN = (0.485, 0.456, 0.406)  # config/default.py: INPUT.MEAN / INPUT.STD
DEFAULT_STD = (0.229, 0.224, 0.225)
# The clip package's ViT models: (EMBED_DIM, resolution, PATCH_SIZE, vision WIDTH, LAYERS, text WIDTH, LAYERS). Its
# build_model reads them from OpenAI's checkpoints, with heads = width // 64 in both towers and QuickGELU throughout.
OPENAI_VIT = {
    "ViT-B/32": (512, 224, 32, 768, 12, 512, 12),
    "ViT-B/16": (512, 224, 16, 768, 12, 512, 12),
    "ViT-L/14": (768, 224, 14, 1024, 24, 768, 12),
    "ViT-L/14@336px": (768, 336, 14, 1024, 24, 768, 12),
}
# What clip_react.py reads (anything else is a typo the toolkit would silently ignore).
_KEYS = {
    "MODEL.SPEC": {"EMBED_DIM", "USE_QUICK_GELU", "VISION", "TEXT", "RCP_BLOCK", "POOL_TYPE", "SKIP_CLS"},
    "MODEL.SPEC.VISION": {"MODEL", "PATCH_SIZE", "WIDTH", "LAYERS", "HEADS", "MLP_RATIO", "DROP_PATH", "USE_RCP_BLOCK"},
    "MODEL.SPEC.TEXT": {"TOKENIZER", "STYLE", "CONTEXT_LENGTH", "VOCAB_SIZE", "WIDTH", "HEADS", "LAYERS",
                        "USE_RCP_BLOCK"},
    "MODEL.SPEC.RCP_BLOCK": {"MODE", "GUMBEL_SAMPLE", "USE_LAST_K", "USE_FFN", "WIDTH", "DROP_PATH",
                             "NUM_PROMPT_TOKENS"},
}
_REQUIRED = object()


@dataclass(frozen=True)
class Architecture:
    """What a SPEC builds: an OpenCLIP config (no react_cfg), QuickGELU, and REACT's gated blocks (last k layers)."""
    config: dict
    quick_gelu: bool
    react_last_k: int | None

    @property
    def full_config(self) -> dict:
        cfg = copy.deepcopy(self.config)
        if self.react_last_k:
            cfg["vision_cfg"]["react_cfg"] = {"enabled": True, "last_k_layers": self.react_last_k}
        return cfg


# ----------------------------------------------------------------------------------------------------------------------
# SPEC -> architecture

def _get(node: Mapping, key: str, types: type | tuple, where: str, default: Any = _REQUIRED) -> Any:
    if key not in node or node[key] is None:
        if default is _REQUIRED:
            raise HarnessError(f"{where}.{key} is missing: the toolkit requires it (it has no default).")
        return default
    value, allowed = node[key], types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise HarnessError(f"{where}.{key}: expected {' or '.join(t.__name__ for t in allowed)}, found {value!r}.")
    return value


def _section(node: Mapping, key: str, where: str, default: Any = _REQUIRED) -> dict:
    """A mapping of the SPEC; keys clip_react.py does not read are errors (``where`` is '<file>: <dotted path>')."""
    value = _get(node, key, dict, where, default)
    label = f"{where.rsplit(': ', 1)[-1]}.{key}"
    unknown = sorted(set(value) - _KEYS[label])
    if unknown:
        raise HarnessError(f"{where}.{key}: keys the toolkit does not read: {', '.join(unknown)} (a typo? "
                           f"it reads {', '.join(sorted(_KEYS[label]))}).")
    return value


def _positive(node: Mapping, key: str, where: str, default: Any = _REQUIRED) -> int:
    value = _get(node, key, int, where, default)
    if value < 1:
        raise HarnessError(f"{where}.{key} must be at least 1, found {value}.")
    return value


def _expect(value: Any, wanted: Any, what: str, where: str) -> None:
    if value != wanted:
        raise HarnessError(f"{where}: {what} is {value!r}; this harness builds only {wanted!r} (REACT's gated-image "
                           f"architecture on OpenCLIP ViTs).")


def _unsupported_name(name: str, where: str) -> str:
    return (f"{where}: MODEL.NAME '{name}' is not supported. This harness builds the toolkit's '{CLIP_REACT}' "
            f"(from MODEL.SPEC) and the clip package's OpenAI ViTs ({', '.join(OPENAI_VIT)}); the toolkit's other "
            f"families (torchvision/timm names, cls_*, mae_*, declip_*, mocov3_*, clip_example, clip_swin, OpenAI "
            f"ResNets) are not.{did_you_mean(name, [CLIP_REACT, *OPENAI_VIT])}")


def spec_architecture(model_name: str, spec: Mapping, image_size: int, where: str) -> Architecture:
    """The architecture the toolkit builds for MODEL.NAME + MODEL.SPEC at TRAIN.IMAGE_SIZE; HarnessError naming
    ``where`` for anything this harness does not build the same way."""
    if model_name in OPENAI_VIT:
        embed, res, patch, width, layers, t_width, t_layers = OPENAI_VIT[model_name]
        if image_size != res:
            raise HarnessError(f"{where}: MODEL.NAME {model_name} is the clip package's {res}px model but "
                               f"TRAIN.IMAGE_SIZE is {image_size}: set TRAIN.IMAGE_SIZE: [{res}, {res}].")
        logger.info("%s: MODEL.NAME %s is the clip package's model; the toolkit ignores MODEL.SPEC", where, model_name)
        spec = {"EMBED_DIM": embed, "VISION": {"MODEL": "vit", "PATCH_SIZE": patch, "WIDTH": width, "LAYERS": layers},
                "TEXT": {"TOKENIZER": "clip", "STYLE": "clip", "WIDTH": t_width, "HEADS": t_width // 64,
                         "LAYERS": t_layers}}
    elif model_name != CLIP_REACT:
        raise HarnessError(_unsupported_name(model_name, where))
    w = f"{where}: MODEL.SPEC"
    spec = _section({"SPEC": spec}, "SPEC", f"{where}: MODEL")
    vision, text = _section(spec, "VISION", w), _section(spec, "TEXT", w)
    wv, wt = f"{w}.VISION", f"{w}.TEXT"
    _expect(_get(vision, "MODEL", str, wv), "vit", "VISION.MODEL", where)
    width, layers, patch = _positive(vision, "WIDTH", wv), _positive(vision, "LAYERS", wv), _positive(
        vision, "PATCH_SIZE", wv)
    heads = _positive(vision, "HEADS", wv, width // 64)  # the toolkit's default: WIDTH // 64
    if width % heads:
        raise HarnessError(f"{wv}: WIDTH {width} is not divisible by HEADS {heads}.")
    mlp_ratio = float(_get(vision, "MLP_RATIO", (int, float), wv, 4))
    _expect(_get(spec, "POOL_TYPE", str, w, "default"), "default", "POOL_TYPE", where)
    quick_gelu = _get(spec, "USE_QUICK_GELU", bool, w, True)
    _expect(_get(text, "STYLE", str, wt), "clip", "TEXT.STYLE", where)
    _expect(_get(text, "TOKENIZER", str, wt), "clip", "TEXT.TOKENIZER", where)
    _expect(_get(text, "VOCAB_SIZE", int, wt, CLIP_VOCAB_SIZE), CLIP_VOCAB_SIZE,
            "TEXT.VOCAB_SIZE (the toolkit takes the clip tokenizer's)", where)
    _expect(_get(text, "USE_RCP_BLOCK", bool, wt, False), False, "TEXT.USE_RCP_BLOCK", where)
    t_width, t_heads = _positive(text, "WIDTH", wt), _positive(text, "HEADS", wt)
    if t_width % t_heads:
        raise HarnessError(f"{wt}: WIDTH {t_width} is not divisible by HEADS {t_heads}.")
    last_k = None
    if _get(vision, "USE_RCP_BLOCK", bool, wv, False):
        rcp, wr = _section(spec, "RCP_BLOCK", w, {}), f"{w}.RCP_BLOCK"
        _expect(_get(rcp, "MODE", str, wr), "gated_attn", "RCP_BLOCK.MODE", where)
        _expect(_get(rcp, "GUMBEL_SAMPLE", bool, wr, False), False, "RCP_BLOCK.GUMBEL_SAMPLE", where)
        _expect(_get(rcp, "USE_FFN", bool, wr, True), True, "RCP_BLOCK.USE_FFN", where)
        _expect(_get(rcp, "WIDTH", int, wr, width), width, "RCP_BLOCK.WIDTH (VISION.WIDTH: no block projection)",
                where)
        last_k = _get(rcp, "USE_LAST_K", int, wr, -1)
        last_k = layers if last_k == -1 else last_k  # the toolkit's -1: every layer
        if not 1 <= last_k <= layers:
            raise HarnessError(f"{wr}.USE_LAST_K must be -1 or 1..{layers} (VISION.LAYERS), found {last_k}.")
    vision_cfg = {"image_size": image_size, "layers": layers, "width": width, "head_width": width // heads,
                  "patch_size": patch}
    if mlp_ratio != 4.0:
        vision_cfg["mlp_ratio"] = mlp_ratio
    config = {"embed_dim": _positive(spec, "EMBED_DIM", w), "vision_cfg": vision_cfg,
              "text_cfg": {"context_length": _positive(text, "CONTEXT_LENGTH", wt, 77), "vocab_size": CLIP_VOCAB_SIZE,
                           "width": t_width, "heads": t_heads, "layers": _positive(text, "LAYERS", wt)}}
    if quick_gelu:
        config["quick_gelu"] = True
    return Architecture(config=config, quick_gelu=quick_gelu, react_last_k=last_k)


def normalized_config(config: Mapping) -> dict | None:
    """A config with OpenCLIP's defaults filled in (quick_gelu apart); None when OpenCLIP's config classes reject it."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from harness.models.react import parse_react_cfg

    vision = dict(config.get("vision_cfg") or {})
    try:
        last_k = parse_react_cfg(vision.pop("react_cfg", None))
        v = dataclasses.asdict(CLIPVisionCfg(**vision))
        t = dataclasses.asdict(CLIPTextCfg(**(config.get("text_cfg") or {})))
    except (TypeError, ValueError):
        return None
    if isinstance(v["image_size"], (list, tuple)) and len(set(v["image_size"])) == 1:
        v["image_size"] = v["image_size"][0]
    rest = {k: val for k, val in config.items() if k not in ("vision_cfg", "text_cfg", "quick_gelu")}
    return {"vision": v, "text": t, "rest": rest, "react_last_k": last_k}


def _builtin_name(arch: Architecture) -> str | None:
    """The built-in OpenCLIP/REACT config equal to ``arch`` (one without quick_gelu preferred: cards force it)."""
    import open_clip

    from harness.models import factory

    target = normalized_config(arch.full_config)
    if arch.react_last_k:
        pool = {n: a.config for n, a in factory.react_architectures().items()}
    else:
        factory.register_project_configs()
        pool = {n: open_clip.get_model_config(n) for n in open_clip.list_models() if not n.startswith(GENERATED_PREFIX)}
    found = sorted((bool(cfg.get("quick_gelu")), name) for name, cfg in pool.items()
                   if (arch.quick_gelu or not cfg.get("quick_gelu")) and normalized_config(cfg) == target)
    return found[0][1] if found else None


def architecture_name(arch: Architecture) -> str:
    """A buildable name for ``arch``: a built-in config's, else ``[react_]elevater-<hash8>`` registered now."""
    from harness.models import factory

    name = _builtin_name(arch)
    if name is not None:
        return name
    digest = content_hash(arch.full_config)[:8]
    if arch.react_last_k:
        return factory.register_config(f"react_{GENERATED_PREFIX}{digest}", arch.config, arch.react_last_k)
    return factory.register_config(f"{GENERATED_PREFIX}{digest}", arch.config)


# ----------------------------------------------------------------------------------------------------------------------
# toolkit YAML -> model card

def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def read_toolkit_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """A toolkit YAML as the toolkit merges it: its ``BASE`` files (relative to it) first, then the file itself."""
    import yaml

    from harness.core.safe_read import load_yaml

    path = Path(path)
    if path.resolve() in _seen:
        raise HarnessError(f"{path}: BASE includes form a cycle ({' -> '.join(map(str, _seen))}).")
    try:  # bounded: a regular file (BASE: ['/dev/zero'] is refused by type) of at most KINDS["toolkit"] bytes
        data = load_yaml(path, "toolkit")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise HarnessError(f"Could not read toolkit model YAML {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a mapping at the top of a toolkit model YAML.")
    merged: dict = {}
    for base in data.get("BASE") or []:
        if base:
            merged = _merge(merged, read_toolkit_yaml(path.parent / base, (*_seen, path.resolve())))
    return _merge(merged, {k: v for k, v in data.items() if k != "BASE"})


def _image_size(data: Mapping, where: str) -> int:
    size = (data.get("TRAIN") or {}).get("IMAGE_SIZE", [DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE])
    if (not isinstance(size, (list, tuple)) or not 1 <= len(size) <= 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise HarnessError(f"{where}: TRAIN.IMAGE_SIZE must be [size, size], found {size!r}.")
    if len(set(size)) != 1:
        raise HarnessError(f"{where}: TRAIN.IMAGE_SIZE {list(size)} is not square; the toolkit builds the model at "
                           f"IMAGE_SIZE[0] and crops to IMAGE_SIZE, so only square sizes work.")
    return size[0]


def _triple(data: Mapping, key: str, default: tuple, where: str) -> tuple[float, float, float]:
    value = (data.get("INPUT") or {}).get(key, list(default))
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise HarnessError(f"{where}: INPUT.{key} must be 3 numbers (R, G, B), found {value!r}.")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _weights(model_file: str, model_name: str, yaml_path: Path, where: str) -> WeightsSpec:
    if not model_file:
        if model_name in OPENAI_VIT:
            return WeightsSpec(source="openclip", tag="openai")  # clip.load(NAME): OpenAI's own weights
        raise HarnessError(f"{where}: TEST.MODEL_FILE is empty; the toolkit's {model_name} loads its weights from it. "
                           f"Name the checkpoint: 'hf:<repo>:<file>' or a path.")
    if model_file.startswith("hf:"):
        parts = model_file.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise HarnessError(f"{where}: TEST.MODEL_FILE '{model_file}' is not 'hf:<repo>:<file>'.")
        return WeightsSpec(source="hf-hub", repo=parts[1], file=parts[2])
    if "://" in model_file:
        raise HarnessError(f"{where}: TEST.MODEL_FILE '{model_file}' is a URL; download it and name the file.")
    path = Path(model_file).expanduser()
    path = (path if path.is_absolute() else yaml_path.parent / path).resolve()
    if model_name == CLIP_REACT and path.suffix not in (".pt", ".pth"):
        raise HarnessError(f"{where}: TEST.MODEL_FILE {path}: the toolkit's {CLIP_REACT} reads .pt/.pth checkpoints "
                           f"(its .pkl form is not read here).")
    return WeightsSpec(source="local", path=str(path), file=path.name)


def card_from_toolkit_yaml(path: str | os.PathLike) -> ModelCard:
    """The in-memory model card of a toolkit model YAML (name: the file's stem)."""
    import open_clip

    path = Path(path)
    data, where = read_toolkit_yaml(path), str(path)
    model = data.get("MODEL")
    if not isinstance(model, dict) or not isinstance(model.get("NAME"), str):
        raise HarnessError(f"{where}: a toolkit model YAML needs MODEL.NAME.")
    if model.get("USE_CLS_BIAS"):
        raise HarnessError(f"{where}: MODEL.USE_CLS_BIAS adds a per-class bias this harness does not build.")
    name, spec = model["NAME"], model.get("SPEC") or {}
    image_size = _image_size(data, where)
    arch = spec_architecture(name, spec, image_size, where)
    model_file = (data.get("TEST") or {}).get("MODEL_FILE") or ""
    weights = _weights(str(model_file), name, path, where)
    architecture = architecture_name(arch)
    if weights.source == "openclip" and not open_clip.get_pretrained_cfg(architecture, weights.tag):
        raise HarnessError(f"{where}: OpenCLIP has no '{weights.tag}' weights for {architecture}; set TEST.MODEL_FILE.")
    logger.info("%s: toolkit %s -> architecture %s (%s), weights %s", where, name, architecture,
                f"gated blocks in the last {arch.react_last_k} vision layers" if arch.react_last_k else "no gated blocks",
                weights.identity)
    return ModelCard(
        name=path.stem, description=f"ELEVATER toolkit model YAML {path}", architecture=architecture,
        weights=weights,
        preprocess=PreprocessSpec(image_size=image_size, mean=_triple(data, "MEAN", DEFAULT_MEAN, where),
                                  std=_triple(data, "STD", DEFAULT_STD, where), interpolation="bicubic",
                                  resize_mode="shortest", quick_gelu=arch.quick_gelu),
        method="gated-image" if arch.react_last_k else "baseline", base_model=None, retrieval_set=None, published={},
        published_source=None,
        elevater=ElevaterModelFields(yaml=path.name, MODEL_NAME=name, MODEL_SPEC=copy.deepcopy(spec),
                                     TEST_MODEL_FILE=str(model_file)),
        path=path)


def is_toolkit_yaml(path: str | os.PathLike) -> bool:
    """True for a YAML file with a top-level ``MODEL:`` mapping holding ``NAME`` (or toolkit ``BASE`` includes)."""
    import yaml

    from harness.core.safe_read import load_yaml

    path = Path(path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:  # read as a card may be; one too large or deep is left to the card reader, which refuses it in one line
        data = load_yaml(path, "card")
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8, or refused (harness.core.safe_read)
        return False
    return isinstance(data, dict) and ("BASE" in data or (isinstance(data.get("MODEL"), dict)
                                                          and "NAME" in data["MODEL"]))


def resolve_model_card(name_or_path: str | os.PathLike) -> ModelCard:
    """A model card from a card name, a card YAML, or an ELEVATER toolkit model YAML."""
    if is_toolkit_yaml(name_or_path):
        return card_from_toolkit_yaml(name_or_path)
    return get_model_card(str(name_or_path))
