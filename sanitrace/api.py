"""The Python API: ``convert`` mirrors ``mlx_lm.convert.convert``; ``trace``,
``execute`` and ``load_plan`` are its two halves and the plan file.

Each function prints what ``mlx_lm.convert`` prints (the library's ``[INFO]``
lines, relayed from the trace) plus sanitrace's own summary on stdout, and
warnings on stderr. Bad input raises one of ``USER_ERRORS``, whose message is
one line naming the file or tensor.
"""

import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

from . import plan as plan_ir
from .executor import (
    DiskBudgetError,
    ExecuteSummary,
    GuardFailed,
    OutputError,
    OutputExists,
    RayError,
    RayOptions,
    SourceMismatch,
)
from .hub import HubError
from .plan import Plan, PlanError
from .report import peak_rss, print_result, warn_budget
from .safetensors_format import SafetensorsError
from .steps import resolve_source, run_execute, run_trace, verify_written
from .tracer import ConvertOptions, TraceError
from .verify import VerifyFailed
from .versions import VersionError


class UploadError(Exception):
    """The conversion finished, but uploading it to the Hub failed."""


USER_ERRORS = (
    TraceError,  # and its subclass UpstreamError (tracer/upstream.py)
    PlanError,
    SafetensorsError,
    SourceMismatch,
    OutputExists,
    OutputError,
    GuardFailed,
    UploadError,
    VersionError,
    HubError,
    DiskBudgetError,
    VerifyFailed,
    RayError,
)


@dataclass
class ConvertSummary:
    """What ``convert`` did: the plan it executed and the measured run.

    Attributes:
        plan: the Plan that was traced and executed.
        mlx_path: the output folder written.
        execute: the executor's ExecuteSummary (tensors, bytes, chunks, groups resumed).
        predicted_peak: the planner's predicted peak memory in bytes at the budget used.
        measured_peak: this process's peak RSS in bytes, trace included.
        seconds: wall time of the whole conversion.
        messages: the library's own lines, e.g. "[INFO] Quantized model with 4.501 bits per weight."
    """

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
        checked (docs/threat-model.md).

    Raises:
        PlanError: the file is unreadable or not a valid plan; one line naming
            what is wrong.
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
    allow_lint: Sequence[str] = (),
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
        allow_lint: lint rule ids (docs/lints.md) whose error-level findings
            do not fail the trace; they are still printed.

    Returns:
        The Plan.

    Raises:
        TraceError: the conversion cannot be traced, its output would not
            load with the library (unless ``allow_unloadable``), or a lint
            rule not in ``allow_lint`` finds an error (sanitrace.lint). Its subclass
            UpstreamError: the library's own conversion code raised (eager
            conversion fails the same way); it names the library's file:line.
        HubError, SafetensorsError: the Hub repo or a safetensors header is
            unusable. Each of ``USER_ERRORS`` has a one-line message.
    """
    options = ConvertOptions(
        quantize, q_group_size, q_bits, q_mode, quant_predicate, dtype, dequantize, trust_remote_code
    )
    plan, _, _ = run_trace(
        hf_path, options, library, memory_budget, revision, allow_unloadable=allow_unloadable, allow_lint=allow_lint
    )
    warn_budget(plan.groups, plan.memory.budget, plan.memory.predicted_peak, plan.memory.baseline)
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
    ray: Optional[str] = None,
    ray_workers: Optional[int] = None,
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
        ray: run the output groups as Ray tasks (``pip install 'sanitrace[ray]'``):
            "local" starts a local Ray instance, "HOST:PORT" joins that cluster
            (``ray.init``'s address); ``source`` and ``mlx_path`` must then be
            paths every node sees. Output, journal and ``resume`` are as without.
        ray_workers: a local Ray instance's worker processes (default: the cores).

    Returns:
        An ExecuteSummary (tensors, bytes and chunks written, groups resumed).

    Raises:
        PlanError: ``plan`` is not a valid plan file, or not the ``digest`` given.
        SourceMismatch: ``source`` is not the source the plan was traced from.
        OutputExists: ``mlx_path`` exists, or ``mlx_path.partial`` holds an
            interrupted run (and ``resume`` is not set) or another plan's.
        VerifyFailed: with ``verify``, the written output does not check out.
        Each of ``USER_ERRORS`` has a one-line message.
    """
    if isinstance(plan, str):
        plan = load_plan(plan)
    summary, predicted, seconds = run_execute(
        plan,
        resolve_source(source)[0],
        mlx_path,
        memory_budget,
        resume,
        digest,
        progress,
        disk_budget,
        ray=ray_options(ray, ray_workers),
    )
    print_result(mlx_path, summary, predicted, seconds, plan)
    if verify or verify_forward:
        verify_written(plan, mlx_path, verify_forward)
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
    allow_lint: Sequence[str] = (),
    verify: bool = True,
    verify_forward: bool = False,
    ray: Optional[str] = None,
    ray_workers: Optional[int] = None,
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
        allow_lint: lint rules whose errors do not stop the conversion; see ``trace``.
        verify, verify_forward: as ``execute``; verify is on by default.
        ray, ray_workers: as ``execute``: the writing runs as Ray tasks.

    Returns:
        A ConvertSummary.

    Raises:
        OutputExists: ``mlx_path`` already exists.
        UploadError: the output is complete but the upload failed.
        Otherwise as ``trace`` and ``execute``: one of ``USER_ERRORS``, with a
        one-line message.
    """
    start = time.time()
    mlx_path = os.fspath(mlx_path)
    if os.path.lexists(mlx_path):
        raise OutputExists(f"{mlx_path} already exists; delete it or choose another output folder")
    options = ConvertOptions(
        quantize, q_group_size, q_bits, q_mode, quant_predicate, dtype, dequantize, trust_remote_code
    )
    plan, messages, source = run_trace(
        hf_path, options, library, memory_budget, revision, disk_budget, allow_unloadable, allow_lint
    )
    if plan_out is not None:
        plan_ir.save(plan, plan_out)
        print(f"  plan             {plan_out}")
    summary, predicted, _ = run_execute(
        plan,
        source,
        mlx_path,
        memory_budget,
        resume,
        None,
        progress,
        disk_budget,
        library_loaded=True,
        ray=ray_options(ray, ray_workers),
    )
    seconds = time.time() - start
    print_result(mlx_path, summary, predicted, seconds, plan)
    if verify or verify_forward:
        verify_written(plan, mlx_path, verify_forward)
    if upload_repo is not None:
        _upload(plan.library, mlx_path, upload_repo)
    return ConvertSummary(plan, mlx_path, summary, predicted, peak_rss(), seconds, messages)


def ray_options(ray: Optional[str], workers: Optional[int]) -> Optional[RayOptions]:
    """``execute``'s ``ray`` and ``ray_workers`` as the executor's RayOptions (None: run locally)."""
    if ray is None:
        return None
    return RayOptions(None if ray == "local" else ray, workers)


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
