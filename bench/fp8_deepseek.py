"""Benchmark: a synthetic DeepSeek-V3-layout FP8 checkpoint (default 8 layers, the
first dense, 64 experts of 1536 x 2048 per projection: 4.6 GB of F8_E4M3 with
128x128 weight_scale_inv blocks) converted with -q by mlx_lm.convert and by
sanitrace. Prints peak RSS, wall time and output identity.

    python bench/fp8_deepseek.py [--work DIR] [--layers 8] [--experts 64] [--budget 1G]
"""

import argparse
import os
import shutil

from harness import compare_pair, table

from sanitrace.fixtures import write_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="build/bench-fp8")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--budget", default=None, help="sanitrace --memory-budget (default: the plan's)")
    parser.add_argument("--keep", action="store_true", help="keep the source checkpoint")
    args = parser.parse_args()

    src = os.path.join(args.work, "source")
    if not os.path.exists(src):
        os.makedirs(args.work, exist_ok=True)
        write_checkpoint(
            src, "deepseek_v3", source_format="fp8_block", layers=args.layers,
            experts=args.experts, hidden=2048, moe_intermediate=1536, intermediate=4096,
            heads=16, kv_heads=16, head_dim=128, q_lora_rank=1536, kv_lora_rank=512,
            vocab=1024, shards=2,
        )
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    print(f"source: {src}, {size / 1e9:.2f} GB")
    eager, ours, identical = compare_pair(src, args.work, "q", ["-q"], args.budget)
    print(table([("-q", eager, ours, identical)]))
    if not args.keep:
        shutil.rmtree(src)


if __name__ == "__main__":
    main()
