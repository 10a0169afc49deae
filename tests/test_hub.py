"""sanitrace.hub against the local Hub server (tests/hub_server.py) with the real
huggingface_hub client: headers by Range, never weight bytes; a trace of the
header-only folder is the trace of the local copy; whole files streamed, resumed
and verified; permanent errors are one line."""

import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import hf_hub_download
from hub_server import HubServer
from safetensors.numpy import save_file

from sanitrace import plan as plan_ir
from sanitrace.fixtures import write_checkpoint
from sanitrace.hub import HubError, RemoteFile, fetch_headers, open_repo, parse_repo_spec
from sanitrace.hub_download import DOWNLOAD_WRITE_BYTES, cached_file, download_file
from sanitrace.planner import build_plan
from sanitrace.tracer import ConvertOptions, trace

REPO = "org/tiny-moe"
BIG = "org/big"
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return Path(
        write_checkpoint(str(tmp_path_factory.mktemp("hub") / "tiny-moe"), "qwen3_moe", shards=3, split_experts=True)
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A folder with a 12 MiB safetensors file (random bytes) and a config."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    save_file({f"w{i}": rng.integers(0, 256, (1 << 20, 4), dtype=np.uint8) for i in range(3)}, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return str(tmp_path / "hf-cache")


def _header_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: 8 + struct.unpack("<Q", data[:8])[0]]


def test_headers_only_and_the_trace_equals_the_local_one(checkpoint, cache, tmp_path):
    with HubServer({REPO: str(checkpoint)}) as hub:
        repo = open_repo(REPO, endpoint=hub.endpoint)
        hub.reset_log()
        fetch_headers(repo, str(tmp_path / "remote"), cache_dir=cache)
        sent = hub.bytes_sent
    shards = sorted(checkpoint.glob("*.safetensors"))
    assert len(shards) >= 2
    small = sum(p.stat().st_size for p in checkpoint.iterdir() if not p.name.endswith(".safetensors"))
    headers = sum(len(_header_bytes(p)) for p in shards)
    # each shard: its 8-byte length, then its header; every small file once
    assert sent == headers + small, hub.requests
    assert sent <= 1.1 * (headers + small)
    for p in shards:
        copy = tmp_path / "remote" / p.name
        assert copy.stat().st_size == p.stat().st_size and _header_bytes(copy) == _header_bytes(p)
        assert copy.stat().st_blocks * 512 < p.stat().st_size  # sparse: no weight bytes stored
    local = build_plan(trace(str(checkpoint), ConvertOptions(quantize=True)))
    remote = build_plan(trace(str(tmp_path / "remote"), ConvertOptions(quantize=True)))
    assert plan_ir.dumps(remote) == plan_ir.dumps(local)


def test_permanent_errors_are_one_line(checkpoint, cache):
    with HubServer({REPO: str(checkpoint), "org/gated": str(checkpoint)}, gated=["org/gated"], token="t") as hub:
        cases = {
            ("org/gated", None): "org/gated: gated: accept its conditions on the Hub and set HF_TOKEN",
            ("org/nope", None): "org/nope: no such repo (or private: set HF_TOKEN)",
            (REPO, "v9"): f"{REPO}@v9: no such revision",
        }
        for (repo_id, revision), message in cases.items():
            with pytest.raises(HubError) as error:
                open_repo(repo_id, revision, endpoint=hub.endpoint)
            assert str(error.value) == message


def test_transient_errors_are_retried(checkpoint, cache, tmp_path):
    with HubServer({REPO: str(checkpoint)}) as hub:
        repo = open_repo(REPO, endpoint=hub.endpoint)
        hub.faults.fail_next(2, 503, match=".safetensors")
        fetch_headers(repo, str(tmp_path / "remote"), cache_dir=cache)
        assert [r.status for r in hub.requests if r.status == 503] == [503, 503]
    for p in checkpoint.glob("*.safetensors"):
        assert _header_bytes(tmp_path / "remote" / p.name) == _header_bytes(p)


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("org/name", ("org/name", None)),
        ("org/name@main", ("org/name", "main")),
        ("org/na.me-2@refs/pr/1", ("org/na.me-2", "refs/pr/1")),
        ("./local", None),
        ("name", None),
    ],
)
def test_parse_repo_spec(spec, parsed):
    assert parse_repo_spec(spec) == parsed


def test_the_first_header_failure_in_name_order_is_raised(checkpoint, cache, tmp_path):
    shards = sorted(p.name for p in checkpoint.glob("*.safetensors"))
    with HubServer({REPO: str(checkpoint)}) as hub:
        repo = open_repo(REPO, endpoint=hub.endpoint)
        hub.faults.fail_next(1, 403, match=shards[-1])
        hub.faults.fail_next(1, 403, match=shards[0])
        with pytest.raises(HubError) as error:
            fetch_headers(repo, str(tmp_path / "remote"), cache_dir=cache)
    assert str(error.value).startswith(f"{REPO}: {shards[0]}: ") and "\n" not in str(error.value)


def test_headers_of_a_giant_sparse_checkpoint(tmp_path, cache):
    """163 shards of 4.3 GB, all holes but the header: the server hashes none; fetch_headers reads
    headers only (how fast, with several at once: bench/hub_trace.py; no timing in tests)."""
    src, size, count = tmp_path / "giant", 4_300_000_000, 163
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    headers = 0
    for i in range(count):
        body = json.dumps({f"w{i}": {"dtype": "U8", "shape": [size - 1024], "data_offsets": [0, size - 1024]}})
        header = struct.pack("<Q", 1024 - 8) + body.encode().ljust(1024 - 8)
        with open(src / f"model-{i + 1:05d}-of-{count:05d}.safetensors", "wb") as f:
            f.write(header)
            f.truncate(size)
        headers += len(header)
    with HubServer({"org/giant": str(src)}) as hub:
        repo = open_repo("org/giant", endpoint=hub.endpoint)
        assert all(f.sha256 is None for f in repo.files.values())
        hub.reset_log()
        fetch_headers(repo, str(tmp_path / "remote"), cache_dir=cache)
        assert hub.bytes_sent == headers + (src / "config.json").stat().st_size
    copy = tmp_path / "remote" / "model-00163-of-00163.safetensors"
    with open(copy, "rb") as f:
        assert f.read(1024) == header
    assert copy.stat().st_size == size and copy.stat().st_blocks * 512 < size // 100


# ------------------------------------------------------------------ download_file
@pytest.mark.parametrize("redirect_lfs", [False, True])
def test_download_file_streams_the_file_once(big, cache, tmp_path, redirect_lfs):
    data = (big / WEIGHTS).read_bytes()
    dest = tmp_path / WEIGHTS
    with HubServer({BIG: str(big)}, redirect_lfs=redirect_lfs) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        hub.reset_log()
        reported = []
        download_file(repo, WEIGHTS, str(dest), on_bytes=reported.append)
        assert hub.bytes_sent == len(data)
        statuses = [(r.method, r.range, r.status) for r in hub.requests]
    assert statuses == [("GET", None, 302)] * redirect_lfs + [("GET", None, 200)]
    assert dest.read_bytes() == data and not Path(f"{dest}.incomplete").exists()
    assert sum(reported) == len(data) and len(reported) >= 2 and max(reported) < 2 * DOWNLOAD_WRITE_BYTES


@pytest.mark.parametrize("redirect_lfs", [False, True])
def test_dropped_connections_resume_where_the_file_ends(big, cache, tmp_path, redirect_lfs):
    """Five drops at random points: each retry asks for the bytes after those on disk (through the CDN too)."""
    data = (big / WEIGHTS).read_bytes()
    dest = tmp_path / WEIGHTS
    on_disk = []  # the .incomplete file's size each time bytes are reported
    with HubServer({BIG: str(big)}, redirect_lfs=redirect_lfs) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        hub.reset_log()
        hub.faults.drop_randomly(5, match="*.safetensors", seed=3)
        download_file(
            repo, WEIGHTS, str(dest), on_bytes=lambda n: on_disk.append(os.path.getsize(f"{dest}.incomplete"))
        )
        gets = [r for r in hub.requests if r.status != 302]
        sent = hub.bytes_sent
    assert dest.read_bytes() == data
    assert len(gets) == 6 and gets[0].range is None and [r.status for r in gets] == [200] + [206] * 5
    assert len(data) <= sent <= 1.05 * len(data)
    starts = [0] + [int(r.range[len("bytes=") : -1]) for r in gets[1:]]
    assert all(r.range == f"bytes={start}-" for r, start in zip(gets[1:], starts[1:]))
    for before, start, after in zip(gets, starts, starts[1:]):
        assert after in on_disk and start <= after <= start + before.nbytes
    assert len(set(starts)) >= 3  # the drops were at different points


@pytest.mark.parametrize("status, retry_after, k", [(429, 0, 2), (503, 1, 1), (502, None, 2)])
def test_busy_answers_are_retried(big, cache, tmp_path, status, retry_after, k):
    dest = tmp_path / WEIGHTS
    with HubServer({BIG: str(big)}) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        hub.reset_log()
        hub.faults.fail_next(k, status, retry_after, match=WEIGHTS)
        download_file(repo, WEIGHTS, str(dest))
        assert [r.status for r in hub.requests] == [status] * k + [200]
    assert dest.read_bytes() == (big / WEIGHTS).read_bytes()


def test_giving_up_is_one_line(big, cache, tmp_path):
    dest = tmp_path / WEIGHTS
    with HubServer({BIG: str(big)}) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        hub.faults.fail_next(5, 503, retry_after=0, match=WEIGHTS)
        with pytest.raises(HubError) as error:
            download_file(repo, WEIGHTS, str(dest), attempts=3)
    assert str(error.value) == f"{BIG}: {WEIGHTS}: HTTP 503 (3 attempts in a row without progress)"
    assert not dest.exists() and not Path(f"{dest}.incomplete").exists()


@pytest.mark.parametrize("ignore_range", [False, True])
def test_a_killed_run_is_continued(big, cache, tmp_path, ignore_range):
    """Half the file is in .incomplete: only the rest is asked for (all of it again if the Range is ignored)."""
    data = (big / WEIGHTS).read_bytes()
    half = len(data) // 2 + 123
    dest = tmp_path / WEIGHTS
    Path(f"{dest}.incomplete").write_bytes(data[:half])
    with HubServer({BIG: str(big)}) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        hub.reset_log()
        if ignore_range:
            hub.faults.ignore_range(1, match=WEIGHTS)
        reported = []
        download_file(repo, WEIGHTS, str(dest), on_bytes=reported.append)
        fetched = len(data) if ignore_range else len(data) - half
        assert [(r.range, r.status) for r in hub.requests] == [(f"bytes={half}-", 200 if ignore_range else 206)]
        assert hub.bytes_sent == fetched
    assert dest.read_bytes() == data and sum(reported) == fetched


def test_a_corrupted_download_is_deleted(big, cache, tmp_path):
    dest = tmp_path / WEIGHTS
    with HubServer({BIG: str(big)}) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        hub.faults.corrupt(WEIGHTS)
        with pytest.raises(HubError) as error:
            download_file(repo, WEIGHTS, str(dest))
    want = repo.files[WEIGHTS].sha256
    assert str(error.value).startswith(f"{BIG}: {WEIGHTS}: corrupted download: sha256 ")
    assert str(error.value).endswith(f", the Hub says {want[:12]}...") and "\n" not in str(error.value)
    assert not dest.exists() and not Path(f"{dest}.incomplete").exists()


def test_download_permanent_errors_are_one_line(big, cache, tmp_path, monkeypatch):
    dest = tmp_path / "out" / WEIGHTS
    dest.parent.mkdir()
    with HubServer({BIG: str(big), "org/gated": str(big)}, gated=["org/gated"], token="hf_t") as hub:
        monkeypatch.setenv("HF_TOKEN", "hf_t")
        gated = open_repo("org/gated", endpoint=hub.endpoint)
        download_file(gated, "config.json", str(tmp_path / "config.json"))  # with the token
        monkeypatch.delenv("HF_TOKEN")
        repo = open_repo(BIG, endpoint=hub.endpoint)
        nope = RemoteFile("nope.safetensors", 10, None)
        cases = [
            (gated, WEIGHTS, f"org/gated: {WEIGHTS}: gated: accept its conditions on the Hub and set HF_TOKEN"),
            (
                replace(repo, repo_id="org/nope"),
                WEIGHTS,
                f"org/nope: {WEIGHTS}: no such repo (or private: set HF_TOKEN)",
            ),
            (replace(repo, revision="v9", commit="0" * 40), WEIGHTS, f"{BIG}@v9: {WEIGHTS}: no such revision"),
            (replace(repo, files={**repo.files, nope.name: nope}), nope.name, f"{BIG}: {nope.name}: no such file"),
            (repo, "absent.json", f"{BIG}: absent.json: no such file"),
        ]
        for remote, name, message in cases:
            with pytest.raises(HubError) as error:
                download_file(remote, name, str(dest))
            assert str(error.value) == message
            assert os.listdir(dest.parent) == []
    assert (tmp_path / "config.json").read_bytes() == (big / "config.json").read_bytes()


def test_cached_file(big, cache, tmp_path):
    with HubServer({BIG: str(big)}) as hub:
        repo = open_repo(BIG, endpoint=hub.endpoint)
        local = hf_hub_download(BIG, "config.json", cache_dir=cache, endpoint=hub.endpoint)
    assert cached_file(repo, "config.json", cache_dir=cache) == local
    assert cached_file(repo, WEIGHTS, cache_dir=cache) is None
    resized = replace(repo, files={**repo.files, "config.json": RemoteFile("config.json", 1, None)})
    assert cached_file(resized, "config.json", cache_dir=cache) is None
    assert cached_file(replace(repo, commit="0" * 40), "config.json", cache_dir=cache) is None
