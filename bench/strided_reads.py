"""Benchmark: a conversion that chunks a non-leading source axis (issue 15, bug 2).

GPT-2 stores its Conv1D weights [in, out] and mlx_lm's sanitize transposes them,
so an output chunked by rows reads columns of its source: one run of bytes per
source row. A synthetic GPT-2 XL-shaped checkpoint (hidden 1600, vocab 50257,
default 4 layers) is converted by mlx_lm.convert and by sanitrace (trace, then
execute in one process, as ``sanitrace convert``, under a small memory budget,
so the big weights go in many chunks).
Prints, per mode: bytes of source tensors the plan needs, bytes sanitrace read,
predicted vs measured peak RSS, wall times, and identity with eager.

    python bench/strided_reads.py [--work DIR] [--layers 4] [--budget 192M]
"""

import argparse
import os
import re
import shutil
import sys

from harness import eager_argv, measure

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.fixtures import write_checkpoint
from sanitrace.planner.memory import plan_baseline, predicted_peak


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="build/bench-strided")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1600)
    parser.add_argument("--heads", type=int, default=25)
    parser.add_argument("--budget", default="192M", help="sanitrace --memory-budget")
    parser.add_argument("--keep", action="store_true", help="keep the source checkpoint")
    args = parser.parse_args()

    src = os.path.join(args.work, "source")
    if not os.path.exists(src):
        os.makedirs(args.work, exist_ok=True)
        write_checkpoint(src, "gpt2", layers=args.layers, hidden=args.hidden, heads=args.heads, vocab=50257)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    print(f"source: {src}, {size / 1e9:.2f} GB; sanitrace budget {args.budget}")
    header = (
        "| mode | chunks | source tensors needed | sanitrace read | read / needed | predicted peak | "
        "measured peak RSS | error | sanitrace wall | eager peak RSS | eager wall | identical |"
    )
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for mode, flags in [("bf16", []), ("-q", ["-q"])]:
        rows.append(run_mode(src, args, mode, flags))
        print(rows[-1], flush=True)
    print()
    print("\n".join(rows))
    if not args.keep:
        shutil.rmtree(src)


def run_mode(src: str, args, mode: str, flags: list) -> str:
    name = mode.strip("-")
    plan_path = os.path.join(args.work, f"{name}.msgpack")
    eager_out, ours_out = os.path.join(args.work, f"{name}-eager"), os.path.join(args.work, f"{name}-sanitrace")
    for folder in (eager_out, ours_out, ours_out + ".partial"):
        shutil.rmtree(folder, ignore_errors=True)
    log = os.path.join(args.work, f"{name}-sanitrace.log")
    # the drop-in path: one process traces and executes (its baseline adds the library's imports)
    ours = measure(
        "convert",
        [
            sys.executable,
            "-m",
            "sanitrace",
            "convert",
            src,
            ours_out,
            "--no-progress",
            "--no-verify",
            "--memory-budget",
            args.budget,
            "--plan-out",
            plan_path,
        ]
        + flags,
        log,
    )
    if ours.returncode:
        sys.exit(f"sanitrace convert failed (exit {ours.returncode}); see {log}")
    plan = plan_ir.load(plan_path)
    predicted, _ = predicted_peak(plan.groups, plan.memory.budget, plan_baseline(plan, library_loaded=True))
    text = open(log).read()
    reads = re.search(r"source reads +(\S+ \S+) \(([\d.]+)x the (\S+ \S+) of source tensors", text)
    chunks = re.search(r"\((\d+) chunks\)", text).group(1)
    eager = measure("mlx_lm.convert", eager_argv(src, eager_out, flags), os.path.join(args.work, f"{name}-eager.log"))
    problems = compare_folders(eager_out, ours_out) if not eager.returncode else ["eager failed"]
    shutil.rmtree(eager_out, ignore_errors=True)
    shutil.rmtree(ours_out, ignore_errors=True)
    error = (predicted - ours.peak_rss) / ours.peak_rss
    return (
        f"| {mode} | {chunks} | {reads.group(3)} | {reads.group(1)} | {reads.group(2)}x | "
        f"{predicted / 2**30:.3f} GiB | {ours.peak_rss / 2**30:.3f} GiB | {error:+.0%} | {ours.wall:.1f} s | "
        f"{eager.peak_rss / 2**30:.2f} GiB | {eager.wall:.1f} s | {'yes' if not problems else problems[:2]} |"
    )


if __name__ == "__main__":
    main()
