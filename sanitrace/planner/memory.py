"""The memory model: chunk sizes and peaks of a plan's groups under a budget.

Each group carries its cost as ``peak_lines`` (planner/chunking.py fits them);
this module turns a memory budget into rows per chunk (``chunk_rows``, the rule
the planner, the executor and ``show`` all use) and predicts the executor's
peak. The executor imports it: it needs nothing but the plan's types.
"""

from typing import Sequence, Tuple

from ..plan.types import Group

# Resident size of an executor before it computes (Python, mlx, numpy, the plan;
# plus mlx-lm and the trace when run by `convert`): the part of a memory budget
# that chunks cannot use. bench/memory_baseline.py measured 39 MiB idle, 74 MiB
# with mlx-lm imported (Linux x86-64).
BASELINE_BYTES = 96 << 20


def cache_limit(budget: int) -> int:
    """mlx buffer cache allowed under ``budget`` (reused across same-size chunks);
    counted as full in predictions, so kept small."""
    return max(budget - BASELINE_BYTES, 0) // 16


def chunk_rows(group: Group, budget: int) -> int:
    """Rows per chunk for an output group under a memory ``budget``; 0 = whole.

    A group's memory model is ``max(fixed + per_unit * units)`` over its
    ``peak_lines`` ``[fixed, per_unit]``, where a unit is ``unit`` rows along
    axis 0 (unit 0 = not chunkable); it covers the chunk's arrays plus the
    reads of the next chunk and the writes of the last.
    """
    if not group.unit:
        return 0
    working = budget - BASELINE_BYTES - cache_limit(budget)
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


def predicted_peak(groups: Sequence[Group], budget: int) -> Tuple[int, int]:
    """(predicted peak RSS, index of the group that sets it) under ``budget``."""
    worst, which = 0, -1
    for i, g in enumerate(groups):
        peak = group_peak(g, chunk_rows(g, budget))
        if peak > worst:
            worst, which = peak, i
    return BASELINE_BYTES + cache_limit(budget) + worst, which


def smallest_budget(groups: Sequence[Group]) -> int:
    """The smallest memory budget whose predicted peak stays within it: every
    group in its smallest chunks (one unit), plus the baseline and the cache
    that budget allows (``cache_limit``)."""
    smallest = max((group_peak(g, g.unit) for g in groups), default=0)
    budget = BASELINE_BYTES + -(-smallest * 16 // 15)
    while predicted_peak(groups, budget)[0] > budget:  # rounding in chunk_rows / cache_limit
        budget += 1 << 20
    return budget
