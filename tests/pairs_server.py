"""A loopback image server for the pairs tests: the web as img2dataset meets it, with a known truth per URL.

Every URL's kind decides its answer (and the cause class ``training.pairs stats`` must report for it):

- ``ok``: a JPEG (64x48) -> success; ``big``: a 600x500 JPEG (above 384 px) -> success, resized to fit 384;
- ``redirect``: 302 to an ``ok`` image -> success;
- ``404``/``403``/``410``: that status -> ``http_<code>``;
- ``stall``: sends nothing for longer than the client's timeout -> ``timeout``;
- ``text``: an HTML body -> ``decode`` (not an image); ``corrupt``: a JPEG header followed by garbage -> ``decode``;
- ``flaky``: 503 until :meth:`ImageServer.heal` is called, then a JPEG -> ``http_503``, after healing success;
- ``tls``: an ``https://`` URL to this plain HTTP server -> ``tls``; ``dns``: a host under ``.invalid`` -> ``dns``;
- ``refused``: a closed port -> ``connection``.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

EXPECTED = {"ok": "success", "big": "success", "redirect": "success", "404": "http_404", "403": "http_403",
            "410": "http_410", "stall": "timeout", "text": "decode", "corrupt": "decode", "flaky": "http_503",
            "tls": "tls", "dns": "dns", "refused": "connection"}
HEALED = dict(EXPECTED, flaky="success")
BIG_SIZE = (600, 500)


def jpeg(index: int, size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(index)
    base = rng.integers(0, 255, size=3)
    arr = np.clip(base[None, None, :] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@dataclass(frozen=True)
class Row:
    url: str
    caption: str
    kind: str


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a stall past its timeout)
            pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = self.path.strip("/").split("/")
        kind, index = parts[0], int(parts[1].split(".")[0]) if len(parts) > 1 else 0
        owner = self.server.owner
        with owner.lock:
            owner.hits[kind] = owner.hits.get(kind, 0) + 1
            owner.path_hits[self.path] = owner.path_hits.get(self.path, 0) + 1
        if kind in ("ok", "flaky") and (kind == "ok" or owner.healed.is_set()):
            return self._send(200, jpeg(index), "image/jpeg")
        if kind == "flaky":
            return self._send(503, b"busy", "text/plain")
        if kind == "big":
            return self._send(200, jpeg(index, BIG_SIZE), "image/jpeg")
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/ok/{index}.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if kind in ("404", "403", "410"):
            return self._send(int(kind), b"no", "text/plain")
        if kind == "stall":
            owner.stop.wait(owner.stall_seconds)
            return self._send(200, jpeg(index), "image/jpeg")
        if kind == "text":
            return self._send(200, b"<html><body>not an image</body></html>", "text/html")
        if kind == "corrupt":
            return self._send(200, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8, "image/jpeg")
        return self._send(404, b"unknown", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "ImageServer"


class ImageServer:
    """Context manager: the server on 127.0.0.1 and the rows (URL, TEXT, kind) of a generated pairs parquet."""

    def __init__(self, stall_seconds: float = 4.0):
        self.stall_seconds = stall_seconds
        self.healed = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.path_hits: dict[str, int] = {}  # GETs per request path (/<kind>/<index>.jpg)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heal(self) -> None:
        self.healed.set()

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()

    def url_for(self, kind: str, index: int) -> str:
        if kind == "tls":
            return f"https://127.0.0.1:{self.port}/ok/{index}.jpg"
        if kind == "dns":
            return f"http://pairs-{index}.invalid/ok/{index}.jpg"
        if kind == "refused":
            return f"http://127.0.0.1:9/ok/{index}.jpg"  # discard port: nothing listens on loopback
        return f"{self.url}/{kind}/{index}.jpg"

    def rows(self, kinds: list[str]) -> list[Row]:
        return [Row(self.url_for(kind, i), f"a photo number {i} of kind {kind}", kind) for i, kind in enumerate(kinds)]


def write_parquet(path, rows: list[Row], extra: bool = False) -> None:
    """The pairs parquet (URL, TEXT; with ``extra`` also the retrieval columns H4's query writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"URL": [r.url for r in rows], "TEXT": [r.caption for r in rows]}
    if extra:
        cols.update({"class": [i % 3 for i in range(len(rows))], "score": [0.5] * len(rows),
                     "query": ["q"] * len(rows), "key": [f"k{i}" for i in range(len(rows))]})
    pq.write_table(pa.table(cols), path)
