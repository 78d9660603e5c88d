"""Issue 19, row 3: a remembered file hash never outlives the file it was taken of.

A JPEG swapped inside a dataset zip for another of the same length, or a weights file rewritten in place, with the
mtime put back (``touch -r``), keeps the size and mtime the old memo was keyed by; the memo is now keyed by the file's
identity (device, inode, size, mtime, ctime), so the next run recomputes and gets a fresh run's numbers. ``--no-cache``,
``--refresh-cache`` and ``--verify-data`` hash weights and data afresh: a poisoned memo entry is never recorded."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cards import WeightsSpec, get_dataset_card, get_model_card
from harness.cli import main
from harness.core.hashing import file_sha256, memo_path
from harness.data.synthetic import make_demo_suite
from harness.run.runner import EvalOptions, evaluate
from harness.store.results import read_result, result_json

CIFAR = "cifar-10"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own cache folder (classifiers, pixels, features, remembered hashes)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    return cache


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    make_demo_suite(root, images_per_class=2, names=(CIFAR,))
    return root


def _zip(root: Path) -> Path:
    card = get_dataset_card(CIFAR)
    return root / card.root_folder / card.eval_spec.files[0]


def _opts(results: Path, **kw) -> EvalOptions:
    return EvalOptions(results_root=results, progress=False, workers=0, batch_size=16, **kw)


def _stored(results: Path, model: str) -> tuple[dict, np.ndarray]:
    path = result_json(results, model, "elevater", CIFAR)
    result = read_result(path)
    return result, np.load(path.parent / result["files"]["probs"])


def _rewrite_in_place(path: Path, content: bytes) -> None:
    """New bytes of the same length written into the same file (same inode), its atime and mtime put back."""
    st = path.stat()
    assert len(content) == st.st_size
    with open(path, "r+b") as f:
        f.write(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def _swap_one_jpeg(zip_path: Path) -> None:
    """Entry 0's JPEG replaced by another image's (a different class), padded after its end marker to the same
    length; the zip (stored, not deflated) keeps its length byte for byte."""
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        blobs = [zf.read(i) for i in infos]
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    target = 0
    donor = next(k for k in range(1, len(blobs)) if len(blobs[k]) <= len(blobs[target]) and blobs[k] != blobs[target])
    blobs[target] = blobs[donor] + b"\0" * (len(blobs[target]) - len(blobs[donor]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for info, blob in zip(infos, blobs):
            zf.writestr(info, blob)
    _rewrite_in_place(zip_path, out.getvalue())


# ----------------------------------------------------------------------------------------------------------------------
# the memo itself


def test_a_file_rewritten_in_place_with_its_mtime_restored_is_hashed_again(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 4096)
    assert file_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    _rewrite_in_place(path, b"b" * 4096)
    assert file_sha256(path) == hashlib.sha256(b"b" * 4096).hexdigest()


def test_a_file_replaced_by_another_with_the_same_size_and_mtime_is_hashed_again(tmp_path):
    path, other = tmp_path / "f.bin", tmp_path / "g.bin"
    path.write_bytes(b"a" * 4096)
    assert file_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    other.write_bytes(b"c" * 4096)
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # a new inode under the old name
    assert file_sha256(path) == hashlib.sha256(b"c" * 4096).hexdigest()


def test_fresh_ignores_and_corrects_a_wrong_memo(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    true = file_sha256(path)
    memo_path(path).write_text("0" * 64)
    assert file_sha256(path) == "0" * 64, "the memo is trusted by default (that is what it is for)"
    assert file_sha256(path, fresh=True) == true
    assert file_sha256(path) == true, "a fresh hash corrects the memo"
    memo_path(path).write_text("not a hash")
    assert file_sha256(path) == true, "a memo that is no sha256 is ignored"


# ----------------------------------------------------------------------------------------------------------------------
# runs


def test_a_jpeg_swapped_inside_the_zip_with_the_mtime_restored_is_recomputed(data, tmp_path):
    results = tmp_path / "r"
    first = evaluate("tiny_demo_clip", [CIFAR], data, _opts(results))
    assert list(first.done) == [CIFAR]
    _, old_probs = _stored(results, "tiny_demo_clip")

    _swap_one_jpeg(_zip(data))
    again = evaluate("tiny_demo_clip", [CIFAR], data, _opts(results))
    assert list(again.done) == [CIFAR] and not again.skipped, "a stale result was returned as already done"
    result, probs = _stored(results, "tiny_demo_clip")
    assert not np.array_equal(probs, old_probs), "the swapped image was not read again (stale pixel cache)"
    assert result["run_key"]["parts"]["data"]["files"]["val.zip"] == hashlib.sha256(_zip(data).read_bytes()).hexdigest()

    fresh = tmp_path / "fresh"
    evaluate("tiny_demo_clip", [CIFAR], data, _opts(fresh).without_caches())
    fresh_result, fresh_probs = _stored(fresh, "tiny_demo_clip")
    np.testing.assert_array_equal(probs, fresh_probs)
    assert result["score"] == fresh_result["score"]


@pytest.mark.slow
def test_weights_rewritten_in_place_with_the_mtime_restored_are_recomputed(data, tmp_path, tiny_loaded):
    weights = tmp_path / "tiny.pt"
    state = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    torch.save(state, weights)
    card = dataclasses.replace(get_model_card("tiny_demo_clip"), name="tiny_local",
                               weights=WeightsSpec(source="local", path=str(weights)))
    results = tmp_path / "r"
    assert list(evaluate(card, [CIFAR], data, _opts(results)).done) == [CIFAR]  # caches its classifier, features
    _, old_probs = _stored(results, "tiny_local")

    other = tmp_path / "other" / "tiny.pt"  # torch.save names its archive after the file: same name, same length
    other.parent.mkdir()
    torch.save({**state, "visual.proj": state["visual.proj"] * 3.0, "text_projection": state["text_projection"] * -1},
               other)
    _rewrite_in_place(weights, other.read_bytes())
    again = evaluate(card, [CIFAR], data, _opts(results))
    assert list(again.done) == [CIFAR] and not again.skipped, "a stale result was returned as already done"
    result, probs = _stored(results, "tiny_local")
    new_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    assert result["model"]["weights"]["sha256"] == new_sha == result["run_key"]["parts"]["weights"]
    assert not np.array_equal(probs, old_probs), "the old weights' cached features or classifier were reused"

    fresh_card = dataclasses.replace(card, name="tiny_fresh", weights=WeightsSpec(source="local", path=str(other)))
    evaluate(fresh_card, [CIFAR], data, _opts(tmp_path / "fresh").without_caches())
    fresh_result, fresh_probs = _stored(tmp_path / "fresh", "tiny_fresh")
    np.testing.assert_array_equal(probs, fresh_probs)
    assert result["score"] == fresh_result["score"]


@pytest.mark.parametrize("flags", [{"refresh_cache": True}, {"no_cache": True}, {"verify_data": True}])
def test_refresh_no_cache_and_verify_data_never_record_a_remembered_hash(data, tmp_path, tiny_loaded, flags):
    weights = tmp_path / "tiny.pt"
    torch.save({k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}, weights)
    card = dataclasses.replace(get_model_card("tiny_demo_clip"), name="tiny_local",
                               weights=WeightsSpec(source="local", path=str(weights)))
    evaluate(card, [CIFAR], data, _opts(tmp_path / "first"))  # remembers both hashes
    true_weights = hashlib.sha256(weights.read_bytes()).hexdigest()
    true_zip = hashlib.sha256(_zip(data).read_bytes()).hexdigest()
    memo_path(weights).write_text("0" * 64)  # remembered hashes that are wrong: what a stale memo would give
    memo_path(_zip(data)).write_text("1" * 64)
    assert file_sha256(weights) == "0" * 64 and file_sha256(_zip(data)) == "1" * 64

    options = _opts(tmp_path / "r", **{k: v for k, v in flags.items() if k != "no_cache"})
    if flags.get("no_cache"):
        options = options.without_caches()
    assert options.rehash_files
    summary = evaluate(card, [CIFAR], data, options)
    assert list(summary.done) == [CIFAR]
    result, _ = _stored(tmp_path / "r", "tiny_local")
    parts = result["run_key"]["parts"]
    assert parts["weights"] == result["model"]["weights"]["sha256"] == true_weights
    assert parts["data"]["files"]["val.zip"] == true_zip
    assert file_sha256(weights) == true_weights and file_sha256(_zip(data)) == true_zip, "the memo was corrected"


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--verify-data", "--no-cache", "--refresh-cache"])
def test_the_flags_on_the_command_line_rehash_the_data(data, tmp_path, capsys, flag):
    args = ["eval", "--model", "tiny_demo_clip", "--datasets", CIFAR, "--data-root", str(data), "--workers", "0",
            "--batch-size", "16", "--no-progress"]
    assert main([*args, "--results", str(tmp_path / "first")]) == 0
    true_zip = hashlib.sha256(_zip(data).read_bytes()).hexdigest()
    memo_path(_zip(data)).write_text("1" * 64)
    assert main([*args, "--results", str(tmp_path / "r"), flag]) == 0
    assert "1 evaluated" in capsys.readouterr().out
    result = read_result(result_json(tmp_path / "r", "tiny_demo_clip", "elevater", CIFAR))
    assert result["run_key"]["parts"]["data"]["files"]["val.zip"] == true_zip
