"""Output groups, chunk granularity, and the memory each chunk needs.

Outputs that share a computed node (the weight, scales and biases of one
``mx.quantize``; the two MLA halves of one ``kv_b_proj``) form a group and are
computed together. A group whose outputs all have the same leading size is cut
into row ranges along axis 0 when every op between the sources and the outputs
has a chunk rule (regions.py); chunk boundaries are multiples of the group's
unit, the least common multiple of its outputs' granularities.

Memory is estimated from the graph alone (see ``Chunker.cost``) and is linear
in the chunk length: ``fixed + units * per_unit``.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

from .. import chunk_registry, chunk_rules, regions
from ..plan import VIEW_OPS, Group, Node, Output, Ref
from ..plan.ops import RESHAPE_VIEW_OPS
from ..chunk_rules_index import arg, axis_index
from ..plan.checks import group_rows
from .graph import structure
from .layout import nbytes

# Temporary memory of mlx's quantize / dequantize kernels, as a multiple of the
# input (quantize) or output (dequantize) bytes, by mode; measured with
# bench/op_workspace.py on mlx 0.32.4 (CPU backend).
WORKSPACE = {
    "mx.quantize": {"affine": 0.0, "mxfp4": 20.4, "mxfp8": 2.4, "nvfp4": 38.3},
    "mx.dequantize": {"affine": 4.0, "mxfp4": 1.5, "mxfp8": 0.0, "nvfp4": 1.6},
}
_MODE_POSITION = {"mx.quantize": 3, "mx.dequantize": 5}
LARGE_CHUNK_UNITS = 16  # where the second line of a group's memory model is fitted


def groups_of(nodes: List[Node], outputs: List[Output]) -> List[List[int]]:
    """Output indices grouped by shared computed (non-load, non-const) nodes."""
    parent = list(range(len(outputs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: Dict[int, int] = {}
    for i, out in enumerate(outputs):
        stack = [out.ref.node]
        while stack:
            n = stack.pop()
            op, inputs = nodes[n][:2]
            if op == "load" or op == "const":
                continue
            if n in owner:  # walked before, with everything below it: just join
                parent[find(i)] = find(owner[n])
                continue
            owner[n] = i
            if len(inputs) == 1:  # most nodes
                stack.append(inputs[0].node)
            else:
                stack.extend([r.node for r in inputs])
    members: Dict[int, List[int]] = {}
    for i in range(len(outputs)):
        members.setdefault(find(i), []).append(i)
    return sorted(members.values())


class Chunker:
    """Granularity and memory cost of computing outputs of one graph in chunks."""

    def __init__(self, nodes: List[Node]):
        self.nodes = nodes
        self.rule = regions.Rules(nodes)
        self.granularity = self.rule.granularity

    def _values(self, roots: List[Ref], region: regions.Region) -> Tuple[dict, list, dict]:
        """What computing ``roots`` at ``region`` creates, one per value key
        (``regions.Rules.value_key``, the executor's identity of a value): key
        -> (op, bytes, shares its first input's buffer, workspace bytes,
        strided), the keys in the depth-first order mlx evaluates them in, and
        each key's input keys."""
        order, inputs = self.rule.walk([(r, region) for r in roots])
        values: Dict[regions.ValueKey, tuple] = {}
        for key, _, ref in order:
            ins = inputs.get(key)
            values[key] = self._value(self.nodes[ref.node], ref, key, values[ins[0]][4] if ins else False)
        return values, [key for key, _, _ in order], inputs

    def _value(self, node: Node, ref: Ref, key: regions.ValueKey, input_strided: bool) -> tuple:
        region = key[2]
        if key[1] == regions.ALL_OUTPUTS:  # every output of the node, computed at once
            size = sum(_region_bytes(aval, region) for aval in node.outs)
        else:
            size = _region_bytes(node.outs[ref.out], region)
        first = self.nodes[node.inputs[0].node].outs[node.inputs[0].out] if node.inputs else None
        same_dtype = node.op.endswith("astype") and first is not None and first[0] == node.outs[ref.out][0]
        shares, strided = node.op in VIEW_OPS or same_dtype, False
        if shares:
            assert first is not None  # a view or astype has an input
            shares, strided = layout_of_view(node, ref.out, first, input_strided)
        workspace = 0
        if node.op in WORKSPACE:
            assert first is not None  # quantize and dequantize have an input
            position = _MODE_POSITION[node.op]
            mode = node.args[position] if len(node.args) > position else node.kwargs.get("mode", "affine")
            # quantize's workspace scales with its input, dequantize's with its output
            base = _region_bytes(first, region) if node.op == "mx.quantize" else size
            workspace = int(WORKSPACE[node.op].get(mode, 0.0) * base)
            if node.op == "mx.quantize" and input_strided:  # mlx quantizes a contiguous copy of it
                workspace += _region_bytes(first, region)
        return (node.op, size, shares, workspace, strided)

    def cost(self, roots: List[Ref], start: Optional[int], stop: Optional[int]) -> int:
        """Peak bytes of the executor pipeline for rows start:stop of ``roots``
        along axis 0 (whole values when start is None).

        Simulates what is alive while mlx evaluates the chunk depth first: its
        source pieces (all read before it starts) until their last use, each
        new array (views share their input's buffer) until its last consumer
        is done, the outputs to the end; plus the next chunk's source reads and
        the previous chunk's outputs (in flight in the pipeline), taken to be
        the same size. mlx's quantize/dequantize workspace (WORKSPACE) is
        counted while that op runs, and so is each copy mlx makes of a strided
        view (``layout_of_view``): a reshape or quantize of it, and the
        contiguous copy the writer takes of a strided output."""
        region: regions.Region = None
        if start is not None:
            assert stop is not None  # rows start:stop
            region = (0, start, stop)
        values, order, inputs = self._values(roots, region)
        buffer: Dict[regions.ValueKey, regions.ValueKey] = {}  # value key -> key of the value owning its memory
        users: Dict[tuple, int] = {}
        for key in order:
            shares = values[key][2]
            ins = inputs.get(key, [])
            buffer[key] = buffer[ins[0]] if shares and ins else key
            for k in ins:
                users[buffer[k]] = users.get(buffer[k], 0) + 1
        root_keys = {self.rule.value_key(r, region)[0] for r in roots}
        for k in root_keys:
            users[buffer[k]] = users.get(buffer[k], 0) + 1  # kept until written
        sources = sum(values[k][1] for k in order if values[k][0] == "load")
        live = peak = sources
        for key in order:
            op, size, _, workspace, _ = values[key]
            if op == "load":
                continue
            owns = buffer[key] == key
            peak = max(peak, live + workspace + (size if owns else 0))
            if owns:
                live += size
            for k in inputs.get(key, []):
                owner = buffer[k]
                users[owner] -= 1
                if users[owner] == 0:
                    live -= values[owner][1]
        copies = sum(values[k][1] for k in root_keys if values[k][4])  # the writer's contiguous copies
        peak = max(peak, live + copies)
        outputs = sum(values[k][1] for k in root_keys)
        return peak + sources + outputs


def layout_of_view(node: Node, out: int, first: list, input_strided: bool) -> Tuple[bool, bool]:
    """(shares its input's buffer, strided) of a view op's result (VIEW_OPS, or
    an astype to the same dtype). Strided means not row-major contiguous: a
    transpose of a matrix, a slice or split along an inner axis, a broadcast.
    A reshape of a strided input is a contiguous copy."""
    if node.op in RESHAPE_VIEW_OPS:
        return (False, False) if input_strided else (True, False)
    if input_strided or node.op.endswith("astype"):
        return True, input_strided
    in_shape, out_shape = first[1], node.outs[out][1]
    if node.op == "mx.broadcast_to":
        return True, list(in_shape) != list(out_shape)
    if node.op in ("mx.split", "array.split"):
        return True, axis_index(arg(node.args, node.kwargs, 2, "axis", 0), len(in_shape)) != 0
    if node.op == "array.__getitem__":
        return True, not _leading_index(node.args[1])
    if chunk_registry.RULES.get(node.op) is chunk_rules.Transpose:
        real = [j for j in chunk_rules.permutation(node, len(in_shape)) if in_shape[j] > 1]
        return True, real != sorted(real)  # strided when axes of size > 1 change order
    return True, True


def _leading_index(index) -> bool:
    """An index that only selects along axis 0 (an int or a unit-step slice), so
    the result stays row-major contiguous."""
    index = index if isinstance(index, tuple) else (index,)
    rest = [i for i in index[1:] if i is not Ellipsis]
    first = index[0] if index else Ellipsis
    lead = (
        first is Ellipsis
        and not rest
        or isinstance(first, int)
        or (isinstance(first, slice) and first.step in (None, 1))
    )
    return lead and all(isinstance(i, slice) and i == slice(None) for i in rest)


def _region_bytes(aval: list, region) -> int:
    """Bytes of the part of a value with ``aval`` that ``region`` covers."""
    size = nbytes(aval)
    if region is None:
        return size
    axis, start, stop = region
    return size * (stop - start) // max(aval[1][axis], 1)


def plan_groups(nodes: List[Node], outputs: List[Output], labels: Optional[Sequence[int]] = None) -> List[Group]:
    """One entry per output group: chunking (if any) and its linear memory model.

    These are functions of the group's graph alone, so groups with the same
    graph up to numbering (``graph.structure``, given each node's signature in
    ``labels``), such as one projection in every layer, are evaluated once.
    Without ``labels`` no two nodes are alike and every group is evaluated."""
    labels = range(len(nodes)) if labels is None else labels
    chunker = Chunker(nodes)
    result = []
    known: Dict[tuple, tuple] = {}  # structure -> (rows, unit, lines)
    for members in groups_of(nodes, outputs):
        roots = [outputs[i].ref for i in members]
        count = group_rows([outputs[i] for i in members])
        key = structure(nodes, labels, roots)
        model = known.get(key)
        if model is None:
            unit = group_unit(chunker, roots, count)
            if not unit:
                model = (count, 0, ((chunker.cost(roots, None, None), 0),))
            else:
                model = (count, unit, peak_lines(chunker, roots, unit, count))
            known[key] = model
        result.append(Group(tuple(members), *model))
    return result


def group_unit(chunker: Chunker, roots: List[Ref], rows: int) -> int:
    """The chunk unit of a group with ``rows`` leading rows: the least common
    multiple of its roots' granularities (a boundary must suit every output),
    or 0 (whole only) when some root cannot be chunked or one unit would cover
    all rows (plan.checks requires ``0 < unit < rows``)."""
    if rows < 2:
        return 0
    try:
        unit = math.lcm(*(chunker.granularity(r, 0) for r in roots))
    except regions.NotChunkable:
        return 0
    return unit if unit < rows else 0


def peak_lines(chunker: Chunker, roots: List[Ref], unit: int, rows: int) -> Tuple[Tuple[int, int], ...]:
    """The chunk cost as the upper envelope of two lines, ``[fixed, per_unit]``:
    one through 1 and 2 units, one through m and 2m units (m = 16, or half the
    rows when fewer). The cost is the largest of a few phases, each linear in
    the chunk size (one expert's dequant temporaries dominate small chunks, the
    stack of all of them large ones), so one line would miss the others."""
    total = -(-rows // unit)

    def line(a: int, b: int) -> Tuple[int, int]:
        cost_a = chunker.cost(roots, 0, min(a * unit, rows))
        cost_b = chunker.cost(roots, 0, min(b * unit, rows))
        per_unit = max(cost_b - cost_a, 0) // (b - a)
        return (max(cost_a - per_unit * a, 0), per_unit)

    lines = [line(1, 2)]
    m = min(total // 2, LARGE_CHUNK_UNITS)
    if m > 2:
        lines.append(line(m, 2 * m))
    return tuple(lines)
