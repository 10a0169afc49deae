"""Tensors of 2^31 elements and more (issue 16). mlx holds them (each dimension
fits 32 bits; the element count need not), so tracing, planning and executing
must never flatten one or count its elements in 32 bits.

The layout is Qwen3.5-397B-A17B's (fused 3-D experts: ``gate_up_proj`` is
[512, 2048, 4096], 2^32 elements, 8 GiB), with a 2^20-token vocabulary so that
the first tensor mx.load gives the tracer (``lm_head.weight``, names in order)
has 2^32 elements too, in a header-only (sparse) checkpoint: it traces through
mlx_lm, its plan chunks the large groups, and the executor's last chunk reads
the right bytes 8 GiB into the file. The same layout and sanitize rule at tiny
sizes, with data, converts in chunks bit-identically to mlx_lm.convert."""

import math
import os
import struct

import mlx.core as mx
import pytest
from conftest import make_checkpoint

from sanitrace.compare import compare_folders
from sanitrace.executor import _prepare, check_chunk_units, execute
from sanitrace.executor.local_source import LocalSource
from sanitrace.executor.replay import Replayer
from sanitrace.executor.sources import SourceReader, fill_all
from sanitrace.planner import build_plan
from sanitrace.planner.memory import chunk_rows, plan_baseline
from sanitrace.safetensors_format import read_header
from sanitrace.tracer import ConvertOptions, trace
from sanitrace.tracer.proxy import POISON_MESSAGE, Recorder
from sanitrace.tracer.sources import SourceSet

# the release's hidden size, experts and expert width; small attention
GIANT = dict(layers=1, hidden=4096, experts=512, moe_intermediate=1024, vocab=1 << 20, heads=4, kv_heads=2, head_dim=64)
SOURCE = "model.language_model.layers.0.mlp.experts"
OUTPUT = "language_model.model.layers.0.mlp.switch_mlp"
BF16_ONE_AND_A_HALF, BF16_MINUS_TWO_AND_A_QUARTER, BF16_THREE, BF16_FOUR = 0x3FC0, 0xC010, 0x4040, 0x4080


@pytest.fixture(scope="module")
def giant(tmp_path_factory):
    folder = tmp_path_factory.mktemp("giant") / "qwen3_5_moe"
    make_checkpoint(folder, "qwen3_5_moe", header_only=True, tokenizer=False, **GIANT)
    st = os.stat(folder / "model.safetensors")
    assert st.st_size > 28 << 30 and st.st_blocks * 512 < 1 << 20  # 28 GiB long, nothing stored
    return folder


@pytest.fixture(scope="module")
def giant_plan(giant):
    return build_plan(trace(str(giant), ConvertOptions(), library="mlx_lm"))


def outputs_by_name(plan) -> dict:
    return {o.name: o for o in plan.outputs}


def group_of(plan, name: str):
    (group,) = [g for g in plan.groups if name in {plan.outputs[i].name for i in g.outputs}]
    return group


def test_the_fixture_has_2_32_and_2_31_element_tensors(giant):
    tensors = read_header(str(giant / "model.safetensors")).tensors
    assert min(tensors) == "lm_head.weight" and math.prod(tensors["lm_head.weight"].shape) == 1 << 32
    assert math.prod(tensors[f"{SOURCE}.gate_up_proj"].shape) == 1 << 32
    assert math.prod(tensors[f"{SOURCE}.down_proj"].shape) == 1 << 31


def test_a_2_32_element_source_poisons_without_a_flat_view(giant):
    """The recorder's poison comes from the first source tensor: lazy, of any
    size, and evaluating what an op makes of it still fails."""
    sources = SourceSet(str(giant))
    try:
        placeholders = sources.placeholders(str(giant / "model.safetensors"), mx.load)
        recorder = Recorder("giant")
        name = "lm_head.weight"
        proxy = recorder.sources("model.safetensors", {name: placeholders[name]})[name]
        leaf, _ = recorder.kind(proxy)
        assert leaf.shape == (1 << 20, 4096) and leaf.dtype == mx.bfloat16
        with pytest.raises(RuntimeError, match=POISON_MESSAGE):
            mx.eval(leaf[-1, -4:].astype(mx.float32))
    finally:
        sources.close()


@pytest.mark.parametrize("quantize", [False, True], ids=["bf16", "q4"])
def test_2_32_element_tensors_trace_and_their_outputs_chunk(giant, giant_plan, quantize):
    """What failed with ``[reshape] Shape dimension 4294967296 is outside the
    supported range`` (the tracer flattened the first tensor mx.load gave it)."""
    plan = build_plan(trace(str(giant), ConvertOptions(quantize=True), library="mlx_lm")) if quantize else giant_plan
    outputs = outputs_by_name(plan)
    expected = {
        f"{OUTPUT}.gate_proj": (512, 1024, 4096),
        f"{OUTPUT}.up_proj": (512, 1024, 4096),
        f"{OUTPUT}.down_proj": (512, 4096, 1024),
        "language_model.lm_head": (1 << 20, 4096),
        "language_model.model.embed_tokens": (1 << 20, 4096),
    }
    for name, shape in expected.items():
        weight = outputs[f"{name}.weight"]
        if quantize:  # 4 bits in uint32 words, a bfloat16 scale and bias per 64
            assert (weight.dtype, weight.shape) == ("uint32", (*shape[:-1], shape[-1] // 8))
            scales = outputs[f"{name}.scales"]
            assert (scales.dtype, scales.shape) == ("bfloat16", (*shape[:-1], shape[-1] // 64))
        else:
            assert (weight.dtype, weight.shape) == ("bfloat16", shape)
        group = group_of(plan, f"{name}.weight")
        rows = chunk_rows(group, plan.memory.budget, plan_baseline(plan))
        assert group.rows == shape[0] and group.unit >= 1 and 0 < rows < shape[0], (name, group, rows)
    assert plan.memory.predicted_peak <= plan.memory.budget
    assert plan.accounting.loads == "yes"


def mark(path: str, tensor, index: tuple, bits: int) -> None:
    """Store one bfloat16 value at ``index`` of ``tensor`` in the sparse file."""
    flat = sum(i * math.prod(tensor.shape[k + 1 :]) for k, i in enumerate(index))
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, struct.pack("<H", bits), tensor.begin + 2 * flat)
    finally:
        os.close(fd)


def run_chunk(plan, folder, names: list, region) -> tuple:
    """The executor's work for one chunk of ``names`` (one group): read the
    source pieces, replay, evaluate. Returns the arrays and the bytes read."""
    source = LocalSource(plan, str(folder))
    source.check()
    replayer = Replayer(plan.nodes, [o.ref for o in plan.outputs])
    check_chunk_units(plan, replayer)
    reader = SourceReader(plan, source.paths)
    outputs = outputs_by_name(plan)
    refs = [outputs[n].ref for n in names]
    try:
        requests = replayer.reads(refs, region)
        pieces = _prepare(requests, reader)
        fill_all(list(pieces.values()))
        replayer.sources = {key: piece.array() for key, piece in pieces.items()}
        replayer.requests = requests
        arrays = [replayer.value(ref, region) for ref in refs]
        mx.eval(arrays)
        replayer.clear()
    finally:
        reader.close()
    return arrays, reader.bytes_read


def only_value(array, index: tuple, bits: int) -> bool:
    """``array`` is zero but for bfloat16 ``bits`` at ``index``."""
    raw = array.view(mx.uint16)
    return raw[index].item() == bits and mx.sum(raw != 0).item() == 1


def test_the_last_chunk_of_a_2_32_element_tensor_reads_its_rows_8_gib_in(giant, giant_plan):
    plan = giant_plan
    path = str(giant / "model.safetensors")
    tensors = read_header(path).tensors
    gate_up, down, head = tensors[f"{SOURCE}.gate_up_proj"], tensors[f"{SOURCE}.down_proj"], tensors["lm_head.weight"]
    mark(path, gate_up, (511, 0, 0), BF16_ONE_AND_A_HALF)  # -> gate_proj[511, 0, 0]
    mark(path, gate_up, (511, 2047, 4095), BF16_MINUS_TWO_AND_A_QUARTER)  # -> up_proj[511, 1023, 4095]
    mark(path, down, (511, 4095, 1023), BF16_THREE)
    mark(path, head, ((1 << 20) - 1, 4095), BF16_FOUR)
    assert min(gate_up.begin, head.begin) + 2 * ((1 << 32) - 1) > 8 << 30

    for name, source, index, bits in [
        (f"{OUTPUT}.gate_proj.weight", gate_up, (0, 0, 0), BF16_ONE_AND_A_HALF),
        (f"{OUTPUT}.up_proj.weight", gate_up, (0, 1023, 4095), BF16_MINUS_TWO_AND_A_QUARTER),
        (f"{OUTPUT}.down_proj.weight", down, (0, 4095, 1023), BF16_THREE),
        ("language_model.lm_head.weight", head, (0, 4095), BF16_FOUR),
    ]:
        group = group_of(plan, name)
        names = [plan.outputs[i].name for i in group.outputs]
        region = (0, group.rows - group.unit, group.rows)  # the last chunk of one unit
        arrays, read = run_chunk(plan, giant, names, region)
        (array,) = [a for n, a in zip(names, arrays) if n == name]
        assert read == group.unit * (source.end - source.begin) // source.shape[0]  # its rows, not the tensor
        assert array.shape == (group.unit,) + outputs_by_name(plan)[name].shape[1:]
        assert only_value(array[-1:], index, bits), name


@pytest.mark.slow  # mlx_lm.convert is the oracle
@pytest.mark.parametrize("flags", [[], ["-q"]], ids=["bf16", "q4"])
def test_the_same_rule_at_small_sizes_converts_in_chunks_bit_identical_to_eager(tmp_path, eager, flags):
    folder = make_checkpoint(tmp_path / "qwen3_5_moe", "qwen3_5_moe", layers=2)  # a linear and a full attention layer
    plan = build_plan(trace(str(folder), ConvertOptions(quantize=bool(flags)), library="mlx_lm"))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        for layer in (0, 1):
            group = group_of(plan, f"language_model.model.layers.{layer}.mlp.switch_mlp.{proj}.weight")
            assert group.rows == 8 and 0 < chunk_rows(group, 1, 0) < 8
    out = tmp_path / "out"
    summary = execute(plan, str(folder), str(out), memory_budget=1, progress=False)
    assert summary.chunks > summary.groups
    assert compare_folders(str(eager(folder, flags)), str(out)) == []
