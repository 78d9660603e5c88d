"""The "Retrieved for <card>" sections: what ``python -m retrieval query`` retrieved for a dataset card (its
statistics JSON, read as a file: the harness never imports retrieval/) beside what tuning on those pairs did to each
class: per class, the pairs kept and their mean score, and for every tuned model evaluated on the card whose base
model was evaluated too, both per-class accuracies and the gain (from the results' stored probabilities and the
card's labels)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from harness.core.errors import HarnessError
from harness.report.tables import MISSING, Table, fmt

logger = logging.getLogger(__name__)


def read_query_stats(path: Path) -> dict:
    try:
        stats = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HarnessError(f"--retrieved {path}: not a readable query statistics JSON ({exc}); it is written beside "
                           f"the parquet by `python -m retrieval query`.") from exc
    if not isinstance(stats, dict) or not isinstance(stats.get("classes"), dict) or "dataset" not in stats:
        found = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise HarnessError(f"--retrieved {path}: expected the JSON `python -m retrieval query` writes (keys dataset, "
                           f"classes, ...); found {found}.")
    return stats


def _results_for(dataset: str, run_sets: list[tuple[str, Path]], protocol: str) -> dict[str, tuple[dict, Path]]:
    """{model card: (result, its folder)} of every result for ``dataset`` under ``protocol``."""
    from harness.store.results import ResultFileError, read_result

    found: dict[str, tuple[dict, Path]] = {}
    for _, folder in run_sets:
        for path in sorted(Path(folder).glob(f"*/{protocol}/{dataset}.json")):
            try:
                found.setdefault(path.parent.parent.name, (read_result(path), path.parent))
            except ResultFileError as exc:
                logger.warning("retrieved section: skipping %s (%s)", path, exc)
    return found


def _labels(card, result: dict) -> np.ndarray | None:
    """The card's labels, from the data the result was computed on (its recorded location)."""
    from harness.data.testsets import open_eval_data

    location = Path(str(result["dataset"].get("location") or ""))
    root = Path(card.root_folder)
    data_root = location.parents[len(root.parts) - 1] if not root.is_absolute() and len(location.parts) > len(
        root.parts) else location
    try:
        return np.asarray(open_eval_data(card, data_root).labels)
    except (HarnessError, OSError, IndexError) as exc:
        logger.warning("retrieved section: no per-class accuracy for %s (%s)", card.name, exc)
        return None


def per_class_accuracy(result: dict, folder: Path, labels: np.ndarray | None, n_classes: int) -> np.ndarray | None:
    if labels is None or labels.ndim != 1 or "probs" not in result["files"]:
        return None
    probs = np.load(folder / result["files"]["probs"])
    if probs.shape != (len(labels), n_classes):
        return None  # images were skipped, or another labelling: no per-class numbers rather than wrong ones
    hit = probs.argmax(1) == labels
    return np.array([hit[labels == c].mean() * 100 if (labels == c).any() else np.nan for c in range(n_classes)])


def _card_name(ref: str | None) -> str | None:
    """A card reference as a card name: a card file is named after its card (``<name>.yaml``)."""
    return Path(ref).stem if ref and ref.endswith((".yaml", ".yml")) else ref


def retrieved_sections(paths: list[Path], run_sets: list[tuple[str, Path]], protocol: str
                       ) -> list[tuple[str, list[Table]]]:
    from harness.cards import get_dataset_card

    sections = []
    for path in paths:
        stats = read_query_stats(path)
        card = get_dataset_card(stats.get("dataset_card") or stats["dataset"])
        results = _results_for(card.name, run_sets, protocol)
        pairs = [(m, _card_name(r[0]["model"].get("base_model"))) for m, r in results.items()
                 if _card_name(r[0]["model"].get("base_model")) in results]
        labels = _labels(card, next(iter(results.values()))[0]) if pairs else None
        accuracy = {m: per_class_accuracy(r, folder, labels, card.num_classes) for m, (r, folder) in results.items()
                    if any(m in p for p in pairs)}
        header = ["class", "pairs", "mean score"]
        for tuned, base in pairs:
            header += [f"{base} acc", f"{tuned} acc", "gain"]
        rows = []
        for c, name in enumerate(card.classnames):
            info = stats["classes"].get(name, {})
            row = [name, str(info.get("pairs", 0)) + (" (short)" if name in stats.get("short_classes", {}) else ""),
                   f"{info['mean_score']:.3f}" if info.get("mean_score") is not None else MISSING]
            for tuned, base in pairs:
                a, b = accuracy.get(base), accuracy.get(tuned)
                row += [fmt(a[c]) if a is not None else MISSING, fmt(b[c]) if b is not None else MISSING,
                        fmt(b[c] - a[c], signed=True) if a is not None and b is not None else MISSING]
            rows.append(row)
        dup = stats.get("duplicates", {})
        note = (f"{stats.get('pairs', 0)} pairs from {stats.get('corpus_rows', '?')} corpus rows, {stats.get('mode')}, "
                f"{stats.get('per_class')} per class ({stats.get('per_prompt')} per prompt, "
                f"{stats.get('prompts_per_class')} prompts per class), dedup {stats.get('dedup')}: "
                f"{dup.get('duplicate_rows', 0)} duplicate corpus rows folded, "
                f"{dup.get('images_shared_by_classes', 0)} images found by several classes. Mean score: the inner "
                f"product of the kept images' best prompt. "
                + (f"Short classes: {', '.join(stats['short_classes'])}. " if stats.get("short_classes") else "")
                + ("Per-class accuracy (%) on the card's test images, from the stored probabilities; gain = tuned "
                   "minus its base." if pairs else "No tuned model with its base evaluated on this card yet."))
        sections.append((f"Retrieved for {card.display_name}",
                         [Table(f"Retrieved pairs per class ({path.name})", header, rows, note)]))
    return sections
