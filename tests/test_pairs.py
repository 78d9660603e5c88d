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
    """Start the download in its own process group, SIGKILL every process of it (its group and img2dataset's) once
    some (not all) shards finished."""
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
    finally:  # every process: the wrapper's group and img2dataset's (a session of its own)
        groups = {_pgid(p) for p in _descendants(proc.pid)} - {None} | {proc.pid}
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
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
    files = {p: p.stat().st_mtime_ns for s in finished
             for p in (out / "shards" / f"{s:05d}.tar", out / "shards" / f"{s:05d}.parquet",
                       out / "shards" / f"{s:05d}_stats.json")}
    hits_after_kill = dict(server.path_hits)
    killed = dict(_stats(out), finished_ids=finished, partial_ids=partial, finished_files=files,
                  hits_after_kill=hits_after_kill)
    _pairs(*_download_args(parquet, out))
    killed["hits_after_resume"] = dict(server.path_hits)
    return out, parquet, killed


@pytest.mark.slow
def test_stats_after_a_kill_count_finished_shards_and_mark_partial_ones(downloaded):
    """Stats of a SIGKILLed download: exactly the finished shards' rows; an interrupted shard apart, not counted."""
    from training.data import expand_urls

    from harness.core.pairs_availability import resolve_pattern

    out, _, killed = downloaded
    ids = killed["finished_ids"]
    assert 1 <= len(ids) < math.ceil(len(KINDS) / NPS) and killed["complete"] is False
    kinds = [k for s in ids for k in KINDS[s * NPS:(s + 1) * NPS]]
    truth = _truth(kinds, EXPECTED)
    assert (killed["total"], killed["successes"], killed["failures"]) == (len(kinds), truth["success"],
                                                                         _failures(truth))
    assert killed["train_data_pattern"].startswith("shards/")  # relative to the pairs folder
    assert expand_urls(resolve_pattern(killed["train_data_pattern"], out)) == [
        str(out.resolve() / "shards" / f"{i:05d}.tar") for i in ids]
    assert [int(p["shard"]) for p in killed["partial_shards"]] == killed["partial_ids"]
    assert all(p["tar_samples"] <= NPS for p in killed["partial_shards"])
    assert killed["partial_samples"] == sum(p["tar_samples"] for p in killed["partial_shards"])


@pytest.mark.slow
def test_resumed_download_equals_the_servers_truth_count_by_count(downloaded, server):
    """After the kill and the resume: every URL once, outcomes exactly the server's, no shard counted twice."""
    from harness.core.pairs_availability import resolve_pattern
    from training.data import expand_urls

    out, _, _ = downloaded
    data = _stats(out)
    truth = _truth(KINDS, EXPECTED)
    assert data["total"] == len(KINDS) == data["attempts"]
    assert data["successes"] == truth["success"]
    assert data["failures"] == _failures(truth)
    assert data["shards"] == math.ceil(len(KINDS) / NPS) and data["partial_shards"] == []
    assert data["complete"] is True and data["success_rate"] == pytest.approx(truth["success"] / len(KINDS))
    tars = expand_urls(resolve_pattern(data["train_data_pattern"], out))
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
def test_the_resume_did_not_redo_the_shards_finished_before_the_kill(downloaded, server):
    """Shards finished before the SIGKILL: their files untouched by the resume, their URLs not requested again;
    the other URLs were requested by the resume."""
    out, _, killed = downloaded
    assert killed["finished_files"] and all(p.stat().st_mtime_ns == t for p, t in killed["finished_files"].items())
    before, after = killed["hits_after_kill"], killed["hits_after_resume"]
    rows = server.rows(KINDS)
    finished = {i for s in killed["finished_ids"] for i in range(s * NPS, min((s + 1) * NPS, len(KINDS)))}
    served = [(i, r.url[len(server.url):]) for i, r in enumerate(rows) if r.url.startswith(server.url + "/")]
    done = [path for i, path in served if i in finished]
    assert done and all(after.get(path, 0) == before.get(path, 0) >= 1 for path in done)
    unfinished = [path for i, path in served if i not in finished and not path.startswith("/stall/")]
    assert unfinished and all(after.get(path, 0) > before.get(path, 0) for path in unfinished)


@pytest.mark.slow
def test_rerun_of_a_finished_download_runs_nothing(downloaded, server):
    out, parquet, _ = downloaded
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    log = (out / "img2dataset.log").read_text()
    hits = dict(server.path_hits)
    res = _pairs(*_download_args(parquet, out))
    assert res.returncode == 0 and "are finished" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    assert (out / "img2dataset.log").read_text() == log  # img2dataset was not started
    assert server.path_hits == hits  # and no URL was requested


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
    assert recorded[0]["train_data_pattern"] == str(out.resolve() / data["train_data_pattern"])
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
    """A transfer cut off mid-file resumes within the call (a Range request from the last chunk written); one
    that fails keeps nothing under the final name."""
    from huggingface_hub import constants

    from harness.core.errors import HarnessError
    from training.pairs.fetch import fetch

    chunk = constants.DOWNLOAD_CHUNK_SIZE
    blob = os.urandom(2 * chunk + 1000)
    loopback_hub.add_file(REACT_REPO, "imagenet_10m.parquet", blob)
    loopback_hub.fault(REACT_REPO, "imagenet_10m.parquet", "drop", n=chunk + 5000, times=1)
    assert fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet").read_bytes() == blob
    assert [r.range for r in loopback_hub.gets(REACT_REPO, "imagenet_10m.parquet")] == [None, f"bytes={chunk}-"]
    loopback_hub.add_file(REACT_REPO, "other.parquet", blob)
    loopback_hub.fault(REACT_REPO, "other.parquet", "drop", n=5000)  # every transfer dropped, no chunk written
    with pytest.raises(HarnessError, match="Run fetch again: it resumes"):
        fetch(tmp_path / "o", REACT_REPO, "other.parquet")
    assert not (tmp_path / "o" / "other.parquet").exists()


def test_a_killed_fetch_is_resumed_by_the_next_run_from_its_part(loopback_hub, tmp_path):
    """What a killed fetch leaves (DIR/.fetch/<file>.part, the first bytes) is resumed by the next run (another
    process: nothing carried in memory) with an HTTP Range request from its end, never from byte 0."""
    from training.pairs.fetch import STAGING, fetch

    blob = os.urandom(300_000)
    loopback_hub.add_file(REACT_REPO, "imagenet_10m.parquet", blob)
    part = tmp_path / STAGING / "imagenet_10m.parquet.part"
    part.parent.mkdir()
    part.write_bytes(blob[:123_456])
    assert fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet").read_bytes() == blob
    gets = loopback_hub.gets(REACT_REPO, "imagenet_10m.parquet")
    assert [(r.range, r.sent) for r in gets] == [("bytes=123456-", len(blob) - 123_456)]
    assert not part.exists()
    fetch(tmp_path, REACT_REPO, "imagenet_10m.parquet")  # the whole file is there: nothing fetched again
    assert len(loopback_hub.gets(REACT_REPO, "imagenet_10m.parquet")) == 1


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


# ----------------------------------------------------------------------------------------------------------------------
# review fixes: the download's source identity, stopping img2dataset, shard sizing, patterns, the Makefile

def _write_pairs(path: Path, urls: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(len(urls))]}), path)
    return path


def test_a_changed_parquet_with_the_same_row_count_is_refused(tmp_path):
    """The download state records the parquet's size, mtime and sha256: another parquet of as many rows at the same
    path (a `make customize` rerun with another --mode) is refused; a touched but equal one is not."""
    from harness.core.errors import HarnessError
    from training.pairs.download import open_state, restart
    from training.pairs.img2dataset_program import DownloadFlags, Program
    from training.pairs.layout import PairsLayout

    layout = PairsLayout(tmp_path / "d")
    layout.shards.mkdir(parents=True)
    parquet = _write_pairs(tmp_path / "pairs.parquet", [f"http://a/{i}.jpg" for i in range(5)])
    flags, program = DownloadFlags(processes=1, threads=1, number_sample_per_shard=2), Program(Path("/bin/true"), "x")
    state = open_state(layout, parquet, 5, flags, program, False)
    assert state.source_sha256 and state.source_size == parquet.stat().st_size
    os.utime(parquet, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
    open_state(layout, parquet, 5, flags, program, False)
    _write_pairs(parquet, [f"http://b/{i}.jpg" for i in range(5)])  # same rows count, other pairs
    with pytest.raises(HarnessError, match=r"the parquet changed.*new --out, or --restart"):
        open_state(layout, parquet, 5, flags, program, False)
    restart(layout)
    assert not layout.state.exists() and not layout.shards.exists()
    layout.shards.mkdir()
    assert open_state(layout, parquet, 5, flags, program, False).source_sha256 != state.source_sha256


@pytest.mark.parametrize("rows,ranks,workers,expected", [
    (100_000, 8, 4, 3125), (10**7, 8, 4, 10_000), (32, 8, 4, 1), (33, 8, 4, 1), (63, 8, 4, 1), (64, 8, 4, 2),
    (5, 1, 0, 5), (1000, 1, 1, 1000), (999, 2, 3, 166)])
def test_shard_size_gives_every_training_worker_a_shard(rows, ranks, workers, expected):
    from training.pairs.sizing import samples_per_shard

    n = samples_per_shard(rows, ranks, workers)
    assert n == expected and math.ceil(rows / n) >= ranks * max(workers, 1) and n <= 10_000


def test_a_set_too_small_for_the_training_workers_is_refused_in_one_line(tmp_path):
    from harness.core.errors import HarnessError
    from training.pairs.sizing import samples_per_shard

    with pytest.raises(HarnessError, match=r"has 31 pairs.*8 rank\(s\) x 4 .*32 shards.*--per-class.*NGPUS") as err:
        samples_per_shard(31, 8, 4)
    assert "\n" not in str(err.value)
    parquet = _write_pairs(tmp_path / "p.parquet", [f"http://a/{i}.jpg" for i in range(40)])
    out = _pairs("shard-size", "--parquet", str(parquet), "--ranks", "2", "--workers", "4")
    assert out.stdout.strip() == "--number-sample-per-shard 5"
    out = _pairs("shard-size", "--parquet", str(parquet), "--ranks", "8", "--workers", "8", check=False)
    assert out.returncode == 2 and "has 40 pairs" in out.stderr


def test_the_availability_of_a_pattern_is_never_an_unrelated_folders(tmp_path):
    from harness.core.pairs_availability import find_for_pattern

    pairs = tmp_path / "unrelated" / "pairs"
    (pairs / "shards").mkdir(parents=True)
    (tmp_path / "unrelated" / "availability.json").write_text("{}")  # someone else's, one folder up
    assert find_for_pattern(f"{pairs}/shards/{{00000..00003}}.tar") is None
    (pairs / "availability.json").write_text("{}")
    assert find_for_pattern(f"{pairs}/shards/{{00000..00003}}.tar") == pairs / "availability.json"
    assert find_for_pattern(f"{pairs}/shards/x{{0,1}}.tar") == pairs / "availability.json"


def _img2dataset_shard(folder: Path, shard: int, statuses: list[str]) -> None:
    """A finished shard as img2dataset writes it (tar, parquet, _stats.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from pairs_server import jpeg

    keys = [f"{shard:05d}{i:04d}" for i in range(len(statuses))]
    with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
        for key, status in zip(keys, statuses):
            if status == "success":
                sink.write({"__key__": key, "jpg": jpeg(1), "txt": "c",
                            "json": json.dumps({"status": status}).encode()})
    pq.write_table(pa.table({"url": [f"http://x/{k}" for k in keys], "caption": ["c"] * len(keys), "key": keys,
                             "status": statuses, "error_message": [None if s == "success" else "HTTP Error 404: no"
                                                                   for s in statuses]}),
                   folder / f"{shard:05d}.parquet")
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps(
        {"count": len(statuses), "successes": statuses.count("success"), "start_time": 1.7e9, "end_time": 1.7e9}))


def test_stats_of_the_readme_layout_and_a_moved_pairs_folder(tmp_path):
    """`stats DIR` counts img2dataset's own output folder (the REACT README's command: shards in DIR itself); the
    pattern is stored relative to DIR and `show` resolves it against the DIR given, so a moved folder trains."""
    flat = tmp_path / "readme_download"
    flat.mkdir()
    _img2dataset_shard(flat, 0, ["success", "failed_to_download", "success"])
    _img2dataset_shard(flat, 1, ["success", "success"])
    _pairs("stats", str(flat))
    data = json.loads((flat / "availability.json").read_text())
    assert (data["total"], data["successes"], data["shards"]) == (5, 4, 2)
    assert _pairs("show", str(flat), "--field", "train_data_pattern").stdout.strip() == f"{flat}/{{00000..00001}}.tar"

    ours = tmp_path / "ours"
    (ours / "shards").mkdir(parents=True)
    _img2dataset_shard(ours / "shards", 0, ["success"])
    _pairs("stats", str(ours))
    assert json.loads((ours / "availability.json").read_text())["train_data_pattern"] == "shards/00000.tar"
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    ours.rename(moved)
    shown = _pairs("show", str(moved), "--field", "train_data_pattern").stdout.strip()
    assert shown == f"{moved}/shards/00000.tar" and Path(shown).is_file()


def _make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k not in ("TRAIN_DATA",
                                                                                          "TRAIN_NUM_SAMPLES")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.slow
def test_make_pairs_with_a_parquet_of_ones_own_does_not_fetch(tmp_path):
    dry = _make("-n", "pairs", f"PAIRS_DIR={tmp_path / 'd'}", f"PAIRS_PARQUET={tmp_path / 'mine.parquet'}")
    assert dry.returncode == 0 and "training.pairs fetch" not in dry.stdout
    assert f"download --parquet {tmp_path / 'mine.parquet'}" in dry.stdout
    assert "training.pairs fetch" in _make("-n", "pairs", f"PAIRS_DIR={tmp_path / 'd'}").stdout


@pytest.mark.slow
def test_make_train_takes_data_and_sample_count_from_one_place(tmp_path):
    """With PAIRS_DIR: both from availability.json, or both given; a mix is refused in one line; given both, no
    availability.json is needed."""
    missing = tmp_path / "no_pairs_here"
    mix = _make("train-gated", f"PAIRS_DIR={missing}", "TRAIN_DATA=/x/{00000..00003}.tar")
    assert mix.returncode != 0 and "give both, or neither" in mix.stderr and "Traceback" not in mix.stderr
    mix = _make("train-gated", f"PAIRS_DIR={missing}", "TRAIN_NUM_SAMPLES=12")
    assert mix.returncode != 0 and "give both, or neither" in mix.stderr
    both = _make("-n", "train-gated", f"PAIRS_DIR={missing}", "TRAIN_DATA=/x/{00000..00003}.tar",
                 "TRAIN_NUM_SAMPLES=12")
    assert both.returncode == 0 and "training.pairs show" not in both.stdout
    assert "--train-data '/x/{00000..00003}.tar'" in both.stdout and "--train-num-samples 12" in both.stdout
    neither = _make("-n", "train-gated", f"PAIRS_DIR={missing}")
    assert f"training.pairs show {missing} &&" in neither.stdout


@pytest.mark.slow
def test_make_customize_cuts_the_download_into_a_shard_per_training_worker(tmp_path):
    dry = _make("-n", "customize", "DATASET=my_card.yaml", f"INDEX={tmp_path}", f"CUSTOM_DIR={tmp_path / 'c'}")
    assert dry.returncode == 0
    assert (f"nps=$(.venv/bin/python -m training.pairs shard-size --parquet {tmp_path / 'c'}/pairs.parquet --ranks 8 "
            f"--workers 4) &&") in dry.stdout
    assert f"download --parquet {tmp_path / 'c'}/pairs.parquet --out {tmp_path / 'c'}/pairs $nps" in dry.stdout


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_of_the_download_stops_img2dataset(server, img2dataset, tmp_path):
    """SIGTERM to `training.pairs download` stops img2dataset and its workers before it exits (they run in a
    process group of their own, stopped as a whole)."""
    parquet = _write_pairs(tmp_path / "p.parquet", [server.url_for("stall", i) for i in range(400)])
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "training.pairs", *_download_args(parquet, out)], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(
                "img2dataset" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                for p in _descendants(proc.pid) if Path(f"/proc/{p}/cmdline").exists()):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        time.sleep(2)  # its workers started
        seen = _descendants(proc.pid)
        assert seen
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.1)
        assert [p for p in seen if _alive(p)] == []
        assert code == 128 + signal.SIGTERM
        assert "stopped by signal" in proc.stderr.read()
    finally:
        for p in seen | _descendants(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_an_img2dataset_left_by_a_sigkilled_download_is_stopped_by_the_next(server, img2dataset, tmp_path):
    """SIGKILL of the wrapper alone cannot be caught: its img2dataset (own session) outlives it; the next download
    in the folder stops that orphan group before it runs img2dataset itself."""
    from training.pairs.download import stop_orphan
    from training.pairs.layout import PairsLayout

    parquet = _write_pairs(tmp_path / "p.parquet", [server.url_for("stall", i) for i in range(400)])
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "training.pairs", *_download_args(parquet, out)], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / ".img2dataset.pid").exists():
            time.sleep(0.1)
        time.sleep(2)
        seen = _descendants(proc.pid)
        proc.kill()
        proc.wait()
        time.sleep(1)
        assert [p for p in seen if _alive(p)]  # orphaned, still running
        stop_orphan(PairsLayout(out.resolve()))
        assert [p for p in seen if _alive(p)] == [] and not (out / ".img2dataset.pid").exists()
    finally:
        for p in seen:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
