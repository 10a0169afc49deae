"""Chunk rules of the ops that move rows (``ChunkRule`` in chunk_rules.py): reshapes,
basic indexing, stack/concatenate, split, pad and repeat."""

import math

import mlx.core as mx

from .chunk_rules import SKIP, ChunkRule, NotChunkable, SameRows
from .chunk_rules_index import arg, aval_shape, axis_index, basic_index, pad_widths, reshape_source_axis, with_rows
from .plan import Slot, call


class Reshape(ChunkRule):
    """Reshapes that keep the elements before the chunk axis where they are: the
    output's rows are consecutive rows of one input axis j, ``r_out / r_in``
    input rows per output row (r = elements after the axis)."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        in_shape = aval_shape(avals[0])
        j = reshape_source_axis(self.out_shape, axis, in_shape)
        if j is None:
            raise NotChunkable("reshape mixes the chunk axis with leading axes")
        self.r_in, self.r_out = math.prod(in_shape[j + 1 :]), math.prod(self.out_shape[axis + 1 :])
        self.in_axes = [j]

    def input_regions(self, start, stop, input_granularities):
        r_in, r_out = self.r_in, self.r_out
        if (start * r_out) % r_in or (stop * r_out) % r_in:
            raise NotChunkable(f"reshape boundary {start}:{stop} is not aligned")
        return [(start * r_out // r_in, stop * r_out // r_in)]

    def granularity(self, input_granularities):
        step = self.r_in * input_granularities[0]
        return step // math.gcd(self.r_out, step)

    def apply(self, pieces, start, stop):
        return mx.reshape(pieces[0], with_rows(self.out_shape, self.axis, stop - start))


class GetItem(ChunkRule):
    """Basic indexing (ints, slices with a positive step, None, Ellipsis): the
    chunk axis is a sliced input axis j, read from ``first`` every ``step`` rows."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        in_shape = aval_shape(avals[0])
        try:
            self.entries = basic_index(node.args[1], in_shape)
        except ValueError as e:
            raise NotChunkable(str(e)) from None
        kind, j, sl = [e for e in self.entries if e[0] != "int"][axis]
        if kind != "slice":
            raise NotChunkable("chunk axis is a new axis")
        self.first, _, self.step = sl.indices(in_shape[j])  # output row i is input row first + i * step
        if self.step <= 0:
            raise NotChunkable("negative step")
        self.size, self.in_axes = in_shape[j], [j]

    def input_regions(self, start, stop, input_granularities):
        s, t, g = self.first, self.step, input_granularities[0]
        # the last chunk may end inside an aligned block of the input: read to its end
        end = min(-(-(s + stop * t) // g) * g, self.size)
        return [(s + start * t, end)]

    def granularity(self, input_granularities):
        g = input_granularities[0]
        if self.first % g:
            raise NotChunkable("slice start not aligned")
        return g // math.gcd(g, self.step)

    def apply(self, pieces, start, stop):
        rows = slice(0, (stop - start - 1) * self.step + 1, self.step)  # of the piece, which starts at row start
        return pieces[0][
            tuple(None if kind == "new" else rows if j == self.in_axes[0] else value for kind, j, value in self.entries)
        ]


class StackConcat(SameRows):
    """mx.stack / mx.concatenate of a list of arrays. Along another axis than they
    are joined on: the same rows of each. Along the stacking axis: output row i
    is input i, whole (the others SKIPped). Along the concatenation axis: each
    input's part of start:stop (the others SKIPped), inputs starting aligned."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        op, refs, args, kwargs, _ = node
        if len(refs) != len(args[0]) or not all(isinstance(r, Slot) for r in args[0]):
            raise NotChunkable("stack/concatenate with non-array arguments")
        self.along = axis_index(arg(args, kwargs, 1, "axis", 0), len(self.out_shape))
        self.stacking = op == "mx.stack"
        self.sizes, self.offsets = [], []  # of each input along the concatenation axis
        if axis != self.along:
            self.in_axes = [axis - 1 if self.stacking and axis > self.along else axis] * len(refs)
        elif self.stacking:
            self.in_axes = [None] * len(refs)
        else:
            self.in_axes = [self.along] * len(refs)
            self.sizes = [aval_shape(av)[self.along] for av in avals]
            self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def input_regions(self, start, stop, input_granularities):
        if self.axis != self.along:
            return super().input_regions(start, stop, input_granularities)
        if self.stacking:
            return [None if start <= i < stop else SKIP for i in range(len(self.in_axes))]
        result = []
        for offset, size in zip(self.offsets, self.sizes):
            lo, hi = max(start - offset, 0), min(stop - offset, size)
            result.append((lo, hi) if lo < hi else SKIP)
        return result

    def granularity(self, input_granularities):
        g = super().granularity(input_granularities)
        if any(offset % g for offset in self.offsets):
            raise NotChunkable("concatenate pieces not aligned")
        return g

    def apply(self, pieces, start, stop):
        if self.axis != self.along:
            return super().apply(pieces, start, stop)
        chosen = [p for p in pieces if p is not None]
        return (mx.stack if self.stacking else mx.concatenate)(chosen, axis=self.along)


class Split(ChunkRule):
    """Output ``out`` of mx.split: along the split axis, rows start:stop of that
    output are input rows ``offset + start : offset + stop``; along another
    axis, rows start:stop of the input, then that output's slice of them."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        _, _, args, kwargs, outs = node
        self.along = axis_index(arg(args, kwargs, 2, "axis", 0), len(aval_shape(avals[0])))
        sizes = [aval_shape(o)[self.along] for o in outs]
        self.offset, self.size = sum(sizes[:out]), sizes[out]
        self.shift = self.offset if axis == self.along else 0  # input row of output row 0
        self.in_axes = [axis]

    def input_regions(self, start, stop, input_granularities):
        return [(self.shift + start, self.shift + stop)]

    def granularity(self, input_granularities):
        if self.shift % input_granularities[0]:
            raise NotChunkable("split offset not aligned")
        return input_granularities[0]

    def apply(self, pieces, start, stop):
        if self.axis == self.along:
            return pieces[0]
        return pieces[0][(slice(None),) * self.along + (slice(self.offset, self.offset + self.size),)]


class Pad(ChunkRule):
    """mx.pad with a constant value: the input rows the chunk covers, padded with
    the part of the padding before and after them that falls in the chunk."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        _, refs, args, kwargs, _ = node
        if arg(args, kwargs, 2, "mode", "constant") != "constant":
            raise NotChunkable("non-constant padding")
        if len(refs) != 1:
            raise NotChunkable("array padding value")
        in_shape = aval_shape(avals[0])
        self.widths = pad_widths(arg(args, kwargs, 1, "pad_width", 0), len(in_shape))
        self.before, self.size = self.widths[axis][0], in_shape[axis]
        self.in_axes = [axis]

    def input_regions(self, start, stop, input_granularities):
        lo, size = self.before, self.size
        return [(min(max(start - lo, 0), size), min(max(stop - lo, 0), size))]

    def granularity(self, input_granularities):
        if self.before % input_granularities[0]:
            raise NotChunkable("pad not aligned")
        return input_granularities[0]

    def apply(self, pieces, start, stop):
        [(first, last)] = self.input_regions(start, stop, [])
        before = min(max(self.before - start, 0), stop - start)
        widths = list(self.widths)
        widths[self.axis] = (before, stop - start - before - (last - first))
        _, _, args, kwargs, _ = self.node
        rest = {k: v for k, v in kwargs.items() if k != "pad_width"}
        return mx.pad(pieces[0], widths, *args[2:], **rest)


class Repeat(ChunkRule):
    """mx.repeat along an axis: along it, output rows a:b come from input rows
    a // repeats : ceil(b / repeats); along another axis, the same rows."""

    def __init__(self, node, out, axis, avals):
        super().__init__(node, out, axis, avals)
        _, _, args, kwargs, _ = node
        repeats, along = arg(args, kwargs, 1, "repeats", 1), arg(args, kwargs, 2, "axis", None)
        if along is None or not isinstance(repeats, int):
            raise NotChunkable("repeat over a flattened array")
        self.factor = (
            repeats if axis_index(along, len(aval_shape(avals[0]))) == axis else 1
        )  # output rows per input row
        self.in_axes = [axis]

    def input_regions(self, start, stop, input_granularities):
        return [(start // self.factor, -(-stop // self.factor))]

    def granularity(self, input_granularities):
        return self.factor * input_granularities[0]

    def apply(self, pieces, start, stop):
        return call(self.node, pieces)
