"""Real-shape execution of the 2026 flagships (issue 16, item 6): `--layers N -q`.

For each case: ../shared/giants/materialize.py writes the first N decoder layers
(plus everything outside the stack) as a header-accurate sparse checkpoint;
`sanitrace trace -q` and `sanitrace execute` run through the library that
converts the release, each its own process measured for peak RSS and wall time
(the plan's prediction is of execute, which never imports the library; `convert`
does both in one process and adds the library's imports, about 0.2 GiB), then
convert's own check (shard headers, the library's lazy strict load) in a third.
Printed per case: predicted vs measured execute peak, the source bytes read, and
the single-stream quantize floor of this machine: the seconds one `mx.quantize`
stream needs for every element the plan quantizes, at the rate measured here
(4096 x 4096 bf16, same mode / group size / bits, best of 3). Eager conversion
of these layers needs the whole model's experts in memory; see
giant_deepseek_v3.py for that.

    python bench/giants_layers.py [--work DIR] [--layers 4] [--budget 1G] [CASE ...]
"""

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time

from harness import GIANTS, make_convertible, materialize, measure

import mlx.core as mx
from sanitrace import plan as plan_ir

# case -> the library that converts it with -q into an output that loads (DeepSeek-V4-Flash
# without its weight_block_size: harness.CONVERTIBLE_EDITS; Kimi-K2.6's -q output only loads
# through mlx_lm: plans/kimi-k2.6.refused.txt)
CASES = {
    "deepseek-v4-flash": "mlx_vlm",
    "qwen3.5-397b-a17b": "mlx_vlm",
    "kimi-k2.6": "mlx_lm",
    "glm-5.1-fp8": "mlx_lm",
    "minimax-m2.7": "mlx_lm",
    "gemma-4-26b-a4b": "mlx_vlm",
    "gemma-4-31b": "mlx_vlm",
}


def quantize_rate(args: list, kwargs: dict) -> float:
    """Elements per second of one mx.quantize stream on this machine (best of 3),
    called as a plan node calls it (its literal arguments after the array)."""
    x = mx.random.normal((4096, 4096)).astype(mx.bfloat16)
    mx.eval(x)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        mx.eval(*mx.quantize(x, *args, **kwargs))
        best = min(best, time.perf_counter() - start)
    return x.size / best


def quantize_floor(plan) -> float:
    """Seconds one mx.quantize stream needs for every element the plan quantizes."""
    elements: dict = {}  # repr of the call's literal arguments -> (args, kwargs, elements)
    for node in plan.nodes:
        if node.op == "mx.quantize":
            source = node.inputs[0]
            shape = plan.nodes[source.node].outs[source.out][1]
            args, kwargs = node.args[1:], node.kwargs
            _, _, count = elements.get(repr((args, kwargs)), (args, kwargs, 0))
            elements[repr((args, kwargs))] = (args, kwargs, count + math.prod(shape))
    return sum(count / quantize_rate(args, kwargs) for args, kwargs, count in elements.values())


def run_case(name: str, args) -> str:
    library = CASES[name]
    src = os.path.join(args.work, f"{name}-{args.layers}")
    materialize(args.giants, name, src, "--layers", str(args.layers))
    make_convertible(name, src)
    out = os.path.join(args.work, f"{name}-out")
    plan_path = os.path.join(args.work, f"{name}.msgpack")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + ".partial", ignore_errors=True)
    log = os.path.join(args.work, f"{name}.log")
    sanitrace = [sys.executable, "-m", "sanitrace"]
    budget = ["--memory-budget", args.budget] if args.budget else []
    trace = measure("trace", sanitrace + ["trace", src, "-o", plan_path, "-q", "--library", library] + budget, log)
    if trace.returncode:
        return f"| {name} | {library} | trace failed: {open(log).read().splitlines()[-1][:200]} |"
    run = measure("execute", sanitrace + ["execute", plan_path, "--source", src, "--out", out, "--no-progress"], log)
    text = open(log).read()
    if run.returncode:
        return f"| {name} | {library} | execute failed: {text.splitlines()[-1][:200]} |"
    # the check convert runs after writing (shard headers, the library's lazy strict load), in its own process
    check = (
        "import sys; from sanitrace import plan; from sanitrace.verify import verify_output; "
        "print('loaded' if verify_output(plan.load(sys.argv[1]), sys.argv[2]).loaded else 'not loaded')"
    )
    verify = subprocess.run([sys.executable, "-c", check, plan_path, out], capture_output=True, text=True)
    loaded = "yes" if verify.stdout.strip() == "loaded" else f"NO: {(verify.stderr or verify.stdout)[-200:]}"
    plan = plan_ir.load(plan_path)
    predicted = plan.memory.predicted_peak
    reads = re.search(r"source reads\s+(.*)", text)
    floor = quantize_floor(plan)
    source_bytes = sum(f.size for f in plan.source.files)
    shutil.rmtree(out, ignore_errors=True)
    return (
        f"| {name} | {library} | {source_bytes / 2**30:.1f} GiB | {trace.wall:.1f} s, {trace.peak_rss / 2**30:.2f} GiB "
        f"| {predicted / 2**30:.2f} GiB | {run.peak_rss / 2**30:.2f} GiB | {(run.peak_rss - predicted) / predicted:+.0%} "
        f"| {run.wall:.0f} s | {floor:.0f} s | {run.wall / floor:.1f}x | {loaded} | {reads.group(1) if reads else ''} |"
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
        "| case | library | source (sparse) | trace wall, peak RSS | predicted execute peak | execute peak RSS "
        "| error | execute wall | quantize floor | wall / floor | strict load | source reads |"
    )
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in args.cases or list(CASES):
        rows.append(run_case(name, args))
        print(rows[-1], flush=True)
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
