"""Reachability is decided as huggingface_hub decides it: offline flag, HF_ENDPOINT mirrors, proxy variables."""
from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
from huggingface_hub.utils import close_session

from harness import network


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Recorder.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def online(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_a_mirror_named_by_hf_endpoint_is_asked(server, online):
    online.setenv("HF_ENDPOINT", server)
    assert network.hub_endpoint() == server
    assert network.hub_reachable() is True
    assert _Recorder.seen == ["/"]


def test_offline_flag_answers_at_once_without_a_request(server, online):
    online.setenv("HF_ENDPOINT", server)
    for value in ("1", "on", "YES", "true"):
        online.setenv("HF_HUB_OFFLINE", value)
        assert network.hub_reachable() is False
    assert _Recorder.seen == []


def test_an_unreachable_endpoint_fails_fast(online):
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    assert network.hub_reachable(timeout=2.0) is False
    assert time.perf_counter() - start < 2.0


def test_proxy_variables_are_honoured(server, online):
    """The endpoint's host does not resolve; the request still succeeds because it goes through the proxy."""
    online.setenv("HF_ENDPOINT", "http://hub.mirror.invalid")
    online.setenv("HTTP_PROXY", server)
    close_session()  # proxies are read when the HTTP session is made, as in a process started with HTTP_PROXY set
    try:
        assert network.hub_reachable() is True
    finally:
        online.delenv("HTTP_PROXY")
        close_session()
    assert _Recorder.seen == ["http://hub.mirror.invalid/"]  # an absolute URL: a proxy request


def test_wandb_goes_offline_only_when_its_server_is_unreachable(server, online):
    online.delenv("WANDB_MODE", raising=False)
    online.setenv("WANDB_BASE_URL", server)
    assert network.wandb_offline_if_unreachable() is False and "WANDB_MODE" not in __import__("os").environ
    online.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    assert network.wandb_offline_if_unreachable() is True
    assert __import__("os").environ["WANDB_MODE"] == "offline"
