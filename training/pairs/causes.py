"""Why a URL failed, as a cause class, from img2dataset's per-row ``status`` and ``error_message``.

img2dataset downloads with urllib, so its messages are urllib's: ``HTTP Error 404: Not Found`` (class
``http_404``), ``<urlopen error [Errno -2] Name or service not known>`` (``dns``), ``timed out`` / ``The read
operation timed out`` (``timeout``), ``[SSL: ...]`` (``tls``), ``Connection refused`` / ``reset`` (``connection``);
its resizer says ``Image decoding error`` when the body is not a decodable image (``decode``); every other resize
failure (``image too small`` ...) is ``resize``. Classes are :data:`harness.core.pairs_availability.CAUSES`.
"""
from __future__ import annotations

import re

_HTTP = re.compile(r"HTTP Error (\d{3})")
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timed out", "timeout")),
    ("dns", ("name or service not known", "temporary failure in name resolution", "no address associated",
             "nodename nor servname", "getaddrinfo", "[errno -2]", "[errno -3]", "[errno -5]", "[errno 11001]")),
    ("tls", ("ssl", "certificate", "tls")),
    ("connection", ("connection refused", "connection reset", "connection aborted", "remote end closed",
                    "network is unreachable", "no route to host", "incompleteread", "eof occurred",
                    "remotedisconnected", "broken pipe")),
)
DECODE_MESSAGES = ("image decoding error", "cannot identify image", "not an image")


def cause_class(status: str | None, error_message: str | None) -> str:
    """The cause class of one failed row (``success`` rows are not failures: ``"success"``)."""
    if status == "success":
        return "success"
    msg = (error_message or "").lower()
    if status == "failed_to_resize":
        return "decode" if any(m in msg for m in DECODE_MESSAGES) else "resize"
    m = _HTTP.search(error_message or "")
    if m:
        return f"http_{m.group(1)}"
    for name, needles in _RULES:
        if any(n in msg for n in needles):
            return name
    if any(m in msg for m in DECODE_MESSAGES):
        return "decode"
    return "other"


def cause_group(cls: str) -> str:
    """``http_404`` -> ``http``; other classes are their own group."""
    return "http" if cls.startswith("http_") else cls
