"""Canonical form of a traced graph: only what the outputs need, in a fixed order.

Nodes are renumbered in depth-first post-order from the outputs (inputs in
slot order), so the numbering depends on the conversion, not on the order in
which sanitize happened to create its arrays. The source tensor table gives
each loaded tensor the index a load node refers to in the plan. ``structure``
identifies the graph computing a set of roots up to numbering.
"""

from typing import Dict, List, Sequence, Tuple

from ..plan import Node, Ref, SourceFile, SourceTensor
from ..safetensors_format import Header


def source_table(headers: Dict[str, Header]) -> Tuple[List[SourceFile], List[SourceTensor], dict]:
    """(files, tensors, index) for every tensor of every loaded file: files sorted
    by name, tensors in data order within each file.

    index: (file name, tensor name) -> position in tensors.
    """
    files: List[SourceFile] = []
    tensors: List[SourceTensor] = []
    index: Dict[Tuple[str, str], int] = {}
    new = tuple.__new__  # SourceTensor(...) without NamedTuple's Python-level __new__ (Kimi-K2.6: 208,550)
    for f, name in enumerate(sorted(headers)):
        header = headers[name]
        files.append(SourceFile(name, header.expected_size, header.sha256, len(header.header_bytes), header.metadata))
        for t in header.in_data_order():
            index[(name, t.name)] = len(tensors)
            tensors.append(new(SourceTensor, (f, *t)))  # TensorInfo's fields (shape a tuple) after the file
    return files, tensors, index


def canonical_order(nodes: List[Node], roots: List[Ref]) -> Tuple[List[int], List[int]]:
    """The nodes reachable from ``roots`` in canonical order (their ids), and old
    id -> new id (-1 for a node no root reaches)."""
    order: List[int] = []
    place = order.append
    remap = [-1] * len(nodes)
    visited = bytearray(len(nodes))
    for root in roots:
        stack = [root.node]
        while stack:
            old = stack[-1]
            if not visited[old]:  # first visit: its unvisited inputs go first, in slot order
                visited[old] = 1
                inputs = nodes[old][1]
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
                remap[old] = len(order)
                place(old)
    return order, remap


def structure(nodes: List[Node], labels: Sequence[int], roots: List[Ref]) -> tuple:
    """The graph computing ``roots`` up to numbering: equal for two sets of roots
    exactly when their graphs are the same but for node ids (node for node the
    same label and inputs, shared nodes shared alike). ``labels``: each node's
    signature (``encode_graph``: op, arguments and outputs; a load's is its dtype
    and shape). Nodes are numbered in depth-first pre-order from the roots,
    inputs in slot order."""
    local: Dict[int, int] = {}
    seen: List[int] = []
    stack = [r.node for r in reversed(roots)]
    while stack:
        n = stack.pop()
        if n in local:
            continue
        local[n] = len(seen)
        seen.append(n)
        inputs = nodes[n][1]
        if len(inputs) == 1:  # most nodes
            stack.append(inputs[0].node)
        elif inputs:
            stack.extend([r.node for r in reversed(inputs)])
    key: list = []
    for n in seen:
        inputs = nodes[n][1]
        if len(inputs) == 1:  # most nodes
            key.append((labels[n], local[inputs[0].node], inputs[0].out))
        else:
            key.append((labels[n], *[x for r in inputs for x in (local[r.node], r.out)]))
    key.extend((local[r.node], r.out) for r in roots)
    return tuple(key)
