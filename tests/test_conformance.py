"""sanitrace convert equals mlx_lm.convert tensor for tensor on the project's fixtures."""

import json
from importlib import metadata

import pytest
from conftest import FIXTURES, MODES, sanitrace_convert

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.executor import execute
from sanitrace.planner import build_plan
from sanitrace.tracer import ConvertOptions, trace

pytestmark = pytest.mark.slow  # the libraries' own conversion is the oracle


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_matches_eager(fixture, mode, checkpoints, eager, tmp_path):
    src = checkpoints[fixture]
    expected = eager(src, MODES[mode])
    out = sanitrace_convert(src, tmp_path / "out", MODES[mode])
    assert compare_folders(str(expected), str(out)) == []
    with open(out / "config.json") as f, open(expected / "config.json") as g:
        ours, theirs = json.load(f), json.load(g)
    assert ours.get("quantization") == theirs.get("quantization")
    assert ours == theirs  # the whole config, not only the quantization section

    from mlx_lm import load

    model, tokenizer = load(str(out))
    assert tokenizer.encode("w5 w6")


@pytest.mark.parametrize("mode", ["bf16", "q4", "mxfp4"])
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_tiny_budget_forces_chunks_with_same_bytes(fixture, mode, checkpoints, eager, tmp_path):
    src = checkpoints[fixture]
    flags = MODES[mode]
    options = ConvertOptions(quantize="-q" in flags, q_mode=flags[-1] if "--q-mode" in flags else "affine")
    plan = build_plan(trace(str(src), options))
    summary = execute(plan, str(src), str(tmp_path / "out"), memory_budget=1, progress=False)
    chunked = [g for g in plan.groups if g.unit]
    assert summary.chunks > len(plan.groups) + len(chunked)  # really cut into chunks
    assert compare_folders(str(eager(src, flags)), str(tmp_path / "out")) == []


def test_index_and_text_files_match_eager(checkpoints, eager, tmp_path):
    src = checkpoints["split_experts"]
    expected = eager(src, ["-q"])
    out = sanitrace_convert(src, tmp_path / "out", ["-q"])
    for name in ("model.safetensors.index.json", "README.md", "generation_config.json"):
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    assert (out / "tokenizer.json").exists()


def test_plan_records_versions_and_options(checkpoints):
    plan = build_plan(trace(str(checkpoints["llama"]), ConvertOptions(quantize=True, q_bits=8)))
    plan = plan_ir.loads(plan_ir.dumps(plan))
    for dist in ("mlx", "mlx-lm", "mlx-vlm"):  # the installed ones, from their metadata
        assert plan.versions[dist] == metadata.version(dist), dist
    assert plan.options["q_bits"] == 8 and plan.options["quantize"] is True
