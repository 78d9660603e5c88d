"""Issue 19, rows 5 and 8: hostile inputs cost one line, never a hang, a traceback or gigabytes of memory.

JSON and YAML are read through harness.core.safe_read: regular files only (a FIFO, /dev/zero refused by type without
blocking), a size limit per kind checked before reading (a 2 GB sparse predictions file), nesting measured before
parsing (400 KB of '['). ``prepare`` fails a server that drips bytes (--min-rate over each --timeout window) and says
so when the storage answers with a web page. Servers are on 127.0.0.1 only."""
from __future__ import annotations

import os
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.cards import get_dataset_card, load_dataset_card
from harness.cli import main
from harness.core.errors import HarnessError
from harness.core.hashing import file_sha256, memo_path
from harness.core.safe_read import (GiB, KINDS, MAX_DEPTH, MiB, RefusedFile, json_depth, load_json, load_yaml,
                                    read_bounded_bytes)

pytestmark = pytest.mark.timeout(120)

CIFAR = "cifar-10"


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _without_blocking(fifo: Path, call, seconds: float = 10.0):
    """``call()`` in a thread; if it is still blocked after ``seconds`` (opening the FIFO for reading waits for a
    writer), a writer is opened and closed to release it, and the test fails."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # gives the blocked reader an end of file
        except OSError:
            pass
        thread.join(seconds)
        pytest.fail(f"reading {fifo} blocked")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# ----------------------------------------------------------------------------------------------------------------------
# JSON and YAML readers


def test_json_depth_counts_brackets_outside_strings_only():
    assert json_depth("[]") == 1
    assert json_depth('{"a": [[1, 2], [3]]}') == 3
    assert json_depth('{"a": "[[[[{{{{"}') == 1
    assert json_depth('{"a\\"[[[": [1]}') == 2, "an escaped quote does not end a string"
    assert json_depth('["\\\\", [[]]]') == 3, "an escaped backslash before a closing quote ends the string"
    assert json_depth("[" * 400_000) == 400_000
    assert json_depth("[" * (3 * MiB), stop_at=MAX_DEPTH) > MAX_DEPTH


def test_import_predictions_of_nested_brackets_is_one_line(tmp_path, capsys):
    path = tmp_path / "cifar-10.json"
    path.write_text("[" * 400_000)
    rc = main(["import-predictions", str(path), "--dataset", CIFAR, "--data-root", str(tmp_path),
               "--results", str(tmp_path / "r")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(path) in line and f"more than {MAX_DEPTH} levels" in line and "predictions" in line
    assert not (tmp_path / "r").exists()


def test_a_2gb_sparse_predictions_file_is_refused_by_its_size_without_reading_it(tmp_path, capsys):
    path = tmp_path / "cifar-10.json"
    with open(path, "wb") as f:
        f.truncate(2 * GiB)  # sparse: no disk used
    tracemalloc.start()
    try:
        rc = main(["import-predictions", str(path), "--dataset", CIFAR, "--data-root", str(tmp_path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert str(path) in line and "is 2 GiB" in line and "over the 1.5 GiB limit" in line
    assert peak < 64 * MiB, f"{peak / MiB:.0f} MiB allocated: the file was read"


def test_a_file_growing_past_the_limit_while_read_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b"[" + b"0," * 600 + b"0]")
    with pytest.raises(RefusedFile, match="over the 1 KiB limit"):
        read_bounded_bytes(path, "result", max_bytes=1024)


def test_toolkit_yaml_with_base_dev_zero_is_refused_by_type(tmp_path, capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    path = tmp_path / "clip_react_zero.yaml"
    path.write_text("BASE: ['/dev/zero']\nMODEL:\n  NAME: clip_react\n")
    rc = main(["eval", "--model", str(path), "--datasets", CIFAR, "--data-root", str(tmp_path),
               "--results", str(tmp_path / "r"), "--no-progress"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "/dev/zero" in line and "character device" in line and "not a regular file" in line


def test_a_fifo_as_a_card_or_an_include_is_refused_by_type_without_blocking(tmp_path):
    fifo = tmp_path / "fifo-card.yaml"
    os.mkfifo(fifo)
    with pytest.raises(HarnessError, match="FIFO"):
        _without_blocking(fifo, lambda: load_dataset_card(fifo))
    card = tmp_path / "includes-fifo.yaml"
    card.write_text(f"include: {fifo.name}\nname: includes-fifo\n")
    with pytest.raises(HarnessError, match=f"{fifo}: is a FIFO"):
        _without_blocking(fifo, lambda: load_dataset_card(card))


def test_a_fifo_as_a_toolkit_base_is_refused_without_blocking(tmp_path):
    from harness.models.elevater_yaml import resolve_model_card

    fifo = tmp_path / "base.yaml"
    os.mkfifo(fifo)
    path = tmp_path / "clip_react_fifo.yaml"
    path.write_text("BASE: ['base.yaml']\nMODEL:\n  NAME: clip_react\n")
    with pytest.raises(HarnessError, match="FIFO"):
        _without_blocking(fifo, lambda: resolve_model_card(str(path)))


def test_deep_or_exploding_yaml_cards_are_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: deep\nx: " + "[" * 100_000 + "\n")
    with pytest.raises(HarnessError, match="nests more deeply"):
        load_dataset_card(deep)
    nested = tmp_path / "nested.yaml"
    nested.write_text("name: nested\nx: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    with pytest.raises(HarnessError, match=f"over the limit of {MAX_DEPTH}"):
        load_dataset_card(nested)
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(RefusedFile, match="expands to more than"):
        load_yaml(bomb, "card")


def test_a_card_over_its_size_limit_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(KINDS["card"].max_bytes + 1)
    with pytest.raises(HarnessError, match="over the 4 MiB limit for a model or dataset card"):
        load_dataset_card(big)


def test_a_huge_result_file_is_unreadable_and_recomputed_not_read(tmp_path):
    from harness.store.results import ResultFileError, finished_result, read_result

    path = tmp_path / "cifar-10.json"
    with open(path, "wb") as f:
        f.truncate(KINDS["result"].max_bytes + 1)
    with pytest.raises(ResultFileError, match="over the 64 MiB limit"):
        read_result(path)
    assert finished_result(path) is None
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 400_000)
    with pytest.raises(ResultFileError, match="levels deep"):
        read_result(deep)
    with pytest.raises(RefusedFile):
        load_json(deep, "cache meta")


def test_a_fifo_weights_file_or_memo_never_blocks_hashing(tmp_path):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    with pytest.raises(HarnessError, match="not a regular file"):
        _without_blocking(fifo, lambda: file_sha256(fifo))
    data = tmp_path / "data.bin"
    data.write_bytes(b"d" * 1000)
    memo = memo_path(data)
    memo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(memo)  # a memo that is a FIFO: ignored, the file is hashed
    import hashlib

    assert _without_blocking(memo, lambda: file_sha256(data)) == hashlib.sha256(b"d" * 1000).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# prepare against a misbehaving storage on 127.0.0.1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if server.mode == "drip":  # 1 byte every 0.2 s, at most 200 bytes, until the client leaves
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            for _ in range(200):
                if server.stop.is_set():
                    break
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    break
                time.sleep(0.2)
            self.close_connection = True
            return
        body, content_type = server.page
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client leaving mid-body is expected here
        pass


@pytest.fixture
def storage():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.mode, httpd.page, httpd.requests, httpd.stop = "page", (b"", "text/plain"), [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/container?sig=SECRET"
    try:
        yield httpd
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def _prepare(storage, root: Path, *extra: str) -> int:
    return main(["prepare", "--data-root", str(root), "--datasets", CIFAR, "--storage-url", storage.url,
                 "--no-progress", "--tries", "1", *extra])


def _failed_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip().startswith("failed")]
    assert len(lines) == 1, out
    return lines[0]


def test_a_dripping_server_fails_with_one_line_naming_the_file_and_the_rate(storage, tmp_path, capsys):
    storage.mode = "drip"
    started = time.monotonic()
    rc = _prepare(storage, tmp_path, "--timeout", "1", "--min-rate", "100")
    elapsed = time.monotonic() - started
    line = _failed_line(capsys.readouterr().out)
    assert rc == 1
    index = get_dataset_card(CIFAR).eval_spec.index
    assert f"/{index}:" in line and "B/s" in line and "below --min-rate 100 B/s" in line, line
    assert "SECRET" not in line
    assert elapsed < 60, "the drip was not cut off"


@pytest.mark.parametrize("body,content_type,evidence", [
    (b"<!DOCTYPE html><html><body>Sign in to continue</body></html>", "text/html; charset=utf-8",
     "body starts with <!DOCTYPE html"),
    (b"\n  <html><head><title>Wi-Fi login</title></head></html>", "application/octet-stream",
     "body starts with <html"),
    (b"<p>Accept the terms to get online</p>", "text/html", "Content-Type text/html"),
])
def test_a_web_page_instead_of_the_index_is_said_to_be_one(storage, tmp_path, capsys, body, content_type, evidence):
    storage.page = (body, content_type)
    rc = _prepare(storage, tmp_path)
    line = _failed_line(capsys.readouterr().out)
    assert rc == 1
    assert "the storage answered with a web page" in line and evidence in line and "captive portal" in line, line
    assert "line" not in line.split("web page")[0], "reported as a bad index line"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "nothing of the page is kept"


def test_a_web_page_answering_a_resume_leaves_the_partial_download_alone(storage, tmp_path, capsys):
    card = get_dataset_card(CIFAR)
    folder = tmp_path / card.root_folder
    folder.mkdir(parents=True)
    zip_name = card.eval_spec.files[0]
    (folder / card.eval_spec.index).write_text(f"{zip_name}@val/00000.jpg 0\n")  # present and valid: not fetched
    part = folder / f"{zip_name}.part"
    part.write_bytes(b"PK\x03\x04" + b"partial zip bytes" * 100)
    before = part.read_bytes()
    storage.page = (b"<!doctype html><title>portal</title>", "text/html")
    rc = _prepare(storage, tmp_path)
    line = _failed_line(capsys.readouterr().out)
    assert rc == 1 and f"/{zip_name}:" in line and "web page" in line
    assert storage.requests[-1][1] == f"bytes={len(before)}-"
    assert part.read_bytes() == before, "the partial download was overwritten by the page"
