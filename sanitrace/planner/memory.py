"""The memory model: chunk sizes and peaks of a plan's groups under a budget.

Each group carries its cost as ``peak_lines`` (planner/chunking.py fits them);
this module turns a memory budget into rows per chunk (``chunk_rows``, the rule
the planner, the executor and ``show`` all use) and predicts the executor's
peak. The executor imports it: it needs nothing but the plan's types.
"""

from typing import Sequence, Tuple

from ..plan.types import Group, Plan

# Resident size of an executor before it computes, the part of a memory budget
# that chunks cannot use: Python, mlx, numpy, the executor and its threads, plus
# the plan held in memory, which grows with its graph nodes and source tensors.
# bench/memory_baseline.py measures it (Linux x86-64, 36 plans from 120 nodes to
# 700,000: 44 MiB for a tiny plan, 360 MiB for Kimi-K2's 700,000 nodes; running
# adds about 12 MiB); `convert` also holds the library's imports and what is
# left of the trace, 40-60 MiB (mlx_lm, mlx_vlm).
EXECUTOR_BYTES = 56 << 20
NODE_BYTES = 336
SOURCE_TENSOR_BYTES = 720
LIBRARY_BYTES = 64 << 20
RAY_WORKER_BYTES = 96 << 20  # a Ray worker process's own imports and runtime, over EXECUTOR_BYTES


def baseline_bytes(nodes: int, source_tensors: int, library_loaded: bool = False, ray_worker: bool = False) -> int:
    """Resident bytes of a process executing a plan of ``nodes`` graph nodes and
    ``source_tensors`` before it computes; ``library_loaded``: the process also
    traced it (``convert``); ``ray_worker``: it is a Ray worker (executor.ray_task)."""
    held = NODE_BYTES * nodes + SOURCE_TENSOR_BYTES * source_tensors
    extra = (LIBRARY_BYTES if library_loaded else 0) + (RAY_WORKER_BYTES if ray_worker else 0)
    return EXECUTOR_BYTES + held + extra


def plan_baseline(plan: Plan, library_loaded: bool = False, ray_worker: bool = False) -> int:
    """``baseline_bytes`` of ``plan``."""
    return baseline_bytes(len(plan.graph.rows), len(plan.source.tensors), library_loaded, ray_worker)


def cache_limit(budget: int, baseline: int) -> int:
    """mlx buffer cache allowed under ``budget`` (reused across same-size chunks);
    counted as full in predictions, so kept small: a freed buffer larger than
    the limit is not cached, so at a large group's peak the cache held 17 MiB
    of the 60 MiB that 1/16 of the budget allowed (Gemma 4 26B's embedding)."""
    return max(budget - baseline, 0) // 32


def chunk_rows(group: Group, budget: int, baseline: int) -> int:
    """Rows per chunk for an output group under a memory ``budget`` of which
    ``baseline`` is resident already; 0 = whole.

    A group's memory model is ``max(fixed + per_unit * units)`` over its
    ``peak_lines`` ``[fixed, per_unit]``, where a unit is ``unit`` rows along
    axis 0 (unit 0 = not chunkable); it covers the chunk's arrays plus the
    reads of the next chunk and the writes of the last.
    """
    if not group.unit:
        return 0
    working = budget - baseline - cache_limit(budget, baseline)
    units = min((working - fixed) // max(per_unit, 1) for fixed, per_unit in group.peak_lines)
    rows = max(int(units), 1) * group.unit
    if rows >= group.rows:
        return 0
    # as many chunks as needed, of equal size: 64 rows at most 52 at a time are
    # 2 x 32, not 52 + 12 (the pipeline holds neighbours of about the same size)
    chunks = -(-group.rows // rows)
    return -(-group.rows // (chunks * group.unit)) * group.unit


def group_peak(group: Group, rows: int) -> int:
    """Bytes a group needs when computed ``rows`` at a time (0 = whole)."""
    units = -(-(rows or group.rows) // group.unit) if group.unit else 1
    return max(fixed + per_unit * units for fixed, per_unit in group.peak_lines)


def predicted_peak(groups: Sequence[Group], budget: int, baseline: int) -> Tuple[int, int]:
    """(predicted peak RSS, index of the group that sets it) under ``budget``
    with ``baseline`` resident."""
    worst, which = 0, -1
    for i, g in enumerate(groups):
        peak = group_peak(g, chunk_rows(g, budget, baseline))
        if peak > worst:
            worst, which = peak, i
    return baseline + cache_limit(budget, baseline) + worst, which


def smallest_budget(groups: Sequence[Group], baseline: int) -> int:
    """The smallest memory budget whose predicted peak stays within it: every
    group in its smallest chunks (one unit), plus the baseline and the cache
    that budget allows (``cache_limit``)."""
    smallest = max((group_peak(g, g.unit) for g in groups), default=0)
    budget = baseline + -(-smallest * 16 // 15)
    while predicted_peak(groups, budget, baseline)[0] > budget:  # rounding in chunk_rows / cache_limit
        budget += 1 << 20
    return budget
