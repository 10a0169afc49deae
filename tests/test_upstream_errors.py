"""A failure of the library's own conversion code is one line naming the library
(and its version), its file:line and the tensor, and saying eager conversion
fails the same way, which each test checks by running eager conversion (issue
16). Code from the model folder (config.json's model_file) counts as the
library's; an exception raised in sanitrace's own code keeps its traceback."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import SHARED, make_checkpoint
from sanitrace.cli import REPORT, main
from sanitrace.tracer import ConvertOptions, UpstreamError, trace
from sanitrace.versions import installed_version

MISSING = "model.layers.0.self_attn.kv_b_proj.biases"
CUSTOM_MODEL = f"""\
import mlx.core as mx
from mlx_lm.models.llama import Model as Base, ModelArgs

class Model(Base):
    def sanitize(self, weights):
        weights = {{k: v * 1 for k, v in super().sanitize(weights).items()}}
        weights.pop("{MISSING}")  # line 7
        return weights
"""
GLM = SHARED / "giants" / "glm-5.1-fp8"


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    folder = make_checkpoint(tmp_path_factory.mktemp("upstream") / "custom", "llama")
    (folder / "custom_model.py").write_text(CUSTOM_MODEL)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, model_file="custom_model.py")))
    return folder


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=600)


def eager_failure(library: str, model, out, *flags: str) -> tuple:
    """(innermost frame of the library's or the model's code as "file:line (function)",
    the error's last line) of the library's own convert, which must fail."""
    proc = run(library, "convert", "--hf-path", str(model), "--mlx-path", str(out), *flags)
    assert proc.returncode != 0, f"{library}.convert now converts {model}: this test needs another failure"
    frames = re.findall(r'File "[^"]*?/((?:mlx_lm|mlx_vlm)/[^"]+|custom_model\.py)", line (\d+), in (\S+)', proc.stderr)
    file, line, function = frames[-1]
    return f"{file}:{line} ({function})", proc.stderr.strip().splitlines()[-1]


def test_keyerror_in_the_models_own_code_is_one_line(custom, tmp_path):
    proc = run("sanitrace", "trace", str(custom), "-o", str(tmp_path / "plan.msgpack"), "--trust-remote-code")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    version = installed_version("mlx-lm")
    assert line == (
        f"sanitrace trace: error: {custom}: the model folder's own code in mlx_lm {version}'s conversion fails "
        f"at custom_model.py:7 (sanitize): KeyError: tensor '{MISSING}' (not in the checkpoint); "
        "eager conversion (mlx_lm.convert --trust-remote-code) fails the same way on this checkpoint"
    )
    where, last = eager_failure("mlx_lm", custom, tmp_path / "eager", "--trust-remote-code")
    assert where == "custom_model.py:7 (sanitize)" and last == f"KeyError: '{MISSING}'"


def test_upstream_error_names_where_and_drops_the_librarys_frames(custom):
    with pytest.raises(UpstreamError) as caught:
        trace(str(custom), ConvertOptions(trust_remote_code=True))
    error = caught.value
    assert (error.library, error.where, error.line, error.error, error.tensor) == (
        "mlx_lm",
        "custom_model.py",
        7,
        "KeyError",
        MISSING,
    )
    assert error.__context__ is None and error.__cause__ is None  # nothing holds the library's weights


def test_a_sanitrace_bug_under_the_models_code_keeps_its_traceback(custom, tmp_path, monkeypatch, capsys):
    import sanitrace.tracer.proxy

    monkeypatch.setattr(sanitrace.tracer.proxy, "_SLOTS", [])  # `v * 1` in sanitize: IndexError in proxy.py
    code = main(["trace", str(custom), "-o", str(tmp_path / "plan.msgpack"), "--trust-remote-code"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "IndexError" in err
    assert 'custom_model.py", line 6, in ' in err and "sanitrace/tracer/proxy.py" in err
    assert err.strip().splitlines()[-1] == f"sanitrace trace: {REPORT}"


@pytest.mark.skipif(not GLM.is_dir() or installed_version("mlx-vlm") is None, reason="needs the giants and mlx-vlm")
def test_glm_5_1_fp8_through_mlx_vlm_names_the_librarys_line(tmp_path):
    """The report: mlx_vlm's own sanitize of GLM-5.1-FP8 raises a KeyError (its FP8
    transform makes mxfp8 scales, no biases); a header-accurate sparse copy."""
    model = tmp_path / "glm"
    materialize = SHARED / "giants" / "materialize.py"
    subprocess.run([sys.executable, str(materialize), str(GLM), str(model), "--layers", "1"], check=True, timeout=600)
    proc = run("sanitrace", "trace", str(model), "-o", str(tmp_path / "plan.msgpack"), "--library", "mlx_vlm")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    where, last = eager_failure("mlx_vlm", model, tmp_path / "eager")
    assert last == "KeyError: 'model.layers.0.self_attn.kv_b_proj.biases'"
    assert line == (
        f"sanitrace trace: error: {model}: mlx_vlm {installed_version('mlx-vlm')}'s own conversion fails at "
        f"{where}: KeyError: tensor 'model.layers.0.self_attn.kv_b_proj.biases' (not in the checkpoint); "
        "eager conversion (mlx_vlm.convert) fails the same way on this checkpoint"
    )
    shutil.rmtree(model)
