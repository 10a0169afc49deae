"""Real-shape execution of the 2026 flagships (issue 16, item 6): `--layers N -q`.

For each case: ../shared/giants/materialize.py writes the first N decoder layers
(plus everything outside the stack) as a header-accurate sparse checkpoint;
`sanitrace convert -q` (trace, execute, then its verify: shard headers against
the plan and the library's own lazy strict load) runs through the library that
converts the release, measured for peak RSS and wall time. Printed per case:
predicted vs measured peak, the source bytes read, and the single-stream
quantize floor of this machine: the seconds one `mx.quantize` stream needs for
every element the plan quantizes, at the rate measured here (4096 x 4096 bf16,
same mode / group size / bits, best of 3). Eager conversion of these layers
needs the whole model's experts in memory; see giant_deepseek_v3.py for that.

    python bench/giants_layers.py [--work DIR] [--layers 4] [--budget 1G] [CASE ...]
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import time

from harness import GIANTS, materialize, measure

import mlx.core as mx
from sanitrace import plan as plan_ir

# case -> (giants description, library, config.json edit or None)
CASES = {
    # the release's weight_block_size makes mlx_vlm quantize every module mxfp8 and refuse the FP4
    # experts (plans/deepseek-v4-flash.refused.txt); without it the release converts
    "deepseek-v4-flash": ("deepseek-v4-flash", "mlx_vlm", "drop quantization_config.weight_block_size"),
    "qwen3.5-397b-a17b": ("qwen3.5-397b-a17b", "mlx_vlm", None),
    "kimi-k2.6": ("kimi-k2.6", "mlx_vlm", None),
    "glm-5.1-fp8": ("glm-5.1-fp8", "mlx_lm", None),
    "minimax-m2.7": ("minimax-m2.7", "mlx_lm", None),
    "gemma-4-26b-a4b": ("gemma-4-26b-a4b", "mlx_vlm", None),
    "gemma-4-31b": ("gemma-4-31b", "mlx_vlm", None),
}


def edit_config(folder: str, edit: str) -> None:
    """Apply a CASES edit to ``folder``/config.json."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    if edit == "drop quantization_config.weight_block_size":
        config["quantization_config"].pop("weight_block_size")
    else:
        raise ValueError(edit)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def quantize_rate(group_size: int, bits: int, mode: str) -> float:
    """Elements per second of one mx.quantize stream on this machine (best of 3)."""
    x = mx.random.normal((4096, 4096)).astype(mx.bfloat16)
    mx.eval(x)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        mx.eval(*mx.quantize(x, group_size=group_size, bits=bits, mode=mode))
        best = min(best, time.perf_counter() - start)
    return x.size / best


def quantize_floor(plan) -> float:
    """Seconds one mx.quantize stream needs for every element the plan quantizes."""
    elements: dict = {}
    for node in plan.nodes:
        if node.op == "quantize":
            source = node.inputs[0]
            shape = plan.nodes[source.node].outs[source.out][1]
            kwargs = dict(zip(("group_size", "bits", "mode"), node.args[1:]), **node.kwargs)
            key = (kwargs.get("group_size", 64), kwargs.get("bits", 4), kwargs.get("mode", "affine"))
            elements[key] = elements.get(key, 0) + math.prod(shape)
    return sum(n / quantize_rate(*key) for key, n in elements.items())


def run_case(name: str, args) -> str:
    giant, library, edit = CASES[name]
    src = os.path.join(args.work, f"{name}-{args.layers}")
    materialize(args.giants, giant, src, "--layers", str(args.layers))
    if edit:
        edit_config(src, edit)
    out = os.path.join(args.work, f"{name}-out")
    plan_path = os.path.join(args.work, f"{name}.msgpack")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + ".partial", ignore_errors=True)
    log = os.path.join(args.work, f"{name}.log")
    argv = [sys.executable, "-m", "sanitrace", "convert", src, out, "-q", "--library", library]
    argv += ["--no-progress", "--plan-out", plan_path] + (["--memory-budget", args.budget] if args.budget else [])
    run = measure(name, argv, log)
    text = open(log).read()
    if run.returncode:
        errors = [line for line in text.splitlines() if "error" in line] or text.splitlines()[-1:]
        return f"| {name} | {library} | failed: {errors[0][:200]} |"
    plan = plan_ir.load(plan_path)
    predicted = plan.memory.predicted_peak
    reads = re.search(r"source reads[^\n]*", text)
    verified = "yes" if re.search(r"verified .*; \w+\.load \(lazy, strict\)", text) else "NO (see log)"
    floor = quantize_floor(plan)
    source_bytes = sum(f.size for f in plan.source.files)
    shutil.rmtree(out, ignore_errors=True)
    return (
        f"| {name} | {library} | {source_bytes / 2**30:.1f} GiB | {predicted / 2**30:.2f} GiB "
        f"| {run.peak_rss / 2**30:.2f} GiB | {(run.peak_rss - predicted) / predicted:+.0%} | {run.wall:.0f} s "
        f"| {floor:.0f} s | {run.wall / floor:.1f}x | {verified} | {reads.group(0).split(None, 2)[2] if reads else ''} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help=f"default all: {', '.join(CASES)}")
    parser.add_argument("--work", default="build/bench-giants-layers")
    parser.add_argument("--giants", default=GIANTS)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--budget", default=None, help="sanitrace --memory-budget (default: the plan's, 1 GiB)")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    header = (
        "| case | library | source (sparse) | predicted peak | measured peak RSS | error | wall "
        "| quantize floor | wall / floor | strict load | reads |"
    )
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in args.cases or list(CASES):
        rows.append(run_case(name, args))
        print(rows[-1], flush=True)
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
