"""Shared fixtures: tiny checkpoints from the project's generator, eager conversions
(the oracle: mlx_lm.convert in a subprocess), sanitrace conversions (in process)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sanitrace.cli import main as sanitrace_main
from sanitrace.fixtures import write_checkpoint

# the replayer's invariant checks (planner and executor agree on every value), on in
# every test and every process a test starts
os.environ.setdefault("SANITRACE_INVARIANTS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SANITRACE_SHARED", REPO.parent / "shared"))

FIXTURES = {
    "llama": dict(arch="llama"),
    "qwen3_moe": dict(arch="qwen3_moe"),
    "mixtral": dict(arch="mixtral"),
    "deepseek_v3": dict(arch="deepseek_v3", layers=3),
    "split_experts": dict(arch="qwen3_moe", shards=2, split_experts=True),
}

# Quantized source formats (issue: FP8 block, MXFP4, compressed-tensors int4),
# with dims that are not multiples of 128 and matrices spanning several blocks.
_RAGGED = dict(
    hidden=320,
    intermediate=448,
    moe_intermediate=192,
    heads=4,
    kv_heads=4,
    head_dim=32,
    q_lora_rank=192,
    kv_lora_rank=64,
)
SOURCE_FIXTURES = {
    "deepseek_v3_fp8": dict(
        arch="deepseek_v3",
        source_format="fp8_block",
        layers=3,
        shards=2,
        split_before=r"model\.layers\.1\.self_attn\.o_proj\.weight_scale_inv",
        **_RAGGED,
    ),
    "gpt_oss_mxfp4": dict(arch="gpt_oss", intermediate=64),
    "kimi_k2_int4": dict(
        arch="deepseek_v3",
        source_format="int4_packed",
        layers=3,
        config_overrides={"model_type": "kimi_k2"},
    ),
    "minimax_fp8": dict(
        arch="minimax",
        source_format="fp8_block",
        hidden=320,
        moe_intermediate=192,
        heads=4,
        kv_heads=2,
        head_dim=32,
    ),
}

MODES = {
    "bf16": [],
    "q4": ["-q"],
    "q8": ["-q", "--q-bits", "8"],
    "mixed_3_6": ["-q", "--quant-predicate", "mixed_3_6"],
    "mxfp4": ["-q", "--q-mode", "mxfp4"],
}


def make_checkpoint(path: Path, arch: str, **kwargs) -> Path:
    write_checkpoint(str(path), arch, **kwargs)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("checkpoints")
    result = {}
    for name, spec in {**FIXTURES, **SOURCE_FIXTURES}.items():
        spec = dict(spec)
        result[name] = make_checkpoint(base / name, spec.pop("arch"), **spec)
    return result


def eager_convert(src: Path, out: Path, flags: list) -> Path:
    """The oracle: `python -m mlx_lm convert` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src), "--mlx-path", str(out)] + flags,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def eager(tmp_path_factory):
    """eager(src, flags) -> output folder, converted once per session."""
    base = tmp_path_factory.mktemp("eager")
    cache = {}

    def convert(src: Path, flags: list) -> Path:
        key = (str(src), tuple(flags))
        if key not in cache:
            cache[key] = eager_convert(src, base / f"out{len(cache)}", flags)
        return cache[key]

    return convert


def sanitrace_convert(src: Path, out: Path, flags: list, budget: str = None) -> Path:
    argv = ["convert", str(src), str(out), "--no-progress"] + flags
    if budget:
        argv += ["--memory-budget", budget]
    assert sanitrace_main(argv) == 0
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
