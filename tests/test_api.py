"""The Python API (sanitrace.convert / trace / execute / load_plan) and the
summary a drop-in for mlx_lm.convert prints."""

import subprocess
import sys

import pytest
from conftest import REPO

import sanitrace
from sanitrace.compare import compare_folders
from sanitrace.plan import PlanError
from sanitrace.retrace import retrace

EXAMPLE = REPO / "examples" / "tiny-qwen3-moe"


def test_the_issue_one_liner_matches_mlx_lm_convert(tmp_path, eager):
    """`python -c "import sanitrace; sanitrace.convert(..., 'out', quantize=True)"`, as a user runs it."""
    code = f"import sanitrace; sanitrace.convert({str(EXAMPLE)!r}, 'out', quantize=True)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert compare_folders(str(eager(EXAMPLE, ["-q"])), str(tmp_path / "out")) == []
    # the library's own summary lines, then sanitrace's
    assert "[INFO] Using dtype: bfloat16" in proc.stdout
    assert "[INFO] Quantized model with 4.533 bits per weight." in proc.stdout
    for label in ("predicted peak", "peak memory      predicted", "measured", "wall time", "plan digest"):
        assert label in proc.stdout


def test_trace_then_execute_through_the_api(tmp_path, eager, capsys):
    plan_file = tmp_path / "plan.msgpack"
    plan = sanitrace.trace(str(EXAMPLE), quantize=True, q_bits=8, plan_out=str(plan_file))
    loaded = sanitrace.load_plan(str(plan_file))
    assert loaded.digest == plan.digest and loaded.options["q_bits"] == 8
    summary = sanitrace.execute(str(plan_file), str(EXAMPLE), str(tmp_path / "out"), progress=False)
    assert summary.outputs == len(plan.outputs)
    assert compare_folders(str(eager(EXAMPLE, ["-q", "--q-bits", "8"])), str(tmp_path / "out")) == []
    assert plan.digest in capsys.readouterr().out


def test_convert_returns_its_summary_and_keeps_the_plan(tmp_path):
    result = sanitrace.convert(
        str(EXAMPLE), str(tmp_path / "out"), dtype="float16", plan_out=str(tmp_path / "plan.msgpack"), progress=False
    )
    assert result.plan.options["dtype"] == "float16"
    assert sanitrace.load_plan(str(tmp_path / "plan.msgpack")).digest == result.plan.digest
    assert result.execute.outputs == len(result.plan.outputs) and result.measured_peak > 0
    assert "[INFO] Using dtype: float16" in result.messages


def test_a_callable_quant_predicate_is_recorded_and_retrace_refuses_it(tmp_path, eager):
    def attention_only(path, module):
        return "self_attn" in path

    result = sanitrace.convert(
        str(EXAMPLE), str(tmp_path / "out"), quantize=True, quant_predicate=attention_only, progress=False
    )
    recorded = result.plan.options["quant_predicate"]
    assert (
        recorded == f"callable:{__name__}.test_a_callable_quant_predicate_is_recorded_and_retrace_"
        "refuses_it.<locals>.attention_only"
    )
    names = {o.name for o in result.plan.outputs}
    assert any(n.endswith("self_attn.q_proj.scales") for n in names)
    assert not any(n.endswith("mlp.gate.scales") or "experts" in n and n.endswith(".scales") for n in names)
    with pytest.raises(PlanError, match="custom quant_predicate.*cannot reproduce"):
        retrace(result.plan)


def test_quantizing_nothing_and_an_unmeetable_budget_are_said(tmp_path, capsys):
    sanitrace.convert(
        str(EXAMPLE), str(tmp_path / "out"), quantize=True, q_group_size=100, memory_budget=1 << 20, progress=False
    )
    captured = capsys.readouterr()
    assert "Quantized model with 16.000 bits per weight." in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("sanitrace: warning:")]
    assert any("-q quantized no weight" in line for line in warnings)
    budget = [line for line in warnings if "cannot be met" in line]
    assert budget and "the smallest budget this plan can meet is" in budget[0]


def test_a_failed_upload_is_one_line_and_the_output_is_complete(tmp_path):
    """--upload-repo runs the library's upload_to_hub; here the Hub endpoint is a
    closed local port, so the upload fails after the conversion is done."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": "hf_x",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sanitrace",
            "convert",
            "--hf-path",
            str(EXAMPLE),
            "--mlx-path",
            "out",
            "--upload-repo",
            "me/tiny",
            "--no-progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sanitrace")]
    assert len(errors) == 1 and "out is converted, but uploading it to me/tiny failed" in errors[0]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out.partial").exists()


def test_execute_says_when_the_installed_mlx_is_not_the_plans(tmp_path, eager, capsys):
    import dataclasses

    plan = sanitrace.trace(str(EXAMPLE), quantize=True)
    older = dataclasses.replace(plan, versions=dict(plan.versions, mlx="0.31.1"))
    sanitrace.execute(older, str(EXAMPLE), str(tmp_path / "out"), progress=False)
    err = capsys.readouterr().err
    assert "traced with mlx 0.31.1" in err and "can differ" in err
    assert compare_folders(str(eager(EXAMPLE, ["-q"])), str(tmp_path / "out")) == []  # and it continued
