"""The command line, run as users run it (a subprocess)."""

import json
import re
import struct
import subprocess
import sys

import pytest
from conftest import REPO

from sanitrace import plan as plan_ir
from sanitrace.cli_flags import parse_size
from sanitrace.compare import compare_folders

EXAMPLE = REPO / "examples" / "tiny-qwen3-moe"


def run(*argv, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "sanitrace", *map(str, argv)], capture_output=True, text=True, cwd=REPO
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def header_tensors(path) -> dict:
    """name -> (safetensors dtype, shape), read straight from a file's JSON header."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        doc = json.loads(f.read(length))
    doc.pop("__metadata__", None)
    return {name: (t["dtype"], t["shape"]) for name, t in doc.items()}


def spelled_out(names: str) -> list:
    """A show line's collapsed names ({0..1} ranges, {3..7..4} strides, {biases,scales,weight} sets) one by one."""
    match = re.search(r"\{([^{}]*)\}", names)
    if not match:
        return [names]
    values = []
    for part in match.group(1).split(","):
        first, dots, last = part.partition("..")
        last, _, step = last.partition("..")
        values += [str(v) for v in range(int(first), int(last) + 1, int(step or 1))] if dots else [part]
    return [n for v in values for n in spelled_out(names.replace(match.group(0), v, 1))]


def test_trace_show_execute_on_the_bundled_example(tmp_path, eager):
    """`show` says what the source, the config and the eager output say, each
    derived here without sanitrace's rendering code."""
    plan = tmp_path / "plan.msgpack"
    traced = run("trace", EXAMPLE, "-o", plan, "-q")
    for label in ("source tensors", "outputs", "dropped sources", "predicted peak", "plan"):
        assert label in traced.stdout
    shown = run("show", plan).stdout.splitlines()
    run("execute", plan, "--source", EXAMPLE, "--out", tmp_path / "out", "--memory-budget", "300M", "--no-progress")
    expected = eager(EXAMPLE, ["-q"])
    assert compare_folders(str(expected), str(tmp_path / "out")) == []

    config = json.loads((EXAMPLE / "config.json").read_text())
    sources = header_tensors(EXAMPLE / "model.safetensors")
    written = header_tensors(expected / "model.safetensors")  # what mlx_lm.convert wrote
    layers, experts = config["num_hidden_layers"], config["num_experts"]
    hidden, inter = config["hidden_size"], config["moe_intermediate_size"]
    assert f"source: 1 files, {len(sources)} tensors, {sum(map(nbytes, sources.values())) / 1024:.1f} KiB" in shown
    assert (
        f"output: {len(written)} tensors, {sum(map(nbytes, written.values())) / 1024:.1f} KiB in 1 shards "
        "(model.safetensors)" in shown
    )
    assert (
        f"accounting: {len(sources)} source tensors = {len(sources)} used + 0 dropped; {len(written)} outputs; "
        "strict load ok" in shown
    )
    memory = plan_ir.load(str(plan)).memory
    assert f"memory: predicted peak {memory.predicted_peak / 2**20:.1f} MiB at budget 1.0 GiB" in shown
    assert "loads: yes (mlx_lm.load, strict)" in shown
    # one collapsed line for the stacked experts of every layer, 4-bit in groups of 64 (the defaults)
    expert_shape = [experts, inter, hidden // 64]
    assert written[f"model.layers.{layers - 1}.mlp.switch_mlp.gate_proj.weight"] == (
        "U32",
        [experts, inter, hidden * 4 // 32],
    )
    assert (
        f"model.layers.{{0..{layers - 1}}}.mlp.switch_mlp.gate_proj.{{biases,scales,weight}}: "
        f"bfloat16{expert_shape}, bfloat16{expert_shape}, uint32[{experts}, {inter}, {hidden * 4 // 32}] = "
        f"quantize(stack([model.layers.{{0..{layers - 1}}}.mlp.experts.{{0..{experts - 1}}}.gate_proj.weight])"
        ".astype(bfloat16), 64, 4, mode='affine')"
    ) in shown
    # the outputs section names every tensor eager writes, once
    outputs = shown[shown.index("## outputs") + 1 : shown.index("## dropped sources") - 1]
    named = [n for line in outputs for n in spelled_out(line.split(": ", 1)[0])]
    assert sorted(named) == sorted(written)
    assert shown[shown.index("## dropped sources") + 1 :] == ["none"]


def nbytes(tensor: tuple) -> int:
    dtype, shape = tensor
    count = 1
    for n in shape:
        count *= n
    return count * {"BF16": 2, "F16": 2, "F32": 4, "U32": 4}[dtype]


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


@pytest.mark.parametrize(
    "text, value", [("1G", 1 << 30), ("512MiB", 512 << 20), ("1.5GB", 1_500_000_000), ("4096", 4096)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value
