"""Re-inferring every node's output avals at load: a plan cannot lie about them.

The chunk rules trust the declared ``outs`` of intermediate nodes, so a plan
whose avals are not what its ops compute could make chunked replay differ from
what ``show`` displays. ``check_avals`` runs each node's real mx op, like the
tracer did, on lazy placeholders of its inputs' avals and compares.

Placeholders are ``broadcast_to`` of a poisoned scalar (a lazy ``mx.load`` of
a file that no longer exists): they never allocate their shape and nothing
evaluates them; an op that tried to would fail, as it did when tracing. Once a
node's outs are checked, they follow from its signature, so the verdict is
cached by (signature, the signatures and outputs of its inputs): DeepSeek-V3's
460k nodes are a few hundred distinct cases, each run once.

Indices: ``const`` index arrays of INDEX_OPS and integer literals in their
keys are bounds-checked here; indices computed at run time are checked by
``ops.apply`` when replayed.
"""

import json
import os
import struct
import tempfile
from typing import Dict, List, Optional, Tuple, cast

import mlx.core as mx

from .calls import const_array, substitute
from .checks import MAX_ELEMENTS
from .dtypes import dtype_name, known_dtype, mlx_dtype
from .ops import INDEX_OPS, OPS, PlanError, check_index, indices
from .types import Node, Plan
from ..safetensors_format import LOAD_DTYPES, MAX_DIM

_UNSEEN = object()
_poison: List[mx.array] = []


def _poison_scalar() -> mx.array:
    """A lazy float32 scalar whose evaluation fails (its file is gone)."""
    if not _poison:
        header = json.dumps({"p": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}).encode()
        fd, path = tempfile.mkstemp(suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(struct.pack("<Q", len(header)) + header + bytes(4))
            _poison.append(cast(Dict[str, mx.array], mx.load(path))["p"])  # a .safetensors file: a dict
        finally:
            os.unlink(path)
    return _poison[0]


def aval_problem(aval) -> Optional[str]:
    """Why ``[dtype, shape]`` is not a plausible tensor: each dimension in
    [0, 2^31) (mlx's own limit) and fewer than 2^48 elements."""
    dtype, shape = aval
    if any(not 0 <= d <= MAX_DIM for d in shape):
        return f"a dimension of {dtype}{shape} is outside [0, {MAX_DIM}]"
    size = 1
    for d in shape:
        size *= d
    if size >= MAX_ELEMENTS:
        return f"{dtype}{shape} has {size} elements, 2^48 or more"
    return None


def _declared(outs) -> str:
    return f"{outs!r:.300}"


def _placeholder(placeholders: Dict[tuple, mx.array], aval) -> mx.array:
    """The lazy poisoned array of ``aval``, one per (dtype, shape)."""
    key = (aval[0], tuple(aval[1]))
    p = placeholders.get(key)
    if p is None:
        p = placeholders[key] = mx.broadcast_to(_poison_scalar().astype(known_dtype(aval[0])), aval[1])
    return p


def _infer(node: Node, in_avals: list, placeholders: Dict[tuple, mx.array]) -> Optional[str]:
    """Why ``node``'s declared outs are not what its op gives on ``in_avals`` (None: they are)."""
    inputs = [_placeholder(placeholders, aval) for aval in in_avals]
    op = node.op
    try:
        args = substitute(node.args, inputs.__getitem__)
        kwargs = substitute(node.kwargs, inputs.__getitem__)
        if op in INDEX_OPS:
            for index, extent in indices(op, args, kwargs):
                if not isinstance(index, mx.array):  # arrays: const ones below, the rest at replay
                    check_index(op, index, extent)
        result = OPS[op](*args, **kwargs)
    except PlanError as e:
        return str(e)
    except Exception as e:  # mlx raises ValueError, RuntimeError, TypeError, OverflowError, IndexError...
        return f"the op raises {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if not all(isinstance(r, mx.array) for r in results):
        return f"the op gives a {type(result).__name__}, not arrays"
    outs = [[dtype_name(r.dtype), list(r.shape)] for r in results]
    for aval in outs:
        problem = aval_problem(aval)
        if problem:
            return problem
    if repr(node.outs) != repr(outs):  # strict: True is not 1, 2.0 is not 2
        return f"declares {_declared(node.outs)}, the op gives {outs}"
    return None


def _leaf_problem(plan: Plan, node: Node) -> Optional[str]:
    """Why a load or const node's outs are not those of its tensor or bytes."""
    if node.op == "load":
        t = plan.source.tensors[node.args[0]]
        loads_as = LOAD_DTYPES.get(t.dtype)
        if loads_as is None:
            return f"mx.load cannot read a {t.dtype} tensor"
        expected = [[loads_as, list(t.shape)]]
        if repr(node.outs) != repr(expected):
            return f"declares {_declared(node.outs)}, source tensor {t.name!r} is {expected}"
        return aval_problem(expected[0])
    outs, args = node.outs, node.args
    if not (
        len(outs) == 1
        and isinstance(outs[0], list)
        and len(outs[0]) == 2
        and len(args) == 1
        and isinstance(args[0], bytes)
        and isinstance(outs[0][0], str)
        and isinstance(outs[0][1], list)
        and all(type(d) is int for d in outs[0][1])
    ):
        return "a constant is not [bytes] with one [dtype, shape]"
    dtype = mlx_dtype(outs[0][0])
    if dtype is None:
        return f"unknown dtype {outs[0][0]!r:.40}"
    problem = aval_problem(outs[0])
    if problem:
        return problem
    size = dtype.size
    for d in outs[0][1]:
        size *= d
    if size != len(args[0]):
        return f"declares {_declared(outs)} ({size} bytes), its data has {len(args[0])}"
    return None


def _check_const_indices(plan: Plan, i: int, node: Node, placeholders: Dict[tuple, mx.array]) -> None:
    """Bounds of the const index arrays of INDEX_OPS node ``i`` (real data, small)."""
    nodes = plan.nodes
    consts = {}
    for r in node.inputs:
        if nodes[r.node].op == "const":
            consts[r.node] = const_array(nodes[r.node])
    if not consts:
        return
    inputs = [
        consts[r.node] if r.node in consts else _placeholder(placeholders, nodes[r.node].outs[r.out])
        for r in node.inputs
    ]
    args = substitute(node.args, inputs.__getitem__)
    kwargs = substitute(node.kwargs, inputs.__getitem__)
    for index, extent in indices(node.op, args, kwargs):
        if any(index is c for c in consts.values()):
            try:
                check_index(node.op, index, extent)
            except PlanError as e:
                raise PlanError(f"node {i} ({node.op}): {e}") from None


def _first_nodes(plan: Plan) -> Tuple[List[int], List[int]]:
    """The first node of each distinct cache key, in node order, and the INDEX_OPS
    nodes with several inputs (a const index may be among them). Once checked, a
    node's outs follow from its signature, so a key is (signature, the signature
    and output of each input); a load's is (signature, its tensor's dtype and
    shape); a const's is unique. The common one-input key is an int."""
    rows, tensors = plan.graph.rows, plan.source.tensors
    sig_ops = [signature[0] for signature in plan.graph.signatures]
    plain = [op not in ("load", "const") for op in sig_ops]
    count = len(sig_ops)
    sigs = [row[0] for row in rows]
    several: List[int] = []

    def other(i: int, row: list) -> tuple:
        s = row[0]
        if sig_ops[s] == "load":
            t = tensors[row[1]]
            return (s, t.dtype, t.shape)
        if sig_ops[s] == "const":
            return ("const", i)
        if sig_ops[s] in INDEX_OPS:
            several.append(i)
        return (s, *[sigs[i - x] if type(x) is int else (sigs[i - x[0]], x[1]) for x in row[1:]])

    seen: set = set()
    first: List[int] = []
    for i, row in enumerate(rows):
        s = row[0]
        if len(row) == 2 and plain[s] and type(row[1]) is int:
            key = s + count * sigs[i - row[1]]
        else:
            key = other(i, row)
        if key not in seen:
            seen.add(key)
            first.append(i)
    return first, several


def check_avals(plan: Plan) -> None:
    """Every node's declared outs are what its op computes from its inputs'
    avals (loads: what mx.load gives; consts: what their bytes hold), within
    mlx's size limits, and const indices are in bounds. PlanError names the node.

    Each distinct key is checked once, on its first node, in node order (so a
    node's inputs are checked before it)."""
    nodes = plan.nodes
    first, several = _first_nodes(plan)
    placeholders: Dict[tuple, mx.array] = {}
    for i in first:
        node = nodes[i]
        if node.op in ("load", "const"):
            problem = _leaf_problem(plan, node)
        else:
            problem = _infer(node, [nodes[r.node].outs[r.out] for r in node.inputs], placeholders)
        if problem:
            raise PlanError(f"node {i} ({node.op}): {problem}")
    for i in several:
        _check_const_indices(plan, i, nodes[i], placeholders)
