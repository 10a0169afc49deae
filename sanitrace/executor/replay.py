"""Replay: build the lazy mx graph of one output group, whole or for a row range.

Values are requested as (Ref, region) where region is None (whole) or
(axis, start, stop). Chunked requests are pushed down to the sources through
the chunk rules of regions.py, so only the source rows a chunk needs are read.
``reads()`` lists those source pieces first, so they can be read ahead.
"""

from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from .. import regions
from ..plan import Node, Ref, call, const_array

Region = Optional[Tuple[int, int, int]]


class Replayer:
    def __init__(self, plan: dict):
        self.nodes: List[Node] = plan["nodes"]
        self.rules = regions.Rules(self.nodes)
        self.sources: Dict[tuple, mx.array] = {}  # (tensor index, region) -> array
        self.memo: Dict[tuple, object] = {}
        self._consts: Dict[int, mx.array] = {}

    def clear(self):
        self.memo.clear()
        self.sources = {}

    def _inputs(self, ref: Ref, region: Region) -> List[Tuple[Ref, Region]]:
        """(input, region) pairs a value needs; SKIPped inputs are left out."""
        refs = self.nodes[ref.node].inputs
        if region is None:
            return [(r, None) for r in refs]
        ranges = self.rules.input_ranges(ref, region[0], region[1], region[2])
        return [(r, rng) for r, rng in zip(refs, ranges) if rng != regions.SKIP]

    def reads(self, roots: List[Ref], region: Region) -> List[Tuple[int, Region]]:
        """The source pieces (tensor index, region) needed for ``roots`` at ``region``."""
        seen, result = set(), []
        work = [(r, region) for r in roots]
        while work:
            ref, reg = work.pop()
            key = (ref.node, ref.out, reg)
            if key in seen:
                continue
            seen.add(key)
            node = self.nodes[ref.node]
            if node.op == "load":
                result.append((node.args[0], reg))
            elif node.op != "const":
                work.extend(self._inputs(ref, reg))
        return sorted(set(result), key=lambda x: (x[0], x[1] or ()))

    def value(self, ref: Ref, region: Region) -> mx.array:
        node = self.nodes[ref.node]
        if node.op == "load":
            return self.sources[(node.args[0], region)]
        if node.op == "const":
            if ref.node not in self._consts:
                self._consts[ref.node] = const_array(node)
            whole = self._consts[ref.node]
            if region is None:
                return whole
            axis, a, b = region
            return whole[(slice(None),) * axis + (slice(a, b),)]
        if region is None:
            key = (ref.node, -1, None)
            if key not in self.memo:
                result = call(node, [self.value(r, None) for r in node.inputs])
                self.memo[key] = list(result) if isinstance(result, (list, tuple)) else [result]
            return self.memo[key][ref.out]
        axis, start, stop = region
        rule = self.rules(ref, axis)
        key = (ref.node, -1 if rule.all_outputs else ref.out, region)
        if key not in self.memo:
            pieces = []
            ranges = self.rules.input_ranges(ref, axis, start, stop)
            for r, rng in zip(node.inputs, ranges):
                pieces.append(None if rng == regions.SKIP else self.value(r, rng))
            self.memo[key] = rule.call(pieces, start, stop)
        result = self.memo[key]
        return result[ref.out] if rule.all_outputs else result
