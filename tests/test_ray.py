"""execute --ray on a real two-node Ray cluster on this machine (tests/ray_cluster.py):
the same bytes as local execution and as the library's own conversion, with a
worker killed mid-task and with the driver killed and resumed."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, MODES, REPO, make_checkpoint, sanitrace_convert
from hub_server import HubServer

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.executor import RayError, RayOptions, execute
from sanitrace.executor.journal import JOURNAL
from sanitrace.executor import ray_run
from sanitrace.executor.local_source import LocalSource
from sanitrace.executor.progress import progress_bar
from sanitrace.executor.schedule import schedule
from sanitrace.executor.ray_run import batches, check_feasible
from sanitrace.executor.sources import SourceMismatch
from sanitrace.executor.writer import OutputWriter
from sanitrace.fixtures import write_checkpoint
from sanitrace.planner import build_plan
from sanitrace.tracer import ConvertOptions, trace

from ray_cluster import RayCluster  # noqa: E402  (sets Ray's auth token before ray is imported)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster(nodes=2, cpus=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A bf16 MoE checkpoint of ~110 MB: several tasks, each long enough to be killed in."""
    base = tmp_path_factory.mktemp("ray-big")
    src = make_checkpoint(base / "src", "qwen3_moe", layers=4, experts=32, hidden=512, moe_intermediate=512)
    plan = build_plan(trace(str(src), ConvertOptions()))
    local = base / "local"
    execute(plan, str(src), str(local), progress=False)
    data = plan_ir.save(plan, str(base / "plan.msgpack"))
    return {"src": src, "plan": plan, "local": local, "path": base / "plan.msgpack", "bytes": len(data)}


def options(flags: list) -> ConvertOptions:
    quantize = "-q" in flags
    bits = int(flags[flags.index("--q-bits") + 1]) if "--q-bits" in flags else None
    mode = flags[flags.index("--q-mode") + 1] if "--q-mode" in flags else "affine"
    predicate = flags[flags.index("--quant-predicate") + 1] if "--quant-predicate" in flags else None
    return ConvertOptions(quantize=quantize, q_bits=bits, q_mode=mode, quant_predicate=predicate)


def same_files(a: Path, b: Path) -> list:
    """Relative paths whose bytes differ between folders ``a`` and ``b`` (or exist in one only)."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    names |= {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    return sorted(
        str(n)
        for n in names
        if not ((a / n).is_file() and (b / n).is_file()) or (a / n).read_bytes() != (b / n).read_bytes()
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_ray_output_is_local_output_and_eager(fixture, mode, cluster, checkpoints, eager, tmp_path):
    src = checkpoints[fixture]
    plan = build_plan(trace(str(src), options(MODES[mode])))
    execute(plan, str(src), str(tmp_path / "local"), progress=False)
    # the smallest chunks: every task cuts its groups as local execution does
    summary = execute(
        plan, str(src), str(tmp_path / "ray"), memory_budget=1, progress=False, ray=RayOptions(cluster.address)
    )
    assert same_files(tmp_path / "local", tmp_path / "ray") == []
    assert compare_folders(str(eager(src, MODES[mode])), str(tmp_path / "ray")) == []
    assert summary.ray is not None and summary.ray.tasks >= 1
    assert sum(n.bytes_written for n in summary.ray.nodes) == plan.output_bytes


@pytest.mark.slow
def test_convert_with_ray_flag_matches_eager(cluster, checkpoints, eager, tmp_path):
    src = checkpoints["deepseek_v3"]
    out = sanitrace_convert(src, tmp_path / "out", ["-q", "--ray", cluster.address], budget="1")
    assert compare_folders(str(eager(src, ["-q"])), str(out)) == []


def test_tasks_spread_over_both_nodes_and_return_only_checksums(cluster, big, tmp_path):
    summary = execute(
        big["plan"],
        str(big["src"]),
        str(tmp_path / "out"),
        memory_budget=1,
        progress=False,
        ray=RayOptions(cluster.address),
    )
    assert same_files(big["local"], tmp_path / "out") == []
    run = summary.ray
    assert run is not None and run.tasks == len(batches(big["plan"], range(len(big["plan"].groups)), 2)) >= 2
    assert len(run.nodes) == 2  # both nodes did work
    # through Ray's object store: the plan, once; every result came back inline (checksums)
    assert big["bytes"] <= run.object_store_bytes <= big["bytes"] + 64  # its serialization
    assert run.result_bytes < 2000 * len(big["plan"].groups)
    assert run.result_bytes + run.object_store_bytes < big["plan"].output_bytes / 1000


def execute_while(cluster, big, out: Path, fault):
    """Execute ``big`` on the cluster in a thread while calling ``fault()`` until it
    returns a value (then no more); (the execute summary, that value)."""
    result = {}

    def drive():
        try:
            options = RayOptions(cluster.address)
            result["summary"] = execute(
                big["plan"], str(big["src"]), str(out), memory_budget=1, progress=False, ray=options
            )
        except BaseException as e:  # noqa: BLE001  reported by the assertion below
            result["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    done = None
    while driver.is_alive() and done is None:
        done = fault()
        time.sleep(0.005)
    driver.join(timeout=600)
    assert done is not None, "no task was caught running"
    assert "error" not in result, result.get("error")
    return result["summary"], done


def test_worker_killed_mid_task_is_retried_with_identical_output(cluster, big, tmp_path):
    def kill_a_worker():
        running = cluster.task_processes("run_batch")
        if running:
            os.kill(running[0].pid, signal.SIGKILL)
            return running[0].pid
        return None

    summary, killed = execute_while(cluster, big, tmp_path / "out", kill_a_worker)
    assert killed not in {p for n in summary.ray.nodes for p in n.peaks}  # its task was redone elsewhere
    assert same_files(big["local"], tmp_path / "out") == []


def test_driver_killed_then_resumed_on_ray(cluster, big, tmp_path):
    out = tmp_path / "out"
    journal = Path(f"{out}.partial") / JOURNAL
    argv = [
        sys.executable,
        "-m",
        "sanitrace",
        "execute",
        str(big["path"]),
        "--source",
        str(big["src"]),
        "--out",
        str(out),
    ]
    argv += ["--memory-budget", "1", "--no-progress", "--ray", cluster.address]
    driver = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    groups = len(big["plan"].groups)
    while driver.poll() is None and time.time() < deadline:
        lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
        if 1 < lines < groups:  # some groups journaled, not all
            driver.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL, err.decode()[-2000:]
    summary = execute(
        big["plan"],
        str(big["src"]),
        str(out),
        memory_budget=1,
        resume=True,
        progress=False,
        ray=RayOptions(cluster.address),
    )
    assert 0 < summary.skipped_groups < groups
    assert same_files(big["local"], out) == []


class _Grown(LocalSource):
    """A folder whose files the driver saw one byte longer than they are now."""

    def identity(self):
        return {name: [size + 1, *rest] for name, (size, *rest) in super().identity().items()}


def test_a_source_changed_under_a_task_is_its_one_line_error(cluster, big, tmp_path):
    """A task checks the size and mtime of what it reads against the driver's
    view; its SourceMismatch reaches the caller as itself, in one line."""
    plan, src = big["plan"], big["src"]
    source = _Grown(plan, str(src))
    writer = OutputWriter(plan, source, str(tmp_path / "out"), resume=False)
    order = schedule(plan, range(len(plan.groups)), {}, streams=False)
    bar = progress_bar(0, "", enabled=False)
    try:
        with pytest.raises(SourceMismatch) as e:
            ray_run.run(ray, plan, order, writer, source, bar, 1 << 30, 0)
    finally:
        writer.close()
    assert "changed since the run started (size or mtime differs on this node)" in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unreachable_cluster_is_one_line_before_anything_is_created(big, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "sanitrace", "execute", str(big["path"]), "--source", str(big["src"])]
    argv += ["--out", str(tmp_path / "out"), "--ray", f"127.0.0.1:{port}"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sanitrace")]
    assert errors == [
        f"sanitrace execute: error: Ray at 127.0.0.1:{port}: cannot connect (Connection refused); is it the head node's address?"
    ], proc.stderr
    assert not (tmp_path / "out.partial").exists()


def test_a_task_no_node_can_hold_is_refused_in_one_line(cluster):
    with pytest.raises(RayError) as e:
        check_feasible(cluster.alive_nodes(), 4 << 30, use_mlx=True)
    assert "needs 4.0 GiB of Ray memory and the largest node offers 3.0 GiB" in str(e.value)
    assert "\n" not in str(e.value)


def test_batches_cut_groups_in_order_by_bytes(big):
    plan = big["plan"]
    order = list(range(len(plan.groups)))
    for slots in (1, 2, 16):
        cut = batches(plan, order, slots)
        assert [g for b in cut for g in b] == order
        sizes = [sum(plan.outputs[i].nbytes for g in b for i in plan.groups[g].outputs) for b in cut]
        assert all(s >= 64 << 20 for s in sizes[:-1])
    assert len(batches(plan, order, 16)) >= len(batches(plan, order, 1))


@pytest.mark.slow
def test_convert_from_the_hub_on_ray_is_the_local_hub_conversion(cluster, tmp_path):
    """A Hub repo on Ray: the driver stages each shard in OUT.partial (which every
    node sees) within the disk budget; tasks read them there. Same bytes as the
    same conversion without --ray, each shard fetched once."""
    folder = Path(write_checkpoint(str(tmp_path / "tiny-moe"), "qwen3_moe", shards=4, split_experts=True))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny-moe\n")
    budget = max(p.stat().st_size for p in folder.glob("*.safetensors")) * 2
    with HubServer({"org/tiny-moe": str(folder)}) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("HF_TOKEN", None)
        env.pop("HF_HUB_OFFLINE", None)
        outputs = {}
        for name, extra in (("local", []), ("ray", ["--ray", cluster.address])):
            hub.reset_log()
            argv = ["convert", "--hf-path", "org/tiny-moe", "--mlx-path", str(tmp_path / name), "-q"]
            argv += ["--memory-budget", "1", "--disk-budget", str(budget), "--no-progress", *extra]
            proc = subprocess.run(
                [sys.executable, "-m", "sanitrace", *argv],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            sizes = {p.name: p.stat().st_size for p in folder.glob("*.safetensors")}
            gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
            whole = sorted(r.path.rsplit("/", 1)[-1] for r in gets if sizes.get(r.path.rsplit("/", 1)[-1]) == r.nbytes)
            outputs[name] = (tmp_path / name, whole)
    assert "ray node" in proc.stdout
    assert same_files(outputs["local"][0], outputs["ray"][0]) == []
    assert outputs["ray"][1] == sorted(p.name for p in folder.glob("*.safetensors"))  # each shard fetched once, whole


def test_node_lost_mid_task_is_retried_on_the_other_node(cluster, big, tmp_path):
    """Last in this module: the cluster keeps one node afterwards."""

    def lose_the_second_node():
        if cluster.task_processes("run_batch", nodes=[1]):
            cluster.kill_node(1)
            return True
        return None

    execute_while(cluster, big, tmp_path / "out", lose_the_second_node)
    assert cluster.session_pids(1) == []  # the node is gone, not just its worker
    assert same_files(big["local"], tmp_path / "out") == []
