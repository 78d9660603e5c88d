"""Regenerate dataset_yamls/*.yaml from ELEVATER's dataset definitions (shared/reference/elevater_datasets.json).

Class names and templates are transcribed exactly (tests/test_cards.py checks the round trip). Run:
    python scripts/make_dataset_cards.py ../shared/reference/elevater_datasets.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

TYPES = {"classification_multiclass": "multiclass", "classification_multilabel": "multilabel"}
# Where an ImageNet-1K validation ImageFolder (one folder per WordNet synset) may sit under a data root.
IMAGENET_FOLDERS = ["imagenet/val", "imagenet-1k/val", "ILSVRC2012/val", "ILSVRC/Data/CLS-LOC/val"]


def card_from_reference(key: str, ref: dict) -> dict:
    names = ref["classnames"]
    synonyms = None
    if any(isinstance(n, list) for n in names):
        synonyms = [n if isinstance(n, list) else [n] for n in names]
        names = [n[0] for n in synonyms]  # the toolkit prompts with the first synonym
    card = {
        "name": ref["dataset_name"],
        "version": 1,
        "description": f"ELEVATER {ref['dataset_name']} ({ref['type']}), from the toolkit's {ref['elevater_yaml']}.",
        "elevater": {
            "yaml": ref["elevater_yaml"],
            "DATASET": ref["dataset_name"],
            "NUM_CLASSES": ref["num_classes_yaml"],
            "METRIC": ref["metric"],
            "CENTER_CROP": ref["center_crop"],
        },
        "type": TYPES[ref["type"]],
        "format": ref["format"],
        "root_folder": ref["root_folder"],
        "labelmap": ref["labelmap_file"],
        "splits": {
            split: {"index": s["index_path"], "files": s["files_for_local_usage"], "num_images": s["num_images"]}
            for split, s in ref["splits"].items()
        },
        "eval_split": "test",
        "classnames": names,
    }
    if synonyms is not None:
        card["class_synonyms"] = synonyms
    card["templates"] = ref["templates"]
    if ref["dataset_name"] == "imagenet-1k":
        card["imagefolder_dirs"] = IMAGENET_FOLDERS
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "dataset_yamls")
    args = parser.parse_args()
    data = json.loads(args.reference.read_text(encoding="utf-8"))["datasets"]
    args.out.mkdir(parents=True, exist_ok=True)
    for key, ref in data.items():
        card = card_from_reference(key, ref)
        text = yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=float("inf"))
        (args.out / f"{card['name']}.yaml").write_text(text, encoding="utf-8")
        print(f"wrote {card['name']}.yaml")


if __name__ == "__main__":
    main()
