"""Semantic diff of two plans, readable in a pull-request comment.

Outputs are compared by name: added, removed, renamed (same dtype, shape and
op chain under another name), changed (dtype/shape/op chain/quantization);
then the dropped sources, the options and library versions, the shards, the
output's bits per weight (a note) and the predicted memory. Lines that differ
only in a layer or expert number collapse as in ``show``.
"""

from typing import Dict, List

from .collapse import collapse_numbers, human_bytes
from .lint import bits_per_weight
from .plan import Plan
from .show import Renderer, aval_text


def _outputs(plan: Plan) -> Dict[str, str]:
    r = Renderer(plan)
    return {o.name: f"{aval_text(o.dtype, o.shape)} = {r.expr(o.ref)}" for o in plan.outputs}


def _files(plan: Plan, kind: str) -> Dict[str, bytes]:
    """The plan's output files of ``kind``, in order: name -> data (empty for shards)."""
    return {f.name: f.data for f in plan.files if f.kind == kind}


def _side_files(plan: Plan) -> Dict[str, tuple]:
    """The plan's files besides the shards: name -> what determines their bytes."""
    return {f.name: (f.kind, f.data, f.base, f.sha256) for f in plan.files if f.kind != "safetensors"}


def _fields(label: str, old: dict, new: dict) -> List[str]:
    return [
        f"{label}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def diff(old: Plan, new: Plan) -> List[str]:
    """How ``new`` differs from ``old``, for review.

    Args:
        old: the plan before.
        new: the plan after.

    Returns:
        Lines describing the differences (an entry of a changed output spans
        several lines, joined by newlines); empty when the plans agree.
    """
    lines: List[str] = []
    if old.library != new.library:
        lines.append(f"library: {old.library} -> {new.library}")
    lines += _fields("options", old.options, new.options)
    lines += _fields("versions", old.versions, new.versions)

    before, after = _outputs(old), _outputs(new)
    removed = sorted(before.keys() - after.keys())
    added = sorted(after.keys() - before.keys())
    by_value: Dict[str, List[str]] = {}
    for name in added:
        by_value.setdefault(after[name], []).append(name)
    renamed = []
    for name in list(removed):
        match = by_value.get(before[name])
        if match:
            renamed.append(f"{name} -> {match.pop(0)}")
            removed.remove(name)
    added = [n for names in by_value.values() for n in names]
    changed = [
        f"{name}:\n      - {before[name]}\n      + {after[name]}"
        for name in sorted(before.keys() & after.keys())
        if before[name] != after[name]
    ]
    for title, items, mark in (
        ("outputs removed", [f"{n}: {before[n]}" for n in removed], "-"),
        ("outputs added", [f"{n}: {after[n]}" for n in sorted(added)], "+"),
        ("outputs renamed", renamed, "~"),
        ("outputs changed", changed, "!"),
    ):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {mark} {line}" for line in collapse_numbers(items)]

    for what, a, b in (
        ("loads", old.accounting.loads, new.accounting.loads),
        ("tokenizer", old.accounting.tokenizer or "written", new.accounting.tokenizer or "written"),
    ):
        if a != b:
            lines.append(f"{what}: {a} -> {b}")
    old_dropped = {(d.name, d.reason) for d in old.accounting.dropped}
    new_dropped = {(d.name, d.reason) for d in new.accounting.dropped}
    for title, pairs, mark in (
        ("sources newly dropped", sorted(new_dropped - old_dropped), "+"),
        ("sources no longer dropped", sorted(old_dropped - new_dropped), "-"),
    ):
        if pairs:
            lines.append(f"{title} ({len(pairs)}):")
            lines += [f"  {mark} {line}" for line in collapse_numbers([f"{n} ({why})" for n, why in pairs])]

    old_shards, new_shards = _files(old, "safetensors"), _files(new, "safetensors")
    if list(old_shards) != list(new_shards):
        lines.append(f"shards: {len(old_shards)} -> {len(new_shards)}")
    old_bits, new_bits = bits_per_weight(old), bits_per_weight(new)
    if f"{old_bits:.3f}" != f"{new_bits:.3f}":
        lines.append(f"note bits-per-weight: {old_bits:.3f} -> {new_bits:.3f} bits per weight of the output")
    if old.memory.predicted_peak != new.memory.predicted_peak:
        lines.append(
            f"memory: predicted peak {human_bytes(old.memory.predicted_peak)} -> "
            f"{human_bytes(new.memory.predicted_peak)}"
        )
    old_texts, new_texts = _side_files(old), _side_files(new)
    for name in sorted(old_texts.keys() | new_texts.keys()):
        if old_texts.get(name) != new_texts.get(name):
            lines.append(f"{name}: content changed")
    return lines
