"""The user's own architectures, added without editing the package (docs/models.md).

Two routes, one set of checks:

- every ``*.json`` in the ``HARNESS_MODEL_CONFIGS`` folders (``os.pathsep``-separated) is an architecture named by its
  file stem; the folders are read when a model is first built or looked up (never at import), and again when their
  files change;
- a model card's ``architecture_config`` names one such file (:func:`harness.models.factory.architecture_of`).

A REACT file's base is looked up among OpenCLIP's configs (the project's and the registered user ones included), then
as ``<base>.json`` beside the REACT file.

A plain OpenCLIP config reaches OpenCLIP the way the project's own configs do: through its public
``add_model_config``, for that one file (a folder would also hand OpenCLIP the REACT files beside it). A REACT-fork
config (``react_<base>.json``: the base config plus ``vision_cfg.react_cfg``) stays in this module's registry and is
compared with its base OpenCLIP config exactly as the built-in REACT configs are
(:func:`harness.models.factory.base_config_of`); OpenCLIP never sees a REACT name.

Names are unique: a user file whose name is already an architecture (OpenCLIP's, this project's, another user
file's) is an error naming both files, unless the two configs are identical. An architecture name is what the run
key and the results records hold, so a name must always build the same model; OpenCLIP's registry is also
process-wide, so shadowing ``ViT-B-32`` would silently change every card and REACT config built on it.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from pathlib import Path
from typing import Iterable

from harness.cards.model import ArchitectureConfig, ModelCard, read_architecture_config
from harness.core import paths
from harness.core.errors import HarnessError, did_you_mean
from harness.models import factory

logger = logging.getLogger(__name__)

ENV_VAR = "HARNESS_MODEL_CONFIGS"

_files: dict[str, ArchitectureConfig] = {}  # name -> the user file it was registered from, in this process
_react: dict[str, factory.ReactArchitecture] = {}  # the user's REACT architectures
_scanned: tuple | None = None  # the HARNESS_MODEL_CONFIGS files (path, mtime, size) last registered without error


def config_files() -> list[Path]:
    """Every ``*.json`` in the HARNESS_MODEL_CONFIGS folders, folder by folder."""
    files = []
    for folder in paths.model_config_dirs():
        if not folder.is_dir():
            raise HarnessError(f"{ENV_VAR} names {folder}, which is not a folder. Expected folders of architecture "
                               f"configs (*.json) separated by '{os.pathsep}': fix or unset {ENV_VAR}.")
        files += sorted(folder.glob("*.json"))
    return files


def register_env_folders() -> None:
    """Register every HARNESS_MODEL_CONFIGS architecture (plain configs first: a REACT file's base may be one);
    one error listing every bad file."""
    global _scanned
    files = config_files()
    signature = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if signature == _scanned:
        return
    errors = _register_all([lambda p=p: read_architecture_config(p, ENV_VAR) for p in files])[1]
    if errors:
        raise HarnessError("\n".join(errors))
    _scanned = signature


def register_file(path: Path | str, where: str | None = None) -> str:
    """Register one architecture config file (a card's ``architecture_config``); returns its architecture name."""
    cf = read_architecture_config(path, where)
    register_env_folders()  # so a clash with those is found, and a REACT file's base may be one of them
    return _register(cf)


def react_architecture(name: str) -> factory.ReactArchitecture | None:
    return _react.get(name)


def react_names() -> list[str]:
    return sorted(_react)


def is_user(name: str) -> bool:
    """Whether the architecture ``name`` came from a user's file (registered in this process)."""
    return name in _files or name in _react


def validate(cards: Iterable[ModelCard] = ()) -> tuple[list[str], list[str]]:
    """Check (and register) every HARNESS_MODEL_CONFIGS file and every card's ``architecture_config``, as building
    would: (ok lines, error lines), for ``python -m harness validate``."""
    try:
        loaders = [lambda p=p: read_architecture_config(p, ENV_VAR) for p in config_files()]
    except HarnessError as exc:
        return [], [str(exc)]
    for card in cards:
        if card.architecture_config is not None:
            loaders.append(lambda c=card: read_architecture_config(c.architecture_config_path,
                                                                   f"model card '{c.name}'"))
    return _register_all(loaders)


def _register_all(loaders: list) -> tuple[list[str], list[str]]:
    ok, errors, configs = [], [], []
    for load in loaders:
        try:
            configs.append(load())
        except HarnessError as exc:
            errors.append(str(exc))
    for cf in sorted(configs, key=lambda c: bool(c.react_last_k)):  # stable: plain configs first
        try:
            _register(cf)
            kind = f"REACT on {cf.base}, gated blocks in the last {cf.react_last_k}" if cf.react_last_k else "OpenCLIP"
            ok.append(f"architecture {cf.name} ({kind}) from {cf.path}")
        except HarnessError as exc:
            errors.append(str(exc))
    return ok, errors


def _register(cf: ArchitectureConfig) -> str:
    import open_clip

    factory.register_project_configs()
    name = cf.name
    if name in factory.ALIASES:
        raise HarnessError(f"{cf.path}: '{name}' is REACT's alias of '{factory.ALIASES[name]}', so this file could "
                           f"never be built. Rename it.")
    previous = _files.get(name)
    if previous is not None:
        if previous.config == cf.config:
            return name
        if previous.path == cf.path:
            raise HarnessError(f"{cf.path} changed after this process registered architecture '{name}' from it; a "
                               f"name builds one model per process. Restart to use the new content.")
        raise _clash(cf, str(previous.path))
    _check_openclip_keys(cf)
    if cf.react_last_k:
        known = factory._registered_react.get(name) or factory.react_architectures().get(name)
        if known is not None and known.config != cf.config:
            raise _clash(cf, str(known.path or "an architecture registered in memory (register_config)"))
        if known is None:
            sibling = cf.path.parent / f"{cf.base}.json"
            if sibling.is_file():  # beside it: the base travels with it (a card's file); a clash is an error
                _register(read_architecture_config(sibling, f"the base of {cf.path.name}"))
            arch = factory.ReactArchitecture.from_file(cf, user=True)
            factory.base_config_of(arch)
            _react[name] = arch
    else:
        known = open_clip.get_model_config(name)
        if known is not None and known != cf.config:
            raise _clash(cf, origin(name))
        if known is None:
            open_clip.add_model_config(cf.path)  # this one file; OpenCLIP's public hook
    _files[name] = cf
    logger.debug("architecture %s registered from %s", name, cf.path)
    return name


def _clash(cf: ArchitectureConfig, other: str) -> HarnessError:
    react = "react_<base>-mine.json beside a copy of the base config named <base>-mine.json" if cf.react_last_k \
        else f"{cf.name}-mine.json"
    return HarnessError(
        f"Architecture '{cf.name}' is defined twice with different configs: {cf.path} and {other}. A name builds one "
        f"model (results are keyed by it), so a user config may not shadow an existing one: rename your file (e.g. "
        f"{react}) and use the new name, or make it identical to the existing config.")


def origin(name: str) -> str:
    """The file a plain config OpenCLIP knows comes from (for error messages): a user's, the project's or
    OpenCLIP's own."""
    import open_clip

    if name in _files:
        return str(_files[name].path)
    project = paths.MODEL_CONFIG_DIR / f"{name}.json"
    if project.is_file():
        return str(project)
    shipped = Path(open_clip.__file__).parent / "model_configs" / f"{name}.json"
    if shipped.is_file():
        return f"{shipped} (OpenCLIP's)"
    return f"the config OpenCLIP holds as '{name}' (registered in this process)"


def _openclip_keys() -> dict[str, set[str]]:
    """The keys OpenCLIP's builders accept: model-class arguments at top level (plus ``custom_text``, which
    ``create_model`` reads), and the fields of its vision and text config dataclasses."""
    import open_clip

    top = {"custom_text"}
    for cls in (open_clip.CLIP, open_clip.CustomTextCLIP, open_clip.CoCa):
        top |= set(inspect.signature(cls.__init__).parameters) - {"self", "cast_dtype"}
    return {"": top, "vision_cfg": {f.name for f in dataclasses.fields(open_clip.CLIPVisionCfg)} | {"react_cfg"},
            "text_cfg": {f.name for f in dataclasses.fields(open_clip.CLIPTextCfg)}}


def _check_openclip_keys(cf: ArchitectureConfig) -> None:
    """Unknown keys fail here, naming the file and the closest valid key, not as a TypeError deep in OpenCLIP."""
    allowed = _openclip_keys()
    for section, keys in allowed.items():
        data = cf.config[section] if section else cf.config
        for key in data:
            if key not in keys:
                where = f"{section}.{key}" if section else key
                raise HarnessError(f"{cf.path}: unknown key '{where}' for OpenCLIP.{did_you_mean(str(key), keys)} "
                                   f"Valid {section or 'top-level'} keys: {', '.join(sorted(keys))}.")
