"""Execute on Ray: output groups, batched by bytes, become Ray tasks (ray_task.py).

The driver (this process) does what local execution does around the compute:
it checks the source, creates and preallocates ``OUT.partial``, checks the
guards, keeps the journal and finishes the folder (executor.execute). Ray runs
the tasks on any node: each reads its own source pieces from SRC (a path every
node sees; a Hub repo is downloaded by the driver into ``OUT.partial``, in the
schedule's order within the disk budget, and each batch submitted once its
files are there), pwrites into the shards and returns only checksums, which
the driver journals. So ``--resume`` and every guarantee of local execution hold:
a task killed mid-way (worker or node lost) is retried by Ray and writes the
same bytes again; a killed driver leaves a journal of finished groups.

Resources: each task asks Ray for ``memory=`` its predicted peak (admission
only: the task keeps itself under the budget, as local execution does) and one
unit of the custom resource ``mlx`` when the cluster has it: start an Apple
Silicon node with ``--resources '{"mlx": 1}'`` (one MLX task on its GPU at a
time) and a CPU node with ``'{"mlx": N}'``. A local instance gets it set so.
"""

import os
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .. import plan as plan_ir
from ..collapse import human_bytes
from ..plan import Plan
from ..planner.memory import predicted_peak
from .ray_task import TaskResult, output_bytes, run_batch
from .schedule import Schedule
from .sources import SourceMismatch
from .writer import OutputError, OutputWriter

MLX_RESOURCE = "mlx"
_BATCHES_PER_SLOT = 4  # tasks per worker slot: load balance and a moving progress bar
_MIN_BATCH = 64 << 20  # output bytes: fewer, larger tasks below this
_MAX_BATCH = 2 << 30


class RayError(RuntimeError):
    """Ray is missing, unreachable or gave up on a task (one line; OUT.partial stays resumable)."""


@dataclass(frozen=True)
class RayOptions:
    address: Optional[str] = None  # a running cluster ("HOST:PORT"); None starts a local instance
    workers: Optional[int] = None  # a local instance's worker processes (default: this machine's cores)


@dataclass
class NodeStats:
    """What one Ray node did in a run."""

    host: str
    node: str
    tasks: int = 0
    bytes_written: int = 0
    source_bytes_read: int = 0
    seconds: float = 0.0  # summed task time (over its worker processes)
    peaks: Dict[int, int] = field(default_factory=dict)  # worker pid -> its peak RSS

    @property
    def peak_rss(self) -> int:
        """The largest worker process peak on this node."""
        return max(self.peaks.values(), default=0)


@dataclass
class RayRun:
    nodes: List[NodeStats]
    tasks: int
    object_store_bytes: int  # bytes Ray stored as objects: the plan, once (results are inlined)
    result_bytes: int  # bytes of the checksum results that came back


def batches(plan: Plan, groups: Sequence[int], slots: int) -> List[List[int]]:
    """``groups`` (in execution order) cut into consecutive runs of about
    ``1/(4 * slots)`` of their output bytes each, within 64 MiB .. 2 GiB."""
    sizes = [output_bytes(plan, [g]) for g in groups]
    target = min(max(sum(sizes) // max(slots * _BATCHES_PER_SLOT, 1), _MIN_BATCH), _MAX_BATCH)
    out: List[List[int]] = []
    current: List[int] = []
    held = 0
    for g, size in zip(groups, sizes):
        current.append(g)
        held += size
        if held >= target:
            out.append(current)
            current, held = [], 0
    if current:
        out.append(current)
    return out


def connect(options: RayOptions):
    """The ``ray`` module, initialised: joined to ``options.address`` or a new
    local instance; True when this call initialised it (shut it down after)."""
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install 'sanitrace[ray]'") from None
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet: Dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING", "configure_logging": False}
    if options.address:
        _check_reachable(options.address)
    try:
        if options.address:
            ray.init(address=options.address, **quiet)
        else:
            import mlx.core as mx

            cpus = options.workers or os.cpu_count() or 1
            slots = 1 if mx.metal.is_available() else cpus  # one MLX task per GPU
            ray.init(address="local", num_cpus=cpus, resources={MLX_RESOURCE: slots}, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayError(f"Ray at {options.address or 'a local instance'}: {str(e).splitlines()[0][:300]}") from None
    return ray, True


def _check_reachable(address: str) -> None:
    """RayError now when ``HOST:PORT`` takes no connection (ray.init would retry
    for minutes); other address forms (``ray://``, ``auto``) are Ray's to resolve."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise RayError(
            f"Ray at {address}: cannot connect ({e.strerror or e}); is it the head node's address?"
        ) from None


def run(ray, plan: Plan, order: Schedule, writer: OutputWriter, source, bar, budget: int, baseline: int) -> RayRun:
    """Run ``order``'s groups as Ray tasks on ``ray`` (``connect``ed); journal
    each group as its checksums arrive. ``source``: a LocalSource, or a
    HubSource staging files in OUT.partial (a batch is submitted once its files
    are there; a file is let go once every group reading it is journaled).
    ``baseline``: a Ray worker's (planner.memory.plan_baseline with ray_worker)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    slots = sum(int(n["Resources"].get(MLX_RESOURCE, n["Resources"].get("CPU", 1))) for n in nodes)
    use_mlx = any(MLX_RESOURCE in n["Resources"] for n in nodes)
    if source.streams:  # one group a task: the disk budget holds what one group reads, not a batch
        queue = [[g] for g in order.groups]
    else:  # largest first, so the run does not end waiting on one big task started last
        queue = sorted(batches(plan, order.groups, slots), key=lambda b: -output_bytes(plan, b))
    for batch in queue:
        check_feasible(nodes, predicted_peak([plan.groups[g] for g in batch], budget, baseline)[0], use_mlx)
    # what a task checks before reading: the size (and a folder's mtime) the driver saw
    keep, identity = 1 if source.streams else 2, source.identity()
    expected = {i: identity[f.name][:keep] for i, f in enumerate(plan.source.files)}
    paths = [os.path.abspath(p) for p in source.paths]
    readers: Dict[int, int] = {}  # source file -> groups still to journal that read it
    for g in order.groups:
        for f in order.reads[g]:
            readers[f] = readers.get(f, 0) + 1
    plan_ref = ray.put(plan_ir.dumps(plan))
    remote = ray.remote(run_batch)
    pending: Dict[object, List[int]] = {}
    stats: Dict[str, NodeStats] = {}
    tasks = result_bytes = 0
    object_store = _sizes(ray, plan_ref)[0]
    try:
        while queue or pending:
            while queue and source.ready(_files(order, queue[0])):  # in the schedule's order
                batch = queue.pop(0)
                need = predicted_peak([plan.groups[g] for g in batch], budget, baseline)[0]
                resources = {MLX_RESOURCE: 1} if use_mlx else {}
                ref = remote.options(num_cpus=1, memory=need, resources=resources, max_retries=3).remote(
                    plan_ref, plan.digest, paths, writer.partial, batch, budget, baseline, expected
                )
                pending[ref] = batch
                tasks += 1
            if not pending:
                source.acquire(_files(order, queue[0]))  # nothing running: wait for the download
                continue
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2 if queue else 10.0)
            if not done:
                check_feasible([n for n in ray.nodes() if n.get("Alive")], 0, use_mlx)
                continue
            ref = done[0]
            batch = pending.pop(ref)
            result = _result(ray, ref, batch, plan)
            stored, size = _sizes(ray, ref)
            object_store += stored
            result_bytes += size
            for g in batch:
                writer.group_done(g, result.sums[g])
                for f in order.reads[g]:
                    readers[f] -= 1
            source.release([f for f in _files(order, batch) if readers[f] == 0])
            bar.update(result.bytes_written)
            node = stats.setdefault(result.node, NodeStats(result.host, result.node))
            node.tasks += 1
            node.bytes_written += result.bytes_written
            node.source_bytes_read += result.source_bytes_read
            node.seconds += result.seconds
            node.peaks[result.pid] = max(node.peaks.get(result.pid, 0), result.peak_rss)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return RayRun(sorted(stats.values(), key=lambda n: n.host), tasks, object_store, result_bytes)


def _files(order: Schedule, batch: Sequence[int]) -> FrozenSet[int]:
    """The source files the groups of ``batch`` read."""
    return frozenset().union(*(order.reads[g] for g in batch))


def _result(ray, ref, batch: List[int], plan: Plan) -> TaskResult:
    """The task's result; its own one-line error re-raised as it is, Ray's
    giving up as a RayError naming the groups."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, (plan_ir.PlanError, SourceMismatch, OutputError)):
            raise cause from None
        what = (str(cause).strip().splitlines() or [""])[0][:300]
        raise RayError(f"a Ray task failed on {_names(plan, batch)}: {type(cause).__name__}: {what}") from None
    except ray.exceptions.RayError as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise RayError(
            f"Ray gave up on {_names(plan, batch)} ({type(e).__name__}: {first}); OUT.partial is kept: rerun with --resume"
        ) from None
    if set(result.sums) != set(batch):
        raise RayError(f"a Ray task returned groups {sorted(result.sums)} for {batch}")
    return result


def _names(plan: Plan, batch: List[int]) -> str:
    first = plan.outputs[plan.groups[batch[0]].outputs[0]].name
    return f"{len(batch)} output groups from {first}"


def check_feasible(nodes: List[dict], need: int, use_mlx: bool) -> None:
    """RayError when no alive node can run a task needing ``need`` bytes (Ray
    would leave it pending forever)."""
    able = [n for n in nodes if not use_mlx or n["Resources"].get(MLX_RESOURCE, 0) >= 1]
    largest = max((int(n["Resources"].get("memory", 0)) for n in able), default=0)
    if not able:
        raise RayError(f"no alive Ray node offers the '{MLX_RESOURCE}' resource the tasks need")
    if need > largest:
        raise RayError(
            f"a task needs {human_bytes(need)} of Ray memory and the largest node offers {human_bytes(largest)}: "
            "lower --memory-budget or add a larger node"
        )


def _sizes(ray, ref) -> Tuple[int, int]:
    """(bytes of ``ref`` held in Ray's object store, its size): a result inlined
    in the driver is held nowhere."""
    location = ray.experimental.get_object_locations([ref]).get(ref, {})
    size = int(location.get("object_size") or 0)
    return (size if location.get("node_ids") else 0), size


def node_lines(run: RayRun) -> List[Tuple[str, str]]:
    """Summary lines: per node, tasks, processes, bytes, per-worker throughput and peak RSS."""
    lines = []
    for n in run.nodes:
        busy = n.source_bytes_read / max(n.seconds, 1e-9)
        peaks = ", ".join(human_bytes(p) for _, p in sorted(n.peaks.items()))
        lines.append(
            (
                "ray node",
                f"{n.host} {n.node[:8]}: {n.tasks} tasks in {len(n.peaks)} processes, {human_bytes(n.bytes_written)} "
                f"written, {human_bytes(n.source_bytes_read)} read at {human_bytes(busy)}/s per busy worker, "
                f"worker peaks {peaks}",
            )
        )
    lines.append(
        (
            "ray object store",
            f"{human_bytes(run.object_store_bytes)} (the plan, once); {run.tasks} task results, "
            f"{human_bytes(run.result_bytes)} of checksums",
        )
    )
    return lines
