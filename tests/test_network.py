"""Reachability is decided as huggingface_hub decides it: offline flag, HF_ENDPOINT mirrors, proxy variables."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest
from huggingface_hub.utils import close_session

from harness.core import network


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


def test_a_refused_connection_is_unreachable(online):
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert network.hub_reachable(timeout=2.0) is False


class _Silent:
    """A server that accepts a connection, reads the request and never answers: what a filtered or hung host looks
    like. It records the request it read and whether the client then gave up on it (closed its end)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.request = b""
        self.read_request = threading.Event()
        self.abandoned = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:  # closed before any client came
            return
        with conn:
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.request += chunk
            self.read_request.set()
            try:
                while conn.recv(4096):  # no answer; wait for the client to close its end
                    pass
            except OSError:  # reset by the client: abandoned as well
                pass
            self.abandoned.set()

    def close(self):
        self.sock.close()


@pytest.fixture
def silent():
    server = _Silent()
    yield server
    server.close()


def test_a_silent_endpoint_is_unreachable_once_the_timeout_passes(silent, online):
    """The request reaches a host that never answers: hub_reachable gives up after its timeout, closes the
    connection and answers False (not an exception, not a hang)."""
    online.setenv("HF_ENDPOINT", silent.url)
    close_session()  # a fresh HTTP session: no pooled connection from another test
    answer: list[bool] = []
    caller = threading.Thread(target=lambda: answer.append(network.hub_reachable(timeout=0.5)), daemon=True)
    caller.start()
    caller.join(timeout=60)  # a guard against a hang only, far above the 0.5 s asked for
    assert not caller.is_alive(), "hub_reachable did not return: the timeout was not applied"
    assert answer == [False]
    assert silent.read_request.is_set() and silent.request.startswith(b"HEAD / HTTP/1.1\r\n")
    assert silent.abandoned.wait(timeout=10), "the client left the unanswered request open"


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
