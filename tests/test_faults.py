"""Faults a demanding user causes: every row of issue 8's table, reproduced, and what the harness does now.

A finished result is always the right one (the run key), one bad file never stops a sweep, nothing wrong or
partial is recorded, concurrent runs are safe, folders are checked up front, reports never crash or hide."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cards import WeightsSpec, card_to_dict, get_dataset_card, get_model_card, parse_model_card
from harness.core.errors import HarnessError
from harness.store.results import SCHEMA_VERSION, read_result, scan_results
from harness.run.runner import EvalOptions, evaluate
from harness.data.synthetic import make_demo_suite

from conftest import REPO

CIFAR = "cifar-10"
KITTI = "kitti-distance"


def _opts(results: Path, **kw) -> EvalOptions:
    return EvalOptions(results_root=results, progress=False, workers=0, batch_size=16, **kw)


def _result(results: Path, dataset: str = CIFAR, model: str = "tiny_demo_clip", protocol: str = "elevater") -> dict:
    return read_result(results / model / protocol / f"{dataset}.json")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_loaded) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    torch.save({k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}, path)
    return path


def _local_card(path: Path, name: str = "tiny_local", **changes):
    card = get_model_card("tiny_demo_clip")
    return dataclasses.replace(card, name=name, weights=WeightsSpec(source="local", path=str(path)), **changes)


def _scaled_weights(src: Path, dst: Path, factor: float) -> Path:
    sd = torch.load(src, weights_only=True)
    sd["visual.proj"] = sd["visual.proj"] * factor
    torch.save(sd, dst)
    return dst


# ----------------------------------------------------------------------------------------------------------------------
# the run key: a finished result is finished only for exactly what changes its numbers

def test_precision_is_part_of_the_run_key(demo_root, tmp_path):
    first = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path))
    assert list(first.done) == [CIFAR]
    bf16 = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path, precision="bf16"))
    assert list(bf16.done) == [CIFAR], "an fp32 result was returned for a bf16 run"
    assert _result(tmp_path)["provenance"]["precision"] == "bf16"
    again = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path))
    assert list(again.done) == [CIFAR], "a bf16 result was returned for an fp32 run"
    stored = _result(tmp_path)
    assert stored["provenance"]["precision"] == "fp32" and stored["run_key"]["parts"]["precision"] == "fp32"
    assert stored["metrics"] == first.done[CIFAR]["metrics"]
    assert list(evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path)).skipped) == [CIFAR]


def test_weights_changed_through_any_route_recompute(demo_root, tmp_path, tiny_file, monkeypatch):
    from harness.core.hashing import file_sha256

    card = _local_card(tiny_file)
    results = tmp_path / "r"
    assert list(evaluate(card, [CIFAR], demo_root, _opts(results)).done) == [CIFAR]
    other = _scaled_weights(tiny_file, tmp_path / "other.pt", 3.0)
    monkeypatch.setenv("HARNESS_WEIGHTS_TINY_LOCAL", str(other))  # env var naming another file
    done = evaluate(card, [CIFAR], demo_root, _opts(results))
    assert list(done.done) == [CIFAR]
    assert _result(results, model="tiny_local")["model"]["weights"]["sha256"] == file_sha256(other)
    monkeypatch.delenv("HARNESS_WEIGHTS_TINY_LOCAL")
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    _scaled_weights(tiny_file, folder / "tiny_local.pt", 5.0)  # a weights folder holding another file
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(folder))
    assert list(evaluate(card, [CIFAR], demo_root, _opts(results)).done) == [CIFAR]
    monkeypatch.delenv("HARNESS_WEIGHTS_DIR")
    flag = tmp_path / "flag.pt"  # the same --weights path, new contents
    _scaled_weights(tiny_file, flag, 7.0)
    assert list(evaluate(card, [CIFAR], demo_root, _opts(results, weights=str(flag))).done) == [CIFAR]
    _scaled_weights(tiny_file, flag, 9.0)
    assert list(evaluate(card, [CIFAR], demo_root, _opts(results, weights=str(flag))).done) == [CIFAR]
    assert _result(results, model="tiny_local")["model"]["weights"]["sha256"] == file_sha256(flag)
    assert list(evaluate(card, [CIFAR], demo_root, _opts(results, weights=str(flag))).skipped) == [CIFAR]


def test_other_data_under_the_same_card_recomputes(demo_root, tmp_path):
    results = tmp_path / "r"
    evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(results))
    bigger = tmp_path / "bigger"
    make_demo_suite(bigger, images_per_class=5, names=(CIFAR,))
    summary = evaluate("tiny_demo_clip", [CIFAR], bigger, _opts(results))
    assert list(summary.done) == [CIFAR], "the result of the other data was returned"
    assert _result(results)["n_images"] == 50
    assert _result(results)["run_key"]["parts"]["data"]["n_images"] == 50


def test_cosmetic_card_edits_and_another_path_to_the_same_weights_do_not_recompute(demo_root, tmp_path, tiny_file):
    results = tmp_path / "r"
    card = _local_card(tiny_file)
    evaluate(card, [CIFAR, KITTI], demo_root, _opts(results))
    edited = dataclasses.replace(card, description="only the description changed", published={CIFAR: 99.0},
                                 published_source="a paper")
    assert sorted(evaluate(edited, [CIFAR, KITTI], demo_root, _opts(results)).skipped) == [CIFAR, KITTI]
    copy = tmp_path / "elsewhere" / "same-weights.pt"
    copy.parent.mkdir()
    shutil.copy(tiny_file, copy)
    moved = _local_card(copy)
    assert sorted(evaluate(moved, [CIFAR, KITTI], demo_root, _opts(results)).skipped) == [CIFAR, KITTI]


def test_crosscheck_reports_the_precision_of_the_results_it_compares(demo_root, tmp_path):
    from harness.run.crosscheck import crosscheck

    results = tmp_path / "r"
    evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(results, precision="bf16"))
    out = crosscheck("tiny_demo_clip", [CIFAR], demo_root, _opts(results))  # fp32 asked: elevater is recomputed
    assert "precision: fp32 in both runs" in out["datasets"][CIFAR]["differences"]
    assert _result(results)["provenance"]["precision"] == "fp32"
    out = crosscheck("tiny_demo_clip", [CIFAR], demo_root, _opts(results, precision="bf16"))
    assert "precision: bf16 in both runs" in out["datasets"][CIFAR]["differences"]
    for protocol in ("elevater", "openclip"):
        assert _result(results, protocol=protocol)["provenance"]["precision"] == "bf16"


# ----------------------------------------------------------------------------------------------------------------------
# one bad file never stops the others; the cause names the file

def _rewrite_zip(zip_path: Path, change) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    names = sorted(entries)
    change(entries, names)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    return names


def _suite_copy(demo_root: Path, dst: Path) -> tuple[Path, Path]:
    shutil.copytree(demo_root, dst)
    folder = dst / get_dataset_card(CIFAR).root_folder
    return folder / "val.zip", folder / "test.txt"


FAULTS = {
    "truncated jpeg": lambda e, n: e.__setitem__(n[1], e[n[1]][: len(e[n[1]]) // 2]),
    "zero-byte file": lambda e, n: e.__setitem__(n[1], b""),
    "not an image": lambda e, n: e.__setitem__(n[1], b"<html>403 Forbidden</html>"),
    "missing entry": lambda e, n: e.pop(n[1]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_bad_image_fails_only_its_dataset_and_names_the_file(demo_root, tmp_path, fault):
    zip_path, _ = _suite_copy(demo_root, tmp_path / "data")
    names = _rewrite_zip(zip_path, FAULTS[fault])
    summary = evaluate("tiny_demo_clip", [CIFAR, KITTI, "hateful-memes"], tmp_path / "data", _opts(tmp_path / "r"))
    assert sorted(summary.done) == ["hateful-memes", KITTI], "the datasets after the bad one must still run"
    cause = summary.failed[CIFAR]
    assert names[1] in cause and "val.zip" in cause and "--skip-bad-images" in cause and "\n" not in cause
    assert "Traceback" not in cause
    assert not (tmp_path / "r" / "tiny_demo_clip" / "elevater" / f"{CIFAR}.json").exists()
    assert "FAILED cifar-10" in "\n".join(summary.lines())


def test_skip_bad_images_records_count_and_names_and_scores_the_rest(demo_root, tmp_path):
    zip_path, _ = _suite_copy(demo_root, tmp_path / "data")
    names = _rewrite_zip(zip_path, FAULTS["truncated jpeg"])
    summary = evaluate("tiny_demo_clip", [CIFAR], tmp_path / "data", _opts(tmp_path / "r", skip_bad_images=True))
    res = summary.done[CIFAR]
    assert res["n_images"] == 29 and res["skipped_images"]["count"] == 1
    assert res["skipped_images"]["ids"] == [f"val.zip@{names[1]}"]
    probs = np.load(tmp_path / "r" / "tiny_demo_clip" / "elevater" / res["files"]["probs"])
    assert probs.shape == (29, 10)
    # the score is the metric of the 29 readable images, the same as without the bad one
    full = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path / "full"))
    full_probs = np.load(tmp_path / "full" / "tiny_demo_clip" / "elevater" / full.done[CIFAR]["files"]["probs"])
    np.testing.assert_array_equal(probs, np.delete(full_probs, 1, axis=0))
    assert "1 unreadable left out" in "\n".join(summary.lines())
    assert res["run_key"]["parts"]["skip_bad_images"] is True


def test_a_truncated_zip_fails_its_dataset_with_the_zip_named(demo_root, tmp_path):
    zip_path, _ = _suite_copy(demo_root, tmp_path / "data")
    blob = zip_path.read_bytes()
    zip_path.write_bytes(blob[: len(blob) // 3])
    summary = evaluate("tiny_demo_clip", [CIFAR, KITTI], tmp_path / "data", _opts(tmp_path / "r"))
    assert list(summary.done) == [KITTI]
    assert "val.zip" in summary.failed[CIFAR] and "\n" not in summary.failed[CIFAR]


@pytest.mark.slow
def test_eval_all_cli_continues_past_a_bad_dataset_and_exits_nonzero(demo_root, tmp_path):
    zip_path, _ = _suite_copy(demo_root, tmp_path / "data")
    _rewrite_zip(zip_path, FAULTS["not an image"])
    out = subprocess.run([sys.executable, "-m", "harness", "eval-all", "--model", "tiny_demo_clip", "--data-root",
                          str(tmp_path / "data"), "--results", str(tmp_path / "r"), "--datasets",
                          f"{CIFAR},{KITTI}", "--workers", "2", "--no-progress"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "1 evaluated" in out.stdout and "1 failed" in out.stdout and "FAILED cifar-10" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_an_image_over_the_bomb_limit_is_read(tmp_path):
    """Decision: ELEVATER test sets are trusted data; an image over Pillow's decompression-bomb limit is read (the
    limit is lifted only around the harness's own decode) and the limit is back in force afterwards."""
    from PIL import Image

    from harness.data.testsets import decode_image

    big = Image.new("L", (14000, 14000), 90)
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    del big
    assert 14000 * 14000 > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(buf.getvalue())).load()
    image = decode_image(buf.getvalue())
    assert image.size == (14000, 14000) and image.mode == "RGB" and image.getpixel((7000, 7000)) == (90, 90, 90)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # restored


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "P", "CMYK", "RGBA", "1"])
def test_every_pillow_mode_converts_to_the_right_8bit_rgb(mode):
    """16-bit PNGs used to decode to pure white. Reference: the 8-bit value an image viewer shows."""
    from PIL import Image

    from harness.data.testsets import decode_image

    rng = np.random.default_rng(0)
    values8 = rng.integers(0, 256, (6, 5)).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(values8.astype(np.uint16) * 257)  # mode I;16
        expected = np.repeat(values8[..., None], 3, axis=2)
    elif mode == "I":
        image = Image.fromarray(values8.astype(np.int32) * 257)  # mode I
        expected = np.repeat(values8[..., None], 3, axis=2)
    elif mode == "F":
        image = Image.fromarray(values8.astype(np.float32) / 255.0)  # mode F
        expected = np.repeat(values8[..., None], 3, axis=2)
    else:
        image = Image.fromarray(values8).convert(mode)
        expected = np.asarray(image.convert("RGB"))  # Pillow's own conversion is right for these
    buf = io.BytesIO()
    image.save(buf, format="TIFF" if mode in ("I", "F", "CMYK") else "PNG")
    got = np.asarray(decode_image(buf.getvalue()))
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------------------------------------------------
# never record a wrong or partial result

@pytest.mark.parametrize("predictions_json", [True, False])
def test_nan_weights_fail_the_dataset_and_write_nothing(demo_root, tmp_path, tiny_file, predictions_json):
    sd = torch.load(tiny_file, weights_only=True)
    sd["visual.proj"][0, 0] = float("nan")
    nan_file = tmp_path / "nan.pt"
    torch.save(sd, nan_file)
    results = tmp_path / "r"
    summary = evaluate(_local_card(nan_file), [CIFAR, KITTI], demo_root,
                       _opts(results, predictions_json=predictions_json))
    assert sorted(summary.failed) == [CIFAR, KITTI] and not summary.done
    assert all("NaN" in msg and "check the weights" in msg for msg in summary.failed.values())
    folder = results / "tiny_local" / "elevater"
    assert not [p for p in folder.iterdir() if not p.name.endswith(".lock")] if folder.exists() else True


def test_a_result_written_by_a_newer_harness_is_never_overwritten(demo_root, tmp_path):
    results = tmp_path / "r"
    evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, _opts(results))
    path = results / "tiny_demo_clip" / "elevater" / f"{CIFAR}.json"
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    summary = evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, _opts(results, force=True))
    assert list(summary.done) == [KITTI]
    assert "newer harness" in summary.failed[CIFAR] and "never overwritten" in summary.failed[CIFAR]
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------------------------------------------------
# folders and caches

@pytest.mark.slow
def test_results_folder_unusable_fails_before_any_work(demo_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for bad in (blocker, blocker / "results"):
        with pytest.raises(HarnessError, match=f"{blocker}.*(is a file|not writable).*--results"):
            evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, _opts(bad))
    out = subprocess.run([sys.executable, "-m", "harness", "eval-all", "--model", "tiny_demo_clip", "--data-root",
                          str(demo_root), "--results", str(blocker), "--no-progress"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and str(blocker) in out.stderr


def test_cache_folder_unusable_degrades_to_no_cache_with_a_warning(demo_root, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("HARNESS_CACHE", str(blocker))
    summary = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path / "r"))
    assert list(summary.done) == [CIFAR]
    assert "Continuing without caches" in caplog.text


def test_cache_entries_of_the_wrong_size_or_corrupt_are_recomputed_and_leftovers_cleaned(demo_root, tmp_path,
                                                                                        monkeypatch, caplog):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    first = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path / "r1"))
    entry, = (cache / "classifiers").glob("*.pt")
    torch.save(torch.zeros(32, 7), entry)  # a classifier of the wrong size under the right key
    stale = cache / "classifiers" / f".x.pt.{2 ** 22 + 12345}.abcd.tmp"  # a dead writer's temp file
    stale.write_text("partial")
    second = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path / "r2"))
    assert "ignoring classifier cache" in caplog.text
    assert second.done[CIFAR]["metrics"] == first.done[CIFAR]["metrics"]
    assert torch.load(entry, weights_only=True).shape == (32, 10)
    assert not stale.exists()
    entry.write_bytes(b"garbage")
    third = evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(tmp_path / "r3"))
    assert third.done[CIFAR]["metrics"] == first.done[CIFAR]["metrics"]


# ----------------------------------------------------------------------------------------------------------------------
# bad input gets a clear cause

def test_bad_inputs_give_clear_causes(demo_root, tmp_path):
    data = card_to_dict(get_model_card("tiny_demo_clip"))
    data["weights"]["seed"] = "zero"
    with pytest.raises(HarnessError, match=r"weights.seed: expected int, found str \('zero'\)"):
        parse_model_card(data, "tiny.yaml")
    random_bytes, text = tmp_path / "random.pt", tmp_path / "text.pt"
    random_bytes.write_bytes(os.urandom(2048))
    text.write_text("<html>Sign in to download</html>")
    for bad in (random_bytes, text):
        with pytest.raises(HarnessError, match=f"Weights file {bad} is not a PyTorch checkpoint"):
            evaluate(_local_card(bad), [CIFAR], demo_root, _opts(tmp_path / "r"))
    _, index = _suite_copy(demo_root, tmp_path / "data")
    lines = index.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0] + " -1"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessError, match=r"test.txt, line 4: label '-1' — expected .* classes 0..9"):
        evaluate("tiny_demo_clip", [CIFAR], tmp_path / "data", _opts(tmp_path / "r"))


# ----------------------------------------------------------------------------------------------------------------------
# reports and tables never crash and never hide

def test_report_and_table_list_unusable_result_files_with_why(demo_root, tmp_path, capsys):
    from harness.cli import main

    results = tmp_path / "r"
    evaluate("tiny_demo_clip", [CIFAR], demo_root, _opts(results))
    folder = results / "tiny_demo_clip" / "elevater"
    (folder / "as-list.json").write_text("[1, 2, 3]")
    (folder / "old-schema.json").write_text(json.dumps({"schema_version": 1, "score": 12.0}))
    newer = json.loads((folder / f"{CIFAR}.json").read_text())
    newer["schema_version"] = SCHEMA_VERSION + 1
    (folder / "from-the-future.json").write_text(json.dumps(newer))
    (folder / "missing-keys.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "score": 1}))
    good, skipped = scan_results(results)
    assert [r["dataset"]["card"] for r in good] == [CIFAR]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "JSON list" in reasons["as-list.json"]
    assert "older harness" in reasons["old-schema.json"]
    assert "newer harness" in reasons["from-the-future.json"]
    assert "missing" in reasons["missing-keys.json"]
    assert main(["table", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert CIFAR in out and out.count("skipped ") == 4
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"), "--name", "x"]) == 0
    md = (tmp_path / "rep" / "x" / "README.md").read_text()
    assert "Result files not used" in md and "from-the-future.json" in md and "older harness" in md


# ----------------------------------------------------------------------------------------------------------------------
# kills at every write, and concurrent runs

KILL_SCRIPT = r"""
import os, signal, sys
K, WHEN = int(sys.argv[1]), sys.argv[2]
real, count = os.replace, [0]
def replace(src, dst, *a, **kw):  # every atomic write ends in os.replace: die just before or just after call K
    count[0] += 1
    if count[0] == K and WHEN == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(src, dst, *a, **kw)
    if count[0] == K and WHEN == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
os.replace = replace
from harness.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _check_consistent(results: Path) -> dict[str, int]:
    """Every result JSON on disk describes the files beside it; returns {dataset: n_images}."""
    seen = {}
    for path in sorted((results / "tiny_demo_clip" / "elevater").glob("*.json")):
        if path.name.endswith(".predictions.json"):
            continue
        res = read_result(path)
        probs = np.load(path.parent / res["files"]["probs"])
        assert probs.shape == (res["n_images"], res["protocol"]["n_classes"]), path
        assert res["run_key"]["parts"]["data"]["n_images"] == res["n_images"]
        if "predictions" in res["files"]:
            pred = json.loads((path.parent / res["files"]["predictions"]).read_text())
            np.testing.assert_allclose(np.asarray(pred["predictions"][0]), probs, atol=5e-7)
        seen[res["dataset"]["card"]] = res["n_images"]
    return seen


@pytest.mark.slow
def test_sigkill_at_every_write_leaves_only_complete_results(demo_root, tmp_path):
    """An older result (2 images per class) is being replaced by a --force run on other data (3 per class); the
    run is SIGKILLed just before and just after each of its atomic renames. After every kill each result on disk is
    complete and self-consistent — the old one or the new one — and a final run finishes with the same numbers as
    an uninterrupted run."""
    small = tmp_path / "small"
    make_demo_suite(small, images_per_class=2, names=(CIFAR, KITTI))
    args = ["eval-all", "--model", "tiny_demo_clip", "--datasets", f"{CIFAR},{KITTI}", "--workers", "0",
            "--no-progress", "--batch-size", "16"]
    reference = tmp_path / "reference"
    evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, _opts(reference))
    results = tmp_path / "results"
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cache"))
    killed = 0
    for k in range(1, 40):
        for when in ("before", "after"):
            shutil.rmtree(results, ignore_errors=True)
            evaluate("tiny_demo_clip", [CIFAR, KITTI], small, _opts(results))  # the old, complete results
            out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(k), when, *args, "--data-root",
                                  str(demo_root), "--results", str(results), "--force"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            if out.returncode == 0:
                break
            assert out.returncode == -9, out.stderr[-2000:]
            killed += 1
            seen = _check_consistent(results)
            assert set(seen.values()) <= {20, 8, 30, 12}  # old (2/class) or new (3/class) counts only
            assert seen.get(CIFAR) in (20, 30) and seen.get(KITTI) in (8, 12)
            assert not list((results / "tiny_demo_clip" / "elevater").glob(".*.tmp")) or when == "before"
        else:
            continue
        break
    assert killed >= 8, "the run should have been killed at several points"
    final = evaluate("tiny_demo_clip", [CIFAR, KITTI], demo_root, _opts(results))
    for name in (CIFAR, KITTI):
        res = final.done.get(name) or final.skipped[name]
        ref = read_result(reference / "tiny_demo_clip" / "elevater" / f"{name}.json")
        np.testing.assert_array_equal(
            np.load(results / "tiny_demo_clip" / "elevater" / res["files"]["probs"]),
            np.load(reference / "tiny_demo_clip" / "elevater" / ref["files"]["probs"]))
    leftovers = [p.name for p in (results / "tiny_demo_clip" / "elevater").iterdir()
                 if p.suffix != ".lock" and p.name not in {f"{CIFAR}.json", f"{KITTI}.json"}
                 and not any(p.name in r["files"].values() for r in (final.done | final.skipped).values())]
    assert leftovers == []


@pytest.mark.slow
def test_two_processes_on_one_results_folder_compute_each_result_once(demo_root, tmp_path):
    cmd = [sys.executable, "-m", "harness", "eval", "--model", "tiny_demo_clip", "--dataset",
           f"{CIFAR},{KITTI},hateful-memes", "--data-root", str(demo_root), "--results", str(tmp_path / "r"),
           "--workers", "0", "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    evaluated = []
    for stdout, _ in outs:
        head = stdout.splitlines()[0]  # "model ..., protocol ...: N evaluated, M already done, ..."
        evaluated.append(int(head.split(": ")[1].split(" evaluated")[0]))
    assert sum(evaluated) == 3, outs  # each result computed by exactly one of the two
    assert sorted(_check_consistent(tmp_path / "r")) == sorted([CIFAR, KITTI, "hateful-memes"])


def test_stale_temp_files_of_dead_writers_go_and_live_ones_stay(tmp_path):
    from harness.core.atomic import remove_stale_temp_files

    live = tmp_path / f".cifar-10.json.{os.getpid()}.abc123.tmp"
    dead = tmp_path / ".cifar-10.json.4194999.abc123.tmp"  # above the default pid_max: never a live process
    live.write_text("being written")
    dead.write_text("left by a killed run")
    assert remove_stale_temp_files(tmp_path) == 1
    assert live.exists() and not dead.exists()
