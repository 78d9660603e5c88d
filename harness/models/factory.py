"""Build models by architecture name: OpenCLIP's configs, this project's configs, and the REACT architectures.

This is the public, explicit way to build a REACT model; nothing is registered or patched as a side effect of an
import:

- plain OpenCLIP names (``ViT-B-32``, ``ViT-B-32-quickgelu``) and this project's plain configs
  (``harness/models/configs/*.json``, e.g. the tiny test model; added through OpenCLIP's public ``add_model_config``
  the first time a model is built) build through ``open_clip.create_model_and_transforms``;
- REACT names (``react_ViT-B-32`` ...; ``harness/models/configs/react/*.json`` in the REACT fork's format: the base
  OpenCLIP config plus ``vision_cfg.react_cfg``) build their base model through OpenCLIP, then
  :func:`harness.models.react.insert_gated_blocks` adds the gated blocks to that instance.

The REACT README also calls the bigG models ``ViT-G-14`` / ``react_ViT-G-14``: :data:`ALIASES` maps them.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from harness import paths
from harness.errors import HarnessError, did_you_mean

logger = logging.getLogger(__name__)

REACT_PREFIX = "react_"
REACT_CONFIG_DIR = paths.MODEL_CONFIG_DIR / "react"
ALIASES = {"react_ViT-G-14": "react_ViT-bigG-14", "ViT-G-14": "ViT-bigG-14"}


@dataclass(frozen=True)
class ReactArchitecture:
    """A REACT architecture: an OpenCLIP base config with gated blocks in the last ``last_k_layers`` vision blocks."""
    name: str
    base: str
    last_k_layers: int
    config: dict  # the full config as the REACT fork writes it (base config + vision_cfg.react_cfg)


_registered = False
# Architectures registered in memory by register_config (e.g. built from an ELEVATER toolkit SPEC): REACT ones here,
# their plain base configs in OpenCLIP's registry (through add_model_config).
_registered_react: dict[str, ReactArchitecture] = {}


def register_project_configs() -> None:
    """Make this project's plain configs (harness/models/configs/*.json) known to OpenCLIP, once, through its public
    ``add_model_config``. Called by every builder below; harmless to call again."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(paths.MODEL_CONFIG_DIR)  # *.json in that folder only: react/ is read by us
    _registered = True


def canonical_name(name: str) -> str:
    """The registered name of an architecture (REACT's ViT-G-14 names are OpenCLIP's ViT-bigG-14)."""
    if name in ALIASES:
        logger.info("model %s is REACT's name for %s", name, ALIASES[name])
    return ALIASES.get(name, name)


@functools.lru_cache(maxsize=None)
def react_architectures() -> dict[str, ReactArchitecture]:
    """Every REACT architecture in harness/models/configs/react/ (the base is the name without ``react_``)."""
    from harness.models.react import parse_react_cfg

    out = {}
    for path in sorted(REACT_CONFIG_DIR.glob("*.json")):
        name = path.stem
        config = json.loads(path.read_text(encoding="utf-8"))
        if not name.startswith(REACT_PREFIX):
            raise HarnessError(f"{path}: REACT config names start with '{REACT_PREFIX}'.")
        try:
            k = parse_react_cfg(config.get("vision_cfg", {}).get("react_cfg"))
        except ValueError as exc:
            raise HarnessError(f"{path}: {exc}") from exc
        if not k:
            raise HarnessError(f"{path}: vision_cfg.react_cfg must be enabled with last_k_layers >= 1.")
        out[name] = ReactArchitecture(name=name, base=name[len(REACT_PREFIX):], last_k_layers=k, config=config)
    return out


def react_architecture(name: str) -> ReactArchitecture | None:
    name = canonical_name(name)
    return _registered_react.get(name) or react_architectures().get(name)


def register_config(name: str, openclip_config: dict, react_last_k: int | None = None) -> str:
    """Make an in-memory OpenCLIP config buildable under ``name`` in this process (returns ``name``).

    Plain (``react_last_k`` None): the config reaches OpenCLIP through its public ``add_model_config``, from
    ``<cache>/model_configs/<hash>/<name>.json`` (a content-addressed folder). REACT (``react_last_k`` >= 1): ``name``
    is ``react_<base>``; ``openclip_config`` (without react_cfg) is registered as above under ``<base>`` and the REACT
    architecture in this factory's own registry (OpenCLIP never sees a REACT name). Registering a name again with the
    same config does nothing; with another config, or over a different built-in config, is an error."""
    import open_clip

    from harness.atomic import write_json
    from harness.cards.schema import content_hash

    register_project_configs()
    config = copy.deepcopy(openclip_config)
    if "react_cfg" in config.get("vision_cfg", {}):
        raise HarnessError(f"register_config({name!r}): pass the base config and react_last_k, not a react_cfg.")
    if react_last_k is not None:
        if not name.startswith(REACT_PREFIX) or isinstance(react_last_k, bool) or int(react_last_k) < 1:
            raise HarnessError(f"register_config({name!r}, react_last_k={react_last_k!r}): REACT names start with "
                               f"'{REACT_PREFIX}' and last_k is at least 1.")
        register_config(name[len(REACT_PREFIX):], config)
        full = copy.deepcopy(config)
        full["vision_cfg"]["react_cfg"] = {"enabled": True, "last_k_layers": int(react_last_k)}
        known = react_architecture(name)
        if known is not None and known.config != full:
            raise HarnessError(f"Architecture '{name}' is already registered with another config.")
        _registered_react[name] = known or ReactArchitecture(name=name, base=name[len(REACT_PREFIX):],
                                                             last_k_layers=int(react_last_k), config=full)
        return name
    if name.startswith(REACT_PREFIX):
        raise HarnessError(f"register_config({name!r}): a REACT name needs react_last_k.")
    known = open_clip.get_model_config(name)
    if known is not None:
        if known != config:
            raise HarnessError(f"Architecture '{name}' is already registered with another config.")
        return name
    folder = paths.cache_dir() / "model_configs" / content_hash({"name": name, "config": config})
    write_json(folder / f"{name}.json", config)
    open_clip.add_model_config(folder)
    logger.debug("registered architecture %s from %s", name, folder)
    return name


def list_architectures() -> list[str]:
    """Every name :func:`create_model_and_transforms` builds."""
    import open_clip

    register_project_configs()
    return sorted(set(open_clip.list_models()) | set(react_architectures()) | set(_registered_react))


def base_config_of(arch: ReactArchitecture) -> dict:
    """The OpenCLIP config the REACT config extends; an error when OpenCLIP's differs from what the JSON says
    (a changed OpenCLIP config would otherwise silently build another model than the checkpoint's)."""
    import open_clip

    register_project_configs()
    base = open_clip.get_model_config(arch.base)
    if base is None:
        raise HarnessError(f"REACT architecture {arch.name}: OpenCLIP has no base config '{arch.base}'.")
    expected = copy.deepcopy(arch.config)
    expected["vision_cfg"] = {k: v for k, v in expected["vision_cfg"].items() if k != "react_cfg"}
    if expected != base:
        raise HarnessError(f"REACT architecture {arch.name}: {REACT_CONFIG_DIR / (arch.name + '.json')} no longer "
                           f"matches OpenCLIP's '{arch.base}' config ({json.dumps(base, sort_keys=True)}). "
                           f"OpenCLIP changed the base architecture: update the JSON deliberately.")
    return base


def _require_known(name: str) -> None:
    import open_clip

    if name not in open_clip.list_models():
        raise HarnessError(f"Architecture '{name}' is neither an OpenCLIP model config nor a REACT architecture."
                           f"{did_you_mean(name, list_architectures())} REACT architectures: "
                           f"{', '.join(react_architectures())}.")


class _DropRandomInitWarning(logging.Filter):
    """OpenCLIP warns "No pretrained weights loaded ... initialized randomly" for every model built without a tag;
    the harness always loads weights itself right after (and logs what it loaded), so that line only misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    f = _DropRandomInitWarning()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def _build(builder_name: str, name: str, kwargs: dict) -> Any:
    import open_clip

    from harness.models.react import insert_gated_blocks

    register_project_configs()
    name = canonical_name(name)
    kwargs = {"pretrained": None, **kwargs}
    arch = react_architecture(name)
    builder = getattr(open_clip, builder_name)
    with _quiet_random_init():
        if arch is None:
            _require_known(name)
            return builder(name, **kwargs)
        base_config_of(arch)
        out = builder(arch.base, **kwargs)
    model = out[0] if isinstance(out, tuple) else out
    insert_gated_blocks(model, arch.last_k_layers)
    return out


def create_model(name: str, **kwargs) -> Any:
    """``open_clip.create_model`` for every architecture of :func:`list_architectures` (same keyword arguments;
    ``pretrained`` defaults to None: weights are the caller's business, see harness.models.weights)."""
    return _build("create_model", name, kwargs)


def create_model_and_transforms(name: str, **kwargs) -> tuple[Any, Any, Any]:
    """``open_clip.create_model_and_transforms`` for every architecture of :func:`list_architectures`."""
    return _build("create_model_and_transforms", name, kwargs)


def get_tokenizer(name: str) -> Any:
    """The tokenizer of an architecture (a REACT model's is its base model's)."""
    import open_clip

    register_project_configs()
    arch = react_architecture(name)
    return open_clip.get_tokenizer(arch.base if arch else canonical_name(name))


def model_config(name: str) -> dict:
    """The config an architecture is built from (for docs and tests); REACT configs include their react_cfg."""
    import open_clip

    arch = react_architecture(name)
    if arch is not None:
        return copy.deepcopy(arch.config)
    register_project_configs()
    cfg = open_clip.get_model_config(canonical_name(name))
    if cfg is None:
        raise HarnessError(f"No model config '{name}'.{did_you_mean(name, list_architectures())}")
    return copy.deepcopy(cfg)
