"""How much of its source does a plan read? Whole-shard downloads vs byte ranges.

For every committed plan (plans/*.msgpack), and for a bf16 trace of every
../shared/corpus case (about 30 s; skipped when absent or with --no-corpus):
source files and bytes, the bytes the plan's load nodes read, files read whole /
partly / not at all, and the byte ranges (contiguous runs of needed tensors in
data order) a byte-range fetcher would request. Coverage is at tensor granularity: a load reads its whole tensor.
Headers are counted on neither side (the trace has already fetched them).

    python bench/source_coverage.py [--plans 'plans/*.msgpack'] [--corpus DIR | --no-corpus] [--gap 1M]
"""

import argparse
import contextlib
import glob
import io
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Tuple

from harness import GIANTS, REPO

from sanitrace import plan as plan_ir
from sanitrace.cli_flags import parse_size
from sanitrace.collapse import human_bytes


@dataclass
class Coverage:
    label: str
    files: int
    source_bytes: int  # every source file, header included
    read_bytes: int  # tensor bytes the plan's loads read
    whole: int  # files whose every tensor byte is read
    partly: int
    unread: int  # files the plan does not read at all
    whole_shard_bytes: int  # tensor bytes of every file it reads from (downloading them whole)
    unread_file_bytes: int  # sizes of the files it does not read at all
    ranges: int  # contiguous runs of needed bytes
    gap_ranges: int  # runs when gaps of at most --gap are fetched too
    gap_bytes: int  # bytes those runs fetch
    unread_names: str  # the commonest names of unread tensors, digits as N


def needed_tensors(plan: plan_ir.Plan) -> set:
    """Indices into plan.source.tensors that a load node of the plan reads."""
    needed = {node.args[0] for node in plan.nodes if node.op == "load"}
    if len(needed) != plan.accounting.used_sources:
        raise ValueError(f"{len(needed)} loaded tensors, accounting says {plan.accounting.used_sources}")
    return needed


def runs(intervals: List[Tuple[int, int]], gap: int = 0) -> List[Tuple[int, int]]:
    """Sorted [begin, end) intervals merged when at most ``gap`` bytes apart."""
    merged: List[Tuple[int, int]] = []
    for begin, end in sorted(intervals):
        if merged and begin - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def unread_summary(names: List[str], top: int = 2) -> str:
    """The ``top`` commonest name templates (numbers as N) of unread tensors, with counts."""
    counts = Counter(re.sub(r"\d+", "N", name) for name in names)
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    more = "" if len(counts) <= top else f" +{len(counts) - top} more"
    return ", ".join(f"{n}x {k}" for k, n in best) + more


def coverage(label: str, plan: plan_ir.Plan, gap: int) -> Coverage:
    """The coverage numbers of one plan."""
    needed = needed_tensors(plan)
    per_file: List[List[Tuple[int, int, bool]]] = [[] for _ in plan.source.files]
    for i, t in enumerate(plan.source.tensors):
        per_file[t.file].append((t.begin, t.end, i in needed))
    read = whole = partly = unread = whole_shard = unread_bytes = nruns = gap_runs = gap_bytes = 0
    for entry, tensors in zip(plan.source.files, per_file):
        want = [(b, e) for b, e, n in tensors if n and e > b]
        skip = [(b, e) for b, e, n in tensors if not n and e > b]
        read += sum(e - b for b, e in want)
        if not want:
            unread += 1
            unread_bytes += entry.size
            continue
        whole_shard += entry.size - 8 - entry.header_length
        if skip:
            partly += 1
        else:
            whole += 1
        nruns += len(runs(want))
        merged = runs(want, gap)
        gap_runs += len(merged)
        gap_bytes += sum(e - b for b, e in merged)
    names = [t.name for i, t in enumerate(plan.source.tensors) if i not in needed]
    return Coverage(
        label,
        len(plan.source.files),
        sum(f.size for f in plan.source.files),
        read,
        whole,
        partly,
        unread,
        whole_shard,
        unread_bytes,
        nruns,
        gap_runs,
        gap_bytes,
        unread_summary(names) if names else "-",
    )


def corpus_plans(corpus: str, limit: Optional[int] = None):
    """(case, plan) for each corpus case whose eager bf16 conversion the manifest
    marks ok, traced in this process with the manifest's library (bf16)."""
    from sanitrace.conformance import corpus_cases
    from sanitrace.planner import build_plan
    from sanitrace.tracer import ConvertOptions, trace

    for case in corpus_cases(corpus)[:limit]:
        if case.get("eager_bf16") != "ok":
            continue
        path = os.path.join(corpus, "cases", case["case"])
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                plan = build_plan(trace(path, ConvertOptions(), case["library"]))
        except Exception as e:  # noqa: BLE001  one case failing to trace is reported, not fatal
            print(f"  {case['case']}: trace failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        yield case, plan


def pct(part: int, whole: int) -> str:
    if not whole:
        return "-"
    value = 100 * part / whole
    if value >= 1 or value == 0:
        return f"{value:.1f}%"
    return f"{value:.2g}%" if value >= 0.001 else "<0.001%"


def table(rows: List[Coverage], gap: int) -> str:
    gap_label = human_bytes(gap)
    lines = [
        f"| plan | files | source | read | % read | whole / partly / none | ranges | ranges (gap <= {gap_label}) "
        f"| whole-shard bytes | extra vs ranges | unread tensors |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for c in rows:
        extra = c.whole_shard_bytes - c.read_bytes
        lines.append(
            f"| {c.label} | {c.files} | {human_bytes(c.source_bytes)} | {human_bytes(c.read_bytes)} | "
            f"{pct(c.read_bytes, c.source_bytes)} | {c.whole} / {c.partly} / {c.unread} | {c.ranges} | "
            f"{c.gap_ranges} ({human_bytes(c.gap_bytes)}) | {human_bytes(c.whole_shard_bytes)} | "
            f"+{human_bytes(extra)} ({pct(extra, c.read_bytes)}) | {c.unread_names} |"
        )
    return "\n".join(lines)


def total(label: str, rows: List[Coverage]) -> Coverage:
    fields = [
        "files",
        "source_bytes",
        "read_bytes",
        "whole",
        "partly",
        "unread",
        "whole_shard_bytes",
        "unread_file_bytes",
        "ranges",
        "gap_ranges",
        "gap_bytes",
    ]
    return Coverage(label, *[sum(getattr(r, f) for r in rows) for f in fields], "-")


def conclusion(rows: List[Coverage], gap: int) -> str:
    """One paragraph from the numbers: what whole-shard downloads cost over byte ranges."""
    t = total("all", rows)
    worst = max(rows, key=lambda c: (c.whole_shard_bytes - c.read_bytes) / max(c.read_bytes, 1))
    exact = sum(1 for c in rows if c.whole_shard_bytes - c.read_bytes < c.read_bytes / 100)
    extra, skipped = t.whole_shard_bytes - t.read_bytes, t.source_bytes - t.read_bytes
    return (
        f"Over {len(rows)} plans ({t.files} source files, {human_bytes(t.source_bytes)}), the plans read "
        f"{human_bytes(t.read_bytes)} ({pct(t.read_bytes, t.source_bytes)} of the source). Of the "
        f"{human_bytes(skipped)} they do not read, {human_bytes(t.unread_file_bytes)} "
        f"({pct(t.unread_file_bytes, skipped)}) is in the {t.unread} files no load touches, which a "
        f"whole-shard fetcher skips too. Downloading every other shard whole fetches "
        f"{human_bytes(t.whole_shard_bytes)} of tensor data: {human_bytes(extra)} ({pct(extra, t.read_bytes)}) "
        f"more than exact byte ranges, in {t.files - t.unread} requests instead of {t.ranges} (or {t.gap_ranges} "
        f"when gaps <= {human_bytes(gap)} are read through). {exact} of {len(rows)} plans lose less than 1% "
        f"to whole shards; the worst is {worst.label} (+{human_bytes(worst.whole_shard_bytes - worst.read_bytes)}, "
        f"{pct(worst.whole_shard_bytes - worst.read_bytes, worst.read_bytes)}; {worst.partly} partly-read and "
        f"{worst.unread} unread files). {t.partly} of {t.files} files are read only in part."
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", default=os.path.join(REPO, "plans", "*.msgpack"), help="glob of plan files")
    parser.add_argument(
        "--corpus",
        default=os.path.join(os.path.dirname(GIANTS), "corpus"),
        help="also trace every case of this corpus (default ../shared/corpus)",
    )
    parser.add_argument("--no-corpus", dest="corpus", action="store_const", const=None)
    parser.add_argument("--corpus-limit", type=int, default=None, help="only the first N corpus cases")
    parser.add_argument(
        "--gap",
        type=parse_size,
        default=1 << 20,
        help="for the gap column: unread bytes a range fetcher may read through (default 1M)",
    )
    args = parser.parse_args()

    rows = []
    start = time.time()
    for path in sorted(glob.glob(args.plans)):
        rows.append(coverage(os.path.basename(path).removesuffix(".msgpack"), plan_ir.load(path), args.gap))
    print(f"## committed plans ({len(rows)}, {time.time() - start:.1f} s)\n")
    print(table(rows + [total("**all plans**", rows)], args.gap))
    print()
    print(conclusion(rows, args.gap))

    if args.corpus:
        if not os.path.exists(os.path.join(args.corpus, "manifest.json")):
            print(f"\n(corpus skipped: no {args.corpus}/manifest.json)")
            return
        start = time.time()
        cases = [coverage(case["case"], plan, args.gap) for case, plan in corpus_plans(args.corpus, args.corpus_limit)]
        print(
            f"\n## corpus ({len(cases)} cases traced bf16, {time.time() - start:.0f} s); "
            f"cases with a file not read whole or not at all:\n"
        )
        shown = [c for c in cases if c.partly or c.unread]
        print(table(shown + [total(f"**all {len(cases)} cases**", cases)], args.gap))
        print()
        print(conclusion(cases, args.gap))


if __name__ == "__main__":
    main()
