"""`sanitrace check`: convert a model with the library's own convert (in a
subprocess) and with sanitrace, and compare the output folders: the same
files, byte-equal but for the shards' layout, the tensors equal (see
compare.py); sanitrace's output must also verify (its library loads it).

Users run it to validate a plan on a small model or on the first few layers of
a big one; the conformance runner runs it on every corpus case.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .compare import compare_folders
from .tracer import ConvertOptions, choose_library, trace


@dataclass
class CheckResult:
    """The outcome of ``check``; ``verdict`` sums it up in a few words.

    Attributes:
        library: "mlx_lm" or "mlx_vlm", the library both conversions used.
        identical: both converted and ``compare_folders`` found no difference.
        differences: what ``compare_folders`` found.
        eager_failed: the last line of eager's error, when it refused the model.
        sanitrace_failed: sanitrace's error in one line, when it refused the model.
        trace_cpu_seconds: CPU time of sanitrace's trace.
        tensors: output tensors in sanitrace's plan.
        loads: the plan's load-check verdict ("yes", "no: ...", "unchecked: ...").
    """

    library: str
    identical: bool
    differences: List[str] = field(default_factory=list)
    eager_failed: Optional[str] = None  # last line of eager's error, when it refused the model
    sanitrace_failed: Optional[str] = None  # sanitrace's error, when it refused the model
    trace_cpu_seconds: float = 0.0
    tensors: int = 0
    loads: str = ""  # the plan's load-check verdict ("yes", "no: ...", "unchecked: ...")

    @property
    def verdict(self) -> str:
        """In a few words: "identical", "DIFFERENT", "eager fails", "sanitrace fails" or "both refuse"."""
        if self.eager_failed and self.sanitrace_failed:
            return "both refuse"
        if self.eager_failed:
            return "eager fails"
        if self.sanitrace_failed:
            return "sanitrace fails"
        return "identical" if self.identical else "DIFFERENT"


def eager_convert(model_dir: str, out_dir: str, library: str, flags: List[str]) -> Optional[str]:
    """Run ``python -m <library> convert`` in a subprocess.

    Args:
        model_dir: the model folder to convert.
        out_dir: the output folder.
        library: "mlx_lm" or "mlx_vlm".
        flags: further command-line flags (see ``eager_flags``).

    Returns:
        None when it succeeded, else the last line of its error.
    """
    proc = subprocess.run(
        [sys.executable, "-m", library, "convert", "--hf-path", model_dir, "--mlx-path", out_dir] + flags,
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def eager_flags(options: ConvertOptions) -> List[str]:
    """The convert command-line flags that mean ``options``.

    Args:
        options: the conversion options.

    Returns:
        The flags, e.g. ``["-q", "--q-bits", "8"]``.
    """
    flags = ["-q"] if options.quantize else []
    for flag, value in (
        ("--q-group-size", options.q_group_size),
        ("--q-bits", options.q_bits),
        ("--quant-predicate", options.quant_predicate),
        ("--dtype", options.dtype),
    ):
        if value is not None:
            flags += [flag, str(value)]
    if options.q_mode != "affine":
        flags += ["--q-mode", options.q_mode]
    if options.dequantize:
        flags.append("-d")
    if options.trust_remote_code:
        flags.append("--trust-remote-code")
    return flags


def check(
    model_dir: str,
    options: ConvertOptions,
    library: Optional[str] = None,
    work_dir: Optional[str] = None,
    memory_budget: Optional[int] = None,
    eager: Optional[Tuple[str, Optional[str]]] = None,
) -> CheckResult:
    """Compare eager conversion and sanitrace on ``model_dir`` with ``options``.

    Args:
        model_dir: the model folder to convert.
        options: the conversion options, for both conversions.
        library: "mlx_lm" or "mlx_vlm"; chosen from config.json when None.
        work_dir: where both outputs are written and kept (default: a
            temporary folder, removed at the end).
        memory_budget: sanitrace's memory budget in bytes (default 1 GiB).
        eager: the eager conversion already done: (its output folder, None or
            the last line of its error); when None it runs now, in a subprocess.

    Returns:
        A CheckResult. A conversion that fails is reported in it, not raised.
    """
    from .executor import execute
    from .planner import DEFAULT_MEMORY_BUDGET, build_plan
    from .verify import verify_output

    library = library or choose_library(model_dir)
    result = CheckResult(library, False)
    work = work_dir or tempfile.mkdtemp(prefix="sanitrace-check-")
    try:
        eager_out, ours = os.path.join(work, "eager"), os.path.join(work, "sanitrace")
        for d in (eager_out, ours, ours + ".partial"):
            shutil.rmtree(d, ignore_errors=True)
        if eager is None:
            result.eager_failed = eager_convert(model_dir, eager_out, library, eager_flags(options))
        else:
            eager_out, result.eager_failed = eager
        try:
            start = time.process_time()
            traced = trace(model_dir, options, library)
            result.trace_cpu_seconds = time.process_time() - start
            plan = build_plan(traced, memory_budget or DEFAULT_MEMORY_BUDGET)
            del traced
            execute(plan, model_dir, ours, memory_budget=memory_budget, progress=False)
            verify_output(plan, ours)
            result.tensors = len(plan.outputs)
            result.loads = plan.accounting.loads
        except Exception as e:  # noqa: BLE001  reported as the verdict
            result.sanitrace_failed = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        if result.eager_failed is None and result.sanitrace_failed is None:
            result.differences = compare_folders(eager_out, ours)
            result.identical = not result.differences
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return result
