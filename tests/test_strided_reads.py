"""Source pieces on a non-leading axis are read as strided runs, not whole
(issue 15, bug 2): GPT-2's Conv1D weights are stored [in, out] and mlx_lm's
sanitize transposes them, so an output chunked by rows reads columns of its
source. Bytes read stay at the bytes the plan needs, as the planner costs them."""

import os

import mlx.core as mx
import pytest
from conftest import make_checkpoint
from tracing_helpers import record

from sanitrace.compare import compare_folders
from sanitrace.executor import execute
from sanitrace.executor.sources import SourceReader
from sanitrace.planner import build_plan
from sanitrace.planner.chunking import Chunker
from sanitrace.tracer import ConvertOptions, trace


def needed_bytes(plan) -> int:
    """Bytes of the source tensors the plan loads, each once."""
    loaded = {n.args[0] for n in plan.nodes if n.op == "load"}
    return sum(t.end - t.begin for i, t in enumerate(plan.source.tensors) if i in loaded)


def read_chars() -> int:
    """Bytes this process has passed through read syscalls (Linux)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("gpt2") / "gpt2", "gpt2", hidden=256, heads=4, vocab=256)


def test_transposed_weights_chunk_a_non_leading_source_axis(gpt2):
    plan = build_plan(trace(str(gpt2), ConvertOptions(quantize=True)))
    by_name = {o.name: i for i, o in enumerate(plan.outputs)}
    group = next(g for g in plan.groups if by_name["model.h.0.mlp.c_fc.weight"] in g.outputs)
    assert (group.rows, group.unit) == (1024, 1)  # rows of the output = columns of the [256, 1024] source


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io (Linux)")
def test_smallest_chunks_read_each_needed_byte_once(gpt2, eager, tmp_path):
    plan = build_plan(trace(str(gpt2), ConvertOptions(quantize=True)))
    needed = needed_bytes(plan)
    before = read_chars()
    summary = execute(plan, str(gpt2), str(tmp_path / "out"), memory_budget=1, progress=False)
    read = read_chars() - before
    assert summary.chunks > 1000  # the c_fc / c_proj weights in chunks of rows
    assert summary.source_bytes_read == needed  # every piece read exactly once
    # what the process really read: the pieces, plus the small files the output copies
    assert read <= 1.2 * needed, (read, needed)
    assert compare_folders(str(eager(gpt2, ["-q"])), str(tmp_path / "out")) == []


def test_pieces_along_every_axis_equal_mx_load(checkpoints):
    """Strided pieces (outer axes > 1, one run, empty) equal slices of mx.load."""
    src = checkpoints["gpt_oss_mxfp4"]
    plan = build_plan(trace(str(src), ConvertOptions()))
    paths = [os.path.join(str(src), f.name) for f in plan.source.files]
    index = next(i for i, t in enumerate(plan.source.tensors) if len(t.shape) == 4)
    tensor = plan.source.tensors[index]
    expected = mx.load(paths[tensor.file])[tensor.name]
    reader = SourceReader(plan, paths)
    try:
        for axis, size in enumerate(tensor.shape):
            for a, b in [(0, size), (1, size), (0, 1), (size // 2, size // 2 + 1), (size - 1, size), (1, 1)]:
                piece = reader.prepare(index, (axis, a, b))
                mx.eval(piece.buffer)
                piece.view = memoryview(piece.buffer).cast("B") if piece.buffer.size else memoryview(b"")
                piece.fill()
                got = piece.array()
                want = expected[(slice(None),) * axis + (slice(a, b),)]
                assert got.dtype == want.dtype and got.shape == want.shape
                assert mx.array_equal(got, want).item(), (axis, a, b)
    finally:
        reader.close()


# The memory model counts the copies mlx makes of a strided (transposed) view.
def _whole_cost(fn, arrays, tmp_path) -> int:
    nodes, refs = record(fn, arrays, tmp_path)
    return Chunker(nodes).cost(refs, None, None)


def test_quantize_of_a_transposed_input_costs_a_copy_of_it(tmp_path):
    """mlx quantizes a contiguous copy of a strided input (measured below with
    mlx's own peak memory), so the cost grows by the input's bytes."""
    w = mx.random.normal((512, 256)).astype(mx.bfloat16)
    strided = _whole_cost(lambda a: list(mx.quantize(a.T, 64, 4)), [w], tmp_path)
    contiguous = _whole_cost(lambda a: list(mx.quantize(a, 64, 4)), [w.T], tmp_path)
    assert strided - contiguous == w.nbytes

    mx.eval(w)
    extra = []
    for x in (w.T, mx.contiguous(w.T)):
        mx.eval(x)
        mx.clear_cache()
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        result = mx.quantize(x, 64, 4)
        mx.eval(result)
        extra.append(mx.get_peak_memory() - before)
        del result
    assert extra[0] - extra[1] == w.nbytes  # the copy the model counts


def test_a_transposed_output_costs_the_writers_contiguous_copy(tmp_path):
    w = mx.random.normal((512, 256)).astype(mx.bfloat16)
    strided = _whole_cost(lambda a: a.T, [w], tmp_path)
    contiguous = _whole_cost(lambda a: a.reshape(256, 512), [w], tmp_path)
    assert strided - contiguous == w.nbytes


def test_moving_a_size_one_axis_is_not_strided(tmp_path):
    """Qwen3-Next's conv1d weight [C, 1, 4] -> moveaxis(2, 1): row-major already."""
    w = mx.random.normal((64, 1, 4)).astype(mx.bfloat16)
    moved = _whole_cost(lambda a: a.moveaxis(2, 1), [w], tmp_path)
    assert moved == _whole_cost(lambda a: a.reshape(64, 4, 1), [w], tmp_path)
    assert _whole_cost(lambda a: a.moveaxis(2, 0), [w], tmp_path) == moved + w.nbytes
