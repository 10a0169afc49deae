"""Benchmark: a synthetic DeepSeek-V3-layout FP8 checkpoint (default 8 layers, the
first dense, 64 experts of 1536 x 2048 per projection: 4.6 GB of F8_E4M3 with
128x128 weight_scale_inv blocks) converted with -q by mlx_lm.convert and by
sanitrace. Prints peak RSS, wall time and output identity.

    python bench/fp8_deepseek.py [--work DIR] [--layers 8] [--experts 64] [--budget 1G]
"""

import argparse
import os

from harness import add_common_arguments, run_modes

from sanitrace.fixtures import write_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser, "build/bench-fp8")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    args = parser.parse_args()

    src = os.path.join(args.work, "source")
    if not os.path.exists(src):
        os.makedirs(args.work, exist_ok=True)
        write_checkpoint(
            src,
            "deepseek_v3",
            source_format="fp8_block",
            layers=args.layers,
            experts=args.experts,
            hidden=2048,
            moe_intermediate=1536,
            intermediate=4096,
            heads=16,
            kv_heads=16,
            head_dim=128,
            q_lora_rank=1536,
            kv_lora_rank=512,
            vocab=1024,
            shards=2,
        )
    run_modes(src, args, [("-q", ["-q"])])


if __name__ == "__main__":
    main()
