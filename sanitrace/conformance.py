"""Conformance runner: every corpus case the libraries' own conversion accepts,
converted by sanitrace in bf16 and with -q, compared folder for folder (the
same files, byte-equal but for the shards' layout, tensors equal) and loaded
with the library's own loader.

    python -m sanitrace.conformance ../shared/corpus [--out docs/coverage.md] [--only REGEX]

Writes a Markdown table (one row per case: library, model_type, variant, bf16,
q4, trace CPU seconds, reason when not identical) and the totals.
"""

import argparse
import json
import os
import re
import sys
from typing import List, Optional

from .check import check
from .tracer import ConvertOptions

MODES = {"bf16": ConvertOptions(), "q4": ConvertOptions(quantize=True)}


def corpus_cases(corpus: str, only: Optional[str] = None) -> List[dict]:
    with open(os.path.join(corpus, "manifest.json")) as f:
        cases = json.load(f)
    pattern = re.compile(only) if only else None
    return [c for c in cases if c.get("kept", True) and (pattern is None or pattern.search(c["case"]))]


def run_case(corpus: str, case: dict, memory_budget: int = 1) -> dict:
    """Check one case in every mode the manifest says eager accepts."""
    row = {k: case[k] for k in ("case", "library", "model_type", "variant")}
    row["reasons"], row["trace_cpu"] = [], 0.0
    for mode, options in MODES.items():
        if case.get(f"eager_{mode}") != "ok":
            row[mode] = "eager refuses"
            continue
        result = check(
            os.path.join(corpus, "cases", case["case"]), options, case["library"], memory_budget=memory_budget
        )
        row[mode] = result.verdict if result.loads in ("yes", "") else f"{result.verdict}, load check {result.loads}"
        row["trace_cpu"] = max(row["trace_cpu"], result.trace_cpu_seconds)
        detail = result.sanitrace_failed or result.eager_failed or "; ".join(result.differences[:2])
        if detail:
            row["reasons"].append(f"{mode}: {detail}")
    return row


def markdown(rows: List[dict]) -> str:
    ok = sum(1 for r in rows for m in MODES if r[m] == "identical")
    total = sum(1 for r in rows for m in MODES if r[m] != "eager refuses")
    cases_ok = sum(1 for r in rows if all(r[m] in ("identical", "eager refuses") for m in MODES))
    lines = [
        "# Conformance on ../shared/corpus",
        "",
        "Every case whose eager conversion (`python -m mlx_lm convert` or `python -m mlx_vlm "
        "convert`, as the manifest says) is marked ok, converted by `sanitrace` with the same "
        "library and the smallest chunks (`--memory-budget 1`), compared folder for folder "
        "(the same files; every file byte-equal except the shards, whose tensors' names, dtypes, "
        "shapes, bytes and metadata are equal) and loaded with the library's own loader (lazy, "
        "strict, tokenizer or processor included). "
        "Regenerate with `python -m sanitrace.conformance ../shared/corpus --out docs/coverage.md`.",
        "",
        f"**{ok} of {total} conversions identical; {cases_ok} of {len(rows)} cases identical "
        f"in every mode.** Largest trace CPU time: {max((r['trace_cpu'] for r in rows), default=0):.2f} s.",
        "",
    ]
    for library in sorted({r["library"] for r in rows}):
        part = [r for r in rows if r["library"] == library]
        n = sum(1 for r in part for m in MODES if r[m] == "identical")
        t = sum(1 for r in part for m in MODES if r[m] != "eager refuses")
        lines.append(f"- {library}: {n} of {t} identical ({len(part)} cases)")
    lines += [
        "",
        "| case | library | model_type | variant | bf16 | q4 | trace CPU s | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reason = " / ".join(r["reasons"]).replace("|", "\\|")
        lines.append(
            f"| {r['case']} | {r['library']} | {r['model_type']} | {r['variant']} | {r['bf16']} "
            f"| {r['q4']} | {r['trace_cpu']:.2f} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sanitrace.conformance", description=__doc__)
    parser.add_argument("corpus")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    parser.add_argument("--only", default=None, help="regex on case names")
    args = parser.parse_args(argv)
    rows = []
    for case in corpus_cases(args.corpus, args.only):
        rows.append(run_case(args.corpus, case))
        r = rows[-1]
        print(
            f"{r['case']}: bf16 {r['bf16']}, q4 {r['q4']}, trace {r['trace_cpu']:.2f}s " + " / ".join(r["reasons"]),
            flush=True,
        )
    report = markdown(rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report.split("\n\n")[2])
    return 0 if all(r[m] in ("identical", "eager refuses") for r in rows for m in MODES) else 1


if __name__ == "__main__":
    sys.exit(main())
