"""Predicted vs measured peak memory of `sanitrace execute`.

For each SOURCE (with convert FLAGS), traces a plan, runs `sanitrace execute`
under /usr/bin/time and prints the plan's predicted peak next to the measured
peak RSS.

    python bench/memory_prediction.py [--budget 1G] SOURCE[:FLAGS] ...
    e.g. python bench/memory_prediction.py build/bench-moe/source build/bench-moe/source:-q
"""

import argparse
import os
import shutil
import subprocess
import sys

from harness import measure

from sanitrace import plan as plan_ir


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--budget", default=None)
    parser.add_argument("--work", default="build/bench-memory")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    print("| source | flags | predicted peak | measured peak RSS | error | wall |")
    print("|---|---|---|---|---|---|")
    for spec in args.sources:
        source, _, flags = spec.partition(":")
        flags = flags.split() if flags else []
        plan_path = os.path.join(args.work, "plan.msgpack")
        budget = ["--memory-budget", args.budget] if args.budget else []
        subprocess.run(
            [sys.executable, "-m", "sanitrace", "trace", source, "-o", plan_path] + flags + budget,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        predicted = plan_ir.load(plan_path).memory.predicted_peak
        out = os.path.join(args.work, "out")
        for folder in (out, out + ".partial"):  # an earlier interrupted run leaves .partial
            shutil.rmtree(folder, ignore_errors=True)
        log = os.path.join(args.work, "execute.log")
        run = measure(
            "execute",
            [
                sys.executable,
                "-m",
                "sanitrace",
                "execute",
                plan_path,
                "--source",
                source,
                "--out",
                out,
                "--no-progress",
            ],
            log,
        )
        if run.returncode:
            sys.exit(f"execute of {spec} failed (exit {run.returncode}); see {log}")
        shutil.rmtree(out, ignore_errors=True)
        error = (predicted - run.peak_rss) / run.peak_rss
        print(
            f"| {os.path.basename(os.path.dirname(source)) or source} | {' '.join(flags) or 'bf16'} | "
            f"{predicted / 2**30:.2f} GiB | {run.peak_rss / 2**30:.2f} GiB | {error:+.0%} | {run.wall:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
