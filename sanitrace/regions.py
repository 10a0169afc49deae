"""Regions: push a row range of an output down a plan graph to the source pieces it needs.

``Rules`` applies the per-op chunk rules of chunk_registry.py (``ChunkRule``) to one
graph, caching them, and derives each value's granularity (the multiple chunk
boundaries must be).
Used by the planner (to choose and cost chunks) and the executor (to replay them).

The identity of a value, ``(node, out, region)``, is defined here once
(``Rules.value_key``): the planner costs one value per key and the executor
computes (and memoizes) one per key.
"""

from typing import Dict, List, Optional, Tuple

from .chunk_registry import rule
from .chunk_rules import SKIP, ChunkRule, NotChunkable
from .plan import Node, Ref

__all__ = [
    "Rules",
    "Region",
    "ValueKey",
    "ALL_OUTPUTS",
    "region_shape",
    "input_avals",
    "NotChunkable",
    "SKIP",
    "ChunkRule",
]

Region = Optional[Tuple[int, int, int]]  # (axis, start, stop); None = the whole value
ValueKey = Tuple[int, int, Region]  # (node, out or ALL_OUTPUTS, region)
ALL_OUTPUTS = -1  # the ``out`` of a value that is every output of its node, computed at once


def region_shape(aval: list, region: Region) -> List[int]:
    """The shape of the part of a value with ``aval`` that ``region`` covers."""
    shape = list(aval[1])
    if region is not None:
        axis, start, stop = region
        shape[axis] = stop - start
    return shape


def input_avals(nodes: List[Node], node: Node) -> list:
    """[dtype, shape] of each input of ``node``."""
    return [nodes[r.node].outs[r.out] for r in node.inputs]


class Rules:
    """Chunk rules and granularities of one graph, cached per (node, output, axis)."""

    def __init__(self, nodes: List[Node]):
        self.nodes = nodes
        self._rules: dict = {}
        self._granularity: dict = {}

    def __call__(self, ref: Ref, axis: int) -> ChunkRule:
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

    def _input_granularities(self, ref: Ref, op_rule: ChunkRule) -> List[int]:
        return [
            self.granularity(r, j) if j is not None else 1 for r, j in zip(self.nodes[ref.node].inputs, op_rule.in_axes)
        ]

    def input_regions(self, ref: Ref, axis: int, start: int, stop: int) -> list:
        """Per array input of ref's node: its Region (axis, start, stop), None
        (whole) or SKIP, for rows start:stop of ``ref`` along ``axis``."""
        op_rule = self(ref, axis)
        gs = self._input_granularities(ref, op_rule)
        return [
            rng if rng is None or rng == SKIP else (j, rng[0], rng[1])
            for j, rng in zip(op_rule.in_axes, op_rule.input_regions(start, stop, gs))
        ]

    def value_key(self, ref: Ref, region: Region) -> Tuple[ValueKey, Optional[ChunkRule]]:
        """The identity of the value computing ``ref`` at ``region``, and the chunk
        rule computing it (None for a source, a constant or a whole value).

        The key is ``(node, out, region)``; ``out`` is ALL_OUTPUTS when that
        computation yields every output of the node at once: an op computed
        whole (the executor calls it once for all its outputs) or a chunk rule
        with ``all_outputs`` (quantize). Such a value is the list of the node's
        outputs, each cut to ``region``; any other is the one output ``out``
        cut to ``region``. Sources and constants are keyed per output."""
        if self.nodes[ref.node].op in ("load", "const"):
            return (ref.node, ref.out, region), None
        if region is None:
            return (ref.node, ALL_OUTPUTS, None), None
        op_rule = self(ref, region[0])
        return (ref.node, ALL_OUTPUTS if op_rule.all_outputs else ref.out, region), op_rule

    def walk(
        self, roots: List[Tuple[Ref, Region]]
    ) -> Tuple[List[Tuple[ValueKey, Optional[ChunkRule], Ref]], Dict[ValueKey, List[ValueKey]]]:
        """Every value computing ``roots`` (each a (ref, region)) needs, once per
        key: ``(key, rule, ref)`` in the depth-first order mlx evaluates them in
        (inputs first), and each computed value's input keys (sources and
        constants have none)."""
        seen: Dict[ValueKey, bool] = {}  # key -> placed
        order: List[Tuple[ValueKey, Optional[ChunkRule], Ref]] = []
        inputs: Dict[ValueKey, List[ValueKey]] = {}
        stack = [self.value_key(r, reg) + (r,) for r, reg in reversed(roots)]
        while stack:
            key, rule, ref = stack[-1]
            if key in seen:
                stack.pop()
                if not seen[key]:  # inputs done: place it
                    seen[key] = True
                    order.append((key, rule, ref))
                continue
            seen[key] = False
            if self.nodes[ref.node].op in ("load", "const"):
                continue
            keys = [self.value_key(r, rng) + (r,) for r, rng in self.inputs(ref, key[2])]
            inputs[key] = [k for k, _, _ in keys]
            stack.extend(k for k in reversed(keys) if k[0] not in seen)
        return order, inputs

    def inputs(self, ref: Ref, region: Region) -> List[Tuple[Ref, Region]]:
        """(input, region) pairs computing ``ref`` at ``region`` needs; SKIPped
        inputs are left out."""
        refs = self.nodes[ref.node].inputs
        if region is None:
            return [(r, None) for r in refs]
        needed = self.input_regions(ref, region[0], region[1], region[2])
        return [(r, rng) for r, rng in zip(refs, needed) if rng != SKIP]
