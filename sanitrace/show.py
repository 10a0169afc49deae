"""Text rendering of a plan for review: stable, compact, one line per output group.

Each output is shown as an expression over source tensor names. Lines and lists
that differ only in numbers collapse to the sets they cover (``experts.{0..255}``,
``layers.{3..59..4}``, ``layers.{1..60}.experts.{0..383}``; see ``collapse``), and
well-known source-format chains are named instead of spelled out op by op
(``fp8_block_dequant(W, W_scale_inv, 128x128)``); the plan itself keeps every op.
"""

import collections
import hashlib
from typing import Dict, List, Optional

from .collapse import collapse, collapse_numbers, human_bytes
from .plan import Group, Node, Output, OutputFile, Plan, Ref, Slot, dtype_name
from .planner.memory import chunk_rows, plan_baseline

_INFIX = {
    "__add__": "+",
    "__sub__": "-",
    "__mul__": "*",
    "__truediv__": "/",
    "__matmul__": "@",
    "__lshift__": "<<",
    "__rshift__": ">>",
    "__and__": "&",
    "__or__": "|",
    "__xor__": "^",
    "__eq__": "==",
    "__ne__": "!=",
    "__lt__": "<",
    "__le__": "<=",
    "__gt__": ">",
    "__ge__": ">=",
    "__floordiv__": "//",
    "__mod__": "%",
    "__pow__": "**",
}
_REFLECTED = {f"__r{k[2:]}": v for k, v in _INFIX.items()}

_PLAIN = {int, float, str, bool, type(None)}
_RECOGNIZED = {"array.astype", "array.flatten", "array.view"}  # ops that may end a named chain


class Renderer:
    """Expressions over source names; lists of arguments that differ only in
    numbers (the experts of a stack) collapse unless ``collapse_lists`` is false.

    Args:
        plan: the plan whose nodes to render.
        collapse_lists: collapse such lists (and abbreviate constants).
    """

    def __init__(self, plan: Plan, collapse_lists: bool = True):
        self.nodes: List[Node] = plan.nodes
        self.collapse_lists = collapse_lists
        self.tensors = plan.source.tensors
        self.files = plan.source.files
        self._exprs: Dict[tuple, str] = {}
        names = collections.Counter(t.name for t in self.tensors)
        self._ambiguous = {n for n, count in names.items() if count > 1}  # named with their file

    def _input(self, node: Node, i: int, op: str) -> Optional[Node]:
        """Input ``i`` of ``node`` when it is an ``op`` node."""
        if len(node.inputs) <= i:
            return None
        child = self.nodes[node.inputs[i].node]
        return child if child.op == op else None

    def recognize(self, ref: Ref) -> Optional[str]:
        """A name for the source-format chains sanitize code spells out op by op."""
        node = self.nodes[ref.node]
        if node.op == "array.astype":
            # FP8 block dequant: from_fp8 -> pad -> reshape to blocks -> * scale[:, None, :, None]
            # -> reshape -> crop -> astype
            crop = self._input(node, 0, "array.__getitem__")
            flat = crop and self._input(crop, 0, "array.reshape")
            mul = flat and self._input(flat, 0, "array.__mul__")
            blocks = mul and self._input(mul, 0, "array.reshape")
            pad = blocks and self._input(blocks, 0, "mx.pad")
            decode = pad and self._input(pad, 0, "mx.from_fp8")
            scale = mul and self._input(mul, 1, "array.__getitem__")
            if blocks and decode and scale:
                _, rows, _, cols = blocks.outs[0][1]
                return (
                    f"fp8_block_dequant({self.expr(decode.inputs[0])}, {self.expr(scale.inputs[0])}, "
                    f"{rows}x{cols}, {self.literal(node.args[1], [])})"
                )
        elif node.op == "array.flatten":
            view = self._input(node, 0, "array.view")
            blocks = view and self._input(view, 0, "load")
            if view and blocks:
                return f"mxfp4_blocks({self.expr(view.inputs[0])})"
        elif node.op == "array.view" and self._input(node, 0, "load"):
            return f"{self.expr(node.inputs[0])}.view({self.literal(node.args[1], [])})"
        return None

    def literal(self, value, inputs: List[str]) -> str:
        kind = type(value)
        if kind is Slot:
            return inputs[value.index]
        if kind in _PLAIN:
            return repr(value)
        if isinstance(value, tuple):
            inner = [self.literal(v, inputs) for v in value]
            return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
        if isinstance(value, list):
            items = [self.literal(v, inputs) for v in value]
            return "[" + (collapse(items) if self.collapse_lists else ", ".join(items)) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {self.literal(v, inputs)}" for k, v in value.items()) + "}"
        if isinstance(value, slice):
            parts = ["" if x is None else str(x) for x in (value.start, value.stop, value.step)]
            return ":".join(parts[:2]) + (f":{parts[2]}" if value.step is not None else "")
        if value is Ellipsis:
            return "..."
        if type(value).__name__ == "Dtype":
            return dtype_name(value)
        return repr(value)

    def expr(self, ref: Ref) -> str:
        key = (ref.node, ref.out)
        if key not in self._exprs:
            self._exprs[key] = self._expr(ref)
        return self._exprs[key]

    def _expr(self, ref: Ref) -> str:
        node = self.nodes[ref.node]
        if node.op == "load":
            t = self.tensors[node.args[0]]
            return f"{self.files[t.file].name}:{t.name}" if t.name in self._ambiguous else t.name
        if node.op == "const":
            dtype, shape = node.outs[0]
            if self.collapse_lists:
                return f"const {dtype}{shape}"
            return f"const {dtype}{shape} sha256:{hashlib.sha256(node.args[0]).hexdigest()[:16]}"
        text = self.recognize(ref) if node.op in _RECOGNIZED else None
        if text is None:
            text = self._call(node, [self.expr(r) for r in node.inputs])
        return text + (f"[{ref.out}]" if len(node.outs) > 1 else "")

    def _call(self, node: Node, inputs: List[str]) -> str:
        name = node.op.split(".", 1)[1]
        args = [self.literal(a, inputs) for a in node.args]
        keywords = [f"{k}={self.literal(v, inputs)}" for k, v in node.kwargs.items()]
        if node.op.startswith("array."):
            if name == "__getitem__":
                index = node.args[1]
                inner = ", ".join(self.literal(i, inputs) for i in index) if isinstance(index, tuple) else args[1]
                return f"{args[0]}[{inner}]"
            if name in _INFIX and len(args) == 2:
                return f"({args[0]} {_INFIX[name]} {args[1]})"
            if name in _REFLECTED and len(args) == 2:
                return f"({args[1]} {_REFLECTED[name]} {args[0]})"
            if name == "__neg__":
                return f"-{args[0]}"
            if name in ("T", "mT"):
                return f"{args[0]}.{name}"
            return f"{args[0]}.{name}({', '.join(args[1:] + keywords)})"
        return f"{name}({', '.join(args + keywords)})"


def _chunking(group: Group, budget: int, baseline: int) -> str:
    rows = chunk_rows(group, budget, baseline)
    if rows:
        return f"  [{-(-group.rows // rows)} chunks of {rows} rows]"
    if not group.unit and group.rows > 1:
        return "  [not chunkable]"
    return ""


def aval_text(dtype: str, shape) -> str:
    """A tensor's type as shown.

    Args:
        dtype: the dtype's name.
        shape: the shape.

    Returns:
        e.g. 'bfloat16[4, 8]'.
    """
    return f"{dtype}{list(shape)}"


def output_lines(plan: Plan, full: bool = False) -> List[str]:
    """The outputs section of ``render``, before collapsing across layers.

    Args:
        plan: the plan.
        full: one line per output tensor with its file, offset and every input.

    Returns:
        One line per output node (weight/scales/biases of one quantize share a
        line), or per output tensor when ``full``, in the plan's group order.
    """
    r = Renderer(plan, collapse_lists=not full)
    outputs, budget, baseline = plan.outputs, plan.memory.budget, plan_baseline(plan)
    lines = []
    for group in plan.groups:
        members = [outputs[i] for i in group.outputs]
        chunk = _chunking(group, budget, baseline)
        if full:
            for o in members:
                where = f"{plan.files[o.file].name}@{o.offset}"
                lines.append(f"{o.name}: {aval_text(o.dtype, o.shape)} {where} = {r.expr(o.ref)}{chunk}")
            continue
        by_node: Dict[int, List[Output]] = {}
        for out in members:
            by_node.setdefault(out.ref.node, []).append(out)
        for node, outs in by_node.items():
            if len(outs) > 1:
                prefix = outs[0].name.rsplit(".", 1)[0]
                names = prefix + ".{" + ",".join(o.name.rsplit(".", 1)[1] for o in outs) + "}"
                types = ", ".join(aval_text(o.dtype, o.shape) for o in outs)
                expr = r.expr(Ref(node, 0)).rsplit("[", 1)[0]
            else:
                names, types, expr = outs[0].name, aval_text(outs[0].dtype, outs[0].shape), r.expr(outs[0].ref)
            lines.append(f"{names}: {types} = {expr}{chunk}")
    return lines


def dropped_lines(plan: Plan, full: bool = False) -> List[str]:
    """The dropped sources section of ``render``.

    Args:
        plan: the plan.
        full: one line per dropped tensor, with its file.

    Returns:
        "name (reason)" lines, unless ``full`` one per family of names that
        differ only in numbers (layers, experts, MTP layers), with its reason
        once; empty when nothing is dropped.
    """
    dropped = plan.accounting.dropped
    if full:
        return [f"{d.name} ({d.reason}) in {d.file}" for d in dropped]
    return collapse_numbers([f"{d.name} ({d.reason})" for d in dropped])


def header_lines(plan: Plan) -> List[str]:
    """The header of ``render``: versions, digest, options, source, output,
    memory, accounting, load check and side files.

    Args:
        plan: the plan.

    Returns:
        One line each.
    """
    v, opts, mem, acc = plan.versions, plan.options, plan.memory, plan.accounting
    set_opts = " ".join(f"{k}={opts[k]}" for k in sorted(opts) if opts[k] not in (None, False))
    shards = [f.name for f in plan.shards]
    source_bytes = sum(t.end - t.begin for t in plan.source.tensors)
    return [
        f"# sanitrace plan v{plan.version}: {plan.library} "
        f"(sanitrace {v.get('sanitrace')}, mlx {v.get('mlx')}, mlx-lm {v.get('mlx-lm')}, mlx-vlm {v.get('mlx-vlm')})",
        f"digest: {plan.digest}",
        f"options: {set_opts or 'defaults'}",
        f"source: {len(plan.source.files)} files, {len(plan.source.tensors)} tensors, {human_bytes(source_bytes)}",
        f"output: {len(plan.outputs)} tensors, {human_bytes(plan.output_bytes)} "
        f"in {len(shards)} shards ({', '.join(collapse_numbers(shards))})",
        f"memory: predicted peak {human_bytes(mem.predicted_peak)} at budget {human_bytes(mem.budget)}",
        f"accounting: {acc.source_tensors} source tensors = {acc.used_sources} used + "
        f"{len(acc.dropped)} dropped; {acc.outputs} outputs; strict load {acc.strict_load}",
        f"loads: {loads_text(acc.loads, plan.library)}",
        f"side files: {', '.join(side_file_text(f) for f in plan.files if f.kind != 'safetensors') or 'none'}"
        + (f"; no tokenizer files: {acc.tokenizer}" if acc.tokenizer else ""),
    ]


def loads_text(loads: str, library: str) -> str:
    """The plan's load-check verdict as shown.

    Args:
        loads: ``plan.accounting.loads``: "yes", "no: why" or "unchecked: why".
        library: the plan's library.

    Returns:
        ``yes (<library>.load, strict)``, ``no (why)`` or ``unchecked (why)``.
    """
    verdict, _, why = loads.partition(": ")
    return f"{verdict} ({library}.load, strict)" if not why else f"{verdict} ({why})"


def side_file_text(f: OutputFile) -> str:
    """How the header's side-files line names a non-shard output file.

    Args:
        f: an output file of the plan.

    Returns:
        Its name, with "(copied)" or "(base + N edits)" for one made from a source file.
    """
    if f.kind == "text":
        return f.name
    if not f.edits:
        return f"{f.name} (copied)"
    return f"{f.name} ({f.base} + {len(f.edits)} edit{'s' if len(f.edits) > 1 else ''})"


def render(plan: Plan, full: bool = False) -> str:
    """The review rendering of ``plan`` (``sanitrace show``).

    Args:
        plan: the plan.
        full: list every tensor with its file and offset, and every file,
            instead of collapsing across layers and experts.

    Returns:
        The text: header, lint findings (when there are any), outputs,
        guards, dropped sources (and files when ``full``), ending with a newline.
    """
    from .lint import lint

    findings = lint(plan)
    lines = header_lines(plan)
    if findings:
        lines += ["", "## lints"] + [f.text() for f in findings]
    lines += ["", "## outputs"]
    outputs = output_lines(plan, full)
    lines += outputs if full else collapse_numbers(outputs)
    if plan.guards:
        r = Renderer(plan)
        lines += ["", "## guards"]
        lines += [f"{r.expr(g.ref)}.{g.method}({', '.join(map(repr, g.args))}) == {g.value!r}" for g in plan.guards]
    lines += ["", "## dropped sources"]
    lines += dropped_lines(plan, full) or ["none"]
    if full:
        lines += ["", "## files"] + file_lines(plan)
    return "\n".join(lines) + "\n"


def file_lines(plan: Plan) -> List[str]:
    """The files section of ``render(plan, full=True)``.

    Args:
        plan: the plan.

    Returns:
        One line per output file (shards with their metadata, text files by
        content hash), then what is copied from the source folder.
    """
    lines = []
    for f in plan.files:
        if f.kind == "safetensors":
            lines.append(f"{f.name}: shard, {f.size} bytes, metadata {f.metadata!r}")
        elif f.kind == "source":
            edited = f" with {len(f.edits)} edits ({sum(len(e[2]) for e in f.edits)} bytes)" if f.edits else ""
            lines.append(
                f"{f.name}: the source's {f.base} ({f.base_size} bytes){edited}, {f.size} bytes, sha256:{f.sha256}"
            )
        else:
            lines.append(f"{f.name}: text, {f.size} bytes, sha256:{hashlib.sha256(f.data).hexdigest()}")
    if plan.copy_subdirectories:
        lines.append("copied from the source folder: every sub-folder, whole")
    return lines


def render_json(plan: Plan) -> dict:
    """The plan for tools (``sanitrace show --format json``).

    Args:
        plan: the plan.

    Returns:
        A JSON-serializable dict: the header lines, lint findings, digest,
        library, options, versions, memory, and every output, guard and
        dropped source, uncollapsed.
    """
    from .lint import lint

    r = Renderer(plan, collapse_lists=False)
    return {
        "header": header_lines(plan),
        "lints": [f._asdict() for f in lint(plan)],
        "digest": plan.digest,
        "library": plan.library,
        "options": plan.options,
        "versions": plan.versions,
        "memory": plan.memory._asdict(),
        "outputs": [
            {
                "name": o.name,
                "dtype": o.dtype,
                "shape": list(o.shape),
                "file": plan.files[o.file].name,
                "offset": o.offset,
                "expr": r.expr(o.ref),
            }
            for o in plan.outputs
        ],
        "guards": [
            {"expr": r.expr(g.ref), "method": g.method, "args": list(g.args), "value": g.value} for g in plan.guards
        ],
        "dropped": [{"file": d.file, "name": d.name, "reason": d.reason} for d in plan.accounting.dropped],
    }
