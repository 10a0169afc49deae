"""Resident size of an executor before it computes anything (Python, mlx, numpy,
the executor's imports and a loaded plan) against planner.memory.baseline_bytes,
which predicts it from the plan's graph nodes and source tensors. Each plan is
measured in a process of its own.

    python bench/memory_baseline.py [PLAN ...]   (default: every plan in plans/)
"""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sanitrace import plan as plan_ir  # noqa: E402
from sanitrace.planner.memory import plan_baseline  # noqa: E402

MEASURE = """
import gc, sys
import mlx.core as mx
from sanitrace import plan as plan_ir
from sanitrace.executor import execute  # noqa: F401
mx.eval(mx.zeros((1,)))  # initialise the mlx runtime
plan = plan_ir.load(sys.argv[1])
plan.nodes
gc.collect()
with open("/proc/self/statm") as f:
    print(int(f.read().split()[1]) * 4096)
"""


def main() -> None:
    paths = sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "plans", "*.msgpack")))
    print("| plan | graph nodes | source tensors | resident | baseline_bytes | error |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in paths:
        plan = plan_ir.load(path)
        out = subprocess.run([sys.executable, "-c", MEASURE, path], capture_output=True, text=True, check=True)
        resident, predicted = int(out.stdout), plan_baseline(plan)
        print(
            f"| {os.path.basename(path)} | {len(plan.graph.rows):,} | {len(plan.source.tensors):,} | "
            f"{resident / 2**20:.0f} MiB | {predicted / 2**20:.0f} MiB | {(resident - predicted) / predicted:+.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
