"""The command line, run as users run it (a subprocess)."""

import subprocess
import sys

import pytest
from conftest import REPO

from sanitrace.cli import parse_size
from sanitrace.compare import compare_folders

EXAMPLE = REPO / "examples" / "tiny-qwen3-moe"


def run(*argv, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "sanitrace", *map(str, argv)], capture_output=True, text=True, cwd=REPO
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_trace_show_execute_on_the_bundled_example(tmp_path, eager):
    plan = tmp_path / "plan.msgpack"
    traced = run("trace", EXAMPLE, "-o", plan, "-q")
    for label in ("source tensors", "outputs", "dropped sources", "predicted peak", "plan"):
        assert label in traced.stdout
    shown = run("show", plan).stdout
    assert shown == run("show", plan).stdout  # stable
    assert "mlx_lm" in shown and "quantize(" in shown and "## dropped sources" in shown
    run("execute", plan, "--source", EXAMPLE, "--out", tmp_path / "out", "--memory-budget", "300M", "--no-progress")
    assert compare_folders(str(eager(EXAMPLE, ["-q"])), str(tmp_path / "out")) == []


def test_committed_example_plan_is_fresh(tmp_path):
    plan = tmp_path / "plan.msgpack"
    run("trace", EXAMPLE, "-o", plan, "-q")
    committed = REPO / "plans" / "tiny-qwen3-moe-q4.msgpack"
    assert plan.read_bytes() == committed.read_bytes(), "re-trace and commit plans/ (see README)"
    assert run("show", plan).stdout == (REPO / "plans" / "tiny-qwen3-moe-q4.txt").read_text()


def test_convert_refuses_existing_output(tmp_path):
    (tmp_path / "out").mkdir()
    proc = run("convert", EXAMPLE, tmp_path / "out", check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr


def test_execute_with_a_corrupt_plan_is_a_clear_error(tmp_path):
    bad = tmp_path / "plan.msgpack"
    bad.write_bytes(b"\x93not a plan")
    proc = run("execute", bad, "--source", EXAMPLE, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "plan.msgpack" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text, value", [("1G", 1 << 30), ("512MiB", 512 << 20), ("1.5GB", 1_500_000_000), ("4096", 4096)])
def test_parse_size(text, value):
    assert parse_size(text) == value
