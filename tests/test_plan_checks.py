"""A plan cannot lie: avals re-inferred at load, index bounds, hardened decoding."""

import glob
import subprocess
import sys
import textwrap

import mlx.core as mx
import msgpack
import numpy as np
import pytest
from conftest import make_checkpoint

from sanitrace import plan as plan_ir
from sanitrace.plan.format import EXT_REF, EXT_SLOT, EXT_TUPLE
from sanitrace.planner import build_plan
from sanitrace.tracer import ConvertOptions, trace


@pytest.fixture(scope="module")
def plan_data(tmp_path_factory) -> bytes:
    src = make_checkpoint(tmp_path_factory.mktemp("llama") / "llama", "llama")
    return plan_ir.dumps(build_plan(trace(str(src), ConvertOptions())))


def decode(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=lambda c, d: msgpack.ExtType(c, d))


def encode(raw: dict) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def slot(i: int):
    return msgpack.ExtType(EXT_SLOT, msgpack.packb(i))


def splice(data: bytes, nodes: list) -> bytes:
    """The plan with ``nodes`` appended and output 0 computed by the last one.

    Each node is ``(op, args, kwargs, outs, inputs)``; an input is "x" (output 0's
    node) or a negative offset among the new nodes (-1: the one just before)."""
    raw = decode(data)
    out = raw["outputs"][0]
    x = msgpack.unpackb(out[3].data)[0]
    for op, args, kwargs, outs, inputs in nodes:
        outs = outs if outs is not None else [[out[1], out[2]]]
        i = len(raw["nodes"])
        raw["signatures"].append([op, args, kwargs, outs])
        raw["nodes"].append([len(raw["signatures"]) - 1] + [i - x if r == "x" else -r for r in inputs])
    out[3] = msgpack.ExtType(EXT_REF, msgpack.packb([len(raw["nodes"]) - 1, 0]))
    return encode(raw)


def rejects(data: bytes, *words: str) -> str:
    with pytest.raises(plan_ir.PlanError) as e:
        plan_ir.loads(data)
    for word in words:
        assert word in str(e.value), str(e.value)
    return str(e.value)


def output_aval(data: bytes):
    out = decode(data)["outputs"][0]
    return out[1], out[2]


def index_const(values, dtype=np.int32) -> tuple:
    values = np.asarray(values, dtype=dtype)
    return ("const", [values.tobytes()], {}, [[str(values.dtype), list(values.shape)]], [])


def test_untampered_and_committed_plans_load(plan_data):
    plan = plan_ir.loads(plan_data)
    assert plan_ir.dumps(plan) == plan_data  # loading keeps everything: canonical bytes round-trip
    paths = sorted(glob.glob("plans/*.msgpack"))[:4]
    assert len(paths) == 4
    for path in paths:
        plan = plan_ir.load(path)
        assert plan.outputs and plan.groups and len(plan.nodes) > len(plan.source.tensors) // 2
        with open(path, "rb") as f:
            assert plan_ir.dumps(plan) == f.read()


def test_lying_intermediate_aval(plan_data):
    dtype, shape = output_aval(plan_data)
    lie = ("array.reshape", [slot(0), [-1]], {}, None, ["x"])  # declares the unflattened shape
    rejects(splice(plan_data, [lie]), "array.reshape", "declares", f"the op gives [['{dtype}', [{np.prod(shape)}]]]")
    honest = ("array.reshape", [slot(0), list(shape)], {}, None, ["x"])
    plan_ir.loads(splice(plan_data, [honest]))


def test_op_that_raises(plan_data):
    bad = ("array.reshape", [slot(0), [7, 7, 7, 7]], {}, None, ["x"])
    rejects(splice(plan_data, [bad]), "array.reshape", "raises ValueError")


def test_negative_and_huge_dims(plan_data):
    dtype, shape = output_aval(plan_data)
    negative = ("array.reshape", [slot(0), [-2, -int(np.prod(shape)) // 2]], {}, None, ["x"])
    rejects(splice(plan_data, [negative]), "outside [0, 2147483647]")
    raw = decode(plan_data)
    huge = [1 << 20, 1 << 18] + shape  # 2^38 x 256 x 64 elements, each dimension valid
    raw["signatures"].append(["mx.broadcast_to", [slot(0), huge], {}, [[dtype, huge]]])
    raw["nodes"].append([len(raw["signatures"]) - 1, len(raw["nodes"]) - msgpack.unpackb(raw["outputs"][0][3].data)[0]])
    rejects(encode(raw), "2^48")


def test_const_bytes_must_match_aval(plan_data):
    const = index_const([0, 1, 2])
    const = (const[0], [const[1][0] + b"\0"], {}, const[3], [])
    take = ("mx.take", [slot(0), slot(1)], {"axis": 0}, None, ["x", -1])
    rejects(splice(plan_data, [const, take]), "const", "its data has 13")


def test_load_must_match_source_tensor(plan_data):
    raw = decode(plan_data)
    s = next(i for i, sig in enumerate(raw["signatures"]) if sig[0] == "load")
    name, shape = raw["signatures"][s][3][0]
    raw["signatures"][s][3] = [[name, shape + [1]]]
    rejects(encode(raw), "(load)", "source tensor")


def test_const_take_out_of_range(plan_data):
    _, shape = output_aval(plan_data)
    n = shape[0]
    take = ("mx.take", [slot(0), slot(1)], {"axis": 0}, None, ["x", -1])
    plan_ir.loads(splice(plan_data, [index_const(np.arange(-n, 0)), take]))
    rejects(splice(plan_data, [index_const([0] * (n - 1) + [n]), take]), "mx.take", f"index {n} is out of range")
    rejects(splice(plan_data, [index_const([-n - 1] + [0] * (n - 1)), take]), f"index {-n - 1} is out of range")
    along = ("mx.take_along_axis", [slot(0), slot(1)], {"axis": 0}, None, ["x", -1])
    index = np.zeros(shape, dtype=np.uint32)
    index[-1, -1] = n
    rejects(splice(plan_data, [index_const(index, np.uint32), along]), "mx.take_along_axis", "out of range")


def test_getitem_literal_out_of_range(plan_data):
    """x[5] or x[[5]] on an axis of 3 reads out of bounds in mlx (x[-4] crashes)."""
    dtype, shape = output_aval(plan_data)
    n = shape[0]
    back = ("mx.broadcast_to", [slot(0), shape], {}, None, [-1])

    def getitem(key) -> bytes:
        outs = [[dtype, ([1] if isinstance(key, list) else []) + shape[1:]]]
        if not isinstance(key, list):
            key = msgpack.ExtType(EXT_TUPLE, msgpack.packb([key, msgpack.ExtType(4, b"")]))
        return splice(plan_data, [("array.__getitem__", [slot(0), key], {}, outs, ["x"]), back])

    for key in (n - 1, -n, [n - 1]):
        plan_ir.loads(getitem(key))
    for key in (n, -n - 1, [n]):
        rejects(getitem(key), "array.__getitem__", "out of range")


def test_runtime_index_checked_at_replay():
    x = mx.arange(12).reshape(3, 4)
    assert plan_ir.apply("mx.take", [x, mx.array([-3, 2])], {"axis": 0}).shape == (2, 4)
    for index in ([3], [-4], [0, 1 << 20]):
        with pytest.raises(plan_ir.PlanError, match="out of range"):
            plan_ir.apply("mx.take", [x, mx.array(index)], {"axis": 0})
    with pytest.raises(plan_ir.PlanError, match="index 12"):
        plan_ir.apply("mx.take", [x, mx.array([12])], {})
    with pytest.raises(plan_ir.PlanError, match="index 4"):
        plan_ir.apply("mx.take_along_axis", [x, mx.array([[4]])], {"axis": 1})
    with pytest.raises(plan_ir.PlanError, match="index 4"):
        plan_ir.apply("array.__getitem__", [x, (slice(None), mx.array([4]), None)], {})
    with pytest.raises(plan_ir.PlanError, match="index 5"):
        plan_ir.apply("array.__getitem__", [x, 5], {})


def test_nested_ext_tuples():
    data = msgpack.packb(None)
    for _ in range(100):
        data = msgpack.packb(msgpack.ExtType(EXT_TUPLE, b"\x91" + data))
    rejects(data, "ext types nested more than")


def test_deeply_nested_lists():
    rejects(b"\x91" * 100_000 + b"\xc0", "nested too deep")


def test_crafted_plan_decoded_size_is_bounded():
    """16 MiB of empty lists decoded to 1.4 GB before the budget; now refused well below."""
    code = textwrap.dedent("""
        import resource
        from sanitrace import plan
        n = 16 << 20
        data = b"\\xdd" + n.to_bytes(4, "big") + b"\\x90" * n
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            plan.loads(data)
        except plan.PlanError as e:
            assert "times its size" in str(e), e
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 / len(data))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(result.stdout) < 40, result.stdout
