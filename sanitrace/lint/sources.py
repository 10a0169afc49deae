"""Lint rules on how source formats are decoded: float8 bytes read as integers
(rule 1), block scales dropped or crossed (rule 2), an MLX checkpoint converted
again through a transform that is not idempotent (rule 3)."""

import math
from typing import Dict, List, Optional, Set, Tuple

from ..plan import dtype_name
from .finding import Finding, finding, pattern
from .graph import LAYOUT_OPS, PERMUTE_OPS, PlanGraph

FLOAT8 = ("F8_E4M3", "F8_E5M2")
_DECODERS = frozenset({"mx.from_fp8", "array.view", "mx.view"})  # bits reinterpreted, not read as integers

# a scale's name suffix -> the suffix of the weight it scales (the first whose weight exists)
SCALE_SUFFIXES = (
    (".weight_scale_inv", ".weight"),
    (".weight_scale", ".weight"),
    (".scale", ".weight"),
    (".scales", ".weight"),
    ("_scales", "_blocks"),
    ("_scales", ""),
)
_SCALING_OPS = frozenset(
    {"array.__mul__", "array.__rmul__", "array.__truediv__", "array.__rtruediv__", "mx.multiply", "mx.divide"}
)
_SHIFT_OPS = frozenset({"array.__add__", "array.__radd__", "array.__sub__", "array.__rsub__", "mx.add", "mx.subtract"})


def _names(g: PlanGraph, tensors) -> str:
    return pattern(sorted({g.name(t) for t in tensors}))


def _op_text(node) -> str:
    name = node.op.split(".", 1)[1]
    if name == "astype" and len(node.args) > 1:
        dtype = node.args[1]
        return f"astype({dtype_name(dtype) if type(dtype).__name__ == 'Dtype' else dtype})"
    return name


def _decodes(node) -> bool:
    """Whether ``node`` reads float8 bytes as float8: from_fp8, a bit view, or
    an mxfp8 dequantize (a packed mxfp8 layer dequantized with ``-d``)."""
    if node.op in _DECODERS:
        return True
    return node.op == "mx.dequantize" and "mxfp8" in list(node.args) + list(node.kwargs.values())


def fp8_as_integer(g: PlanGraph) -> List[Finding]:
    """Rule 1: a float8 source reaches a numeric op, or an output, as the uint8
    bytes ``mx.load`` gives, without ``mx.from_fp8`` or a bit view first."""
    seen: Set[int] = set()  # nodes that hold the raw bytes (loads, then layout ops of them)
    misuse: Dict[str, Set[int]] = {}  # what reads the bytes -> the raw nodes it reads
    if not any(t.dtype in FLOAT8 for t in g.tensors):
        return []
    for c, node in enumerate(g.nodes):  # topological order: one pass forward
        if node.op == "load":
            if g.tensors[node.args[0]].dtype in FLOAT8:
                seen.add(c)
            continue
        inputs = node.inputs
        if len(inputs) == 1:  # most nodes: no list made
            if inputs[0].node not in seen:
                continue
            raw = [inputs[0].node]
        else:
            raw = [r.node for r in inputs if r.node in seen]
            if not raw:
                continue
        if node.op in LAYOUT_OPS:
            seen.add(c)
        elif not _decodes(node):
            misuse.setdefault(_op_text(node), set()).update(raw)
    for i in seen:
        for k in g.output_nodes.get(i, []):
            out = g.plan.outputs[k]
            if out.name.rsplit(".", 1)[0] + ".scales" not in g.output_names:  # not a packed format kept
                misuse.setdefault("the output file", set()).add(i)
    findings = []
    for what, nodes in sorted(misuse.items()):
        loads, stack, visited = set(), list(nodes), set(nodes)
        while stack:  # back through the raw bytes to the float8 sources
            n = g.nodes[stack.pop()]
            if n.op == "load":
                loads.add(n.args[0])
                continue
            for r in n.inputs:
                if r.node in seen and r.node not in visited:
                    visited.add(r.node)
                    stack.append(r.node)
        dtypes = "/".join(sorted({g.tensors[t].dtype for t in loads}))
        findings.append(
            finding(
                "fp8-as-integer",
                _names(g, loads),
                f"mx.load gives {dtypes} as uint8 bytes, and they reach {what} without mx.from_fp8: "
                "each weight becomes its byte code (0..255), not its value (mlx-lm #1192)",
            )
        )
    return findings


def scale_target(name: str, names: Dict[str, int]) -> Optional[str]:
    """The weight a block scale named ``name`` belongs to, when that weight is a source tensor."""
    if "scale" not in name:  # every suffix has it: most names are over at once
        return None
    for suffix, weight in SCALE_SUFFIXES:
        if name.endswith(suffix):
            target = name[: -len(suffix)] + weight
            if target != name and target in names:
                return target
    return None


def block_scales(g: PlanGraph) -> List[Finding]:
    """Rule 2: a weight used while its block scale is dropped; a scale applied to
    another weight than the one its name says."""
    scales: Dict[int, int] = {}  # scale tensor -> weight tensor
    for i, t in enumerate(g.tensors):
        target = scale_target(t.name, g.names)
        if target is not None:
            scales[i] = g.names[target]
    dropped = [s for s, w in scales.items() if w in g.loaded and s not in g.loaded]
    findings = []
    if dropped:
        findings.append(
            finding(
                "scale-dropped",
                _names(g, dropped),
                f"the weights {_names(g, [scales[s] for s in dropped])} are written but these scales are dropped: "
                "the output loads and generates, wrong by a per-block factor",
            )
        )
    weights = set(scales.values())
    crossed: Dict[Tuple[int, int], None] = {}
    roots = g.roots
    for node in g.nodes:
        if node.op not in _SCALING_OPS or len(node.inputs) != 2:
            continue
        a, b = roots[node.inputs[0].node], roots[node.inputs[1].node]
        if a in scales and b in weights and scales[a] != b:
            crossed[(a, b)] = None
        if b in scales and a in weights and scales[b] != a:
            crossed[(b, a)] = None
    if crossed:
        pairs = [f"{g.name(w)} * {g.name(s)}" for s, w in crossed]
        findings.append(
            finding(
                "scale-mismatch",
                pattern(pairs),
                "a weight is multiplied by the block scale of another weight (their names differ)",
            )
        )
    return findings


def mlx_format(g: PlanGraph) -> str:
    """Why the source is already an MLX checkpoint, or '' when it is not."""
    for f in g.plan.source.files:
        if (f.metadata or {}).get("format") == "mlx":
            return f"{f.name} says format: mlx"
    for t in g.tensors:
        if t.name.endswith(".scales"):
            base = t.name[: -len(".scales")]
            weight = g.names.get(base + ".weight")
            if base + ".biases" in g.names or (weight is not None and g.tensors[weight].dtype == "U32"):
                return f"MLX-quantized {t.name} beside its weight"
    return ""


def _shift(g: PlanGraph, node) -> bool:
    """An add/subtract of a constant to one array (a norm's +1): a Python number,
    or a one-element constant array."""
    if node.op not in _SHIFT_OPS:
        return False
    if len(node.inputs) == 2:
        consts = [g.nodes[r.node] for r in node.inputs if g.nodes[r.node].op == "const"]
        return len(consts) == 1 and math.prod(consts[0].outs[0][1]) == 1
    values = list(node.args) + list(node.kwargs.values())
    return len(node.inputs) == 1 and any(type(v) in (int, float) for v in values)


def reconverted_mlx(g: PlanGraph) -> List[Finding]:
    """Rule 3: an MLX checkpoint (already sanitized) goes through a transform
    that changes it again: a norm shift, a transpose, a stack of sources."""
    why = mlx_format(g)
    if not why:
        return []
    transforms: Dict[str, Set[int]] = {}
    for node in g.nodes:
        if _shift(g, node):
            what = "shifted by a constant again (a norm's +1 applied twice)"
        elif node.op in PERMUTE_OPS and len(node.inputs) == 1:
            what = "transposed again"
        elif node.op == "mx.stack" and len(node.inputs) > 1:
            what = "stacked again (experts already stacked)"
        else:
            continue
        roots = {g.root(r.node) for r in node.inputs if g.nodes[r.node].op != "const"}
        if roots and None not in roots:
            transforms.setdefault(what, set()).update(t for t in roots if t is not None)
    return [
        finding(
            "reconverted-mlx",
            _names(g, tensors),
            f"the source is already converted ({why}), and sanitize applies its transform once more: {what}",
        )
        for what, tensors in sorted(transforms.items())
    ]
