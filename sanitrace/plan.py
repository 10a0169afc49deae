"""The plan IR: what a plan file holds, how it is encoded, and the op allowlist.

A plan is a plain dict (see docs/plan-format.md). The tracer produces its graph,
the planner fills in layout, chunking, memory and accounting, the executor
replays it. This module is the only thing they share about the format.

Encoding is canonical msgpack: map keys sorted, tuples/slices/dtypes/node
references carried as ext types, so that the same plan always has the same bytes.
Loading never executes code: ops are names looked up in ``OPS``.
"""

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Dict

import mlx.core as mx
import msgpack
import numpy as np

FORMAT = "sanitrace-plan"
VERSION = 1
MAX_PLAN_BYTES = 1 << 30

# ext type codes (application range 0..127)
EXT_REF, EXT_TUPLE, EXT_SLICE, EXT_ELLIPSIS, EXT_DTYPE, EXT_DEVICE, EXT_CATEGORY = range(1, 8)


class PlanError(ValueError):
    """A plan file is malformed, from another format version, or names an unknown op."""


@dataclass(frozen=True)
class Ref:
    """Output ``out`` of graph node ``node``."""

    node: int
    out: int = 0


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


OPS: Dict[str, Callable] = {}
for _name in (
    [f"mx.{n}" for n in MX_FUNCTIONS]
    + [f"mx.linalg.{n}" for n in MX_LINALG_FUNCTIONS]
    + [f"array.{n}" for n in ARRAY_METHODS | ARRAY_PROPERTIES]
):
    OPS[_name] = _resolve(_name)
SPECIAL_OPS = frozenset(["load", "const"])  # resolved by the executor itself


def is_allowed(op: str) -> bool:
    return op in OPS or op in SPECIAL_OPS


# ---------------------------------------------------------------- encoding


def _dtype_by_name(name: str):
    dtype = getattr(mx, name, None)
    if not isinstance(dtype, mx.Dtype):
        raise PlanError(f"unknown dtype {name!r}")
    return dtype


def dtype_name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _device_name(device) -> str:
    if isinstance(device, mx.Stream):
        device = device.device
    if isinstance(device, mx.Device):
        device = device.type
    return device.name


def pack(obj: Any) -> bytes:
    """Canonical msgpack bytes of ``obj`` (dict keys sorted, ext types for IR values)."""
    return msgpack.packb(_encode(obj), use_bin_type=True)


def _encode(obj):
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, Ref):
        return msgpack.ExtType(EXT_REF, pack([obj.node, obj.out]))
    if isinstance(obj, list):
        return [_encode(o) for o in obj]
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, pack(list(obj)))
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("plan maps must have string keys")
        return {k: _encode(obj[k]) for k in sorted(obj)}
    if isinstance(obj, slice):
        return msgpack.ExtType(EXT_SLICE, pack([obj.start, obj.stop, obj.step]))
    if obj is Ellipsis:
        return msgpack.ExtType(EXT_ELLIPSIS, b"")
    if isinstance(obj, mx.Dtype):
        return msgpack.ExtType(EXT_DTYPE, dtype_name(obj).encode())
    if isinstance(obj, mx.DtypeCategory):
        return msgpack.ExtType(EXT_CATEGORY, obj.name.encode())
    if isinstance(obj, (mx.Device, mx.Stream, mx.DeviceType)):
        return msgpack.ExtType(EXT_DEVICE, _device_name(obj).encode())
    raise TypeError(f"cannot store a {type(obj).__name__} in a plan")


_UNPACK_LIMITS = dict(
    max_str_len=1 << 26,
    max_bin_len=1 << 28,
    max_array_len=1 << 26,
    max_map_len=1 << 24,
    max_ext_len=1 << 20,
)


def _ext_hook(code: int, data: bytes):
    if code == EXT_REF:
        node, out = unpack(data)
        return Ref(node, out)
    if code == EXT_TUPLE:
        return tuple(unpack(data))
    if code == EXT_SLICE:
        return slice(*unpack(data))
    if code == EXT_ELLIPSIS:
        return Ellipsis
    if code == EXT_DTYPE:
        return _dtype_by_name(data.decode())
    if code == EXT_CATEGORY:
        category = getattr(mx, data.decode(), None)
        if not isinstance(category, mx.DtypeCategory):
            raise PlanError(f"unknown dtype category {data!r}")
        return category
    if code == EXT_DEVICE:
        return getattr(mx, data.decode())
    raise PlanError(f"unknown ext type {code}")


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, ext_hook=_ext_hook, **_UNPACK_LIMITS
    )


# ---------------------------------------------------------------- files


def dumps(plan: dict) -> bytes:
    return pack(plan)


def loads(data: bytes) -> dict:
    """Decode and validate a plan. Raises PlanError on anything unexpected."""
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"plan of {len(data)} bytes exceeds {MAX_PLAN_BYTES}")
    try:
        plan = unpack(data)
    except PlanError:
        raise
    except Exception as e:  # msgpack raises many types for corrupt input
        raise PlanError(f"not a sanitrace plan: {e}") from e
    validate(plan)
    return plan


def save(plan: dict, path: str) -> bytes:
    data = dumps(plan)
    with open(path, "wb") as f:
        f.write(data)
    return data


def load(path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read(MAX_PLAN_BYTES + 1)
    try:
        return loads(data)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def digest(plan: dict) -> str:
    return hashlib.sha256(dumps(plan)).hexdigest()


def validate(plan: Any) -> None:
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise PlanError("not a sanitrace plan (format field missing)")
    if plan.get("version") != VERSION:
        raise PlanError(
            f"plan format version {plan.get('version')!r}; this sanitrace reads {VERSION}"
        )
    for key in ("source", "nodes", "outputs", "files", "groups"):
        if key not in plan:
            raise PlanError(f"plan has no {key!r} section")
    num_tensors = len(plan["source"]["tensors"])
    nodes = plan["nodes"]
    for i, node in enumerate(nodes):
        if not (isinstance(node, list) and len(node) == 4):
            raise PlanError(f"node {i} is malformed")
        op, args, kwargs, outs = node
        if not isinstance(op, str) or not is_allowed(op):
            raise PlanError(f"node {i}: op {op!r} is not in the replay allowlist")
        if op == "load" and not (0 <= args[0] < num_tensors):
            raise PlanError(f"node {i}: source tensor index out of range")
        for ref in iter_refs((args, kwargs)):
            if not (0 <= ref.node < i):
                raise PlanError(f"node {i}: reference to node {ref.node} is not earlier")
            if not (0 <= ref.out < len(nodes[ref.node][3])):
                raise PlanError(f"node {i}: reference to a missing output of {ref.node}")
    for out in plan["outputs"]:
        ref = out["ref"]
        if not (0 <= ref.node < len(nodes) and 0 <= ref.out < len(nodes[ref.node][3])):
            raise PlanError(f"output {out['name']!r} refers to a missing node")


def iter_refs(value):
    """Every Ref inside a (possibly nested) argument structure."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from iter_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_refs(v)


def map_refs(value, fn):
    """Copy of ``value`` with every Ref replaced by ``fn(ref)``."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    return value


# Resident size of an executor before it computes (Python, mlx, numpy, the plan;
# plus mlx-lm and the trace when run by `convert`): the part of a memory budget
# that chunks cannot use. bench/memory_baseline.py measured 39 MiB idle, 74 MiB
# with mlx-lm imported (Linux x86-64).
BASELINE_BYTES = 96 << 20


def cache_limit(budget: int) -> int:
    """mlx buffer cache allowed under ``budget`` (reused across same-size chunks)."""
    return max(budget - BASELINE_BYTES, 0) // 4


def chunk_rows(group: dict, budget: int) -> int:
    """Rows per chunk for an output group under a memory ``budget``; 0 = whole.

    A group's memory model is ``fixed_bytes + unit_bytes * units`` where a unit
    is ``unit`` rows along axis 0 (unit 0 = not chunkable); it covers the
    chunk's arrays plus the reads of the next chunk and the writes of the last.
    """
    if not group["unit"]:
        return 0
    working = budget - BASELINE_BYTES - cache_limit(budget) - group["fixed_bytes"]
    units = max(working // max(group["unit_bytes"], 1), 1)
    rows = int(units) * group["unit"]
    return 0 if rows >= group["rows"] else rows


def group_peak(group: dict, rows: int) -> int:
    """Bytes a group needs when computed ``rows`` at a time (0 = whole)."""
    if not group["unit"]:
        return group["fixed_bytes"]
    units = -(-(rows or group["rows"]) // group["unit"])
    return group["fixed_bytes"] + group["unit_bytes"] * units


def const_array(node: list) -> mx.array:
    """The array of a ``const`` node (raw little-endian bytes + its aval)."""
    (data,), (dtype, shape) = node[1], node[3][0]
    raw = mx.array(np.frombuffer(data, dtype=np.uint8))
    return raw.view(getattr(mx, dtype)).reshape(shape)


def apply(op: str, args: list, kwargs: dict):
    """Run allowlisted ``op`` on concrete arguments (arrays already substituted)."""
    try:
        fn = OPS[op]
    except KeyError:
        raise PlanError(f"op {op!r} is not in the replay allowlist") from None
    return fn(*args, **kwargs)
