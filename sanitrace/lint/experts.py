"""Lint rule 4: expert stacks that miss or repeat experts, or leave part of
each stacked expert (its scales, biases, ...) behind."""

import collections
from typing import Dict, List, Set, Tuple

from ..collapse import ranges
from .finding import Finding, finding, pattern
from .graph import PlanGraph, split_numbers
from .sources import scale_target

# the parts of a layer that hold its weights (not activation scales, buffers, ...)
WEIGHT_PARTS = frozenset({"weight", "bias", "scales", "biases", "weight_scale_inv", "weight_scale", "scale"})


def _families(g: PlanGraph):
    """(stack node, skeleton, varying column, stacked numbers) of each mx.stack
    whose inputs come from sources whose names differ in exactly one number."""
    sources = g.roots
    for i, node in enumerate(g.nodes):
        if node.op != "mx.stack" or len(node.inputs) < 2:
            continue
        found = [sources[r.node] for r in node.inputs]
        roots = [t for t in found if t is not None]
        if len(roots) < len(found):
            continue
        skeleton, _ = g.split(roots[0])
        family = g.family(skeleton)
        numbers = [family[t] for t in roots if t in family]
        if len(numbers) < len(roots):  # names of another shape
            continue
        varying = [c for c in range(len(numbers[0])) if len({n[c] for n in numbers}) > 1]
        if len(varying) > 1:
            continue
        column = varying[0] if varying else len(numbers[0]) - 1
        if column < 0:
            continue
        yield i, skeleton, column, numbers


def _name(skeleton: Tuple[str, ...], numbers: Tuple, column: int, value: str) -> str:
    shown = [str(n) for n in numbers]
    shown[column] = value
    return "".join(p + (shown[k] if k < len(shown) else "") for k, p in enumerate(skeleton))


def expert_stacks(g: PlanGraph) -> List[Finding]:
    """Rule 4: every stack of one family of sources (names that differ in one
    number: the expert index) holds each index of that family in the source
    exactly once, and the other weight parts of each stacked expert are kept."""
    family_index: Dict[tuple, Dict[tuple, Set[int]]] = {}  # (skeleton, column) -> other numbers -> indices
    incomplete: Dict[str, List[str]] = collections.defaultdict(list)  # problems -> the families' names
    # (skeleton up to the expert index, the numbers before it) -> the indices stacked
    stacked_experts: Dict[tuple, Set[int]] = collections.defaultdict(set)
    for _, skeleton, column, numbers in _families(g):
        if (skeleton, column) not in family_index:  # once per skeleton and column, not per stack
            index: Dict[tuple, Set[int]] = collections.defaultdict(set)
            for n in g.family(skeleton).values():
                index[n[:column] + n[column + 1 :]].add(n[column])
            family_index[(skeleton, column)] = index
        present = family_index[(skeleton, column)][numbers[0][:column] + numbers[0][column + 1 :]]
        stacked = [n[column] for n in numbers]
        problems = []
        repeated = sorted(e for e, k in collections.Counter(stacked).items() if k > 1)
        if repeated:
            problems.append(f"experts {ranges(repeated)} stacked twice")
        left_out = sorted(present - set(stacked))
        if left_out:
            problems.append(f"experts {ranges(left_out)} are in the source but not stacked")
        absent = sorted(set(range(min(stacked), max(stacked) + 1)) - present)
        if absent and min(stacked) == 0:
            problems.append(f"experts {ranges(absent)} are absent from the source")
        if problems:
            names = [_name(skeleton, numbers[0], column, str(e)) for e in present | set(stacked)]
            incomplete["; ".join(problems)] += names
        stacked_experts[(skeleton[: column + 1], numbers[0][:column])].update(stacked)
    findings = [
        finding("expert-set-incomplete", pattern(names), f"{problems}: the layer routes tokens to the wrong weights")
        for problems, names in sorted(incomplete.items())
    ]
    left = []
    for name in g.dropped:
        if name.rsplit(".", 1)[-1] not in WEIGHT_PARTS:
            continue
        target = scale_target(name, g.names)
        if target is not None and g.names[target] in g.loaded:
            continue  # a block scale: rule 2 (scale-dropped) names it
        skeleton, numbers = split_numbers(name)
        if any(numbers[k] in stacked_experts.get((skeleton[: k + 1], numbers[:k]), ()) for k in range(len(numbers))):
            left.append(name)
    if left:
        findings.append(
            finding(
                "expert-parts-dropped",
                pattern(sorted(left)),
                "parts of experts whose other tensors are stacked are dropped: those experts lose their "
                "scales, biases or a projection",
            )
        )
    return findings
