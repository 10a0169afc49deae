"""The shared tables agree with what they describe: the dtype table with the real
mx.load and mx.save_safetensors (and the safetensors reference reader), the op
allowlist with what a proxy records."""

import json
import struct

import mlx.core as mx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from sanitrace.plan import OPS, Ref
from sanitrace.plan.checks import GUARD_METHODS
from sanitrace.plan.dtypes import READ_DTYPES, dtype_name, mlx_dtype
from sanitrace.plan.ops import ARRAY_METHODS, ARRAY_PROPERTIES
from sanitrace.safetensors_format import (
    DTYPE_SIZES,
    DTYPES,
    LOAD_DTYPES,
    MLX_ITEMSIZE,
    MLX_TO_SAFETENSORS,
    read_header,
)
from sanitrace.tracer.proxy import Proxy

# the safetensors dtypes numpy has, written with safetensors' own numpy API
_NUMPY = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
    "C64": np.complex64,
}
_COUNT = 3


def _write(path, dtype: str) -> bytes:
    """A one-tensor safetensors file of ``_COUNT`` elements of ``dtype``; its data bytes."""
    if dtype in _NUMPY:
        values = (np.arange(_COUNT) % 2 == 1) if dtype == "BOOL" else np.arange(1, _COUNT + 1)
        array = values.astype(_NUMPY[dtype])
        save_file({"t": array}, str(path))
        return array.tobytes()
    data = bytes(range(0x3B, 0x3B + _COUNT * DTYPES[dtype].size))  # no NaN patterns needed: bytes compared
    raw = json.dumps({"t": {"dtype": dtype, "shape": [_COUNT], "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return data


def _bytes(array: mx.array) -> bytes:
    return np.array(array.view(mx.uint8)).tobytes()


def test_dtype_table_covers_what_safetensors_knows_and_derives_the_rest():
    assert set(_NUMPY) < set(DTYPES)
    assert DTYPE_SIZES == {st: d.size for st, d in DTYPES.items()}
    assert LOAD_DTYPES == {st: d.loads_as for st, d in DTYPES.items() if d.loads_as}
    assert set(READ_DTYPES) == set(LOAD_DTYPES)
    assert all(MLX_ITEMSIZE[name] == mlx_dtype(name).size for name in MLX_TO_SAFETENSORS)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_dtype_row_is_what_mx_load_gives(dtype, tmp_path):
    """Each row against a real file: its size is what the safetensors reference
    reader accepts, ``loads_as`` is what mx.load gives (None: it refuses the
    dtype), and the executor's read (the bytes into a buffer of the raw dtype,
    viewed as the loaded one) gives mx.load's array, byte for byte."""
    row = DTYPES[dtype]
    path = tmp_path / "t.safetensors"
    data = _write(path, dtype)
    assert len(data) == _COUNT * row.size
    with safe_open(str(path), "numpy") as f:  # checks data_offsets against the dtype's size
        assert f.get_slice("t").get_dtype() == dtype
    try:
        loaded = mx.load(str(path))["t"]
    except (RuntimeError, ValueError):
        loaded = None
    assert (None if loaded is None else dtype_name(loaded.dtype)) == row.loads_as
    if loaded is None:
        assert row.raw is None and dtype not in READ_DTYPES
        return
    assert _bytes(loaded) == data
    raw, final = READ_DTYPES[dtype]
    assert (dtype_name(raw), dtype_name(final)) == (row.raw, row.loads_as)
    assert raw.size == final.size == row.size
    buffer = mx.zeros([_COUNT], dtype=raw)  # as executor/sources.py reads a piece
    mx.eval(buffer)
    view = memoryview(buffer).cast("B")
    view[:] = data
    array = buffer if raw == final else buffer.view(final)
    assert array.dtype == loaded.dtype and _bytes(array) == data


@pytest.mark.parametrize("name", sorted(n for n in dir(mx) if isinstance(getattr(mx, n), mx.Dtype)))
def test_mlx_to_safetensors_is_what_mx_save_safetensors_writes(name, tmp_path):
    """Every mlx dtype mx.save_safetensors writes is a row's ``saved_from``, with
    the safetensors dtype it writes; one it refuses is in no row, but float64
    (the table's one stated exception: a plan writes it as F64)."""
    dtype = getattr(mx, name)
    path = tmp_path / "t.safetensors"
    try:
        mx.save_safetensors(str(path), {"t": mx.zeros([_COUNT], dtype=dtype)})
    except (RuntimeError, ValueError, TypeError):
        assert dtype_name(dtype) not in MLX_TO_SAFETENSORS or (name, MLX_TO_SAFETENSORS[name]) == ("float64", "F64")
        return
    written = read_header(str(path)).tensors["t"]
    assert MLX_TO_SAFETENSORS[dtype_name(dtype)] == written.dtype
    assert DTYPES[written.dtype].saved_from == dtype_name(dtype)
    assert MLX_ITEMSIZE[dtype_name(dtype)] * _COUNT == written.nbytes == dtype.size * _COUNT


class _Spy:
    """A recorder that notes what each proxy attribute records (ops, guards) and runs nothing."""

    def __init__(self):
        self.ops, self.values = set(), set()

    def call(self, op, fn, args, kwargs):
        self.ops.add(op)
        return Proxy.wrap(mx.zeros([2, 2]), Ref(1), self)

    def value(self, proxy, method, *args):
        self.values.add(method)
        return 0


def _recorded() -> _Spy:
    """Touch every attribute a Proxy defines (properties read, methods called with
    one argument): what it sends to its recorder."""
    spy = _Spy()
    proxy = Proxy.wrap(mx.zeros([2, 2]), Ref(0), spy)
    for name in vars(Proxy):
        try:
            attr = getattr(proxy, name)
            if callable(attr) and not isinstance(attr, type):
                attr(proxy)
        except Exception:  # a method refusing the argument, or the real in-place op after recording
            pass
    return spy


def test_proxy_records_exactly_the_allowlisted_array_ops():
    """Each array method and property of the replay allowlist that this mlx has
    is recorded by a proxy under its op name, and a proxy records no other array
    op (an in-place operator records its allowlisted out-of-place op)."""
    allowlisted = {f"array.{n}" for n in ARRAY_METHODS | ARRAY_PROPERTIES if hasattr(mx.array, n)}
    recorded = _recorded().ops
    assert recorded == allowlisted
    assert recorded <= set(OPS)


def test_proxy_value_methods_are_the_guard_methods():
    """What a proxy keeps as a guard is what a plan's guard may call
    (checks.GUARD_METHODS), plus __dlpack__: intercepted so the placeholder does
    not escape, then refused (its value is a capsule, not a plan value)."""
    assert _recorded().values == set(GUARD_METHODS) | {"__dlpack__"}
