"""Model cards: architecture, weights source, preprocessing contract, method and published numbers; and the
architecture config files a card or ``HARNESS_MODEL_CONFIGS`` names (read and checked here, without torch; built by
:mod:`harness.models.factory`)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.cards.schema import (INTERPOLATIONS, METHODS, OMIT_DEFAULT, RESIZE_MODES, WEIGHT_SOURCES, _check_keys,
                                  _choice, _typed, card_to_dict, content_hash)
from harness.core.errors import HarnessError
from harness.core.safe_read import RefusedFile, load_json

REACT_PREFIX = "react_"
# What OpenCLIP needs in a config file (its registry silently skips a .json without these three keys).
CONFIG_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


@dataclass(frozen=True)
class WeightsSpec:
    """Where a card's weights come from.

    source: ``openclip`` (an open_clip pretrained tag), ``hf-hub`` (a file in a Hugging Face repo), ``local`` (a path;
    relative paths are relative to the repository root) or ``random`` (no weights: tiny test/demo models).
    """
    source: str
    tag: str | None = None
    repo: str | None = None
    file: str | None = None
    path: str | None = None
    seed: int | None = None

    @property
    def identity(self) -> str:
        if self.source == "openclip":
            return f"openclip:{self.tag}"
        if self.source == "hf-hub":
            return f"hf-hub:{self.repo}/{self.file}"
        if self.source == "local":
            return f"local:{self.path}"
        return f"random:seed={self.seed}"


@dataclass(frozen=True)
class PreprocessSpec:
    """The preprocessing contract of a checkpoint (what it was trained with)."""
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    quick_gelu: bool


@dataclass(frozen=True)
class ElevaterModelFields:
    """Fields of the ELEVATER toolkit's model YAML (resources/model/<yaml>), so the card can drive the toolkit."""
    yaml: str | None
    MODEL_NAME: str
    MODEL_SPEC: Mapping[str, Any]
    TEST_MODEL_FILE: str


@dataclass(frozen=True)
class PretrainedTag:
    """A (--model, --pretrained) pair of REACT's customization README that names this card's checkpoint."""
    model: str
    tag: str


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str
    architecture: str
    weights: WeightsSpec
    preprocess: PreprocessSpec
    method: str
    base_model: str | None
    retrieval_set: str | None
    published: Mapping[str, float]
    published_source: str | None
    elevater: ElevaterModelFields | None
    pretrained_tags: tuple[PretrainedTag, ...] = ()
    # An architecture config file (OpenCLIP JSON or REACT-fork JSON) as the card writes it; relative to the card's
    # folder. ``architecture`` is then the file's stem. Not in the card hash while unset (cards before it keep theirs).
    architecture_config: str | None = field(default=None, metadata=OMIT_DEFAULT)
    path: Path | None = field(default=None, compare=False)

    @property
    def card_hash(self) -> str:
        return content_hash(card_to_dict(self))

    @property
    def architecture_config_path(self) -> Path | None:
        """The card's ``architecture_config`` file (relative paths resolved against the card's folder)."""
        if self.architecture_config is None:
            return None
        return resolve_card_relative(self.architecture_config, self.path)

    @property
    def is_react_arch(self) -> bool:
        return self.architecture.startswith(REACT_PREFIX)


_MODEL_KEYS = {f.name for f in dataclasses.fields(ModelCard)} - {"path"}
_MODEL_REQUIRED = {"name", "architecture", "weights", "preprocess", "method"}


def resolve_card_relative(value: str, card_path: Path | None) -> Path:
    """A path a card names: absolute as is, relative against the card's own folder (a card built in memory: the
    current directory)."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (Path(card_path).parent if card_path else Path.cwd()) / p
    return p


# ----------------------------------------------------------------------------------------------------------------------
# architecture config files (OpenCLIP's JSON format; REACT fork: plus vision_cfg.react_cfg)

def parse_react_cfg(react_cfg: Any) -> int:
    """last_k_layers from a ``react_cfg`` entry; 0 when absent or disabled. Unknown keys are errors (ValueError)."""
    if react_cfg is None:
        return 0
    if not isinstance(react_cfg, dict):
        raise ValueError(f"vision_cfg.react_cfg must be a mapping, got {react_cfg!r}")
    unknown = set(react_cfg) - {"enabled", "last_k_layers"}
    if unknown:
        raise ValueError(f"vision_cfg.react_cfg has unknown keys {sorted(unknown)}")
    if not react_cfg.get("enabled", True):
        return 0
    k = react_cfg.get("last_k_layers")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"vision_cfg.react_cfg.last_k_layers must be a positive int, got {k!r}")
    return k


@dataclass(frozen=True)
class ArchitectureConfig:
    """An architecture config file: OpenCLIP's model-config JSON named ``<architecture>.json``, or the REACT fork's
    (``react_<base>.json``: the ``<base>`` OpenCLIP config plus ``vision_cfg.react_cfg``)."""
    name: str
    path: Path
    config: dict  # the file's content (REACT: react_cfg included)
    react_last_k: int  # 0: a plain OpenCLIP config

    @property
    def base(self) -> str | None:
        """The OpenCLIP config a REACT config extends (its name without ``react_``); None for a plain config."""
        return self.name[len(REACT_PREFIX):] if self.react_last_k else None

    def base_config(self) -> dict:
        """The config without ``vision_cfg.react_cfg`` (a copy)."""
        cfg = json.loads(json.dumps(self.config))
        cfg["vision_cfg"].pop("react_cfg", None)
        return cfg


def read_architecture_config(path: Path | str, where: str | None = None) -> ArchitectureConfig:
    """Read and check an architecture config file: a JSON object with OpenCLIP's keys, a well-formed
    ``vision_cfg.react_cfg`` exactly when the name starts with ``react_``. Errors name the file and what to do; the
    comparison of a REACT config with its base happens where OpenCLIP is (harness.models.factory)."""
    path = Path(path)
    what = f"{where}: architecture config {path}" if where else f"Architecture config {path}"
    fix = "See docs/models.md for the format."
    if path.suffix != ".json":
        raise HarnessError(f"{what}: expected a .json file named after its architecture (OpenCLIP's model-config "
                           f"format), found a '{path.suffix or 'no'}' suffix. Rename it <architecture>.json.")
    if not path.is_file():
        raise HarnessError(f"{what} does not exist. Create it or fix the path (a card's relative path is resolved "
                           f"against the card's own folder).")
    try:
        config = load_json(path, "architecture config")
    except RefusedFile:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{what} could not be read ({exc}).") from exc
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). "
                           f"{fix}") from exc
    if not isinstance(config, dict):
        raise HarnessError(f"{what}: expected a JSON object, found {type(config).__name__}. {fix}")
    missing = [k for k in CONFIG_REQUIRED_KEYS if k not in config]
    if missing:
        raise HarnessError(f"{what}: expected OpenCLIP's keys {', '.join(CONFIG_REQUIRED_KEYS)}, missing "
                           f"{', '.join(missing)} (found {', '.join(map(str, config)) or 'no keys'}). {fix}")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(config[key], dict):
            raise HarnessError(f"{what}: {key} must be a JSON object, found {config[key]!r}. {fix}")
    if isinstance(config["embed_dim"], bool) or not isinstance(config["embed_dim"], int):
        raise HarnessError(f"{what}: embed_dim must be an integer, found {config['embed_dim']!r}.")
    name, vision = path.stem, config["vision_cfg"]
    try:
        k = parse_react_cfg(vision.get("react_cfg"))
    except ValueError as exc:
        raise HarnessError(f"{what}: {exc}. Expected \"react_cfg\": {{\"enabled\": true, \"last_k_layers\": K}} "
                           f"with K >= 1.") from exc
    if "react_cfg" in vision and not k:
        raise HarnessError(f"{what}: vision_cfg.react_cfg is disabled; OpenCLIP cannot build a vision_cfg holding "
                           f"react_cfg. Remove react_cfg for a plain OpenCLIP config, or set \"enabled\": true.")
    if k and (not name.startswith(REACT_PREFIX) or name == REACT_PREFIX):
        raise HarnessError(f"{what}: a REACT-fork config (with vision_cfg.react_cfg) is named react_<base>.json, "
                           f"<base> being the OpenCLIP config it extends; found the name '{name}'. Rename the file.")
    if not k and name.startswith(REACT_PREFIX):
        raise HarnessError(f"{what}: names starting with '{REACT_PREFIX}' are REACT architectures, but the file has "
                           f"no vision_cfg.react_cfg. Add react_cfg (enabled, last_k_layers) or rename the file.")
    if k and "timm_model_name" in vision:
        raise HarnessError(f"{what}: REACT gated blocks go into OpenCLIP's own VisionTransformer; this vision_cfg "
                           f"names a timm tower ({vision['timm_model_name']!r}). Use a ViT base config.")
    layers = vision.get("layers")
    if k and isinstance(layers, int) and not isinstance(layers, bool) and k > layers:
        raise HarnessError(f"{what}: vision_cfg.react_cfg.last_k_layers is {k}, but the vision tower has "
                           f"{layers} layers. Use a last_k_layers between 1 and {layers}.")
    return ArchitectureConfig(name=name, path=path, config=config, react_last_k=k)


def _float_triple(value: Any, where: str) -> tuple[float, float, float]:
    _typed(value, list, where)
    if len(value) != 3:
        raise HarnessError(f"{where}: expected 3 numbers (R, G, B), found {len(value)}.")
    return tuple(float(_typed(v, (int, float), f"{where}[{i}]")) for i, v in enumerate(value))  # type: ignore


def _architecture(data: Mapping[str, Any], where: str, path: Path | None) -> tuple[str, str | None]:
    """(architecture, architecture_config) of a card; a config file is read and checked here (so ``validate``
    reports a missing or malformed one), and the architecture is its file stem."""
    value = data.get("architecture_config")
    if value is None:
        return _typed(data["architecture"], str, f"{where}: architecture"), None
    _typed(value, str, f"{where}: architecture_config")
    arch = read_architecture_config(resolve_card_relative(value, path), f"{where}: architecture_config")
    named = data.get("architecture", arch.name)
    if named != arch.name:
        raise HarnessError(f"{where}: architecture '{named}' differs from the architecture_config file's name "
                           f"'{arch.name}' ({arch.path}). A config file's architecture is its file stem: set "
                           f"architecture: {arch.name}, or leave architecture out.")
    return arch.name, value


def parse_model_card(data: Mapping[str, Any], where: str, path: Path | None = None) -> ModelCard:
    required = _MODEL_REQUIRED - ({"architecture"} if isinstance(data, Mapping) and
                                  data.get("architecture_config") is not None else set())
    _check_keys(data, _MODEL_KEYS, required, where)
    architecture, architecture_config = _architecture(data, where, path)
    w = data["weights"]
    w_keys = {f.name for f in dataclasses.fields(WeightsSpec)}
    _check_keys(w, w_keys, {"source"}, f"{where}: weights")
    source = _choice(w["source"], WEIGHT_SOURCES, f"{where}: weights.source")
    needed = {"openclip": ("tag",), "hf-hub": ("repo", "file"), "local": ("path",), "random": ()}[source]
    for key in needed:
        if not w.get(key):
            raise HarnessError(f"{where}: weights.source '{source}' needs weights.{key}.")
    if w.get("seed") is not None:
        _typed(w["seed"], int, f"{where}: weights.seed")
    weights = WeightsSpec(**{k: (str(v) if k != "seed" and v is not None else v) for k, v in w.items()})
    p = data["preprocess"]
    p_keys = {f.name for f in dataclasses.fields(PreprocessSpec)}
    _check_keys(p, p_keys, p_keys, f"{where}: preprocess")
    preprocess = PreprocessSpec(
        image_size=_typed(p["image_size"], int, f"{where}: preprocess.image_size"),
        mean=_float_triple(p["mean"], f"{where}: preprocess.mean"),
        std=_float_triple(p["std"], f"{where}: preprocess.std"),
        interpolation=_choice(p["interpolation"], INTERPOLATIONS, f"{where}: preprocess.interpolation"),
        resize_mode=_choice(p["resize_mode"], RESIZE_MODES, f"{where}: preprocess.resize_mode"),
        quick_gelu=_typed(p["quick_gelu"], bool, f"{where}: preprocess.quick_gelu"),
    )
    published_raw = data.get("published") or {}
    _typed(published_raw, dict, f"{where}: published")
    published = {str(k): float(_typed(v, (int, float), f"{where}: published.{k}")) for k, v in published_raw.items()}
    elevater = None
    if data.get("elevater") is not None:
        e = data["elevater"]
        e_keys = {f.name for f in dataclasses.fields(ElevaterModelFields)}
        _check_keys(e, e_keys, {"MODEL_NAME", "MODEL_SPEC", "TEST_MODEL_FILE"}, f"{where}: elevater")
        elevater = ElevaterModelFields(
            yaml=e.get("yaml"),
            MODEL_NAME=_typed(e["MODEL_NAME"], str, f"{where}: elevater.MODEL_NAME"),
            MODEL_SPEC=dict(_typed(e["MODEL_SPEC"], dict, f"{where}: elevater.MODEL_SPEC")),
            TEST_MODEL_FILE=_typed(e["TEST_MODEL_FILE"], str, f"{where}: elevater.TEST_MODEL_FILE"),
        )
    method = _choice(data["method"], METHODS, f"{where}: method")
    tags = []
    for i, entry in enumerate(_typed(data.get("pretrained_tags") or [], list, f"{where}: pretrained_tags")):
        _check_keys(entry, {"model", "tag"}, {"model", "tag"}, f"{where}: pretrained_tags[{i}]")
        tags.append(PretrainedTag(model=_typed(entry["model"], str, f"{where}: pretrained_tags[{i}].model"),
                                  tag=_typed(entry["tag"], str, f"{where}: pretrained_tags[{i}].tag")))
    return ModelCard(
        name=_typed(data["name"], str, f"{where}: name"),
        description=_typed(data.get("description", ""), str, f"{where}: description"),
        architecture=architecture,
        weights=weights,
        preprocess=preprocess,
        method=method,
        base_model=data.get("base_model"),
        retrieval_set=data.get("retrieval_set"),
        published=published,
        published_source=data.get("published_source"),
        elevater=elevater,
        pretrained_tags=tuple(tags),
        architecture_config=architecture_config,
        path=path,
    )

