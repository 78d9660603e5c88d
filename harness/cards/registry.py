"""Finding cards: the folders searched (see harness.core.paths), loading by name or path, suites, and ``validate``."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from harness.core import paths
from harness.cards.dataset import DatasetCard, parse_dataset_card
from harness.cards.model import ModelCard, parse_model_card
from harness.cards.schema import METHODS, _check_keys, _str_list, _typed, load_yaml_with_includes
from harness.core.errors import HarnessError, did_you_mean

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# registry (folders searched in order, see harness.core.paths; an earlier card shadows a later one of the same name)

def _folders(folder: Path | list[Path] | None, default) -> list[Path]:
    if folder is None:
        return list(default())
    return [Path(f) for f in folder] if isinstance(folder, (list, tuple)) else [Path(folder)]


def _card_files(folders: list[Path]) -> list[Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise HarnessError(f"Card folder {folder} does not exist. Check HARNESS_MODEL_CARDS / "
                               f"HARNESS_DATASET_CARDS (folders separated by '{os.pathsep}').")
        # Files starting with '_' and files in sub-folders (e.g. model_cards/_base/) are include targets, not cards.
        for p in sorted(folder.glob("*.yaml")):
            if not p.name.startswith("_"):
                found.setdefault(p.stem, p)
    return [found[name] for name in sorted(found)]


def _load_card(path: Path | str, parse):
    path = Path(path)
    card = parse(load_yaml_with_includes(path), str(path), path)
    if card.name != path.stem:
        raise HarnessError(f"{path}: card name '{card.name}' must equal the file name '{path.stem}'.")
    return card


def load_dataset_card(path: Path | str) -> DatasetCard:
    return _load_card(path, parse_dataset_card)


def load_model_card(path: Path | str) -> ModelCard:
    return _load_card(path, parse_model_card)


def dataset_card_names(folder: Path | list[Path] | None = None) -> list[str]:
    return [p.stem for p in _card_files(_folders(folder, paths.dataset_card_dirs))]


def model_card_names(folder: Path | list[Path] | None = None) -> list[str]:
    return [p.stem for p in _card_files(_folders(folder, paths.model_card_dirs))]


def _resolve(name_or_path: str, folders: list[Path], kind: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    for folder in folders:
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    names = [p.stem for p in _card_files(folders)]
    raise HarnessError(f"No {kind} card named '{name_or_path}' in {', '.join(map(str, folders))}."
                       f"{did_you_mean(name_or_path, names)} `python -m harness ls` lists them.")


def get_dataset_card(name_or_path: str, folder: Path | list[Path] | None = None) -> DatasetCard:
    return load_dataset_card(_resolve(name_or_path, _folders(folder, paths.dataset_card_dirs), "dataset"))


def get_model_card(name_or_path: str, folder: Path | list[Path] | None = None) -> ModelCard:
    return load_model_card(_resolve(name_or_path, _folders(folder, paths.model_card_dirs), "model"))


def all_dataset_cards(folder: Path | list[Path] | None = None) -> list[DatasetCard]:
    return [load_dataset_card(p) for p in _card_files(_folders(folder, paths.dataset_card_dirs))]


def all_model_cards(folder: Path | list[Path] | None = None) -> list[ModelCard]:
    return [load_model_card(p) for p in _card_files(_folders(folder, paths.model_card_dirs))]


def method_rank(method: str) -> int:
    """Display order of tuning methods (baseline first): the order of METHODS."""
    return METHODS.index(method) if method in METHODS else len(METHODS)


# ----------------------------------------------------------------------------------------------------------------------
# suites: named groups of dataset cards whose scores are averaged (``_suites.yaml`` beside the dataset cards)

SUITES_FILE = "_suites.yaml"
ELEVATER_SUITE = "elevater-20"  # the suite REACT's "ELEVATER average" is taken over


@dataclass(frozen=True)
class Suite:
    name: str
    title: str  # column header of the suite average, e.g. "ELEVATER avg"
    description: str
    members: tuple[str, ...]


def load_suites(folder: Path | list[Path] | None = None) -> dict[str, Suite]:
    """Every suite defined in the dataset card folders (an earlier folder's suite shadows a later one's)."""
    suites: dict[str, Suite] = {}
    for f in _folders(folder, paths.dataset_card_dirs):
        path = f / SUITES_FILE
        if not path.is_file():
            continue
        data = load_yaml_with_includes(path)
        for name, entry in data.items():
            where = f"{path}: {name}"
            _check_keys(entry, {"title", "description", "members"}, {"title", "members"}, where)
            suites.setdefault(str(name), Suite(
                name=str(name), title=_typed(entry["title"], str, f"{where}.title"),
                description=_typed(entry.get("description", ""), str, f"{where}.description"),
                members=_str_list(entry["members"], f"{where}.members")))
    return suites


def get_suite(name: str, folder: Path | list[Path] | None = None) -> Suite:
    suites = load_suites(folder)
    if name not in suites:
        raise HarnessError(f"No dataset suite '{name}' (defined: {', '.join(sorted(suites)) or 'none'}) in "
                           f"{SUITES_FILE} of the dataset card folders.{did_you_mean(name, suites)}")
    return suites[name]


def validate_all(model_folder: Path | None = None, dataset_folder: Path | None = None) -> tuple[list[str], list[str]]:
    """Load every card; return (ok lines, error lines). Also checks cross-card references."""
    ok: list[str] = []
    errors: list[str] = []
    datasets: dict[str, DatasetCard] = {}
    for p in _card_files(_folders(dataset_folder, paths.dataset_card_dirs)):
        try:
            card = load_dataset_card(p)
            datasets[card.name] = card
            ok.append(f"dataset {card.name}: {card.num_classes} classes, {len(card.templates)} templates, "
                      f"metric {card.metric}, hash {card.text_hash}")
        except HarnessError as exc:
            errors.append(str(exc))
    models: dict[str, ModelCard] = {}
    for p in _card_files(_folders(model_folder, paths.model_card_dirs)):
        try:
            card = load_model_card(p)
            models[card.name] = card
        except HarnessError as exc:
            errors.append(str(exc))
    try:
        for suite in load_suites(dataset_folder).values():
            unknown = [m for m in suite.members if m not in datasets]
            if unknown or len(set(suite.members)) != len(suite.members):
                errors.append(f"suite {suite.name}: members must be distinct dataset cards; unknown: "
                              f"{', '.join(unknown) or 'none'}")
            else:
                ok.append(f"suite {suite.name}: {len(suite.members)} datasets")
    except HarnessError as exc:
        errors.append(str(exc))
    tag_owner: dict[tuple[str, str], str] = {}
    for card in models.values():
        problems = []
        for t in card.pretrained_tags:
            other = tag_owner.setdefault((t.model, t.tag), card.name)
            if other != card.name:
                problems.append(f"pretrained tag ({t.model}, {t.tag}) is also claimed by card '{other}'.")
        if card.base_model and card.base_model not in models:
            problems.append(f"base_model '{card.base_model}' is not a model card."
                            f"{did_you_mean(card.base_model, models)}")
        for ds in card.published:
            if ds not in datasets:
                problems.append(f"published number for unknown dataset '{ds}'.{did_you_mean(ds, datasets)}")
        if problems:
            errors.extend(f"{card.path}: {msg}" for msg in problems)
        else:
            ok.append(f"model {card.name}: {card.architecture} ({card.method}), weights {card.weights.identity}")
    return ok, errors
