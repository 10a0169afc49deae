"""The load check: the trace builds the model as mlx_lm.load / mlx_vlm.load would,
from the plan's config.json and planned outputs, lazily and strictly, and says
whether the output will load; the oracle is the library's own loader on its own
eager output."""

import subprocess
import sys

import pytest
from conftest import sanitrace_main

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.load_check import load_error


def eager(library: str, src, out, flags) -> None:
    proc = subprocess.run([sys.executable, "-m", library, "convert", "--hf-path", str(src), "--mlx-path", str(out)]
                          + flags, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def loads(library: str, out) -> str:
    """'' when the library's own load() accepts ``out``, else its error's first line."""
    code = (f"import sys, {library}\ntry:\n    {library}.load(sys.argv[1], lazy=True)\n"
            "except ValueError as e:\n    print(str(e).splitlines()[0])")
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
    assert "its tensors imply group_size 32" in line and "group_size 64" in line
    assert not (tmp_path / "p.msgpack").exists()
    # --allow-unloadable writes exactly what mlx_vlm.convert writes
    assert sanitrace_main(["convert", str(src), str(tmp_path / "ours"), "-q", "--library", "mlx_vlm",
                           "--allow-unloadable", "--no-progress"]) == 0
    assert compare_folders(str(tmp_path / "eager"), str(tmp_path / "ours")) == []
    assert "will not load with mlx_vlm.load" in capsys.readouterr().err


@pytest.mark.parametrize("name, library, flags", [
    ("kimi_k2_int4", "mlx_lm", ["-q"]),
    ("deepseek_v3_fp8", "mlx_lm", ["-q"]),
    ("qwen3_moe", "mlx_lm", []),
])
def test_outputs_that_load_pass_the_check(checkpoints, tmp_path, name, library, flags):
    src = checkpoints[name]
    eager(library, src, tmp_path / "eager", flags)
    assert loads(library, tmp_path / "eager") == ""
    assert sanitrace_main(["trace", str(src), "-o", str(tmp_path / "p.msgpack"), "--library", library] + flags) == 0
    assert load_error(plan_ir.load(str(tmp_path / "p.msgpack"))) is None
