"""The local Hub server (tests/hub_server.py) speaks the API the real huggingface_hub client uses.

huggingface_hub reads HF_ENDPOINT (and HF_HUB_CACHE, HF_HUB_DISABLE_XET, ...) into
`huggingface_hub.constants` at import time, so setting the variables in a running
process does not redirect an already-imported client. In process, the tests pass
`endpoint=hub.endpoint` and `cache_dir=` explicitly (every API used accepts them);
one test runs the client in a subprocess with only HF_ENDPOINT / HF_HUB_CACHE set,
the way a user (or the issue-13 CLI) would. The variables are still set per test
with monkeypatch so that nothing falls back to ~/.cache or huggingface.co.
"""

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import HfApi, get_session, hf_hub_download, hf_hub_url, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers  # noqa: E402
from httpx2 import TransportError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer  # noqa: E402

from sanitrace.fixtures import write_checkpoint  # noqa: E402

REPO = "org/tiny-qwen3-moe"
SHARD = "model-00001-of-00002.safetensors"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return Path(write_checkpoint(str(tmp_path_factory.mktemp("hub") / "ckpt"), "qwen3_moe", shards=2))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh HF home and cache per test; the env points nowhere but here."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home / "hub"


@pytest.fixture
def hub(checkpoint, monkeypatch):
    with HubServer({REPO: str(checkpoint)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# 1 ------------------------------------------------------------------ downloads
def test_snapshot_download_reproduces_folder(hub, cache, checkpoint):
    path = snapshot_download(REPO, revision="main", endpoint=hub.endpoint, cache_dir=cache)
    assert Path(path).name == hub.sha(REPO)
    assert _files(Path(path)) == _files(checkpoint)
    kinds = {(r.method, r.path.split("?")[0].replace(hub.sha(REPO), "SHA").rsplit("/", 1)[0]) for r in hub.requests}
    assert kinds == {
        ("GET", f"/api/models/{REPO}/revision"),  # repo_info -> commit sha
        ("GET", f"/api/models/{REPO}/tree"),  # list_repo_tree(recursive=True)
        ("HEAD", f"/{REPO}/resolve/SHA"),  # get_hf_file_metadata per file
        ("GET", f"/{REPO}/resolve/SHA"),  # http_get per file
    }
    assert all(r.status == 200 for r in hub.requests)
    assert hub.bytes_sent >= sum(len(b) for b in _files(checkpoint).values())


def test_hf_endpoint_env_in_subprocess(hub, cache, checkpoint, tmp_path):
    """The env route: a fresh interpreter picks HF_ENDPOINT / HF_HUB_CACHE up at import."""
    out = tmp_path / "local"
    code = (
        "import sys, huggingface_hub as h\n"
        f"print(h.snapshot_download({REPO!r}, revision='main'))\n"
        f"print(h.hf_hub_download({REPO!r}, {SHARD!r}, local_dir={str(out)!r}))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    snap, local = proc.stdout.split()
    assert Path(snap).is_relative_to(cache)
    assert _files(Path(snap)) == _files(checkpoint)
    assert Path(local).read_bytes() == (checkpoint / SHARD).read_bytes()


def test_lfs_redirect_mode(checkpoint, cache):
    with HubServer({REPO: str(checkpoint)}, redirect_lfs=True) as hub:
        path = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)
        assert _files(Path(path)) == _files(checkpoint)
        resolves = [r for r in hub.requests if "/resolve/" in r.path and r.path.endswith(".safetensors")]
        assert resolves and all(r.method == "HEAD" and r.status == 302 for r in resolves)
        cdn = [r for r in hub.requests if r.path.startswith("/__cdn__/")]
        assert len(cdn) == 2 and all(r.method == "GET" and r.status == 200 for r in cdn)


# 2 ------------------------------------------------------------------ metadata
def test_model_info_files_metadata(hub, cache, checkpoint):
    api = HfApi(endpoint=hub.endpoint)
    info = api.model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.sha == hub.sha(REPO) and len(info.sha) == 40
    local = _files(checkpoint)
    assert {s.rfilename for s in info.siblings} == set(local)
    for s in info.siblings:
        assert s.size == len(local[s.rfilename])
        if s.rfilename.endswith(".safetensors"):
            assert s.lfs.sha256 == _sha256(local[s.rfilename]) and s.lfs.size == s.size
        else:
            assert s.lfs is None
    assert sorted(api.list_repo_files(REPO)) == sorted(local)
    bare = api.model_info(REPO)
    assert all(s.size is None for s in bare.siblings)


def test_moved_revision(hub, cache, checkpoint, tmp_path):
    api = HfApi(endpoint=hub.endpoint)
    old = api.model_info(REPO, revision="main").sha
    moved = tmp_path / "moved"
    write_checkpoint(str(moved), "qwen3_moe", shards=2, seed=1)
    new = hub.set_revision(REPO, "main", str(moved))
    assert new != old and api.model_info(REPO).sha == new
    assert api.model_info(REPO, revision=old).sha == old  # old commit still resolvable by sha
    got = hf_hub_download(REPO, SHARD, revision=old, endpoint=hub.endpoint, cache_dir=cache)
    assert Path(got).read_bytes() == (checkpoint / SHARD).read_bytes()


# 3 ------------------------------------------------------------------ Range reads
def test_range_read_of_safetensors_header(hub, cache, checkpoint):
    data = (checkpoint / SHARD).read_bytes()
    url = hf_hub_url(REPO, SHARD, revision="main", endpoint=hub.endpoint)
    session = get_session()
    head = session.head(url, headers=build_hf_headers())
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == hub.sha(REPO)
    assert head.headers["ETag"].strip('"') == _sha256(data)
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Accept-Ranges"] == "bytes"
    hub.reset_log()

    r = session.get(url, headers={**build_hf_headers(), "Range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == data[:8]
    assert r.headers["Content-Range"] == f"bytes 0-7/{len(data)}"
    (n,) = struct.unpack("<Q", r.content)
    r = session.get(url, headers={**build_hf_headers(), "Range": f"bytes=8-{8 + n - 1}"})
    assert r.status_code == 206 and r.content == data[8 : 8 + n]
    header = json.loads(r.content)
    assert all("dtype" in v and "data_offsets" in v for k, v in header.items() if k != "__metadata__")
    assert hub.bytes_sent == 8 + n
    assert [(q.range, q.status, q.nbytes) for q in hub.requests] == [
        ("bytes=0-7", 206, 8),
        (f"bytes=8-{8 + n - 1}", 206, n),
    ]
    r = session.get(url, headers={**build_hf_headers(), "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416


# 4 ------------------------------------------------------------------ errors
def test_errors_map_to_client_exceptions(checkpoint, cache):
    with HubServer(
        {REPO: str(checkpoint), "org/gated": str(checkpoint)}, gated={"org/gated"}, token="hf_secret"
    ) as hub:
        api = HfApi(endpoint=hub.endpoint)
        with pytest.raises(GatedRepoError):
            api.model_info("org/gated")
        with pytest.raises(GatedRepoError):
            hf_hub_download("org/gated", SHARD, endpoint=hub.endpoint, cache_dir=cache)
        assert api.model_info("org/gated", token="hf_secret").sha == hub.sha("org/gated")
        with pytest.raises(RepositoryNotFoundError) as e:
            api.model_info("org/missing")
        assert not isinstance(e.value, GatedRepoError)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("org/missing", "config.json", endpoint=hub.endpoint, cache_dir=cache)
        with pytest.raises(RevisionNotFoundError):
            api.model_info(REPO, revision="nope")
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download(REPO, "config.json", revision="nope", endpoint=hub.endpoint, cache_dir=cache)
        with pytest.raises(RevisionNotFoundError):
            snapshot_download(REPO, revision="nope", endpoint=hub.endpoint, cache_dir=cache)
        with pytest.raises(RemoteEntryNotFoundError) as e:
            hf_hub_download(REPO, "nope.safetensors", endpoint=hub.endpoint, cache_dir=cache)
        assert isinstance(e.value, EntryNotFoundError)
        statuses = {(r.path.split("?")[0], r.status) for r in hub.requests}
        assert ("/api/models/org/gated", 401) in statuses and ("/api/models/org/missing", 401) in statuses


# 5 ------------------------------------------------------------------ faults
def test_dropped_connection_is_retried_from_the_start(hub, cache, checkpoint):
    hub.faults.drop_after(1000, match=SHARD)
    got = hf_hub_download(REPO, SHARD, endpoint=hub.endpoint, cache_dir=cache)  # http_get sleeps 1 s, retries
    data = (checkpoint / SHARD).read_bytes()
    assert Path(got).read_bytes() == data
    gets = [(r.range, r.status, r.nbytes) for r in hub.requests if r.method == "GET" and SHARD in r.path]
    # http_get reads in DOWNLOAD_CHUNK_SIZE (10 MB) chunks: the 1000 bytes never reach the file, so
    # the retry resumes from 0, i.e. a plain GET again (a Range "bytes=N-" only after >= 1 chunk).
    assert gets == [(None, 200, 1000), (None, 200, len(data))]


def test_status_faults_then_cleared(hub, cache, checkpoint):
    api = HfApi(endpoint=hub.endpoint)
    # model_info makes one plain GET: an injected 500 surfaces as HfHubHTTPError (no retry).
    hub.faults.fail_next(1, status=500)
    with pytest.raises(HfHubHTTPError) as e:
        api.model_info(REPO)
    assert e.value.response.status_code == 500
    assert api.model_info(REPO).sha == hub.sha(REPO)
    # hf_hub_download: a 503 on the metadata HEAD is retried at once (retry_on_errors=True).
    hub.faults.fail_next(1, status=503, method="HEAD")
    got = hf_hub_download(REPO, "config.json", endpoint=hub.endpoint, cache_dir=cache)
    assert Path(got).read_bytes() == (checkpoint / "config.json").read_bytes()
    heads = [r.status for r in hub.requests if r.method == "HEAD"]
    assert heads == [503, 200]
    # The tree listing goes through http_backoff: a 429 with Retry-After: 0 is waited out (1 s).
    hub.faults.fail_next(1, status=429, retry_after=0, match="/tree/")
    assert sorted(api.list_repo_files(REPO)) == sorted(_files(checkpoint))
    trees = [r.status for r in hub.requests if "/tree/" in r.path]
    assert trees == [429, 200]
    # snapshot_download's repo_info is not retried either: with an empty cache it raises ...
    hub.faults.fail_next(1, status=503, match="/revision/")
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache.parent / "empty")
    # ... and with a cache holding only config.json (no tree listing cached), it silently
    # returns that partial snapshot folder.
    hub.faults.fail_next(1, status=503, match="/revision/")
    partial = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)
    assert sorted(os.listdir(partial)) == ["config.json"]
    hub.faults.clear()
    full = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)
    assert _files(Path(full)) == _files(checkpoint)


def test_corrupted_file_is_detectable(hub, cache, checkpoint):
    hub.faults.corrupt(SHARD)
    api = HfApi(endpoint=hub.endpoint)
    lfs = {s.rfilename: s.lfs for s in api.model_info(REPO, files_metadata=True).siblings}
    # The 2.4.0 client does not hash what it downloads: the corrupted bytes land in the cache.
    got = Path(hf_hub_download(REPO, SHARD, endpoint=hub.endpoint, cache_dir=cache)).read_bytes()
    data = (checkpoint / SHARD).read_bytes()
    assert len(got) == len(data) and got != data
    assert _sha256(got) != lfs[SHARD].sha256 == _sha256(data)
    # A range read of the header is unaffected (the flipped byte is the last one).
    url = hf_hub_url(REPO, SHARD, endpoint=hub.endpoint)
    assert get_session().get(url, headers={"Range": "bytes=0-7"}).content == data[:8]


def test_random_drops_are_mid_body_and_repeatable(checkpoint):
    """drop_randomly cuts each matching GET at a seeded point: the client sees a transport error."""
    size = (checkpoint / SHARD).stat().st_size
    cuts = []
    for _ in range(2):
        with HubServer({REPO: str(checkpoint)}) as hub:
            hub.faults.drop_randomly(3, match="*.safetensors", seed=7)
            url = hf_hub_url(REPO, SHARD, endpoint=hub.endpoint)
            for _ in range(3):
                with pytest.raises(TransportError):
                    get_session().get(url, headers={"Range": "bytes=100-"})
            assert get_session().get(url).content == (checkpoint / SHARD).read_bytes()  # 3 taken
            cuts.append([r.nbytes for r in hub.requests[:3]])
    assert cuts[0] == cuts[1] and len(set(cuts[0])) == 3 and all(n < size - 100 for n in cuts[0])


# 6 ------------------------------------------------------------------ lifecycle
def test_server_stops_at_exit(checkpoint):
    with HubServer({REPO: str(checkpoint)}) as hub:
        port = hub.port
        thread = hub._thread
        assert get_session().get(f"{hub.endpoint}/api/models/{REPO}").status_code == 200
    assert not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_sparse_giant_files_start_fast_and_are_not_lfs(tmp_path, cache):
    """20 sparse 4 GB shards (header bytes, then holes) are served as non-LFS files with a
    cheap blob id (see hub_server's docstring), so nothing reads their 80 GB of holes."""
    header = struct.pack("<Q", 64) + json.dumps({"__metadata__": {}}).encode().ljust(64)
    for i in range(20):
        with open(tmp_path / f"model-{i + 1:05d}-of-00020.safetensors", "wb") as f:
            f.write(header)
            f.truncate(4 << 30)
    (tmp_path / "config.json").write_text("{}")
    with HubServer({"org/giant": str(tmp_path)}) as hub:
        info = HfApi(endpoint=hub.endpoint).model_info("org/giant", files_metadata=True)
        name = "model-00020-of-00020.safetensors"
        head = get_session().head(hf_hub_url("org/giant", name, endpoint=hub.endpoint))
        first = get_session().get(
            hf_hub_url("org/giant", name, endpoint=hub.endpoint), headers={"Range": f"bytes=0-{len(header) - 1}"}
        )
    assert info.sha == hub.sha("org/giant") and len(info.siblings) == 21
    weights = [s for s in info.siblings if s.rfilename.endswith(".safetensors")]
    assert all(s.size == 4 << 30 and s.lfs is None for s in weights)
    blob = next(s.blob_id for s in weights if s.rfilename == name)
    assert head.headers["ETag"].strip('"') == blob and "X-Linked-Etag" not in head.headers
    assert first.status_code == 206 and first.content == header
