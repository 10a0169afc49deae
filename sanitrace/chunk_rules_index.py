"""Index arithmetic of the chunk rules (chunk_rules.py, chunk_rules_shapes.py):
avals, op arguments, axes, basic indices, pad widths, and the input axis a
reshape takes an output axis from. Plain functions of shapes and literals; a
ValueError means the construct is not supported (the rule raises NotChunkable
with its message)."""

import math
from typing import List, Optional, Tuple, Union

from .plan import Slot


def aval_shape(aval) -> list:
    """The shape of an aval ([dtype, shape])."""
    return aval[1]


def arg(args: list, kwargs: dict, position: int, name: str, default):
    """An op's argument, given at ``position`` or as keyword ``name``."""
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def axis_index(axis: int, ndim: int) -> int:
    """``axis`` counted from the front."""
    return axis + ndim if axis < 0 else axis


def with_rows(shape: List[int], axis: int, rows: int) -> List[int]:
    """``shape`` with ``rows`` along ``axis``."""
    shape = list(shape)
    shape[axis] = rows
    return shape


def basic_index(index, in_shape: List[int]) -> List[tuple]:
    """A basic index (ints, slices, None, Ellipsis) as one (kind, input axis,
    value) per entry, kind "slice", "int" or "new" (None, no input axis), with
    Ellipsis and the axes after the index expanded to full slices."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, (Slot, list)) for i in index):
        raise ValueError("advanced indexing")
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    entries: List[Tuple[str, Optional[int], Union[slice, int, None]]] = []
    j = 0
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
            raise ValueError(f"index {i!r}")
    while j < len(in_shape):
        entries.append(("slice", j, slice(None)))
        j += 1
    return entries


def pad_widths(widths, ndim: int) -> List[Tuple[int, int]]:
    """mx.pad's ``pad_width`` (an int, one (before, after) pair, or one per
    axis) as (before, after) per axis."""
    if isinstance(widths, int):
        widths = [(widths, widths)] * ndim
    elif len(widths) == 2 and all(isinstance(w, int) for w in widths):
        widths = [tuple(widths)] * ndim
    elif len(widths) == 1:
        widths = list(widths) * ndim
    return [tuple(w) if not isinstance(w, int) else (w, w) for w in widths]


def reshape_source_axis(out_shape: List[int], axis: int, in_shape: List[int]) -> Optional[int]:
    """The input axis j of a reshape whose consecutive rows make the output's
    rows along ``axis`` (as many elements before j as before ``axis``, and
    from j on as from ``axis`` on; a size-1 j only when it is the last), or
    None when the reshape mixes ``axis`` with leading axes."""
    before, rest = math.prod(out_shape[:axis]), math.prod(out_shape[axis:])
    for j in range(len(in_shape)):
        if math.prod(in_shape[:j]) == before and math.prod(in_shape[j:]) == rest:
            if in_shape[j] != 1 or j == len(in_shape) - 1:
                return j
    return None
