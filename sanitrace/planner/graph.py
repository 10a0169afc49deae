"""Canonical form of a traced graph: only what the outputs need, in a fixed order.

Nodes are renumbered in depth-first post-order from the outputs (inputs in
slot order), so the numbering depends on the conversion, not on the order in
which sanitize happened to create its arrays. Load nodes refer to the source
tensor table by index.
"""

from typing import Dict, List, Tuple

from ..plan import Node, Ref
from ..safetensors_format import Header


def source_table(headers: Dict[str, Header]) -> Tuple[list, list, dict]:
    """(files, tensors, index) for every tensor of every loaded file, sorted by file and name.

    files: [{"name", "size", "header_sha256"}]; tensors: [[file, name, dtype,
    shape, begin, end]] with absolute byte offsets; index: (file name, tensor
    name) -> position in tensors.
    """
    files, tensors, index = [], [], {}
    for f, name in enumerate(sorted(headers)):
        header = headers[name]
        files.append(
            {"name": name, "size": header.expected_size, "header_sha256": header.sha256}
        )
        for key in sorted(header.tensors):
            t = header.tensors[key]
            index[(name, key)] = len(tensors)
            tensors.append([f, key, t.dtype, list(t.shape), t.begin, t.end])
    return files, tensors, index


def canonical_nodes(
    nodes: List[Node], roots: List[Ref], tensor_index: dict
) -> Tuple[List[Node], Dict[int, int]]:
    """Nodes reachable from ``roots`` in canonical order, and old id -> new id."""
    order: List[int] = []
    seen = set()
    for root in roots:
        stack = [(root.node, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            for r in reversed(nodes[node].inputs):
                if r.node not in seen:
                    stack.append((r.node, False))
    remap = {old: new for new, old in enumerate(order)}
    result = []
    for old in order:
        op, inputs, args, kwargs, outs = nodes[old]
        if op == "load":
            args = [tensor_index[(args[0], args[1])]]
        else:
            inputs = [Ref(remap[r.node], r.out) for r in inputs]
        result.append(Node(op, inputs, args, kwargs, outs))
    return result, remap


def consumers(nodes: List[Node]) -> Dict[int, int]:
    """How many times each node is used as an input."""
    counts: Dict[int, int] = {}
    for n in nodes:
        for r in n.inputs:
            counts[r.node] = counts.get(r.node, 0) + 1
    return counts
