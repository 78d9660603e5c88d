"""``training.pairs``: REACT's parquet -> the real img2dataset (``.venv-pairs``) -> shards + availability.json ->
training, against a loopback image server whose every URL has a known outcome (tests/pairs_server.py)."""
from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from pairs_server import BIG_SIZE, EXPECTED, HEALED, ImageServer, write_parquet

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "reference" / "react_README.md").read_text()
NPS = 4  # samples per shard
TIMEOUT = 1  # img2dataset --timeout (s); the server stalls longer
# every shard holds a stalled URL (each shard takes >= TIMEOUT s, so a kill lands mid-download), and every kind
KINDS = ["stall", "ok", "big", "404", "stall", "403", "410", "redirect", "stall", "text", "corrupt", "ok",
         "stall", "flaky", "tls", "dns", "stall", "refused", "flaky", "ok", "stall", "ok", "big", "404"]


def _pairs(*args: str, env: dict | None = None, check: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "training.pairs", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=300, env=env)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _download_args(parquet: Path, out: Path, *extra: str) -> list[str]:
    return ["download", "--parquet", str(parquet), "--out", str(out), "--processes", "1", "--threads", "8",
            "--number-sample-per-shard", str(NPS), "--timeout", str(TIMEOUT), *extra]


def _truth(kinds: list[str], outcome: dict[str, str]) -> Counter:
    return Counter(outcome[k] for k in kinds)


def _failures(truth: Counter) -> dict[str, int]:
    return {k: v for k, v in truth.items() if k != "success"}


@pytest.fixture(scope="module")
def img2dataset():
    """The real img2dataset from .venv-pairs: a missing venv FAILS (CI runs `make install-pairs`)."""
    from harness.core.errors import HarnessError
    from training.pairs.img2dataset_program import PINNED_VERSION, find_program

    try:
        program = find_program()
    except HarnessError as exc:
        pytest.fail(f"these tests run the real img2dataset: {exc}")
    assert program.version == PINNED_VERSION, f"{program.path} is img2dataset {program.version}: make install-pairs"
    return program


# ----------------------------------------------------------------------------------------------------------------------
# facts, pieces

def test_react_facts_are_the_reference_data():
    """The package's copy of REACT's facts equals reference/react.json and the README's own numbers."""
    from training.pairs import facts

    ref = json.loads((REPO / "reference" / "react.json").read_text())["retrieved_pairs"]
    sets = facts.react_sets()
    assert (sets["hf_dataset"], sets["file"], sets["columns"]) == (ref["hf_dataset"], ref["file"], ref["columns"])
    assert facts.published_sets()["Feb 2023 set"] == ref["feb2023_available_pairs"]
    assert f"--train-num-samples {ref['feb2023_available_pairs']}" in README
    dec = sets["published_sets"]["Dec 2021 set"]
    assert f'initial {dec["as_published"]} in "Dec 2021 set"' in README and dec["pairs"] == 10_000_000
    assert sets["shards"] in README


def test_download_command_has_the_readme_flags(tmp_path):
    """Every flag of the README's img2dataset command is in ours (folders, counts and wandb as flags of our own)."""
    from training.pairs.img2dataset_program import DownloadFlags, Program, command

    text = README[README.index("img2dataset --url_list"):]
    readme = shlex.split(text[:text.index("```")].replace("\\\n", " "))[1:]
    cmd = command(Program(Path("/x/img2dataset"), "1.47.0"), tmp_path / "p.parquet", tmp_path / "shards",
                  DownloadFlags(processes=64, threads=12, enable_wandb=True), "incremental")
    ours = cmd[1:]

    def pairs(tokens):
        out, i = {}, 0
        while i < len(tokens):
            tok = tokens[i]
            if "=" in tok:
                k, v = tok.split("=", 1)
                out[k] = v
                i += 1
            else:
                out[tok] = tokens[i + 1]
                i += 2
        return out

    theirs, mine = pairs(readme), pairs(ours)
    theirs.pop("--url_list"), theirs.pop("--output_folder")
    assert {k: mine.get(k) for k in theirs} == theirs
    assert mine["--url_list"] == str(tmp_path / "p.parquet") and mine["--output_folder"] == str(tmp_path / "shards")


@pytest.mark.parametrize("status,message,expected", [
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 503: Service Unavailable", "http_503"),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "dns"),
    ("failed_to_download", "<urlopen error [Errno -3] Temporary failure in name resolution>", "dns"),
    ("failed_to_download", "timed out", "timeout"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed>", "tls"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection"),
    ("failed_to_download", "Remote end closed connection without response", "connection"),
    ("failed_to_resize", "Image decoding error", "decode"),
    ("failed_to_resize", "image too small", "resize"),
    ("failed_to_download", "hash mismatch", "other"),
    ("success", None, "success"),
])
def test_cause_classes(status, message, expected):
    from training.pairs.causes import cause_class

    assert cause_class(status, message) == expected


@pytest.mark.parametrize("ids", [[0], [0, 1, 2, 3], [0, 1, 2, 5, 7, 8, 9], [3, 9]])
def test_brace_pattern_names_exactly_the_shards(ids):
    from training.data import expand_urls
    from training.pairs.layout import brace_pattern

    assert expand_urls(brace_pattern(Path("/d/shards"), ids)) == [f"/d/shards/{i:05d}.tar" for i in ids]


@pytest.mark.slow
def test_missing_img2dataset_says_make_install_pairs(tmp_path):
    out = _pairs("download", "--parquet", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "o"),
                 "--img2dataset", str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 2 and "make install-pairs" in out.stderr and str(tmp_path / "nowhere") in out.stderr


@pytest.mark.slow
def test_large_download_prints_the_dns_advice_and_a_failing_img2dataset_is_one_error(tmp_path):
    """Above the threshold the REACT README's DNS-resolver advice comes first; a program that fails is reported with
    its exit status and where its output went (a stand-in program: what is tested here is this tool's handling)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.pairs.download import DNS_ADVICE_ROWS

    n = DNS_ADVICE_ROWS + 1
    pq.write_table(pa.table({"URL": [f"http://127.0.0.1:9/{i}.jpg" for i in range(n)], "TEXT": ["t"] * n}),
                   tmp_path / "big.parquet")
    program = tmp_path / "venv" / "bin" / "img2dataset"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\necho 'no network here' >&2\nexit 3\n")
    program.chmod(0o755)
    out = _pairs(*_download_args(tmp_path / "big.parquet", tmp_path / "o", "--img2dataset", str(tmp_path / "venv")),
                 check=False)
    assert f"{n:,} URLs." in out.stdout and "high-performance DNS resolver" in out.stdout
    assert "img2dataset#setting-up-a-high-performance-dns-resolver" in out.stdout
    assert out.returncode == 2 and "exited with status 3" in out.stderr and "no network here" in out.stderr
    small = _pairs(*_download_args(tmp_path / "big.parquet", tmp_path / "o", "--img2dataset",
                                   str(tmp_path / "venv"), "--retry-failed"), check=False)
    assert "DNS resolver" not in small.stdout and "the first download" in small.stderr


@pytest.mark.slow
def test_parquet_without_the_url_column_is_one_clear_error(tmp_path, img2dataset):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": ["http://x/1.jpg"], "caption": ["c"]}), tmp_path / "p.parquet")
    out = _pairs(*_download_args(tmp_path / "p.parquet", tmp_path / "o"), check=False)
    assert out.returncode == 2 and "no column URL, TEXT" in out.stderr and "(it has url, caption)" in out.stderr


def test_training_skips_samples_whose_json_is_not_success(tmp_path):
    """A tar sample whose img2dataset .json says failed is skipped and counted; the others are read."""
    import webdataset as wds

    from harness.models.factory import get_tokenizer
    from pairs_server import jpeg
    from training.data import SkipCounter, build_pipeline

    statuses = ["success", "failed_to_download", "success", "failed_to_resize", "success"]
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i, status in enumerate(statuses):
            sink.write({"__key__": f"{i:06d}", "jpg": jpeg(i), "txt": f"caption {i}",
                        "json": json.dumps({"status": status, "key": f"{i:06d}"}).encode()})
    skipped = SkipCounter()
    pipe = build_pipeline([str(tmp_path / "00000.tar")], lambda im: im.size, get_tokenizer("tiny-ViT-32px"), 1,
                          skipped, keep_keys=True)
    keys = sorted(batch[0][0] for batch in pipe)
    assert keys == [f"{i:06d}" for i, s in enumerate(statuses) if s == "success"]
    assert skipped.value == 2


# ----------------------------------------------------------------------------------------------------------------------
# the real img2dataset against the loopback server

@pytest.fixture(scope="module")
def server():
    with ImageServer(stall_seconds=TIMEOUT + 3) as srv:
        yield srv


def _stats(folder: Path) -> dict:
    _pairs("stats", str(folder))
    return json.loads((folder / "availability.json").read_text())


def _kill_mid_download(cmd: list[str], shards: Path, n_shards: int) -> None:
    """Start the download in its own process group, SIGKILL the whole group once some (not all) shards finished."""
    proc = subprocess.Popen([sys.executable, "-m", "training.pairs", *cmd], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            done = len(list(shards.glob("*_stats.json"))) if shards.is_dir() else 0
            assert proc.poll() is None, "the download ended before it could be killed"
            if 1 <= done < n_shards:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def downloaded(server, img2dataset, tmp_path_factory):
    """A download SIGKILLed mid-way, its stats, then resumed; returns (folder, parquet, stats after the kill)."""
    root = tmp_path_factory.mktemp("pairs")
    parquet = root / "pairs.parquet"
    write_parquet(parquet, server.rows(KINDS), extra=True)  # H4's retrieval columns too: accepted unchanged
    out = root / "d"
    _kill_mid_download(_download_args(parquet, out), out / "shards", math.ceil(len(KINDS) / NPS))
    finished = sorted(int(p.name[:5]) for p in (out / "shards").glob("*_stats.json"))
    partial = sorted(int(p.name[:5]) for p in (out / "shards").glob("*.tar") if int(p.name[:5]) not in finished)
    killed = dict(_stats(out), finished_ids=finished, partial_ids=partial)
    _pairs(*_download_args(parquet, out))
    return out, parquet, killed


@pytest.mark.slow
def test_stats_after_a_kill_count_finished_shards_and_mark_partial_ones(downloaded):
    """Stats of a SIGKILLed download: exactly the finished shards' rows; an interrupted shard apart, not counted."""
    from training.data import expand_urls

    out, _, killed = downloaded
    ids = killed["finished_ids"]
    assert 1 <= len(ids) < math.ceil(len(KINDS) / NPS) and killed["complete"] is False
    kinds = [k for s in ids for k in KINDS[s * NPS:(s + 1) * NPS]]
    truth = _truth(kinds, EXPECTED)
    assert (killed["total"], killed["successes"], killed["failures"]) == (len(kinds), truth["success"],
                                                                         _failures(truth))
    assert expand_urls(killed["train_data_pattern"]) == [str(out.resolve() / "shards" / f"{i:05d}.tar") for i in ids]
    assert [int(p["shard"]) for p in killed["partial_shards"]] == killed["partial_ids"]
    assert all(p["tar_samples"] <= NPS for p in killed["partial_shards"])
    assert killed["partial_samples"] == sum(p["tar_samples"] for p in killed["partial_shards"])


@pytest.mark.slow
def test_resumed_download_equals_the_servers_truth_count_by_count(downloaded, server):
    """After the kill and the resume: every URL once, outcomes exactly the server's, no shard counted twice."""
    from training.data import expand_urls

    out, _, _ = downloaded
    data = _stats(out)
    truth = _truth(KINDS, EXPECTED)
    assert data["total"] == len(KINDS) == data["attempts"]
    assert data["successes"] == truth["success"]
    assert data["failures"] == _failures(truth)
    assert data["shards"] == math.ceil(len(KINDS) / NPS) and data["partial_shards"] == []
    assert data["complete"] is True and data["success_rate"] == pytest.approx(truth["success"] / len(KINDS))
    tars = expand_urls(data["train_data_pattern"])
    assert tars == [str(out.resolve() / "shards" / f"{i:05d}.tar") for i in range(data["shards"])]
    assert data["bytes"] == sum(Path(t).stat().st_size for t in tars)
    samples = []
    for tar in tars:
        with tarfile.open(tar) as tf:
            samples += [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert len(samples) == data["successes"] and all(s["status"] == "success" for s in samples)
    big = [s for s in samples if "/big/" in s["url"]]
    assert len(big) == KINDS.count("big")
    # --resize_mode keep_ratio --image_size 384: the shorter side becomes 384, the aspect ratio stays
    assert all((s["original_width"], s["original_height"]) == BIG_SIZE and min(s["width"], s["height"]) == 384 and
               abs(s["width"] / s["height"] - BIG_SIZE[0] / BIG_SIZE[1]) < 0.01 for s in big)
    src = data["source_parquet"]
    assert src["name"] == "pairs.parquet" and src["rows"] == len(KINDS)
    assert data["published"] == {"Dec 2021 set": 10_000_000, "Feb 2023 set": 8_530_639}


@pytest.mark.slow
def test_rerun_of_a_finished_download_runs_nothing(downloaded):
    out, parquet, _ = downloaded
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    res = _pairs(*_download_args(parquet, out))
    assert "are finished" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before


@pytest.mark.slow
def test_retry_failed_after_the_server_heals(downloaded, server):
    """--retry-failed: the failed rows go to new shards after the existing ones; URLs are still counted once."""
    out, parquet, _ = downloaded
    first = _stats(out)
    server.heal()
    _pairs(*_download_args(Path(parquet.name), Path(out.name), "--retry-failed"), cwd=out.parent)  # relative paths
    data = _stats(out)
    healed = _truth(KINDS, HEALED)
    assert data["total"] == len(KINDS) and data["successes"] == healed["success"]
    assert data["failures"] == _failures(healed) and data["retry_rounds"] == 1
    retried = first["failed"]
    assert data["attempts"] == len(KINDS) + retried
    assert data["shards"] == first["shards"] + math.ceil(retried / NPS)
    retry = json.loads((out / "download_state.json").read_text())["rounds"][1]
    assert retry["first_shard"] == first["shards"] and retry["rows"] == retried
    import pyarrow.parquet as pq

    failed_urls = pq.read_table(retry["parquet"]).column("URL").to_pylist()
    assert sorted(failed_urls) == sorted(r.url for r in server.rows(KINDS) if EXPECTED[r.kind] != "success")


@pytest.mark.slow
def test_make_train_gated_trains_on_the_pairs(downloaded, demo_root, tmp_path):
    """`make train-gated PAIRS_DIR=...`: --train-data/--train-num-samples from availability.json, the tiny recipe
    (train-tiny's TINY_RECIPE) for one epoch; the run's log and card name the set."""
    from training.export_base import export_base

    out, _, _ = downloaded
    data = _stats(out)
    base = export_base("tiny_demo_clip", tmp_path / "tiny-base.pt")
    logs = tmp_path / "logs"
    flags = (f"$(TINY_RECIPE) --batch-size=4 --workers=1 --logs {logs} --zeroshot-dataset cifar-10 "
             f"--zeroshot-data-root {demo_root} --model-card-dir {tmp_path} --base-model-card tiny_demo_clip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    res = subprocess.run(["make", "--no-print-directory", "train-gated", f"PAIRS_DIR={out}", "NGPUS=1",
                          f"BASE_CKPT={base}", "TINY_EPOCHS=1", f"TRAIN_FLAGS={flags}"], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    name = "React_gi-clip_b32-lr_5e-4-b_512-grad_ckpt-v100_8-aug_on-p_amp-wds-wk_4"
    rows = [json.loads(line) for line in (logs / name / "metrics.jsonl").read_text().splitlines()]
    recorded = [r["train_data_set"] for r in rows if "train_data_set" in r]
    assert len(recorded) == 1
    assert recorded[0]["successes"] == data["successes"] and recorded[0]["total"] == data["total"]
    assert recorded[0]["train_data_pattern"] == data["train_data_pattern"]
    assert recorded[0]["source_parquet"] == "pairs.parquet" and recorded[0]["downloaded_at"] == data["downloaded_at"]
    assert [r["epoch"] for r in rows if "train_loss_mean" in r] == [1]
    assert re.search(rf"--train-num-samples {data['successes']}\b", res.stdout)
    card = (tmp_path / f"{name}.yaml").read_text()
    assert f"retrieval_set: 'pairs.parquet, downloaded {data['downloaded_at'][:10]}: {data['successes']} / " \
           f"{data['total']}" in card


@pytest.mark.slow
def test_make_pairs_fetches_downloads_and_counts(server, img2dataset, loopback_hub, tmp_path):
    """`make pairs PAIRS_DIR=...`: the parquet from the (loopback) hub, img2dataset, availability.json."""
    kinds = ["ok", "404", "ok", "big", "text"]
    parquet = tmp_path / "src.parquet"
    write_parquet(parquet, server.rows(kinds))
    loopback_hub.add_file("react-vl/react-retrieval-datasets", "imagenet_10m.parquet", parquet.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    res = subprocess.run(["make", "--no-print-directory", "pairs", f"PAIRS_DIR={tmp_path / 'p'}",
                          f"PAIRS_FLAGS=--processes 1 --threads 4 --number-sample-per-shard 2 --timeout {TIMEOUT}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "p" / "availability.json").read_text())
    truth = _truth(kinds, EXPECTED)
    assert (data["total"], data["successes"], data["failures"]) == (5, truth["success"], _failures(truth))
    assert data["source_parquet"]["repo"] == "react-vl/react-retrieval-datasets"
    assert data["source_parquet"]["commit"] == loopback_hub.commit("react-vl/react-retrieval-datasets")
    assert "--train-num-samples 3" in res.stdout and "URLs tried" in res.stdout


# ----------------------------------------------------------------------------------------------------------------------
# fetch through the loopback hub

REACT_REPO = "react-vl/react-retrieval-datasets"


def test_fetch_downloads_and_records_the_commit(loopback_hub, tmp_path):
    from training.pairs.fetch import fetch

    blob = os.urandom(40_000)
    loopback_hub.add_file(REACT_REPO, "imagenet_10m.parquet", blob)
    path = fetch(tmp_path / "p", REACT_REPO, "imagenet_10m.parquet")
    assert path == tmp_path / "p" / "imagenet_10m.parquet" and path.read_bytes() == blob
    rec = json.loads((tmp_path / "p" / "fetched.json").read_text())
    assert rec["commit"] == loopback_hub.commit(REACT_REPO) and rec["size"] == len(blob)


def test_fetch_resumes_an_interrupted_transfer(loopback_hub, tmp_path):
    """A transfer cut off mid-file resumes from the last chunk huggingface_hub wrote (an HTTP Range request)."""
    from huggingface_hub import constants

    from training.pairs.fetch import fetch

    chunk = constants.DOWNLOAD_CHUNK_SIZE
    blob = os.urandom(2 * chunk + 1000)
    loopback_hub.add_file(REACT_REPO, "imagenet_10m.parquet", blob)
    loopback_hub.fault(REACT_REPO, "imagenet_10m.parquet", "drop", n=chunk + 5000, times=1)
    assert fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet").read_bytes() == blob
    assert any(r.range == f"bytes={chunk}-" for r in loopback_hub.requests)
    assert loopback_hub.sent(REACT_REPO, "imagenet_10m.parquet") == chunk + 5000 + len(blob) - chunk


def test_fetch_offline_is_one_clear_line_and_never_hangs(loopback_hub, tmp_path, monkeypatch):
    from harness.core.errors import HarnessError
    from training.pairs.fetch import fetch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError) as err:
        fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet")
    assert "HF_HUB_OFFLINE is set" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "imagenet_10m.parquet").write_bytes(b"already here")
    assert fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet").read_bytes() == b"already here"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HarnessError, match="cannot be reached"):
        fetch(tmp_path / "other", REACT_REPO, "imagenet_10m.parquet")


def test_fetch_of_a_missing_file_names_the_flag(loopback_hub, tmp_path):
    from harness.core.errors import HarnessError
    from training.pairs.fetch import fetch

    loopback_hub.add_file(REACT_REPO, "other.parquet", b"x")
    with pytest.raises(HarnessError, match="check --file"):
        fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet")


# ----------------------------------------------------------------------------------------------------------------------
# reports: the Retrieval set section, the comparison table's pairs-per-set row

def _availability(path: Path, successes: int, total: int, date: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source_parquet": {"name": "imagenet_10m.parquet", "rows": total},
                                "downloaded_at": f"{date}T10:00:00+00:00", "successes": successes, "total": total,
                                "success_rate": successes / total, "train_data_pattern": "/x/{00000..00003}.tar"}))
    return path


def test_comparison_table_gains_the_pairs_row_and_a_downloaded_column(tmp_path):
    import dataclasses

    import pandas as pd

    from harness.cards import IMAGENET, get_model_card
    from harness.core import pairs_availability, training_log as tl
    from harness.report.collect import RESULT_COLUMNS
    from harness.report.retrieval_sets import pairs_row, run_summaries, with_pairs_rows
    from harness.report.tables import react_comparison_tables

    avail = _availability(tmp_path / "p" / "availability.json", 7_912_345, 9_850_000, "2026-12-05")
    summary = pairs_availability.summary(pairs_availability.read(avail), avail)
    runs = [("my run", [{tl.EPOCH: 0, tl.TRAIN_DATA_SET: summary}])]
    base = get_model_card("tiny_demo_clip")
    cards = {"a_base": dataclasses.replace(base, name="a_base"),
             "a_gated": dataclasses.replace(base, name="a_gated", method="gated-image", base_model="a_base"),
             "my_run": dataclasses.replace(base, name="my_run", method="gated-image", base_model="a_base")}
    df = pd.DataFrame([{"run_set": r, "model": m, "protocol": "elevater", "dataset": IMAGENET, "score": s}
                       for r, m, s in [("OpenCLIP (Feb 2023 set)", "a_base", 60.0),
                                       ("OpenCLIP (Feb 2023 set)", "a_gated", 62.0),
                                       ("Downloaded today", "a_base", 60.0), ("Downloaded today", "my_run", 61.0)]],
                      columns=RESULT_COLUMNS)
    labels = ["OpenCLIP (Feb 2023 set)", "Downloaded today"]
    models = {label: set(df[df.run_set == label].model) for label in labels}
    cells = pairs_row(["Paper (Dec 2021 set)"] + labels, models, run_summaries(runs), {})
    assert cells == ["10,000,000", "8,530,639", "7,912,345"]
    (table,) = with_pairs_rows(react_comparison_tables(df, cards, labels, "elevater",
                                                       paper_label="Paper (Dec 2021 set)"), cells)
    assert table.rows[-1] == ["Pairs per set", "10,000,000", "8,530,639", "7,912,345"]
    # an availability.json given for a label wins over the logs
    other = _availability(tmp_path / "q" / "availability.json", 5, 10, "2026-12-01")
    files = {"Downloaded today": pairs_availability.summary(pairs_availability.read(other), other)}
    assert pairs_row(labels, models, run_summaries(runs), files) == ["8,530,639", "5"]


def test_report_has_a_retrieval_set_section(tmp_path):
    from harness.core import pairs_availability, training_log as tl
    from harness.report import ReportInputs, build

    avail = _availability(tmp_path / "p" / "availability.json", 7_912_345, 9_850_000, "2026-12-05")
    summary = pairs_availability.summary(pairs_availability.read(avail), avail.resolve())
    (tmp_path / "logs" / "gi_run").mkdir(parents=True)
    tl.append_row(tmp_path / "logs" / "gi_run" / tl.METRICS_FILE, {tl.EPOCH: 0, tl.TRAIN_DATA_SET: summary})
    tl.append_row(tmp_path / "logs" / "gi_run" / tl.METRICS_FILE, {tl.EPOCH: 1, tl.TRAIN_LOSS_MEAN: 2.0})
    older = _availability(tmp_path / "old" / "availability.json", 8_600_000, 9_850_000, "2025-01-02")
    (tmp_path / "results").mkdir()
    inputs = ReportInputs(name="pairs", run_sets=[("This harness", tmp_path / "results")], logs=[tmp_path / "logs"],
                          pairs_sets=[("Jan 2025 download", older)])
    md = (build(inputs, tmp_path / "reports", generated_at="T0") / "README.md").read_text()
    section = md[md.index("## Retrieval set"):]
    assert "| gi_run | imagenet_10m.parquet | 2026-12-05 | 7,912,345 / 9,850,000 | 80.3% |" in section
    header = next(line for line in section.splitlines() if line.startswith("|  | REACT Dec 2021 set"))
    assert header.split("|")[3:5] == [" REACT Feb 2023 set ", " Jan 2025 download "]
    assert "| Pairs per set | 10,000,000 | 8,530,639 | 8,600,000 | 7,912,345 |" in section
    assert "| online (successes / URLs) | — | — | 87.3% | 80.3% |" in section


def test_fetch_of_a_gated_repo_says_to_log_in(loopback_hub, tmp_path):
    from harness.core.errors import HarnessError
    from training.pairs.fetch import fetch

    loopback_hub.add_file(REACT_REPO, "imagenet_10m.parquet", b"x" * 100)
    loopback_hub.gated.add(REACT_REPO)
    with pytest.raises(HarnessError, match="gated.*HF_TOKEN"):
        fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet")
    assert not (tmp_path / "imagenet_10m.parquet").exists()
