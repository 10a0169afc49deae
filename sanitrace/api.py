"""The Python API: ``convert`` mirrors ``mlx_lm.convert.convert``; ``trace``,
``execute`` and ``load_plan`` are its two halves and the plan file.

Each function prints what ``mlx_lm.convert`` prints (the library's ``[INFO]``
lines, relayed from the trace) plus sanitrace's own summary on stdout, and
warnings on stderr. Bad input raises one of ``USER_ERRORS``, whose message is
one line naming the file or tensor.
"""

import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from . import plan as plan_ir
from .executor import DiskBudgetError, ExecuteSummary, GuardFailed, OutputError, OutputExists, SourceMismatch
from .hub import HubError, RemoteRepo
from .plan import Plan, PlanError
from .safetensors_format import SafetensorsError
from .show import human_bytes
from .tracer import ConvertOptions, TraceError
from .verify import VerifyFailed
from .versions import VersionError, installed_version


class UploadError(Exception):
    """The conversion finished, but uploading it to the Hub failed."""


USER_ERRORS = (TraceError, PlanError, SafetensorsError, SourceMismatch, OutputExists, OutputError, GuardFailed,
               UploadError, VersionError, HubError, DiskBudgetError, VerifyFailed)


@dataclass
class ConvertSummary:
    """What ``convert`` did: the plan it executed and the measured run."""

    plan: Plan
    mlx_path: str
    execute: ExecuteSummary
    predicted_peak: int  # bytes, the planner's prediction at the budget used
    measured_peak: int  # bytes, this process's peak RSS (trace included)
    seconds: float
    messages: List[str]  # the library's own lines, e.g. "[INFO] Quantized model with 4.501 bits per weight."


def load_plan(path: str) -> Plan:
    """Load and check a plan file.

    Args:
        path: a plan written by ``trace`` (``sanitrace trace -o``).

    Returns:
        The Plan, every field type-checked and every derivable fact derived and
        checked (docs/threat-model.md). Raises PlanError naming what is wrong.
    """
    return plan_ir.load(path)


def trace(
    hf_path: str,
    quantize: bool = False,
    q_group_size: Optional[int] = None,
    q_bits: Optional[int] = None,
    q_mode: str = "affine",
    dtype: Optional[str] = None,
    revision: Optional[str] = None,
    dequantize: bool = False,
    quant_predicate: Optional[Union[str, Callable]] = None,
    trust_remote_code: bool = False,
    *,
    library: Optional[str] = None,
    memory_budget: Optional[int] = None,
    plan_out: Optional[str] = None,
    allow_unloadable: bool = False,
) -> Plan:
    """Trace the library's conversion of ``hf_path`` into a plan, reading headers only.

    Args:
        hf_path: a local Hugging Face model folder (config.json + safetensors),
            or a Hub repo id ``org/name[@revision]``: its small files and
            safetensors headers are read by HTTP range, never its weights.
        quantize, q_group_size, q_bits, q_mode, dtype, dequantize,
        quant_predicate, trust_remote_code: as ``mlx_lm.convert.convert``.
            A callable ``quant_predicate`` is recorded by name; ``retrace``
            cannot reproduce such a plan.
        revision: the Hub revision (branch, tag or commit); a local folder
            ignores it, as the library does.
        library: "mlx_lm" or "mlx_vlm"; chosen from config.json when None.
        memory_budget: bytes the plan's chunking assumes (default 1 GiB).
        plan_out: when given, the plan is also saved there (atomically).
        allow_unloadable: trace an output the library's own loader would
            refuse (load_check.py) instead of failing; it is what the
            library's convert writes.

    Returns:
        The Plan.
    """
    options = ConvertOptions(quantize, q_group_size, q_bits, q_mode, quant_predicate, dtype, dequantize,
                             trust_remote_code)
    plan, _, _ = _trace(hf_path, options, library, memory_budget, revision, allow_unloadable=allow_unloadable)
    _warn_budget(plan.groups, plan.memory.budget, plan.memory.predicted_peak)
    if plan_out is not None:
        data = plan_ir.save(plan, plan_out)
        print(f"  plan             {plan_out} ({len(data)} bytes)")
    print(f"  digest           {plan.digest}")
    return plan


def execute(
    plan: Union[Plan, str],
    source: str,
    mlx_path: str,
    *,
    memory_budget: Optional[int] = None,
    resume: bool = False,
    digest: Optional[str] = None,
    progress: bool = True,
    disk_budget: Optional[int] = None,
    verify: bool = False,
    verify_forward: bool = False,
) -> ExecuteSummary:
    """Write the MLX model a plan describes.

    Args:
        plan: a Plan, or the path of a plan file.
        source: the model folder the plan was traced from, or its Hub repo
            ``org/name[@revision]``, streamed shard by shard (checked first).
        mlx_path: the output folder; must not exist (work goes to
            ``mlx_path.partial``, renamed at the end).
        memory_budget: bytes to stay under (default: the plan's).
        resume: continue an interrupted run in ``mlx_path.partial``.
        digest: when given, refuse any plan whose digest is not this.
        progress: progress bars on stderr.
        disk_budget: for a Hub source, the downloaded bytes to hold at once
            (default: its two largest files, or what one output group needs).
        verify: after writing, check the output against the plan and open it
            with the library's loader (see ``sanitrace.verify``); VerifyFailed
            when it does not hold.
        verify_forward: verify, and run one token through the loaded model.

    Returns:
        An ExecuteSummary (tensors, bytes and chunks written, groups resumed).
    """
    if isinstance(plan, str):
        plan = load_plan(plan)
    summary, predicted, seconds = _execute(plan, resolve_source(source)[0], mlx_path, memory_budget, resume, digest,
                                           progress, disk_budget)
    _print_result(mlx_path, summary, predicted, seconds, plan)
    if verify or verify_forward:
        _verify(plan, mlx_path, verify_forward)
    return summary


def convert(
    hf_path: str,
    mlx_path: str = "mlx_model",
    quantize: bool = False,
    q_group_size: Optional[int] = None,
    q_bits: Optional[int] = None,
    q_mode: str = "affine",
    dtype: Optional[str] = None,
    upload_repo: Optional[str] = None,
    revision: Optional[str] = None,
    dequantize: bool = False,
    quant_predicate: Optional[Union[str, Callable]] = None,
    trust_remote_code: bool = False,
    *,
    library: Optional[str] = None,
    memory_budget: Optional[int] = None,
    plan_out: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    disk_budget: Optional[int] = None,
    allow_unloadable: bool = False,
    verify: bool = True,
    verify_forward: bool = False,
) -> ConvertSummary:
    """Convert like ``mlx_lm.convert.convert`` (same arguments, same output
    tensors, config and index), in bounded memory: trace, then execute.

    Args:
        hf_path, mlx_path, quantize, q_group_size, q_bits, q_mode, dtype,
        revision, dequantize, quant_predicate, trust_remote_code: as
            ``mlx_lm.convert.convert`` (see ``trace``).
        upload_repo: when given, the finished folder is uploaded with the
            library's own ``upload_to_hub`` (which also rewrites its README.md).
        library: "mlx_lm" or "mlx_vlm"; chosen from config.json when None.
        memory_budget: bytes to stay under (default 1 GiB).
        plan_out: keep the executed plan in this file.
        resume: continue an interrupted conversion in ``mlx_path.partial``.
        progress: progress bars on stderr.
        disk_budget: for a Hub repo, the downloaded bytes to hold at once.
        allow_unloadable: convert even when the library's own loader would
            refuse the output (as its convert does); see ``trace``.
        verify, verify_forward: as ``execute``; verify is on by default.

    Returns:
        A ConvertSummary.
    """
    start = time.time()
    mlx_path = os.fspath(mlx_path)
    if os.path.lexists(mlx_path):
        raise OutputExists(f"{mlx_path} already exists; delete it or choose another output folder")
    options = ConvertOptions(quantize, q_group_size, q_bits, q_mode, quant_predicate, dtype, dequantize,
                             trust_remote_code)
    plan, messages, source = _trace(hf_path, options, library, memory_budget, revision, disk_budget,
                                    allow_unloadable)
    if plan_out is not None:
        plan_ir.save(plan, plan_out)
        print(f"  plan             {plan_out}")
    summary, predicted, _ = _execute(plan, source, mlx_path, memory_budget, resume, None, progress, disk_budget)
    seconds = time.time() - start
    _print_result(mlx_path, summary, predicted, seconds, plan)
    if verify or verify_forward:
        _verify(plan, mlx_path, verify_forward)
    if upload_repo is not None:
        _upload(plan.library, mlx_path, upload_repo)
    return ConvertSummary(plan, mlx_path, summary, predicted, peak_rss(), seconds, messages)


def peak_rss() -> int:
    """This process's peak resident memory in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def warn(message: str) -> None:
    print(f"sanitrace: warning: {message}", file=sys.stderr, flush=True)


def resolve_source(source: Union[str, RemoteRepo], revision: Optional[str] = None
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


def _trace(hf_path: str, options: ConvertOptions, library: Optional[str], memory_budget: Optional[int],
           revision: Optional[str] = None, disk_budget: Optional[int] = None, allow_unloadable: bool = False):
    """The plan, the lines the library printed, and the source (a folder, or the
    opened Hub repo: its headers are read by range into a temporary folder);
    prints those lines, the trace summary, for the Hub what streaming will
    download and hold, and a warning when -q quantized nothing."""
    import tempfile

    from .hub import fetch_headers
    from .planner import DEFAULT_MEMORY_BUDGET, build_plan
    from .tracer import trace as trace_conversion

    start = time.time()
    source, hf_repo = resolve_source(hf_path, revision)
    with plan_ir.gc_paused(), tempfile.TemporaryDirectory(prefix="sanitrace-hub-") as tmp:
        folder = source
        if isinstance(source, RemoteRepo):
            folder = os.path.join(tmp, source.repo_id.split("/")[-1])
            fetch_headers(source, folder)
        result = trace_conversion(folder, options, library, hf_repo)
        plan = build_plan(result, memory_budget or DEFAULT_MEMORY_BUDGET)
        messages = result.messages
        del result
    _print_messages(messages)
    _print_trace(hf_path, plan, time.time() - start)
    _check_loads(plan, allow_unloadable)
    if isinstance(source, RemoteRepo):
        _print_download(plan, source, disk_budget)
    if options.quantize and not any(node.op == "mx.quantize" for node in plan.nodes):
        warn(f"-q quantized no weight (see the library's bits-per-weight line): no layer fits --q-group-size "
             f"{options.q_group_size} / --q-mode {options.q_mode}; the output is unquantized, as with "
             f"{plan.library}.convert")
    return plan, messages, source


def _check_loads(plan: Plan, allow_unloadable: bool) -> None:
    """TraceError when the plan says the library's own loader would refuse its
    output (unless ``allow_unloadable``: then a warning); a warning when the
    check could not run or the tokenizer files will not be written."""
    loads = plan.accounting.loads
    if plan.accounting.tokenizer:
        warn(f"no tokenizer files will be written: {plan.accounting.tokenizer}")
    if loads.startswith("unchecked: "):
        warn(f"could not check that the output loads with {plan.library}.load: {loads[len('unchecked: '):]}")
        return
    print(f"  loads            {'yes' if loads == 'yes' else 'no'} ({plan.library}.load, strict)", flush=True)
    if loads == "yes":
        return
    problem = loads[len("no: "):]
    if allow_unloadable:
        warn(f"the output will not load with {plan.library}.load: {problem}; writing it anyway "
             f"(--allow-unloadable), as {plan.library}.convert does")
        return
    raise TraceError(f"the output would not load with {plan.library}.load, and {plan.library}.convert writes it "
                     f"the same way: {problem}; pass --allow-unloadable to write it anyway")


def _verify(plan: Plan, mlx_path: str, forward: bool) -> None:
    """Check the written output (VerifyFailed names the problem) and print what was checked."""
    from .verify import verify_output

    report = verify_output(plan, mlx_path, forward=forward)
    loaded = f"{plan.library}.load (lazy, strict)" if report.loaded else "not loaded (the plan says it will not load)"
    side = "tokenizer" if plan.library == "mlx_lm" else "processor"
    tokenizer = f" with its {side}" if report.tokenizer == "loaded" else ""
    print(f"  verified         {report.tensors} tensor headers in {report.files} files; {loaded}{tokenizer}"
          f"{'; forward ' + report.forward if report.forward else ''} ({report.seconds:.1f}s)", flush=True)


def _execute(plan: Plan, source: Union[str, RemoteRepo], mlx_path: str, memory_budget: Optional[int], resume: bool,
             digest: Optional[str], progress: bool, disk_budget: Optional[int] = None):
    from .executor import execute as execute_plan
    from .planner.chunking import predicted_peak

    start = time.time()
    budget = memory_budget or plan.memory.budget
    predicted, _ = predicted_peak(plan.groups, budget)
    _warn_budget(plan.groups, budget, predicted)
    installed = installed_version("mlx") or "absent"
    if plan.versions.get("mlx") != installed:
        warn(f"the plan was traced with mlx {plan.versions.get('mlx')} and mlx {installed} is installed: "
             "the output can differ from this environment's eager conversion (`sanitrace retrace` shows how)")
    print(f"executing plan {plan.digest[:16]}: {len(plan.outputs)} tensors, {human_bytes(plan.output_bytes)} "
          f"to {mlx_path}, predicted peak {human_bytes(predicted)} at budget {human_bytes(budget)}", flush=True)
    if not isinstance(source, RemoteRepo):
        source = os.fspath(source)
    summary = execute_plan(plan, source, os.fspath(mlx_path), memory_budget=memory_budget, resume=resume,
                           progress=progress, digest=digest, disk_budget=disk_budget)
    return summary, predicted, time.time() - start


def _warn_budget(groups, budget: int, predicted: int) -> None:
    """Warn when ``predicted`` (the peak at ``budget``) exceeds ``budget``."""
    from .planner.chunking import smallest_budget

    if predicted > budget:
        warn(f"the memory budget {human_bytes(budget)} cannot be met (predicted peak {human_bytes(predicted)}); "
             f"the smallest budget this plan can meet is {human_bytes(smallest_budget(groups))}")


def _print_messages(messages: List[str]) -> None:
    for line in messages:
        print(line)


def _print_trace(hf_path: str, plan: Plan, seconds: float) -> None:
    acc, mem = plan.accounting, plan.memory
    version = plan.versions.get(plan.library.replace("_", "-"), "?")
    print(f"traced {hf_path} with {plan.library} {version} in {seconds:.1f}s")
    print(f"  source tensors   {acc.source_tensors} in {len(plan.source.files)} files")
    print(f"  outputs          {acc.outputs} tensors in {len(plan.shards)} shards, {human_bytes(plan.output_bytes)}")
    print(f"  dropped sources  {len(acc.dropped)}")
    print(f"  predicted peak   {human_bytes(mem.predicted_peak)} (budget {human_bytes(mem.budget)})", flush=True)


def _print_download(plan: Plan, repo: RemoteRepo, disk_budget: Optional[int]) -> None:
    """Before any weight byte moves: what streaming from ``repo`` downloads and the disk it needs."""
    from .executor.hub_source import disk_needs

    needs = disk_needs(plan, repo, disk_budget)
    source = sum(repo.files[f.name].size for f in plan.source.files)
    download = sum(needs.sizes.values())
    cached = f", {len(needs.cached)} files read from the local cache" if needs.cached else ""
    print(f"  download         {human_bytes(download)} of {human_bytes(source)} source in "
          f"{len(needs.sizes)} files{cached}")
    print(f"  disk needed      {human_bytes(plan.output_bytes + min(needs.budget, download))}: the output and "
          f"{human_bytes(min(needs.budget, download))} of source at once (--disk-budget)", flush=True)


def _print_result(mlx_path: str, summary: ExecuteSummary, predicted: int, seconds: float, plan: Plan) -> None:
    resumed = f" ({summary.skipped_groups} groups resumed)" if summary.skipped_groups else ""
    print(f"wrote {mlx_path}: {summary.outputs} tensors, {human_bytes(plan.output_bytes)} in "
          f"{len(plan.shards)} shards{resumed}")
    if summary.source_bytes:
        print(f"  downloaded       {human_bytes(summary.downloaded)} of {human_bytes(summary.source_bytes)} "
              f"source ({summary.downloaded / summary.source_bytes:.3f}x), peak local source "
              f"{human_bytes(summary.peak_source_disk)}")
    print(f"  peak memory      predicted {human_bytes(predicted)}, measured {human_bytes(peak_rss())} "
          "(process RSS)")
    print(f"  wall time        {seconds:.1f}s ({summary.chunks} chunks)")
    print(f"  plan digest      {plan.digest}", flush=True)


def _upload(library: str, mlx_path: str, upload_repo: str) -> None:
    """The library's own upload_to_hub, on the finished folder."""
    import importlib

    try:
        importlib.import_module(f"{library}.utils").upload_to_hub(mlx_path, upload_repo)
    except Exception as e:  # noqa: BLE001  the network, the Hub, credentials: one line
        what = (str(e).strip().splitlines() or [""])[0][:300]
        raise UploadError(
            f"{mlx_path} is converted, but uploading it to {upload_repo} failed: {type(e).__name__}: {what}; "
            f"retry with `hf upload {upload_repo} {mlx_path}`"
        ) from None
