"""The steps ``trace``, ``execute`` and ``convert`` (api.py) are made of: open the
source, trace it into a plan, check that the plan's output loads, execute the
plan, verify what was written. Each prints its part of the summary (report.py)."""

import os
import time
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from . import plan as plan_ir
from .collapse import human_bytes
from .hub import RemoteRepo
from .plan import Plan
from .report import print_download, print_lints, print_messages, print_trace, warn, warn_budget
from .tracer import ConvertOptions, TraceError
from .versions import installed_version

if TYPE_CHECKING:
    from .executor import RayOptions
    from .lint import Finding


def resolve_source(
    source: Union[str, RemoteRepo], revision: Optional[str] = None
) -> Tuple[Union[str, RemoteRepo], Optional[str]]:
    """(source, Hub repo id or None). A local path stays as it is. A Hub repo id
    ``org/name[@revision]`` that is not a local path is opened on the Hub,
    pinned to the commit its revision resolves to; in huggingface_hub's offline
    mode (HF_HUB_OFFLINE=1) it is the repo's snapshot folder in the local cache."""
    from huggingface_hub import constants

    from .hub import open_repo, parse_repo_spec, snapshot_folder

    if isinstance(source, RemoteRepo):
        return source, source.repo_id
    source = os.fspath(source)
    spec = None if os.path.lexists(source) else parse_repo_spec(source)
    if spec is None:
        return source, None
    repo_id, at = spec
    if constants.HF_HUB_OFFLINE:
        return snapshot_folder(repo_id, at or revision), repo_id
    return open_repo(repo_id, at or revision), repo_id


def run_trace(
    hf_path: str,
    options: ConvertOptions,
    library: Optional[str],
    memory_budget: Optional[int],
    revision: Optional[str] = None,
    disk_budget: Optional[int] = None,
    allow_unloadable: bool = False,
    allow_lint: Sequence[str] = (),
):
    """The plan, the lines the library printed, and the source (a folder, or the
    opened Hub repo: its headers are read by range into a temporary folder);
    prints those lines, the trace summary with the plan's lint findings, for
    the Hub what streaming will download and hold, and a warning when -q
    quantized nothing. TraceError on an error-level finding whose rule is not
    in ``allow_lint``."""
    import tempfile

    from .hub import fetch_headers
    from .lint import RULES, lint
    from .planner import DEFAULT_MEMORY_BUDGET, build_plan
    from .tracer import trace as trace_conversion

    unknown = sorted(set(allow_lint) - set(RULES))
    if unknown:  # before the trace, which can take minutes
        raise TraceError(f"--allow-lint {unknown[0]}: no such rule; the rules are {', '.join(sorted(RULES))}")
    start = time.time()
    source, hf_repo = resolve_source(hf_path, revision)
    with plan_ir.gc_paused(), tempfile.TemporaryDirectory(prefix="sanitrace-hub-") as tmp:
        if isinstance(source, RemoteRepo):
            folder = os.path.join(tmp, source.repo_id.split("/")[-1])
            fetch_headers(source, folder)
        else:
            folder = source
        result = trace_conversion(folder, options, library, hf_repo)
        plan = build_plan(result, memory_budget or DEFAULT_MEMORY_BUDGET)
        messages = result.messages
        # on the trace's graph: the plan's own nodes would be decoded from its encoding (1 s for GLM-5.1)
        quantized_nothing = options.quantize and not any(node.op == "mx.quantize" for node in result.nodes)
        del result
        findings = lint(plan)  # on the trace's own nodes (build_plan), while the collector is paused
    print_messages(messages)
    print_trace(hf_path, plan, time.time() - start)
    check_loads(plan, allow_unloadable)
    check_lints(findings, allow_lint)
    if isinstance(source, RemoteRepo):
        print_download(plan, source, disk_budget)
    if quantized_nothing:
        warn(
            f"-q quantized no weight (see the library's bits-per-weight line): no layer fits --q-group-size "
            f"{options.q_group_size} / --q-mode {options.q_mode}; the output is unquantized, as with "
            f"{plan.library}.convert"
        )
    return plan, messages, source


def check_loads(plan: Plan, allow_unloadable: bool) -> None:
    """TraceError when the plan says the library's own loader would refuse its
    output (unless ``allow_unloadable``: then a warning); a warning when the
    check could not run or the tokenizer files will not be written."""
    loads = plan.accounting.loads
    if plan.accounting.tokenizer:
        warn(f"no tokenizer files will be written: {plan.accounting.tokenizer}")
    if loads.startswith("unchecked: "):
        warn(f"could not check that the output loads with {plan.library}.load: {loads[len('unchecked: ') :]}")
        return
    print(f"  loads            {'yes' if loads == 'yes' else 'no'} ({plan.library}.load, strict)", flush=True)
    if loads == "yes":
        return
    problem = loads[len("no: ") :]
    if allow_unloadable:
        warn(
            f"the output will not load with {plan.library}.load: {problem}; writing it anyway "
            f"(--allow-unloadable), as {plan.library}.convert does"
        )
        return
    raise TraceError(
        f"the output would not load with {plan.library}.load, and {plan.library}.convert writes it "
        f"the same way: {problem}; pass --allow-unloadable to write it anyway"
    )


def check_lints(findings: List["Finding"], allow_lint: Sequence[str]) -> None:
    """Print a plan's lint ``findings``; TraceError on the first error-level one
    whose rule is not in ``allow_lint``."""
    from .lint import blocking, summary

    print_lints(findings, summary(findings))
    errors = blocking(findings, allow_lint)
    if errors:
        more = f" (and {len(errors) - 1} more, listed above)" if len(errors) > 1 else ""
        raise TraceError(f"lint {errors[0].text()}{more}; pass --allow-lint {errors[0].rule} to write it anyway")


def verify_written(plan: Plan, mlx_path: str, forward: bool) -> None:
    """Check the written output (VerifyFailed names the problem) and print what was checked."""
    from .verify import verify_output

    report = verify_output(plan, mlx_path, forward=forward)
    loaded = f"{plan.library}.load (lazy, strict)" if report.loaded else "not loaded (the plan says it will not load)"
    side = "tokenizer" if plan.library == "mlx_lm" else "processor"
    tokenizer = f" with its {side}" if report.tokenizer == "loaded" else ""
    print(
        f"  verified         {report.tensors} tensor headers in {report.files} files; {loaded}{tokenizer}"
        f"{'; forward ' + report.forward if report.forward else ''} ({report.seconds:.1f}s)",
        flush=True,
    )


def run_execute(
    plan: Plan,
    source: Union[str, RemoteRepo],
    mlx_path: str,
    memory_budget: Optional[int],
    resume: bool,
    digest: Optional[str],
    progress: bool,
    disk_budget: Optional[int] = None,
    library_loaded: bool = False,
    ray: Optional["RayOptions"] = None,
):
    """The executor's summary, the predicted peak and the seconds taken; prints
    the run's first line, and warnings for an unmeetable budget or another mlx."""
    from .executor import execute as execute_plan
    from .planner.memory import plan_baseline, predicted_peak

    start = time.time()
    budget = memory_budget or plan.memory.budget
    baseline = plan_baseline(plan, library_loaded and ray is None, ray_worker=ray is not None)
    predicted, _ = predicted_peak(plan.groups, budget, baseline)
    warn_budget(plan.groups, budget, predicted, baseline)
    installed = installed_version("mlx") or "absent"
    if plan.versions.get("mlx") != installed:
        warn(
            f"the plan was traced with mlx {plan.versions.get('mlx')} and mlx {installed} is installed: "
            "the output can differ from this environment's eager conversion (`sanitrace retrace` shows how)"
        )
    print(
        f"executing plan {plan.digest[:16]}: {len(plan.outputs)} tensors, {human_bytes(plan.output_bytes)} "
        f"to {mlx_path}, predicted peak {human_bytes(predicted)}{' per Ray task' if ray else ''} "
        f"at budget {human_bytes(budget)}",
        flush=True,
    )
    if not isinstance(source, RemoteRepo):
        source = os.fspath(source)
    summary = execute_plan(
        plan,
        source,
        os.fspath(mlx_path),
        memory_budget=memory_budget,
        resume=resume,
        progress=progress,
        digest=digest,
        disk_budget=disk_budget,
        library_loaded=library_loaded,
        ray=ray,
    )
    return summary, predicted, time.time() - start
