"""Chunk rules: every construct, traced on real arrays, replayed whole and in the
smallest chunks its granularity allows, must equal the eager mx result bit for bit."""

import mlx.core as mx
import pytest

from tracing_helpers import record, replay, same_bits

from sanitrace.chunk_registry import RULES, rule
from sanitrace.chunk_rules import ChunkRule, Elementwise
from sanitrace.chunk_rules_shapes import Reshape
from sanitrace.plan import OPS, ops
from sanitrace.regions import NotChunkable, Rules, input_avals


def check(fn, arrays, tmp_path, expect_granularity=None):
    expected = fn(*arrays)
    expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    mx.eval(expected)
    nodes, refs = record(fn, arrays, tmp_path)
    whole = replay(nodes, refs, arrays, None)
    for e, w in zip(expected, whole):
        assert same_bits(e, w)
    rules = Rules(nodes)
    granularities = [rules.granularity(r, 0) for r in refs]
    if expect_granularity is not None:
        assert max(granularities) == expect_granularity
    for e, ref, g in zip(expected, refs, granularities):
        for start in range(0, e.shape[0], g):
            stop = min(start + g, e.shape[0])
            (piece,) = replay(nodes, [ref], arrays, (0, start, stop))
            assert same_bits(piece, e[start:stop]), (start, stop)
    return max(granularities)


def rand(*shape, dtype=mx.bfloat16, seed=0):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def test_fp8_block_dequant_chain_has_block_granularity(tmp_path):
    bs = 4

    def dequant(w, s):
        w = mx.from_fp8(w, dtype=mx.bfloat16)
        m, n = w.shape
        pb, ps = (-m) % bs, (-n) % bs
        w = mx.pad(w, ((0, pb), (0, ps)))
        w = w.reshape(((m + pb) // bs, bs, (n + ps) // bs, bs))
        w = (w * s[:, None, :, None]).reshape(m + pb, n + ps)
        return w[:m, :n].astype(mx.bfloat16)

    w = mx.random.randint(0, 120, (10, 7), key=mx.random.key(1)).astype(mx.uint8)
    s = mx.random.uniform(shape=(3, 2), key=mx.random.key(2))
    check(dequant, [w, s], tmp_path, expect_granularity=bs)


def test_expert_stack_then_quantize(tmp_path):
    experts = [rand(8, 64, seed=i) for i in range(6)]

    def fn(*es):
        return mx.quantize(mx.stack(es).astype(mx.bfloat16), group_size=32, bits=4)

    assert check(fn, experts, tmp_path) == 1


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "mxfp8"])
def test_quantize_modes_and_dequantize(mode, tmp_path):
    def fn(w):
        q = mx.quantize(w, group_size=32, mode=mode)
        return mx.dequantize(*q, group_size=32, mode=mode)

    check(fn, [rand(12, 64)], tmp_path)


def test_strided_deinterleave_and_slices(tmp_path):
    def fn(v):
        return mx.contiguous(v[..., ::2, :]), mx.contiguous(v[:, 1::2, 3:9])

    check(fn, [rand(5, 12, 10)], tmp_path)


def test_slice_with_offset_and_step_on_chunk_axis(tmp_path):
    check(lambda v: v[2:17:3], [rand(20, 6)], tmp_path)


def test_transpose_family(tmp_path):
    def fn(v):
        return (
            v.transpose(0, 2, 1),
            mx.swapaxes(v, -1, -2),
            mx.moveaxis(v, 2, 1),
            v.reshape(4, 30).T.T,
        )

    check(fn, [rand(4, 5, 6)], tmp_path)


def test_mla_kv_b_split(tmp_path):
    heads, nope, v_dim, rank = 4, 6, 5, 8

    def fn(w):
        v = w.reshape(heads, nope + v_dim, -1)
        wk = mx.contiguous(v[:, :nope, :].swapaxes(-1, -2))
        wv = mx.contiguous(v[:, nope:, :])
        return wk, wv

    check(fn, [rand(heads * (nope + v_dim), rank)], tmp_path)


def test_concatenate_and_split(tmp_path):
    def fn(a, b):
        joined = mx.concatenate([a, b], axis=0)
        q, k, v = mx.split(joined, [4, 7], axis=0)
        wide = mx.concatenate([a[:3], b[:3]], axis=1)
        return q, wide

    check(fn, [rand(5, 6), rand(4, 6, seed=1)], tmp_path)


def test_split_along_other_axis(tmp_path):
    check(lambda w: mx.split(w, 3, axis=1)[1], [rand(6, 9)], tmp_path)


def test_gate_up_fusion_stack_axis_one(tmp_path):
    check(lambda a, b: mx.stack([a, b], axis=1), [rand(6, 4), rand(6, 4, seed=3)], tmp_path)


def test_arithmetic_with_scalars_constants_and_inplace(tmp_path):
    shift = mx.array([0, 8, 16, 24], dtype=mx.uint32)

    def fn(w, n, u):
        w = w * 2.5 + 1.0
        w *= 0.5
        n = 1.0 + n
        packed = mx.sum(u.reshape(-1, 4).astype(mx.uint32) << shift, axis=-1)
        return -w, n / 3, packed.reshape(u.shape[0], -1)

    check(fn, [rand(6, 8), rand(6), mx.random.randint(0, 255, (6, 8), key=mx.random.key(4)).astype(mx.uint8)], tmp_path)


def test_view_bitcast_and_flatten(tmp_path):
    def fn(b):
        return b.view(mx.uint32).flatten(-2)

    blocks = mx.random.randint(0, 255, (3, 4, 2, 16), key=mx.random.key(5)).astype(mx.uint8)
    check(fn, [blocks], tmp_path)


def test_norm_reduction_and_broadcast(tmp_path):
    def fn(w, s):
        normed = w / mx.linalg.norm(w.astype(mx.float32), axis=-1, keepdims=True)
        scaled = w * mx.broadcast_to(s[:, None, None], (4, 3, 5))
        return normed, scaled

    check(fn, [rand(4, 3, 5), mx.random.uniform(shape=(4,), key=mx.random.key(6))], tmp_path)


def test_repeat_along_chunk_axis_has_repeat_granularity(tmp_path):
    check(lambda s: mx.repeat(s, 3, axis=0), [rand(4, 2)], tmp_path, expect_granularity=3)


def test_pad_in_middle_of_rows(tmp_path):
    check(lambda w: mx.pad(w, ((2, 3), (1, 0))), [rand(5, 4)], tmp_path)


def test_scalar_constants(tmp_path):
    scale = mx.array(0.125)  # a 0-d real array, stored as a const node

    def fn(w):
        return w * scale + mx.array(1.0, dtype=mx.bfloat16)

    nodes, _ = record(fn, [rand(3, 4)], tmp_path)
    assert sum(n.op == "const" for n in nodes) == 2
    check(fn, [rand(3, 4)], tmp_path)


def test_matmul_is_not_chunked(tmp_path):
    nodes, refs = record(lambda a, b: a @ b, [rand(4, 3), rand(3, 2)], tmp_path)
    with pytest.raises(NotChunkable):
        Rules(nodes).granularity(refs[0], 0)


def only_node(fn, arrays, tmp_path):
    """The one computed node of ``fn`` traced on ``arrays``, with its input avals."""
    nodes, refs = record(fn, arrays, tmp_path)
    node = nodes[refs[0].node]
    return node, input_avals(nodes, node)


def test_rules_are_validated_when_built(tmp_path):
    """A rule that cannot apply along an axis refuses to be built (NotChunkable
    from its constructor), not when a chunk is computed."""
    view, avals = only_node(lambda b: b.view(mx.uint32), [mx.zeros((3, 8), dtype=mx.uint8)], tmp_path)
    assert isinstance(rule(view, 0, 0, avals), Elementwise)  # rows of a bitcast are independent
    with pytest.raises(NotChunkable, match="view along the last axis"):
        Elementwise(view, 0, 1, avals)  # 4 bytes per uint32: the last axis changes size

    split_rows, avals = only_node(lambda w: w.reshape(2, 3, 4), [rand(6, 4)], tmp_path)
    assert rule(split_rows, 0, 0, avals).in_axes == [0]
    with pytest.raises(NotChunkable, match="reshape mixes the chunk axis with leading axes"):
        Reshape(split_rows, 0, 1, avals)  # output axis 1 cuts across input rows
    with pytest.raises(NotChunkable, match="scalar output"):
        rule(split_rows, 0, 3, avals)


def test_every_op_with_a_chunk_rule_is_replayable():
    """A chunk rule for an op the replay allowlist (plan.OPS) does not have is a
    mistake: a misspelt op name, or an op that may not be replayed."""
    allowlist = (
        {f"mx.{n}" for n in ops.MX_FUNCTIONS}
        | {f"mx.linalg.{n}" for n in ops.MX_LINALG_FUNCTIONS}
        | {f"array.{n}" for n in ops.ARRAY_METHODS | ops.ARRAY_PROPERTIES}
    )
    lacking = allowlist - set(OPS)  # allowlisted, but this mlx has no such op (0.32.2: array.__pos__, array.mT)
    assert sorted(set(RULES) - set(OPS) - lacking) == []
    assert all(issubclass(rule_class, ChunkRule) for rule_class in RULES.values())
