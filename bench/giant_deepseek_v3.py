"""Real shapes: DeepSeek-V3 (671B, FP8) from ../shared/giants header descriptions.

1. Materializes the full header set (91,991 tensors, 163 sparse shards) and times
   `sanitrace trace -q` on it (plan size, predicted peak).
2. Materializes layers 0..3 (`materialize.py --layers 4`: 256-expert x 2048 x 7168
   FP8 stacks), and converts it with -q by mlx_lm.convert and by sanitrace,
   comparing peak RSS, wall time, predicted peak and the bytes. Eager needs a
   tokenizer in the folder, so one is added for it; sanitrace does not need it.

    python bench/giant_deepseek_v3.py [--work DIR] [--giants ../shared/giants] [--skip-eager]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

from harness import GIANTS, compare_pair, materialize, measure, table

from sanitrace import plan as plan_ir
from sanitrace.fixtures import write_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="build/bench-giant")
    parser.add_argument("--giants", default=GIANTS)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--skip-eager", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    full = os.path.join(args.work, "dsv3")
    materialize(args.giants, "deepseek-v3", full)
    plan_path = os.path.join(args.work, "dsv3-q4.msgpack")
    start = time.time()
    run = measure(
        "trace",
        [sys.executable, "-m", "sanitrace", "trace", full, "-q", "-o", plan_path],
        os.path.join(args.work, "trace.log"),
    )
    plan = plan_ir.load(plan_path)
    print(
        f"full trace: {len(plan.source.tensors)} tensors, {len(plan.source.files)} shards, "
        f"{run.wall:.1f} s wall, peak RSS {run.peak_rss / 2**30:.2f} GiB, "
        f"plan {os.path.getsize(plan_path) / 1e6:.1f} MB, "
        f"predicted execute peak {plan.memory.predicted_peak / 2**30:.2f} GiB "
        f"(took {time.time() - start:.0f} s with loading)"
    )

    four = os.path.join(args.work, "dsv3-4")
    materialize(args.giants, "deepseek-v3", four, "--layers", "4")
    if not args.skip_eager and not os.path.exists(os.path.join(four, "tokenizer.json")):
        write_tokenizer(four, 256)  # eager mlx_lm.convert loads a tokenizer; sanitrace does not
    plan4 = os.path.join(args.work, "dsv3-4-q4.msgpack")
    subprocess.run(
        [sys.executable, "-m", "sanitrace", "trace", four, "-q", "-o", plan4], check=True, stdout=subprocess.DEVNULL
    )
    predicted = plan_ir.load(plan4).memory.predicted_peak
    print(f"4 layers: predicted execute peak {predicted / 2**30:.2f} GiB")
    if args.skip_eager:
        out = os.path.join(args.work, "dsv3-4-sanitrace")
        shutil.rmtree(out, ignore_errors=True)
        ours = measure(
            "sanitrace",
            [sys.executable, "-m", "sanitrace", "execute", plan4, "--source", four, "--out", out, "--no-progress"],
            os.path.join(args.work, "exec.log"),
        )
        print(f"sanitrace execute: peak RSS {ours.peak_rss / 2**30:.2f} GiB, {ours.wall:.1f} s")
        return
    eager, ours, identical = compare_pair(four, args.work, "dsv3-4-q", ["-q"], args.budget)
    print(table([("4 layers -q", eager, ours, identical)]))


if __name__ == "__main__":
    main()
