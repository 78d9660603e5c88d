"""Data readers: ELEVATER iris/coco layouts (zip@ paths, multilabel), ImageNet ImageFolder, and clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from harness.cards import card_to_dict, get_dataset_card, parse_dataset_card
from harness.data.testsets import MissingDataError, open_eval_data
from harness.core.errors import HarnessError
from harness.data.synthetic import class_image, demo_labels, write_coco, write_iris


def test_iris_multiclass_reads_labels_and_zip_images(demo_root):
    card = get_dataset_card("cifar-10")
    data = open_eval_data(card, demo_root)
    assert data.layout == "elevater-iris"
    index = (demo_root / card.root_folder / "test.txt").read_text().split("\n")
    expected = [int(line.rsplit(" ", 1)[1]) for line in index if line]
    assert data.labels.tolist() == expected
    assert index[0].startswith("val.zip@")  # the card's files_for_local_usage, read in place
    img = data.load_image(0)
    assert img.mode == "RGB" and img.size == (48, 40)


def test_iris_multilabel_reads_comma_separated_labels(demo_root):
    card = get_dataset_card("voc-2007-classification")
    data = open_eval_data(card, demo_root)
    lines = [ln for ln in (demo_root / card.root_folder / "test_ic.txt").read_text().split("\n") if ln]
    assert any("," in ln.rsplit(" ", 1)[1] for ln in lines)
    for row, line in zip(data.labels, lines):
        ids = sorted(int(x) for x in line.rsplit(" ", 1)[1].split(","))
        assert np.flatnonzero(row).tolist() == ids
    assert data.labels.shape == (len(lines), 20)


def test_coco_reads_categories_in_id_order(demo_root):
    card = get_dataset_card("hateful-memes")
    data = open_eval_data(card, demo_root)
    coco = json.loads((demo_root / card.root_folder / "test_meta.json").read_text())
    assert data.layout == "elevater-coco"
    assert data.labels.tolist() == [a["category_id"] - 1 for a in coco["annotations"]]
    assert data.load_image(1).mode == "RGB"  # PNG inside img.zip


def _tiny_imagefolder_card(num_classes=3):
    data = card_to_dict(get_dataset_card("imagenet-1k"))
    data.update(name="tiny-imagenet-folder", classnames=[f"class {i}" for i in range(num_classes)])
    data["elevater"]["NUM_CLASSES"] = None
    return parse_dataset_card(data, "test card")


def test_imagenet_imagefolder_layout(tmp_path):
    card = _tiny_imagefolder_card()
    folder = tmp_path / "imagenet" / "val"
    wnids = ["n01440764", "n01443537", "n01484850"]
    for c, wnid in enumerate(wnids):
        (folder / wnid).mkdir(parents=True)
        for i in range(2):
            (folder / wnid / f"ILSVRC2012_val_{c}{i}.JPEG").write_bytes(class_image(c, i, 3))
    data = open_eval_data(card, tmp_path)  # found under imagenet/val
    assert data.layout == "imagefolder"
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert open_eval_data(card, folder).layout == "imagefolder"  # or given directly (--imagenet-val style)
    shutil.rmtree(folder / wnids[2])
    with pytest.raises(HarnessError, match="2 class folders but the card has 3 class names"):
        open_eval_data(card, folder)


def test_missing_root_and_missing_dataset_name_expected_files(tmp_path, demo_root):
    with pytest.raises(MissingDataError, match="does not exist"):
        open_eval_data(get_dataset_card("mnist"), tmp_path / "nope")
    with pytest.raises(MissingDataError) as err:
        open_eval_data(get_dataset_card("mnist"), tmp_path)
    msg = str(err.value)
    assert "classification/mnist_20211008" in msg and "test.txt" in msg and "val.zip" in msg and "labels.txt" in msg
    with pytest.raises(MissingDataError, match="ImageFolder of synset folders"):
        open_eval_data(get_dataset_card("imagenet-1k"), tmp_path)


def test_incomplete_dataset_names_the_missing_file(tmp_path, demo_root):
    card = get_dataset_card("cifar-10")
    shutil.copytree(demo_root / card.root_folder, tmp_path / card.root_folder)
    (tmp_path / card.root_folder / "val.zip").unlink()
    with pytest.raises(HarnessError, match="incomplete: missing val.zip") as err:
        open_eval_data(card, tmp_path)
    assert not isinstance(err.value, MissingDataError)


def test_class_count_mismatch_between_card_and_data(tmp_path):
    card = get_dataset_card("cifar-10")
    write_iris(card, tmp_path, demo_labels(card, 1))
    labels_txt = tmp_path / card.root_folder / "labels.txt"
    labels_txt.write_text("\n".join(labels_txt.read_text().split("\n")[:9]) + "\n")
    with pytest.raises(HarnessError, match=r"data has 9 classes .*card has 10 class names"):
        open_eval_data(card, tmp_path)
    coco_card = get_dataset_card("kitti-distance")
    write_coco(coco_card, tmp_path, [0, 1, 2, 3])
    meta = tmp_path / coco_card.root_folder / "test_meta.json"
    coco = json.loads(meta.read_text())
    coco["categories"].append({"id": 99, "name": "extra"})
    meta.write_text(json.dumps(coco))
    with pytest.raises(HarnessError, match="data has 5 classes"):
        open_eval_data(coco_card, tmp_path)


def test_label_out_of_range_and_multiclass_with_two_labels(tmp_path):
    card = get_dataset_card("cifar-10")
    folder = write_iris(card, tmp_path, [0, 1, 2])
    index = folder / "test.txt"
    index.write_text(index.read_text().replace(" 2\n", " 12\n"))
    with pytest.raises(HarnessError, match=r"test.txt, line 3: label '12' — expected .* classes 0..9"):
        open_eval_data(card, tmp_path)
    index.write_text(index.read_text().replace(" 12\n", " 1,2\n"))
    with pytest.raises(HarnessError, match="multiclass but image .* has 2 labels"):
        open_eval_data(card, tmp_path)


def test_unparseable_index_is_a_clear_error(tmp_path):
    card = get_dataset_card("kitti-distance")
    folder = write_coco(card, tmp_path, [0, 1])
    (folder / "test_meta.json").write_text("{not json")
    with pytest.raises(HarnessError, match="could not parse .*test_meta.json as a coco"):
        open_eval_data(card, tmp_path)


def test_demo_data_any_size_works_or_is_refused_clearly(tmp_path):
    """More demo images than ImageNet has classes used to crash ("Cannot take a larger sample than population")."""
    from harness.cli import main
    from harness.data.synthetic import demo_labels, make_demo_suite

    card = get_dataset_card("imagenet-1k")
    labels = demo_labels(card, 60)  # 1,200 images over 1,000 classes
    assert len(labels) == 1200 and set(labels) == set(range(1000))
    assert len(set(demo_labels(card, 3))) == 60  # small sizes: distinct classes, as before
    made = make_demo_suite(tmp_path / "big", images_per_class=60, names=("imagenet-1k",))
    data = open_eval_data(card, tmp_path / "big")
    assert len(data) == 1200 and made["imagenet-1k"] == data.location
    for bad in (0, -1):
        with pytest.raises(HarnessError, match="at least 1"):
            make_demo_suite(tmp_path / "bad", images_per_class=bad)
    assert main(["make-demo-data", "--out", str(tmp_path / "cli"), "--images-per-class", "0"]) == 2


def test_one_iris_line_parser_for_eval_and_prepare(tmp_path):
    from harness.data.testsets import parse_iris_line
    from harness.data.prepare.verify import VerifyError, read_index

    assert parse_iris_line("val.zip@a b.jpg 3\n", 1, "x") == ("val.zip@a b.jpg", [3])
    assert parse_iris_line("img.jpg 0,4", 2, "x", num_classes=5) == ("img.jpg", [0, 4])
    for line, needle in [("img.jpg", "no label"), ("img.jpg -1", "label '-1'"), ("img.jpg 1,x", "label 'x'")]:
        with pytest.raises(HarnessError, match=f"x, line 7: {needle}"):
            parse_iris_line(line, 7, "x")
    with pytest.raises(HarnessError, match="label '5' .* classes 0..4"):
        parse_iris_line("img.jpg 5", 1, "x", num_classes=5)
    index = tmp_path / "test.txt"
    index.write_text("val.zip@a.jpg 1\nval.zip@b.jpg\n")  # prepare refuses what eval would refuse
    with pytest.raises(VerifyError, match="line 2: no label"):
        read_index(index, "test.txt", "iris")


_WORKER_IMPORTS = r'''
import io, sys
import numpy as np
from PIL import Image

class Probe:
    """Decodes one JPEG per item inside a DataLoader worker and returns the modules the worker had to import."""
    def __init__(self, blob):
        self.blob = blob
    def __len__(self):
        return 2
    def __getitem__(self, i):
        from harness.data.decoding import decode_image
        before = set(sys.modules)
        decode_image(self.blob)
        return sorted(set(sys.modules) - before)

buf = io.BytesIO()
Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
from harness.engine.{module} import {factory} as make
loader = make(Probe(buf.getvalue()), {args})
new = sorted({{m for batch in loader for item in batch for m in (item if isinstance(item, list) else [item])}})
print("NEW:" + ",".join(new))
'''


@pytest.mark.slow
@pytest.mark.parametrize("module,factory,args", [
    ("zeroshot", "make_loader", "batch_size=1, workers=1, device='cpu'"),
    ("imagesource", "_loader", "batches=[range(0, 1), range(1, 2)], workers=1, device='cpu'"),
])
def test_dataloader_workers_import_nothing_the_parent_did_not(module, factory, args):
    """A forked DataLoader worker that imports a module can block forever on an import lock another thread of the
    parent held at the fork (it hung training's periodic eval: a worker stuck importing vision_datasets). The parent
    imports every decoding module before its workers fork, so a worker decoding a JPEG imports nothing."""
    import subprocess
    import sys
    from pathlib import Path

    code = _WORKER_IMPORTS.format(module=module, factory=factory, args=args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("NEW:")][-1]
    assert line == "NEW:", f"modules imported inside a worker: {line[4:]}"
