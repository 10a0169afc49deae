"""Converting straight from the Hub: a remote trace (headers by Range) and a
streaming execute (whole shards, in schedule order, deleted after their last
group, within --disk-budget), against the local Hub server with the real
huggingface_hub client. The oracle is the library's own eager conversion of
the same repo id through the same server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import HubServer

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.executor import execute
from sanitrace.executor.hub_source import STAGING
from sanitrace.executor.schedule import schedule
from sanitrace.fixtures import write_checkpoint
from sanitrace.hub import open_repo

pytestmark = pytest.mark.slow  # the libraries' own conversion is the oracle

REPO = "org/tiny-moe"
CARD = "---\nlicense: apache-2.0\ntags:\n- moe\n---\n# tiny-moe\n\nA tiny test model.\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Four shards; the last layer's experts are split across two of them."""
    folder = Path(
        write_checkpoint(
            str(tmp_path_factory.mktemp("hubstream") / "tiny-moe"), "qwen3_moe", shards=4, split_experts=True
        )
    )
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture
def hub(checkpoint):
    with HubServer({REPO: str(checkpoint), "org/gated": str(checkpoint)}, gated=["org/gated"]) as server:
        yield server


def env_for(hub: HubServer, cache: Path) -> dict:
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(cache),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_OFFLINE", None)
    return env


def sanitrace(*argv, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sanitrace", *argv], cwd=cwd, env=env, capture_output=True, text=True)


def errors(proc: subprocess.CompletedProcess) -> list:
    return [line for line in proc.stderr.splitlines() if line.startswith("sanitrace") and "warning" not in line]


def shard_gets(hub: HubServer) -> dict:
    """Bytes the server sent per safetensors file, for GETs of their data."""
    sent = {}
    for r in hub.requests:
        if r.method == "GET" and r.path.endswith(".safetensors") and "/resolve/" in r.path:
            name = r.path.rsplit("/", 1)[-1]
            sent[name] = sent.get(name, 0) + r.nbytes
    return sent


def source_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def eager_from_hub(checkpoint, tmp_path_factory):
    """mlx_lm.convert --hf-path REPO -q through the same server: the oracle."""
    work = tmp_path_factory.mktemp("eager-hub")
    with HubServer({REPO: str(checkpoint)}) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", REPO, "--mlx-path", str(work / "out"), "-q"],
            env=env_for(server, work / "hf"),
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work / "out"


def test_convert_from_the_hub_is_eager_from_the_hub_in_bounded_disk(hub, checkpoint, eager_from_hub, tmp_path):
    budget = max(p.stat().st_size for p in checkpoint.glob("*.safetensors")) * 2
    proc = sanitrace(
        "convert",
        "--hf-path",
        REPO,
        "--mlx-path",
        "out",
        "-q",
        "--disk-budget",
        str(budget),
        "--no-progress",
        env=env_for(hub, tmp_path / "hf"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert compare_folders(str(eager_from_hub), str(out)) == []
    # the model card as eager from a repo id writes it (base_model, the source card's metadata)
    assert (out / "README.md").read_bytes() == (eager_from_hub / "README.md").read_bytes()
    assert "base_model: org/tiny-moe" in (out / "README.md").read_text()
    assert not (out / STAGING).exists() and not (tmp_path / "out.partial").exists()
    # before any weight byte: what will be downloaded and the disk needed
    head = proc.stdout[: proc.stdout.index("executing plan")]
    assert "  download " in head and "  disk needed " in head
    # each shard downloaded once, whole, in one request
    sent = shard_gets(hub)
    for p in checkpoint.glob("*.safetensors"):
        gets = data_gets(hub, p.name)
        assert len(gets) == 1 and gets[0].nbytes == p.stat().st_size, p.name
    assert sum(sent.values()) <= 1.05 * source_bytes(checkpoint)
    assert "downloaded" in proc.stdout and "peak local source" in proc.stdout


def test_streaming_holds_at_most_the_disk_budget_and_fetches_no_shard_twice(hub, checkpoint, tmp_path):
    """In process: the schedule's peak is what is held; a smaller budget is one line."""
    repo = open_repo(REPO, endpoint=hub.endpoint)
    plan = plan_ir.load(str(_plan(hub, tmp_path)))
    sizes = {i: f.size for i, f in enumerate(plan.source.files)}
    order = schedule(plan, range(len(plan.groups)), sizes)
    assert sorted(order.fetch) == list(range(len(plan.source.files)))  # each file once
    split = [g for g, files in order.reads.items() if len(files) > 1]
    assert split, "the fixture's split experts read two shards"
    hub.reset_log()
    summary = execute(plan, repo, str(tmp_path / "out"), progress=False, disk_budget=order.peak)
    assert summary.peak_source_disk <= order.peak
    assert summary.downloaded == sum(sizes.values())
    assert sum(shard_gets(hub).values()) <= 1.05 * source_bytes(checkpoint)
    from sanitrace.executor import DiskBudgetError

    with pytest.raises(DiskBudgetError, match="the smallest disk budget for this plan is"):
        execute(plan, repo, str(tmp_path / "out2"), progress=False, disk_budget=order.peak - 1)
    assert not (tmp_path / "out2.partial").exists()


def _plan(hub: HubServer, tmp_path: Path) -> Path:
    proc = sanitrace("trace", REPO, "-o", "plan.msgpack", "-q", env=env_for(hub, tmp_path / "hf-trace"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "plan.msgpack"


def test_remote_trace_reads_headers_only_and_is_the_trace_of_a_local_copy(hub, checkpoint, tmp_path):
    """The plan from remote headers is the plan traced from the repo downloaded
    into the cache (offline: the same input, a local copy), but for the one
    thing the library itself records differently offline: the re-saved
    tokenizer_config.json's local_files_only."""
    import json

    from huggingface_hub import snapshot_download

    plan = _plan(hub, tmp_path)
    weights = source_bytes(checkpoint)
    assert sum(shard_gets(hub).values()) < 0.05 * weights  # headers only
    cache = tmp_path / "hf-local"
    snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=str(cache / "hub"))
    env = dict(env_for(hub, cache), HF_HUB_OFFLINE="1")
    proc = sanitrace("trace", REPO, "-o", "local.msgpack", "-q", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    remote, local = plan_ir.load(str(plan)), plan_ir.load(str(tmp_path / "local.msgpack"))
    differ = [(a, b) for a, b in zip(remote.files, local.files) if a != b]
    assert [a.name for a, _ in differ] == ["tokenizer_config.json"] and len(remote.files) == len(local.files)
    a, b = (json.loads(f.data) for f in differ[0])
    assert (a.pop("local_files_only"), b.pop("local_files_only")) == (False, True) and a == b
    same = [remote.graph.rows == local.graph.rows, remote.outputs == local.outputs, remote.source == local.source]
    assert all(same)
    # retrace, from the plan alone (no network), keeps the repo's model card
    proc = sanitrace("retrace", str(plan), env=dict(env, HF_ENDPOINT="http://127.0.0.1:9"), cwd=tmp_path)
    assert proc.returncode == 0 and "fresh" in proc.stdout, proc.stdout + proc.stderr


def data_gets(hub: HubServer, name: str) -> list:
    """The GETs of a file's data (whole, or resumed from an offset: not header reads)."""
    return [
        r
        for r in hub.requests
        if r.method == "GET" and r.path.endswith("/" + name) and (r.range is None or r.range.endswith("-"))
    ]


def test_dropped_connections_and_a_kill_resume_to_the_same_output(hub, checkpoint, eager_from_hub, tmp_path):
    env = env_for(hub, tmp_path / "hf")
    plan = _plan(hub, tmp_path)
    hub.reset_log()
    hub.faults.delay(0.3, k=100, match=".safetensors", method="GET")  # room to kill it mid-run
    hub.faults.drop_randomly(6, match=".safetensors", seed=1, min_length=16384)
    argv = [sys.executable, "-m", "sanitrace", "execute", str(plan), "--source", REPO, "--out", "out", "--no-progress"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = tmp_path / "out.partial" / STAGING
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if staging.exists() and any(p.suffix == ".safetensors" for p in staging.iterdir()):
            break  # a first shard is downloaded and verified
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    done = sanitrace(
        "execute", str(plan), "--source", REPO, "--out", "out", "--no-progress", "--resume", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert hub.faults.dropped >= 5
    assert compare_folders(str(eager_from_hub), str(tmp_path / "out")) == []
    assert not (tmp_path / "out.partial").exists()
    # every shard's data sent once: a drop or the kill loses at most the bytes in flight
    over = {}
    for p in checkpoint.glob("*.safetensors"):
        sent = sum(r.nbytes for r in data_gets(hub, p.name))
        assert sent <= p.stat().st_size + 4 * 65536, p.name
        if sent > p.stat().st_size:
            over[p.name] = sent - p.stat().st_size
    assert len(over) <= 1, over  # only the shard in flight at the kill


def test_ctrl_c_while_downloading_stops_at_once_and_resumes(hub, checkpoint, eager_from_hub, tmp_path):
    env = env_for(hub, tmp_path / "hf")
    plan = _plan(hub, tmp_path)
    hub.faults.delay(600.0, k=100, match=".safetensors", method="GET", ranged=False)  # downloads hang
    proc = subprocess.Popen(
        [sys.executable, "-m", "sanitrace", "execute", str(plan), "--source", REPO, "--out", "out", "--no-progress"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    staging = tmp_path / "out.partial" / STAGING
    deadline = time.time() + 120
    while time.time() < deadline and not (staging.exists() and any(staging.iterdir())):
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)  # a hang (a read waiting for the download) never returns
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    hub.faults.clear()
    done = sanitrace(
        "execute", str(plan), "--source", REPO, "--out", "out", "--no-progress", "--resume", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert compare_folders(str(eager_from_hub), str(tmp_path / "out")) == []


def test_resume_with_downloads_that_no_longer_fit_the_budget_drops_the_ones_needed_last(
    hub, checkpoint, eager_from_hub, tmp_path
):
    """A killed run left later shards downloaded (here: with a larger budget); the
    resumed run's budget cannot hold them and the first shard: the ones needed
    last are deleted instead of waiting forever for room."""
    env = env_for(hub, tmp_path / "hf")
    plan = _plan(hub, tmp_path)
    loaded = plan_ir.load(str(plan))
    sizes = {i: f.size for i, f in enumerate(loaded.source.files)}
    order = schedule(loaded, range(len(loaded.groups)), sizes)
    staging = tmp_path / "out.partial" / STAGING
    staging.mkdir(parents=True)
    later = [loaded.source.files[f].name for f in order.fetch[1:]]
    for name in later:
        (staging / name).write_bytes((checkpoint / name).read_bytes())
    assert sum(sizes.values()) > order.peak  # all of them at once do not fit
    hub.reset_log()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sanitrace",
            "execute",
            str(plan),
            "--source",
            REPO,
            "--out",
            "out",
            "--no-progress",
            "--resume",
            "--disk-budget",
            str(order.peak),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert compare_folders(str(eager_from_hub), str(tmp_path / "out")) == []
    assert "downloaded" in done.stdout


def test_a_moved_revision_is_detected_on_resume(hub, checkpoint, tmp_path):
    env = env_for(hub, tmp_path / "hf")
    plan = _plan(hub, tmp_path)
    repo = open_repo(REPO, endpoint=hub.endpoint)
    pinned = repo.commit
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(checkpoint, moved)
    (moved / "NOTES.txt").write_text("a new commit: every file the plan reads is unchanged")
    # interrupt after the journal exists: a corrupted last shard stops the run
    last = sorted(p.name for p in checkpoint.glob("*.safetensors"))[-1]
    hub.faults.corrupt(last)
    proc = sanitrace("execute", str(plan), "--source", REPO, "--out", "out", "--no-progress", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert len(errors(proc)) == 1 and "corrupted" in errors(proc)[0] and last in errors(proc)[0]
    assert not (tmp_path / "out").exists() and (tmp_path / "out.partial").exists()
    hub.faults.uncorrupt(last)
    hub.set_revision(REPO, "main", str(moved))
    proc = sanitrace(
        "execute", str(plan), "--source", REPO, "--out", "out", "--no-progress", "--resume", env=env, cwd=tmp_path
    )
    assert proc.returncode == 1
    (line,) = errors(proc)
    assert "changed since the interrupted run" in line and f"{REPO}@{pinned}" in line
    proc = sanitrace(
        "execute",
        str(plan),
        "--source",
        f"{REPO}@{pinned}",
        "--out",
        "out",
        "--no-progress",
        "--resume",
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "config.json").exists()


def test_a_side_file_changed_on_the_hub_is_refused_before_anything_is_written(hub, checkpoint, tmp_path):
    """generation_config.json is an output file the plan makes from the repo's
    (a copy): a new commit that changes it is refused, in one line, at the start."""
    import shutil

    env = env_for(hub, tmp_path / "hf")
    plan = _plan(hub, tmp_path)
    moved = tmp_path / "moved"
    shutil.copytree(checkpoint, moved)
    (moved / "generation_config.json").write_text('{"moved": true}')
    hub.set_revision(REPO, "main", str(moved))
    hub.reset_log()
    proc = sanitrace("execute", str(plan), "--source", REPO, "--out", "out", "--no-progress", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = errors(proc)
    assert "generation_config.json" in line and "the plan was traced from" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not data_gets(hub, sorted(p.name for p in checkpoint.glob("*.safetensors"))[0])


def test_transient_errors_are_retried_everywhere(hub, checkpoint, eager_from_hub, tmp_path):
    """429 / 5xx on the repo's info, its small files, header reads and shard downloads."""
    hub.faults.fail_next(2, 503, match="/api/models/")
    hub.faults.fail_next(2, 429, retry_after=1, match="tokenizer_config.json")
    hub.faults.fail_next(1, 500, match="config.json")
    hub.faults.fail_next(3, 502, match=".safetensors")
    proc = sanitrace(
        "convert",
        "--hf-path",
        REPO,
        "--mlx-path",
        "out",
        "-q",
        "--no-progress",
        env=env_for(hub, tmp_path / "hf"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    failed = [r for r in hub.requests if r.status in (429, 500, 502, 503)]
    assert len(failed) == 8
    assert compare_folders(str(eager_from_hub), str(tmp_path / "out")) == []


def test_a_gated_repo_converts_with_hf_token_and_lfs_redirects(checkpoint, eager_from_hub, tmp_path):
    """HF_TOKEN is the client's own auth; shards redirect to another origin, as on the Hub."""
    with HubServer(
        {"org/gated": str(checkpoint)}, gated=["org/gated"], token="hf_test_token", redirect_lfs=True
    ) as hub:
        env = dict(env_for(hub, tmp_path / "hf"), HF_TOKEN="hf_test_token")
        proc = sanitrace(
            "convert", "--hf-path", "org/gated", "--mlx-path", "out", "-q", "--no-progress", env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        assert any(r.path.startswith("/__cdn__/") for r in hub.requests)
    # the model card names the repo it was converted from: org/gated here
    assert compare_folders(str(eager_from_hub), str(tmp_path / "out")) == ["README.md: bytes differ"]
    assert "base_model: org/gated" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("org/gated", "gated"),
        (f"{REPO}@no-such-branch", "no such revision"),
        ("org/absent", "no such repo"),
    ],
)
def test_permanent_hub_errors_are_one_line_and_create_nothing(hub, tmp_path, spec, expected):
    proc = sanitrace(
        "convert",
        "--hf-path",
        spec,
        "--mlx-path",
        "out",
        "-q",
        "--no-progress",
        env=env_for(hub, tmp_path / "hf"),
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    (line,) = errors(proc)
    assert expected in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_files_in_the_local_cache_are_read_in_place_and_kept(hub, checkpoint, eager_from_hub, tmp_path):
    from huggingface_hub import hf_hub_download

    cache = tmp_path / "hf"
    first = sorted(p.name for p in checkpoint.glob("*.safetensors"))[0]
    kept = hf_hub_download(REPO, first, endpoint=hub.endpoint, cache_dir=str(cache / "hub"))
    hub.reset_log()
    proc = sanitrace(
        "convert", "--hf-path", REPO, "--mlx-path", "out", "-q", "--no-progress", env=env_for(hub, cache), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert compare_folders(str(eager_from_hub), str(tmp_path / "out")) == []
    assert os.path.isfile(kept)
    whole_gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(first) and r.range is None]
    assert whole_gets == []  # its header may be read by range for the trace, its data never
