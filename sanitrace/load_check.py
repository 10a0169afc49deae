"""Load check: does the library's own loader accept the output a plan writes?

The plan's output is written as a header-only folder (text files whole, each
shard its exact header in a sparse file of its size) and loaded with the
library's loader, lazily and strictly, as ``mlx_lm.load`` / ``mlx_vlm.load``
do: the model is built with per-module quantization from the plan's
config.json, then the planned tensors' names and shapes are checked against
it. Nothing is evaluated; only headers are read.

This reports what eager conversion will do: an output the library cannot load
is the library's (e.g. mlx_vlm keeping int4 experts at group size 32 while its
config.json says 64), and sanitrace writes it bit-identically when asked to.
"""

import contextlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import List, Optional

from .plan import Plan

# how mlx.nn.Module.load_weights words a strict-load failure
_LOAD_FAILURES = ("Received ", "Missing ", "Expected shape ")


class LoadCheckFailed(Exception):
    """The check itself could not run (not a verdict on the output)."""


def load_error(plan: Plan) -> Optional[str]:
    """None when ``plan.library``'s loader accepts the plan's output; else one
    line naming the first mismatching parameters and why. LoadCheckFailed when
    the loader fails for another reason."""
    import mlx.nn as nn

    captured = {}
    original = nn.Module.load_weights

    def capture(self, weights, strict=True):
        if isinstance(weights, list):
            captured["model"], captured["weights"] = self, dict(weights)
        return original(self, weights, strict=strict)

    with tempfile.TemporaryDirectory(prefix="sanitrace-load-") as folder:
        _write_header_only(plan, folder)
        nn.Module.load_weights = capture  # type: ignore[method-assign]  # spy on the loader's weights
        try:
            importlib.import_module(f"{plan.library}.utils").load_model(Path(folder), lazy=True)
        except ValueError as e:
            message = (str(e).strip().splitlines() or [""])[0]
            if not message.startswith(_LOAD_FAILURES) or "model" not in captured:
                raise LoadCheckFailed(f"{type(e).__name__}: {message[:300]}") from None
            return _explain(captured["model"], captured["weights"], _config(plan)) or message[:300]
        except Exception as e:  # noqa: BLE001  the library's loader, whatever it raises
            raise LoadCheckFailed(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}") from None
        finally:
            nn.Module.load_weights = original  # type: ignore[method-assign]  # undo the spy
    return None


def load_verdict(plan: Plan) -> str:
    """What a plan records: "yes", "no: <load_error>" or "unchecked: <why>"."""
    try:
        problem = load_error(plan)
    except LoadCheckFailed as e:
        return f"unchecked: {e}"
    return "yes" if problem is None else f"no: {problem}"


def _write_header_only(plan: Plan, folder: str) -> None:
    """The plan's text files and shard headers (sparse, full size); no source-made files."""
    for f in plan.files:
        if f.kind == "source":
            continue
        path = os.path.join(folder, f.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            if f.kind == "text":
                out.write(f.data)
            else:
                out.write(f.header)
                out.truncate(f.size)


def _config(plan: Plan) -> dict:
    data = next((f.data for f in plan.files if f.name == "config.json"), b"{}")
    with contextlib.suppress(ValueError):
        return json.loads(data)
    return {}


def _explain(model, weights: dict, config: dict) -> str:
    """The extra, missing and mismatched parameters, the first of each named; for a
    quantized module, the group size and bits the config gives vs what its tensors imply."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.parameters()))
    extra = sorted(weights.keys() - expected.keys())
    missing = sorted(expected.keys() - weights.keys())
    wrong = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
    parts: List[str] = []
    if wrong:
        name = wrong[0]
        part = (
            f"{len(wrong)} parameters of the wrong shape, first {name}: the model expects "
            f"{tuple(expected[name].shape)}, the output has {tuple(weights[name].shape)}"
        )
        parts.append(part + _quantization_why(model, weights, expected, name, config))
    if missing:
        parts.append(f"{len(missing)} model parameters not in the output, first {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} output tensors not in the model, first {extra[0]}")
    return "; ".join(parts)


def _quantization_why(model, weights: dict, expected: dict, name: str, config: dict) -> str:
    """For a parameter of a quantized module: the mode, group size and bits that
    config.json builds it with (its own entry or the global one) vs what the
    output's tensors imply (input width from the model's own weight)."""
    path = name.rsplit(".", 1)[0]
    module = model
    try:
        for part in path.split("."):
            module = (
                module[int(part)]
                if isinstance(module, list)
                else (module[part] if isinstance(module, dict) else getattr(module, part))
            )
    except (AttributeError, KeyError, IndexError, ValueError):
        return ""
    bits, group_size = getattr(module, "bits", None), getattr(module, "group_size", None)
    weight, scales = weights.get(f"{path}.weight"), weights.get(f"{path}.scales")
    model_weight = expected.get(f"{path}.weight")
    if not bits or not group_size or weight is None or scales is None or model_weight is None or not scales.shape:
        return ""
    in_dims = model_weight.shape[-1] * 32 // bits
    implied_bits = weight.shape[-1] * 32 // in_dims if in_dims else 0
    implied_group = in_dims // scales.shape[-1] if scales.shape[-1] else 0
    quantization = config.get("quantization") or {}
    entry = quantization.get(path) or quantization.get(path.removeprefix("language_model."))
    which = "its own entry" if isinstance(entry, dict) else "the global entry"
    biases = ", with biases" if f"{path}.biases" in weights else ""
    return (
        f" (config.json quantization, {which}, builds the module {getattr(module, 'mode', 'affine')} "
        f"group_size {group_size}, bits {bits}; its tensors imply group_size {implied_group}, "
        f"bits {implied_bits}{biases})"
    )
