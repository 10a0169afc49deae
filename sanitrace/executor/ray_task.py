"""One Ray task: replay a batch of output groups into the preallocated shards
of ``OUT.partial`` and return their checksums (ray_run.py is the driver).

A task runs in a Ray worker process on any node. It reads its own source
pieces from the source folder (a path every node sees), computes its groups'
chunks exactly as local execution does (``plan_chunks``' rule, the same
pipeline) and pwrites them at the plan's offsets into shards the driver has
already created. Writing is idempotent: a retried task writes the same bytes at
the same offsets. It never creates, truncates or journals anything; the driver
journals a group once its checksums arrive. Only checksums and a few counters
go back through Ray.
"""

import os
import resource
import socket
import stat
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import mlx.core as mx

from .. import plan as plan_ir
from ..plan import Output, Plan
from ..planner.memory import cache_limit
from .allocator import map_large_buffers
from .progress import progress_bar
from .replay import Replayer
from .schedule import schedule
from .sources import SourceMismatch, SourceReader
from .writer import OutputError, _pwrite_all, piece_offset

_plans: Dict[str, Plan] = {}  # digest -> plan decoded in this worker process (one plan per run)


@dataclass(frozen=True)
class TaskResult:
    sums: Dict[int, Dict[str, str]]  # group -> {output name: sha256 hex}
    bytes_written: int
    source_bytes_read: int
    seconds: float
    node: str  # Ray node id
    host: str
    pid: int
    peak_rss: int  # this worker process's peak resident bytes so far


class ShardFiles:
    """The shards of ``OUT.partial`` as the driver created them, opened for
    pwrite: each must be a regular file of the plan's size (never created,
    truncated or followed through a symlink)."""

    def __init__(self, plan: Plan, partial: str):
        self.plan = plan
        self.partial = partial
        self._fds: Dict[int, int] = {}

    def fd(self, index: int) -> int:
        if index not in self._fds:
            self._fds[index] = self._open(index)
        return self._fds[index]

    def _open(self, index: int) -> int:
        f = self.plan.files[index]
        path = os.path.join(self.partial, f.name)
        dir_fd = os.open(self.partial, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            folder, _, base = f.name.rpartition("/")
            for part in folder.split("/") if folder else []:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = inner
            fd = os.open(base, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            raise OutputError(f"{path}: {e.strerror} (a Ray task writes into the shards the driver made)") from None
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
            os.close(fd)
            raise OutputError(f"{path}: not the shard the driver preallocated ({st.st_size} bytes, plan {f.size})")
        return fd

    def write(self, out: Output, row_start: int, data: memoryview) -> None:
        try:
            _pwrite_all(self.fd(out.file), data, piece_offset(out, row_start))
        except OSError as e:
            raise OutputError(f"{os.path.join(self.partial, self.plan.files[out.file].name)}: {e.strerror}") from None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Sums:
    """The sink's writer side in a task: pwrite, and keep each group's sums."""

    def __init__(self, shards: ShardFiles):
        self.shards = shards
        self.sums: Dict[int, Dict[str, str]] = {}

    def write(self, out: Output, row_start: int, data: memoryview) -> None:
        self.shards.write(out, row_start, data)

    def group_done(self, group_index: int, sums: Dict[str, str]) -> None:
        self.sums[group_index] = sums


def output_bytes(plan: Plan, groups: Sequence[int]) -> int:
    """Bytes of the outputs of ``groups`` (indices into plan.groups)."""
    return sum(plan.outputs[i].nbytes for g in groups for i in plan.groups[g].outputs)


def task_plan(plan_bytes: bytes, digest: str) -> Plan:
    """The run's plan, decoded and validated once per worker process; the
    bytes must be the ones the driver approved (``digest``)."""
    plan = _plans.get(digest)
    if plan is None:
        plan = plan_ir.loads(plan_bytes)
        if plan.digest != digest:
            raise plan_ir.PlanError(f"a Ray task got plan {plan.digest}, the run is {digest}")
        _plans.clear()
        _plans[digest] = plan
    return plan


class _Present:
    """The task's source: files the driver has made available, read in place."""

    def acquire(self, files) -> None:
        pass

    def stop(self) -> None:
        pass


def check_sources(paths: List[str], files: Sequence[int], expected: Dict[int, list]) -> None:
    """The source files this task reads have the [size] or [size, mtime_ns] the
    driver saw (another node may mount them under other inode and device numbers)."""
    for i in files:
        try:
            st = os.stat(paths[i])
        except OSError as e:
            raise SourceMismatch(
                f"{paths[i]}: {e.strerror} (on a Ray node: SRC must be a path every node sees)"
            ) from None
        if [st.st_size, st.st_mtime_ns][: len(expected[i])] != expected[i]:
            raise SourceMismatch(f"{paths[i]}: changed since the run started (size or mtime differs on this node)")


def run_batch(
    plan_bytes: bytes,
    digest: str,
    paths: List[str],
    partial: str,
    groups: List[int],
    budget: int,
    baseline: int,
    expected: Dict[int, list],
) -> TaskResult:
    """Replay ``groups`` (indices into plan.groups, in this order) from the
    source files at ``paths`` into the shards of ``partial``; their checksums,
    for the driver to journal."""
    import ray

    from . import Chunk, _Sink, group_chunks, run_chunks  # the package imports ray_run, which imports this

    start = time.time()
    plan = task_plan(plan_bytes, digest)
    map_large_buffers()
    if len(paths) != len(plan.source.files):
        raise plan_ir.PlanError(f"a Ray task got {len(paths)} source paths for {len(plan.source.files)} files")
    order = schedule(plan, groups, {}, streams=False)
    check_sources(paths, sorted(set().union(*order.reads.values())), expected)
    chunks: List[Chunk] = []
    for g in groups:
        chunks.extend(group_chunks(plan, g, budget, baseline))
    replayer = Replayer(plan.nodes, [o.ref for o in plan.outputs] + [g.ref for g in plan.guards])
    reader = SourceReader(plan, paths)
    shards = ShardFiles(plan, partial)
    sink_writer = _Sums(shards)
    bar = progress_bar(0, "task", enabled=False)
    previous = mx.set_cache_limit(cache_limit(budget, baseline))
    try:
        run_chunks(chunks, order, replayer, reader, _Present(), _Sink(sink_writer, bar, lambda g: None))
    finally:
        mx.set_cache_limit(previous)
        reader.close()
        shards.close()
    written = output_bytes(plan, groups)
    return TaskResult(
        sink_writer.sums,
        written,
        reader.bytes_read,
        time.time() - start,
        ray.get_runtime_context().get_node_id(),
        socket.gethostname(),
        os.getpid(),
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
