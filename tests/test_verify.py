"""The verify step: a written output is checked against its plan (headers, text
files) and opened with the library's own loader, lazily and strictly, tokenizer
or processor included; optionally one token runs through it. Real outputs of
the real pipeline, damaged the ways a disk or a person damages them."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import SHARED, make_checkpoint

from sanitrace.executor import execute
from sanitrace.plan import Plan
from sanitrace.planner import DEFAULT_MEMORY_BUDGET, build_plan
from sanitrace.safetensors_format import build_header, read_header
from sanitrace.tracer import ConvertOptions, trace
from sanitrace.verify import VerifyFailed, verify_output

VLM_CASE = SHARED / "corpus" / "cases" / "vlm-qwen2_5_vl"


def convert(src: Path, out: Path, library: str = None, **options) -> Plan:
    """The plan for ``src`` with ``options``, executed into ``out``."""
    plan = build_plan(trace(str(src), ConvertOptions(**options), library), DEFAULT_MEMORY_BUDGET)
    execute(plan, str(src), str(out), progress=False)
    return plan


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """name -> (plan, output folder): mlx_lm bf16 and q4 of a tiny llama, and an
    mlx_vlm output (the corpus' Qwen2.5-VL, else the llama through mlx_vlm)."""
    base = tmp_path_factory.mktemp("verify")
    llama = make_checkpoint(base / "llama", "llama")
    vlm_src = VLM_CASE if VLM_CASE.is_dir() else llama
    result = {}
    for name, src, library, options in (
        ("bf16", llama, "mlx_lm", {}),
        ("q4", llama, "mlx_lm", {"quantize": True}),
        ("vlm", vlm_src, "mlx_vlm", {}),
    ):
        result[name] = (convert(src, base / name, library, **options), base / name)
    return result


@pytest.fixture
def bf16(built, tmp_path):
    """A private copy of the bf16 output, to damage: (plan, folder)."""
    plan, out = built["bf16"]
    return plan, Path(shutil.copytree(out, tmp_path / "out"))


def failure(plan: Plan, out: Path, **kwargs) -> str:
    with pytest.raises(VerifyFailed) as info:
        verify_output(plan, str(out), **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", ["bf16", "q4", "vlm"])
def test_a_good_output_verifies_with_its_tokenizer_or_processor(built, name):
    plan, out = built[name]
    report = verify_output(plan, str(out))
    assert report.tensors == len(plan.outputs) > 0
    assert report.files == len(plan.files)
    assert report.tokenizer == "loaded" and report.forward is None


@pytest.mark.parametrize("name", ["bf16", "q4", "vlm"])
def test_forward_runs_one_token(built, name):
    plan, out = built[name]
    report = verify_output(plan, str(out), forward=True)
    assert report.forward.endswith("all finite") and "(1, 1, 256)" in report.forward


def test_a_truncated_shard_is_named(bf16):
    plan, out = bf16
    shard = out / "model.safetensors"
    os.truncate(shard, shard.stat().st_size - 100)
    message = failure(plan, out)
    assert str(shard) in message and "the plan writes" in message


def test_a_missing_shard_is_named(bf16):
    plan, out = bf16
    (out / "model.safetensors").unlink()
    message = failure(plan, out)
    assert "model.safetensors" in message and "No such file" in message


def test_an_altered_tensor_header_names_the_tensor(bf16):
    plan, out = bf16
    shard = out / "model.safetensors"
    header = read_header(str(shard))
    entries = [
        (t.name, t.dtype, t.shape[::-1] if t.name == "lm_head.weight" else t.shape, t.nbytes)
        for t in header.in_data_order()
    ]
    prefix, _ = build_header(entries, header.metadata)
    assert len(prefix) == header.data_start  # same size: only the header check can tell
    shard.write_bytes(prefix + shard.read_bytes()[header.data_start :])
    message = failure(plan, out)
    assert "model.safetensors" in message and "lm_head.weight" in message and "shape (64, 256)" in message


def test_an_extra_shard_the_loader_would_read_is_named(bf16):
    plan, out = bf16
    shutil.copy(out / "model.safetensors", out / "model-old.safetensors")
    assert "model-old.safetensors" in failure(plan, out)


def test_a_changed_config_is_named(bf16):
    plan, out = bf16
    config = out / "config.json"
    config.write_bytes(config.read_bytes().replace(b'"num_hidden_layers": 2', b'"num_hidden_layers": 3'))
    assert "config.json" in failure(plan, out)


def test_a_deleted_tokenizer_file_is_named(bf16):
    plan, out = bf16
    (out / "tokenizer.json").unlink()
    assert "tokenizer" in failure(plan, out)


def test_a_plan_that_writes_no_tokenizer_skips_it(tmp_path):
    """A source whose tokenizer the library cannot load: the plan says so and
    writes none, so verify loads the model only (unless told otherwise)."""
    src = make_checkpoint(tmp_path / "src", "llama", tokenizer=False)
    plan = convert(src, tmp_path / "out")
    assert plan.accounting.tokenizer
    report = verify_output(plan, str(tmp_path / "out"), forward=True)
    assert report.tokenizer == "skipped" and report.forward.startswith("token 0:")
    message = failure(plan, tmp_path / "out", tokenizer_expected=True)
    assert "the tokenizer does not load with mlx_lm.load" in message


def test_nan_weights_pass_the_lazy_checks_and_fail_the_forward(bf16):
    plan, out = bf16
    shard = out / "model.safetensors"
    start, size = read_header(str(shard)).data_start, shard.stat().st_size
    with open(shard, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * (size - start))  # bf16 0xffff is NaN
    verify_output(plan, str(out))  # headers and a lazy load never read the data
    assert "non-finite logits" in failure(plan, out, forward=True)


def test_convert_verifies_by_default_and_execute_on_request(tmp_path):
    """The CLI: convert verifies unless --no-verify; execute with --verify /
    --verify-forward; an output written with --allow-unloadable is not loaded."""
    import subprocess
    import sys

    from conftest import REPO

    example = str(REPO / "examples" / "tiny-qwen3-moe")

    def run(*argv):
        proc = subprocess.run(
            [sys.executable, "-m", "sanitrace", *argv, "--no-progress"], cwd=tmp_path, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stdout.splitlines() if line.strip().startswith("verified")]

    (line,) = run("convert", "--hf-path", example, "--mlx-path", "a", "-q", "--plan-out", "p.msgpack")
    assert "mlx_lm.load (lazy, strict) with its tokenizer" in line and "forward" not in line
    assert run("convert", "--hf-path", example, "--mlx-path", "b", "-q", "--no-verify") == []
    assert run("execute", "p.msgpack", "--source", example, "--out", "c") == []
    (line,) = run("execute", "p.msgpack", "--source", example, "--out", "d", "--verify-forward")
    assert "forward token" in line and "all finite" in line


def test_an_output_the_plan_says_will_not_load_is_checked_but_not_loaded(tmp_path):
    from sanitrace.fixtures import write_checkpoint

    src = write_checkpoint(str(tmp_path / "kimi"), "kimi_k2", source_format="int4_packed", layers=3)
    plan = build_plan(trace(src, ConvertOptions(quantize=True), "mlx_vlm"))
    assert plan.accounting.loads.startswith("no: ")
    execute(plan, src, str(tmp_path / "out"), progress=False)
    report = verify_output(plan, str(tmp_path / "out"))
    assert not report.loaded and report.tensors == len(plan.outputs)
