"""A generated captioned corpus with planted concepts, in img2dataset's shard format, plus a tiny target: the
offline demo and the tests of retrieval.

A tiny random CLIP does not retrieve by meaning, so the plant is designed so that recall measures the retrieval
machinery honestly (index, search, per-prompt gathering, selection, dedup), not the model:

- **planted** items of class c have as caption one of the card's prompts for c, verbatim (``template.format(c)``),
  the templates dealt in turn, and an image of the class's own hue (:func:`concept_image`).
  In ``text-to-text`` mode the prompt and the caption are the same string, so the text tower gives them the same
  vector whatever its weights; with ``per_prompt`` >= the planted items per template, each must be retrieved.
- **paraphrase** items name the class in other words ("my {c} on the shelf"): retrieved only if the model groups
  texts by meaning; reported, never required.
- **re-crawls**: a planted item's URL again under another key in a later shard (dedup by image).
- **distractors**: the same templates around other nouns, each noun with images of its own grey level.

``planted.json`` lists each class's planted, paraphrase and re-crawled URLs, so precision and recall are measured,
not assumed. The target is an ImageFolder of class images (``testset/<class>/``) with its card.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from harness.core.atomic import write_json

CLASSNAMES = ("aardvark", "lighthouse", "violin", "cactus", "zeppelin", "teapot")
TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a drawing of a {}.", "a close-up photo of the {}.")
PARAPHRASES = ("my {} on the shelf", "look at this {} today", "an old {} in the sun")
DISTRACTORS = ("bicycle", "mountain", "sandwich", "umbrella", "tractor", "pillow", "candle", "glacier", "ladder",
               "kettle", "anchor", "bridge", "chimney", "lantern", "meadow", "orchard", "saddle", "tunnel", "walrus",
               "harbor", "compass", "blanket", "feather", "pebble")
DISTRACTOR_HUES = 12  # grey levels of the distractors' images (two nouns share each)
CARD_NAME = "retrieval-demo"
IMAGE_SIZE = (40, 40)
IMAGE_VARIANTS = 4  # distinct images per label (stripe phase, noise): a tight cluster per concept


def concept_image(label: int, variant: int, size: tuple[int, int] = IMAGE_SIZE, seed: int = 0) -> bytes:
    """A planted concept's image: class ``label < len(CLASSNAMES)`` is a saturated hue of its own (evenly spaced),
    a distractor (``label >= len(CLASSNAMES)``) a grey level of its own; a stripe pattern and a little noise vary
    with ``variant``. Colour and grey stay apart even in a random image tower's features."""
    import colorsys

    from PIL import Image

    rng = np.random.default_rng([seed, label, variant])
    w, h = size
    if label < len(CLASSNAMES):
        rgb = np.array(colorsys.hsv_to_rgb(label / len(CLASSNAMES), 0.85, 0.9), dtype=np.float32)
    else:
        rgb = np.full(3, 0.15 + 0.7 * ((label - len(CLASSNAMES)) % DISTRACTOR_HUES) / DISTRACTOR_HUES, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    period = 6 + 2 * (variant % 3)
    stripes = (((xx + yy * (variant % 2) + variant) // (period // 2)) % 2).astype(np.float32)
    canvas = (0.6 + 0.4 * stripes[..., None]) * rgb[None, None, :] + rng.normal(0, 0.03, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _entries(rng: np.random.Generator, per_class: int, paraphrases: int, recrawls: int, total: int,
             url_base: str) -> list[dict]:
    """Every sample in corpus order (before being dealt to shards): planted, paraphrases, distractors shuffled,
    re-crawls appended at the end (so they land in later shards than their originals)."""
    items = []
    for c, name in enumerate(CLASSNAMES):
        for i in range(per_class):
            items.append({"kind": "planted", "class": name, "label": c, "caption": TEMPLATES[i % len(TEMPLATES)]
                          .format(name)})
        for i in range(paraphrases):
            items.append({"kind": "paraphrase", "class": name, "label": c,
                          "caption": PARAPHRASES[i % len(PARAPHRASES)].format(name)})
    n_fill = total - len(items) - recrawls * len(CLASSNAMES)
    if n_fill < 0:
        raise ValueError(f"a corpus of {total} samples cannot hold the plant ({len(items)} + re-crawls)")
    for i in range(n_fill):
        j = int(rng.integers(len(DISTRACTORS)))  # a distractor's image matches its noun (as a real corpus's would)
        noun = DISTRACTORS[j]
        items.append({"kind": "distractor", "class": None, "label": len(CLASSNAMES) + j % DISTRACTOR_HUES,
                      "caption": TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(noun)})
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    for i, item in enumerate(items):
        item["url"] = f"{url_base}/img/{i:06d}.jpg"
        item["index"] = i
    planted = [it for it in items if it["kind"] == "planted"]
    for c, name in enumerate(CLASSNAMES):
        mine = [it for it in planted if it["label"] == c][:recrawls]
        items.extend({**it, "kind": "recrawl"} for it in mine)
    return items


def write_demo_corpus(out: str | Path, shards: int = 8, samples_per_shard: int = 256, seed: int = 0,
                      per_class: int = 12, paraphrases: int = 3, recrawls: int = 2, test_per_class: int = 8,
                      url_base: str = "http://corpus.invalid") -> dict:
    """Write ``out/shards/{00000..}.tar`` (+ ``_stats.json``), ``out/planted.json``, the target ImageFolder
    ``out/testset/<class>/`` and its card ``out/retrieval-demo.yaml``. Deterministic in ``seed``; the images' URLs
    are ``<url_base>/img/<n>.jpg`` (:mod:`retrieval.serve` answers them on a loopback port)."""
    from retrieval.usercard import write_imagefolder_card

    out = Path(out)
    rng = np.random.default_rng(seed)
    items = _entries(rng, per_class, paraphrases, recrawls, shards * samples_per_shard, url_base.rstrip("/"))
    folder = out / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        chunk = items[shard * samples_per_shard:(shard + 1) * samples_per_shard]
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path.with_suffix(".tar.tmp"), "w") as tar:
            for i, item in enumerate(chunk):
                key = f"{shard:05d}{i:04d}"
                image = concept_image(item["label"], item["index"] % IMAGE_VARIANTS, seed=seed)
                meta = {"url": item["url"], "caption": item["caption"], "key": key, "status": "success",
                        "error_message": None, "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]}
                for ext, blob in (("jpg", image), ("txt", item["caption"].encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(blob), 0
                    tar.addfile(info, io.BytesIO(blob))
        path.with_suffix(".tar.tmp").replace(path)
        write_json(folder / f"{shard:05d}_stats.json", {"count": len(chunk), "successes": len(chunk),
                                                        "failed_to_download": 0, "failed_to_resize": 0})
    planted = {name: {kind: sorted({it["url"] for it in items if it["class"] == name and it["kind"] == kind})
                      for kind in ("planted", "paraphrase", "recrawl")} for name in CLASSNAMES}
    write_json(out / "planted.json", {"classnames": list(CLASSNAMES), "templates": list(TEMPLATES),
                                      "per_template": -(-per_class // len(TEMPLATES)), "classes": planted,
                                      "samples": len(items)})
    test = out / "testset"
    for c, name in enumerate(CLASSNAMES):
        (test / name).mkdir(parents=True, exist_ok=True)
        for i in range(test_per_class):
            (test / name / f"{i:03d}.jpg").write_bytes(concept_image(c, i, seed=seed + 1))
    templates = out / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n", encoding="utf-8")
    card = write_imagefolder_card(test, CARD_NAME, out / f"{CARD_NAME}.yaml", templates=str(templates))
    return {"shards": f"{folder}/{{00000..{shards - 1:05d}}}.tar", "samples": len(items), "card": str(card),
            "planted": str(out / "planted.json")}
