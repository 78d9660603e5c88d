"""Label rules: how a source's label i maps to a dataset card's ELEVATER class index (rules are data, in
harness/data/sources.yaml; see there for what each rule means).

A rule is applied to the source's own class-name list (a CLIP_benchmark repo's ``classnames.txt``, the re-host's
``label.txt``) and must give a bijection onto the card's classes — checked here, before any image is read, so a
source whose names moved or changed is refused with the file named instead of scoring against the wrong classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from harness.cards.schema import _check_keys, _choice
from harness.core.errors import HarnessError

MATCH_KINDS = ("name", "index")


def normalise(name: str) -> str:
    """Case folded, ``_`` read as a space, runs of whitespace as one space, no surrounding whitespace."""
    return " ".join(name.replace("_", " ").lower().split())


@dataclass(frozen=True)
class LabelRule:
    name: str
    match: str  # "name" or "index"
    rename: Mapping[str, str] = field(default_factory=dict)  # source name -> the card's name (match: name)
    differs: Mapping[int, str] = field(default_factory=dict)  # position -> the source's name there (match: index)
    multilabel: bool = False
    about: str = ""

    def mapping(self, source_names: Sequence[str], card_names: Sequence[str], where: str, remedy: str) -> np.ndarray:
        """``m[i]`` = the card's class index of the source's label ``i``; a bijection, or a HarnessError naming
        ``where`` (the source's class-name file), what differs, and ``remedy``."""
        def fail(what: str) -> HarnessError:
            return HarnessError(f"{where}: {what} (label rule '{self.name}': {self.about or self.match}). "
                                f"{remedy}")

        if len(source_names) != len(card_names):
            raise fail(f"{len(source_names)} class names, the card has {len(card_names)}")
        if self.match == "index":
            for i, (src, own) in enumerate(zip(source_names, card_names)):
                expected = self.differs.get(i)
                if expected is not None:
                    if src.strip() != expected:
                        raise fail(f"line {i + 1} is {src.strip()!r}, expected {expected!r} at this position")
                elif normalise(src) != normalise(own):
                    raise fail(f"line {i + 1} is {src.strip()!r} but the card's class {i} is {own!r}: the order "
                               f"is not the one this rule maps by index")
            return np.arange(len(card_names), dtype=np.int64)
        index = {}
        for j, own in enumerate(card_names):
            index.setdefault(normalise(own), j)
        out = np.full(len(source_names), -1, dtype=np.int64)
        for i, src in enumerate(source_names):
            key = normalise(self.rename.get(src.strip(), src))
            if key not in index:
                raise fail(f"line {i + 1} {src.strip()!r} is none of the card's class names")
            out[i] = index[key]
        counts = np.bincount(out, minlength=len(card_names))
        if (counts != 1).any():
            twice = [card_names[j] for j in np.flatnonzero(counts > 1)]
            never = [card_names[j] for j in np.flatnonzero(counts == 0)]
            raise fail(f"not a one-to-one mapping: {', '.join(map(repr, twice[:3]))} matched more than once, "
                       f"{', '.join(map(repr, never[:3])) or 'none'} never")
        return out


def label_map_identity(rule: LabelRule, mapping: np.ndarray) -> dict:
    """What a result's ``data_source`` (hence the data fingerprint and the run key) records of a remap: the rule's
    name, a hash of its content and a hash of the mapping itself, so a corrected rule re-runs the dataset."""
    from harness.cards import content_hash

    content = {"match": rule.match, "rename": dict(rule.rename), "multilabel": rule.multilabel,
               "differs": {str(i): name for i, name in rule.differs.items()}}
    return {"rule": rule.name, "rule_hash": content_hash(content),
            "mapping_hash": content_hash([int(x) for x in mapping])}


def parse_label_rule(name: str, raw: Any, where: str) -> LabelRule:
    """A rule from the sources data; errors name ``where`` (file and key)."""
    _check_keys(raw, {"match", "rename", "differs", "multilabel", "about"}, {"match"}, f"{where}: label_rules.{name}")
    match = _choice(raw["match"], MATCH_KINDS, f"{where}: label_rules.{name}.match")
    rename = raw.get("rename") or {}
    differs = raw.get("differs") or {}
    if not isinstance(rename, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()):
        raise HarnessError(f"{where}: label_rules.{name}.rename must map source names to card names (strings).")
    if not isinstance(differs, dict) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                                and isinstance(v, str) for k, v in differs.items()):
        raise HarnessError(f"{where}: label_rules.{name}.differs must map positions (whole numbers) to names.")
    if match == "name" and differs:
        raise HarnessError(f"{where}: label_rules.{name}: 'differs' only applies to match: index.")
    if match == "index" and rename:
        raise HarnessError(f"{where}: label_rules.{name}: 'rename' only applies to match: name.")
    multilabel = raw.get("multilabel", False)
    if not isinstance(multilabel, bool):
        raise HarnessError(f"{where}: label_rules.{name}.multilabel must be true or false, found {multilabel!r}.")
    about = raw.get("about", "")
    if not isinstance(about, str):
        raise HarnessError(f"{where}: label_rules.{name}.about must be text.")
    return LabelRule(name=name, match=match, rename=dict(rename), differs=dict(differs), multilabel=multilabel,
                     about=about)


def read_class_names(path, what: str) -> list[str]:
    """One class name a line (CLIP_benchmark's ``classnames.txt``, the re-host's ``label.txt``), trailing empty
    lines dropped; an unreadable or empty file is a HarnessError naming it."""
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc}).") from exc
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise HarnessError(f"{path}: the {what} is empty.")
    return lines


def parse_label_names(raw: Any, rule: LabelRule, where: str) -> tuple[str, ...]:
    """A source's own meaning of its labels (``label_names``: label i = entry i, as its README states) for sources
    whose files carry bare integers and no class-name file (hf-jsonl); mapped by ``rule`` like a class-name file."""
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(x, str) and x.strip() for x in raw):
        raise HarnessError(f"{where}.label_names must list what each label means (label i = entry i), found {raw!r}.")
    if rule.multilabel:
        raise HarnessError(f"{where}: label rule '{rule.name}' is multi-label; a jsonl label is one integer.")
    return tuple(x.strip() for x in raw)
