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
) -> Tuple[List[Node], List[int]]:
    """Nodes reachable from ``roots`` in canonical order, and old id -> new id
    (-1 for a node no root reaches)."""
    result: List[Node] = []
    place = result.append
    remap = [-1] * len(nodes)
    visited = bytearray(len(nodes))
    new = tuple.__new__  # Node(...) without NamedTuple's Python-level __new__
    for root in roots:
        stack = [root.node]
        while stack:
            old = stack[-1]
            node = nodes[old]
            if not visited[old]:  # first visit: its unvisited inputs go first, in slot order
                visited[old] = 1
                inputs = node[1]
                if len(inputs) == 1:  # most nodes: inline
                    if not visited[inputs[0].node]:
                        stack.append(inputs[0].node)
                        continue
                elif inputs:
                    waiting = [r.node for r in reversed(inputs) if not visited[r.node]]
                    if waiting:
                        stack += waiting
                        continue
            stack.pop()
            if remap[old] < 0:  # every input is placed: place this node
                op, inputs, args, kwargs, outs = node
                if op == "load":
                    args = [tensor_index[(args[0], args[1])]]
                elif inputs:
                    inputs = [Ref(remap[r.node], r.out) for r in inputs]
                remap[old] = len(result)
                place(new(Node, (op, inputs, args, kwargs, outs)))
    return result, remap
