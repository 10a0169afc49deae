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
    """(files, tensors, index) for every tensor of every loaded file: files sorted
    by name, tensors in data order within each file.

    files: [{"name", "size", "header_sha256", "header_length", "metadata"}];
    tensors: [[file, name, dtype, shape, begin, end]] with absolute byte
    offsets; index: (file name, tensor name) -> position in tensors.
    """
    files, tensors, index = [], [], {}
    for f, name in enumerate(sorted(headers)):
        header = headers[name]
        files.append({
            "name": name,
            "size": header.expected_size,
            "header_sha256": header.sha256,
            "header_length": len(header.header_bytes),
            "metadata": header.metadata,
        })
        for t in sorted(header.tensors.values(), key=lambda t: (t.begin, t.name)):
            index[(name, t.name)] = len(tensors)
            tensors.append([f, t.name, t.dtype, list(t.shape), t.begin, t.end])
    return files, tensors, index


def canonical_nodes(
    nodes: List[Node], roots: List[Ref], tensor_index: dict
) -> Tuple[List[Node], Dict[int, int]]:
    """Nodes reachable from ``roots`` in canonical order, and old id -> new id."""
    order: List[int] = []
    state = bytearray(len(nodes))  # 0 new, 1 inputs pushed, 2 placed
    for root in roots:
        stack = [root.node]
        while stack:
            node = stack[-1]
            if state[node] == 0:
                state[node] = 1
                for r in reversed(nodes[node].inputs):
                    if state[r.node] == 0:
                        stack.append(r.node)
                continue
            stack.pop()
            if state[node] == 1:
                state[node] = 2
                order.append(node)
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
