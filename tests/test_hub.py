"""sanitrace.hub against the local Hub server (tests/hub_server.py) with the real
huggingface_hub client: headers by Range, never weight bytes; a trace of the
header-only folder is the trace of the local copy; permanent errors are one line."""

import struct
from pathlib import Path

import pytest
from hub_server import HubServer

from sanitrace import plan as plan_ir
from sanitrace.fixtures import write_checkpoint
from sanitrace.hub import HubError, fetch_headers, open_repo, parse_repo_spec
from sanitrace.planner import build_plan
from sanitrace.tracer import ConvertOptions, trace

REPO = "org/tiny-moe"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return Path(write_checkpoint(str(tmp_path_factory.mktemp("hub") / "tiny-moe"), "qwen3_moe", shards=3,
                                 split_experts=True))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return str(tmp_path / "hf-cache")


def _header_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:8 + struct.unpack("<Q", data[:8])[0]]


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


@pytest.mark.parametrize("spec, parsed", [
    ("org/name", ("org/name", None)), ("org/name@main", ("org/name", "main")),
    ("org/na.me-2@refs/pr/1", ("org/na.me-2", "refs/pr/1")), ("./local", None), ("name", None),
])
def test_parse_repo_spec(spec, parsed):
    assert parse_repo_spec(spec) == parsed
