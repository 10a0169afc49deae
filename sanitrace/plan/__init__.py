"""The plan IR: what a plan holds (docs/plan-format.md).

The tracer produces its graph, the planner fills in layout, chunking, memory
and accounting, the executor replays it. This package is the only thing they
share about the format:

- types.py: the typed, frozen in-memory plan (``Plan`` and its records);
- here: argument substitution, the memory model;
- ops.py: the op allowlist and ``apply``;
- format.py: the canonical msgpack file (``dumps``/``loads``/``save``/``load``);
- checks.py: what loading checks and derives (names, sizes, references).

A ``Plan``'s graph is ``plan.graph``, in the file's encoding; ``plan.nodes``
gives it as a list of ``Node``s in topological order. A node's array inputs
are ``Ref``s in ``node.inputs``; its literal arguments ``args``/``kwargs``
hold a ``Slot(i)`` where input ``i`` goes.
"""

import contextlib
import gc
from typing import Any, Callable, Optional

import mlx.core as mx
import numpy as np

from .ops import OPS, VIEW_OPS, PlanError, apply, is_allowed
from .types import (
    Accounting, Dropped, Graph, Group, Guard, Memory, Node, Output, OutputFile, Plan, Ref, Slot,
    Source, SourceFile, SourceTensor,
)


def substitute(value: Any, fn: Callable[[int], Any]) -> Any:
    """Copy of an argument structure with every Slot(i) replaced by ``fn(i)``."""
    if isinstance(value, Slot):
        return fn(value.index)
    if isinstance(value, list):
        return [substitute(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(substitute(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: substitute(v, fn) for k, v in value.items()}
    return value


def call(node: Node, inputs: list):
    """Apply ``node``'s op with ``inputs`` (arrays, in slot order) in its slots."""
    args = substitute(node.args, inputs.__getitem__)
    kwargs = substitute(node.kwargs, inputs.__getitem__)
    return apply(node.op, args, kwargs)


_DTYPE_NAMES = {}


def dtype_name(dtype) -> str:
    """'bfloat16' for mx.bfloat16."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).rsplit(".", 1)[-1]
    return name


def mlx_dtype(name: str) -> Optional[mx.Dtype]:
    """The mx dtype ``dtype_name`` gives ``name`` (mx.bool_ for "bool"), or None."""
    value = getattr(mx, "bool_" if name == "bool" else name, None)
    return value if isinstance(value, mx.Dtype) else None


def const_array(node: Node) -> mx.array:
    """The array of a ``const`` node (raw little-endian bytes + its aval)."""
    (data,), (dtype, shape) = node.args, node.outs[0]
    raw = mx.array(np.frombuffer(data, dtype=np.uint8))
    return raw.view(mlx_dtype(dtype)).reshape(shape)


@contextlib.contextmanager
def gc_paused():
    """Building or decoding a graph allocates a million small acyclic objects; the
    cyclic collector would rescan them all over and over (8 s of a 17 s
    DeepSeek-V3 trace, 1.5 s of loading its plan). On exit the survivors join the
    oldest generation unscanned (gc.freeze + unfreeze), instead of all being
    scanned as young objects at the next allocation (1.4 s more). A process that
    froze objects itself keeps them frozen: then the survivors are just left young."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


# ---------------------------------------------------------------- memory model

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


from .format import FORMAT, MAX_PLAN_BYTES, VERSION, dumps, save  # noqa: E402
from .loading import load, loads  # noqa: E402

__all__ = [
    "Ref", "Slot", "Node", "Plan", "Source", "SourceFile", "SourceTensor", "Output", "OutputFile",
    "Group", "Guard", "Memory", "Dropped", "Accounting", "Graph", "PlanError", "substitute", "call",
    "apply", "dtype_name", "gc_paused", "const_array", "OPS", "VIEW_OPS", "is_allowed",
    "BASELINE_BYTES", "cache_limit", "chunk_rows", "group_peak", "FORMAT", "VERSION",
    "MAX_PLAN_BYTES", "dumps", "loads", "save", "load",
]
