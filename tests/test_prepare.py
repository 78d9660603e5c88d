"""`python -m harness prepare` against a real HTTP server on 127.0.0.1 serving a generated container in the toolkit's
layout (<root_folder>/<files>): download + open + eval-all, resume after a dropped connection and after SIGKILL,
restart when ranges are ignored, corrupt zips, 403/409/offline one-line messages, no re-download of valid files, the
image-count check, ImageNet under `all`. Nothing here touches the internet."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from harness.cards import dataset_card_names, get_dataset_card
from harness.cli import main
from harness.data.prepare import (DEFAULT_STORAGE_URL, STORAGE_ENV, DownloadOptions, PrepareOptions, file_url, prepare,
                             public_url, resolve_storage_url)

from conftest import REPO

SUBSET = ("cifar-10", "hateful-memes", "voc-2007-classification")  # iris + labels.txt, coco (PNG), multilabel
SERVED = SUBSET + ("imagenet-1k",)
SAS = "sv=2022-11-02&sr=c&sig=SECRET%2Fsig%3D"


# ---------------------------------------------------------------------------------------------------- the storage


@dataclass
class Storage:
    """What the server serves and how it misbehaves; every request is logged as (path, Range header, query)."""
    root: Path
    log: list[tuple[str, str | None, str]] = field(default_factory=list)
    refuse: int | None = None  # answer every request with this status
    ranges: bool = True  # False: ignore Range headers (200 with the whole file)
    replace: dict[str, bytes] = field(default_factory=dict)  # path -> bytes served instead of the file's
    drop: dict[str, list[int]] = field(default_factory=dict)  # path -> [send this many bytes then close, times left]
    hold: threading.Event | None = None  # when set up, a dropping response waits for it before closing

    def requests_for(self, name: str) -> list[tuple[str, str | None, str]]:
        return [r for r in self.log if r[0].endswith("/" + name)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        st: Storage = self.server.storage
        parts = urlsplit(self.path)
        rel = unquote(parts.path).removeprefix("/container/")
        st.log.append((rel, self.headers.get("Range"), parts.query))
        if st.refuse:
            return self._send(st.refuse, b"<Error><Code>AuthenticationFailed</Code></Error>")
        data = st.replace.get(rel)
        if data is None:
            path = st.root / rel
            if not path.is_file():
                return self._send(404, b"<Error><Code>BlobNotFound</Code></Error>")
            data = path.read_bytes()
        start, status, extra = 0, 200, {"Accept-Ranges": "bytes"} if st.ranges else {}
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and st.ranges:
            start, status = int(m.group(1)), 206
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), "Content-Type": "application/octet-stream",
                           **extra}.items():
            self.send_header(key, value)
        self.end_headers()
        cut = st.drop.get(rel)
        if cut and cut[1] > 0:
            cut[1] -= 1
            self.wfile.write(body[:cut[0]])
            self.wfile.flush()
            if st.hold is not None:
                st.hold.wait(30)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client closing its keep-alive socket is normal
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> Path:
    """The generated datasets in the toolkit's container layout, and copies of their cards whose num_images is
    what was generated (the demo sets are smaller than the real ones)."""
    from harness.data.synthetic import make_demo_suite

    base = tmp_path_factory.mktemp("storage")
    make_demo_suite(base / "container", images_per_class=2, names=SERVED)
    cards = base / "cards"
    cards.mkdir()
    for name in SERVED:
        _write_card(cards, name, _count(base / "container", name))
    return base


def _count(container: Path, name: str) -> int:
    import json

    card = get_dataset_card(name)
    index = container / card.root_folder / card.eval_spec.index
    if card.format == "coco":
        return len(json.loads(index.read_text())["images"])
    return sum(1 for line in index.read_text().splitlines() if line.strip())


def _write_card(folder: Path, name: str, num_images: int) -> None:
    card = get_dataset_card(name)
    data = yaml.safe_load(card.path.read_text())
    data["splits"][card.eval_split]["num_images"] = num_images
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@pytest.fixture(scope="module")
def server(container):
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.storage = Storage(container / "container")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def storage(server, container, monkeypatch) -> Storage:
    """A fresh request log and behaviour for each test; the generated cards searched first."""
    server.storage = Storage(container / "container")
    monkeypatch.setenv("HARNESS_DATASET_CARDS", str(container / "cards"))
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    server.storage.url = f"http://127.0.0.1:{server.server_address[1]}/container?{SAS}"
    return server.storage


def _opts(storage: Storage, tries: int = 1, progress: bool = False) -> PrepareOptions:
    return PrepareOptions(storage_url=storage.url, download=DownloadOptions(tries=tries, backoff_s=0.01,
                                                                            read_timeout_s=10, progress=progress))


def _served(storage: Storage, name: str, file: str) -> bytes:
    return (storage.root / get_dataset_card(name).root_folder / file).read_bytes()


def _folder(root: Path, name: str) -> Path:
    return root / get_dataset_card(name).root_folder


# ---------------------------------------------------------------------------------------------------- tests


def test_storage_url_default_precedence_and_file_urls(monkeypatch):
    assert DEFAULT_STORAGE_URL.startswith("https://cvinthewildeus.blob.core.windows.net/datasets?")
    assert "sig=" in DEFAULT_STORAGE_URL
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_storage_url(None) == (DEFAULT_STORAGE_URL, "default")
    monkeypatch.setenv(STORAGE_ENV, "https://mirror.example/ds?sig=e")
    assert resolve_storage_url(None) == ("https://mirror.example/ds?sig=e", STORAGE_ENV)
    assert resolve_storage_url("http://flag.example/c/") == ("http://flag.example/c/", "--storage-url")
    url = file_url("https://a.example/datasets?sp=r&sig=X%3D", "classification/cifar_10_20211007", "val.zip")
    assert url == "https://a.example/datasets/classification/cifar_10_20211007/val.zip?sp=r&sig=X%3D"
    assert public_url(url) == "https://a.example/datasets/classification/cifar_10_20211007/val.zip"
    assert main(["prepare", "--data-root", "/tmp/x", "--storage-url", "ftp://nope/c", "--datasets", "dtd"]) == 2


def test_prepare_a_subset_then_open_and_eval_all(storage, tmp_path, capsys):
    from harness.data.testsets import open_eval_data

    root = tmp_path / "data"
    summary = prepare(root, ",".join(SUBSET), _opts(storage))
    assert [o.status for o in summary.outcomes] == ["downloaded"] * 3, summary.lines()
    assert {r[2] for r in storage.log} == {SAS}, "the SAS query string goes on every file's URL"
    for name in SUBSET:
        card = get_dataset_card(name)
        for file in [card.eval_spec.index, *card.eval_spec.files] + ([card.labelmap] if card.labelmap else []):
            assert (_folder(root, name) / file).read_bytes() == _served(storage, name, file)
        assert not list(_folder(root, name).glob("*.part"))
        assert len(open_eval_data(card, root)) == card.eval_spec.num_images
    assert "SECRET" not in "\n".join(summary.lines())

    # everything already present and valid: nothing requested again
    n = len(storage.log)
    again = prepare(root, ",".join(SUBSET), _opts(storage))
    assert [o.status for o in again.outcomes] == ["present"] * 3 and len(storage.log) == n

    # the harness evaluates what was prepared
    rc = main(["eval-all", "--model", "tiny_demo_clip", "--data-root", str(root), "--datasets", ",".join(SUBSET),
               "--results", str(tmp_path / "results"), "--workers", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 evaluated" in out


def test_dropped_connection_resumes_in_the_next_run_with_a_range_request(storage, tmp_path):
    root = tmp_path / "data"
    storage.drop["classification/cifar_10_20211007/val.zip"] = [5000, 1]
    first = prepare(root, "cifar-10", _opts(storage, tries=1))
    (o,) = first.outcomes
    assert o.status == "failed" and "val.zip" in o.detail and "val.zip.part" in o.detail and "resumes" in o.detail
    folder = _folder(root, "cifar-10")
    assert (folder / "val.zip.part").stat().st_size == 5000
    assert not [p for p in folder.iterdir() if not p.name.endswith(".part")], "nothing under a final name"
    second = prepare(root, "cifar-10", _opts(storage, tries=1))
    assert second.outcomes[0].status == "downloaded" and "val.zip (resumed)" in second.outcomes[0].detail
    assert storage.requests_for("val.zip")[-1][1] == "bytes=5000-"
    assert (folder / "val.zip").read_bytes() == _served(storage, "cifar-10", "val.zip")


def test_a_retry_within_the_run_resumes_too(storage, tmp_path, capsys):
    storage.drop["classification/hateful_memes_20211014/img.zip"] = [3000, 2]
    summary = prepare(tmp_path, "hateful-memes", _opts(storage, tries=4, progress=True))
    assert summary.outcomes[0].status == "downloaded"
    assert "img.zip" in capsys.readouterr().err, "a byte progress bar per file"
    assert [r[1] for r in storage.requests_for("img.zip")] == [None, "bytes=3000-", "bytes=6000-"]


def test_a_server_ignoring_ranges_restarts_the_file_cleanly(storage, tmp_path):
    storage.ranges = False
    folder = _folder(tmp_path, "cifar-10")
    folder.mkdir(parents=True)
    (folder / "val.zip.part").write_bytes(b"stale bytes from another attempt" * 10)
    summary = prepare(tmp_path, "cifar-10", _opts(storage))
    assert summary.outcomes[0].status == "downloaded"
    assert storage.requests_for("val.zip")[0][1] == "bytes=320-"
    assert (folder / "val.zip").read_bytes() == _served(storage, "cifar-10", "val.zip")


@pytest.mark.slow
def test_sigkilled_prepare_resumes_and_never_leaves_a_final_name(storage, tmp_path):
    root = tmp_path / "data"
    folder = _folder(root, "cifar-10")
    zip_bytes = _served(storage, "cifar-10", "val.zip")
    assert len(zip_bytes) > 8000
    storage.drop["classification/cifar_10_20211007/val.zip"] = [8000, 1]
    storage.hold = threading.Event()
    cmd = [sys.executable, "-m", "harness", "prepare", "--data-root", str(root), "--datasets", "cifar-10",
           "--storage-url", storage.url, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part = folder / "val.zip.part"
    try:
        deadline = time.time() + 60
        while not (part.exists() and part.stat().st_size == 8000):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        storage.hold.set()
        if proc.poll() is None:
            proc.kill()
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt.part", "val.zip.part"]
    assert main(["prepare", "--data-root", str(root), "--datasets", "cifar-10", "--storage-url", storage.url,
                 "--no-progress"]) == 0
    assert storage.requests_for("val.zip")[-1][1] == "bytes=8000-"
    assert (folder / "val.zip").read_bytes() == zip_bytes


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_corrupt_zip_fails_naming_dataset_and_file(storage, tmp_path, damage):
    good = _served(storage, "cifar-10", "val.zip")
    bad = bytearray(good)
    if damage == "flipped":
        bad[200:210] = bytes(b ^ 0xFF for b in bad[200:210])  # inside the first entry's data: a CRC mismatch
    else:
        bad = bad[: len(bad) // 2]  # no central directory
    storage.replace["classification/cifar_10_20211007/val.zip"] = bytes(bad)
    (o,) = prepare(tmp_path, "cifar-10", _opts(storage)).outcomes
    assert o.status == "failed" and o.name == "cifar-10" and "val.zip" in o.detail and "\n" not in o.detail
    assert "CRC" in o.detail if damage == "flipped" else "not a readable zip" in o.detail
    folder = _folder(tmp_path, "cifar-10")
    assert not (folder / "val.zip").exists() and not (folder / "val.zip.part").exists()
    assert not (folder / "test.txt").exists()


@pytest.mark.parametrize("status,meaning", [(403, "SAS signature may have expired"), (409, "public access")])
def test_refused_gives_one_line_without_the_signature(storage, tmp_path, capsys, status, meaning):
    storage.refuse = status
    rc = main(["prepare", "--data-root", str(tmp_path), "--datasets", "cifar-10,dtd", "--storage-url", storage.url,
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    lines = [line for line in out.splitlines() if line.strip().startswith("failed")]
    assert len(lines) == 2
    port = storage.url.split(":")[2].split("/")[0]
    expected_url = f"http://127.0.0.1:{port}/container/classification/cifar_10_20211007/test.txt"
    assert f"cifar-10: {expected_url}: {status}" in lines[0]
    assert meaning in lines[0] and "--storage-url" in lines[0] and STORAGE_ENV in lines[0]
    assert "SECRET" not in out and "sig=" not in out
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert len(storage.log) == 2, "a refusal is not retried"


def test_offline_is_one_line_per_dataset_and_never_hangs(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/datasets?sig=SECRET"
    started = time.time()
    rc = main(["prepare", "--data-root", str(tmp_path), "--datasets", "dtd,mnist", "--storage-url", url,
               "--tries", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and time.time() - started < 20
    lines = [line for line in out.splitlines() if line.strip().startswith("failed")]
    assert len(lines) == 2 and "SECRET" not in out
    assert f"http://127.0.0.1:{port}/datasets/classification/dtd_20211007/test.txt: no connection" in lines[0]
    assert "connection refused" in lines[0] and STORAGE_ENV in lines[0]


def test_a_present_but_damaged_file_is_replaced_and_valid_ones_are_not_fetched(storage, tmp_path):
    prepare(tmp_path, "cifar-10", _opts(storage))
    folder = _folder(tmp_path, "cifar-10")
    good = (folder / "val.zip").read_bytes()
    (folder / "val.zip").write_bytes(good[:1000])  # what a killed naive downloader leaves
    storage.log.clear()
    (o,) = prepare(tmp_path, "cifar-10", _opts(storage)).outcomes
    assert o.status == "downloaded" and [r[0].rsplit("/", 1)[1] for r in storage.log] == ["val.zip"]
    assert (folder / "val.zip").read_bytes() == good


def test_image_count_mismatch_names_both_numbers_then_a_fixed_card_needs_no_download(storage, tmp_path, container):
    cards = tmp_path / "cards"
    cards.mkdir()
    real = _count(container / "container", "cifar-10")
    _write_card(cards, "cifar-10", real + 7)
    os.environ["HARNESS_DATASET_CARDS"] = f"{cards}{os.pathsep}{container / 'cards'}"  # monkeypatch restores it
    root = tmp_path / "data"
    (o,) = prepare(root, "cifar-10", _opts(storage)).outcomes
    assert o.status == "failed" and f"lists {real} images but the card expects {real + 7}" in o.detail
    folder = _folder(root, "cifar-10")
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt.part", "test.txt.part", "val.zip.part"]
    _write_card(cards, "cifar-10", real)
    storage.log.clear()
    (o,) = prepare(root, "cifar-10", _opts(storage)).outcomes
    assert o.status == "downloaded" and (folder / "val.zip").is_file()
    assert all(r[1] for r in storage.log), "only Range requests (answered 416: complete), no body again"


def test_imagenet_is_skipped_under_all_and_downloaded_only_by_name(storage, tmp_path):
    summary = prepare(tmp_path, "all", _opts(storage))
    imagenet = [o for o in summary.outcomes if o.name == "imagenet-1k"]
    assert len(imagenet) == 1 and imagenet[0].status == "skipped"
    assert "--datasets imagenet-1k" in imagenet[0].detail and "DATA_ROOT/imagenet/val" in imagenet[0].detail
    assert not storage.requests_for("val_images.zip") and not storage.requests_for("val.json")
    statuses = {o.name: o.status for o in summary.outcomes}
    assert all(statuses[n] == "downloaded" for n in SUBSET) and sorted(statuses) == sorted(dataset_card_names())
    assert "404" in next(o.detail for o in summary.outcomes if o.name == "dtd")
    (o,) = prepare(tmp_path, "imagenet-1k", _opts(storage)).outcomes
    assert o.status == "downloaded" and storage.requests_for("val_images.zip")
