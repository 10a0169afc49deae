"""Resident size of an executor before it computes anything: Python, mlx, numpy,
the executor's imports and a loaded plan. This is planner.memory.BASELINE_BYTES.

    python bench/memory_baseline.py [PLAN]
"""

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sanitrace import plan as plan_ir  # noqa: E402
from sanitrace.executor import execute  # noqa: E402, F401
from sanitrace.planner.memory import BASELINE_BYTES  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else "plans/tiny-qwen3-moe-q4.msgpack"
plan = plan_ir.load(path)
import mlx.core as mx  # noqa: E402

mx.eval(mx.zeros((1,)))  # initialise the mlx runtime
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kbytes on Linux
print(f"idle executor with {path}: peak RSS {peak / 2**20:.0f} MiB (BASELINE_BYTES = {BASELINE_BYTES / 2**20:.0f} MiB)")
