"""Run eager mlx_lm.convert and sanitrace side by side: peak RSS, wall time, identity.

Peak RSS is "Maximum resident set size" from /usr/bin/time -v (falls back to
polling with psutil where /usr/bin/time is missing, e.g. on macOS).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIANTS = os.path.join(REPO, "..", "shared", "giants")
sys.path.insert(0, REPO)

from sanitrace.compare import compare_folders  # noqa: E402
from sanitrace.fixtures import write_checkpoint  # noqa: E402


@dataclass
class Run:
    label: str
    peak_rss: int  # bytes
    wall: float  # seconds
    returncode: int


def measure(label: str, argv: List[str], log: str) -> Run:
    """Run ``argv``; peak RSS of the whole process tree's largest process."""
    if os.path.exists("/usr/bin/time"):
        start = time.time()
        with open(log, "w") as f:
            proc = subprocess.run(["/usr/bin/time", "-v"] + argv, stdout=f, stderr=subprocess.STDOUT)
        wall = time.time() - start
        text = open(log).read()
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        peak = int(match.group(1)) * 1024 if match else 0
        return Run(label, peak, wall, proc.returncode)
    import psutil

    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
    return Run(label, peak, time.time() - start, proc.returncode)


def eager_argv(src: str, out: str, flags: List[str]) -> List[str]:
    return [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", src, "--mlx-path", out] + flags


def sanitrace_argv(src: str, out: str, flags: List[str], budget: Optional[str] = None) -> List[str]:
    extra = ["--memory-budget", budget] if budget else []
    return [sys.executable, "-m", "sanitrace", "convert", src, out, "--no-progress"] + flags + extra


def compare_pair(src: str, work: str, name: str, flags: List[str], budget: Optional[str] = None):
    """Convert ``src`` both ways; returns (eager run, sanitrace run, identical?)."""
    eager_out = os.path.join(work, f"{name}-eager")
    ours_out = os.path.join(work, f"{name}-sanitrace")
    for d in (eager_out, ours_out, ours_out + ".partial"):
        shutil.rmtree(d, ignore_errors=True)
    eager = measure(
        f"mlx_lm.convert {' '.join(flags)}".strip(),
        eager_argv(src, eager_out, flags),
        os.path.join(work, f"{name}-eager.log"),
    )
    ours = measure(
        f"sanitrace convert {' '.join(flags)}".strip(),
        sanitrace_argv(src, ours_out, flags, budget),
        os.path.join(work, f"{name}-sanitrace.log"),
    )
    if eager.returncode or ours.returncode:
        identical = f"failed (eager rc={eager.returncode}, sanitrace rc={ours.returncode})"
    else:
        problems = compare_folders(eager_out, ours_out)
        identical = "yes" if not problems else f"NO: {problems[:3]}"
    shutil.rmtree(eager_out, ignore_errors=True)
    shutil.rmtree(ours_out, ignore_errors=True)
    return eager, ours, identical


def table(rows: List[tuple]) -> str:
    """Markdown table: (mode, eager Run, sanitrace Run, identical)."""
    lines = [
        "| mode | eager peak RSS | eager wall | sanitrace peak RSS | sanitrace wall | identical |",
        "|---|---|---|---|---|---|",
    ]
    for mode, eager, ours, identical in rows:
        lines.append(
            f"| {mode} | {eager.peak_rss / 2**30:.2f} GiB | {eager.wall:.1f} s | "
            f"{ours.peak_rss / 2**30:.2f} GiB | {ours.wall:.1f} s | {identical} |"
        )
    return "\n".join(lines)


def add_common_arguments(parser, work: str) -> None:
    """--work, --budget, --keep: the flags every side-by-side benchmark takes."""
    parser.add_argument("--work", default=work)
    parser.add_argument("--budget", default=None, help="sanitrace --memory-budget (default: the plan's)")
    parser.add_argument("--keep", action="store_true", help="keep the source checkpoint")


def run_modes(src: str, args, modes: List[tuple]) -> None:
    """Convert ``src`` both ways in each (mode, flags), print a row as each
    finishes and the whole table at the end; remove ``src`` unless --keep."""
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    print(f"source: {src}, {size / 1e9:.2f} GB")
    rows = []
    for mode, flags in modes:
        eager, ours, identical = compare_pair(src, args.work, mode.strip("-"), flags, args.budget)
        rows.append((mode, eager, ours, identical))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if not args.keep:
        shutil.rmtree(src)


def materialize(giants: str, name: str, dest: str, *extra: str) -> None:
    """Write the header-accurate sparse checkpoint ``name`` of ../shared/giants
    to ``dest`` (``materialize.py`` flags in ``extra``), unless it exists."""
    if not os.path.exists(dest):
        subprocess.run(
            [sys.executable, os.path.join(giants, "materialize.py"), os.path.join(giants, name), dest, *extra],
            check=True,
            stdout=subprocess.DEVNULL,
        )


# releases a library refuses as released, and the config.json edit that makes them convert:
# DeepSeek-V4-Flash's weight_block_size makes mlx_vlm build every expert mxfp8 (plans/deepseek-v4-flash.refused.txt)
CONVERTIBLE_EDITS = {"deepseek-v4-flash": ("quantization_config", "weight_block_size")}


def make_convertible(name: str, folder: str) -> None:
    """Apply ``name``'s CONVERTIBLE_EDITS entry (if any) to ``folder``/config.json."""
    if name not in CONVERTIBLE_EDITS:
        return
    section, key = CONVERTIBLE_EDITS[name]
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config[section].pop(key, None)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def write_bench_moe(src: str, layers: int, experts: int, hidden: int, moe_intermediate: int, shards: int) -> None:
    """The synthetic Qwen3-MoE bf16 checkpoint the MoE benches convert (moe_bf16.py, hub_stream.py)."""
    write_checkpoint(
        src,
        "qwen3_moe",
        layers=layers,
        experts=experts,
        hidden=hidden,
        moe_intermediate=moe_intermediate,
        intermediate=4 * hidden,
        heads=16,
        kv_heads=4,
        head_dim=128,
        vocab=1024,
        shards=shards,
    )
