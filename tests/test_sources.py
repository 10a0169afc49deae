"""Quantized and packed sources (FP8 block, MXFP4, compressed-tensors int4) and
--dequantize: bit-identical to mlx_lm.convert, chunked along whole blocks."""

import json

import pytest
from conftest import SOURCE_FIXTURES, sanitrace_convert

from sanitrace.compare import compare_folders
from sanitrace.executor import execute
from sanitrace.planner import build_plan
from sanitrace.show import render
from sanitrace.tracer import ConvertOptions, trace


@pytest.mark.parametrize("flags", [[], ["-q"]], ids=["bf16", "q4"])
@pytest.mark.parametrize("fixture", sorted(SOURCE_FIXTURES))
def test_matches_eager(fixture, flags, checkpoints, eager, tmp_path):
    src = checkpoints[fixture]
    out = sanitrace_convert(src, tmp_path / "out", flags)
    assert compare_folders(str(eager(src, flags)), str(out)) == []
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    model, _ = load(str(out))
    loaded = dict(tree_flatten(model.parameters()))
    written = {k: v for shard in sorted(out.glob("*.safetensors")) for k, v in mx.load(str(shard)).items()}
    assert sorted(loaded) == sorted(written)  # every tensor written is a parameter, and the reverse
    assert [
        k for k in written if loaded[k].dtype != written[k].dtype or not mx.array_equal(loaded[k], written[k])
    ] == []
    # the quantized modules are those the config's quantization section describes, with its bits and group size
    quantization = json.loads((out / "config.json").read_text()).get("quantization", {})
    quantized = {name: (m.group_size, m.bits, m.mode) for name, m in model.named_modules() if "scales" in m}
    assert bool(quantized) == bool(quantization)  # -q, or a source quantized already (MXFP4, int4)
    settings = {name: quantization.get(name, quantization) for name in quantized}
    assert quantized == {name: (q["group_size"], q["bits"], q.get("mode", "affine")) for name, q in settings.items()}


@pytest.mark.parametrize("fixture", sorted(SOURCE_FIXTURES))
def test_smallest_chunks_give_the_same_bytes(fixture, checkpoints, eager, tmp_path):
    src = checkpoints[fixture]
    plan = build_plan(trace(str(src), ConvertOptions(quantize=True)))
    execute(plan, str(src), str(tmp_path / "out"), memory_budget=1, progress=False)
    assert compare_folders(str(eager(src, ["-q"])), str(tmp_path / "out")) == []


def test_fp8_weight_and_scale_in_different_shards(checkpoints):
    index = json.loads((checkpoints["deepseek_v3_fp8"] / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    name = "model.layers.1.self_attn.o_proj.weight"
    assert weight_map[name] != weight_map[name + "_scale_inv"]


def test_fp8_block_dequant_is_chunked_in_whole_blocks_and_shown_by_name(checkpoints):
    plan = build_plan(trace(str(checkpoints["deepseek_v3_fp8"]), ConvertOptions()))
    outputs = {o.name: i for i, o in enumerate(plan.outputs)}
    group = next(g for g in plan.groups if outputs["model.layers.0.mlp.gate_proj.weight"] in g.outputs)
    assert (group.rows, group.unit) == (448, 128)  # 448 rows = 3.5 blocks of 128
    experts = next(g for g in plan.groups if outputs["model.layers.1.mlp.switch_mlp.gate_proj.weight"] in g.outputs)
    assert (experts.rows, experts.unit) == (8, 1)  # expert stacks go by experts
    text = render(plan)
    assert (
        "model.layers.0.mlp.gate_proj.weight: bfloat16[448, 320] = fp8_block_dequant("
        "model.layers.0.mlp.gate_proj.weight, model.layers.0.mlp.gate_proj.weight_scale_inv, 128x128, bfloat16)"
    ) in text
    assert "stack([fp8_block_dequant(model.layers.{1..2}.mlp.experts.{0..7}.gate_proj.weight, " in text


def test_mxfp4_and_int4_views_are_shown_by_name(checkpoints):
    text = render(build_plan(trace(str(checkpoints["gpt_oss_mxfp4"]), ConvertOptions())))
    assert "contiguous(mxfp4_blocks(model.layers.{0..1}.mlp.experts.gate_up_proj_blocks)[..., ::2, :])" in text
    text = render(build_plan(trace(str(checkpoints["kimi_k2_int4"]), ConvertOptions())))
    assert "stack([model.layers.{1..2}.mlp.experts.{0..7}.up_proj.weight_packed.view(uint32)])" in text
    assert "stack([(-8 * model.layers.{1..2}.mlp.experts.{0..7}.up_proj.weight_scale)])" in text


@pytest.fixture(scope="module")
def mlx_quantized(checkpoints, eager):
    """An MLX-quantized model (eager -q output) as a source."""
    return eager(checkpoints["qwen3_moe"], ["-q"])


@pytest.mark.parametrize(
    "flags", [["-d"], [], ["-q"], ["-q", "--q-bits", "8"]], ids=["dequantize", "plain", "q4", "q8"]
)
def test_mlx_quantized_source(flags, mlx_quantized, eager, tmp_path):
    out = sanitrace_convert(mlx_quantized, tmp_path / "out", flags)
    assert compare_folders(str(eager(mlx_quantized, flags)), str(out)) == []


@pytest.mark.parametrize("fixture", ["gpt_oss_mxfp4", "kimi_k2_int4"])
def test_dequantize_packed_sources(fixture, checkpoints, eager, tmp_path):
    src = checkpoints[fixture]
    out = sanitrace_convert(src, tmp_path / "out", ["-d"], budget="1")
    assert compare_folders(str(eager(src, ["-d"])), str(out)) == []
