"""Bounded readers for the JSON and YAML files the harness reads: what may be read, how much of it, how deep.

Every JSON or YAML file that a user names or that lies on disk (model and dataset cards and their ``include:``s,
toolkit model YAMLs and their ``BASE:`` files, predictions to import, results, cache meta files, cross-checks) is read
here, so a hostile or mistaken file costs one line, never a hang, a traceback or gigabytes of memory:

- only a regular file is read: ``/dev/zero``, a FIFO, a socket or a folder is refused by its type, checked with
  ``os.stat`` before opening and again with ``fstat`` on the descriptor (opened ``O_NONBLOCK``, so a FIFO swapped in
  between cannot block the open);
- its size is checked against the limit of its kind (:data:`KINDS`) before a byte is read, so a 2 GB sparse file is
  refused at once; the read stops at limit + 1 bytes, so a file that grows meanwhile stays bounded;
- JSON nesting is measured before parsing (brackets outside strings, at C speed: the text is first cut down to its
  quotes and brackets), YAML's after parsing the bounded text (PyYAML composes recursively: a RecursionError becomes
  the same one line), together with how many values its aliases expand to (a "billion laughs" card).

A refusal is a :class:`RefusedFile`: a HarnessError (one line naming the file, the limit and what was found) that is
also a ValueError, so a reader that treats an undecodable file as "unreadable" (a cache miss, a result to recompute)
treats a refused one the same way. A missing file still raises FileNotFoundError; a malformed one still raises the
parser's own error (json.JSONDecodeError, yaml.YAMLError) for the caller to word.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.units import human_bytes

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Kind:
    """A kind of file: its name in messages and the largest size accepted."""
    label: str  # with its article: "a result JSON"
    max_bytes: int


# The largest legitimate file of each kind, with room to spare; anything larger is not that kind of file.
KINDS = {
    # The biggest built-in card (imagenet-1k: 1000 class names, 80 templates) is 17 KB; a card is typed by hand.
    "card": Kind("a model or dataset card (YAML)", 4 * MiB),
    # The toolkit's model YAMLs (vision_benchmark/resources/model/*.yaml) are a few KB each.
    "toolkit": Kind("an ELEVATER toolkit model YAML", 1 * MiB),
    # ImageNet-1K's predictions are 50M probabilities: ~0.5 GB as this harness exports them (6 decimals, ~10 bytes a
    # value), ~1.1 GB as the toolkit writes them (full float repr, ~22 bytes a value). 1.5 GiB holds both; a 2 GB
    # file is no predictions file of any ELEVATER set.
    "predictions": Kind("an ELEVATER predictions JSON", 3 * GiB // 2),
    # A result is a few KB, but one made with --skip-bad-images lists every image left out with its reason: all
    # 50,000 of ImageNet at ~200 bytes each is 10 MB.
    "result": Kind("a result JSON", 64 * MiB),
    # A cache entry's meta.json lists the rows it could not read with their reason: again at most ~10 MB.
    "cache meta": Kind("a cache meta.json", 64 * MiB),
    # crosscheck.json: a few numbers per dataset and protocol.
    "crosscheck": Kind("a cross-check JSON", 64 * MiB),
    # A test split's index: ImageNet-1K's iris index is 50,000 lines (~3 MB); a coco index adds ~100 bytes of JSON per
    # image. 256 MiB holds a million-image coco index.
    "index": Kind("a dataset index", 256 * MiB),
    # labels.txt: one class name a line (ImageNet: 1000 names, 30 KB).
    "label map": Kind("a label map", 16 * MiB),
    # An OpenCLIP or REACT-fork architecture config: the largest OpenCLIP ships is a few KB.
    "architecture config": Kind("an architecture config (JSON)", 1 * MiB),
    # A remembered sha256 (harness.core.hashing): 64 hex digits.
    "hash memo": Kind("a remembered file hash", 4 * KiB),
}
# Deepest nesting accepted. A predictions JSON nests 3 levels, a result or card fewer than 10; the JSON and YAML
# parsers recurse per level and fail near Python's recursion limit (1000).
MAX_DEPTH = 100
# Most values a YAML file may expand to (aliases repeat a node without copying it; walking or hashing the result
# expands them). The imagenet-1k card holds ~1,100 values.
MAX_YAML_VALUES = 1_000_000


class RefusedFile(HarnessError, ValueError):
    """A file not read, or not parsed, because of its type, size or nesting: one line naming the file, the limit
    and what was found."""


def _kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown file kind '{kind}'; one of {', '.join(KINDS)}") from None


def _type_name(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse_type(path: Path, mode: int, kind: Kind) -> RefusedFile:
    return RefusedFile(f"{path}: is {_type_name(mode)}, not a regular file; {kind.label} is read only from a "
                       f"regular file (nothing was read). Name the file itself.")


def _refuse_size(path: Path, size: int, kind: Kind, limit: int, grew: bool = False) -> RefusedFile:
    found = f"grew past {human_bytes(limit)} while being read" if grew else f"is {human_bytes(size)} ({size:,} bytes)"
    return RefusedFile(f"{path}: {found}, over the {human_bytes(limit)} limit for {kind.label} (nothing was "
                       f"parsed). Is this the right file?")


def read_bounded_bytes(path: str | os.PathLike, kind: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (default: the limit of ``kind``, see :data:`KINDS`)."""
    path = Path(path)
    spec = _kind(kind)
    limit = spec.max_bytes if max_bytes is None else max_bytes
    st = os.stat(path)  # FileNotFoundError / PermissionError for the caller, as a plain read would raise
    if not stat.S_ISREG(st.st_mode):
        raise _refuse_type(path, st.st_mode, spec)
    if st.st_size > limit:
        raise _refuse_size(path, st.st_size, spec, limit)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)  # what was opened, which may not be what was stat'ed
        if not stat.S_ISREG(st.st_mode):
            raise _refuse_type(path, st.st_mode, spec)
        if st.st_size > limit:
            raise _refuse_size(path, st.st_size, spec, limit)
        data = f.read(st.st_size + 1)  # one more byte than stat said: a file that grew is noticed
        while len(data) > st.st_size and len(data) <= limit:
            more = f.read(min(MiB, limit + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > limit:
        raise _refuse_size(path, len(data), spec, limit, grew=True)
    return data


def read_bounded_text(path: str | os.PathLike, kind: str, max_bytes: int | None = None) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (UnicodeDecodeError when it is not UTF-8)."""
    return read_bounded_bytes(path, kind, max_bytes).decode("utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# JSON

_JSON_KEEP = b'"[]{}'
_JSON_DROP = bytes(c for c in range(256) if c not in _JSON_KEEP)


def json_depth(raw: bytes | str, stop_at: int | None = None) -> int:
    """The deepest nesting of brackets (``[`` ``{``) outside strings in JSON text; an unclosed bracket counts as
    open to the end. Linear, at C speed: escaped backslashes and quotes are removed, then everything but quotes and
    brackets, and only what is left (a few bytes a row for a predictions file) is scanned, in bounded chunks.
    ``stop_at``: return as soon as the depth passes it."""
    import numpy as np

    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if b"\\" in data:  # escapes only occur inside strings: \\ first (so \\" is a backslash then a quote), then \"
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = data.translate(None, _JSON_DROP)
    depth = deepest = quotes = 0
    for start in range(0, len(data), MiB):
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(MiB, len(data) - start), offset=start)
        is_quote = chunk == ord('"')
        outside = (quotes + np.cumsum(is_quote)) % 2 == 0  # after an even number of quotes: not in a string
        step = (((chunk == ord("[")) | (chunk == ord("{"))).astype(np.int64)
                - ((chunk == ord("]")) | (chunk == ord("}"))))
        running = depth + np.cumsum(step * outside)
        deepest = max(deepest, int(running.max()))
        depth, quotes = int(running[-1]), quotes + int(is_quote.sum())
        if stop_at is not None and deepest > stop_at:
            break
    return deepest


def parse_json(raw: bytes | str, where: str | os.PathLike, kind: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` of text already read, after refusing nesting deeper than ``max_depth`` (a RefusedFile naming
    ``where``); json.JSONDecodeError for text that is not JSON."""
    import json

    depth = json_depth(raw, stop_at=max_depth)
    if depth > max_depth:
        raise RefusedFile(f"{where}: nests brackets more than {max_depth} levels deep, over the limit for "
                          f"{_kind(kind).label} (which nests a few levels; nothing was parsed). Is this the right "
                          f"file?")
    try:
        return json.loads(raw)
    except RecursionError:  # not reached after the depth check; kept so no traceback can escape
        raise RefusedFile(f"{where}: nests too deeply to parse (limit {max_depth} levels).") from None


def load_json(path: str | os.PathLike, kind: str, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON file read through :func:`read_bounded_bytes` and :func:`parse_json`."""
    return parse_json(read_bounded_bytes(path, kind, max_bytes), path, kind, max_depth)


# ----------------------------------------------------------------------------------------------------------------------
# YAML

def yaml_shape(data: Any, stop_at_values: int = MAX_YAML_VALUES) -> tuple[int, int]:
    """(deepest nesting, values counted) of parsed YAML, aliases expanded; iterative, and stops counting once
    ``stop_at_values`` is passed."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    deepest = count = 0
    while stack and count <= stop_at_values:
        node, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
    return deepest, count


def parse_yaml(text: str, where: str | os.PathLike, kind: str, max_depth: int = MAX_DEPTH,
               max_values: int = MAX_YAML_VALUES) -> Any:
    """``yaml.safe_load`` of text already read, refusing nesting deeper than ``max_depth`` and aliases that expand
    to more than ``max_values`` values (a RefusedFile naming ``where``); yaml.YAMLError for text that is not YAML."""
    import yaml

    label = _kind(kind).label
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise RefusedFile(f"{where}: nests more deeply than the YAML parser can follow (Python's recursion limit), "
                          f"far over the limit of {max_depth} levels for {label} (nothing was used). Is this "
                          f"the right file?") from None
    deepest, count = yaml_shape(data, max_values)
    if deepest > max_depth:
        raise RefusedFile(f"{where}: nests {deepest} levels deep, over the limit of {max_depth} for {label} (which "
                          f"nests a few levels; nothing was used). Is this the right file?")
    if count > max_values:
        raise RefusedFile(f"{where}: expands to more than {max_values:,} values (YAML aliases repeating "
                          f"aliases?), over the limit for {label} (nothing was used).")
    return data


def load_yaml(path: str | os.PathLike, kind: str, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """A YAML file read through :func:`read_bounded_text` and :func:`parse_yaml`."""
    return parse_yaml(read_bounded_text(path, kind, max_bytes), path, kind, max_depth)
