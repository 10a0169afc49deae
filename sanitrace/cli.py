"""Command line: sanitrace trace | execute | convert | check | show | diff | retrace."""

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback

from . import plan as plan_ir
from .executor import GuardFailed, OutputError, OutputExists, SourceMismatch
from .safetensors_format import SafetensorsError

SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 10**3, "KIB": 1 << 10, "M": 1 << 20,
              "MB": 10**6, "MIB": 1 << 20, "G": 1 << 30, "GB": 10**9, "GIB": 1 << 30,
              "T": 1 << 40, "TB": 10**12, "TIB": 1 << 40}


def parse_size(text: str) -> int:
    """'1.5G', '512MiB', '2GB', '1048576' -> bytes (K/M/G are powers of 1024)."""
    number = text.rstrip("BbKkMmGgTtIi ")
    unit = text[len(number):].strip().upper()
    if unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r}")
    try:
        return int(float(number) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read size {text!r}") from None


def _add_convert_flags(parser: argparse.ArgumentParser):
    """The flags of mlx_lm.convert / mlx_vlm.convert, with the same names and
    defaults. A recipe name is checked by the library that is traced (their
    lists differ), so that parsing never imports either library."""
    parser.add_argument("--library", choices=["mlx_lm", "mlx_vlm"], default=None,
                        help="Conversion to follow (default: mlx_vlm for vision/audio models, else mlx_lm).")

    parser.add_argument("-q", "--quantize", action="store_true", help="Generate a quantized model.")
    parser.add_argument("--q-group-size", type=int, default=None, help="Group size for quantization.")
    parser.add_argument("--q-bits", type=int, default=None, help="Bits per weight for quantization.")
    parser.add_argument("--q-mode", default="affine", choices=["affine", "mxfp4", "nvfp4", "mxfp8"],
                        help="The quantization mode.")
    parser.add_argument("--quant-predicate", default=None,
                        help="Mixed-bit quantization recipe, e.g. mixed_3_6 (see the library's convert).")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                        help="Type to save the non-quantized parameters.")
    parser.add_argument("-d", "--dequantize", action="store_true", help="Dequantize a quantized model.")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Allow a custom model file named by config.json.")


def _add_execute_flags(parser: argparse.ArgumentParser):
    parser.add_argument("--memory-budget", type=parse_size, default=None,
                        help="Peak memory to stay under, e.g. 2G (default: the plan's, 1 GiB).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sanitrace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("trace", help="Trace a conversion into a plan file (reads headers only).")
    p.add_argument("model", help="Hugging Face model folder (config.json + safetensors).")
    p.add_argument("-o", "--output", required=True, help="Plan file to write.")
    _add_convert_flags(p)
    p.add_argument("--memory-budget", type=parse_size, default=None,
                   help="Budget the plan's chunking and memory prediction assume (default 1 GiB).")

    p = sub.add_parser("execute", help="Write the converted model described by a plan.")
    p.add_argument("plan", help="Plan file from `sanitrace trace`.")
    p.add_argument("--source", required=True, help="The model folder the plan was traced from.")
    p.add_argument("--out", required=True, help="Output folder (must not exist).")
    p.add_argument("--resume", action="store_true", help="Continue an interrupted run in OUT.partial.")
    p.add_argument("--digest", default=None, metavar="HEX",
                   help="Refuse to run unless the plan's digest (printed by `show`) is HEX.")
    _add_execute_flags(p)

    p = sub.add_parser("convert", help="trace + execute in one go.")
    p.add_argument("model", help="Hugging Face model folder.")
    p.add_argument("out", help="Output folder (must not exist).")
    _add_convert_flags(p)
    p.add_argument("--resume", action="store_true", help="Continue an interrupted run in OUT.partial.")
    _add_execute_flags(p)

    p = sub.add_parser("check", help="Convert with the library's own convert and with sanitrace; compare.")
    p.add_argument("model", help="Hugging Face model folder (small, or a few layers of a big one).")
    _add_convert_flags(p)
    p.add_argument("--memory-budget", type=parse_size, default=None, help="sanitrace's memory budget.")
    p.add_argument("--keep", default=None, help="Keep both outputs in this folder.")

    p = sub.add_parser("show", help="Render a plan as text for review.")
    p.add_argument("plan", help="Plan file.")
    p.add_argument("--full", action="store_true", help="Every tensor, with its file and offset.")
    p.add_argument("--format", choices=["text", "json"], default="text")

    p = sub.add_parser("diff", help="Semantic diff of two plans (exit status 1 when they differ).")
    p.add_argument("old")
    p.add_argument("new")

    p = sub.add_parser("retrace", help="Re-trace plans with the installed libraries, from the plans "
                                       "alone; report what would change (exit status 1 if anything).")
    p.add_argument("plans", nargs="+", help="Plan files (a .txt rendering beside one is checked too).")
    p.add_argument("--write", action="store_true", help="Rewrite stale plans (and their .txt).")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="Allow remote code (never taken from the plan itself).")
    return parser


def options_from_args(args):
    """ConvertOptions from parsed convert flags."""
    from .tracer import ConvertOptions

    names = [f.name for f in dataclasses.fields(ConvertOptions)]
    return ConvertOptions(**{name: getattr(args, name) for name in names})



def _trace(model: str, args) -> dict:
    from .planner import DEFAULT_MEMORY_BUDGET, build_plan
    from .show import human_bytes
    from .tracer import trace

    start = time.time()
    with plan_ir.gc_paused():
        result = trace(model, options_from_args(args), args.library)
        plan = build_plan(result, args.memory_budget or DEFAULT_MEMORY_BUDGET)
        del result
    acc, mem = plan.accounting, plan.memory
    print(f"traced {model} with {plan.library} in {time.time() - start:.1f}s")
    print(f"  source tensors   {acc.source_tensors} in {len(plan.source.files)} files")
    print(f"  outputs          {acc.outputs} tensors in {len(plan.shards)} shards, {human_bytes(plan.output_bytes)}")
    print(f"  dropped sources  {len(acc.dropped)}")
    print(f"  predicted peak   {human_bytes(mem.predicted_peak)} (budget {human_bytes(mem.budget)})")
    return plan


def _execute(plan: plan_ir.Plan, source: str, out: str, args) -> None:
    from .executor import execute
    from .planner.chunking import predicted_peak
    from .show import human_bytes

    start = time.time()
    budget = args.memory_budget or plan.memory.budget
    peak, _ = predicted_peak(plan.groups, budget)
    print(f"executing plan {plan.digest[:16]}: {len(plan.outputs)} tensors, {human_bytes(plan.output_bytes)} "
          f"to {out}, predicted peak {human_bytes(peak)} at budget {human_bytes(budget)}", flush=True)
    summary = execute(
        plan, source, out, memory_budget=args.memory_budget, resume=args.resume,
        progress=not args.no_progress, digest=getattr(args, "digest", None),
    )
    print(
        f"wrote {out}: {summary.outputs} tensors, {human_bytes(summary.bytes_written)} "
        f"in {summary.chunks} chunks, {time.time() - start:.1f}s"
        + (f" ({summary.skipped_groups} groups resumed)" if summary.skipped_groups else "")
    )


REPORT = "this is a bug in sanitrace: please report it with the command and the traceback above"


def main(argv=None) -> int:
    """Run one command. Bad input and faults print one line and exit 1; Ctrl-C
    exits 130; only a bug in sanitrace shows a traceback."""
    args = build_parser().parse_args(argv)
    from .tracer import TraceError

    user_errors = (TraceError, plan_ir.PlanError, SafetensorsError, SourceMismatch, OutputExists, OutputError,
                   GuardFailed)
    try:
        return _run(args)
    except user_errors as e:
        return _fail(args, str(e))
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # the reader of our output went away (`| head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        where = f"{e.filename}: " if e.filename else ""
        return _fail(args, f"{where}{e.strerror or e}")
    except MemoryError:
        return _fail(args, "out of memory; try a smaller --memory-budget")
    except KeyboardInterrupt:
        resumable = args.command in ("execute", "convert")
        hint = "; run the same command with --resume to continue" if resumable else ""
        print(f"\nsanitrace {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"sanitrace {args.command}: {REPORT}", file=sys.stderr)
        return 2


def _fail(args, message: str) -> int:
    print(f"sanitrace {args.command}: error: {message}", file=sys.stderr)
    return 1


def _run(args) -> int:
    if args.command == "trace":
        plan = _trace(args.model, args)
        data = plan_ir.save(plan, args.output)
        print(f"  plan             {args.output} ({len(data)} bytes)")
        print(f"  digest           {plan.digest}")
    elif args.command == "execute":
        _execute(plan_ir.load(args.plan), args.source, args.out, args)
    elif args.command == "convert":
        if os.path.lexists(args.out):
            raise OutputExists(f"{args.out} already exists; delete it or choose another output folder")
        _execute(_trace(args.model, args), args.model, args.out, args)
    elif args.command == "check":
        return _check(args)
    elif args.command == "show":
        sys.stdout.write(_render(args.plan, args.full, args.format))
        sys.stdout.flush()
    elif args.command == "diff":
        return _diff(args.old, args.new)
    elif args.command == "retrace":
        return _retrace(args.plans, args.write, args.trust_remote_code)
    return 0


def _check(args) -> int:
    from .check import check, eager_flags

    options = options_from_args(args)
    result = check(args.model, options, args.library, args.keep, args.memory_budget)
    flags = " ".join(eager_flags(options)) or "no flags"
    print(f"check {args.model} ({result.library}, {flags}): {result.verdict}, {result.tensors} tensors")
    for line in (result.eager_failed, result.sanitrace_failed):
        if line:
            print(f"  {line}")
    for line in result.differences[:10]:
        print(f"  {line}")
    return 0 if result.identical else 1


def _render(path: str, full: bool = False, form: str = "text") -> str:
    from .show import render, render_json

    plan = plan_ir.load(path)
    if form == "json":
        return json.dumps(render_json(plan), indent=1) + "\n"
    return render(plan, full)


def _diff(old_path: str, new_path: str) -> int:
    from .diff import diff

    lines = diff(plan_ir.load(old_path), plan_ir.load(new_path))
    print("\n".join(lines) if lines else "no differences")
    return 1 if lines else 0


def _retrace(paths, write: bool, trust_remote_code: bool) -> int:
    from .diff import diff
    from .retrace import retrace
    from .show import render

    stale = 0
    for path in paths:
        old = plan_ir.load(path)
        fresh = retrace(old, trust_remote_code)
        text_path = os.path.splitext(path)[0] + ".txt"
        text = render(fresh)
        problems = diff(old, fresh)
        if not problems and fresh.digest != old.digest:
            problems = ["plan bytes differ with no semantic difference (format change?)"]
        if os.path.exists(text_path):
            with open(text_path) as f:
                if f.read() != text:
                    problems.append(f"{text_path} does not match the plan's rendering")
        if not problems:
            print(f"{path}: fresh")
            continue
        stale += 1
        print(f"{path}: stale")
        print("\n".join("  " + line for line in problems))
        if write:
            plan_ir.save(fresh, path)
            if os.path.exists(text_path):
                with open(text_path, "w") as f:
                    f.write(text)
            print("  rewritten")
    return 1 if stale and not write else 0
