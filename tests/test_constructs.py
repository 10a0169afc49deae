"""One test per construct that sanitize code uses (../shared/notes/sanitize-census.md),
traced on real arrays, passed through the plan file's encoding and replayed: the
replay must equal running the same code eagerly, bit for bit, whole and (where the
construct can be chunked) in its smallest chunks. A regression names the
construct, not a model."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from tracing_helpers import record, replay, same_bits, through_plan_file

from sanitrace.regions import NotChunkable, Rules


def w(*shape, dtype=mx.bfloat16, seed=0):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def u8(*shape, seed=0):
    return mx.random.randint(0, 255, shape, key=mx.random.key(seed)).astype(mx.uint8)


def fp8(*shape, seed=0):
    return mx.random.randint(0, 120, shape, key=mx.random.key(seed)).astype(mx.uint8)


MUP = mx.arange(6, dtype=mx.float32) / 7  # a model-owned real array (falcon_h1 _mup_vector)
SHIFTS = mx.array([0, 8, 16, 24], dtype=mx.uint32)


def _tree_roundtrip(a, b):
    nested = tree_unflatten([("layers.0.w", a), ("layers.1.w", b)])
    return [v for _, v in tree_flatten(nested)]


def _falcon_mup(p):
    p *= 0.5 * MUP.astype(p.dtype)[:, None]  # in place, rebinding
    return p


def _branch_on_metadata(v):
    if v.ndim == 3 and v.shape[-1] != 1 and v.dtype == mx.bfloat16 and v.size > 0:
        v = v.moveaxis(2, 1)  # conv-layout detection, as check_array_shape does
    return v


def _isinstance_then(v):
    assert isinstance(v, mx.array) and len(v) == v.shape[0]
    return v


def _iterate_rows(v):
    return mx.stack([row * 2 for row in v])


CONSTRUCTS = {
    # mx functions
    "mx.stack experts": (lambda *e: mx.stack(e), [w(4, 6, seed=i) for i in range(5)]),
    "mx.stack axis=1": (lambda a, b: mx.stack([a, b], axis=1), [w(4, 3), w(4, 3, seed=1)]),
    "mx.concatenate axis=0": (lambda a, b: mx.concatenate([a, b]), [w(3, 4), w(5, 4, seed=1)]),
    "mx.concatenate axis=-1": (lambda a, b: mx.concatenate([a, b], axis=-1), [w(3, 4), w(3, 2, seed=1)]),
    "mx.concatenate axis=-2": (lambda a, b: mx.concatenate([a, b], axis=-2), [w(2, 3, 4), w(2, 1, 4, seed=1)]),
    "mx.split sections": (lambda v: mx.split(v, 3, axis=0), [w(6, 4)]),
    "mx.split indices": (lambda v: mx.split(v, [2, 5], axis=-1), [w(4, 8)]),
    "array.split": (lambda v: v.split(2, axis=1), [w(3, 4)]),
    "mx.contiguous": (lambda v: mx.contiguous(v.T), [w(4, 6)]),
    "mx.quantize affine": (lambda v: mx.quantize(v, group_size=32, bits=4), [w(4, 64)]),
    "mx.quantize mxfp4": (lambda v: mx.quantize(v, group_size=32, bits=4, mode="mxfp4"), [w(4, 64)]),
    "mx.dequantize": (
        lambda q, s, b: mx.dequantize(q, s, b, group_size=32, bits=4),
        list(mx.quantize(w(4, 64), group_size=32, bits=4)),
    ),
    "mx.broadcast_to expert scales": (lambda s: mx.broadcast_to(s[:, None, None], (3, 4, 5)), [w(3)]),
    "mx.pad fp8 blocks": (lambda v: mx.pad(v, ((0, 3), (0, 1))), [w(5, 7)]),
    "mx.from_fp8": (lambda v: mx.from_fp8(v, dtype=mx.bfloat16), [fp8(4, 8)]),
    "mx.linalg.norm rows": (lambda v: v / mx.linalg.norm(v.astype(mx.float32), axis=-1, keepdims=True), [w(4, 8)]),
    "mx.repeat scale rows": (lambda s: mx.repeat(s, 4, axis=-2), [w(3, 2, 5)]),
    "mx.reshape": (lambda v: mx.reshape(v, (2, -1)), [w(4, 6)]),
    "mx.swapaxes": (lambda v: mx.swapaxes(v, 1, 2), [w(2, 3, 4)]),
    "mx.sqrt / mx.sum weight norm": (
        lambda v, g: v * g / mx.maximum(mx.sqrt(mx.sum(v * v, axis=1, keepdims=True)), 1e-12),
        [w(4, 6, dtype=mx.float32), w(4, 1, dtype=mx.float32)],
    ),
    "mx.array wrap": (lambda v: mx.array(v), [w(3, 4)]),
    "mx.flatten start/end": (lambda v: mx.flatten(v, 0, 1), [w(2, 3, 4)]),
    "mx.clip / mx.sigmoid gate reparam": (lambda v: mx.clip(mx.sigmoid(v), 0.1, 0.9), [w(4, 4)]),
    "mx.zeros injected constant": (lambda v: mx.concatenate([v, mx.zeros((1, 4), dtype=v.dtype)]), [w(3, 4)]),
    "mx.ones injected constant": (lambda v: v + mx.ones((4,), dtype=v.dtype), [w(3, 4)]),
    "mx.expand_dims": (lambda v: mx.expand_dims(v, 1), [w(3, 4)]),
    "mx.log2 E8M0 scales": (lambda s: (mx.log2(s) + 127).astype(mx.uint8), [mx.abs(w(4, 4, dtype=mx.float32)) + 0.5]),
    "mx.maximum": (lambda a, b: mx.maximum(a, b), [w(3, 4), w(3, 4, seed=1)]),
    "mx.any / mx.all validation": (lambda s: mx.stack([mx.any(s != 1, axis=-1), mx.all(s == -1, axis=-1)]), [w(3, 4)]),
    # array methods
    "array.transpose conv OIHW->OHWI": (lambda v: v.transpose(0, 2, 3, 1), [w(2, 3, 4, 5)]),
    "array.transpose no args": (lambda v: v.transpose(), [w(2, 3, 4)]),
    "array.reshape varargs and -1": (lambda v: v.reshape(3, -1), [w(3, 4, 2)]),
    "array.reshape tuple": (lambda v: v.reshape((6, 4)), [w(3, 8)]),
    "array.astype": (lambda v: v.astype(mx.float16), [w(3, 4)]),
    "array.astype to uint32": (lambda v: v.astype(mx.uint32), [u8(3, 4)]),
    "array.astype to bool, bool constant": (
        lambda v: v.astype(mx.bool_) & mx.array([True, False, True])[:, None],
        [u8(3, 4)],
    ),
    "array.moveaxis mamba conv1d": (lambda v: v.moveaxis(2, 1), [w(4, 1, 3)]),
    "array.swapaxes": (lambda v: v.swapaxes(-1, -2), [w(2, 3, 4)]),
    "array.view uint8->uint32": (lambda v: v.view(mx.uint32), [u8(3, 8)]),
    "array.view with stream=mx.cpu": (lambda v: v.view(mx.uint32, stream=mx.cpu), [u8(2, 4)]),
    "array.squeeze": (lambda v: v.squeeze(), [w(3, 1, 4)]),
    "array.T": (lambda v: v.T, [w(3, 4)]),
    "array.flatten(-2) mxfp4 blocks": (lambda b: b.view(mx.uint32).flatten(-2), [u8(2, 3, 4, 16)]),
    # operators
    "operator * array": (lambda a, b: a * b, [w(3, 4), w(3, 4, seed=1)]),
    "operator / scalar": (lambda a: a / 3.0, [w(3, 4)]),
    "operator + scalar (norm offset)": (lambda a: a + 1.0, [w(4)]),
    "operator reflected scalar": (lambda a: -8 * a, [w(3, 4)]),
    "operator unary -": (lambda a: -a, [w(3, 4)]),
    "operator @ (LoRA merge)": (
        lambda base, b, a: base + 0.5 * (b @ a),
        [w(4, 4, dtype=mx.float32), w(4, 2, dtype=mx.float32), w(2, 4, dtype=mx.float32)],
    ),
    "operator << bit packing": (lambda v: mx.sum(v.reshape(-1, 4).astype(mx.uint32) << SHIFTS, axis=-1), [u8(3, 8)]),
    "operator & |": (lambda a, b: (a & b) | a, [u8(3, 4), u8(3, 4, seed=1)]),
    "operator == !=": (lambda s: mx.logical_and(s != 1, s == s), [w(3, 4)]),
    "operator *= in place": (_falcon_mup, [w(6, 3)]),
    "operator += in place shared": (lambda a: (lambda x: (x.__iadd__(1.0), x)[1])(a), [w(3, 4)]),
    "real array operand (module buffer)": (lambda p: p * MUP.astype(p.dtype)[:, None], [w(6, 3)]),
    # indexing
    "getitem slice": (lambda v: v[:2, 1:], [w(4, 5)]),
    "getitem strided de-interleave": (
        lambda v: (mx.contiguous(v[..., ::2, :]), mx.contiguous(v[..., 1::2, :])),
        [w(2, 6, 4)],
    ),
    "getitem strided falcon": (lambda v: mx.concatenate([v[0::2], v[1::2]]), [w(6, 4)]),
    "getitem int": (lambda v: v[1], [w(3, 4)]),
    "getitem None newaxis": (lambda s: s[:, None, :, None], [w(2, 3)]),
    "getitem Ellipsis": (lambda v: v[..., :2], [w(2, 3, 4)]),
    "getitem negative": (lambda v: v[-2:, :-1], [w(4, 3)]),
    # Python-level structure
    "tree_unflatten/tree_flatten leaves": (_tree_roundtrip, [w(2, 3), w(2, 3, seed=1)]),
    "branch on shape/ndim/dtype/size": (_branch_on_metadata, [w(2, 3, 4)]),
    "isinstance and len": (_isinstance_then, [w(3, 4)]),
    "iterate rows": (_iterate_rows, [w(3, 4)]),
    "one source, several outputs": (lambda v: (v[:2] * 2, v[2:] + 1, v.T), [w(4, 3)]),
}


@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_construct(construct, tmp_path):
    fn, arrays = CONSTRUCTS[construct]
    expected = fn(*[mx.array(a) for a in arrays])  # copies: in-place ops rebind their input
    expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    mx.eval(expected)
    nodes, refs = record(fn, [mx.array(a) for a in arrays], tmp_path)
    nodes = through_plan_file(nodes, len(arrays))
    whole = replay(nodes, refs, arrays, None)
    for e, got in zip(expected, whole):
        assert same_bits(e, got)
    rules = Rules(nodes)
    for e, ref in zip(expected, refs):
        if e.ndim == 0 or e.shape[0] < 2:
            continue
        try:
            g = rules.granularity(ref, 0)
        except NotChunkable:
            continue  # computed whole, which the check above covers
        for start in range(0, e.shape[0], g):
            (piece,) = replay(nodes, [ref], arrays, (0, start, min(start + g, e.shape[0])))
            assert same_bits(piece, e[start : start + g]), (construct, start)


def test_value_of_a_tensor_is_refused_without_data(tmp_path):
    from sanitrace.tracer.proxy import TraceError

    with pytest.raises(TraceError, match=r"\.item.*test_constructs\.py:\d+"):
        record(lambda v: v * (1 if mx.any(v > 0).item() else 2), [w(3)], tmp_path)


def test_scatter_assignment_is_refused(tmp_path):
    from sanitrace.tracer.proxy import TraceError

    def scatter(v):
        v[0] = 0
        return v

    with pytest.raises(TraceError, match="item assignment"):
        record(scatter, [w(3)], tmp_path)


def test_module_mutation_in_sanitize_is_plain_python(tmp_path):
    """Sanitize may set attributes on the model (gemma3 pops lm_head): proxies are values."""
    holder = nn.Module()
    holder.weight = w(3, 4)

    def mutate(v):
        holder.weight = v * 2
        return holder.weight

    nodes, refs = record(mutate, [w(3, 4)], tmp_path)
    assert [n.op for n in nodes] == ["load", "array.__mul__"]
