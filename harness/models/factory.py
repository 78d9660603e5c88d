"""Build models by architecture name: OpenCLIP's configs, this project's configs, and the REACT architectures.

This is the public, explicit way to build a REACT model; nothing is registered or patched as a side effect of an
import:

- plain OpenCLIP names (``ViT-B-32``, ``ViT-B-32-quickgelu``) and this project's plain configs
  (``harness/models/configs/*.json``, e.g. the tiny test model; added through OpenCLIP's public ``add_model_config``
  the first time a model is built) build through ``open_clip.create_model_and_transforms``;
- REACT names (``react_ViT-B-32`` ...; ``harness/models/configs/react/*.json`` in the REACT fork's format: the base
  OpenCLIP config plus ``vision_cfg.react_cfg``) build their base model through OpenCLIP, then
  :func:`harness.models.react.insert_gated_blocks` adds the gated blocks to that instance;
- the user's own architectures (``HARNESS_MODEL_CONFIGS`` folders, a model card's ``architecture_config``), plain or
  REACT, are read and checked by :mod:`harness.models.user_configs` and then build like the ones above.

The REACT README also calls the bigG models ``ViT-G-14`` / ``react_ViT-G-14``: :data:`ALIASES` maps them.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import paths
from harness.core.errors import HarnessError, did_you_mean

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
    path: Path | None = field(default=None, compare=False)  # the JSON it was read from (None: built in memory)
    user: bool = field(default=False, compare=False)  # a user's file (HARNESS_MODEL_CONFIGS, a card's config)

    @classmethod
    def from_file(cls, cf: Any, user: bool) -> "ReactArchitecture":
        """From a :class:`harness.cards.model.ArchitectureConfig` with a react_cfg."""
        return cls(name=cf.name, base=cf.base, last_k_layers=cf.react_last_k, config=cf.config, path=cf.path,
                   user=user)


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


def _ensure_registered() -> None:
    """The project's plain configs and the user's architectures (HARNESS_MODEL_CONFIGS), before any lookup."""
    from harness.models import user_configs

    register_project_configs()
    user_configs.register_env_folders()


def canonical_name(name: str) -> str:
    """The registered name of an architecture (REACT's ViT-G-14 names are OpenCLIP's ViT-bigG-14)."""
    if name in ALIASES:
        logger.info("model %s is REACT's name for %s", name, ALIASES[name])
    return ALIASES.get(name, name)


@functools.lru_cache(maxsize=None)
def react_architectures() -> dict[str, ReactArchitecture]:
    """Every REACT architecture in harness/models/configs/react/ (the base is the name without ``react_``), read and
    checked as a user's REACT file is (:func:`harness.cards.model.read_architecture_config`)."""
    from harness.cards.model import read_architecture_config

    out = {}
    for path in sorted(REACT_CONFIG_DIR.glob("*.json")):
        cf = read_architecture_config(path)
        if not cf.react_last_k:
            raise HarnessError(f"{path}: the configs in {REACT_CONFIG_DIR} are REACT configs: vision_cfg.react_cfg "
                               f"must be enabled with last_k_layers >= 1.")
        out[cf.name] = ReactArchitecture.from_file(cf, user=False)
    return out


def react_architecture(name: str) -> ReactArchitecture | None:
    """The REACT architecture called ``name`` (built in, registered in memory, or the user's); None if none is."""
    from harness.models import user_configs

    name = canonical_name(name)
    _ensure_registered()
    return _registered_react.get(name) or react_architectures().get(name) or user_configs.react_architecture(name)


def react_architecture_names() -> list[str]:
    """The REACT architectures: built in first, then those registered in memory and the user's."""
    from harness.models import user_configs

    _ensure_registered()
    names = list(react_architectures())
    return names + sorted((set(_registered_react) | set(user_configs.react_names())) - set(names))


def architecture_of(card: Any) -> str:
    """The architecture a model card builds, after registering the card's ``architecture_config`` file (if any)."""
    if card.architecture_config is None:
        return card.architecture
    from harness.models import user_configs

    name = user_configs.register_file(card.architecture_config_path, f"model card '{card.name}'")
    if name != card.architecture:
        raise HarnessError(f"Model card '{card.name}': architecture '{card.architecture}' differs from its "
                           f"architecture_config file {card.architecture_config_path} (architecture '{name}'). "
                           f"Set architecture to the file's stem or leave it out.")
    return name


def register_config(name: str, openclip_config: dict, react_last_k: int | None = None) -> str:
    """Make an in-memory OpenCLIP config buildable under ``name`` in this process (returns ``name``).

    Plain (``react_last_k`` None): the config reaches OpenCLIP through its public ``add_model_config``, from
    ``<cache>/model_configs/<hash>/<name>.json`` (a content-addressed folder). REACT (``react_last_k`` >= 1): ``name``
    is ``react_<base>``; ``openclip_config`` (without react_cfg) is registered as above under ``<base>`` and the REACT
    architecture in this factory's own registry (OpenCLIP never sees a REACT name). Registering a name again with the
    same config does nothing; with another config, or over a different built-in config, is an error."""
    import open_clip

    from harness.core.atomic import write_json
    from harness.cards.schema import content_hash

    _ensure_registered()
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

    _ensure_registered()
    return sorted(set(open_clip.list_models()) | set(react_architecture_names()))


def config_differences(expected: Any, found: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, expected value, found value) for every leaf where two configs differ ("<absent>" for a key one
    of them lacks)."""
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for key in sorted(set(expected) | set(found), key=str):
            out += config_differences(expected.get(key, "<absent>"), found.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if expected == found else [(prefix.rstrip("."), expected, found)]


def base_config_of(arch: ReactArchitecture) -> dict:
    """The OpenCLIP config the REACT config extends; an error when OpenCLIP's differs from what the JSON says
    (a changed OpenCLIP config would otherwise silently build another model than the checkpoint's)."""
    import open_clip

    register_project_configs()
    path = arch.path or REACT_CONFIG_DIR / f"{arch.name}.json"
    base = open_clip.get_model_config(arch.base)
    if base is None:
        raise HarnessError(
            f"REACT architecture {arch.name} ({path}): expected an OpenCLIP config named '{arch.base}' (the name "
            f"without '{REACT_PREFIX}') among OpenCLIP's, this project's and the HARNESS_MODEL_CONFIGS ones; found "
            f"none.{did_you_mean(arch.base, open_clip.list_models())} Put {arch.base}.json in a "
            f"HARNESS_MODEL_CONFIGS folder, or rename the file react_<existing config>.json.")
    found = copy.deepcopy(arch.config)
    found["vision_cfg"] = {k: v for k, v in found["vision_cfg"].items() if k != "react_cfg"}
    if found != base:
        diffs = "\n".join(f"  {key}: expected {json.dumps(want)} (base '{arch.base}'), found {json.dumps(got)}"
                          for key, want, got in config_differences(base, found))
        if arch.user:
            from harness.models.user_configs import origin

            raise HarnessError(
                f"REACT architecture {arch.name}: {path} does not match OpenCLIP's '{arch.base}' config, which a "
                f"REACT-fork JSON repeats exactly (plus vision_cfg.react_cfg):\n{diffs}\nCopy the base config's "
                f"values from {origin(arch.base)} into the file, or, for another tower, add that tower as a plain "
                f"config <new-base>.json and name this file react_<new-base>.json.")
        raise HarnessError(f"REACT architecture {arch.name}: {path} no longer matches OpenCLIP's '{arch.base}' "
                           f"config:\n{diffs}\nOpenCLIP changed the base architecture: update the JSON deliberately.")
    return base


def _require_known(name: str) -> None:
    import open_clip

    if name not in open_clip.list_models():
        raise HarnessError(f"Architecture '{name}' is neither an OpenCLIP model config nor a REACT architecture."
                           f"{did_you_mean(name, list_architectures())} REACT architectures: "
                           f"{', '.join(react_architecture_names())}. To add your own, put <name>.json in a "
                           f"HARNESS_MODEL_CONFIGS folder or name it in the card's architecture_config "
                           f"(docs/models.md).")


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

    _ensure_registered()
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
    try:
        insert_gated_blocks(model, arch.last_k_layers)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"REACT architecture {arch.name} ({arch.path or 'registered in memory'}): {exc}. Check "
                           f"vision_cfg.react_cfg.last_k_layers and that the base is an OpenCLIP ViT.") from exc
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

    arch = react_architecture(name)  # registers the project's and the user's configs first
    return open_clip.get_tokenizer(arch.base if arch else canonical_name(name))


def model_config(name: str) -> dict:
    """The config an architecture is built from (for docs and tests); REACT configs include their react_cfg."""
    import open_clip

    arch = react_architecture(name)  # registers the project's and the user's configs first
    if arch is not None:
        return copy.deepcopy(arch.config)
    cfg = open_clip.get_model_config(canonical_name(name))
    if cfg is None:
        raise HarnessError(f"No model config '{name}'.{did_you_mean(name, list_architectures())}")
    return copy.deepcopy(cfg)
