"""Ray scaling: one plan executed locally and on a local Ray instance with 1 and 2
worker processes, beside the library's own conversion, in one run.

Converts the bench MoE checkpoint (bench/moe_bf16.py's, 9.7 GB bf16 by default)
with ``-q``: traces it once, then runs ``mlx_lm.convert -q`` (the oracle),
``sanitrace execute`` (one process) and ``sanitrace execute --ray --ray-workers N``
for each N. Prints wall time, the speed-up over one worker, the driver's peak
RSS, each worker process's peak RSS (as the workers report it), the bytes that
passed through Ray's object store, and whether each output equals the eager one
(tensors) and the local one (every byte). The per-task throughput it prints is
what docs/scaling.md's model starts from.

    python bench/ray_scaling.py [--work DIR] [--workers 1 2] [--budget 1G] [--no-eager] [--keep]
"""

import argparse
import filecmp
import os
import re
import shutil
import sys

from harness import add_common_arguments, eager_argv, measure, write_bench_moe

from sanitrace.cli_flags import parse_size
from sanitrace.compare import compare_folders


def same_bytes(a: str, b: str) -> bool:
    """Every file of folders ``a`` and ``b`` byte-equal (and the same names)."""
    names_a = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
    names_b = sorted(os.path.relpath(os.path.join(d, f), b) for d, _, fs in os.walk(b) for f in fs)
    if names_a != names_b:
        return False
    return all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names_a)


def worker_peaks(log: str) -> list:
    with open(log) as f:
        lines = re.findall(r"worker peaks ([^\n]*)", f.read())
    return [parse_size(p.replace(" ", "")) for line in lines for p in line.split(", ")]


def object_store(log: str) -> str:
    with open(log) as f:
        match = re.search(r"ray object store\s+([\d.]+ [KMG]?i?B)", f.read())
    return match.group(1) if match else "?"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "build/bench-ray")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-eager", action="store_true", help="skip mlx_lm.convert (compare with local only)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=128)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    src = os.path.join(args.work, "source")
    if not os.path.exists(src):
        write_bench_moe(src, args.layers, args.experts, 2048, 1536, shards=2)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    print(f"source: {src}, {size / 1e9:.2f} GB; -q", flush=True)
    sanitrace = [sys.executable, "-m", "sanitrace"]
    plan = os.path.join(args.work, "plan.msgpack")
    budget = ["--memory-budget", args.budget] if args.budget else []
    run = measure("trace", sanitrace + ["trace", src, "-o", plan, "-q"] + budget, os.path.join(args.work, "trace.log"))
    if run.returncode:
        sys.exit(f"trace failed; see {args.work}/trace.log")
    outputs = {}
    rows = []

    def execute(name: str, argv: list) -> None:
        out = os.path.join(args.work, name)
        for d in (out, out + ".partial"):
            shutil.rmtree(d, ignore_errors=True)
        log = os.path.join(args.work, f"{name}.log")
        result = measure(name, argv + [out] if argv[2] == "convert" else argv + ["--out", out], log)
        if result.returncode:
            sys.exit(f"{name} failed; see {log}")
        outputs[name] = out
        rows.append((name, result, log))
        print(f"{name}: {result.wall:.1f} s, peak {gib(result.peak_rss)}", flush=True)

    if not args.no_eager:
        out = os.path.join(args.work, "eager")
        shutil.rmtree(out, ignore_errors=True)
        result = measure("mlx_lm.convert -q", eager_argv(src, out, ["-q"]), os.path.join(args.work, "eager.log"))
        if result.returncode:
            sys.exit(f"mlx_lm.convert failed; see {args.work}/eager.log")
        outputs["eager"] = out
        rows.append(("mlx_lm.convert -q", result, None))
        print(f"eager: {result.wall:.1f} s, peak {gib(result.peak_rss)}", flush=True)
    base = sanitrace + ["execute", plan, "--source", src, "--no-progress"] + budget
    execute("local", base)
    for n in args.workers:
        execute(f"ray-{n}", base + ["--ray", "--ray-workers", str(n)])

    one = next((r.wall for name, r, _ in rows if name == f"ray-{min(args.workers)}"), None)
    print()
    print(
        "| run | processes | wall | vs fewest workers | largest process peak RSS | worker peak RSS (each) "
        "| object store | = eager (tensors) | = local (bytes) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r, log in rows:
        ray = name.startswith("ray-")
        peaks = ", ".join(gib(p) for p in worker_peaks(log)) if ray else "-"
        eager = (
            "-"
            if name.startswith("mlx_lm") or "eager" not in outputs
            else ("yes" if not compare_folders(outputs["eager"], outputs[name]) else "NO")
        )
        local = "yes" if ray and same_bytes(outputs["local"], outputs[name]) else ("-" if not ray else "NO")
        procs = name.split("-")[1] if ray else "1"
        speed = f"{one / r.wall:.2f}x" if ray and one else "-"
        print(
            f"| {name} | {procs} | {r.wall:.1f} s | {speed} | {gib(r.peak_rss)} | {peaks} | "
            f"{object_store(log) if ray else '-'} | {eager} | {local} |"
        )
    out_bytes = sum(os.path.getsize(os.path.join(outputs["local"], f)) for f in os.listdir(outputs["local"]))
    for name, r, _ in rows:
        if name.startswith("ray-"):
            per = out_bytes / r.wall / int(name.split("-")[1])
            print(f"{name}: {size / r.wall / 1e6:.0f} MB/s of source, {per / 1e6:.0f} MB/s of output per worker")
    if not args.keep:
        shutil.rmtree(src)
    for out in outputs.values():
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
