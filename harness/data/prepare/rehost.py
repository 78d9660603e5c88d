"""The ELEVATER re-host (``OFA-Sys/chinese-clip-eval``, ``ELEVATER_all.zip``, ~37 GB): only the asked datasets' test
members, read out of the remote zip over HTTP Range requests.

The zip holds one zip per dataset (``<member>.zip``, possibly under a folder), whose entries are
``<member>/label.txt``, ``<member>/index.json``, ``<member>/test/<class id>/<image>`` (and ``train/``, not fetched).
Per dataset: the outer zip's central directory gives the inner zip's place; a stored inner zip is opened in place (a
window of the remote file), a compressed one is streamed out whole (that dataset's bytes only); the inner directory
gives the test members' byte ranges, which are fetched in merged runs and written, CRC-checked by ``zipfile``, into
``<member>.zip`` in the staging folder (entries ``<member>/...``, the layout the re-host reader reads). An outer zip
holding the folders themselves (``<member>/test/...``) is read the same way. When the server ignores Range requests
this says so in one line; ``whole_zip`` then downloads the whole zip (resumably) and reads the members from it.
"""
from __future__ import annotations

import logging
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data.prepare.hub import HubClient, HubError, RepoSnapshot
from harness.data.prepare.remote_zip import RangeFile, SubFile, no_ranges_line, probe_ranges

logger = logging.getLogger(__name__)

REHOST_FILE = "ELEVATER_all.zip"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zipfile's structFileHeader: signature ... name length, extra length
WANTED_TOP = ("label.txt", "label_cn.txt", "index.json")
MERGE_GAP = 1 << 20  # members closer than this are fetched in one request (the gap's bytes are read too)


@dataclass
class MemberPlan:
    """Where one dataset sits in the remote zip and what of it is fetched."""
    member: str
    inner_name: str | None  # the inner zip's entry name; None when the outer zip holds the folder itself
    prefix: str  # entry prefix up to and including "<member>/" inside the zip that holds the entries
    entries: list[zipfile.ZipInfo] = field(default_factory=list)
    stored: bool = True  # the inner zip is stored (read in place), else streamed out whole

    @property
    def bytes(self) -> int:
        return sum(i.compress_size for i in self.entries)


def _wanted(rel: str) -> bool:
    return rel in WANTED_TOP or (rel.startswith("test/") and not rel.endswith("/"))


def _find(outer: zipfile.ZipFile, member: str) -> tuple[str | None, str]:
    """(inner zip entry, prefix) of a dataset in the outer zip, or raise naming what is there."""
    names = outer.namelist()
    for name in names:
        if name.rsplit("/", 1)[-1] == f"{member}.zip":
            return name, ""
    for name in names:
        head, sep, _ = name.partition(f"{member}/")
        if sep and (not head or head.endswith("/")):
            return None, head + f"{member}/"
    zips = sorted(n.rsplit("/", 1)[-1].removesuffix(".zip") for n in names if n.endswith(".zip"))
    raise HubError(f"{REHOST_FILE}: holds no '{member}.zip' or '{member}/' folder (it holds "
                   f"{', '.join(zips[:25]) or 'no zips'}) — the re-host's layout differs from what the sources data "
                   f"says; use --source clip-benchmark for this dataset", "not-found")


def _data_offset(f: Any, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    header = f.read(LOCAL_HEADER.size)
    fields = LOCAL_HEADER.unpack(header)
    if fields[0] != b"PK\x03\x04":
        raise HubError(f"{REHOST_FILE}: entry {info.filename} has no local header where the directory says — a "
                       f"damaged zip", "corrupt")
    return info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10]


class RehostReader:
    """The remote ``ELEVATER_all.zip`` of a snapshot, opened once (its central directory read over ranges)."""

    def __init__(self, client: HubClient, snap: RepoSnapshot, staging: Path, *, whole_zip: bool = False,
                 merge_gap: int = MERGE_GAP, min_fetch: int | None = None, final_dir: Path | None = None):
        self.client, self.snap, self.staging, self.whole_zip = client, snap, staging, whole_zip
        self.merge_gap = merge_gap
        remote = snap.files.get(REHOST_FILE)
        if remote is None:
            raise HubError(f"{snap.repo}: no {REHOST_FILE} at {snap.short} — the re-host's layout changed",
                           "not-found", snap.repo, REHOST_FILE)
        self.remote = remote
        name = f"{snap.repo}/{REHOST_FILE}"
        url, headers = client.url(snap, REHOST_FILE), client.headers()
        self.range_file: RangeFile | None = None
        if probe_ranges(url, headers, name, timeout=client.timeout()):
            kwargs = {} if min_fetch is None else {"min_fetch": min_fetch}
            self.range_file = RangeFile(url, remote.size, headers, name, timeout=client.timeout(), **kwargs)
            source: Any = self.range_file
        elif whole_zip:  # the whole zip, resumable and verified, kept under DATA_ROOT/<org>/<repo>/ for next time
            whole = (final_dir or staging) / REHOST_FILE
            if not (whole.is_file() and whole.stat().st_size == remote.size):
                logger.info("%s: the server ignores Range requests: downloading the whole zip (--whole-zip)", name)
                client.fetch(snap, REHOST_FILE, staging)
                whole.parent.mkdir(parents=True, exist_ok=True)
                (staging / (REHOST_FILE + ".part")).replace(whole)
            source = open(whole, "rb")
        else:
            raise HubError(no_ranges_line(name), "no-ranges", snap.repo, REHOST_FILE)
        self.source = source
        try:
            self.outer = zipfile.ZipFile(source)
        except zipfile.BadZipFile as exc:
            raise HubError(f"{name}: not a readable zip ({exc}) — a damaged upload or a mirror serving something "
                           f"else", "corrupt", snap.repo, REHOST_FILE) from exc

    @property
    def transferred(self) -> int:
        return self.range_file.transferred if self.range_file is not None else self.remote.size

    def plan(self, member: str) -> tuple[MemberPlan, zipfile.ZipFile]:
        """The dataset's place and test members (reads the inner directory when the inner zip is stored)."""
        inner_name, prefix = _find(self.outer, member)
        if inner_name is None:
            zf = self.outer
            base_prefix = prefix
            plan = MemberPlan(member, None, prefix)
        else:
            info = self.outer.getinfo(inner_name)
            if info.compress_type == zipfile.ZIP_STORED:
                start = _data_offset(self.source, info)
                zf = zipfile.ZipFile(SubFile(self.source, start, info.compress_size, inner_name))
                plan = MemberPlan(member, inner_name, "")
            else:  # compressed inside the outer zip: this dataset's zip is streamed out whole
                local = self.staging / f".{member}.inner.zip"
                local.parent.mkdir(parents=True, exist_ok=True)
                logger.info("%s: %s is compressed inside %s: reading it whole (%d bytes)", member, inner_name,
                            REHOST_FILE, info.compress_size)
                with self.outer.open(info) as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                zf = zipfile.ZipFile(local)
                plan = MemberPlan(member, inner_name, "", stored=False)
            base_prefix = ""
            tops = {n.split("/", 1)[0] + "/" for n in zf.namelist() if "/" in n}
            if f"{member}/" in tops:
                base_prefix = f"{member}/"
            elif len(tops) == 1:
                base_prefix = tops.pop()
            plan.prefix = base_prefix
        plan.entries = sorted((i for i in zf.infolist() if i.filename.startswith(plan.prefix)
                               and _wanted(i.filename[len(plan.prefix):])), key=lambda i: i.header_offset)
        if not any(i.filename[len(plan.prefix):].startswith("test/") for i in plan.entries):
            raise HubError(f"{REHOST_FILE}: {inner_name or prefix} holds no test/ images — not the layout the "
                           f"sources data describes; use --source clip-benchmark for {member}", "not-found")
        return plan, zf

    def fetch(self, member: str) -> tuple[Path, MemberPlan]:
        """Write ``staging/<member>.zip`` (entries ``<member>/...``) from the remote members; returns its path."""
        plan, zf = self.plan(member)
        if self.range_file is not None and plan.stored:
            base = 0
            if plan.inner_name is not None:
                base = _data_offset(self.source, self.outer.getinfo(plan.inner_name))
            self.range_file.plan([(base + i.header_offset,
                                   base + i.header_offset + LOCAL_HEADER.size + len(i.filename.encode("utf-8"))
                                   + len(i.extra) + 64 + i.compress_size) for i in plan.entries], gap=self.merge_gap)
        target = self.staging / f"{member}.zip"
        part = target.with_name(target.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as out:
                for info in plan.entries:
                    try:
                        data = zf.read(info)  # CRC-checked by zipfile
                    except (zipfile.BadZipFile, EOFError) as exc:
                        raise HubError(f"{REHOST_FILE}: {info.filename} fails its check ({exc}) — a damaged zip or "
                                       f"transfer; nothing was kept, rerun prepare", "corrupt") from exc
                    out.writestr(f"{member}/" + info.filename[len(plan.prefix):], data)
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)
            if self.range_file is not None:
                self.range_file.plan([])
            if not plan.stored:
                (self.staging / f".{member}.inner.zip").unlink(missing_ok=True)
        return target, plan

    def close(self) -> None:
        self.outer.close()
        if self.range_file is None and hasattr(self.source, "close"):
            self.source.close()
