"""The op allowlist: every op a plan may name, and how it is applied.

``load`` and ``const`` are the two leaf ops (a source tensor, a small literal
array); every other op is a pure function of mlx.core, mx.linalg or a method,
operator or property of mx.array, named ``mx.<fn>``, ``mx.linalg.<fn>`` or
``array.<attr>``. Nothing else can be replayed.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np


class PlanError(ValueError):
    """A plan file is malformed, from another format version, or names an unknown op."""


# Functions of mlx.core a plan may call. All are pure functions of their inputs.
MX_FUNCTIONS = frozenset(
    """
    abs add addmm all any arccos arccosh arcsin arcsinh arctan arctan2 arctanh
    argmax argmin argpartition argsort array astype atleast_1d atleast_2d
    atleast_3d bitwise_and bitwise_invert bitwise_left_shift bitwise_or
    bitwise_right_shift bitwise_xor broadcast_to ceil clip concat concatenate
    conj conjugate contiguous cos cosh cummax cummin cumprod cumsum degrees
    dequantize diag diagonal diff divide equal erf erfinv exp expand_dims expm1
    flatten flip floor floor_divide from_fp8 full_like greater greater_equal
    hadamard_transform imag inner isclose isfinite isinf isnan isneginf isposinf
    kron left_shift less less_equal log log10 log1p log2 logaddexp logcumsumexp
    logical_and logical_not logical_or logical_xor logsumexp matmul
    matrix_transpose max maximum mean median min minimum moveaxis multiply
    nan_to_num negative not_equal ones_like outer pad partition permute_dims
    positive pow power prod quantize radians real reciprocal remainder repeat
    reshape right_shift roll round rsqrt sigmoid sign sin sinh softmax sort
    split sqrt square squeeze stack std stop_gradient subtract sum swapaxes take
    take_along_axis tan tanh tensordot tile to_fp8 topk trace transpose tril
    triu trunc unflatten unstack var view where zeros_like
    """.split()
)
MX_LINALG_FUNCTIONS = frozenset(["norm", "cross"])

# Methods and operators of mx.array a plan may call (value methods such as
# item/tolist and scatter via .at are not here).
ARRAY_METHODS = frozenset(
    """
    abs all any argmax argmin astype conj cos cummax cummin cumprod cumsum diag
    diagonal exp flatten log log10 log1p log2 logcumsumexp logsumexp max mean
    min moveaxis prod reciprocal reshape round rsqrt sin split sqrt square
    squeeze std sum swapaxes transpose var view
    __abs__ __add__ __and__ __eq__ __floordiv__ __ge__ __getitem__ __gt__
    __invert__ __le__ __lshift__ __lt__ __matmul__ __mod__ __mul__ __ne__
    __neg__ __or__ __pos__ __pow__ __radd__ __rfloordiv__ __rmod__ __rmul__
    __rpow__ __rshift__ __rsub__ __rtruediv__ __sub__ __truediv__ __xor__
    __copy__
    """.split()
)
ARRAY_PROPERTIES = frozenset(["T", "mT", "real", "imag"])

# Views that keep row-major order: of a contiguous input no new buffer in MLX,
# of a strided one (a transpose, an inner slice) a contiguous copy.
RESHAPE_VIEW_OPS = frozenset(
    "mx.reshape array.reshape mx.flatten array.flatten mx.squeeze array.squeeze mx.expand_dims mx.unflatten "
    "mx.view array.view".split()
)
# Ops that only re-describe their input's memory (no new buffer in MLX).
VIEW_OPS = RESHAPE_VIEW_OPS | frozenset(
    "mx.transpose array.transpose mx.swapaxes array.swapaxes mx.moveaxis array.moveaxis mx.permute_dims "
    "mx.matrix_transpose array.T array.mT array.__getitem__ mx.broadcast_to mx.split array.split".split()
)


def _resolve(name: str) -> Optional[Callable]:
    """The function for allowlisted ``name``; None when this mlx lacks it (an older one)."""
    if name.startswith("mx.linalg."):
        fn = name[len("mx.linalg.") :]
        if fn in MX_LINALG_FUNCTIONS:
            return getattr(mx.linalg, fn, None)
    elif name.startswith("mx."):
        fn = name[3:]
        if fn in MX_FUNCTIONS:
            return getattr(mx, fn, None)
    elif name.startswith("array."):
        attr = name[6:]
        if attr in ARRAY_METHODS:
            return getattr(mx.array, attr, None)
        if attr in ARRAY_PROPERTIES:
            return (lambda a: getattr(a, attr)) if hasattr(mx.array, attr) else None
    raise PlanError(f"op {name!r} is not in the replay allowlist")


# The allowlist less what this mlx lacks (mlx 0.32.2 has no array.__pos__ or array.mT):
# a plan naming one of those fails to load here, as an op outside the allowlist.
OPS: Dict[str, Callable] = {
    name: fn
    for name in sorted(
        [f"mx.{n}" for n in MX_FUNCTIONS]
        + [f"mx.linalg.{n}" for n in MX_LINALG_FUNCTIONS]
        + [f"array.{n}" for n in ARRAY_METHODS | ARRAY_PROPERTIES]
    )
    if (fn := _resolve(name)) is not None
}
SPECIAL_OPS = frozenset(["load", "const"])  # resolved by the executor itself


def is_allowed(op: str) -> bool:
    return op in OPS or op in SPECIAL_OPS


# Ops that read their input at index values: mlx does not check them (an
# out-of-range take or gather reads whatever lies beyond the buffer, or crashes).
INDEX_OPS = frozenset(["mx.take", "mx.take_along_axis", "array.__getitem__"])


def _getitem_indices(a, key) -> List[Tuple[Any, int]]:
    """(index, axis size) of each int, list or array in an ``a[key]`` key."""
    key = key if isinstance(key, tuple) else (key,)
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    found, axis = [], 0
    for k in key:
        if k is None:
            continue
        if k is Ellipsis:
            axis += max(a.ndim - used, 0)
            continue
        if isinstance(k, (int, list, mx.array)) and axis < a.ndim:
            found.append((k, a.shape[axis]))
        axis += 1
    return found


def indices(op: str, args: list, kwargs: dict) -> List[Tuple[Any, int]]:
    """(index, extent) of every index an INDEX_OPS op reads at: an int, a list
    literal or an array, whose values must all be in [-extent, extent)."""
    if op == "array.__getitem__":
        if len(args) != 2 or kwargs or not isinstance(args[0], mx.array):
            return []
        return _getitem_indices(args[0], args[1])
    names = ["a", "indices", "axis"]
    bound = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
    a, index = bound.get("a"), bound.get("indices")
    axis = bound.get("axis", None if op == "mx.take" else -1)
    if not isinstance(a, mx.array) or index is None:
        return []
    if axis is None:
        return [(index, a.size)]
    if type(axis) is not int or not -a.ndim <= axis < a.ndim:
        return []  # mlx refuses the axis itself
    return [(index, a.shape[axis])]


def check_index(op: str, index: Any, extent: int) -> None:
    """PlanError unless every value of ``index`` (an int, a list literal or an
    array, evaluated here) is in [-extent, extent), where mlx reads in bounds."""
    if isinstance(index, mx.array):
        if index.size == 0:
            return
        lowest, highest = mx.min(index), mx.max(index)
        mx.eval(lowest, highest)
        low, high = lowest.item(), highest.item()
        assert not isinstance(low, complex) and not isinstance(high, complex)  # mlx refuses complex indices
    elif isinstance(index, list):
        values = np.asarray(index)
        if values.size == 0 or values.dtype.kind not in "iu":
            return  # mlx refuses non-integer indices itself
        low, high = int(values.min()), int(values.max())
    elif type(index) is int:
        low = high = index
    else:
        return
    if low < -extent or high >= extent:
        bad = low if low < -extent else high
        raise PlanError(f"{op}: index {bad} is out of range for an axis of size {extent}")


def apply(op: str, args: list, kwargs: dict):
    """Run allowlisted ``op`` on concrete arguments (arrays already substituted);
    the indices of INDEX_OPS are evaluated and bounds-checked first."""
    try:
        fn = OPS[op]
    except KeyError:
        raise PlanError(f"op {op!r} is not in the replay allowlist") from None
    if op in INDEX_OPS:
        for index, extent in indices(op, args, kwargs):
            check_index(op, index, extent)
    return fn(*args, **kwargs)
