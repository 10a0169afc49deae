"""Chunk rules of single ops: which part of each input an op needs for a slab of its output.

An output computed in chunks is cut along one axis into row ranges. For a node
and a requested ``(axis, start, stop)`` of one of its outputs, ``rule()`` says,
for every input of the node, the axis and range it needs
(``None`` = the whole input, ``SKIP`` = not needed), and how to run the op on
those pieces so the result equals the same rows of the unchunked result, bit
for bit. Ops with no rule are computed whole.

``granularity`` says which boundaries are allowed: chunk boundaries must be
multiples of it (for example 128 rows through an FP8 block reshape).
regions.py applies these rules to a whole graph.
"""

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import mlx.core as mx

from .plan import Node, Slot, call

SKIP = "skip"


class NotChunkable(Exception):
    pass


@dataclass
class Rule:
    in_axes: List[Optional[int]]  # per input ref: axis it is chunked on, None = whole
    ranges: Callable[[int, int, list], list]  # (start, stop, input granularities) -> per input: (a, b) | None | SKIP
    granularity: Callable[[List[int]], int]  # input granularities -> output granularity
    call: Callable[[list, int, int], object]  # (input pieces, start, stop) -> output piece(s)
    all_outputs: bool = False  # call returns every output of the node


def _lcm(values) -> int:
    return math.lcm(*values) if values else 1


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _shape(aval) -> list:
    return aval[1]


def _same_op(node):
    def run(pieces, start, stop):
        return call(node, pieces)

    return run


def _rows(in_axes: List[Optional[int]], node: list, all_outputs: bool = False) -> Rule:
    """Output rows a:b need rows a:b of each input along its axis in ``in_axes``
    (None = the whole input); the op itself runs unchanged on the pieces."""
    op, _, args, kwargs, _ = node
    return Rule(
        in_axes,
        lambda a, b, gs: [(a, b) if j is not None else None for j in in_axes],
        lambda gs: _lcm([g for g, j in zip(gs, in_axes) if j is not None]),
        _same_op(node),
        all_outputs,
    )


def _elementwise(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    n = len(_shape(outs[out]))
    in_axes = []
    for aval in avals:
        shape = _shape(aval)
        j = axis - (n - len(shape))
        in_axes.append(j if j >= 0 and shape[j] != 1 else None)
    if op.endswith(".view") and axis == n - 1:
        raise NotChunkable("view along the last axis")
    return _rows(in_axes, node)


def _permutation(node, in_shape):
    """Output axis i comes from input axis perm[i]: run the op on a probe with distinct sizes."""
    probe_shape = [i + 2 for i in range(len(in_shape))]
    result = call(node, [mx.zeros(probe_shape, dtype=mx.uint8)])
    return [probe_shape.index(d) for d in result.shape]


def _transpose(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    return _rows([_permutation(node, _shape(avals[0]))[axis]], node)


def _reshape(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    out_shape, in_shape = _shape(outs[out]), _shape(avals[0])
    prefix = math.prod(out_shape[:axis])
    r_out = math.prod(out_shape[axis + 1:])
    for j in range(len(in_shape)):
        if math.prod(in_shape[:j]) == prefix and in_shape[j] * math.prod(in_shape[j + 1:]) == out_shape[axis] * r_out:
            if in_shape[j] != 1 or j == len(in_shape) - 1:
                break
    else:
        raise NotChunkable("reshape mixes the chunk axis with leading axes")
    r_in = math.prod(in_shape[j + 1:])

    def ranges(a, b, gs):
        if (a * r_out) % r_in or (b * r_out) % r_in:
            raise NotChunkable(f"reshape boundary {a}:{b} is not aligned")
        return [(a * r_out // r_in, b * r_out // r_in)]

    def granularity(gs):
        step = r_in * gs[0]
        return step // math.gcd(r_out, step)

    def call(pieces, start, stop):
        shape = list(out_shape)
        shape[axis] = stop - start
        return mx.reshape(pieces[0], shape)

    return Rule([j], ranges, granularity, call)


def _normalize_index(index, in_shape):
    """Basic index -> list of (kind, input axis, value) with Ellipsis expanded."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, (Slot, list)) for i in index):
        raise NotChunkable("advanced indexing")
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    entries, j = [], 0
    for i in index:
        if i is Ellipsis:
            for _ in range(len(in_shape) - consumed):
                entries.append(("slice", j, slice(None)))
                j += 1
        elif i is None:
            entries.append(("new", None, None))
        elif isinstance(i, slice):
            entries.append(("slice", j, i))
            j += 1
        elif isinstance(i, int):
            entries.append(("int", j, i))
            j += 1
        else:
            raise NotChunkable(f"index {i!r}")
    while j < len(in_shape):
        entries.append(("slice", j, slice(None)))
        j += 1
    return entries


def _getitem(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    in_shape = _shape(avals[0])
    entries = _normalize_index(args[1], in_shape)
    produced = [e for e in entries if e[0] != "int"]
    kind, j, sl = produced[axis]
    if kind != "slice":
        raise NotChunkable("chunk axis is a new axis")
    s, e, t = sl.indices(in_shape[j])
    if t <= 0:
        raise NotChunkable("negative step")

    def ranges(a, b, gs):
        # the last chunk may end inside an aligned block of the input: read to its end
        end = min(-(-(s + b * t) // gs[0]) * gs[0], in_shape[j])
        return [(s + a * t, end)]

    def granularity(gs):
        if s % gs[0]:
            raise NotChunkable("slice start not aligned")
        return gs[0] // math.gcd(gs[0], t)

    def call(pieces, start, stop):
        index = []
        for k, jj, value in entries:
            if k == "new":
                index.append(None)
            elif jj == j:
                index.append(slice(0, (stop - start - 1) * t + 1, t))
            else:
                index.append(value)
        return pieces[0][tuple(index)]

    return Rule([j], ranges, granularity, call)


def _arg(args, kwargs, position, name, default):
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _stack_concat(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    refs = node.inputs
    if len(refs) != len(args[0]) or not all(isinstance(r, Slot) for r in args[0]):
        raise NotChunkable("stack/concatenate with non-array arguments")
    n = len(_shape(outs[out]))
    along = _axis(_arg(args, kwargs, 1, "axis", 0), n)
    stacking = op == "mx.stack"

    def call(pieces, start, stop):
        chosen = [p for p in pieces if p is not None]
        fn = mx.stack if stacking else mx.concatenate
        return fn(chosen, axis=along)

    if axis != along:
        return _rows([axis - 1 if stacking and axis > along else axis] * len(refs), node)
    if stacking:
        return Rule(
            [None] * len(refs),
            lambda a, b, gs: [None if a <= i < b else SKIP for i in range(len(refs))],
            lambda gs: 1,
            call,
        )
    sizes = [_shape(av)[along] for av in avals]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def ranges(a, b, gs):
        result = []
        for o, size in zip(offsets, sizes):
            lo, hi = max(a - o, 0), min(b - o, size)
            result.append((lo, hi) if lo < hi else SKIP)
        return result

    def granularity(gs):
        g = _lcm(gs)
        if any(o % g for o in offsets):
            raise NotChunkable("concatenate pieces not aligned")
        return g

    return Rule([along] * len(refs), ranges, granularity, call)


def _split(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    n = len(_shape(avals[0]))
    along = _axis(_arg(args, kwargs, 2, "axis", 0), n)
    sizes = [_shape(o)[along] for o in outs]
    offset = sum(sizes[:out])

    if axis == along:
        return Rule(
            [along],
            lambda a, b, gs: [(offset + a, offset + b)],
            lambda gs: gs[0] if offset % gs[0] == 0 else _fail("split offset not aligned"),
            lambda pieces, start, stop: pieces[0],
        )

    def call(pieces, start, stop):
        index = [slice(None)] * n
        index[along] = slice(offset, offset + sizes[out])
        return pieces[0][tuple(index)]

    return Rule([axis], lambda a, b, gs: [(a, b)], lambda gs: gs[0], call)


def _fail(message):
    raise NotChunkable(message)


def _pad(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    if _arg(args, kwargs, 2, "mode", "constant") != "constant":
        raise NotChunkable("non-constant padding")
    if len(node.inputs) != 1:
        raise NotChunkable("array padding value")
    in_shape = _shape(avals[0])
    widths = _arg(args, kwargs, 1, "pad_width", 0)
    if isinstance(widths, int):
        widths = [(widths, widths)] * len(in_shape)
    elif len(widths) == 2 and all(isinstance(w, int) for w in widths):
        widths = [tuple(widths)] * len(in_shape)
    elif len(widths) == 1:
        widths = list(widths) * len(in_shape)
    widths = [tuple(w) if not isinstance(w, int) else (w, w) for w in widths]
    lo, _ = widths[axis]
    size = in_shape[axis]

    def ranges(a, b, gs):
        return [(min(max(a - lo, 0), size), min(max(b - lo, 0), size))]

    def call(pieces, start, stop):
        first = min(max(start - lo, 0), size)
        last = min(max(stop - lo, 0), size)
        before = min(max(lo - start, 0), stop - start)
        new = list(widths)
        new[axis] = (before, stop - start - before - (last - first))
        rest = dict(kwargs)
        rest.pop("pad_width", None)
        return mx.pad(pieces[0], new, *args[2:], **rest)

    return Rule(
        [axis],
        ranges,
        lambda gs: gs[0] if lo % gs[0] == 0 else _fail("pad not aligned"),
        call,
    )


def _quantized(node, out, axis, avals):
    """quantize / dequantize: rows are independent along every axis but the last."""
    op, _, args, kwargs, outs = node
    if axis >= len(_shape(outs[out])) - 1:
        raise NotChunkable("quantization groups run along the last axis")
    in_axes = [axis if len(_shape(av)) > axis + 1 else None for av in avals]
    return _rows(in_axes, node, all_outputs=op == "mx.quantize")


def _broadcast_to(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    out_shape = _shape(outs[out])
    rule = _elementwise(node, out, axis, avals)

    def call(pieces, start, stop):
        shape = list(out_shape)
        shape[axis] = stop - start
        return mx.broadcast_to(pieces[0], shape)

    rule.call = call
    return rule


def _repeat(node, out, axis, avals):
    op, _, args, kwargs, outs = node
    along = _arg(args, kwargs, 2, "axis", None)
    repeats = _arg(args, kwargs, 1, "repeats", 1)
    if along is None or not isinstance(repeats, int):
        raise NotChunkable("repeat over a flattened array")
    along = _axis(along, len(_shape(avals[0])))
    if along != axis:
        return _rows([axis], node)
    return Rule(
        [axis],
        lambda a, b, gs: [(a // repeats, -(-b // repeats))],
        lambda gs: repeats * gs[0],
        _same_op(node),
    )


def _along_other_axes(axis_position: int, keepdims_position: Optional[int]):
    """Reductions (keepdims_position given) and scans/sorts (shape-preserving, None)
    over given axes: chunkable along any other axis."""

    def rule(node, out, axis, avals):
        op, _, args, kwargs, outs = node
        n_in = len(_shape(avals[0]))
        reduced = _arg(args, kwargs, axis_position, "axis", None)
        if reduced is None:
            raise NotChunkable("reduction over all axes")
        if not isinstance(reduced, (list, tuple)):
            reduced = [reduced]
        reduced = {_axis(r, n_in) for r in reduced}
        keep = True
        if keepdims_position is not None:
            keep = _arg(args, kwargs, keepdims_position, "keepdims", False)
        kept = list(range(n_in)) if keep else [j for j in range(n_in) if j not in reduced]
        j = kept[axis]
        if j in reduced:
            raise NotChunkable("chunk axis is reduced")
        return _rows([j], node)

    return rule


ELEMENTWISE = set(
    """
    abs add arccos arccosh arcsin arcsinh arctan arctan2 arctanh array astype
    bitwise_and bitwise_invert bitwise_left_shift bitwise_or bitwise_right_shift
    bitwise_xor ceil clip conj conjugate contiguous cos cosh degrees divide equal
    erf erfinv exp expm1 floor floor_divide from_fp8 greater greater_equal imag
    isclose isfinite isinf isnan isneginf isposinf left_shift less less_equal log
    log10 log1p log2 logaddexp logical_and logical_not logical_or logical_xor
    maximum minimum multiply nan_to_num negative not_equal positive pow power
    radians real reciprocal remainder right_shift round rsqrt sigmoid sign sin
    sinh sqrt square stop_gradient subtract tan tanh to_fp8 trunc view where
    """.split()
)
_RULES = {}
for _n in ELEMENTWISE:
    _RULES[f"mx.{_n}"] = _elementwise
for _n in """abs astype conj cos exp log log10 log1p log2 reciprocal round rsqrt sin sqrt square view
    __abs__ __add__ __and__ __eq__ __floordiv__ __ge__ __gt__ __invert__ __le__ __lshift__ __lt__
    __mod__ __mul__ __ne__ __neg__ __or__ __pos__ __pow__ __radd__ __rfloordiv__ __rmod__ __rmul__
    __rpow__ __rshift__ __rsub__ __rtruediv__ __sub__ __truediv__ __xor__ __copy__ real imag""".split():
    _RULES[f"array.{_n}"] = _elementwise
for _n in ["mx.transpose", "array.transpose", "mx.swapaxes", "array.swapaxes", "mx.moveaxis",
           "array.moveaxis", "mx.permute_dims", "mx.matrix_transpose", "array.T", "array.mT"]:
    _RULES[_n] = _transpose
for _n in ["mx.reshape", "array.reshape", "mx.flatten", "array.flatten", "mx.squeeze",
           "array.squeeze", "mx.expand_dims", "mx.unflatten", "mx.atleast_1d", "mx.atleast_2d",
           "mx.atleast_3d"]:
    _RULES[_n] = _reshape
_RULES.update({
    "array.__getitem__": _getitem,
    "mx.stack": _stack_concat,
    "mx.concatenate": _stack_concat,
    "mx.concat": _stack_concat,
    "mx.split": _split,
    "mx.pad": _pad,
    "mx.quantize": _quantized,
    "mx.dequantize": _quantized,
    "mx.broadcast_to": _broadcast_to,
    "mx.repeat": _repeat,
    "array.split": _split,
    "mx.linalg.norm": _along_other_axes(2, 3),
})
for _n in "sum max min mean prod all any logsumexp argmax argmin".split():
    _RULES[f"mx.{_n}"] = _along_other_axes(1, 2)
    _RULES[f"array.{_n}"] = _along_other_axes(1, 2)
for _n in "softmax cumsum cumprod cummax cummin logcumsumexp sort argsort".split():
    _RULES[f"mx.{_n}"] = _along_other_axes(1, None)
for _n in "cumsum cumprod cummax cummin logcumsumexp".split():
    _RULES[f"array.{_n}"] = _along_other_axes(1, None)


def rule(node: Node, out: int, axis: int, avals: Sequence[list]) -> Rule:
    """The chunk rule of ``node``'s output ``out`` along ``axis``; ``avals`` are
    the [dtype, shape] of its inputs."""
    op_rule = _RULES.get(node.op)
    if op_rule is None:
        raise NotChunkable(f"{node.op} has no chunk rule")
    if len(_shape(node.outs[out])) <= axis:
        raise NotChunkable("scalar output")
    return op_rule(node, out, axis, avals)

