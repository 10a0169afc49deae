"""The load check: the trace builds the model as mlx_lm.load / mlx_vlm.load would,
from the plan's config.json and planned outputs, lazily and strictly, and says
whether the output will load; the oracle is the library's own loader on its own
eager output."""

import json
import subprocess
import sys

import pytest
from conftest import sanitrace_main

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.fixtures import write_checkpoint
from sanitrace.fixtures.architectures import DEEPSEEK_V4_SIZES
from sanitrace.load_check import load_error


@pytest.fixture(scope="module")
def deepseek_v4(tmp_path_factory) -> dict:
    """DeepSeek-V4 in its real layout: as released (FP8 + FP4 experts) and an FP8
    repackage (the experts FP8 too), which mlx_vlm converts."""
    base = tmp_path_factory.mktemp("deepseek_v4")
    return {
        name: write_checkpoint(str(base / name), "deepseek_v4", source_format=fmt, **DEEPSEEK_V4_SIZES)
        for name, fmt in (("deepseek_v4_fp8", "fp8_ue8m0"), ("deepseek_v4_fp4", "fp8_ue8m0_fp4"))
    }


def convert_error(library: str, src, out, flags) -> str:
    """'' when the library's convert succeeds, else the last line of its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", library, "convert", "--hf-path", str(src), "--mlx-path", str(out)] + flags,
        capture_output=True,
        text=True,
    )
    return "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def eager(library: str, src, out, flags) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", library, "convert", "--hf-path", str(src), "--mlx-path", str(out)] + flags,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def loads(library: str, out) -> str:
    """'' when the library's own load() accepts ``out``, else its error's first line."""
    code = (
        f"import sys, {library}\ntry:\n    {library}.load(sys.argv[1], lazy=True)\n"
        "except ValueError as e:\n    print(str(e).splitlines()[0])"
    )
    return subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True).stdout.strip()


def test_an_output_the_library_cannot_load_is_refused_in_one_line(checkpoints, tmp_path, capsys):
    """Kimi's int4 experts through mlx_vlm -q: they keep group size 32 while
    config.json says 64, so mlx_vlm.load refuses eager's own output."""
    src = checkpoints["kimi_k2_int4"]
    eager("mlx_vlm", src, tmp_path / "eager", ["-q"])
    refused = loads("mlx_vlm", tmp_path / "eager")
    assert refused.startswith("Expected shape")
    assert sanitrace_main(["trace", str(src), "-o", str(tmp_path / "p.msgpack"), "-q", "--library", "mlx_vlm"]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sanitrace trace: error")]
    assert "would not load with mlx_vlm.load" in line and "--allow-unloadable" in line
    assert "their tensors imply group_size 32" in line and "group_size 64" in line
    assert not (tmp_path / "p.msgpack").exists()
    # --allow-unloadable writes exactly what mlx_vlm.convert writes
    assert (
        sanitrace_main(
            [
                "convert",
                str(src),
                str(tmp_path / "ours"),
                "-q",
                "--library",
                "mlx_vlm",
                "--allow-unloadable",
                "--no-progress",
            ]
        )
        == 0
    )
    assert compare_folders(str(tmp_path / "eager"), str(tmp_path / "ours")) == []
    assert "will not load with mlx_vlm.load" in capsys.readouterr().err


def refusal(capsys) -> str:
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sanitrace trace: error")]
    return line


def test_kimi_int4_through_mlx_vlm_mxfp4_is_refused(checkpoints, tmp_path, capsys):
    """Kimi's int4 experts through mlx_vlm -q --q-mode mxfp4: they stay affine (with
    biases) while config.json says mxfp4, so mlx_vlm.load finds biases it has no place for."""
    src, flags = checkpoints["kimi_k2_int4"], ["-q", "--q-mode", "mxfp4"]
    eager("mlx_vlm", src, tmp_path / "eager", flags)
    assert loads("mlx_vlm", tmp_path / "eager").startswith("Received 6 parameters not in model")
    assert sanitrace_main(["trace", str(src), "-o", str(tmp_path / "p.msgpack"), "--library", "mlx_vlm"] + flags) == 1
    line = refusal(capsys)
    assert "would not load with mlx_vlm.load" in line and "--allow-unloadable" in line
    assert "6 output tensors not in the model" in line and "switch_mlp.down_proj.biases" in line
    assert not (tmp_path / "p.msgpack").exists()


@pytest.mark.parametrize("flags", [["-q"], ["-q", "--q-mode", "mxfp4"]])
def test_deepseek_v4_fp8_repack_through_mlx_vlm_q_is_refused(deepseek_v4, tmp_path, capsys, flags):
    """DeepSeek-V4 FP8 repackage through mlx_vlm -q (affine or mxfp4): mlx_vlm keeps the
    experts it already reads as mxfp8, while config.json gives them DeepSeek-V4's
    release quantization (mxfp4), so mlx_vlm.load refuses eager's own output."""
    src = deepseek_v4["deepseek_v4_fp8"]
    eager("mlx_vlm", src, tmp_path / "eager", flags)
    quantization = json.loads((tmp_path / "eager" / "config.json").read_text())["quantization"]
    assert quantization["language_model.model.layers.0.ffn.switch_mlp.gate_proj"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "mxfp4",
    }
    assert loads("mlx_vlm", tmp_path / "eager") == (
        "Expected shape (4, 128, 16) but received shape (4, 128, 32) for parameter "
        "language_model.model.layers.0.ffn.switch_mlp.gate_proj.weight"
    )
    assert sanitrace_main(["trace", str(src), "-o", str(tmp_path / "p.msgpack"), "--library", "mlx_vlm"] + flags) == 1
    line = refusal(capsys)
    assert "would not load with mlx_vlm.load" in line and "--allow-unloadable" in line
    assert (
        "9 parameters of the wrong shape, first language_model.model.layers.0.ffn.switch_mlp."
        "down_proj.weight: the model expects (4, 128, 16), the output has (4, 128, 32)"
    ) in line
    assert not (tmp_path / "p.msgpack").exists()
    # --allow-unloadable writes exactly what mlx_vlm.convert writes
    assert (
        sanitrace_main(
            ["convert", str(src), str(tmp_path / "ours"), "--library", "mlx_vlm", "--allow-unloadable", "--no-progress"]
            + flags
        )
        == 0
    )
    assert compare_folders(str(tmp_path / "eager"), str(tmp_path / "ours")) == []


@pytest.mark.parametrize("flags", [[], ["-q"]])
def test_deepseek_v4_as_released_fails_in_convert_and_trace(deepseek_v4, tmp_path, capsys, flags):
    """DeepSeek-V4 as released (FP4 experts): mlx_vlm's own load in convert refuses
    it (weight_block_size makes it build every module mxfp8), and so does the trace."""
    src = deepseek_v4["deepseek_v4_fp4"]
    assert convert_error("mlx_vlm", src, tmp_path / "eager", flags) == (
        "ValueError: Expected shape (4, 128, 32) but received shape (4, 128, 16) for parameter "
        "language_model.model.layers.0.ffn.switch_mlp.gate_proj.weight"
    )
    assert sanitrace_main(["trace", str(src), "-o", str(tmp_path / "p.msgpack"), "--library", "mlx_vlm"] + flags) == 1
    err = capsys.readouterr().err
    assert "does not load strictly" in err
    # the cause first, then the names it explains, collapsed (issue 16, item 3)
    assert (
        "\n9 shape/dtype mismatches: the model builds these modules mxfp8, group_size 32, bits 8 "
        "(as the library reads the checkpoint's quantization config); their tensors imply group_size 32, bits 4:\n"
        "  language_model.model.layers.{0..2}.ffn.switch_mlp.down_proj.weight: shape [4, 128, 16], model has "
        "[4, 128, 32]\n"
        "  language_model.model.layers.{0..2}.ffn.switch_mlp.gate_proj.weight: shape [4, 128, 16], model has "
        "[4, 128, 32]\n"
    ) in err
    assert len(err.splitlines()) == 5
    assert not (tmp_path / "p.msgpack").exists()


@pytest.mark.parametrize(
    "name, library, flags",
    [
        ("kimi_k2_int4", "mlx_lm", ["-q"]),
        ("kimi_k2_int4", "mlx_lm", ["-q", "--q-mode", "mxfp4"]),
        ("kimi_k2_int4", "mlx_vlm", []),
        ("deepseek_v3_fp8", "mlx_lm", ["-q"]),
        ("qwen3_moe", "mlx_lm", []),
        ("deepseek_v4_fp8", "mlx_vlm", []),
        ("deepseek_v4_fp8", "mlx_vlm", ["--q-mode", "mxfp4"]),  # without -q: not quantized
    ],
)
def test_outputs_that_load_pass_the_check(checkpoints, deepseek_v4, tmp_path, name, library, flags):
    src = {**checkpoints, **deepseek_v4}[name]
    eager(library, src, tmp_path / "eager", flags)
    assert loads(library, tmp_path / "eager") == ""
    assert sanitrace_main(["trace", str(src), "-o", str(tmp_path / "p.msgpack"), "--library", library] + flags) == 0
    assert load_error(plan_ir.load(str(tmp_path / "p.msgpack"))) is None
