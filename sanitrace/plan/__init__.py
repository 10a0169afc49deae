"""The plan IR: what a plan holds (docs/plan-format.md).

The tracer produces its graph, the planner fills in layout, chunking, memory
and accounting, the executor replays it. This package is the only thing they
share about the format; this module only re-exports its names:

- types.py: the typed, frozen in-memory plan (``Plan`` and its records);
- ops.py: the op allowlist and ``apply``;
- calls.py: running one node (``substitute``, ``call``, ``const_array``);
- dtypes.py: mlx dtypes by name (``dtype_name``, ``mlx_dtype``); the dtype
  facts themselves are ``safetensors_format.DTYPES``;
- format.py: the canonical msgpack file (``dumps``/``save``, and its encoding);
- source_tensors.py: the compact encoding of the source tensor table;
- loading.py: decoding a file into a checked ``Plan`` (``loads``/``load``);
- checks.py: what loading checks and derives (names, sizes, references);
- infer.py: re-inferring every node's output avals at load;
- edits.py: files made from source files by edits;
- gc_pause.py: ``gc_paused``, for building or decoding big graphs.

The memory model (chunk sizes and peaks under a budget) is the planner's:
``sanitrace.planner.memory``.

A ``Plan``'s graph is ``plan.graph``, in the file's encoding; ``plan.nodes``
gives it as a list of ``Node``s in topological order. A node's array inputs
are ``Ref``s in ``node.inputs``; its literal arguments ``args``/``kwargs``
hold a ``Slot(i)`` where input ``i`` goes.
"""

from .calls import call, const_array, substitute
from .dtypes import dtype_name, mlx_dtype
from .format import FORMAT, MAX_PLAN_BYTES, VERSION, dumps, save
from .gc_pause import gc_paused
from .loading import load, loads
from .ops import OPS, VIEW_OPS, PlanError, apply, is_allowed
from .types import (
    Accounting,
    Dropped,
    Graph,
    Group,
    Guard,
    Memory,
    Node,
    Output,
    OutputFile,
    Plan,
    Ref,
    Slot,
    Source,
    SourceFile,
    SourceTensor,
)

__all__ = [
    "Ref",
    "Slot",
    "Node",
    "Plan",
    "Source",
    "SourceFile",
    "SourceTensor",
    "Output",
    "OutputFile",
    "Group",
    "Guard",
    "Memory",
    "Dropped",
    "Accounting",
    "Graph",
    "PlanError",
    "substitute",
    "call",
    "apply",
    "dtype_name",
    "mlx_dtype",
    "gc_paused",
    "const_array",
    "OPS",
    "VIEW_OPS",
    "is_allowed",
    "FORMAT",
    "VERSION",
    "MAX_PLAN_BYTES",
    "dumps",
    "loads",
    "save",
    "load",
]
