"""Running one node: its argument structure with arrays in its slots, its op
applied to them, and the array a ``const`` node holds."""

from typing import Any, Callable

import mlx.core as mx
import numpy as np

from .dtypes import known_dtype
from .ops import apply
from .types import Node, Slot


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


def const_array(node: Node) -> mx.array:
    """The array of a ``const`` node (raw little-endian bytes + its aval)."""
    (data,), (dtype, shape) = node.args, node.outs[0]
    raw = mx.array(np.frombuffer(data, dtype=np.uint8))
    return raw.view(known_dtype(dtype)).reshape(shape)
