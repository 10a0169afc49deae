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
_GATHERING = frozenset(["mx.stack", "mx.concatenate", "mx.concat"])


class Replayer:
    def __init__(self, plan: dict):
        self.nodes: List[Node] = plan["nodes"]
        self.rules = regions.Rules(self.nodes)
        self.sources: Dict[tuple, mx.array] = {}  # (tensor index, region) -> array
        self.memo: Dict[tuple, object] = {}  # values with several consumers only
        self._consts: Dict[int, mx.array] = {}
        self._uses = [0] * len(self.nodes)
        for node in self.nodes:
            for r in node.inputs:
                self._uses[r.node] += 1
        for root in plan.get("outputs", []) + plan.get("guards", []):
            self._uses[root["ref"].node] += 1
        self._requests: Dict[tuple, int] = {}  # source piece -> times value() will still ask

    def clear(self):
        self.memo.clear()
        self.sources = {}
        self._requests = {}

    def release_when_used(self, roots: List[Ref], region: Region) -> None:
        """Let each source piece go from ``sources`` once ``value()`` of ``roots``
        has asked for it the last time: once its consumer is evaluated (a
        stacked expert), its buffer is freed. Walks the graph as value() does."""
        counts: Dict[tuple, int] = {}
        memo = set()

        def walk(ref: Ref, reg: Region):
            node = self.nodes[ref.node]
            if node.op == "load":
                key = (node.args[0], reg)
                counts[key] = counts.get(key, 0) + 1
                return
            if node.op == "const":
                return
            if reg is None:
                key = (ref.node, -1, None)
            else:
                key = (ref.node, -1 if self.rules(ref, reg[0]).all_outputs else ref.out, reg)
            if key in memo:
                return
            if self._uses[ref.node] > 1:
                memo.add(key)
            for r, rng in self._inputs(ref, reg):
                walk(r, rng)

        for root in roots:
            walk(root, region)
        self._requests = counts

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
            left = self._requests.get(key)
            if left is None:
                return self.sources[key]
            self._requests[key] = left - 1
            return self.sources.pop(key) if left == 1 else self.sources[key]
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
            if key in self.memo:
                return self.memo[key][ref.out]
            result = call(node, [self._input(node, r, None) for r in node.inputs])
            result = list(result) if isinstance(result, (list, tuple)) else [result]
            if self._uses[ref.node] > 1:
                self.memo[key] = result
            return result[ref.out]
        axis, start, stop = region
        rule = self.rules(ref, axis)
        key = (ref.node, -1 if rule.all_outputs else ref.out, region)
        if key in self.memo:
            result = self.memo[key]
        else:
            pieces = []
            ranges = self.rules.input_ranges(ref, axis, start, stop)
            for r, rng in zip(node.inputs, ranges):
                pieces.append(None if rng == regions.SKIP else self._input(node, r, rng))
            result = rule.call(pieces, start, stop)
            if self._uses[ref.node] > 1:
                self.memo[key] = result
        return result[ref.out] if rule.all_outputs else result
