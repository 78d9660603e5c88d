"""A loopback HTTP server answering a corpus's URLs with its images (read from its shards): the offline demo
downloads retrieved pairs with the real img2dataset from it, as it would from the web. URL paths are matched; an
unknown path is a 404."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from retrieval.corpus import expand_shards, read_shard


class _Handler(BaseHTTPRequestHandler):
    server: "CorpusServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        blob = self.server.images.get(urlsplit(self.path).path)
        if blob is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def log_message(self, *args) -> None:
        pass


class CorpusServer(ThreadingHTTPServer):
    """``with CorpusServer(port=0) as server: server.load(pattern) ... server.url``; serves in a daemon thread.
    The port is bound first, so a corpus can be written with ``server.url`` in its URLs, then loaded."""

    daemon_threads = True

    def __init__(self, shards: str | None = None, port: int = 0):
        self.images: dict[str, bytes] = {}
        super().__init__(("127.0.0.1", port), _Handler)
        if shards:
            self.load(shards)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def load(self, shards: str) -> int:
        """Answer the URLs of these shards' samples with their images; returns how many are served."""
        self.images.update({urlsplit(s.url).path: s.image for p in expand_shards(shards) for s in read_shard(p)
                            if s.url and s.image is not None})
        return len(self.images)

    def __enter__(self) -> "CorpusServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
