"""Verify a written output against its plan, cheaply: `execute --verify`.

Every shard's header is read (never its data) and checked against the plan's
outputs, the plan's text files are compared byte for byte, and the folder is
opened with the library's own loader as ``mlx_lm.load`` / ``mlx_vlm.load``
open it: lazily (no weight is evaluated), strictly, tokenizer or processor
included. ``forward=True`` also runs one token through the loaded language
model, which evaluates the weights that token touches.
"""

import contextlib
import glob
import hashlib
import inspect
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from .plan import OutputFile, Plan
from .safetensors_format import MLX_TO_SAFETENSORS, SafetensorsError, check_regular, read_header

# how mlx says a primitive cannot run on this device (e.g. GatherMM in bf16 on the CPU)
_DEVICE_LIMITS = ("Currently only supports", "No Metal back-end", "not supported on")


class VerifyFailed(Exception):
    """The output does not match its plan or does not load; one line naming the
    file (and tensor) and what is wrong."""


@dataclass
class VerifyReport:
    """What ``verify_output`` checked.

    Attributes:
        files: plan files checked (shards and text files).
        tensors: tensor headers checked.
        tokenizer: "loaded", or "skipped" when not expected or the model is not loaded.
        loaded: False when the plan says the library will not load the output.
        forward: the one-token forward's summary, or None when not run.
        seconds: time the checks took.
    """

    files: int  # plan files checked (shards and text files)
    tensors: int  # tensor headers checked
    tokenizer: str  # "loaded", or "skipped" when the plan writes no tokenizer or the model is not loaded
    loaded: bool  # False when the plan says the library will not load it (--allow-unloadable)
    forward: Optional[str]  # "token T: logits (1, 1, V), all finite", or None when not run
    seconds: float


def verify_output(
    plan: Plan, out_dir: str, forward: bool = False, tokenizer_expected: Optional[bool] = None
) -> VerifyReport:
    """Check the output ``out_dir`` that ``plan`` was executed into.

    Args:
        plan: the plan that was executed.
        out_dir: the folder it was executed into.
        forward: also run one token through the loaded language model.
        tokenizer_expected: whether the tokenizer / processor must load
            (default: whether the plan writes the tokenizer files, i.e.
            ``plan.accounting.tokenizer`` is "").

    Returns:
        A VerifyReport of what was checked.

    Raises:
        VerifyFailed: naming the first problem: a shard missing, of the wrong
            size, or whose header's tensors (set, dtypes, shapes, byte ranges,
            metadata, bytes) differ from the plan; a ``*.safetensors`` file the
            plan does not write; another plan file missing or not the plan's
            bytes (its sha256 for one made from a source file); the model not
            loading with ``plan.library`` (lazy, strict; skipped when the plan's
            load check says it will not load); the tokenizer / processor not
            loading when expected; with ``forward``, one token's logits not
            (1, 1, vocab) or not all finite.
    """
    start = time.perf_counter()
    if tokenizer_expected is None:
        tokenizer_expected = not plan.accounting.tokenizer
    tensors = 0
    for i, f in enumerate(plan.files):
        path = os.path.join(out_dir, f.name)
        if f.kind == "safetensors":
            tensors += _check_shard(plan, i, path, f)
        else:
            _check_file(path, f)
    planned = {f.name for f in plan.shards}
    for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), "*.safetensors"))):
        if os.path.basename(path) not in planned:
            raise VerifyFailed(f"{path}: a safetensors file the plan does not write (the loader would read it)")
    if plan.accounting.loads.startswith("no: "):  # written with --allow-unloadable, as eager writes it
        return VerifyReport(len(plan.files), tensors, "skipped", False, None, time.perf_counter() - start)
    model, tokenizer, config = _load(plan, out_dir, tokenizer_expected)
    summary = _forward(plan, model, tokenizer, config, out_dir) if forward else None
    return VerifyReport(
        len(plan.files),
        tensors,
        "loaded" if tokenizer_expected else "skipped",
        True,
        summary,
        time.perf_counter() - start,
    )


def _check_file(path: str, f: OutputFile) -> None:
    """A text file: its bytes are the plan's; a source-made file: its size and sha256."""
    try:
        check_regular(path, VerifyFailed)
        with open(path, "rb") as fh:
            data = fh.read(f.size + 1)
    except OSError as e:
        raise VerifyFailed(f"{path}: cannot read: {e.strerror}") from None
    if len(data) != f.size:
        size = f"{len(data)} bytes" if len(data) <= f.size else f"over {f.size} bytes"
        raise VerifyFailed(f"{path}: is {size}, the plan writes {f.size}")
    same = data == f.data if f.kind == "text" else hashlib.sha256(data).hexdigest() == f.sha256
    if not same:
        raise VerifyFailed(f"{path}: its bytes differ from the plan's")


def _check_shard(plan: Plan, index: int, path: str, f: OutputFile) -> int:
    """Check one shard's size and header against the plan; returns its tensor count."""
    size = check_regular(path, VerifyFailed).st_size
    if size != f.size:
        raise VerifyFailed(f"{path}: is {size} bytes, the plan writes {f.size}")
    try:
        header = read_header(path)
    except SafetensorsError as e:
        raise VerifyFailed(str(e)) from None
    outputs = {o.name: o for o in plan.outputs if o.file == index}
    extra = sorted(header.tensors.keys() - outputs.keys())
    if extra:
        raise VerifyFailed(f"{path}: tensor {extra[0]} is in the header but not in the plan ({len(extra)} such)")
    missing = sorted(outputs.keys() - header.tensors.keys())
    if missing:
        raise VerifyFailed(f"{path}: tensor {missing[0]} of the plan is not in the header ({len(missing)} such)")
    for name, o in outputs.items():
        t = header.tensors[name]
        dtype = MLX_TO_SAFETENSORS[o.dtype]
        if t.dtype != dtype:
            raise VerifyFailed(f"{path}: tensor {name}: dtype {t.dtype} in the header, the plan has {dtype}")
        if t.shape != tuple(o.shape):
            raise VerifyFailed(f"{path}: tensor {name}: shape {t.shape} in the header, the plan has {tuple(o.shape)}")
        if (t.begin, t.end) != (o.offset, o.offset + o.nbytes):
            raise VerifyFailed(
                f"{path}: tensor {name}: bytes {t.begin}..{t.end} in the header, "
                f"the plan has {o.offset}..{o.offset + o.nbytes}"
            )
    if header.metadata != f.metadata:
        raise VerifyFailed(f"{path}: header metadata {header.metadata} differs from the plan's {f.metadata}")
    if header.header_bytes != f.header[8:]:
        raise VerifyFailed(
            f"{path}: header bytes differ from the plan's (same tensors; not bit-identical to the library's output)"
        )
    return len(outputs)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _library_call(what: str):
    """Run a library call with its warnings silenced; any error it raises
    becomes a VerifyFailed: ``what``, then the error in one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except Exception as e:  # noqa: BLE001  the library's loader, whatever it raises
        raise VerifyFailed(f"{what}: {_one_line(e)}") from None


def _load(plan: Plan, out_dir: str, tokenizer_expected: bool):
    """(model, tokenizer or None, config) as ``<library>.load(out_dir, lazy=True)``
    builds them; the model's strict-load failure explained by the load check."""
    path = Path(os.path.abspath(out_dir))
    loader = f"{plan.library}.load"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if plan.library == "mlx_lm":
                from mlx_lm.utils import load_model as lm_load_model

                extra: Dict[str, Any] = {}
                if "trust_remote_code" in inspect.signature(lm_load_model).parameters:  # newer mlx-lm versions take it
                    extra["trust_remote_code"] = bool(plan.options.get("trust_remote_code"))
                model, config = lm_load_model(path, lazy=True, strict=True, **extra)
            else:
                from mlx_vlm.utils import load_model as vlm_load_model

                model = vlm_load_model(path, lazy=True)  # strict by default; kwargs go to load_config too
                config = model.config
    except Exception as e:  # noqa: BLE001  the library's loader, whatever it raises
        raise VerifyFailed(f"{out_dir}: the model does not load with {loader}: {_explain(plan, e)}") from None
    if not tokenizer_expected:
        return model, None, config
    if plan.library == "mlx_lm":
        from mlx_lm.utils import load_tokenizer

        with _library_call(f"{out_dir}: the tokenizer does not load with {loader}"):
            tokenizer = load_tokenizer(path, None, eos_token_ids=config.get("eos_token_id", None))
        return model, tokenizer, config
    from mlx_vlm.utils import load_image_processor, load_processor

    with _library_call(f"{out_dir}: the processor does not load with {loader}"):
        image_processor = load_image_processor(path)
        processor = load_processor(path, True, eos_token_ids=getattr(config, "eos_token_id", None))
        if image_processor is not None:
            processor.image_processor = image_processor
    return model, getattr(processor, "tokenizer", processor), config


def _explain(plan: Plan, e: Exception) -> str:
    """The loader's error in one line; a strict-load mismatch as the load check
    explains it for the plan (the headers already match the plan)."""
    from .load_check import LoadCheckFailed, load_error

    if isinstance(e, ValueError):
        with contextlib.suppress(LoadCheckFailed):
            explained = load_error(plan)
            if explained:
                return explained
    return _one_line(e)


def _forward(plan: Plan, model, tokenizer, config, out_dir: str) -> str:
    """Run one token (the tokenizer's bos, else 0) through the language model as
    generation's decode step does; the logits' summary. A model mlx cannot run
    on this device (e.g. bf16 MoE on the CPU) or with no language model is
    reported "not run", not failed: that says nothing of the output."""
    import mlx.core as mx

    vocab = _vocab_size(config)
    token = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if not isinstance(token, int) or token < 0 or (vocab and token >= vocab):
        token = 0
    if plan.library == "mlx_vlm" and not hasattr(model, "language_model"):
        return "not run: the model has no language model"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if plan.library == "mlx_lm":
                from mlx_lm.models.cache import make_prompt_cache

                logits = model(mx.array([[token]]), cache=make_prompt_cache(model))
            else:
                from mlx_vlm.models.cache import make_prompt_cache

                language_model = model.language_model
                output = language_model(mx.array([[token]]), cache=make_prompt_cache(language_model))
                logits = getattr(output, "logits", output)
            bad = mx.logical_not(mx.isfinite(logits)).sum()
            mx.eval(logits, bad)
    except Exception as e:  # noqa: BLE001  the library's model code, whatever it raises
        if isinstance(e, RuntimeError) and any(limit in str(e) for limit in _DEVICE_LIMITS):
            return f"not run on {mx.default_device()}: {_one_line(e)}"
        raise VerifyFailed(f"{out_dir}: one-token forward with {plan.library} failed: {_one_line(e)}") from None
    shape = tuple(logits.shape)
    if len(shape) != 3 or shape[:2] != (1, 1) or (vocab and shape[2] != vocab):
        expected = (1, 1, vocab) if vocab else "(1, 1, vocab)"
        raise VerifyFailed(f"{out_dir}: one-token forward: logits of shape {shape}, expected {expected}")
    if bad.item():
        raise VerifyFailed(
            f"{out_dir}: one-token forward: non-finite logits for token {token} "
            f"({bad.item()} of {shape[2]} are NaN or inf)"
        )
    return f"token {token}: logits {shape}, all finite"


def _vocab_size(config) -> Optional[int]:
    """vocab_size of the text model: from the config's text_config, else its top level
    (a dict from mlx_lm, mlx_vlm's ModelConfig)."""
    text = config.get("text_config") if isinstance(config, dict) else getattr(config, "text_config", None)
    for part in (text, config):
        value = part.get("vocab_size") if isinstance(part, dict) else getattr(part, "vocab_size", None)
        if isinstance(value, int) and value > 0:
            return value
    return None
