"""Scaling model for `execute --ray` on N hosts (docs/scaling.md), from measured
per-task throughput and the committed plans' byte counts.

1. Measure: for each model, the first ``--layers`` decoder layers at real shapes
   (../shared/giants, sparse) are traced with -q and executed with ``--ray
   --ray-workers 1`` and ``2``; the summary gives each worker's source bytes read
   per busy second (``r``), and the 2-worker wall gives this host's throughput.
2. Count: the committed plan of the whole model (plans/NAME-q4.msgpack) gives the
   source bytes its graph reads (S) and the output bytes (O).
3. Predict, for N hosts of ``--workers-per-host`` workers each, on a shared
   filesystem of aggregate bandwidth B (read S, write O through it):

       wall(N) = max(S / (N * host_rate), (S + O) / B) + startup

   host_rate = r * workers * efficiency, efficiency measured here (2-worker wall
   against 1-worker wall, per worker); startup = this run's fixed overhead (Ray
   start, plan load, the last task's tail), measured as the 1-worker wall minus
   S_measured / r.

    python bench/scaling_model.py [--work DIR] [--layers 4] [--bandwidth 1.25 5] [--workers-per-host 2]
"""

import argparse
import os
import re
import shutil
import sys

from harness import GIANTS, REPO, materialize, measure

from sanitrace import plan as plan_ir
from sanitrace.cli_flags import parse_size

MODELS = {"deepseek-v3": "deepseek-v3-q4.msgpack", "kimi-k2-instruct": "kimi-k2-instruct-q4.msgpack"}
HOSTS = (1, 4, 16)


def plan_bytes(path: str):
    """(source bytes the plan's graph reads, output tensor bytes) of a plan file."""
    plan = plan_ir.load(path)
    loaded = {node.args[0] for node in plan.nodes if node.op == "load"}
    source = sum(plan.source.tensors[i].end - plan.source.tensors[i].begin for i in loaded)
    return source, plan.output_bytes


def ray_run(work: str, name: str, plan: str, src: str, workers: int):
    """(wall seconds, per-busy-worker source rate in bytes/s, source bytes read) of one --ray execute."""
    out = os.path.join(work, f"{name}-out-{workers}")
    shutil.rmtree(out, ignore_errors=True)
    log = os.path.join(work, f"{name}-ray-{workers}.log")
    argv = [sys.executable, "-m", "sanitrace", "execute", plan, "--source", src, "--out", out, "--no-progress"]
    run = measure(f"ray-{workers}", argv + ["--ray", "--ray-workers", str(workers)], log)
    shutil.rmtree(out, ignore_errors=True)
    if run.returncode:
        sys.exit(f"{name}: execute --ray failed; see {log}")
    text = open(log).read()
    nodes = re.findall(r"ray node .*?([\d.]+ [KMGT]?i?B) read at ([\d.]+ [KMGT]?i?B)/s per busy worker", text)
    read = sum(parse_size(b.replace(" ", "")) for b, _ in nodes)
    rate = min(parse_size(r.replace(" ", "")) for _, r in nodes)
    return run.wall, rate, read


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/bench-scaling")
    parser.add_argument("--giants", default=GIANTS)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--workers-per-host", type=int, default=2)
    parser.add_argument("--bandwidth", type=float, nargs="+", default=[1.25, 5.0], help="shared fs GB/s")
    parser.add_argument("models", nargs="*", default=sorted(MODELS))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for name in args.models:
        src = os.path.join(args.work, name)
        materialize(args.giants, name, src, "--layers", str(args.layers))
        plan = os.path.join(args.work, f"{name}.msgpack")
        trace = [sys.executable, "-m", "sanitrace", "trace", src, "-o", plan, "-q"]
        if measure("trace", trace, os.path.join(args.work, f"{name}-trace.log")).returncode:
            sys.exit(f"{name}: trace failed")
        wall1, rate, read = ray_run(args.work, name, plan, src, 1)
        wall2, _, _ = ray_run(args.work, name, plan, src, 2)
        startup = max(wall1 - read / rate, 0.0)
        efficiency = min((wall1 - startup) / max(wall2 - startup, 1e-9) / 2, 1.0)
        host_rate = rate * args.workers_per_host * efficiency
        source, output = plan_bytes(os.path.join(REPO, "plans", MODELS[name]))
        print(
            f"{name}: {args.layers} layers read {read / 1e9:.1f} GB; 1 worker {wall1:.0f} s, 2 workers {wall2:.0f} s; "
            f"r = {rate / 1e6:.0f} MB/s per busy worker, startup {startup:.0f} s, 2-worker efficiency "
            f"{efficiency:.2f}; whole model S = {source / 1e9:.0f} GB, O = {output / 1e9:.0f} GB",
            flush=True,
        )
        for bandwidth in args.bandwidth:
            walls = []
            for n in HOSTS:
                compute = source / (n * host_rate)
                io = (source + output) / (bandwidth * 1e9)
                walls.append(f"{hours(max(compute, io) + startup)}{' (fs)' if io > compute else ''}")
            rows.append((name, bandwidth, walls))
    print()
    hosts = " | ".join(f"{n} host" + ("s" if n > 1 else "") for n in HOSTS)
    print(f"| model -q | shared fs | {hosts} |")
    print(f"|---|---|{'---|' * len(HOSTS)}")
    for name, bandwidth, walls in rows:
        print(f"| {name} | {bandwidth:g} GB/s | {' | '.join(walls)} |")


if __name__ == "__main__":
    main()
