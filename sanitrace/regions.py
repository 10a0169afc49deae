"""Regions: push a row range of an output down a plan graph to the source pieces it needs.

``Rules`` applies the per-op rules of chunk_rules.py to one graph, caching them,
and derives each value's granularity (the multiple chunk boundaries must be).
Used by the planner (to choose and cost chunks) and the executor (to replay them).
"""

from typing import List

from .chunk_rules import SKIP, NotChunkable, Rule, rule
from .plan import Node, Ref

__all__ = ["Rules", "input_avals", "NotChunkable", "SKIP", "Rule"]


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
