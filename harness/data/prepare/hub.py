"""The Hugging Face hub, through huggingface_hub: a repo's files at one commit, one file fetched resumably, errors as
one line each.

- The endpoint is ``HF_ENDPOINT`` (a mirror) read when called, else huggingface_hub's default; the token is
  huggingface_hub's (``HF_TOKEN``, else ``hf auth login``'s file); ``HF_HUB_OFFLINE`` stops everything before any
  request, with one line saying what still works.
- A repo is pinned once (:meth:`HubClient.snapshot`): the requested revision (a pinned commit, or ``main``) resolved to
  its commit with ``repo_info``, the file list with sizes and LFS sha256 from ``list_repo_tree`` at that commit; every
  file is then fetched from that commit, so a download is one consistent snapshot whose commit is recorded.
- :meth:`HubClient.fetch` streams a file with huggingface_hub's ``http_get`` (its retries, in-call resume after a
  dropped connection, progress bar) into ``<name>.part`` in a staging folder, resuming a ``.part`` left by an
  interrupted run with a Range request, and checks size and sha256 against the hub's metadata before the caller
  renames anything. A bad file is deleted (the next run fetches it again); a cut-off one is kept to resume.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.core.errors import HarnessError

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"
DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE_VALUES = ("1", "on", "yes", "true")


class HubError(HarnessError):
    """A hub request failed; the message is one line naming the repo (and file) and the remedy. ``kind``: "offline",
    "unreachable", "gated", "not-found", "http", "corrupt", "truncated", "no-ranges", "disk"."""

    def __init__(self, message: str, kind: str, repo: str = "", path: str = ""):
        super().__init__(" ".join(message.split()))
        self.kind, self.repo, self.path = kind, repo, path


def endpoint() -> str:
    """``HF_ENDPOINT`` as it is now (a mirror), else huggingface_hub's configured endpoint."""
    env = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if env:
        return env
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return DEFAULT_ENDPOINT


def offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().lower() in TRUE_VALUES:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) and "HF_HUB_OFFLINE" not in os.environ


OFFLINE_LINE = ("HF_HUB_OFFLINE is set, so prepare contacts no hub: datasets already under DATA_ROOT/<org>/<repo> "
                "(a hand download: hf download <org>/<repo> --repo-type dataset --local-dir "
                "DATA_ROOT/<org>/<repo>) are read by eval as they are; unset HF_HUB_OFFLINE to download")


def check_online() -> None:
    if offline():
        raise HubError(OFFLINE_LINE, "offline")


def repo_page(repo: str, repo_type: str = "dataset") -> str:
    kind = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{endpoint()}/{kind}{repo}"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files; None for small git files (size checked only)


@dataclass
class RepoSnapshot:
    repo: str
    repo_type: str
    requested: str  # the revision asked for: a pinned commit, or "main"
    commit: str  # what it resolved to (40 hex)
    files: dict[str, RemoteFile] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return f"{self.repo}@{self.commit[:8]}"


@dataclass
class Fetched:
    path: str
    size: int
    received: int  # bytes received by this call
    resumed_from: int  # bytes already in the .part when it started


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


@contextlib.contextmanager
def hub_errors(repo: str, path: str = "", repo_type: str = "dataset") -> Iterator[None]:
    """Turn huggingface_hub/httpx errors into one HubError line naming the repo/file and the remedy."""
    import httpx2
    from huggingface_hub import errors as hf_errors

    where = f"{repo}/{path}" if path else repo
    page = repo_page(repo, repo_type)
    try:
        yield
    except HubError:
        raise
    except hf_errors.OfflineModeIsEnabled as exc:
        raise HubError(OFFLINE_LINE, "offline", repo, path) from exc
    except hf_errors.GatedRepoError as exc:
        raise HubError(f"{where}: {repo} is a gated repo on {endpoint()} ({_status(exc)}): accept its terms at {page} "
                       f"with your account and set HF_TOKEN to a token of that account (or run 'hf auth login'); "
                       f"nothing was downloaded", "gated", repo, path) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise HubError(f"{where}: the revision is not in {repo} on {endpoint()} — the sources data pins a commit the "
                       f"hub (or this mirror) does not have; check HF_ENDPOINT or update the pin", "not-found", repo,
                       path) from exc
    except hf_errors.RemoteEntryNotFoundError as exc:
        raise HubError(f"{where}: no such file in {repo} on {endpoint()} — the repo's layout changed or the mirror "
                       f"is incomplete", "not-found", repo, path) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise HubError(f"{where}: {endpoint()} answers {_status(exc)}: no such repo, or a private/gated one — check "
                       f"the name at {page}; if it is gated, accept its terms there and set HF_TOKEN", "not-found",
                       repo, path) from exc
    except hf_errors.HfHubHTTPError as exc:
        status = _status(exc)
        raise HubError(f"{where}: {endpoint()} answered HTTP {status} — rerun later (downloads resume), or point "
                       f"HF_ENDPOINT at a mirror", "http", repo, path) from exc
    except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
        raise HubError(f"{where}: no connection to {endpoint()} ({type(exc).__name__}: {exc}) — offline, or "
                       f"HF_ENDPOINT is wrong; set HF_HUB_OFFLINE=1 to use only what is under DATA_ROOT, or point "
                       f"HF_ENDPOINT at a mirror that answers", "unreachable", repo, path) from exc
    except httpx2.TimeoutException as exc:
        raise HubError(f"{where}: {endpoint()} did not answer in time ({type(exc).__name__}; prepare --timeout) — a "
                       f"stalled hub or mirror; rerun later, point HF_ENDPOINT at a mirror that answers, or set "
                       f"HF_HUB_OFFLINE=1 to use only what is under DATA_ROOT", "unreachable", repo, path) from exc
    except httpx2.TransportError as exc:
        raise HubError(f"{where}: the transfer from {endpoint()} failed ({type(exc).__name__}: {exc}) — rerun "
                       f"prepare, it resumes", "unreachable", repo, path) from exc


def _file_bar_class(overall: Any, show: bool) -> type:
    """The tqdm class huggingface_hub draws a file's bar with: shown or not, and every byte also counted on the run's
    overall bar (``overall``, or None)."""
    from tqdm.auto import tqdm

    class FileBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = not show
            kwargs.setdefault("leave", False)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if overall is not None and n:
                overall.update(n)
            return super().update(n)

    return FileBar


class HubClient:
    """huggingface_hub calls with this harness's error lines, at the endpoint/token of the moment."""

    def __init__(self, *, progress: bool = False, tries: int = 4, backoff_s: float = 1.0, overall: Any = None,
                 timeout_s: float = 60.0, connect_timeout_s: float = 15.0):
        self.progress, self.tries, self.backoff_s = progress, max(1, tries), backoff_s
        self.overall = overall  # the run's overall byte bar (tqdm), or None
        self.timeout_s, self.connect_timeout_s = timeout_s, min(connect_timeout_s, timeout_s)
        self.down: HubError | None = None  # the endpoint did not answer earlier in this run: not asked again

    def timeout(self) -> Any:
        """The timeout of every request this client makes (prepare's --timeout; the connect part capped)."""
        import httpx2

        return httpx2.Timeout(self.timeout_s, connect=self.connect_timeout_s)

    @contextlib.contextmanager
    def _session_timeout(self) -> Iterator[None]:
        """huggingface_hub's shared HTTP session with this client's timeout for the calls that take none
        (list_repo_tree, get_paths_info: the session's own default is no timeout at all); restored after."""
        from huggingface_hub.utils import get_session

        session = get_session()
        old = session.timeout
        session.timeout = self.timeout()
        try:
            yield
        finally:
            session.timeout = old

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=endpoint())

    def snapshot(self, repo: str, revision: str | None = None, repo_type: str = "dataset",
                 under: str | None = None, paths: list[str] | None = None) -> RepoSnapshot:
        """The repo at ``revision`` (default main) resolved to a commit, with its files: all, or the root's files and
        those under the folder ``under``, or (``paths``) just those files. Every request has the client's timeout;
        an endpoint that did not answer (connection refused, timed out) is not asked again by this client."""
        check_online()
        if self.down is not None:
            raise HubError(f"{repo}: not asked — {endpoint()} did not answer earlier in this run ({self.down})",
                           "unreachable", repo)
        try:
            return self._snapshot(repo, revision, repo_type, under, paths)
        except HubError as exc:
            if exc.kind == "unreachable":
                self.down = exc
            raise

    def _snapshot(self, repo: str, revision: str | None, repo_type: str, under: str | None,
                  paths: list[str] | None) -> RepoSnapshot:
        from huggingface_hub.hf_api import RepoFile

        requested = revision or "main"
        with hub_errors(repo, repo_type=repo_type), self._session_timeout():
            info = self.api().repo_info(repo, repo_type=repo_type, revision=requested, timeout=self.timeout())
            commit = info.sha
            if not commit:
                raise HubError(f"{repo}: {endpoint()} did not say which commit {requested} is — not a hub endpoint?",
                               "http", repo)
            files: dict[str, RemoteFile] = {}
            if paths is not None:
                for entry in self.api().get_paths_info(repo, paths, revision=commit, repo_type=repo_type):
                    if isinstance(entry, RepoFile):
                        files[entry.path] = RemoteFile(entry.path, int(entry.size),
                                                       entry.lfs.sha256 if entry.lfs is not None else None)
                return RepoSnapshot(repo, repo_type, requested, commit, files)
            listings = [("", under is None)] + ([(under, True)] if under else [])
            for folder, recursive in listings:
                for entry in self.api().list_repo_tree(repo, path_in_repo=folder or None, recursive=recursive,
                                                       revision=commit, repo_type=repo_type):
                    if isinstance(entry, RepoFile):
                        files[entry.path] = RemoteFile(entry.path, int(entry.size),
                                                       entry.lfs.sha256 if entry.lfs is not None else None)
        return RepoSnapshot(repo, repo_type, requested, commit, files)

    def url(self, snap: RepoSnapshot, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(snap.repo, path, repo_type=snap.repo_type, revision=snap.commit, endpoint=endpoint())

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        return headers

    def read_text(self, snap: RepoSnapshot, path: str, limit: int = 1 << 16) -> str:
        """A small file of the snapshot (``nshards.txt``) read into memory, nothing written: what --plan-only asks."""
        from huggingface_hub.utils import get_session, hf_raise_for_status

        check_online()
        with hub_errors(snap.repo, path, snap.repo_type):
            resp = get_session().get(self.url(snap, path), headers=self.headers(), timeout=self.timeout(),
                                     follow_redirects=True)
            hf_raise_for_status(resp)
        return resp.content[:limit].decode("utf-8", errors="replace")

    def fetch(self, snap: RepoSnapshot, path: str, staging: Path) -> Fetched:
        """``path`` of the snapshot into ``staging/<path>.part`` (resumed when there), checked against the hub's size
        and sha256; returns when the .part is the whole, verified file (the caller renames it)."""
        from huggingface_hub import file_download

        check_online()
        remote = snap.files.get(path)
        if remote is None:
            raise HubError(f"{snap.repo}/{path}: not in the repo at {snap.short} — the repo's layout changed",
                           "not-found", snap.repo, path)
        part = staging / (path + PART_SUFFIX)
        part.parent.mkdir(parents=True, exist_ok=True)
        resumed_from = part.stat().st_size if part.exists() else 0
        if resumed_from > remote.size:
            part.unlink()
            resumed_from = 0
        attempt, restarted = 0, False
        while True:
            have = part.stat().st_size if part.exists() else 0
            try:
                with hub_errors(snap.repo, path, snap.repo_type), open(part, "ab") as f:
                    file_download.http_get(self.url(snap, path), f, resume_size=have, headers=self.headers(),
                                           expected_size=remote.size, displayed_filename=path,
                                           tqdm_class=_file_bar_class(self.overall, self.progress))
                    f.flush()
                    os.fsync(f.fileno())
                break
            except HubError as exc:
                if _status(exc.__cause__) == 416 and not restarted:  # the .part does not fit the file: start over
                    part.unlink(missing_ok=True)
                    restarted = True
                    continue
                attempt += 1
                if exc.kind not in ("http", "unreachable") or attempt >= self.tries:
                    raise
                logger.info("%s/%s: %s; retrying (try %d of %d)", snap.repo, path, exc, attempt + 1, self.tries)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            except OSError as exc:
                from harness.core.atomic import is_out_of_space, space_message

                if is_out_of_space(exc):
                    raise HubError(space_message(part, remote.size, exc), "disk", snap.repo, path) from exc
                if "Consistency check failed" not in str(exc):  # huggingface_hub's size check
                    raise HubError(f"{snap.repo}/{path}: writing {part} failed ({exc})", "disk", snap.repo,
                                   path) from exc
                size = part.stat().st_size if part.exists() else 0
                part.unlink(missing_ok=True)
                raise HubError(f"{snap.repo}/{path}: arrived with {size} of the {remote.size} bytes the hub's metadata "
                               f"gives ({snap.short}) — a truncated transfer; the partial file was deleted, rerun "
                               f"prepare to fetch it again", "truncated", snap.repo, path) from exc
        size = part.stat().st_size
        received = max(0, size - resumed_from)
        verify_file(part, remote, f"{snap.repo}/{path}", snap.short)
        return Fetched(path, size, received, resumed_from)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_matches(path: Path, remote: RemoteFile) -> bool:
    """A local file is the hub's: same size and (LFS files) same sha256."""
    try:
        if path.stat().st_size != remote.size:
            return False
    except OSError:
        return False
    return remote.sha256 is None or sha256_of(path) == remote.sha256


def verify_file(path: Path, remote: RemoteFile, name: str, where: str) -> None:
    """Size and sha256 of a fetched file against the hub's metadata; a mismatch deletes it (HubError)."""
    size = path.stat().st_size
    if size != remote.size:
        path.unlink(missing_ok=True)
        raise HubError(f"{name}: {size} bytes arrived, the hub's metadata says {remote.size} ({where}) — a truncated "
                       f"or altered transfer; the partial file was deleted, rerun prepare", "truncated")
    if remote.sha256 is not None:
        got = sha256_of(path)
        if got != remote.sha256:
            path.unlink(missing_ok=True)
            raise HubError(f"{name}: sha256 {got[:12]}… is not the hub's {remote.sha256[:12]}… ({where}) — "
                           f"the bytes were altered in transit or by a mirror; the file was deleted, rerun prepare or "
                           f"unset HF_ENDPOINT", "corrupt")
