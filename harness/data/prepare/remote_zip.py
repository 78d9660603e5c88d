"""A file on the hub read as a seekable file through HTTP Range requests, so Python's ``zipfile`` can read a remote
zip's central directory and only the members asked for (the 37 GB ELEVATER re-host holds 20 datasets; one is fetched
without the others).

:class:`RangeFile` is a read-only, seekable file-like over huggingface_hub's HTTP session with the hub's auth headers.
Reads are served from one cached window; a miss fetches ``[pos, pos + n)`` where n is the read's size, at least
``min_fetch`` bytes (small reads of the directory come in a few requests), and, inside a span announced with
:meth:`RangeFile.plan` (the byte ranges of the members about to be read, merged), up to the span's end (capped at
``max_fetch``): members stored back to back come in few requests and nothing outside the planned spans is fetched
beyond ``min_fetch``. ``transferred`` counts the body bytes received.

:class:`SubFile` is a window ``[start, start + length)`` of another seekable file: a zip stored (uncompressed) inside
the remote zip is opened with ``zipfile`` in place.
"""
from __future__ import annotations

import io
import logging
import re
from typing import Any

from harness.data.prepare.hub import HubError, endpoint

logger = logging.getLogger(__name__)

MIN_FETCH = 64 * 1024
MAX_FETCH = 64 * 1024 * 1024


def _content_range_total(header: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", header or "")
    return int(m.group(1)) if m else None


class _Seekable(io.RawIOBase):
    """Read-only, seekable: ``pos`` within ``length`` bytes; subclasses read ``n`` bytes at ``pos`` (:meth:`_read`)."""

    length = 0
    name = ""

    def __init__(self) -> None:
        super().__init__()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.name}: negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.length - self.pos
        n = min(n, max(0, self.length - self.pos))
        if n == 0:
            return b""
        data = self._read(n)
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        raise NotImplementedError


class RangeFile(_Seekable):
    """Read-only seekable view of a remote file of ``size`` bytes at ``url`` (Range requests)."""

    def __init__(self, url: str, size: int, headers: dict[str, str], name: str, *, session: Any = None,
                 min_fetch: int | None = None, max_fetch: int = MAX_FETCH, timeout: Any = 60.0, tries: int = 4):
        super().__init__()
        if session is None:
            from huggingface_hub.utils import get_session

            session = get_session()
        self.url, self.size, self.length, self.headers, self.name = url, size, size, dict(headers), name
        self.session, self.max_fetch = session, max_fetch
        self.min_fetch = MIN_FETCH if min_fetch is None else min_fetch
        self.timeout, self.tries = timeout, max(1, tries)
        self.window_start, self.window = 0, b""
        self.spans: list[tuple[int, int]] = []
        self.transferred = 0
        self.requests = 0

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            pos = self.pos + len(out)
            offset = pos - self.window_start
            if 0 <= offset < len(self.window):
                out += self.window[offset:offset + (n - len(out))]
                continue
            self._fill(pos, n - len(out))
        return bytes(out)

    # -- planning and fetching --
    def plan(self, spans: list[tuple[int, int]], gap: int = 0) -> None:
        """Announce the byte ranges ``[start, end)`` about to be read (merged when closer than ``gap``)."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1] + gap:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.spans = merged

    def _fill(self, pos: int, need: int) -> None:
        end = pos + max(need, self.min_fetch)
        for start, stop in self.spans:
            if start <= pos < stop:
                end = max(pos + need, min(stop, pos + self.max_fetch))
                break
        end = min(end, self.size)
        self.window_start, self.window = pos, self._get(pos, end)

    def _get(self, start: int, end: int) -> bytes:
        last: BaseException | None = None
        for _ in range(self.tries):
            try:
                return self._get_once(start, end)
            except HubError:
                raise
            except Exception as exc:  # transport errors: retried, then one line
                last = exc
        raise HubError(f"{self.name}: reading bytes {start}-{end - 1} from {endpoint()} failed {self.tries} times "
                       f"({type(last).__name__}: {last}) — rerun prepare", "unreachable")

    def _get_once(self, start: int, end: int) -> bytes:
        from harness.data.prepare.hub import hub_errors

        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        repo_path = self.name.split("/", 2)
        with hub_errors("/".join(repo_path[:2]), repo_path[2] if len(repo_path) > 2 else ""):
            with self.session.stream("GET", self.url, headers=headers, timeout=self.timeout,
                                     follow_redirects=True) as resp:
                if resp.status_code == 200:
                    raise HubError(no_ranges_line(self.name), "no-ranges")
                from huggingface_hub.utils import hf_raise_for_status

                hf_raise_for_status(resp)
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    self.transferred += len(chunk)
        self.requests += 1
        if resp.status_code != 206 or len(data) != end - start:
            raise HubError(f"{self.name}: asked for bytes {start}-{end - 1}, got {len(data)} bytes with HTTP "
                           f"{resp.status_code} — the server's range support is broken; {NO_RANGES_REMEDY}",
                           "no-ranges")
        return bytes(data)


NO_RANGES_REMEDY = ("pass --whole-zip to download the whole zip (tens of GB) and read the datasets from it, or "
                    "download it by hand into DATA_ROOT/<org>/<repo>/")


def no_ranges_line(name: str) -> str:
    return (f"{name}: the server at {endpoint()} ignores HTTP Range requests, so single datasets cannot be read out "
            f"of the zip; {NO_RANGES_REMEDY}")


def probe_ranges(url: str, headers: dict[str, str], name: str, session: Any = None, timeout: Any = 60.0) -> bool:
    """Whether the server answers a one-byte Range request with 206 (within ``timeout``)."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    from harness.data.prepare.hub import hub_errors

    session = session or get_session()
    parts = name.split("/", 2)
    with hub_errors("/".join(parts[:2]), parts[2] if len(parts) > 2 else ""):
        with session.stream("GET", url, headers={**headers, "Range": "bytes=0-0", "Accept-Encoding": "identity"},
                            follow_redirects=True, timeout=timeout) as resp:
            hf_raise_for_status(resp)
            return resp.status_code == 206


class SubFile(_Seekable):
    """The bytes ``[start, start + length)`` of a seekable file, as a seekable file of their own."""

    def __init__(self, base: Any, start: int, length: int, name: str = ""):
        super().__init__()
        self.base, self.start, self.length, self.name = base, start, length, name

    def _read(self, n: int) -> bytes:
        self.base.seek(self.start + self.pos)
        return self.base.read(n)
