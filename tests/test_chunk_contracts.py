"""Contracts between the planner's chunking and the executor's replay (issue 15):
a group's chunk unit suits every output (the least common multiple of their
granularities), a value has one identity that the planner's costing and the
replayer share, and every construct replays in chunks of several units with a
ragged tail. The replayer runs with its invariant checks on (SANITRACE_INVARIANTS)."""

import json
import textwrap

import mlx.core as mx
import pytest
from conftest import copy_tree, make_checkpoint
from test_constructs import CONSTRUCTS
from tracing_helpers import record, replay_chunk, same_bits, through_plan_file

from sanitrace.compare import compare_folders
from sanitrace.executor import execute
from sanitrace.executor.replay import INVARIANTS, Replayer
from sanitrace.plan import Output, PlanError
from sanitrace.planner import build_plan
from sanitrace.planner.chunking import Chunker, plan_groups
from sanitrace.planner.graph import structure
from sanitrace.planner.layout import nbytes
from sanitrace.regions import ALL_OUTPUTS, Rules
from sanitrace.tracer import ConvertOptions, trace


@pytest.fixture(autouse=True)
def invariants(monkeypatch):
    monkeypatch.setenv(INVARIANTS, "1")


def rand(*shape, dtype=mx.bfloat16, seed=0):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def outputs_of(nodes, refs) -> list:
    """Plan outputs for ``refs`` (names and file places do not matter here)."""
    result = []
    for i, ref in enumerate(refs):
        dtype, shape = nodes[ref.node].outs[ref.out]
        result.append(Output(f"out{i}", dtype, tuple(shape), ref, 0, 0, nbytes([dtype, shape])))
    return result


def run_eagerly(fn, arrays) -> list:
    expected = fn(*[mx.array(a) for a in arrays])  # copies: in-place ops rebind their input
    expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    mx.eval(expected)
    return expected


def check_group_chunks(nodes, refs, arrays, expected, units: int) -> int:
    """Replay each output group the planner forms in chunks of ``units`` units
    (the last one ragged) and compare with ``expected``; returns how many
    groups were chunked."""
    outputs = outputs_of(nodes, refs)
    replayer = Replayer(nodes, refs)
    chunked = 0
    for group in plan_groups(nodes, outputs):
        if not group.unit:
            continue  # whole only: the whole replay covers it
        chunked += 1
        roots = [outputs[i].ref for i in group.outputs]
        rows = units * group.unit
        for start in range(0, group.rows, rows):
            stop = min(start + rows, group.rows)
            pieces = replay_chunk(replayer, roots, arrays, (0, start, stop))
            for i, piece in zip(group.outputs, pieces):
                assert same_bits(piece, expected[i][start:stop]), (outputs[i].name, start, stop)
    return chunked


# Bug 1: a group's unit is the lcm of its roots' granularities, not the largest.


def two_granularities(a, b):
    """Two outputs sharing ``mixed``: every third row three times (granularity
    3) and every other row twice (granularity 2)."""
    mixed = a + b
    return mx.repeat(mixed[::3], 3, axis=0)[:8], mx.repeat(mixed[1::2], 2, axis=0)


def test_group_unit_is_the_lcm_of_its_outputs_granularities(tmp_path):
    arrays = [rand(8, 4), rand(8, 4, seed=1)]
    expected = run_eagerly(two_granularities, arrays)
    nodes, refs = record(two_granularities, [mx.array(a) for a in arrays], tmp_path)
    nodes = through_plan_file(nodes, len(arrays))
    assert [Rules(nodes).granularity(r, 0) for r in refs] == [3, 2]
    (group,) = plan_groups(nodes, outputs_of(nodes, refs))
    assert (group.rows, group.unit) == (8, 6)
    assert check_group_chunks(nodes, refs, arrays, expected, 1) == 1  # 0:6, then 6:8


def test_group_whose_lcm_covers_all_rows_is_whole_only(tmp_path):
    arrays = [rand(6, 4), rand(6, 4, seed=1)]

    def fn(a, b):
        mixed = a + b
        return mx.repeat(mixed[::3], 3, axis=0), mx.repeat(mixed[::2], 2, axis=0)

    nodes, refs = record(fn, arrays, tmp_path)
    (group,) = plan_groups(nodes, outputs_of(nodes, refs))
    assert (group.rows, group.unit) == (6, 0)
    assert len(group.peak_lines) == 1 and group.peak_lines[0][1] == 0


def test_chunk_with_rows_its_ops_cannot_give_is_a_plan_error(tmp_path):
    """Rows 0:3 of the granularity-2 output come out as 4 rows: a clean
    PlanError (what the old unit 3 led to), not a RuntimeError later."""
    arrays = [rand(8, 4), rand(8, 4, seed=1)]
    nodes, refs = record(two_granularities, arrays, tmp_path)
    replayer = Replayer(nodes, refs)
    with pytest.raises(PlanError, match=r"mx\.repeat .*rows 0:3 along axis 0 gave shape \[4, 4\]"):
        replay_chunk(replayer, refs[1:], arrays, (0, 0, 3))


CUSTOM_MODEL = """
import mlx.core as mx
from mlx_lm.models.qwen3_moe import Model as Base, ModelArgs

class Model(Base):
    def sanitize(self, weights):
        weights = super().sanitize(weights)
        p = "model.layers.0.mlp.switch_mlp"
        mixed = weights[f"{p}.gate_proj.weight"] + weights[f"{p}.up_proj.weight"]  # [8 experts, ...]
        # one output group (both use mixed), granularities 3 and 2 along the experts
        weights[f"{p}.gate_proj.weight"] = mx.repeat(mixed[::3], 3, axis=0)[:8]
        weights[f"{p}.up_proj.weight"] = mx.repeat(mixed[1::2], 2, axis=0)
        return weights
"""


def test_conversion_of_a_group_with_granularities_2_and_3(tmp_path, eager):
    folder = copy_tree(make_checkpoint(tmp_path / "qwen3_moe", "qwen3_moe"), tmp_path / "custom")
    (folder / "custom_model.py").write_text(textwrap.dedent(CUSTOM_MODEL))
    config = json.loads((folder / "config.json").read_text())
    config["model_file"] = "custom_model.py"
    (folder / "config.json").write_text(json.dumps(config))

    plan = build_plan(trace(str(folder), ConvertOptions(quantize=True, trust_remote_code=True)))
    names = {"model.layers.0.mlp.switch_mlp.gate_proj.weight", "model.layers.0.mlp.switch_mlp.up_proj.weight"}
    (group,) = [g for g in plan.groups if names & {plan.outputs[i].name for i in g.outputs}]
    assert len(group.outputs) == 6 and (group.rows, group.unit) == (8, 6)  # weight, scales, biases of each
    out = tmp_path / "out"
    summary = execute(plan, str(folder), str(out), memory_budget=1, progress=False)
    assert summary.chunks > summary.groups
    assert compare_folders(str(eager(folder, ["-q", "--trust-remote-code"])), str(out)) == []


# Bug 4: one identity of a value, shared by the planner's costing and the replayer.


def test_whole_quantize_is_one_value_for_planner_and_replayer(tmp_path):
    arrays = [rand(4, 8), rand(8, 64, seed=1)]

    def fn(a, b):
        return mx.quantize(a @ b, group_size=32, bits=4)  # a matmul has no chunk rule: whole only

    nodes, refs = record(fn, arrays, tmp_path)
    nodes = through_plan_file(nodes, len(arrays))
    outputs = outputs_of(nodes, refs)
    (group,) = plan_groups(nodes, outputs)
    assert group.unit == 0 and len(group.outputs) == 3

    quantize = refs[0].node
    values, _, _ = Chunker(nodes)._values(refs, None)
    costed = {key: value for key, value in values.items() if key[0] == quantize}
    assert list(costed) == [(quantize, ALL_OUTPUTS, None)]  # once, not once per output
    assert costed[(quantize, ALL_OUTPUTS, None)][1] == sum(o.nbytes for o in outputs)

    replayer = Replayer(nodes, refs)
    replayer.requests = replayer.reads(refs, None)
    replayer.sources = {(i, None): arrays[i] for i, _ in replayer.requests}
    got = [replayer.value(r, None) for r in refs]
    assert list(replayer.memo) == list(costed)  # the value the replayer keeps is the one costed
    replayer.clear()
    for e, g in zip(run_eagerly(fn, arrays), got):
        assert same_bits(e, g)


def test_chunked_quantize_is_one_value_per_chunk(tmp_path):
    arrays = [rand(6, 64)]
    nodes, refs = record(lambda v: mx.quantize(v * 2, group_size=32, bits=4), arrays, tmp_path)
    values, _, _ = Chunker(nodes)._values(refs, (0, 2, 4))
    quantize = refs[0].node
    assert [key for key in values if key[0] == quantize] == [(quantize, ALL_OUTPUTS, (0, 2, 4))]
    expected = run_eagerly(lambda v: mx.quantize(v * 2, group_size=32, bits=4), arrays)
    got = replay_chunk(Replayer(nodes, refs), refs, arrays, (0, 2, 4))
    for e, g in zip(expected, got):
        assert same_bits(e[2:4], g)


# Multi-unit chunks for every construct.


@pytest.mark.parametrize("units", [2, 3])
@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_construct_in_chunks_of_several_units(construct, units, tmp_path):
    fn, arrays = CONSTRUCTS[construct]
    expected = run_eagerly(fn, arrays)
    nodes, refs = record(fn, [mx.array(a) for a in arrays], tmp_path)
    nodes = through_plan_file(nodes, len(arrays))
    whole = replay_chunk(Replayer(nodes, refs), refs, arrays, None)
    for e, got in zip(expected, whole):
        assert same_bits(e, got)
    check_group_chunks(nodes, refs, arrays, expected, units)


def test_invariant_mode_catches_disagreeing_reads(tmp_path):
    """A value() that asks for other source pieces than reads() listed fails at clear()."""
    arrays = [rand(4, 3)]
    nodes, refs = record(lambda v: v * 2, arrays, tmp_path)
    replayer = Replayer(nodes, refs)
    replayer.sources[(0, None)] = arrays[0]
    mx.eval(replayer.value(refs[0], None))
    replayer.requests = {(0, None): 2}  # reads() would say 1
    with pytest.raises(AssertionError, match="not used as often"):
        replayer.clear()


# Groups with the same graph up to numbering share one evaluation (planner speed).


def test_structure_tells_shared_inputs_from_alike_ones(tmp_path):
    """x * x and x * y (x, y loads of one dtype and shape) differ: the first
    reads one buffer, the second two. Two copies of one computation are alike."""
    arrays = [rand(4, 8), rand(4, 8, seed=1)]
    nodes, refs = record(lambda x, y: (x * x, x * y, (x + 1) * y, (y + 1) * x), arrays, tmp_path)
    nodes = through_plan_file(nodes, len(arrays))
    alike: dict = {}  # a load's label is its dtype and shape, as in encode_graph
    keys = [(repr(n.outs),) if n.op == "load" else (n.op, repr(n.args), repr(n.kwargs), repr(n.outs)) for n in nodes]
    labels = [alike.setdefault(key, len(alike)) for key in keys]
    squared, product, left, right = (structure(nodes, labels, [r]) for r in refs)
    assert squared != product
    assert left == right


def test_shared_evaluations_give_the_groups_of_separate_ones(checkpoints):
    """build_plan evaluates alike groups once; evaluating every group (no labels:
    no two nodes alike) gives the same groups, and there were alike groups."""
    for name in ("deepseek_v3_fp8", "kimi_k2_int4", "qwen3_moe"):
        plan = build_plan(trace(str(checkpoints[name]), ConvertOptions(quantize=True)))
        assert list(plan.groups) == plan_groups(plan.nodes, list(plan.outputs)), name
        labels = [row[0] for row in plan.graph.rows]
        shapes = {structure(plan.nodes, labels, [plan.outputs[i].ref for i in g.outputs]) for g in plan.groups}
        assert len(shapes) < len(plan.groups) / 2, name
