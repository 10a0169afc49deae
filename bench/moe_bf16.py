"""Benchmark: a synthetic Qwen3-MoE bf16 checkpoint (default 4 layers x 128 experts,
hidden 2048, moe_intermediate 1536: 9.7 GB), converted by mlx_lm.convert and by
sanitrace, with and without -q. Prints peak RSS, wall time and output identity.

    python bench/moe_bf16.py [--work DIR] [--layers 4] [--experts 128] [--budget 1G]
"""

import argparse
import os

from harness import add_common_arguments, run_modes, write_bench_moe


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser, "build/bench-moe")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--moe-intermediate", type=int, default=1536)
    args = parser.parse_args()

    src = os.path.join(args.work, "source")
    if not os.path.exists(src):
        os.makedirs(args.work, exist_ok=True)
        write_bench_moe(src, args.layers, args.experts, args.hidden, args.moe_intermediate, shards=2)
    run_modes(src, args, [("bf16", []), ("-q", ["-q"])])


if __name__ == "__main__":
    main()
