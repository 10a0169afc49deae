"""Replay: build the lazy mx graph of one output group, whole or for a row range.

Values are requested as (Ref, region) where region is None (whole) or
(axis, start, stop). Chunked requests are pushed down to the sources through
the chunk rules of regions.py, so only the source rows a chunk needs are read.
``reads()`` lists those source pieces first, so they can be read ahead, and
how often value() will ask for each, so each is let go after its last use.

A value's identity is ``regions.Rules.value_key``, the one the planner costs.
With SANITRACE_INVARIANTS=1 in the environment the replayer checks, as it
goes, that each value it computes has the dtype and shape its key says, that
reads() lists the source pieces the planner counts, and (at clear()) that
value() computed exactly the values the planner costs and asked for exactly
the pieces reads() listed; a failure raises InvariantError.
"""

import os
from typing import Any, Dict, List, Tuple

import mlx.core as mx

from .. import regions
from ..plan import Node, PlanError, Ref, call, const_array, dtype_name

Region = regions.Region
_GATHERING = frozenset(["mx.stack", "mx.concatenate", "mx.concat"])
INVARIANTS = "SANITRACE_INVARIANTS"


class InvariantError(AssertionError):
    """The replayer disagrees with the planner or with itself (a bug in sanitrace)."""


def invariants_on() -> bool:
    """Whether SANITRACE_INVARIANTS=1 is set (read when a Replayer is made)."""
    return os.environ.get(INVARIANTS) == "1"


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
        # values with several consumers only: an array, or the list of a node's outputs
        self.memo: Dict[regions.ValueKey, Any] = {}
        self._consts: Dict[int, mx.array] = {}
        self._uses = [0] * len(self.nodes)
        for node in self.nodes:
            for r in node.inputs:
                self._uses[r.node] += 1
        for root in roots:
            self._uses[root.node] += 1
        self.invariants = invariants_on()
        self._depth = 0
        self._asked: List[Tuple[Ref, Region]] = []  # value() requests from outside since clear()
        self._computed: Dict[regions.ValueKey, int] = {}  # value key -> times computed
        self._taken: Dict[tuple, int] = {}  # source piece -> times value() asked for it

    def clear(self):
        """Forget the values and source pieces of the chunk just computed."""
        if self.invariants:
            self._check_agreement()
        self.memo.clear()
        self.sources = {}
        self.requests = {}
        self._asked, self._computed, self._taken = [], {}, {}

    def _counts(self, asked: List[Tuple[Ref, Region]]) -> Dict[tuple, int]:
        """The source pieces value() asks for to compute ``asked`` (each a (ref,
        region)), with how many times; walks the graph as value() does
        (values with several consumers once)."""
        counts: Dict[tuple, int] = {}
        memo = set()

        def walk(ref: Ref, reg: Region):
            node = self.nodes[ref.node]
            if node.op == "load":
                counts[(node.args[0], reg)] = counts.get((node.args[0], reg), 0) + 1
                return
            if node.op == "const":
                return
            key = self.rules.value_key(ref, reg)[0]
            if key in memo:
                return
            if self._uses[ref.node] > 1:
                memo.add(key)
            for r, rng in self.rules.inputs(ref, reg):
                walk(r, rng)

        for ref, reg in asked:
            walk(ref, reg)
        return counts

    def reads(self, roots: List[Ref], region: Region) -> Dict[Tuple[int, Region], int]:
        """The source pieces (tensor index, region) ``value()`` of ``roots`` at
        ``region`` asks for, in order, with how many times it asks."""
        asked = [(r, region) for r in roots]
        counts = self._counts(asked)
        if self.invariants:
            order, _ = self.rules.walk(asked)
            planned = {(self.nodes[key[0]].args[0], key[2]) for key, _, _ in order if self.nodes[key[0]].op == "load"}
            if planned != set(counts):
                raise InvariantError(
                    f"reads() lists source pieces {sorted(set(counts) ^ planned, key=repr)} "
                    "that the planner does not count, or the reverse"
                )
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
        """Output ``ref`` at ``region`` (None = whole), as a lazy mx array.

        Raises PlanError when a chunk comes out with other rows than asked for
        (the plan's chunk unit does not fit its ops)."""
        if not self.invariants:
            return self._value(ref, region)
        if self._depth == 0:
            self._asked.append((ref, region))
        self._depth += 1
        try:
            return self._value(ref, region)
        finally:
            self._depth -= 1

    def _value(self, ref: Ref, region: Region) -> mx.array:
        node = self.nodes[ref.node]
        if node.op == "load":
            piece = (node.args[0], region)
            if self.invariants:
                self._taken[piece] = self._taken.get(piece, 0) + 1
            left = self.requests.get(piece)
            if left is None:
                return self.sources[piece]
            self.requests[piece] = left - 1
            return self.sources.pop(piece) if left == 1 else self.sources[piece]
        if node.op == "const":
            if ref.node not in self._consts:
                self._consts[ref.node] = const_array(node)
            whole = self._consts[ref.node]
            if region is None:
                return whole
            axis, a, b = region
            return whole[(slice(None),) * axis + (slice(a, b),)]
        key, rule = self.rules.value_key(ref, region)
        result: Any = self.memo.get(key)  # an array, or a list of them (ALL_OUTPUTS)
        if result is None:
            if region is None:
                result = call(node, [self._input(node, r, None) for r in node.inputs])
                result = list(result) if isinstance(result, (list, tuple)) else [result]
            else:
                needed = self.rules.input_regions(ref, *region)
                pieces = [
                    None if rng == regions.SKIP else self._input(node, r, rng) for r, rng in zip(node.inputs, needed)
                ]
                assert rule is not None  # a chunk of a computed value always has a rule
                result = rule.apply(pieces, region[1], region[2])
                _check_rows(node, key, result)
            if self.invariants:
                self._computed[key] = self._computed.get(key, 0) + 1
                _check_value(node, key, result)
            if self._uses[ref.node] > 1:
                self.memo[key] = result
        return result[ref.out] if key[1] == regions.ALL_OUTPUTS else result

    def _check_agreement(self) -> None:
        """value() computed the values the planner costs for what it was asked
        since clear(), and asked for the source pieces reads() lists."""
        order, _ = self.rules.walk(self._asked)
        planned = {key for key, _, _ in order if self.nodes[key[0]].op not in ("load", "const")}
        if set(self._computed) != planned:
            raise InvariantError(
                f"replay computed values {sorted(set(self._computed) ^ planned, key=repr)} "
                "that the planner does not cost, or the reverse"
            )
        expected = self._counts(self._asked)
        if self._taken != expected:
            raise InvariantError(f"value() asked for source pieces {self._taken}, reads() lists {expected}")
        left = {k: n for k, n in self.requests.items() if n}
        if left:
            raise InvariantError(f"source pieces read but not used as often as reads() said: {left}")


def _outputs(node: Node, key: regions.ValueKey, result) -> List[Tuple[list, mx.array]]:
    """(aval of the node's output, produced array) per output the value ``key`` holds."""
    if key[1] == regions.ALL_OUTPUTS:
        if not isinstance(result, (list, tuple)) or len(result) != len(node.outs):
            raise InvariantError(f"value {key} ({node.op}) is not the list of the node's {len(node.outs)} outputs")
        return list(zip(node.outs, result))
    return [(node.outs[key[1]], result)]


def _check_rows(node: Node, key: regions.ValueKey, result) -> None:
    """A chunk of a value has the rows its region asks for."""
    assert key[2] is not None  # only chunks are checked
    axis, start, stop = key[2]
    arrays = result if isinstance(result, (list, tuple)) else [result]
    for array in arrays:
        if array.ndim <= axis or array.shape[axis] != stop - start:
            raise PlanError(
                f"replay of {node.op} (node {key[0]}) rows {start}:{stop} along axis {axis} gave shape "
                f"{list(array.shape)}: the plan's chunk unit does not fit its ops"
            )


def _check_value(node: Node, key: regions.ValueKey, result) -> None:
    """The value ``key`` has the dtype and shape the planner costs it at."""
    for aval, array in _outputs(node, key, result):
        shape = regions.region_shape(aval, key[2])
        if list(array.shape) != shape or dtype_name(array.dtype) != aval[0]:
            raise InvariantError(
                f"value {key} ({node.op}) is {dtype_name(array.dtype)}{list(array.shape)}, "
                f"the planner costs {aval[0]}{shape}"
            )
