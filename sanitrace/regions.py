"""Regions: push a row range of an output down a plan graph to the source pieces it needs.

``Rules`` applies the per-op rules of chunk_rules.py to one graph, caching them,
and derives each value's granularity (the multiple chunk boundaries must be).
Used by the planner (to choose and cost chunks) and the executor (to replay them).
"""

from typing import List, Optional, Tuple

from .chunk_rules import SKIP, NotChunkable, Rule, rule
from .plan import Node, Ref

__all__ = ["Rules", "Region", "input_avals", "NotChunkable", "SKIP", "Rule"]

Region = Optional[Tuple[int, int, int]]  # (axis, start, stop); None = the whole value


def input_avals(nodes: List[Node], node: Node) -> list:
    """[dtype, shape] of each input of ``node``."""
    return [nodes[r.node].outs[r.out] for r in node.inputs]


class Rules:
    """Chunk rules and granularities of one graph, cached per (node, output, axis)."""

    def __init__(self, nodes: List[Node]):
        self.nodes = nodes
        self._rules: dict = {}
        self._granularity: dict = {}

    def __call__(self, ref: Ref, axis: int) -> Rule:
        key = (ref.node, ref.out, axis)
        if key not in self._rules:
            node = self.nodes[ref.node]
            self._rules[key] = rule(node, ref.out, axis, input_avals(self.nodes, node))
        return self._rules[key]

    def granularity(self, ref: Ref, axis: int) -> int:
        """Smallest g such that chunk boundaries at multiples of g are exact;
        raises NotChunkable when some op on the way has no rule."""
        key = (ref.node, ref.out, axis)
        if key not in self._granularity:
            node = self.nodes[ref.node]
            if node.op in ("load", "const"):
                g = 1
            else:
                op_rule = self(ref, axis)
                g = op_rule.granularity(self._input_granularities(ref, op_rule))
            self._granularity[key] = g
        return self._granularity[key]

    def _input_granularities(self, ref: Ref, op_rule: Rule) -> List[int]:
        return [
            self.granularity(r, j) if j is not None else 1
            for r, j in zip(self.nodes[ref.node].inputs, op_rule.in_axes)
        ]

    def input_ranges(self, ref: Ref, axis: int, start: int, stop: int) -> list:
        """Per array input of ref's node: its (axis, start, stop), None (whole) or SKIP."""
        op_rule = self(ref, axis)
        gs = self._input_granularities(ref, op_rule)
        return [
            rng if rng is None or rng == SKIP else (j, rng[0], rng[1])
            for j, rng in zip(op_rule.in_axes, op_rule.ranges(start, stop, gs))
        ]

    def value_key(self, ref: Ref, region: Region) -> Tuple[tuple, Optional[Rule]]:
        """The key of the value computing ``ref`` at ``region`` (the outputs of an
        op whose rule computes them together share one), and that rule."""
        if region is None or self.nodes[ref.node].op in ("load", "const"):
            return (ref.node, ref.out, region), None
        op_rule = self(ref, region[0])
        return (ref.node, -1 if op_rule.all_outputs else ref.out, region), op_rule

    def inputs(self, ref: Ref, region: Region) -> List[Tuple[Ref, Region]]:
        """(input, region) pairs computing ``ref`` at ``region`` needs; SKIPped
        inputs are left out."""
        refs = self.nodes[ref.node].inputs
        if region is None:
            return [(r, None) for r in refs]
        ranges = self.input_ranges(ref, region[0], region[1], region[2])
        return [(r, rng) for r, rng in zip(refs, ranges) if rng != SKIP]
