"""`prepare --source auto|elevater-rehost|clip-benchmark` and `--plan-only` against the REAL huggingface_hub talking to
a loopback hub (tests/loopback_hub.py) that serves generated repos in the exact layouts: CLIP_benchmark webdatasets
(.cls and .npy labels, webp/jpg/png, several shards, nshards.txt) and the ELEVATER re-host's ELEVATER_all.zip (read
with Range requests: only the asked datasets' bytes travel). Faults each give one line naming the file and the remedy,
and nothing half-written is left under a final name. Nothing here touches the internet."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.cards import get_dataset_card
from harness.cli import main
from harness.data import sources
from harness.data.prepare import DownloadOptions, PrepareOptions, prepare
from harness.data.prepare.record import RECORD_FILE
from harness.data.prepare.sources_run import STAGING_DIR
from harness.data.synthetic_sources import RehostSet, write_clip_benchmark_split, write_rehost

from conftest import REPO

REHOST = "OFA-Sys/chinese-clip-eval"
CIFAR = "clip-benchmark/wds_vtab-cifar10"
EUROSAT = "clip-benchmark/wds_vtab-eurosat"
VOC = "clip-benchmark/wds_voc2007_multilabel"
DTD = "clip-benchmark/wds_vtab-dtd"
CLOSED = "http://127.0.0.1:9/container"  # the discard port: nothing listens, connection refused at once
REAL_NAMES = json.loads((REPO / "tests" / "fixtures" / "clip_benchmark_classnames.json").read_text(encoding="utf-8"))

# dataset -> (card's num_images, clip-benchmark repo, its image count, shards, ext); None: not on clip-benchmark
WORLD = {
    "cifar-10": (12, CIFAR, 12, 3, "webp"),
    "eurosat_clip": (8, EUROSAT, 9, 2, "jpg"),  # a different split: 9 images where ELEVATER has 8
    "voc-2007-classification": (6, VOC, 6, 2, "png"),
    "dtd": (8, None, 0, 0, ""),  # on the re-host only (in this world)
}
IN_REHOST = ("cifar-10", "dtd")


def _images(n: int, seed: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(n)]


def _labels(n: int, classes: int, seed: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(0, classes, n)]


class World:
    """The hub's repos, the cards and the sources data of one test."""

    def __init__(self, hub, tmp_path: Path, monkeypatch):
        self.hub, self.tmp = hub, tmp_path
        self.root = tmp_path / "data"
        cards = tmp_path / "cards"
        cards.mkdir()
        for name, (num, *_rest) in WORLD.items():
            card = get_dataset_card(name)
            data = yaml.safe_load(card.path.read_text())
            data["splits"][card.eval_split]["num_images"] = num
            (cards / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        monkeypatch.setenv("HARNESS_DATASET_CARDS", str(cards))
        self.monkeypatch = monkeypatch
        for seed, (name, (num, repo, count, shards, ext)) in enumerate(WORLD.items()):
            if repo is None:
                continue
            card = get_dataset_card(name)
            names = REAL_NAMES.get(repo.split("/")[1], card.classnames)
            folder = tmp_path / "repos" / repo
            multilabel = card.multilabel
            labels = ([sorted({i % len(names), (i * 7 + 3) % len(names)}) for i in range(count)] if multilabel
                      else _labels(count, len(names), seed))
            write_clip_benchmark_split(folder, classnames=names, images=_images(count, seed), labels=labels,
                                       shards=shards, ext=ext, multilabel=multilabel)
            hub.add_folder(repo, folder)
        sets = {}
        for seed, name in enumerate(IN_REHOST, 50):
            card = get_dataset_card(name)
            num = WORLD[name][0]
            sets[name] = RehostSet(classnames=card.classnames, images=_images(num, seed),
                                   labels=_labels(num, card.num_classes, seed))
        self.zip_path = tmp_path / "ELEVATER_all.zip"
        write_rehost(self.zip_path, sets, as_zip=True)
        hub.add_file(REHOST, "ELEVATER_all.zip", self.zip_path.read_bytes())
        self.counts = {name: w[2] for name, w in WORLD.items()}
        self.write_sources()

    def write_sources(self, revisions: dict[str, str] | None = None, **count_overrides: int) -> None:
        raw = yaml.safe_load(sources.SOURCES_FILE.read_text(encoding="utf-8"))
        for name, (num, repo, count, *_rest) in WORLD.items():
            cb = raw["datasets"][name].get("clip-benchmark")
            if cb is not None:  # (dtd's repo is not served in this world: it does not answer)
                cb["revision"] = (revisions or {}).get(name)
                cb["count"] = count_overrides.get(name, count or num)
        path = self.tmp / "sources.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        self.monkeypatch.setattr(sources, "SOURCES_FILE", path)
        sources.load_sources.cache_clear()

    def prepare(self, datasets: str, source: str = "auto", storage_url: str = CLOSED, **kw):
        opts = PrepareOptions(storage_url=storage_url, source=source, merge_gap=0,
                              download=DownloadOptions(tries=1, backoff_s=0.01, read_timeout_s=10), **kw)
        return prepare(self.root, datasets, opts)

    def final_files(self, repo: str) -> list[str]:
        folder = self.root / repo
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def world(loopback_hub, tmp_path, monkeypatch):
    yield World(loopback_hub, tmp_path, monkeypatch)
    sources.load_sources.cache_clear()


def _one(summary, name):
    (o,) = [o for o in summary.outcomes if o.name == name]
    return o


def _inner_span(zip_path: Path, member: str) -> tuple[int, int]:
    """Byte range of ``<member>.zip``'s data inside the outer zip."""
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(f"{member}.zip")
    with open(zip_path, "rb") as f:
        f.seek(info.header_offset + 26)
        n, e = np.frombuffer(f.read(4), dtype="<u2")
    start = info.header_offset + 30 + int(n) + int(e)
    return start, start + info.compress_size


def _ranges(hub, repo: str, path: str) -> list[tuple[int, int]]:
    out = []
    for r in hub.gets(repo, path):
        a, b = r.range.split("=")[1].split("-")
        out.append((int(a), int(b) + 1 if b else 10**12))
    return out


# ------------------------------------------------------------------------------------------------ the main path


def test_auto_takes_the_most_faithful_source_that_answers_then_eval_reads_it(world):
    summary = world.prepare("cifar-10,eurosat_clip,voc-2007-classification,dtd")
    assert not summary.failed, summary.lines()
    got = {o.name: o for o in summary.outcomes}
    # the toolkit's container does not answer (closed port): the re-host where it has the set, else clip-benchmark
    assert got["cifar-10"].source.startswith(f"elevater-rehost {REHOST}@{world.hub.commit(REHOST)[:8]}")
    assert got["dtd"].source.startswith("elevater-rehost")
    assert got["eurosat_clip"].source.startswith(f"clip-benchmark {EUROSAT}@") and "different split" in \
        got["eurosat_clip"].source
    assert got["voc-2007-classification"].source.startswith(f"clip-benchmark {VOC}@")
    assert "the toolkit's container" in got["cifar-10"].detail  # passed over, and why
    # the local layout contract: what `hf download --local-dir` leaves, plus our record with the resolved commit
    assert world.final_files(VOC) == [RECORD_FILE, "classnames.txt", "dataset_type.txt", "test/0.tar", "test/1.tar",
                                      "test/nshards.txt", "zeroshot_classification_templates.txt"]
    record = json.loads((world.root / VOC / RECORD_FILE).read_text())
    assert record["revision"] == world.hub.commit(VOC) and record["datasets"] == ["voc-2007-classification"]
    assert record["files"]["test/1.tar"]["sha256"] == world.hub.sha256(VOC, "test/1.tar")
    rehost = json.loads((world.root / REHOST / RECORD_FILE).read_text())
    assert rehost["datasets"] == ["cifar-10", "dtd"] and rehost["revision"] == world.hub.commit(REHOST)
    assert sorted(p.name for p in (world.root / REHOST).iterdir()) == [RECORD_FILE, "cifar-10.zip", "dtd.zip"]
    assert not (world.root / STAGING_DIR).exists()
    from harness.data.testsets import open_eval_data

    data = open_eval_data(get_dataset_card("eurosat_clip"), world.root)
    assert data.source["kind"] == "clip-benchmark" and data.source["fidelity"] == "different split"
    assert len(data.labels) == 9
    assert open_eval_data(get_dataset_card("cifar-10"), world.root).source["kind"] == "elevater-rehost"
    # a second run downloads nothing
    world.hub.requests.clear()
    again = world.prepare("cifar-10,voc-2007-classification")
    assert [o.status for o in again.outcomes] == ["present", "present"]
    assert not [r for r in world.hub.requests if "/resolve/" in r.path and r.method == "GET"]


@pytest.mark.parametrize("cdn", [False, True], ids=["direct", "via-cdn-redirect"])
def test_rehost_fetches_only_the_asked_members_bytes(world, monkeypatch, cdn):
    from harness.data.prepare import remote_zip

    world.hub.lfs_redirect = cdn
    monkeypatch.setattr(remote_zip, "MIN_FETCH", 64)  # small reads, so the planned member spans are what is fetched
    size = world.zip_path.stat().st_size
    summary = world.prepare("dtd", source="elevater-rehost")
    assert _one(summary, "dtd").status == "downloaded", summary.lines()
    cifar = _inner_span(world.zip_path, "cifar-10")
    dtd = _inner_span(world.zip_path, "dtd")
    got = _ranges(world.hub, REHOST, "ELEVATER_all.zip")
    assert got and all(b <= cifar[0] or a >= cifar[1] for a, b in got), "no byte of cifar-10 was asked for"
    sent = world.hub.sent(REHOST, "ELEVATER_all.zip")
    assert sent < size - (cifar[1] - cifar[0]) + 2048  # what is not cifar-10, and the directory's tail read twice
    # the dataset's members arrived whole (CRC-checked) and nothing else of the zip
    with zipfile.ZipFile(world.zip_path) as outer, zipfile.ZipFile(io.BytesIO(outer.read("dtd.zip"))) as inner:
        want = {n: inner.read(n) for n in inner.namelist() if not n.startswith("dtd/train/")}
    with zipfile.ZipFile(world.root / REHOST / "dtd.zip") as local:
        assert {n: local.read(n) for n in local.namelist()} == want
    inside = [(a, b) for a, b in got if dtd[0] <= a and b <= dtd[1]]
    assert len(inside) <= 4 and max(b - a for a, b in inside) < dtd[1] - dtd[0], got  # directory, members in one run


def test_plan_only_says_source_files_bytes_and_fidelity_and_downloads_nothing(world, capsys):
    world.hub.add_file(VOC, "test/7.tar", b"not one of the nshards shards")  # counted only if nshards is ignored
    rc = main(["prepare", "--data-root", str(world.root), "--datasets", "cifar-10,eurosat_clip,voc-2007-classification",
               "--plan-only", "--storage-url", CLOSED, "--source", "auto"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("prepare --plan-only")
    voc_bytes = sum((world.hub.repo_dir(VOC) / p).stat().st_size for p in
                    ("classnames.txt", "dataset_type.txt", "zeroshot_classification_templates.txt", "test/nshards.txt",
                     "test/0.tar", "test/1.tar"))
    from harness.core.units import human_bytes

    assert any(f"voc-2007-classification: clip-benchmark {VOC}@{world.hub.commit(VOC)[:8]}: 6 files, "
               f"{human_bytes(voc_bytes)} — same images in another order" in line for line in lines), out
    assert any("eurosat_clip: clip-benchmark" in line and "different split" in line for line in lines), out
    assert any("voc-2007-classification: clip-benchmark" in line and "caveat:" in line and "difficult" in line
               for line in lines), out
    assert any("cifar-10: elevater-rehost" in line and "same split" in line for line in lines), out
    assert any("cifar-10: elevater " in line and "does not answer" in line for line in lines), out
    assert not world.root.exists() or not any(world.root.rglob("*.tar"))
    assert not [r for r in world.hub.requests if r.method == "GET" and r.path.endswith(".tar")]


# ------------------------------------------------------------------------------------------------ faults


def _nothing_final(world, repo: str) -> None:
    assert [f for f in world.final_files(repo)] == [], f"files under final names: {world.final_files(repo)}"


def _one_line(detail: str, *words: str) -> None:
    assert "\n" not in detail
    for w in words:
        assert w in detail, detail


def test_truncated_transfer_is_refused_and_nothing_is_final(world):
    world.hub.fault(VOC, "test/1.tar", "truncate", n=300)
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "failed"
    _one_line(o.detail, f"{VOC}/test/1.tar", "300", "truncated", "rerun prepare")
    _nothing_final(world, VOC)
    world.hub.clear_faults()
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "downloaded" and o.downloaded == ["test/1.tar"], o.detail  # the rest was kept in staging


def test_a_truncated_shard_on_the_hub_is_caught_by_the_strict_read(world):
    shard = world.hub.repo_dir(CIFAR) / "test/2.tar"
    world.hub.add_file(CIFAR, "test/2.tar", shard.read_bytes()[:1500])  # the hub's own copy is cut short
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, "test/2.tar", "nothing was moved", "use another --source")
    _nothing_final(world, CIFAR)


def test_missing_nshards_names_the_file(world):
    world.hub.remove_file(CIFAR, "test/nshards.txt")
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, f"{CIFAR}/test/nshards.txt: missing", "never guessed")
    _nothing_final(world, CIFAR)


def test_count_mismatch_names_both_numbers(world):
    card = get_dataset_card("cifar-10")  # the repo holds 11 images where the card (and the sources data) say 12
    folder = world.tmp / "short"
    write_clip_benchmark_split(folder, classnames=card.classnames, images=_images(11, 3),
                               labels=_labels(11, 10, 3), shards=2)
    for p in ("test/2.tar",):
        world.hub.remove_file(CIFAR, p)
    world.hub.add_folder(CIFAR, folder)
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, "11 images", "expected 12", "nothing was moved")
    _nothing_final(world, CIFAR)


def test_non_bijective_classnames_are_refused_before_images(world):
    names = (world.hub.repo_dir(CIFAR) / "classnames.txt").read_text().splitlines()
    names[1] = names[0]  # two labels on one class
    world.hub.add_file(CIFAR, "classnames.txt", ("\n".join(names) + "\n").encode())
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, "classnames.txt", "before any shard was downloaded")
    _nothing_final(world, CIFAR)
    assert not [r for r in world.hub.requests if r.method == "GET" and ("/test/" in r.path)]  # no shard, no nshards


def test_a_multilabel_mismatch_is_refused_before_any_shard(world):
    world.hub.add_file(CIFAR, "dataset_type.txt", b"multilabel\n")
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, "dataset_type.txt", "multilabel", "before any shard was downloaded")
    assert not [r for r in world.hub.requests if r.method == "GET" and r.path.endswith(".tar")]


def test_another_split_of_a_hub_source_is_refused_naming_the_flag(world):
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError) as err:
        world.prepare("cifar-10", source="clip-benchmark", split="train")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--split train:") and "holds only its 'test' split" in msg
    assert world.hub.requests == []
    # auto: the hub sources are not candidates for another split (only the toolkit's container has it)
    o = _one(world.prepare("cifar-10", split="train"), "cifar-10")
    assert o.status == "failed" and "container" in o.detail and not [r for r in world.hub.requests
                                                                     if "/datasets/" in r.path]


def test_plan_only_with_whole_zip_never_downloads(world, capsys):
    world.hub.ranges = False
    rc = main(["prepare", "--data-root", str(world.root), "--datasets", "dtd", "--plan-only", "--whole-zip",
               "--storage-url", CLOSED, "--source", "elevater-rehost"])
    out = capsys.readouterr().out
    assert "ignores HTTP Range requests" in out, out
    assert rc in (0, 1)
    full = [r for r in world.hub.requests if r.method == "GET" and r.path.endswith("ELEVATER_all.zip")
            and not (r.range or "").startswith("bytes=0-0")]
    assert full == [] and not (world.root / REHOST).exists()


def test_a_broken_hand_copy_names_the_folder_to_remove(world):
    """A re-host dataset unzipped by hand but incomplete: prepare says which folder to remove (not 'rerun prepare',
    which would find the same copy), and auto goes on to the next source."""
    folder = world.root / REHOST / "cifar-10"
    write_rehost(world.root / REHOST, {"cifar-10": RehostSet(get_dataset_card("cifar-10").classnames,
                                                              _images(5, 1), [0, 1, 2, 3, 4])}, as_zip=False)
    o = _one(world.prepare("cifar-10", source="elevater-rehost"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, f"the copy at {folder} (not downloaded by prepare) fails the check", f"Remove {folder}")
    assert "--source elevater-rehost --datasets cifar-10" not in o.detail
    o = _one(world.prepare("cifar-10"), "cifar-10")
    assert o.status == "downloaded" and o.source.startswith("clip-benchmark") and f"Remove {folder}" in o.detail


def test_gated_repo_says_accept_terms_and_set_hf_token(world, monkeypatch):
    world.hub.gated.add(CIFAR)
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, CIFAR, "gated", "accept its terms", "HF_TOKEN", f"{world.hub.url}/datasets/{CIFAR}")
    _nothing_final(world, CIFAR)
    monkeypatch.setenv("HF_TOKEN", world.hub.token)
    assert _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10").status == "downloaded"


def test_offline_is_one_line_and_contacts_nobody(world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    summary = world.prepare("cifar-10,voc-2007-classification")
    text = "\n".join(summary.lines())
    assert text.count("HF_HUB_OFFLINE is set") == 1 and "unset HF_HUB_OFFLINE" in text
    assert all(o.status == "failed" and "HF_HUB_OFFLINE" in o.detail for o in summary.outcomes)
    assert world.hub.requests == []
    plan = world.prepare("cifar-10", plan_only=True)
    assert world.hub.requests == [] and "HF_HUB_OFFLINE" in "\n".join(plan.lines())


def test_closed_port_is_one_line_naming_the_endpoint(world, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "failed"
    _one_line(o.detail, f"no connection to http://127.0.0.1:{port}", "HF_ENDPOINT", "HF_HUB_OFFLINE")
    assert not world.root.joinpath(VOC).exists()


@pytest.mark.parametrize("cdn", [False, True], ids=["direct", "via-cdn-redirect"])
def test_an_interrupted_download_resumes_with_a_range_request(world, cdn):
    world.hub.lfs_redirect = cdn  # the real hub answers LFS files with a 302 to its CDN
    shard = (world.hub.repo_dir(EUROSAT) / "test/0.tar").read_bytes()
    part = world.root / STAGING_DIR / EUROSAT / "test/0.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(shard[:1000])  # what a killed run leaves
    o = _one(world.prepare("eurosat_clip", source="clip-benchmark"), "eurosat_clip")
    assert o.status == "downloaded" and "test/0.tar (resumed)" in o.downloaded, o.detail
    (get,) = world.hub.gets(EUROSAT, "test/0.tar")
    assert get.range == "bytes=1000-" and get.sent == len(shard) - 1000
    assert (world.root / EUROSAT / "test/0.tar").read_bytes() == shard


def test_a_dropped_connection_is_resumed_within_the_run(world):
    world.hub.fault(VOC, "test/0.tar", "drop", n=700, times=1)
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "downloaded", o.detail
    first, second = world.hub.gets(VOC, "test/0.tar")  # huggingface_hub's own retry, resuming what it wrote
    assert first.sent == 700 and (second.range is None or second.range.startswith("bytes="))
    assert (world.root / VOC / "test/0.tar").read_bytes() == (world.hub.repo_dir(VOC) / "test/0.tar").read_bytes()


def test_a_server_without_ranges_is_said_in_one_line_and_whole_zip_is_offered(world):
    world.hub.ranges = False
    o = _one(world.prepare("dtd", source="elevater-rehost"), "dtd")
    assert o.status == "failed"
    _one_line(o.detail, "ignores HTTP Range requests", "--whole-zip")
    assert not (world.root / REHOST).exists() or not any((world.root / REHOST).iterdir())
    # auto moves on to the next source that answers, saying why
    o = _one(world.prepare("cifar-10"), "cifar-10")
    assert o.status == "downloaded" and o.source.startswith("clip-benchmark") and "ignores HTTP Range" in o.detail
    # --whole-zip: the whole zip, verified, then the member read from it
    o = _one(world.prepare("dtd", source="elevater-rehost", whole_zip=True), "dtd")
    assert o.status == "downloaded", o.detail
    assert (world.root / REHOST / "ELEVATER_all.zip").read_bytes() == world.zip_path.read_bytes()


class _SilentHub:
    """Accepts connections and reads nothing back, never answers (a stalled mirror); counts the connections."""

    def __init__(self):
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.conns: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)  # kept open, never answered

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_stalled_hub_fails_in_one_line_and_is_not_asked_again(world, monkeypatch):
    import threading

    silent = _SilentHub()
    monkeypatch.setenv("HF_ENDPOINT", silent.url)
    done: list = []
    opts = PrepareOptions(storage_url=CLOSED, source="clip-benchmark",
                          download=DownloadOptions(tries=1, read_timeout_s=0.5, connect_timeout_s=0.5))
    caller = threading.Thread(target=lambda: done.append(prepare(world.root, "cifar-10,voc-2007-classification",
                                                                 opts)), daemon=True)
    caller.start()
    caller.join(timeout=120)  # a guard against a hang only
    silent.close()
    assert not caller.is_alive(), "prepare did not return: a hub call without a timeout"
    first, second = (_one(done[0], n) for n in ("cifar-10", "voc-2007-classification"))
    assert first.status == second.status == "failed"
    _one_line(first.detail, silent.url, "did not answer in time", "--timeout")
    _one_line(second.detail, "not asked", "did not answer earlier in this run")
    assert silent.connections == 1


def test_no_such_source_for_a_dataset_is_skipped(world):
    o = _one(world.prepare("hateful-memes", source="clip-benchmark"), "hateful-memes")
    assert o.status == "skipped" and "no clip-benchmark source" in o.detail and "elevater-rehost" in o.detail


@pytest.mark.slow
def test_cli_in_a_subprocess_uses_hf_endpoint(world):
    env = {**os.environ, "HF_ENDPOINT": world.hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HARNESS_SOURCES_FILE": str(sources.SOURCES_FILE)}
    code = (f"import sys; from harness.data import sources; from pathlib import Path; "
            f"sources.SOURCES_FILE = Path({str(sources.SOURCES_FILE)!r}); "
            f"from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "prepare", "--data-root", str(world.root), "--datasets",
                          "voc-2007-classification", "--source", "clip-benchmark", "--no-progress"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"clip-benchmark {VOC}@{world.hub.commit(VOC)[:8]}" in out.stdout


def test_a_hand_download_is_used_offline_and_checked_against_the_hub_online(world, monkeypatch):
    import shutil

    shutil.copytree(world.hub.repo_dir(VOC), world.root / VOC)  # what `hf download ... --local-dir` leaves
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    o = _one(world.prepare("voc-2007-classification"), "voc-2007-classification")
    assert o.status == "present" and "6 images" in o.detail and "HF_HUB_OFFLINE" in o.detail, o.detail
    assert world.hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "present" and "checked against the hub" in o.detail, o.detail
    assert not [r for r in world.hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert json.loads((world.root / VOC / RECORD_FILE).read_text())["revision"] == world.hub.commit(VOC)


def test_altered_bytes_fail_the_sha256_check(world):
    world.hub.fault(VOC, "test/0.tar", "corrupt")
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "failed"
    _one_line(o.detail, f"{VOC}/test/0.tar: sha256", world.hub.sha256(VOC, "test/0.tar")[:12], "rerun prepare")
    _nothing_final(world, VOC)
    assert not list((world.root / STAGING_DIR).rglob("0.tar*")), "the bad bytes were deleted"


def test_a_pinned_revision_is_fetched_and_an_unknown_one_is_one_line(world):
    world.write_sources(revisions={"voc-2007-classification": world.hub.commit(VOC)})
    o = _one(world.prepare("voc-2007-classification", source="clip-benchmark"), "voc-2007-classification")
    assert o.status == "downloaded" and o.source.startswith(f"clip-benchmark {VOC}@{world.hub.commit(VOC)[:8]}")
    assert all(world.hub.commit(VOC) in r.path for r in world.hub.gets(VOC, "test/0.tar"))
    world.write_sources(revisions={"cifar-10": "0" * 40})
    o = _one(world.prepare("cifar-10", source="clip-benchmark"), "cifar-10")
    assert o.status == "failed"
    _one_line(o.detail, CIFAR, "revision is not in", "HF_ENDPOINT")


@pytest.mark.slow
def test_make_prepare_passes_the_source_flags():
    out = subprocess.run(["make", "-n", "prepare", "DATA_ROOT=/tmp/d", "DATASETS=cifar-10",
                          "PREPARE_FLAGS=--source clip-benchmark --plan-only"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "-m harness prepare --data-root /tmp/d --datasets cifar-10 --source clip-benchmark --plan-only" in out.stdout


def test_auto_takes_the_toolkit_container_when_it_answers(world, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from harness.data.synthetic import make_demo_suite

    make_demo_suite(tmp_path / "container", images_per_class=1, names=("cifar-10",))
    card = get_dataset_card("cifar-10")
    n = sum(1 for line in (tmp_path / "container" / card.root_folder / card.eval_spec.index).read_text().splitlines()
            if line.strip())
    data = yaml.safe_load(card.path.read_text())
    data["splits"][card.eval_split]["num_images"] = n
    card.path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))  # the test's own card copy
    world.write_sources(**{"cifar-10": n})

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "container")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        o = _one(world.prepare("cifar-10", storage_url=f"http://127.0.0.1:{server.server_address[1]}/"), "cifar-10")
    finally:
        server.shutdown()
        server.server_close()
    assert o.status == "downloaded" and o.source == "elevater (same split)", o.detail
    assert (world.root / card.root_folder / card.eval_spec.index).is_file()
    assert not world.hub.requests, "the hub was not asked"


def test_a_server_error_is_retried_then_named(world):
    world.hub.fault(VOC, "test/1.tar", "status", status=503, times=1)
    opts = PrepareOptions(storage_url=CLOSED, source="clip-benchmark",
                          download=DownloadOptions(tries=2, backoff_s=0.01, read_timeout_s=10))
    (o,) = prepare(world.root, "voc-2007-classification", opts).outcomes
    assert o.status == "downloaded", o.detail
    world.hub.fault(EUROSAT, "test/0.tar", "status", status=503)
    o = _one(world.prepare("eurosat_clip", source="clip-benchmark"), "eurosat_clip")
    assert o.status == "failed"
    _one_line(o.detail, f"{EUROSAT}/test/0.tar", "HTTP 503", "rerun")
    _nothing_final(world, EUROSAT)


def test_a_damaged_rehost_zip_is_one_line_and_nothing_is_kept(world):
    world.hub.fault(REHOST, "ELEVATER_all.zip", "corrupt")
    o = _one(world.prepare("dtd", source="elevater-rehost"), "dtd")
    assert o.status == "failed"
    _one_line(o.detail, f"{REHOST}/ELEVATER_all.zip", "not a readable zip")
    assert not (world.root / REHOST).exists() or not any((world.root / REHOST).iterdir())


@pytest.mark.slow
def test_prepare_then_eval_all_then_report_name_the_source(world, tmp_path):
    """The main job in miniature: prepare (auto) -> eval -> report; each result names its source and commit, the
    different split is marked and left out of the average."""
    from harness.run.runner import EvalOptions, evaluate
    from harness.store.results import iter_results

    names = ["cifar-10", "eurosat_clip", "voc-2007-classification"]
    assert not world.prepare(",".join(names)).failed
    results = tmp_path / "results"
    evaluate("tiny_demo_clip", names, world.root, EvalOptions(results_root=results, progress=False, workers=0))
    got = {r["dataset"]["card"]: r for r in iter_results(results)}
    assert set(got) == set(names)
    assert got["cifar-10"]["data_source"]["kind"] == "elevater-rehost"
    assert got["cifar-10"]["data_source"]["revision"] == world.hub.commit(REHOST)
    eurosat = dict(got["eurosat_clip"]["data_source"])
    assert eurosat.pop("label_map")["rule"] == "by-name"
    assert eurosat == {"kind": "clip-benchmark", "repo": EUROSAT, "revision": world.hub.commit(EUROSAT),
                       "split": "test", "fidelity": "different split", "revision_verified": True}
    assert got["eurosat_clip"]["n_images"] == 9
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"), "--name", "r"]) == 0
    md = (tmp_path / "rep" / "r" / "README.md").read_text()
    assert f"{EUROSAT}@{world.hub.commit(EUROSAT)[:8]}" in md and f"{got['eurosat_clip']['score']:.2f} †" in md
    avg = (got["cifar-10"]["score"] + got["voc-2007-classification"]["score"]) / 2
    assert f"{avg:.2f} (2/20)" in md


def test_range_file_reads_a_zip64_zip_and_a_zip_stored_inside_it(loopback_hub):
    """ELEVATER_all.zip is 37 GB: zip64 records. zipfile reads them through RangeFile/SubFile as from a local file."""
    from harness.data.prepare.hub import HubClient
    from harness.data.prepare.rehost import _data_offset
    from harness.data.prepare.remote_zip import RangeFile, SubFile

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            with zf.open(f"x/test/{i}/img.jpg", "w", force_zip64=True) as f:
                f.write(bytes([i]) * (3000 + i))
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", compression=zipfile.ZIP_STORED) as zf:
        with zf.open("ELEVATER_all/x.zip", "w", force_zip64=True) as f:
            f.write(inner.getvalue())
        zf.writestr("ELEVATER_all/y.zip", b"y" * 5000)
    loopback_hub.add_file("o/z", "all.zip", outer.getvalue())
    client = HubClient()
    snap = client.snapshot("o/z")
    rf = RangeFile(client.url(snap, "all.zip"), snap.files["all.zip"].size, client.headers(), "o/z/all.zip",
                   min_fetch=16)
    with zipfile.ZipFile(rf) as oz:
        info = oz.getinfo("ELEVATER_all/x.zip")
        start = _data_offset(rf, info)
        with zipfile.ZipFile(SubFile(rf, start, info.compress_size)) as iz:
            assert [iz.read(f"x/test/{i}/img.jpg") for i in range(5)] == [bytes([i]) * (3000 + i) for i in range(5)]
    assert rf.transferred < len(outer.getvalue()) - 5000 + 200  # y.zip's bytes never travelled


def test_progress_bars_count_every_byte_on_the_overall_bar(world):
    from harness.data.prepare.sources_run import SourcePreparer

    class Overall:  # what prepare's tqdm overall bar is asked to do
        n = 0

        def update(self, k):
            Overall.n += k

        def set_description(self, desc):
            pass

    opts = PrepareOptions(storage_url=CLOSED, source="clip-benchmark",
                          download=DownloadOptions(tries=1, backoff_s=0.01, read_timeout_s=10, progress=True))
    o = SourcePreparer(world.root, opts, CLOSED, overall=Overall()).prepare(get_dataset_card("voc-2007-classification"))
    assert o.status == "downloaded" and Overall.n == o.bytes_received == world.hub.sent(VOC) > 0
