"""The memory model's baseline (planner.memory.baseline_bytes) covers what an
executor holds before it computes, for a tiny plan and for a full-size one."""

import subprocess
import sys
from pathlib import Path

import pytest

from sanitrace import plan as plan_ir
from sanitrace.planner.memory import EXECUTOR_BYTES, plan_baseline

PLANS = Path(__file__).resolve().parent.parent / "plans"

# resident bytes of a process that imported the executor, started mlx and loaded the plan
RESIDENT = """
import gc, sys
import mlx.core as mx
from sanitrace import plan as plan_ir
from sanitrace.executor import execute  # noqa: F401
mx.eval(mx.zeros((1,)))
plan = plan_ir.load(sys.argv[1])
plan.nodes
gc.collect()
with open("/proc/self/statm") as f:
    print(int(f.read().split()[1]) * 4096)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("name", ["tiny-qwen3-moe-q4", "deepseek-v3-q4"])
def test_baseline_covers_an_idle_executor_holding_the_plan(name):
    path = PLANS / f"{name}.msgpack"
    plan = plan_ir.load(str(path))
    run = subprocess.run([sys.executable, "-c", RESIDENT, str(path)], capture_output=True, text=True, check=True)
    resident, baseline = int(run.stdout), plan_baseline(plan)
    assert plan.memory.baseline == baseline
    # the baseline also covers the executor's threads and buffers once it runs (about 12 MiB)
    assert resident <= baseline <= resident + 32 * 2**20, (resident >> 20, baseline >> 20)
    if name.startswith("deepseek"):  # 450,000 nodes: far above the fixed part
        assert resident > EXECUTOR_BYTES + 128 * 2**20
