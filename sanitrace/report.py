"""What sanitrace prints: the trace and run summaries on stdout, warnings on
stderr, and the process's peak memory they report."""

import resource
import sys
from typing import List, Optional

from .collapse import human_bytes
from .executor import ExecuteSummary
from .executor.ray_run import node_lines
from .hub import RemoteRepo
from .plan import Plan


def peak_rss() -> int:
    """This process's peak resident memory in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def warn(message: str) -> None:
    """Print ``sanitrace: warning: message`` on stderr."""
    print(f"sanitrace: warning: {message}", file=sys.stderr, flush=True)


def warn_budget(groups, budget: int, predicted: int, baseline: int) -> None:
    """Warn when ``predicted`` (the peak at ``budget`` with ``baseline``
    resident) exceeds ``budget``."""
    from .planner.memory import smallest_budget

    if predicted > budget:
        warn(
            f"the memory budget {human_bytes(budget)} cannot be met (predicted peak {human_bytes(predicted)}); "
            f"the smallest budget this plan can meet is {human_bytes(smallest_budget(groups, baseline))}"
        )


def print_messages(messages: List[str]) -> None:
    """Relay the library's own lines (``[INFO] ...``) from the trace."""
    for line in messages:
        print(line)


def print_trace(hf_path: str, plan: Plan, seconds: float) -> None:
    """The trace summary: library, sources, outputs and predicted peak."""
    acc, mem = plan.accounting, plan.memory
    version = plan.versions.get(plan.library.replace("_", "-"), "?")
    print(f"traced {hf_path} with {plan.library} {version} in {seconds:.1f}s")
    print(f"  source tensors   {acc.source_tensors} in {len(plan.source.files)} files")
    print(f"  outputs          {acc.outputs} tensors in {len(plan.shards)} shards, {human_bytes(plan.output_bytes)}")
    print(f"  dropped sources  {len(acc.dropped)}")
    print(f"  predicted peak   {human_bytes(mem.predicted_peak)} (budget {human_bytes(mem.budget)})", flush=True)


def print_lints(findings, counts: str) -> None:
    """The trace summary's lint lines: the counts, then each finding (docs/lints.md)."""
    print(f"  lints            {counts}")
    for f in findings:
        print(f"    {f.text()}")
    sys.stdout.flush()


def print_download(plan: Plan, repo: RemoteRepo, disk_budget: Optional[int]) -> None:
    """Before any weight byte moves: what streaming from ``repo`` downloads and the disk it needs."""
    from .executor.hub_source import disk_needs

    needs = disk_needs(plan, repo, disk_budget)
    source = sum(repo.files[f.name].size for f in plan.source.files)
    download = sum(needs.sizes.values())
    cached = f", {len(needs.cached)} files read from the local cache" if needs.cached else ""
    print(
        f"  download         {human_bytes(download)} of {human_bytes(source)} source in "
        f"{len(needs.sizes)} files{cached}"
    )
    print(
        f"  disk needed      {human_bytes(plan.output_bytes + min(needs.budget, download))}: the output and "
        f"{human_bytes(min(needs.budget, download))} of source at once (--disk-budget)",
        flush=True,
    )


def print_result(mlx_path: str, summary: ExecuteSummary, predicted: int, seconds: float, plan: Plan) -> None:
    """The run summary: what was written, downloaded and read, peak memory, wall time, digest."""
    resumed = f" ({summary.skipped_groups} groups resumed)" if summary.skipped_groups else ""
    print(
        f"wrote {mlx_path}: {summary.outputs} tensors, {human_bytes(plan.output_bytes)} in "
        f"{len(plan.shards)} shards{resumed}"
    )
    if summary.source_bytes:
        print(
            f"  downloaded       {human_bytes(summary.downloaded)} of {human_bytes(summary.source_bytes)} "
            f"source ({summary.downloaded / summary.source_bytes:.3f}x), peak local source "
            f"{human_bytes(summary.peak_source_disk)}"
        )
    if summary.source_tensor_bytes:
        print(
            f"  source reads     {human_bytes(summary.source_bytes_read)} "
            f"({summary.source_bytes_read / summary.source_tensor_bytes:.3f}x the "
            f"{human_bytes(summary.source_tensor_bytes)} of source tensors the plan reads)"
        )
    if summary.ray is None:
        print(
            f"  peak memory      predicted {human_bytes(predicted)}, measured {human_bytes(peak_rss())} (process RSS)"
        )
    else:
        worst = max((n.peak_rss for n in summary.ray.nodes), default=0)
        print(
            f"  peak memory      predicted {human_bytes(predicted)} per Ray worker, measured {human_bytes(worst)} "
            f"(largest worker RSS); driver {human_bytes(peak_rss())}"
        )
        for label, text in node_lines(summary.ray):
            print(f"  {label:<16} {text}")
    print(f"  wall time        {seconds:.1f}s ({summary.chunks} chunks)")
    print(f"  plan digest      {plan.digest}", flush=True)
