"""Where each ELEVATER test set can be read today, and reading it from there in place.

The sources are data (harness/data/sources.yaml, package data, validated by ``python -m harness validate``): per
dataset card, most faithful first, ``elevater`` (the toolkit's container and layout; implied for every card),
``elevater-rehost`` (OFA-Sys/chinese-clip-eval's ImageFolder + index.json), ``clip-benchmark`` (wds_<name>
webdatasets) and ``hf-jsonl`` (a jsonl of {img, label} + its images, harness.data.hf_jsonl), each with its fidelity
to ELEVATER's own split and, for hub sources, the repo, revision, split, image count and label rule.

Local layout contract: a hub repo downloaded with
``hf download <org>/<repo> --repo-type dataset --local-dir DATA_ROOT/<org>/<repo>`` is found under
``DATA_ROOT/<org>/<repo>/`` (e.g. ``DATA_ROOT/clip-benchmark/wds_vtab-cifar100/test/0.tar``); a re-host dataset as
``DATA_ROOT/OFA-Sys/chinese-clip-eval/<member>/`` (extracted) or ``.../<member>.zip`` (read in place).
:func:`open_most_faithful` (what ``open_eval_data`` calls) opens the most faithful layout present and logs the
choice; when none is present its MissingDataError lists every place it looked.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cards.schema import _check_keys, _choice
from harness.core.errors import HarnessError
from harness.data.label_rules import LabelRule, parse_label_names, parse_label_rule

if TYPE_CHECKING:
    from harness.cards import DatasetCard
    from harness.data.testsets import EvalData

logger = logging.getLogger(__name__)

FIDELITY = ("same split", "same images in another order", "different split")
SOURCE_KINDS = ("elevater", "elevater-rehost", "clip-benchmark", "hf-jsonl")  # order of fidelity
SOURCES_FILE = Path(__file__).with_name("sources.yaml")
REHOST_RULE_PREFIX = "elevater-rehost:"  # the re-host's per-dataset identity rule (match: index)
HAND_DOWNLOAD_NOTE = "hand download, revision unknown"


@dataclass(frozen=True)
class DataSource:
    dataset: str
    kind: str
    fidelity: str
    split: str
    expected_count: int
    repo: str | None = None  # "clip-benchmark/wds_vtab-cifar100", "OFA-Sys/chinese-clip-eval"
    revision: str | None = None  # full 40-hex commit where known
    label_rule: str | None = None  # name of the rule in the sources data
    member: str | None = None  # re-host: the dataset's folder (and zip) name inside ELEVATER_all.zip
    only_when_named: bool = False  # fetched only when the dataset is named explicitly (licence)
    about: str = ""
    caveat: str = ""  # a known label difference that does not change the fidelity (shown by --plan-only, reports)
    label_names: tuple[str, ...] = ()  # hf-jsonl: what label i means, from the source's own README (data)
    revision_verified: bool = False  # the local copy's commit is known (prepare's record); a hand download's is not

    def local_dir(self, data_root: str | Path) -> Path:
        """Where the source's files live under the data root: ``DATA_ROOT/<org>/<repo>`` for hub sources (the
        ``hf download --local-dir`` contract), the data root itself for the toolkit layout."""
        root = Path(data_root).expanduser()
        return root / self.repo if self.repo else root

    def provenance(self) -> dict:
        """What results record as ``data_source``. A hub copy whose commit is not known (a hand download, no record
        of prepare's beside it) is not credited with the pinned commit: revision null, ``revision_verified`` false."""
        out = {"kind": self.kind, "repo": self.repo, "revision": self.revision, "split": self.split,
               "fidelity": self.fidelity}
        if self.kind != "elevater":
            out["revision_verified"] = self.revision_verified
            if not self.revision_verified:
                out.update(revision=None, note=HAND_DOWNLOAD_NOTE)
        return out

    def remedy(self) -> str:
        return f"Re-download it: python -m harness prepare --source {self.kind} --datasets {self.dataset}."


@dataclass(frozen=True)
class SourcesData:
    rules: dict[str, LabelRule]
    sources: dict[str, list[DataSource]]  # hub sources per dataset, most faithful first (elevater not included)
    rehost_repo: str
    rehost_revision: str | None
    rehost_file: str


_HUB_KEYS = {"repo", "revision", "split", "count", "fidelity", "label_rule", "only_when_named", "about", "caveat"}
_SOURCE_KEYS = {"elevater-rehost": {"member", "differs"}, "clip-benchmark": _HUB_KEYS,
                "hf-jsonl": _HUB_KEYS | {"label_names"}}
_HUB_REQ = {"repo", "revision", "split", "count", "fidelity", "label_rule"}
_REQUIRED = {"elevater-rehost": {"member"}, "clip-benchmark": _HUB_REQ, "hf-jsonl": _HUB_REQ | {"label_names"}}


def _check_revision(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)):
        raise HarnessError(f"{where}: revision must be a full 40-hex commit hash or null, found {value!r}.")
    return value


def parse_sources(raw: Any, where: str, dataset_cards: dict[str, "DatasetCard"] | None = None) -> SourcesData:
    """The sources data, strictly: unknown keys, wrong types, unknown rules or datasets are errors naming ``where``
    and the key. With ``dataset_cards``, every dataset must be a card and each count a whole number."""
    top = {"version", "rehost", "label_rules", "datasets"}
    _check_keys(raw, top, top, where)
    if raw["version"] != 1:
        raise HarnessError(f"{where}: version must be 1, found {raw['version']!r}.")
    rehost = raw["rehost"]
    _check_keys(rehost, {"repo", "revision", "file"}, {"repo", "revision", "file"}, f"{where}: rehost")
    rules_raw = raw.get("label_rules")
    if not isinstance(rules_raw, dict) or not rules_raw:
        raise HarnessError(f"{where}: label_rules must be a non-empty mapping of rule name -> rule.")
    rules = {name: parse_label_rule(name, r, where) for name, r in rules_raw.items()}
    datasets = raw.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise HarnessError(f"{where}: datasets must be a non-empty mapping of dataset card -> sources.")
    out: dict[str, list[DataSource]] = {}
    for dataset, entry in datasets.items():
        at = f"{where}: datasets.{dataset}"
        if dataset_cards is not None and dataset not in dataset_cards:
            raise HarnessError(f"{at}: no dataset card of that name.")
        _check_keys(entry, set(_SOURCE_KEYS), set(), f"{at} (source kinds; elevater is implied)")
        card = dataset_cards.get(dataset) if dataset_cards else None
        found = []
        for kind in SOURCE_KINDS[1:]:
            if kind not in entry:
                continue
            spec = entry[kind]
            at_kind = f"{at}.{kind}"
            _check_keys(spec, _SOURCE_KEYS[kind], _REQUIRED[kind], at_kind)
            if kind == "elevater-rehost":
                if not isinstance(spec["member"], str) or not spec["member"] or "/" in spec["member"]:
                    raise HarnessError(f"{at_kind}.member must be a folder name, found {spec['member']!r}.")
                # test/<class id>/ holds ELEVATER's own class ids: label.txt must be the card's names at every index
                # (never matched by name: caltech-101's two face classes would swap silently)
                rule = parse_label_rule(f"{REHOST_RULE_PREFIX}{dataset}", {
                    "match": "index", "differs": spec.get("differs") or {},
                    "about": "the re-host's class ids are ELEVATER's own: label.txt in the card's order"}, where)
                if card is not None and any(i >= card.num_classes for i in rule.differs):
                    raise HarnessError(f"{at_kind}.differs names a position beyond the card's {card.num_classes} "
                                       f"classes.")
                rules[rule.name] = rule
                found.append(DataSource(
                    dataset=dataset, kind=kind, fidelity="same split", split="test",
                    expected_count=card.eval_spec.num_images if card else 0, repo=rehost["repo"],
                    revision=_check_revision(rehost["revision"], f"{where}: rehost.revision"),
                    label_rule=rule.name, member=spec["member"]))
                continue
            repo = spec["repo"]
            if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
                raise HarnessError(f"{at_kind}.repo must be '<org>/<name>', found {repo!r}.")
            _choice(spec["fidelity"], FIDELITY, f"{at_kind}.fidelity")
            if spec["label_rule"] not in rules:
                raise HarnessError(f"{at_kind}.label_rule {spec['label_rule']!r} is not among label_rules "
                                   f"({', '.join(rules)}).")
            count = spec["count"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise HarnessError(f"{at_kind}.count must be a whole number of images, found {count!r}.")
            if not isinstance(spec["split"], str) or not spec["split"] or "/" in spec["split"]:
                raise HarnessError(f"{at_kind}.split must be a split folder name, found {spec['split']!r}.")
            if not isinstance(caveat := spec.get("caveat", ""), str):
                raise HarnessError(f"{at_kind}.caveat must be text, found {caveat!r}.")
            if not isinstance(when_named := spec.get("only_when_named", False), bool):
                raise HarnessError(f"{at_kind}.only_when_named must be true or false.")
            rule = rules[spec["label_rule"]]
            names = parse_label_names(spec.get("label_names"), rule, at_kind) if kind == "hf-jsonl" else ()
            if card is not None:
                if rule.multilabel != card.multilabel:
                    raise HarnessError(f"{at_kind}: label rule '{rule.name}' is "
                                       f"{'multi' if rule.multilabel else 'single'}-label but the card is "
                                       f"{card.type}.")
                if spec["fidelity"] != "different split" and count != card.eval_spec.num_images:
                    raise HarnessError(f"{at_kind}: count {count} differs from the card's {card.eval_spec.num_images}"
                                       f" test images, so the fidelity cannot be '{spec['fidelity']}'.")
                bad = [i for i in rule.differs if i >= card.num_classes]
                if bad:
                    raise HarnessError(f"{at_kind}: label rule '{rule.name}' names position {bad[0]}, the card has "
                                       f"{card.num_classes} classes.")
            found.append(DataSource(
                dataset=dataset, kind=kind, fidelity=spec["fidelity"], split=spec["split"], expected_count=count,
                repo=repo, revision=_check_revision(spec["revision"], f"{at_kind}.revision"),
                label_rule=rule.name, only_when_named=when_named, about=str(spec.get("about", "")),
                caveat=" ".join(caveat.split()), label_names=names))
        out[dataset] = found
    return SourcesData(rules=rules, sources=out, rehost_repo=rehost["repo"],
                       rehost_revision=rehost["revision"], rehost_file=rehost["file"])


@functools.lru_cache(maxsize=1)
def load_sources() -> SourcesData:
    """The packaged sources data, checked against the dataset cards it names (only those: a broken card elsewhere
    does not stop every dataset from opening)."""
    from harness.cards import get_dataset_card
    from harness.core.safe_read import read_bounded_text

    import yaml

    try:
        raw = yaml.safe_load(read_bounded_text(SOURCES_FILE, "card"))
    except yaml.YAMLError as exc:
        raise HarnessError(f"{SOURCES_FILE}: not valid YAML ({exc}).") from exc
    cards = {}
    named = raw.get("datasets") if isinstance(raw, dict) else None
    for name in [n for n in named if isinstance(n, str)] if isinstance(named, dict) else []:
        try:
            cards[name] = get_dataset_card(name)
        except HarnessError:
            pass  # parse_sources names it: no dataset card of that name
    return parse_sources(raw, str(SOURCES_FILE), cards)


def validate_sources() -> tuple[list[str], list[str]]:
    """(ok lines, error lines) for ``python -m harness validate``."""
    load_sources.cache_clear()
    try:
        data = load_sources()
    except HarnessError as exc:
        return [], [str(exc)]
    ok = []
    for dataset, found in data.sources.items():
        ok.append(f"sources {dataset}: elevater, " + ", ".join(
            f"{s.kind} ({s.fidelity}{', ' + s.repo if s.kind not in ('elevater', 'elevater-rehost') else ''})"
            for s in found))
    return ok, []


def label_rule(name: str) -> LabelRule:
    rules = load_sources().rules
    if name not in rules:
        raise HarnessError(f"No label rule '{name}' in {SOURCES_FILE} (defined: {', '.join(rules)}).")
    return rules[name]


def elevater_source(card: "DatasetCard") -> DataSource:
    return DataSource(dataset=card.name, kind="elevater", fidelity="same split", split=card.eval_split,
                      expected_count=card.eval_spec.num_images)


def sources_for(dataset_name: str) -> list[DataSource]:
    """Every source of the dataset card, most faithful first (``elevater`` always first)."""
    from harness.cards import get_dataset_card
    return card_sources(get_dataset_card(dataset_name))


def card_sources(card: "DatasetCard") -> list[DataSource]:
    """The sources of a card (also one outside the card folders: only its toolkit layout unless the sources data
    names it)."""
    return [elevater_source(card), *load_sources().sources.get(card.name, [])]


# -- finding and opening the layouts under a data root

def rehost_places(source: DataSource, data_root: str | Path) -> list[Path]:
    """Where a re-host dataset may be: the extracted folder, then the per-dataset zip."""
    base = source.local_dir(data_root)
    return [base / source.member, base / f"{source.member}.zip"]


def _present(card: "DatasetCard", source: DataSource, data_root: Path) -> tuple[Path | None, list[str]]:
    """(the location found or None, the places looked, in words)."""
    if source.kind == "elevater":
        from harness.data.testsets import _expected_files, _find_imagefolder

        folder = data_root / card.root_folder
        looked = [f"{folder}/ ({', '.join(_expected_files(card))})"]
        if card.imagefolder_dirs:
            looked.append("an ImageFolder of synset folders (n01440764/...) at the data root or under one of: "
                          + ", ".join(card.imagefolder_dirs))
            found = None if folder.is_dir() else _find_imagefolder(card, data_root)
            if found is not None:
                return found, looked
        complete = folder.is_dir() and (card.format == "imagefolder"  # a user's own class folders
                                        or all((folder / f).is_file() for f in _expected_files(card)))
        return (folder if complete else None), looked
    if source.kind == "elevater-rehost":
        places = rehost_places(source, data_root)
        found = next((p for p in places if p.is_dir() or p.is_file()), None)
        return found, ([str(p) for p in places] if found else [f"{places[0]}/ (extracted) or {places[1]}"])
    if source.kind == "hf-jsonl":  # the jsonl marks the copy; the reader checks the images it names
        jsonl = source.local_dir(data_root) / f"{source.split}.jsonl"
        return (jsonl.parent if jsonl.is_file() else None), [f"{jsonl} (+ the images it names)"]
    split_dir = source.local_dir(data_root) / source.split
    return (source.local_dir(data_root) if split_dir.is_dir() else None), [f"{split_dir}/ (nshards.txt, 0.tar, ...)"]


def open_source(card: "DatasetCard", source: DataSource, data_root: str | Path, *, strict: bool = True,
                location: Path | None = None) -> "EvalData":
    """Read ``source``'s copy of the card's test split in place. ``strict``: the image count, class names and the
    label rule's bijection are checked (a HarnessError naming the file and the remedy otherwise); not strict: a
    count that differs is logged, not refused (class names and labels are always checked)."""
    data_root = Path(data_root).expanduser()
    if source.kind == "elevater":
        from harness.data.testsets import open_elevater_layout

        data = open_elevater_layout(card, data_root)
        data.source = source.provenance()
        return data
    source = with_recorded_revision(source, data_root)
    if location is None:
        location, looked = _present(card, source, data_root)
        if location is None:
            from harness.data.testsets import MissingDataError

            raise MissingDataError(f"Dataset '{card.name}' ({source.kind}) not found: looked for "
                                   f"{'; '.join(looked)}. {source.remedy()}")
    if source.kind == "elevater-rehost":
        from harness.data.rehost import open_rehost

        return open_rehost(card, source, location, strict=strict)
    if source.kind == "hf-jsonl":
        from harness.data.hf_jsonl import open_hf_jsonl

        return open_hf_jsonl(card, source, location, label_rule(source.label_rule), strict=strict)
    from harness.data.wds_split import open_wds_split

    return open_wds_split(card, source, location, label_rule(source.label_rule), strict=strict)


RECORD_FILE = ".harness_source.json"  # written by prepare next to a hub download: the commit it came from


def with_recorded_revision(source: DataSource, data_root: str | Path) -> DataSource:
    """``source`` with the commit its local copy was downloaded at (``prepare``'s record in the repo folder), so
    results name the revision actually read even where the sources data has none; a copy of another commit than the
    one pinned is refused. A hand download without the record is not credited with the pinned commit: its
    provenance says revision null, ``revision_verified`` false (:data:`HAND_DOWNLOAD_NOTE`)."""
    import dataclasses
    import json
    record = source.local_dir(data_root) / RECORD_FILE
    try:
        recorded = json.loads(record.read_text(encoding="utf-8")).get("revision")
    except (OSError, ValueError, AttributeError):
        return source
    if not isinstance(recorded, str) or not recorded:
        return source
    if source.revision and recorded != source.revision:
        raise HarnessError(f"{record}: this copy of {source.repo} was downloaded at commit {recorded}, the sources "
                           f"data pins {source.revision}. {source.remedy()}")
    return dataclasses.replace(source, revision=recorded, revision_verified=True)


def present_sources(card: "DatasetCard", data_root: str | Path) -> tuple[list[tuple[DataSource, Path]], list[str]]:
    """The sources of ``card`` present under ``data_root`` (most faithful first) with their location, and every
    place looked."""
    data_root = Path(data_root).expanduser()
    found, looked = [], []
    for source in card_sources(card):
        location, places = _present(card, source, data_root)
        looked.extend(f"{source.kind}: {p}" for p in places)
        if location is not None:
            found.append((source, location))
    return found, looked


def open_most_faithful(card: "DatasetCard", data_root: str | Path) -> "EvalData":
    """Open the most faithful layout of the card's test split present under ``data_root`` and log the choice."""
    from harness.data.testsets import MissingDataError

    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise MissingDataError(f"Data root {data_root} does not exist or is not a folder.")
    found, looked = present_sources(card, data_root)
    folder = data_root / card.root_folder
    if folder.is_dir() and not any(s.kind == "elevater" for s, _ in found):  # the toolkit's copy, incomplete
        if not found:
            from harness.data.testsets import open_elevater_layout

            return open_elevater_layout(card, data_root)  # its error names the missing files
        logger.warning("%s: the toolkit layout in %s is incomplete; reading %s instead", card.name, folder,
                       found[0][0].kind)
    if not found:
        raise MissingDataError(
            f"Dataset '{card.name}' not found under {data_root}; looked for: " + "; ".join(looked)
            + f". Get it with: python -m harness prepare --datasets {card.name} (or download a source by hand, "
              f"see docs/data.md).")
    first_error: HarnessError | None = None
    for k, (source, location) in enumerate(found):
        rest = found[k + 1:]
        try:
            data = open_source(card, source, data_root, location=location)
        except HarnessError as exc:  # a broken or partial copy of a more faithful source does not block the others
            if not rest:
                if first_error is not None:  # every copy failed: the most faithful one's error (all are logged)
                    logger.warning("%s: the %s copy at %s cannot be read either (%s)", card.name, source.kind,
                                   location, " ".join(str(exc).split()))
                raise first_error or exc
            first_error = first_error or exc
            logger.warning("%s: the %s copy at %s cannot be read (%s); trying %s at %s instead (remove or repair "
                           "%s to read it again)", card.name, source.kind, location, " ".join(str(exc).split()),
                           rest[0][0].kind, rest[0][1], location)
            continue
        if rest:
            logger.info("%s: reading %s (%s) at %s; also present, less faithful: %s", card.name, source.kind,
                        source.fidelity, location, ", ".join(f"{s.kind} at {p}" for s, p in rest))
        elif source.kind != "elevater" or k:
            logger.info("%s: reading %s (%s) at %s", card.name, source.kind, source.fidelity, location)
        return data
    raise AssertionError("unreachable")
