"""Plan speed on real shapes: `sanitrace trace` and `sanitrace show` on full flagship header sets.

Materializes each checkpoint of ../shared/giants (header-accurate sparse shards,
no data), then times `trace` (bf16 and -q) and `show` of the resulting plan,
each ``--repeat`` times, and prints wall time (median and worst), peak RSS, plan
size and rendering length, and a reference loop before and after (how fast
this shared machine is right now). Targets: DeepSeek-V3 (issue 5) trace <= 10 s
and <= 2 GiB, plan <= 10 MB, show <= 2 s and <= 400 lines; the 2026 flagships
(issue 16) trace <= 10 s and <= 1.5 GiB, show <= 300 lines.

A case is NAME or NAME:LIBRARY; ``--2026`` is every 2026 flagship through every
library that converts it (DeepSeek-V4-Flash without its weight_block_size,
harness.CONVERTIBLE_EDITS). Traces pass --allow-unloadable, so a conversion whose
output the library's loader refuses (Kimi-K2.6 -q through mlx_vlm) is timed too.

    python bench/plan_speed.py [--work DIR] [--giants ../shared/giants] [--repeat 3] [--2026] [CASE ...]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

from harness import GIANTS, make_convertible, materialize, measure


CASES_2026 = [
    "deepseek-v4-flash:mlx_vlm",
    "qwen3.5-397b-a17b:mlx_lm",
    "qwen3.5-397b-a17b:mlx_vlm",
    "kimi-k2.6:mlx_lm",
    "kimi-k2.6:mlx_vlm",
    "glm-5.1-fp8:mlx_lm",
    "minimax-m2.7:mlx_lm",
    "minimax-m2.7:mlx_vlm",
    "gemma-4-26b-a4b:mlx_lm",
    "gemma-4-26b-a4b:mlx_vlm",
    "gemma-4-31b:mlx_lm",
    "gemma-4-31b:mlx_vlm",
]


def timed(label: str, argv: list, log: str, repeat: int):
    """(median wall, worst wall, worst peak RSS) of ``repeat`` runs; fails loudly."""
    runs = [measure(label, argv, log) for _ in range(repeat)]
    for run in runs:
        if run.returncode:
            sys.exit(f"{label} failed (exit {run.returncode}); see {log}")
    walls = [r.wall for r in runs]
    return statistics.median(walls), max(walls), max(r.peak_rss for r in runs)


def reference_loop() -> float:
    """Seconds for a fixed pure-Python loop: how fast this machine is right now
    (shared machines drift by 20-30% within an hour)."""
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help="NAME[:LIBRARY] of ../shared/giants (default deepseek-v3)")
    parser.add_argument("--2026", dest="flagships_2026", action="store_true", help="add every 2026 case")
    parser.add_argument("--work", default="build/bench-plan-speed")
    parser.add_argument("--giants", default=GIANTS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    sanitrace = [sys.executable, "-m", "sanitrace"]
    rows = []
    reference = [reference_loop()]
    cases = args.cases + (CASES_2026 if args.flagships_2026 else [])
    for case in cases or ["deepseek-v3"]:
        name, _, library = case.partition(":")
        source = os.path.join(args.work, name)
        materialize(args.giants, name, source)
        make_convertible(name, source)
        chosen = ["--library", library, "--allow-unloadable"] if library else []
        for variant, flags in (("bf16", []), ("-q", ["-q"])):
            plan = os.path.join(
                args.work, f"{name}{'-' + library if library else ''}{flags[0] if flags else ''}.msgpack"
            )
            log = os.path.join(args.work, "run.log")
            trace = timed("trace", sanitrace + ["trace", source, "-o", plan] + chosen + flags, log, args.repeat)
            show = timed("show", sanitrace + ["show", plan], log, args.repeat)
            rendered = subprocess.run(sanitrace + ["show", plan], check=True, capture_output=True, text=True)
            rows.append((case, variant, trace, os.path.getsize(plan), show, rendered.stdout.count("\n")))
    reference.append(reference_loop())
    print(f"machine reference (10M-iteration Python loop): {reference[0]:.2f} s before, {reference[1]:.2f} s after")
    print(
        f"| checkpoint | mode | trace wall (median / worst of {args.repeat}) | trace peak RSS | plan size "
        f"| show wall (median / worst) | show peak RSS | show lines |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, variant, trace, size, show, lines in rows:
        print(
            f"| {name} | {variant} | {trace[0]:.2f} s / {trace[1]:.2f} s | {trace[2] / 2**30:.2f} GiB "
            f"| {size / 1e6:.1f} MB | {show[0]:.2f} s / {show[1]:.2f} s | {show[2] / 2**30:.2f} GiB | {lines} |"
        )
    print("targets: DeepSeek-V3 trace <= 10 s and <= 2 GiB, plan <= 10 MB, show <= 2 s and <= 400 lines;")
    print("         2026 flagships trace <= 10 s and <= 1.5 GiB, show <= 300 lines")


if __name__ == "__main__":
    main()
