"""Command line: sanitrace trace | execute | convert | check | show | lint | diff | retrace."""

import argparse
import gc
import json
import os
import sys
import traceback

from .cli_flags import UsageError, build_parser, options_from_args


def _model(args) -> str:
    """The model folder: positional or --hf-path / --model (not two different ones)."""
    if args.model_arg and args.hf_path and args.model_arg != args.hf_path:
        raise UsageError(f"two models given: {args.model_arg} and --hf-path {args.hf_path}")
    model = args.hf_path or args.model_arg
    if not model:
        raise UsageError("no model given: pass --hf-path MODEL_DIR (or MODEL_DIR)")
    return model


def _mlx_path(args) -> str:
    if args.out_arg and args.mlx_path and args.out_arg != args.mlx_path:
        raise UsageError(f"two output folders given: {args.out_arg} and --mlx-path {args.mlx_path}")
    return args.mlx_path or args.out_arg or "mlx_model"


REPORT = "this is a bug in sanitrace: please report it with the command and the traceback above"


def run() -> None:
    """The ``sanitrace`` command: ``main`` on sys.argv, then exit. Before exiting,
    everything alive is frozen (gc.freeze) so the interpreter's final collection
    skips it: the libraries' modules and a traced graph cost 0.2 s to rescan."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv=None) -> int:
    """Run one command. Bad input and faults print one line and exit 1; Ctrl-C
    exits 130; only a bug in sanitrace shows a traceback."""
    args = build_parser(__doc__).parse_args(argv)
    from .versions import VersionError, check_installed

    try:
        for line in check_installed():
            print(f"sanitrace: warning: {line}", file=sys.stderr)
    except VersionError as e:
        return _fail(args, str(e))
    if getattr(args, "quant_predicate", None) is not None:
        _check_recipe(args)
    from .api import USER_ERRORS

    try:
        return _run(args)
    except USER_ERRORS + (UsageError,) as e:
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


def _check_recipe(args) -> None:
    """--quant-predicate must be a recipe of the library that will convert (their
    lists differ); like the library's own parser, anything else is a usage error
    (exit 2). Left to trace when the model folder cannot be read."""
    from .tracer import LIBRARIES, choose_library

    try:
        recipes = LIBRARIES[args.library or choose_library(_model(args))].recipes()
    except Exception:  # noqa: BLE001  no model, unreadable config, no mlx-vlm: trace reports it in one line
        return
    parser = args.subparser
    action = next(a for a in parser._actions if a.dest == "quant_predicate")
    action.choices = recipes
    try:
        parser._check_value(action, args.quant_predicate)  # argparse's own invalid-choice message
    except argparse.ArgumentError as e:
        parser.error(str(e))


def _fail(args, message: str) -> int:
    print(f"sanitrace {args.command}: error: {message}", file=sys.stderr)
    return 1


def _convert_kwargs(args) -> dict:
    """The api.trace / api.convert keyword arguments the convert flags give."""
    return dict(
        options_from_args(args).as_dict(),
        revision=args.revision,
        library=args.library,
        memory_budget=args.memory_budget,
    )


def _run(args) -> int:
    from . import api

    if args.command == "trace":
        api.trace(
            _model(args),
            plan_out=args.output,
            allow_unloadable=args.allow_unloadable,
            allow_lint=args.allow_lint,
            **_convert_kwargs(args),
        )
    elif args.command == "execute":
        api.execute(
            args.plan,
            args.source,
            args.out,
            memory_budget=args.memory_budget,
            resume=args.resume,
            digest=args.digest,
            progress=not args.no_progress,
            disk_budget=args.disk_budget,
            verify=args.verify,
            verify_forward=args.verify_forward,
            ray=args.ray,
            ray_workers=args.ray_workers,
        )
    elif args.command == "convert":
        api.convert(
            _model(args),
            _mlx_path(args),
            upload_repo=args.upload_repo,
            plan_out=args.plan_out,
            resume=args.resume,
            progress=not args.no_progress,
            disk_budget=args.disk_budget,
            allow_unloadable=args.allow_unloadable,
            allow_lint=args.allow_lint,
            verify=args.verify,
            verify_forward=args.verify_forward,
            ray=args.ray,
            ray_workers=args.ray_workers,
            **_convert_kwargs(args),
        )
    elif args.command == "check":
        return _check(args)
    elif args.command == "show":
        sys.stdout.write(_render(args.plan, args.full, args.format))
        sys.stdout.flush()
    elif args.command == "lint":
        return _lint(args.plans)
    elif args.command == "diff":
        return _diff(args.old, args.new)
    elif args.command == "retrace":
        return _retrace(args.plans, args.write, args.trust_remote_code)
    return 0


def _check(args) -> int:
    from .check import check, eager_flags

    options = options_from_args(args)
    model = _model(args)
    result = check(model, options, args.library, args.keep, args.memory_budget)
    flags = " ".join(eager_flags(options)) or "no flags"
    print(f"check {model} ({result.library}, {flags}): {result.verdict}, {result.tensors} tensors")
    for line in (result.eager_failed, result.sanitrace_failed):
        if line:
            print(f"  {line}")
    for line in result.differences[:10]:
        print(f"  {line}")
    return 0 if result.identical else 1


def _render(path: str, full: bool = False, form: str = "text") -> str:
    from . import plan as plan_ir
    from .show import render, render_json

    plan = plan_ir.load(path)
    if form == "json":
        return json.dumps(render_json(plan), indent=1) + "\n"
    return render(plan, full)


def _lint(paths) -> int:
    """Each plan's findings under a line of counts; 1 when any has an error."""
    from . import plan as plan_ir
    from .lint import bits_per_weight, lint, summary

    errors = 0
    for path in paths:
        plan = plan_ir.load(path)
        findings = lint(plan)
        errors += sum(f.severity == "error" for f in findings)
        print(f"{path}: {summary(findings)}; {bits_per_weight(plan):.3f} bits per weight")
        for f in findings:
            print(f"  {f.text()}")
    return 1 if errors else 0


def _diff(old_path: str, new_path: str) -> int:
    from . import plan as plan_ir
    from .diff import diff

    lines = diff(plan_ir.load(old_path), plan_ir.load(new_path))
    print("\n".join(lines) if lines else "no differences")
    return 1 if lines else 0


def _retrace(paths, write: bool, trust_remote_code: bool) -> int:
    from . import plan as plan_ir
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
