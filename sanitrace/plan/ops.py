"""The op allowlist: every op a plan may name, and how it is applied.

``load`` and ``const`` are the two leaf ops (a source tensor, a small literal
array); every other op is a pure function of mlx.core, mx.linalg or a method,
operator or property of mx.array, named ``mx.<fn>``, ``mx.linalg.<fn>`` or
``array.<attr>``. Nothing else can be replayed.
"""

from typing import Callable, Dict

import mlx.core as mx


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

# Ops that only re-describe their input's memory (no new buffer in MLX).
VIEW_OPS = frozenset(
    [
        "mx.reshape", "array.reshape", "mx.flatten", "array.flatten",
        "mx.squeeze", "array.squeeze", "mx.expand_dims", "mx.unflatten",
        "mx.transpose", "array.transpose", "mx.swapaxes", "array.swapaxes",
        "mx.moveaxis", "array.moveaxis", "mx.permute_dims", "mx.matrix_transpose",
        "array.T", "array.mT", "array.__getitem__", "mx.broadcast_to",
        "mx.view", "array.view", "mx.split", "array.split",
    ]
)


def _resolve(name: str) -> Callable:
    if name.startswith("mx.linalg."):
        fn = name[len("mx.linalg."):]
        if fn in MX_LINALG_FUNCTIONS:
            return getattr(mx.linalg, fn)
    elif name.startswith("mx."):
        fn = name[3:]
        if fn in MX_FUNCTIONS:
            return getattr(mx, fn)
    elif name.startswith("array."):
        attr = name[6:]
        if attr in ARRAY_METHODS:
            return getattr(mx.array, attr)
        if attr in ARRAY_PROPERTIES:
            return lambda a: getattr(a, attr)
    raise PlanError(f"op {name!r} is not in the replay allowlist")


OPS: Dict[str, Callable] = {
    name: _resolve(name)
    for name in sorted(
        [f"mx.{n}" for n in MX_FUNCTIONS]
        + [f"mx.linalg.{n}" for n in MX_LINALG_FUNCTIONS]
        + [f"array.{n}" for n in ARRAY_METHODS | ARRAY_PROPERTIES]
    )
}
SPECIAL_OPS = frozenset(["load", "const"])  # resolved by the executor itself


def is_allowed(op: str) -> bool:
    return op in OPS or op in SPECIAL_OPS


def apply(op: str, args: list, kwargs: dict):
    """Run allowlisted ``op`` on concrete arguments (arrays already substituted)."""
    try:
        fn = OPS[op]
    except KeyError:
        raise PlanError(f"op {op!r} is not in the replay allowlist") from None
    return fn(*args, **kwargs)
