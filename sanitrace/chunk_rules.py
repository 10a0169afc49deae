"""Chunk rules of single ops: which part of each input an op needs for a slab of its output.

An output computed in chunks is cut along one axis into row ranges. An op that
can be computed that way, bit for bit, has a ``ChunkRule`` subclass: the base
class and the rules that keep rows where they are (elementwise ops, axis
permutations, quantization, reductions and scans) are here, the rules that
move rows (reshapes, indexing, stack/concatenate, split, pad, repeat) in
chunk_rules_shapes.py. chunk_registry.py maps op names to rules (``RULES``,
``rule()``); regions.py applies them to a whole graph.
"""

import math
from typing import List, Optional, Sequence, Tuple, Union

import mlx.core as mx

from .chunk_rules_index import arg, aval_shape, axis_index, with_rows
from .plan import Node, call

SKIP = "skip"
InputRegion = Union[Tuple[int, int], None, str]  # rows (a, b) along the input's axis, None = whole, or SKIP


class NotChunkable(Exception):
    """The op cannot be computed in row ranges along the asked axis: it is computed whole."""


class ChunkRule:
    """How one op computes rows start:stop along ``axis`` of its output ``out``.

    A subclass is built for one (node, out, axis, avals), ``avals`` being the
    [dtype, shape] of the node's inputs; its ``__init__`` raises NotChunkable
    when the op cannot be chunked along that axis, so a rule that is built applies.

    - ``in_axes``: per input ref, the axis it is cut along (None = needed whole).
    - ``all_outputs``: ``apply`` returns every output of the node, each cut to
      start:stop, instead of output ``out`` alone.
    - ``input_regions(start, stop, input_granularities)``: per input, the rows
      (a, b) along its ``in_axes`` axis it needs, None (the whole input) or
      SKIP (not needed). ``input_granularities`` are the granularities of the
      inputs along their ``in_axes`` axis (1 for whole inputs).
    - ``granularity(input_granularities)``: g such that chunk boundaries at
      multiples of g are exact; raises NotChunkable when none is.
    - ``apply(pieces, start, stop)``: the output rows from the pieces
      ``input_regions`` asked for (None for SKIPped inputs).

    Contract: for start < stop, each a multiple of ``granularity`` or the
    output's size along ``axis``, ``apply`` of the pieces ``input_regions``
    names equals rows start:stop of the unchunked op's output, bit for bit.
    """

    in_axes: List[Optional[int]]
    all_outputs: bool = False

    def __init__(self, node: Node, out: int, axis: int, avals: Sequence[list]):
        self.node, self.axis = node, axis
        self.out_shape: List[int] = list(aval_shape(node.outs[out]))

    def input_regions(self, start: int, stop: int, input_granularities: List[int]) -> List[InputRegion]:
        raise NotImplementedError

    def granularity(self, input_granularities: List[int]) -> int:
        raise NotImplementedError

    def apply(self, pieces: list, start: int, stop: int):
        raise NotImplementedError


class SameRows(ChunkRule):
    """Output rows a:b need rows a:b of each input along its ``in_axes`` axis
    (None = the whole input); the op runs unchanged on the pieces. Subclasses
    set ``in_axes``."""

    def input_regions(self, start, stop, input_granularities):
        return [(start, stop) if j is not None else None for j in self.in_axes]

    def granularity(self, input_granularities):
        return math.lcm(*[g for g, j in zip(input_granularities, self.in_axes) if j is not None])

    def apply(self, pieces, start, stop):
        return call(self.node, pieces)


class Elementwise(SameRows):
    """Elementwise ops, broadcasting: an input is cut along the axis that lines up
    with the output's, and needed whole when it has none or it is of size 1."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        n = len(self.out_shape)
        if node.op.endswith(".view") and axis == n - 1:
            raise NotChunkable("view along the last axis")
        self.in_axes = []
        for aval in avals:
            shape = aval_shape(aval)
            j = axis - (n - len(shape))
            self.in_axes.append(j if j >= 0 and shape[j] != 1 else None)


class BroadcastTo(Elementwise):
    """mx.broadcast_to: broadcasts the piece to the chunk's shape."""

    def apply(self, pieces, start, stop):
        return mx.broadcast_to(pieces[0], with_rows(self.out_shape, self.axis, stop - start))


class Transpose(SameRows):
    """Axis permutations: the output axis is some input axis, found by running the
    op on a probe whose axes have distinct sizes."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        self.in_axes = [permutation(node, len(aval_shape(avals[0])))[axis]]


def permutation(node: Node, ndim: int) -> List[int]:
    """The input axis each output axis of a transpose-like ``node`` comes from."""
    probe_shape = [i + 2 for i in range(ndim)]
    result = call(node, [mx.zeros(probe_shape, dtype=mx.uint8)])
    return [probe_shape.index(d) for d in result.shape]


class Quantized(SameRows):
    """mx.quantize / mx.dequantize: rows are independent along every axis but the
    last (quantization groups run along it). quantize's rule gives all its
    outputs (weight, scales[, biases]) at once."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        if axis >= len(self.out_shape) - 1:
            raise NotChunkable("quantization groups run along the last axis")
        self.in_axes = [axis if len(aval_shape(av)) > axis + 1 else None for av in avals]
        self.all_outputs = node.op == "mx.quantize"


class AlongOtherAxes(SameRows):
    """Ops over given axes (reductions, scans, sorts): chunkable along any other
    axis. Subclasses say where the op takes its ``axis`` argument and its
    ``keepdims`` one (None: the op keeps the shape)."""

    axis_position: int
    keepdims_position: Optional[int]

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        _, _, args, kwargs, _ = node
        n_in = len(aval_shape(avals[0]))
        reduced = arg(args, kwargs, self.axis_position, "axis", None)
        if reduced is None:
            raise NotChunkable("reduction over all axes")
        reduced = {axis_index(r, n_in) for r in (reduced if isinstance(reduced, (list, tuple)) else [reduced])}
        keep = self.keepdims_position is None or arg(args, kwargs, self.keepdims_position, "keepdims", False)
        kept = list(range(n_in)) if keep else [j for j in range(n_in) if j not in reduced]
        if kept[axis] in reduced:
            raise NotChunkable("chunk axis is reduced")
        self.in_axes = [kept[axis]]


class Reduction(AlongOtherAxes):
    """``op(a, axis, keepdims)``: sum, max, argmax, logsumexp, ..."""

    axis_position, keepdims_position = 1, 2


class Norm(AlongOtherAxes):
    """``mx.linalg.norm(a, ord, axis, keepdims)``."""

    axis_position, keepdims_position = 2, 3


class Scan(AlongOtherAxes):
    """``op(a, axis, ...)`` keeping the shape: cumsum, softmax, sort, ..."""

    axis_position, keepdims_position = 1, None
