"""Output groups, chunk granularity, and the memory each chunk needs.

Outputs that share a computed node (the weight, scales and biases of one
``mx.quantize``; the two MLA halves of one ``kv_b_proj``) form a group and are
computed together. A group whose outputs all have the same leading size is cut
into row ranges along axis 0 when every op between the sources and the outputs
has a chunk rule (regions.py); the range must be a multiple of the group's
granularity.

Memory is estimated from the graph alone (see ``Chunker.cost``) and is linear
in the chunk length: ``fixed + units * per_unit``.
"""

from typing import Dict, List, Optional, Tuple

from .. import regions
from ..plan import BASELINE_BYTES, VIEW_OPS, Node, Ref, cache_limit, chunk_rows, group_peak
from .layout import nbytes


def groups_of(nodes: List[Node], outputs: List[dict]) -> List[List[int]]:
    """Output indices grouped by shared computed (non-load, non-const) nodes."""
    parent = list(range(len(outputs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: Dict[int, int] = {}
    for i, out in enumerate(outputs):
        stack = [out["ref"].node]
        while stack:
            n = stack.pop()
            if nodes[n].op in ("load", "const"):
                continue
            if n in owner:  # walked before, with everything below it: just join
                parent[find(i)] = find(owner[n])
                continue
            owner[n] = i
            stack.extend(r.node for r in nodes[n].inputs)
    members: Dict[int, List[int]] = {}
    for i in range(len(outputs)):
        members.setdefault(find(i), []).append(i)
    return sorted(members.values())


class Chunker:
    """Granularity and memory cost of computing outputs of one graph in chunks."""

    def __init__(self, nodes: List[Node]):
        self.nodes = nodes
        self.rule = regions.Rules(nodes)
        self.granularity = self.rule.granularity

    def cost(self, roots: List[Ref], start: Optional[int], stop: Optional[int]) -> int:
        """Peak bytes of the executor pipeline for rows start:stop of ``roots``
        along axis 0 (whole values when start is None): every array the chunk
        creates (views are free), plus the next chunk's source reads and the
        previous chunk's outputs, taken to be the same size."""
        seen = set()
        created, read = 0, 0
        work = [(r, None if start is None else (0, start, stop)) for r in roots]
        while work:
            ref, region = work.pop()
            node = self.nodes[ref.node]
            op = node.op
            rule = None if region is None or op in ("load", "const") else self.rule(ref, region[0])
            key = (ref.node, -1 if rule is not None and rule.all_outputs else ref.out, region)
            if key in seen:
                continue
            seen.add(key)
            outs = range(len(node.outs)) if rule is not None and rule.all_outputs else [ref.out]
            for o in outs:
                size = nbytes(node.outs[o])
                if region is not None:
                    axis, a, b = region
                    size = size * (b - a) // max(node.outs[o][1][axis], 1)
                if op == "load":
                    read += size
                if op not in VIEW_OPS:
                    created += size
            if op in ("load", "const"):
                continue
            if rule is None:
                work.extend((r, None) for r in node.inputs)
                continue
            ranges = self.rule.input_ranges(ref, region[0], region[1], region[2])
            for r, rng in zip(node.inputs, ranges):
                if rng != regions.SKIP:
                    work.append((r, rng))
        written = 0
        for r in roots:
            aval = self.nodes[r.node].outs[r.out]
            size = nbytes(aval)
            if start is not None:
                size = size * (stop - start) // max(aval[1][0], 1)
            written += size
        return created + read + written


def plan_groups(nodes: List[Node], outputs: List[dict]) -> List[dict]:
    """One entry per output group: chunking (if any) and its linear memory model."""
    chunker = Chunker(nodes)
    result = []
    for members in groups_of(nodes, outputs):
        roots = [outputs[i]["ref"] for i in members]
        rows = {outputs[i]["shape"][0] if outputs[i]["shape"] else 0 for i in members}
        unit = None
        if len(rows) == 1 and next(iter(rows)) > 1:
            try:
                unit = max(chunker.granularity(r, 0) for r in roots)
            except regions.NotChunkable:
                unit = None
        entry = {"outputs": members, "rows": next(iter(rows)) if len(rows) == 1 else 0}
        if unit is None or unit >= entry["rows"]:
            entry.update(unit=0, fixed_bytes=chunker.cost(roots, None, None), unit_bytes=0)
        else:
            one = chunker.cost(roots, 0, unit)
            two = chunker.cost(roots, 0, 2 * unit)
            per_unit = max(two - one, 0)
            entry.update(unit=unit, fixed_bytes=max(one - per_unit, 0), unit_bytes=per_unit)
        result.append(entry)
    return result


def predicted_peak(groups: List[dict], budget: int) -> Tuple[int, int]:
    """(predicted peak RSS, index of the group that sets it) under ``budget``."""
    worst, which = 0, -1
    for i, g in enumerate(groups):
        peak = group_peak(g, chunk_rows(g, budget))
        if peak > worst:
            worst, which = peak, i
    # the buffer cache only holds what earlier chunks freed: at most one more working set
    return BASELINE_BYTES + min(cache_limit(budget), worst) + worst, which
