"""The loopback hub (tests/loopback_hub.py) against the real huggingface_hub: what other tests build on."""
from __future__ import annotations

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from huggingface_hub.utils import build_hf_headers, get_session


def _repo(hub) -> None:
    hub.add_file("org/r", "classnames.txt", b"a\nb\n")
    hub.add_file("org/r", "test/0.tar", bytes(range(256)) * 100)
    hub.add_file("org/r", "test/nshards.txt", b"1")


def test_metadata_downloads_and_snapshot(loopback_hub, tmp_path):
    hub = loopback_hub
    _repo(hub)
    api = HfApi()
    assert api.repo_info("org/r", repo_type="dataset").sha == hub.commit("org/r")
    tree = {f.path: f for f in api.list_repo_tree("org/r", repo_type="dataset", recursive=True)}
    assert set(tree) == {"classnames.txt", "test", "test/0.tar", "test/nshards.txt"}
    assert tree["test/0.tar"].lfs.sha256 == hub.sha256("org/r", "test/0.tar") and tree["classnames.txt"].lfs is None
    (info,) = api.get_paths_info("org/r", ["test/0.tar"], repo_type="dataset")
    assert info.size == 25600
    path = hf_hub_download("org/r", "test/0.tar", repo_type="dataset", local_dir=tmp_path / "d")
    assert open(path, "rb").read() == bytes(range(256)) * 100
    snapshot_download("org/r", repo_type="dataset", local_dir=tmp_path / "s")
    assert (tmp_path / "s" / "test" / "nshards.txt").read_text() == "1"
    hub.add_file("m/x", "cfg.json", b"{}", repo_type="model")
    assert open(hf_hub_download("m/x", "cfg.json", local_dir=tmp_path / "m")).read() == "{}"
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("org/missing", repo_type="dataset")


def test_gated_repo_needs_the_token(loopback_hub, tmp_path, monkeypatch):
    hub = loopback_hub
    _repo(hub)
    hub.gated.add("org/r")
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/r", "classnames.txt", repo_type="dataset", local_dir=tmp_path / "g")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert open(hf_hub_download("org/r", "classnames.txt", repo_type="dataset", local_dir=tmp_path / "g")).read() \
        == "a\nb\n"


def test_ranges_and_faults(loopback_hub):
    hub = loopback_hub
    _repo(hub)
    url = f"{hub.url}/datasets/org/r/resolve/main/test/0.tar"
    r = get_session().get(url, headers={**build_hf_headers(), "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == bytes(range(10, 20))
    assert r.headers["Content-Range"] == "bytes 10-19/25600"
    assert hub.gets("org/r", "test/0.tar")[-1].sent == 10
    hub.fault("org/r", "test/0.tar", "truncate", n=100, times=1)
    assert len(get_session().get(url).content) == 100
    assert len(get_session().get(url).content) == 25600  # times=1: the next request is whole
    hub.fault("org/r", "test/0.tar", "drop", n=100)
    with pytest.raises(httpx2.RemoteProtocolError):
        get_session().get(url).read()
    hub.fault("org/r", "test/0.tar", "status", status=503)
    assert get_session().get(url).status_code == 503
    hub.clear_faults()
    hub.ranges = False
    r = get_session().get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 200 and len(r.content) == 25600 and "Accept-Ranges" not in r.headers


def test_lfs_files_through_the_cdn_redirect(loopback_hub, tmp_path):
    hub = loopback_hub
    _repo(hub)
    hub.lfs_redirect = True
    path = hf_hub_download("org/r", "test/0.tar", repo_type="dataset", local_dir=tmp_path / "d")
    assert open(path, "rb").read() == bytes(range(256)) * 100
    r = get_session().get(f"{hub.url}/datasets/org/r/resolve/main/test/0.tar", headers={"Range": "bytes=5-9"})
    assert r.status_code == 206 and r.content == bytes(range(5, 10)) and r.history[0].status_code == 302
    assert [g.range for g in hub.gets("org/r", "test/0.tar")][-1] == "bytes=5-9"
