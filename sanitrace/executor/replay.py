"""Replay: build the lazy mx graph of one output group, whole or for a row range.

Values are requested as (Ref, region) where region is None (whole) or
(axis, start, stop). Chunked requests are pushed down to the sources through
the chunk rules of regions.py, so only the source rows a chunk needs are read.
``reads()`` lists those source pieces first, so they can be read ahead, and
how often value() will ask for each, so each is let go after its last use.
"""

from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from .. import regions
from ..plan import Node, Ref, call, const_array

Region = regions.Region
_GATHERING = frozenset(["mx.stack", "mx.concatenate", "mx.concat"])


class Replayer:
    def __init__(self, nodes: List[Node], roots: List[Ref]):
        """Replays ``nodes``; ``roots`` are the refs values will be asked for
        (a plan's outputs and guards), each counted as one more use."""
        self.nodes = nodes
        self.rules = regions.Rules(self.nodes)
        self.sources: Dict[tuple, mx.array] = {}  # (tensor index, region) -> array
        # source piece -> times value() will still ask for it (from reads()); a piece
        # is let go when asked for the last time, so once its consumer is
        # evaluated (a stacked expert) its buffer is freed
        self.requests: Dict[tuple, int] = {}
        self.memo: Dict[tuple, object] = {}  # values with several consumers only
        self._consts: Dict[int, mx.array] = {}
        self._uses = [0] * len(self.nodes)
        for node in self.nodes:
            for r in node.inputs:
                self._uses[r.node] += 1
        for root in roots:
            self._uses[root.node] += 1

    def clear(self):
        self.memo.clear()
        self.sources = {}
        self.requests = {}

    def _memo_key(self, ref: Ref, region: Region) -> Tuple[tuple, Optional[regions.Rule]]:
        """Key of the value computing ``ref`` at ``region``: a whole value
        computes all outputs of its op at once."""
        if region is None:
            return (ref.node, -1, None), None
        return self.rules.value_key(ref, region)

    def reads(self, roots: List[Ref], region: Region) -> Dict[Tuple[int, Region], int]:
        """The source pieces (tensor index, region) ``value()`` of ``roots`` at
        ``region`` asks for, in order, with how many times it asks; walks the
        graph as value() does (values with several consumers once)."""
        counts: Dict[tuple, int] = {}
        memo = set()

        def walk(ref: Ref, reg: Region):
            node = self.nodes[ref.node]
            if node.op == "load":
                counts[(node.args[0], reg)] = counts.get((node.args[0], reg), 0) + 1
                return
            if node.op == "const":
                return
            key = self._memo_key(ref, reg)[0]
            if key in memo:
                return
            if self._uses[ref.node] > 1:
                memo.add(key)
            for r, rng in self.rules.inputs(ref, reg):
                walk(r, rng)

        for root in roots:
            walk(root, region)
        return {key: counts[key] for key in sorted(counts, key=lambda x: (x[0], x[1] or ()))}

    def _input(self, node: Node, ref: Ref, region: Region) -> mx.array:
        """An input of ``node``; inputs of a stack or concatenation (one per expert)
        are evaluated one at a time, so only one expert's chain of temporaries is
        alive at once (mlx would otherwise run all chains side by side)."""
        value = self.value(ref, region)
        if node.op in _GATHERING:
            mx.eval(value)
        return value

    def value(self, ref: Ref, region: Region) -> mx.array:
        node = self.nodes[ref.node]
        if node.op == "load":
            key = (node.args[0], region)
            left = self.requests.get(key)
            if left is None:
                return self.sources[key]
            self.requests[key] = left - 1
            return self.sources.pop(key) if left == 1 else self.sources[key]
        if node.op == "const":
            if ref.node not in self._consts:
                self._consts[ref.node] = const_array(node)
            whole = self._consts[ref.node]
            if region is None:
                return whole
            axis, a, b = region
            return whole[(slice(None),) * axis + (slice(a, b),)]
        key, rule = self._memo_key(ref, region)
        result = self.memo.get(key)
        if result is None:
            if region is None:
                result = call(node, [self._input(node, r, None) for r in node.inputs])
                result = list(result) if isinstance(result, (list, tuple)) else [result]
            else:
                ranges = self.rules.input_ranges(ref, *region)
                pieces = [None if rng == regions.SKIP else self._input(node, r, rng)
                          for r, rng in zip(node.inputs, ranges)]
                result = rule.call(pieces, region[1], region[2])
            if self._uses[ref.node] > 1:
                self.memo[key] = result
        return result[ref.out] if region is None or rule.all_outputs else result
