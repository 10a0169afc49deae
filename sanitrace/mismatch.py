"""Strict-load mismatches for people: grouped by cause, the cause that explains most first.

A failed strict load can name hundreds of parameters (every routed expert of
every layer). Each problem has a cause: a parameter the model lacks or the
checkpoint lacks, a shape or dtype the model does not expect, and, for a
weight or scales of a quantized module, the mode, group size and bits the
model builds it with against what the checkpoint's tensors imply. Names of
one cause collapse as ``show`` collapses outputs, so 256 experts x 43 layers
x 3 projections read as three lines under one reason.

Both strict checks use this one definition: the trace's (tracer/patching.py,
the sanitized weights against the model) and the load check's
(load_check.py, a plan's output against the library's loader).
"""

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

from .collapse import collapse_numbers

MAX_LINES = 8  # collapsed name lines shown per cause

_KINDS = {
    "missing": "missing parameters",
    "unexpected": "unexpected parameters (not in the model)",
    "shape": "shape/dtype mismatches",
}


@dataclass
class Cause:
    """Parameters wrong for one reason.

    kind: "missing" (in the model, not in the weights), "unexpected" (in the
    weights, not in the model) or "shape" (shape, dtype or type differs).
    why: the reason shared by every name ("" when none is known beyond the
    kind); lines: one per parameter, "name" or "name: what differs".
    """

    kind: str
    why: str
    names: List[str] = field(default_factory=list)
    lines: List[str] = field(default_factory=list)

    def headline(self) -> str:
        """ "129 shape/dtype mismatches: <why>" """
        return f"{len(self.names)} {_KINDS[self.kind]}" + (f": {self.why}" if self.why else "")


def causes(
    model: Any, expected: Mapping[str, Any], given: Mapping[str, Any], config: Optional[dict] = None
) -> List[Cause]:
    """Every problem of a strict load of ``given`` into ``model``, grouped by cause.

    Args:
        model: the mlx.nn.Module (its modules give quantization mode, bits, group size).
        expected: the model's parameters, name -> array.
        given: the weights loaded, name -> array (or anything, reported as the wrong type).
        config: the output's config.json, to say which of its quantization entries
            built a module; None where the model was built from another config.

    Returns:
        The causes, the one with the most names first, a cause with a reason
        before one without at equal count; names sorted within each.
    """
    import mlx.core as mx

    by_key: dict = {}

    def add(kind: str, why: str, name: str, line: str) -> None:
        cause = by_key.setdefault((kind, why), Cause(kind, why))
        cause.names.append(name)
        cause.lines.append(line)

    for name in sorted(expected.keys() - given.keys()):
        add("missing", "", name, name)
    for name in sorted(given.keys() - expected.keys()):
        add("unexpected", "", name, name)
    for name in sorted(expected.keys() & given.keys()):
        want, got = expected[name], given[name]
        if not hasattr(got, "shape") or not hasattr(got, "dtype"):
            add("shape", "not an array", name, f"{name}: expected an array, got {type(got).__name__}")
        elif tuple(got.shape) != tuple(want.shape):
            why = quantization_why(model, expected, given, name, config)
            add("shape", why, name, f"{name}: shape {list(got.shape)}, model has {list(want.shape)}")
        elif mx.issubdtype(got.dtype, mx.integer) != mx.issubdtype(want.dtype, mx.integer):
            add("shape", "", name, f"{name}: dtype {got.dtype}, model has {want.dtype}")
    return sorted(by_key.values(), key=lambda c: (-len(c.names), not c.why, c.kind))


def report_lines(found: List[Cause]) -> List[str]:
    """A cause per headline, its names collapsed below it (at most MAX_LINES each).

    Args:
        found: from ``causes``.

    Returns:
        Lines for people, names indented by two spaces.
    """
    lines: List[str] = []
    for cause in found:
        lines.append(cause.headline() + ":")
        collapsed = collapse_numbers(cause.lines)
        lines += [f"  {line}" for line in collapsed[:MAX_LINES]]
        if len(collapsed) > MAX_LINES:
            lines.append(f"  ... and {len(collapsed) - MAX_LINES} more lines of this kind")
    return lines


def _module(model: Any, path: str) -> Any:
    module = model
    for part in path.split("."):
        if isinstance(module, list):
            module = module[int(part)]
        elif isinstance(module, dict):
            module = module[part]
        else:
            module = getattr(module, part)
    return module


def quantization_why(
    model: Any, expected: Mapping[str, Any], given: Mapping[str, Any], name: str, config: Optional[dict]
) -> str:
    """For a parameter of a quantized module: the mode, group size and bits the model
    builds the module with vs what the given tensors imply ("" for another module).

    Args:
        model: the mlx.nn.Module.
        expected: the model's parameters.
        given: the weights loaded.
        name: a parameter whose shape differs.
        config: the output's config.json, or None.

    Returns:
        e.g. "the model builds these modules mxfp8, group_size 32, bits 8 (...); their
        tensors imply group_size 32, bits 4"; "" when ``name`` is not in a quantized module.
    """
    path = name.rsplit(".", 1)[0]
    try:
        module = _module(model, path)
    except (AttributeError, KeyError, IndexError, ValueError, TypeError):
        return ""
    bits, group_size = getattr(module, "bits", None), getattr(module, "group_size", None)
    weight_shape = tuple(getattr(given.get(f"{path}.weight"), "shape", ()))
    model_weight = expected.get(f"{path}.weight")
    if not bits or not group_size or model_weight is None or not weight_shape:
        return ""
    in_dims = model_weight.shape[-1] * 32 // bits
    implied = []
    scales_shape = tuple(getattr(given.get(f"{path}.scales"), "shape", ()))
    if scales_shape and scales_shape[-1]:
        implied.append(f"group_size {in_dims // scales_shape[-1]}")
    if in_dims:
        implied.append(f"bits {weight_shape[-1] * 32 // in_dims}")
    if f"{path}.biases" in given:
        implied.append("with biases")
    source = " (as the library reads the checkpoint's quantization config)"
    if config is not None:
        quantization = config.get("quantization") or {}
        entry = quantization.get(path) or quantization.get(path.removeprefix("language_model."))
        which = "its own entry" if isinstance(entry, dict) else "the global entry"
        source = f" (config.json quantization, {which})"
    return (
        f"the model builds these modules {getattr(module, 'mode', 'affine')}, group_size {group_size}, "
        f"bits {bits}{source}; their tensors imply {', '.join(implied)}"
    )
