"""A dataset card for a user's own test images: an ImageFolder (one folder per class, images inside) that
``python -m harness eval --dataset my_card.yaml`` scores like any card, and ``python -m retrieval query`` retrieves
pairs for. Class names come from the folder names or a list (in the sorted order of the folders, which is the
label order); templates are CLIP's 80 ImageNet prompts (the ``imagenet-1k`` card's), one simple prompt, or a file."""
from __future__ import annotations

from pathlib import Path

from harness.core.atomic import atomic_write
from retrieval.layout import RetrievalError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIMPLE_TEMPLATES = ("a photo of a {}.",)


def class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _lines(path: str, flag: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise RetrievalError(f"{flag} {path}: no such file (expected a text file with one entry per line).")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def resolve_templates(templates: str) -> list[str]:
    if templates == "clip":
        from harness.cards import get_dataset_card

        return list(get_dataset_card("imagenet-1k").templates)
    if templates == "simple":
        return list(SIMPLE_TEMPLATES)
    found = _lines(templates, "--templates")
    bad = [t for t in found if t.count("{}") != 1]
    if not found or bad:
        raise RetrievalError(f"--templates {templates}: every line must hold exactly one {{}} (the class name); "
                             f"found {bad[0]!r}." if bad else f"--templates {templates}: the file is empty.")
    return found


def write_imagefolder_card(imagefolder: str | Path, name: str, out: str | Path, classnames: str | None = None,
                           templates: str = "clip") -> Path:
    """Write the card ``<name>.yaml`` (``out``: that file, or its folder): ``format: imagefolder``, ``root_folder``
    the folder's absolute path (so any --data-root finds it); and check that it loads."""
    import yaml

    from harness.cards import load_dataset_card

    folder = Path(imagefolder).expanduser().resolve()
    if not folder.is_dir():
        raise RetrievalError(f"--imagefolder {imagefolder}: not a folder (expected one sub-folder per class).")
    classes = class_folders(folder)
    counts = {p.name: sum(1 for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS) for p in classes}
    if len(classes) < 2 or not all(counts.values()):
        empty = [n for n, c in counts.items() if not c]
        raise RetrievalError(f"--imagefolder {folder}: expected at least 2 class folders, each holding images "
                             f"({', '.join(IMAGE_EXTS)}); found {len(classes)} folder(s)"
                             + (f", empty: {', '.join(empty[:5])}" if empty else "") + ".")
    names = [p.name.replace("_", " ") for p in classes] if classnames is None else _lines(classnames, "--classnames")
    if len(names) != len(classes):
        raise RetrievalError(f"--classnames {classnames}: {len(names)} names for {len(classes)} class folders of "
                             f"{folder} (expected one per folder, in the folders' sorted order: "
                             f"{', '.join(p.name for p in classes[:5])}, ...).")
    card = {
        "name": name, "version": 1,
        "description": f"A user's ImageFolder test set ({folder}); card written by `python -m retrieval card`.",
        "elevater": {"yaml": "", "DATASET": name, "NUM_CLASSES": len(names), "METRIC": "accuracy",
                     "CENTER_CROP": True},
        "type": "multiclass", "format": "imagefolder", "root_folder": str(folder), "labelmap": None,
        "splits": {"test": {"index": "", "files": [], "num_images": sum(counts.values())}}, "eval_split": "test",
        "classnames": names, "templates": resolve_templates(templates),
    }
    out = Path(out).expanduser()
    out = out if out.suffix in (".yaml", ".yml") else out / f"{name}.yaml"
    if out.stem != name:
        raise RetrievalError(f"--out {out}: a card's file is named after the card: {name}.yaml (found {out.name}).")
    text = yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
    atomic_write(out, lambda f: f.write(text), mode="w")
    load_dataset_card(out)  # strict parse: a card this writes must load
    return out
