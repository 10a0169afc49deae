"""Lint rules on what the output holds: layers ``-q`` left unquantized (rule 5),
families of sources dropped (rule 6), layers users keep high-precision that
were quantized (rule 7), and the output's bits per weight (rule 8)."""

import bisect
import collections
import json
import math
import re
from typing import Dict, List

from ..plan import Plan
from .finding import Finding, finding, pattern
from .graph import PlanGraph, letters, default_group_size, quantize_params

_FLOATS = ("float16", "bfloat16", "float32")
_PACKED = {"uint32": 32, "uint8": 8}  # a packed quantized weight's element bits
_ROUTERS = ("gate", "router", "routers", "gating")
_MLA_LOW_RANK = ("q_a_proj", "kv_a_proj", "kv_a_proj_with_mqa")
# words in a dropped family's names -> what the family is
_FAMILIES = (
    (("mtp", "nextn", "eh_proj", "enorm", "hnorm", "shared_head"), "MTP/NextN head"),
    (("vision", "visual", "vit", "image", "patch_embed", "mm_projector", "multi_modal"), "vision tower"),
    (("audio", "speech", "whisper"), "audio tower"),
    (("projector", "connector", "merger"), "multimodal projector"),
    (("indexer",), "indexer"),
)


def _matrix(out) -> bool:
    """A 2-d floating ``.weight`` output: a Linear or Embedding matrix, which ``-q`` could quantize."""
    return out.name.endswith(".weight") and out.dtype in _FLOATS and len(out.shape) == 2 and min(out.shape) > 1


def unquantized(g: PlanGraph) -> List[Finding]:
    """Rule 5: with ``-q``, the matrices that stay unquantized, with why. A
    warning when the group size does not divide a last dimension of at least
    one group (quantize_model skips those silently); a note when the matrix is
    narrower than one group, when the group size fits it (the model's
    predicate said no), or when a module around it has no quantized matrix
    and one the group size fits (the predicate excludes that module: a vision
    tower)."""
    if not g.plan.options.get("quantize"):
        return []
    quantized = g.quantized_outputs()
    group = default_group_size(g.plan.options)
    outputs = g.plan.outputs
    matrices = [k for k, o in enumerate(outputs) if k in quantized or _matrix(o)]
    # module -> [matrices, quantized ones, unquantized ones the group size does not explain]
    under: Dict[str, List[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for k in matrices:
        dim = outputs[k].shape[-1]
        unexplained = k not in quantized and not (dim % group and dim > group)
        for p in _prefixes(outputs[k].name)[:-1]:
            under[p][0] += 1
            under[p][1] += k in quantized
            under[p][2] += unexplained
    ragged: Dict[int, List[str]] = collections.defaultdict(list)
    chosen = []
    weights = {k: math.prod(outputs[k].shape) * (32 // quantized[k][0] if k in quantized else 1) for k in matrices}
    total = sum(weights.values())
    for k in matrices:
        out = outputs[k]
        if k in quantized or out.name[: -len("weight")] + "scales" in g.output_names:
            continue
        excluded = any(under[p][0] > 1 and not under[p][1] and under[p][2] for p in _prefixes(out.name)[:-1])
        if out.shape[-1] % group and out.shape[-1] > group and not excluded:
            ragged[out.shape[-1]].append(out.name)
        else:
            chosen.append(out.name)
    findings = []
    for dim, names in sorted(ragged.items()):
        share = sum(weights[g.output_names[n]] for n in names) / total
        findings.append(
            finding(
                "left-unquantized",
                pattern(sorted(names)),
                f"-q leaves these unquantized ({share:.1%} of the weights): their last dimension {dim} is not a "
                f"multiple of the group size {group}, which quantize_model skips silently",
            )
        )
    if chosen:
        findings.append(
            finding(
                "unquantized-by-predicate",
                pattern(sorted(chosen)),
                f"-q leaves these unquantized: the model's quant predicate excludes them (or their module), "
                f"they are narrower than one group of {group}, or they are not Linear/Embedding layers",
            )
        )
    return findings


def quantized_sensitive(g: PlanGraph) -> List[Finding]:
    """Rule 7: routers / expert gates and MLA low-rank projections that were quantized."""
    routers: Dict[int, List[str]] = collections.defaultdict(list)
    low_rank: Dict[int, List[str]] = collections.defaultdict(list)
    for k, (bits, _) in g.quantized_outputs().items():
        name = g.plan.outputs[k].name
        module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
        if module in _ROUTERS or module.endswith("router"):
            routers[bits].append(name)
        elif module in _MLA_LOW_RANK:
            low_rank[bits].append(name)
    findings = []
    for rule, found, what in (
        ("quantized-router", routers, "the router that picks experts"),
        ("quantized-mla-low-rank", low_rank, "an MLA low-rank projection"),
    ):
        for bits, names in sorted(found.items()):
            findings.append(
                finding(
                    rule,
                    pattern(sorted(names)),
                    f"{what} is quantized to {bits} bits; users often keep it high-precision (a quant predicate can)",
                )
            )
    return findings


def _prefixes(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _shared_depth(parts: List[str], other: str) -> int:
    """How many leading dotted components a name split into ``parts`` shares with ``other``."""
    depth = 0
    for mine, theirs in zip(parts, other.split(".")):
        if mine != theirs:
            break
        depth += 1
    return depth


def dropped_families(g: PlanGraph) -> List[Finding]:
    """Rule 6: dropped sources, one note per family: the largest module all of
    whose tensors are dropped (an MTP layer, a vision tower, each layer's
    indexer), collapsed across numbers and named by the words in its names."""
    dropped = g.plan.accounting.dropped
    if not dropped:
        return []
    # a module's tensors are one run of the sorted names, so it holds a kept tensor
    # exactly when one of the kept names beside a dropped one (in sorted order) is in it
    kept = sorted(t.name for t in g.tensors if t.name not in g.dropped)
    families: Dict[str, List[tuple]] = collections.defaultdict(list)  # family -> (name, reason)
    for d in dropped:
        at = bisect.bisect_left(kept, d.name)
        module = d.name[: d.name.rfind(".") + 1]
        beside = kept[max(at - 1, 0) : at + 1]
        # its own module keeps a tensor: the family is this tensor alone
        if module and beside and (beside[0].startswith(module) or beside[-1].startswith(module)):
            families[d.name].append((d.name, d.reason))
            continue
        parts = d.name.split(".")
        shared = max([_shared_depth(parts, k) for k in beside], default=0)
        family = ".".join(parts[: shared + 1]) + ".*" if shared + 1 < len(parts) else d.name
        families[family].append((d.name, d.reason))
    labelled: Dict[str, List[str]] = collections.defaultdict(list)  # label -> families
    kinds: Dict[bytes, int] = {}  # letters -> the first _FAMILIES entry its words meet (numbers aside)
    for family, named in families.items():
        kind = len(_FAMILIES)
        for name, _ in named:
            shape = letters(name)
            if shape not in kinds:
                words = set(re.split(r"[._]", name.lower()))
                kinds[shape] = next((k for k, (keys, _) in enumerate(_FAMILIES) if words & set(keys)), len(_FAMILIES))
            kind = min(kind, kinds[shape])
        labelled[_FAMILIES[kind][1] if kind < len(_FAMILIES) else "source tensors"].append(family)
    findings = []
    for label, members in labelled.items():
        reasons = collections.Counter(reason for family in members for _, reason in families[family])
        count = sum(reasons.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        findings.append(
            finding(
                "dropped-family",
                pattern(members),
                f"{label}: {count} tensor{'s' if count > 1 else ''} not in the output ({why})",
            )
        )
    return findings


def _declared_bits(value) -> int:
    """The first non-zero ``bits`` / ``num_bits`` integer in a nested config
    value (depth first, in order), else 0. Iterative: a plan's config.json is
    untrusted and may nest as deep as json.loads allows."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            found = next((value[k] for k in ("bits", "num_bits") if isinstance(value.get(k), int)), None)
            if found is not None:
                if found:
                    return found
                continue  # a dict that says 0 bits: none below it counts
            value = list(value.values())
        if isinstance(value, list):
            stack.extend(reversed(value))
    return 0


def _packed_bits(plan: Plan) -> Dict[str, int]:
    """Bits per weight of the quantized layers the output's config.json
    declares: module path -> bits ('' for the default, from ``quantization`` or
    else ``quantization_config``)."""
    text = next((f.data for f in plan.files if f.name == "config.json" and f.kind == "text"), b"")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's limit
        return {}
    if not isinstance(config, dict):
        return {}
    quantization = config.get("quantization") or {}
    bits = {k: _declared_bits(v) for k, v in quantization.items() if isinstance(v, dict) and _declared_bits(v)}
    default = _declared_bits({k: v for k, v in quantization.items() if not isinstance(v, dict)})
    bits[""] = default or _declared_bits(config.get("quantization_config"))
    return bits


def _microscaled_bits(weight, scales) -> int:
    """The bits of a packed weight whose uint8 scales are one per 32 (mxfp4,
    mxfp8) or 16 (nvfp4) weights: the pair mlx allows; 0 when neither fits."""
    if scales.dtype != "uint8" or not scales.shape or not weight.shape:
        return 0
    packed_bits = weight.shape[-1] * _PACKED[weight.dtype]
    for group, allowed in ((32, (4, 8)), (16, (4,))):
        if packed_bits % (scales.shape[-1] * group) == 0 and packed_bits // (scales.shape[-1] * group) in allowed:
            return packed_bits // (scales.shape[-1] * group)
    return 0


def bits_per_weight(plan: Plan) -> float:
    """The written output's bits per weight, counted as the library's
    ``[INFO]`` line counts its model's (which it computes before its last
    cast, so that line can differ in the third decimal).

    Args:
        plan: the plan.

    Returns:
        Output bits over weights: a quantized matrix counts the weights it
        packs (its bits from its ``mx.quantize``, or when it comes packed from
        the source from config.json, else from its uint8 microscales), its
        scales and biases none, any other tensor its elements.
    """
    nodes = plan.nodes
    names = {o.name: o for o in plan.outputs}
    declared = _packed_bits(plan)
    weights = 0
    for out in plan.outputs:
        node = nodes[out.ref.node]
        count = math.prod(out.shape)
        module, _, part = out.name.rpartition(".")
        if node.op == "mx.quantize":
            bits, _ = quantize_params(node)
            count = count * 32 // bits if out.ref.out == 0 else 0
        elif module + ".scales" in names and part in ("scales", "biases"):
            count = 0
        elif module + ".scales" in names and out.dtype in _PACKED:
            bits = declared.get(module) or declared.get("") or _microscaled_bits(out, names[module + ".scales"])
            count = count * _PACKED[out.dtype] // bits if bits else count
        weights += count
    return plan.output_bytes * 8 / weights if weights else 0.0
