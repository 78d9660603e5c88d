"""One file over HTTP(S): streamed to ``<final>.part``, resumed with a Range request, retried with backoff.

vision-datasets' own downloader (``DatasetDownloader``) is not used: it writes straight to the final name (a killed
run leaves a truncated file that later runs skip as present), cannot resume, and shows no progress. This one:

- writes to ``<final>.part`` (the caller renames it after verification, so a final name is always a whole file);
- resumes a ``.part`` with ``Range: bytes=<size>-``: a 206 whose Content-Range starts there is appended; a 200 (the
  server ignores ranges) restarts the file from zero; a 416 whose total equals the ``.part`` size means complete;
- retries connection errors, timeouts, truncated bodies and 5xx/429 ``tries`` times in all, waiting
  ``backoff_s * 2**k`` between tries (each retry resumes); 4xx other than 416/429 fail at once;
- never hangs: connect and read timeouts on every request, and a body arriving slower than ``min_rate_bps``
  averaged over any ``read_timeout_s`` (a server dripping a byte every few seconds never trips a read timeout) fails
  like a timeout (and is retried, resuming);
- refuses a web page: a 200 whose body is HTML where a zip, index or label map was expected (what a login page or a
  captive portal answers with) fails at once with that said, and nothing of it is written.
"""
from __future__ import annotations

import http.client
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3

from harness.core.errors import HarnessError
from harness.data.prepare.storage import public_url, scrub
from harness.data.prepare.verify import web_page_evidence, web_page_message

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"

# What an HTTP refusal means here: one line each, said to the user with the URL (query string removed).
REFUSALS = {
    401: "401: the storage asks for credentials — the URL needs a valid SAS query string",
    403: "403: the storage refused access — the SAS signature may have expired, or the URL lacks it",
    404: "404: no such file at this URL — a wrong storage URL, or the container's layout changed",
    409: "409: the storage refused the request — public access to this container or account is disabled",
}


@dataclass
class DownloadOptions:
    tries: int = 4  # attempts per file in all (1 = no retry)
    backoff_s: float = 1.0  # wait before retry k (k = 0, 1, ...): backoff_s * 2**k
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0  # longest silence while reading a response; also the window of min_rate_bps
    # Slowest body accepted, averaged over every read_timeout_s: far below any working link (a 1 GB zip takes 12
    # days at this rate), far above a server that drips (1 byte every 5 s is 0.2 B/s). 0: no limit.
    min_rate_bps: float = 1024.0
    chunk_bytes: int = 1 << 20
    progress: bool = False  # tqdm byte bars (per file, and the overall bar the caller passes)


class DownloadError(HarnessError):
    """A file could not be fetched. ``reason`` is one line; ``offline`` when the storage never answered."""

    def __init__(self, url: str, reason: str, offline: bool = False, status: int | None = None):
        super().__init__(f"{public_url(url)}: {reason}")
        self.url = public_url(url)
        self.reason = reason
        self.offline = offline
        self.status = status


@dataclass
class Fetched:
    size: int  # bytes in the .part when done
    received: int  # bytes received in this call
    resumed_from: int  # bytes already in the .part at the start (0: a fresh download)


class _Transient(Exception):
    """A failure worth retrying that requests does not raise itself (5xx, a body shorter than announced, a body
    arriving too slowly)."""


_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, _Transient)


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def _why(exc: BaseException) -> str:
    """A short, signature-free description of a transient failure."""
    text = scrub(str(exc))
    if isinstance(exc, requests.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, requests.Timeout):
        return "the server stopped sending (read timed out)"
    if re.search(r"NameResolution|Failed to resolve|Name or service not known|getaddrinfo|nodename", text):
        return "DNS lookup failed"
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, _Transient):
        return text
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
                        http.client.IncompleteRead)):
        return "the connection dropped mid-file"
    return f"connection error ({type(exc).__name__})"


def _range_of(header: str | None) -> tuple[int | None, int | None]:
    """(start, total) from a Content-Range header ``bytes a-b/N`` or ``bytes */N``."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", header or "")
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (int(m.group(2)) if m.group(2) != "*" else None)


class _Bars:
    """A per-file byte bar, and the caller's overall byte bar (bytes in place so far; sizes are learnt per file)."""

    def __init__(self, name: str, overall: Any, progress: bool):
        self.name, self.overall, self.progress = name, overall, progress
        self.file_bar = None
        self.counted = 0  # bytes of this file shown on the overall bar

    def start(self, have: int, total: int | None) -> None:
        if self.overall is not None:
            self.overall.update(have - self.counted)
            self.counted = have
        if self.progress and self.file_bar is None:
            from tqdm.auto import tqdm

            self.file_bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                                 desc=self.name, leave=False, position=1, dynamic_ncols=True)
        elif self.file_bar is not None:
            self.file_bar.reset(total=total)
            self.file_bar.update(have)

    def update(self, n: int) -> None:
        self.counted += n
        if self.overall is not None:
            self.overall.update(n)
        if self.file_bar is not None:
            self.file_bar.update(n)

    def close(self) -> None:
        if self.file_bar is not None:
            self.file_bar.close()


def download(session: requests.Session, url: str, final: Path, opts: DownloadOptions,
             overall: Any = None) -> Fetched:
    """Fetch ``url`` into ``part_path(final)`` (resuming it when present); the caller verifies and renames."""
    part = part_path(final)
    part.parent.mkdir(parents=True, exist_ok=True)
    resumed_from = part.stat().st_size if part.exists() else 0
    bars = _Bars(final.name, overall, opts.progress)
    received = [0]
    last: BaseException | None = None
    try:
        for attempt in range(max(1, opts.tries)):
            if attempt:
                delay = opts.backoff_s * 2 ** (attempt - 1)
                logger.info("%s: %s; retrying in %.1f s (try %d of %d)", final.name, _why(last), delay,
                            attempt + 1, opts.tries)
                time.sleep(delay)
            try:
                size = _attempt(session, url, part, opts, bars, received)
                return Fetched(size=size, received=received[0], resumed_from=resumed_from)
            except _TRANSIENT as exc:
                last = exc
    finally:
        bars.close()
    offline = received[0] == 0 and isinstance(last, requests.ConnectionError) and not isinstance(
        last, requests.exceptions.ChunkedEncodingError)
    if offline:
        reason = f"no connection to the storage ({_why(last)}) — offline, or the host is unreachable"
    else:
        reason = f"failed after {opts.tries} {'try' if opts.tries == 1 else 'tries'}: {_why(last)}"
    raise DownloadError(url, reason, offline=offline)


def _attempt(session: requests.Session, url: str, part: Path, opts: DownloadOptions, bars: _Bars,
             received: list[int]) -> int:
    for _ in range(2):  # a second round only after discarding a .part the server cannot continue
        have = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # byte ranges of the stored bytes, not of a re-encoding
        if have:
            headers["Range"] = f"bytes={have}-"
        with session.get(url, headers=headers, stream=True, allow_redirects=True,
                         timeout=(opts.connect_timeout_s, opts.read_timeout_s)) as resp:
            status = resp.status_code
            if status == 416 and have:
                _, total = _range_of(resp.headers.get("Content-Range"))
                if total == have:
                    bars.start(have, total)
                    return have
                logger.info("%s: the partial file (%d bytes) does not fit the server's (%s): restarting",
                            part.name, have, total)
                part.unlink()
                continue
            if status >= 500 or status == 429:
                raise _Transient(f"the server answered {status} {resp.reason}")
            if status not in (200, 206):
                raise DownloadError(url, REFUSALS.get(status, f"HTTP {status} {resp.reason}"), status=status)
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if status == 206:
                start, total = _range_of(resp.headers.get("Content-Range"))
                if start != have:
                    logger.info("%s: the server sent bytes from %s, not %d: restarting", part.name, start, have)
                    part.unlink(missing_ok=True)
                    continue
                mode = "ab"
                logger.debug("%s: resuming at byte %d", part.name, have)
            else:
                if have:
                    logger.info("%s: the server ignores Range requests: restarting from the beginning", part.name)
                have, mode, total = 0, "wb", length
            if total is None and length is not None:
                total = have + length
            bars.start(have, total)
            _stream(resp, url, part, mode, opts, bars, received)
            size = part.stat().st_size
            if total is not None and size != total:
                raise _Transient(f"the body ended at {size} of {total} bytes")
            return size
    raise _Transient("the server could not continue the partial file")


SNIFF_BYTES = 64  # the first bytes of a body from byte 0, held back until it is clear they are not a web page


class _Pace:
    """Fails a body arriving slower than ``min_rate_bps`` averaged over each ``read_timeout_s`` window (checked as
    bytes arrive; total silence is the read timeout's)."""

    def __init__(self, opts: DownloadOptions):
        self.min_rate, self.window = opts.min_rate_bps, opts.read_timeout_s
        self.since, self.bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.bytes += n
        elapsed = time.monotonic() - self.since
        if not self.min_rate or elapsed < self.window:
            return
        rate = self.bytes / elapsed
        if rate < self.min_rate:
            raise _Transient(f"the server sent {self.bytes} bytes in {elapsed:.1f} s ({rate:.1f} B/s), below "
                             f"--min-rate {self.min_rate:g} B/s (a stalled or throttled server; the next try "
                             f"resumes)")
        self.since, self.bytes = time.monotonic(), 0


def _refuse_web_page(head: bytes, resp: requests.Response, url: str) -> None:
    evidence = web_page_evidence(head, resp.headers.get("Content-Type"))
    if evidence:
        raise DownloadError(url, web_page_message(evidence) + " (nothing was kept)", status=resp.status_code)


def _stream(resp: requests.Response, url: str, part: Path, mode: str, opts: DownloadOptions, bars: _Bars,
            received: list[int]) -> None:
    # read1 returns what has arrived (up to chunk_bytes), so a killed run keeps everything received so far;
    # unbuffered writes put each chunk on disk at once. A body from byte 0 ("wb") is looked at before the .part is
    # opened (and, for a server ignoring Range, truncated): a web page never replaces a partial download.
    read1 = getattr(resp.raw, "read1", None)
    chunks = iter(lambda: read1(opts.chunk_bytes), b"") if read1 else resp.iter_content(opts.chunk_bytes)
    pace = _Pace(opts)
    head = b""
    f = None
    try:
        for chunk in chunks:
            pace.add(len(chunk))
            if f is None:
                head += chunk
                if mode == "wb" and len(head) < SNIFF_BYTES:
                    continue
                if mode == "wb":
                    _refuse_web_page(head, resp, url)
                chunk, head = head, b""
                f = open(part, mode, buffering=0)
            f.write(chunk)
            received[0] += len(chunk)
            bars.update(len(chunk))
        if f is None:  # a body shorter than SNIFF_BYTES, or empty
            if mode == "wb":
                _refuse_web_page(head, resp, url)
            f = open(part, mode, buffering=0)
            f.write(head)
            received[0] += len(head)
            bars.update(len(head))
        os.fsync(f.fileno())
    finally:
        if f is not None:
            f.close()
