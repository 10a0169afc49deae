"""`sanitrace check` and library selection."""

import json

from conftest import copy_tree

from sanitrace.check import check, eager_flags
from sanitrace.cli import main as sanitrace_main
from sanitrace.tracer import ConvertOptions, choose_library


def test_check_reports_identical(checkpoints, capsys):
    assert sanitrace_main(["check", str(checkpoints["mixtral"]), "-q", "--q-bits", "8"]) == 0
    assert "(mlx_lm, -q --q-bits 8): identical" in capsys.readouterr().out


def test_check_reports_a_model_both_refuse(checkpoints, tmp_path):
    src = copy_tree(checkpoints["llama"], tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "no_such_model"
    (src / "config.json").write_text(json.dumps(config))
    result = check(str(src), ConvertOptions())
    assert result.verdict == "both refuse" and "no_such_model" in result.sanitrace_failed


def test_eager_flags_round_trip():
    options = ConvertOptions(quantize=True, q_bits=3, q_group_size=32, q_mode="mxfp4", dtype="float16")
    assert eager_flags(options) == [
        "-q",
        "--q-group-size",
        "32",
        "--q-bits",
        "3",
        "--dtype",
        "float16",
        "--q-mode",
        "mxfp4",
    ]
    assert eager_flags(ConvertOptions()) == []


def test_library_choice(checkpoints, tmp_path):
    assert choose_library(str(checkpoints["llama"])) == "mlx_lm"
    src = copy_tree(checkpoints["llama"], tmp_path / "vlm")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["LlavaForConditionalGeneration"]
    (src / "config.json").write_text(json.dumps(config))
    assert choose_library(str(src)) == "mlx_vlm"
