"""A loopback Hugging Face Hub endpoint for tests: a folder served as hub repos to the REAL huggingface_hub.

Layout served: ``root/<type>s/<org>/<name>/<path>`` (``add_file`` writes there). What huggingface_hub 2.x calls, and
what this answers (the hub's own behaviour, as read from huggingface_hub's client code):

- ``HEAD|GET /datasets/<repo>/resolve/<rev>/<path>`` (``/spaces/...``; models at ``/<repo>/resolve/...``): 200 with
  ``X-Repo-Commit``, ``ETag`` (the git blob sha1 of the file), and for LFS files (``LFS_SUFFIXES`` or larger than
  ``LFS_MIN_BYTES``) ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; ``Accept-Ranges: bytes`` and single-range
  ``Range`` requests (206 + ``Content-Range``; 416 past the end) unless ``ranges=False`` (then Range is ignored: 200
  and the whole file, as some mirrors and proxies do).
- ``lfs_redirect=True``: an LFS file's resolve answers 302 (carrying X-Repo-Commit, X-Linked-Etag, X-Linked-Size) to
  ``http://localhost:<port>/cdn/...`` — another origin, as the hub's CDN is, so huggingface_hub takes the metadata
  from the 302 and sends no Authorization there; the CDN path serves the bytes (Range, faults).
- ``GET /api/<type>s/<repo>[/revision/<rev>]``: the repo info (``sha``, ``siblings``, ``gated``, ``private``).
- ``GET /api/<type>s/<repo>/tree/<rev>[/<path>]?recursive=``: files (``oid``, ``size``, ``lfs``) and folders.
- ``POST /api/<type>s/<repo>/paths-info/<rev>`` (form ``paths``): the same entries for the paths asked.
- errors as the hub sends them: an unknown repo is 401 ``X-Error-Code: RepoNotFound``; a gated repo's files asked
  without the token are 401 ``X-Error-Code: GatedRepo`` (its info and listing are public, as on the hub); a wrong
  token is 401 "Invalid credentials in Authorization header";
  an unknown revision is 404 ``RevisionNotFound``; a missing file is 404 ``EntryNotFound`` (with ``X-Repo-Commit``).

Faults for tests (``fault(repo, path, kind, ...)``): ``"truncate"`` (the body is the first ``n`` bytes and says so in
its Content-Length, while HEAD and the listings keep the true size and sha256: a truncated upload),
``"drop"`` (announces the full length, sends ``n`` bytes, closes the connection: an interrupted transfer),
``"corrupt"`` (same size, bytes flipped), ``"status"`` (answers ``status``, e.g. 500). ``times`` limits how many
requests a fault hits (None: every one). Every request is logged in ``requests`` (method, path, Range header, bytes
of body sent) so tests can assert what was transferred.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".tar", ".zip", ".parquet", ".npy", ".webp", ".jpg", ".png", ".bin", ".safetensors", ".pt")
LFS_MIN_BYTES = 10 * 1024
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_TOKEN = "hf_loopback_test_token"


@dataclass
class Fault:
    kind: str  # "truncate" | "drop" | "corrupt" | "status"
    n: int = 0  # bytes sent ("truncate", "drop")
    status: int = 500
    times: int | None = None  # requests affected (GET only); None: all


@dataclass
class LoggedRequest:
    method: str
    path: str  # URL path, unquoted
    range: str | None
    sent: int  # body bytes sent
    status: int
    authorized: bool


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LoopbackHub:
    """A hub endpoint on 127.0.0.1 serving ``root`` (context manager; ``url`` while open)."""

    def __init__(self, root: Path, *, gated: set[str] | frozenset[str] = frozenset(), ranges: bool = True,
                 token: str = DEFAULT_TOKEN, lfs_redirect: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.gated = set(gated)
        self.ranges = ranges
        self.token = token
        self.lfs_redirect = lfs_redirect  # LFS files: 302 to a "CDN" on another origin (as the hub does)
        self.requests: list[LoggedRequest] = []
        self.faults: dict[tuple[str, str, str], Fault] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._meta: dict[tuple[str, str], dict] = {}  # (type, repo) -> cached {path: entry}, commit

    # ---- content ----
    def repo_dir(self, repo: str, repo_type: str = "dataset") -> Path:
        return self.root / f"{repo_type}s" / repo

    def add_file(self, repo: str, path: str, data: bytes, repo_type: str = "dataset") -> None:
        target = self.repo_dir(repo, repo_type) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.invalidate(repo, repo_type)

    def add_folder(self, repo: str, folder: Path, repo_type: str = "dataset") -> None:
        """Every file under ``folder`` added at its relative path."""
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                self.add_file(repo, f.relative_to(folder).as_posix(), f.read_bytes(), repo_type)

    def remove_file(self, repo: str, path: str, repo_type: str = "dataset") -> None:
        (self.repo_dir(repo, repo_type) / path).unlink()
        self.invalidate(repo, repo_type)

    def invalidate(self, repo: str, repo_type: str = "dataset") -> None:
        with self._lock:
            self._meta.pop((repo_type, repo), None)

    def _index(self, repo: str, repo_type: str) -> dict | None:
        with self._lock:
            cached = self._meta.get((repo_type, repo))
        if cached is not None:
            return cached
        base = self.repo_dir(repo, repo_type)
        if not base.is_dir():
            return None
        files: dict[str, dict] = {}
        for f in sorted(base.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(base).as_posix()
            data = f.read_bytes()
            sha256 = hashlib.sha256(data).hexdigest()
            lfs = rel.lower().endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_BYTES
            files[rel] = {"size": len(data), "sha1": git_blob_sha1(data), "sha256": sha256, "lfs": lfs}
        digest = hashlib.sha1(repo_type.encode() + b"\0" + repo.encode())
        for rel, entry in files.items():
            digest.update(rel.encode() + b"\0" + entry["sha256"].encode())
        meta = {"files": files, "commit": digest.hexdigest()}
        with self._lock:
            self._meta[(repo_type, repo)] = meta
        return meta

    def commit(self, repo: str, repo_type: str = "dataset") -> str:
        """The 40-hex commit this hub reports for the repo (it changes when files change)."""
        meta = self._index(repo, repo_type)
        if meta is None:
            raise KeyError(f"no repo {repo_type}s/{repo} under {self.root}")
        return meta["commit"]

    def sha256(self, repo: str, path: str, repo_type: str = "dataset") -> str:
        meta = self._index(repo, repo_type)
        assert meta is not None
        return meta["files"][path]["sha256"]

    # ---- faults and the request log ----
    def fault(self, repo: str, path: str, kind: str, *, n: int = 0, status: int = 500, times: int | None = None,
              repo_type: str = "dataset") -> None:
        if kind not in ("truncate", "drop", "corrupt", "status"):
            raise ValueError(f"unknown fault kind {kind!r}")
        self.faults[(repo_type, repo, path)] = Fault(kind, n=n, status=status, times=times)

    def clear_faults(self) -> None:
        self.faults.clear()

    def _file_gets(self, repo: str, path: str | None, repo_type: str) -> list[LoggedRequest]:
        """GETs that sent a file's bytes: resolve GETs answered with the body, and CDN GETs after a redirect."""
        prefixes = (f"/{repo_type}s/{repo}/resolve/" if repo_type != "model" else f"/{repo}/resolve/",
                    f"/cdn/{repo_type}s/{repo}/")
        out = []
        for r in list(self.requests):
            if r.method != "GET" or r.status in (301, 302, 307):
                continue
            for prefix in prefixes:
                if r.path.startswith(prefix):
                    rel = r.path[len(prefix):].split("/", 1)[-1]  # after the revision (resolve) or sha256 (cdn)
                    if path is None or rel == path:
                        out.append(r)
        return out

    def sent(self, repo: str, path: str | None = None, repo_type: str = "dataset") -> int:
        """Body bytes sent for a file (or for every file of the repo)."""
        return sum(r.sent for r in self._file_gets(repo, path, repo_type))

    def gets(self, repo: str, path: str, repo_type: str = "dataset") -> list[LoggedRequest]:
        """The GETs that sent the file's bytes (with their Range header), in order."""
        return self._file_gets(repo, path, repo_type)

    # ---- server ----
    def __enter__(self) -> "LoopbackHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the hub is not running (use it as a context manager)"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/(models|datasets|spaces)/([^/]+/[^/]+)/([0-9a-f]{64})/(.+)$")
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)(?:/([^/]+))?(/.*)?)?$")


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    # ---- helpers ----
    def _log(self, status: int, sent: int) -> None:
        with self.hub._lock:
            self.hub.requests.append(LoggedRequest(self.command, unquote(urlsplit(self.path).path),
                                                   self.headers.get("Range"), sent, status, self._authorized()))

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._log(status, 0 if self.command == "HEAD" else len(body))

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _access(self, repo_type: str, repo: str, files: bool = True) -> dict | None:
        """The repo's index, or None after answering the error (unknown repo, bad token, and for its files: gated).
        As on the hub, a gated repo's info and file listing are public; its files are not."""
        auth = self.headers.get("Authorization")
        if auth and not self._authorized():
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        meta = self.hub._index(repo, repo_type)
        if meta is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if files and repo in self.hub.gated and not self._authorized():
            self._error(401, "GatedRepo", f"Access to {repo_type} {repo} is restricted. You must have access to it "
                                          f"and be authenticated to access it. Please log in.")
            return None
        return meta

    def _revision_ok(self, meta: dict, rev: str) -> bool:
        rev = unquote(rev)
        if rev in ("main", meta["commit"]):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    @staticmethod
    def _entry(path: str, e: dict) -> dict:
        out = {"type": "file", "oid": e["sha1"], "size": e["size"], "path": path}
        if e["lfs"]:
            out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}
        return out

    def _tree(self, meta: dict, under: str, recursive: bool) -> list[dict]:
        under = under.strip("/")
        prefix = under + "/" if under else ""
        out: list[dict] = []
        folders: set[str] = set()
        for path, e in meta["files"].items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and folder not in folders:
                    folders.add(folder)
                    out.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                                "path": folder})
            if recursive or len(parts) == 1:
                out.append(self._entry(path, e))
        return out

    # ---- verbs ----
    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            path = urlsplit(self.path).path
            m = _RESOLVE.match(path)
            if m and self.command in ("GET", "HEAD"):
                kind = {"datasets": "dataset", "spaces": "space", None: "model"}[m.group(1)]
                return self._resolve(kind, unquote(m.group(2)), m.group(3), unquote(m.group(4)))
            m = _CDN.match(path)
            if m and self.command in ("GET", "HEAD"):
                return self._cdn(m.group(1)[:-1], unquote(m.group(2)), m.group(3), unquote(m.group(4)))
            m = _API.match(path)
            if m:
                return self._api(m.group(1)[:-1], unquote(m.group(2)), m.group(3), m.group(4), m.group(5) or "")
            self._error(404, None, f"no route for {self.command} {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _api(self, repo_type: str, repo: str, what: str | None, rev: str | None, rest: str) -> None:
        meta = self._access(repo_type, repo, files=False)
        if meta is None:
            return
        if rev is not None and not self._revision_ok(meta, rev):
            return
        query = parse_qs(urlsplit(self.path).query)
        if what in (None, "revision") and self.command == "GET":
            info = {"id": repo, "sha": meta["commit"], "private": False,
                    "gated": "auto" if repo in self.hub.gated else False, "disabled": False,
                    "lastModified": "2024-01-01T00:00:00.000Z", "tags": [],
                    "siblings": [{"rfilename": p} for p in meta["files"]]}
            return self._send(200, json.dumps(info).encode())
        if what == "tree" and self.command == "GET":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._send(200, json.dumps(self._tree(meta, unquote(rest), recursive)).encode())
        if what == "paths-info" and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            out = []
            for p in form.get("paths", []):
                p = p.strip("/")
                if p in meta["files"]:
                    out.append(self._entry(p, meta["files"][p]))
                elif any(f.startswith(p + "/") for f in meta["files"]):
                    out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0,
                                "path": p})
            return self._send(200, json.dumps(out).encode())
        self._error(404, None, f"no API route for {self.command} {self.path}")

    def _resolve(self, repo_type: str, repo: str, rev: str, rel: str) -> None:
        meta = self._access(repo_type, repo)
        if meta is None or not self._revision_ok(meta, rev):
            return
        entry = meta["files"].get(rel)
        commit = meta["commit"]
        if entry is None:
            return self._error(404, "EntryNotFound", f"{rel} does not exist on \"{rev}\"", {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry["sha1"]}"'}
        if entry["lfs"]:
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(entry["size"])
        if entry["lfs"] and self.hub.lfs_redirect:  # the hub answers LFS files with a redirect to its CDN
            kind = f"{repo_type}s"
            # another origin (localhost, not 127.0.0.1), like the hub's CDN: huggingface_hub reads the metadata
            # from this 302 and sends no Authorization header there
            headers["Location"] = f"http://localhost:{self.hub.port}/cdn/{kind}/{repo}/{entry['sha256']}/{rel}"
            return self._send(302, b"", headers)
        self._serve(repo_type, repo, rel, headers)

    def _cdn(self, repo_type: str, repo: str, sha256: str, rel: str) -> None:
        meta = self.hub._index(repo, repo_type)
        entry = meta["files"].get(rel) if meta else None
        if entry is None or entry["sha256"] != sha256:
            return self._error(404, None, "no such object")
        self._serve(repo_type, repo, rel, {"ETag": f'"{sha256}"'})

    def _serve(self, repo_type: str, repo: str, rel: str, headers: dict[str, str]) -> None:
        """The file's bytes (Range, faults) with ``headers``."""
        if self.hub.ranges:
            headers["Accept-Ranges"] = "bytes"
        fault = None
        if self.command == "GET":
            with self.hub._lock:
                fault = self.hub.faults.get((repo_type, repo, rel))
                if fault is not None and fault.times is not None:
                    if fault.times <= 0:
                        fault = None
                    else:
                        fault.times -= 1
        if fault is not None and fault.kind == "status":
            return self._error(fault.status, None, f"injected {fault.status}")
        data = (self.hub.repo_dir(repo, repo_type) / rel).read_bytes()
        if fault is not None and fault.kind == "truncate":
            data = data[:fault.n]
        if fault is not None and fault.kind == "corrupt":
            data = bytes(b ^ 0xFF for b in data)
        size = len(data)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and self.hub.ranges:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._error(416, None, f"unsupported Range {rng}", {"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                return self._error(416, None, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = data[start:end + 1] if size else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        if fault is not None and fault.kind == "drop":
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return self._log(status, 0)
        if fault is not None and fault.kind == "drop":
            part = body[:fault.n]
            self.wfile.write(part)
            self.wfile.flush()
            self.close_connection = True
            self._log(status, len(part))
            return
        self.wfile.write(body)
        self._log(status, len(body))
