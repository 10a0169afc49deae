"""Accounting: every source tensor used or dropped (with why), every output produced once."""

from typing import List

from ..plan import Accounting, Dropped, Node, Output


def account(
    raw_nodes: List[Node],
    remap: List[int],
    tensor_index: dict,
    loaded_keys: List[str],
    outputs: List[Output],
) -> Accounting:
    """Summary of what happened to each source tensor and output.

    A source tensor is *used* when an output depends on it. Otherwise it is
    dropped: "removed by sanitize" when no op ever read it, or "read only by
    discarded ops" when sanitize used it for something that never reached an
    output.
    """
    # a load that no output needs can only be read by ops no output needs
    read = {r.node for i, n in enumerate(raw_nodes) if remap[i] < 0 for r in n.inputs}
    used, dropped = 0, []
    for i, node in enumerate(raw_nodes):
        if node.op != "load":
            continue
        if remap[i] >= 0:
            used += 1
            continue
        reason = "read only by discarded ops" if i in read else "removed by sanitize"
        dropped.append(Dropped(node.args[0], node.args[1], reason))
    dropped.sort()
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ValueError("an output name appears twice")
    return Accounting(len(tensor_index), used, tuple(dropped), len(outputs), "ok", len(loaded_keys))
