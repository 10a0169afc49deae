"""Text rendering of a plan for review: stable, compact, one line per output group.

Each output is shown as an expression over source tensor names. Lists that
differ only in a running number collapse to a range (``experts.{0..255}``), and
well-known source-format chains are named instead of spelled out op by op
(``fp8_block_dequant(W, W_scale_inv, 128x128)``); the plan itself keeps every op.
"""

import re
from typing import Dict, List, Optional

from .plan import Node, Ref, Slot, chunk_rows, dtype_name

_NUMBER = re.compile(r"\d+")
_INFIX = {"__add__": "+", "__sub__": "-", "__mul__": "*", "__truediv__": "/", "__matmul__": "@",
          "__lshift__": "<<", "__rshift__": ">>", "__and__": "&", "__or__": "|", "__xor__": "^",
          "__eq__": "==", "__ne__": "!=", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">=",
          "__floordiv__": "//", "__mod__": "%", "__pow__": "**"}
_REFLECTED = {f"__r{k[2:]}": v for k, v in _INFIX.items()}

# Source-format chains: (name, pattern). A pattern is (op, [input patterns]) or
# a capture name; the chain's op names must match exactly.
FP8_BLOCK_DEQUANT = (
    "array.astype", [("array.__getitem__", [("array.reshape", [("array.__mul__", [
        ("array.reshape", [("mx.pad", [("mx.from_fp8", ["weight"])])]),
        ("array.__getitem__", ["scale"]),
    ])])])],
)
MXFP4_VIEW = ("array.flatten", [("array.view", ["blocks"])])
PACKED_VIEW = ("array.view", ["packed"])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def collapse(items: List[str]) -> str:
    """Render a list whose items differ only in one running number as one pattern
    (the number may appear several times in each item)."""
    if len(items) > 2:
        skeletons = {tuple(_NUMBER.split(s)) for s in items}
        if len(skeletons) == 1:
            numbers = [[int(x) for x in _NUMBER.findall(s)] for s in items]
            varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
            columns = {tuple(n[i] for n in numbers) for i in varying}
            if len(columns) == 1:
                col = list(next(iter(columns)))
                if col == list(range(col[0], col[0] + len(col))):
                    parts = _NUMBER.split(items[0])
                    nums = [str(x) for x in numbers[0]]
                    for i in varying:
                        nums[i] = f"{{{col[0]}..{col[-1]}}}"
                    return "".join(p + (nums[i] if i < len(nums) else "") for i, p in enumerate(parts))
    return ", ".join(items)


class Renderer:
    def __init__(self, plan: dict):
        self.nodes: List[Node] = plan["nodes"]
        self.tensors = plan["source"]["tensors"]

    def match(self, ref: Ref, pattern, captures: dict) -> bool:
        if isinstance(pattern, str):
            captures[pattern] = ref
            return True
        op, children = pattern
        node = self.nodes[ref.node]
        if node.op != op or len(node.inputs) != len(children):
            return False
        captures.setdefault("_nodes", []).append(node)
        return all(self.match(r, c, captures) for r, c in zip(node.inputs, children))

    def recognize(self, ref: Ref) -> Optional[str]:
        c: dict = {}
        if self.match(ref, FP8_BLOCK_DEQUANT, c):
            astype, blocked = c["_nodes"][0], c["_nodes"][4]  # (rows/b, b, cols/b, b)
            _, rows, _, cols = blocked.outs[0][1]
            return (f"fp8_block_dequant({self.expr(c['weight'])}, {self.expr(c['scale'])}, "
                    f"{rows}x{cols}, {self.literal(astype.args[1], [])})")
        c = {}
        if self.match(ref, MXFP4_VIEW, c) and self.nodes[c["blocks"].node].op == "load":
            return f"mxfp4_blocks({self.expr(c['blocks'])})"
        c = {}
        if self.match(ref, PACKED_VIEW, c) and self.nodes[c["packed"].node].op == "load":
            return f"{self.expr(c['packed'])}.view({self.literal(self.nodes[ref.node].args[1], [])})"
        return None

    def literal(self, value, inputs: List[str]) -> str:
        if isinstance(value, Slot):
            return inputs[value.index]
        if isinstance(value, tuple):
            inner = [self.literal(v, inputs) for v in value]
            return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
        if isinstance(value, list):
            return "[" + collapse([self.literal(v, inputs) for v in value]) + "]"
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
        node = self.nodes[ref.node]
        if node.op == "load":
            return self.tensors[node.args[0]][1]
        if node.op == "const":
            dtype, shape = node.outs[0]
            return f"const {dtype}{shape}"
        text = self.recognize(ref)
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


def render(plan: dict) -> str:
    """The review rendering of ``plan``."""
    r = Renderer(plan)
    v = plan["versions"]
    opts = plan["options"]
    set_opts = " ".join(f"{k}={opts[k]}" for k in sorted(opts) if opts[k] not in (None, False))
    outputs = plan["outputs"]
    shards = [f for f in plan["files"] if f["kind"] == "safetensors"]
    mem = plan["memory"]
    acc = plan["accounting"]
    source_bytes = sum(t[5] - t[4] for t in plan["source"]["tensors"])
    lines = [
        f"# sanitrace plan v{plan['version']}: {plan['library']} "
        f"(sanitrace {v['sanitrace']}, mlx {v['mlx']}, mlx-lm {v['mlx-lm']}, mlx-vlm {v['mlx-vlm']})",
        f"options: {set_opts or 'defaults'}",
        f"source: {len(plan['source']['files'])} files, {len(plan['source']['tensors'])} tensors, {human_bytes(source_bytes)}",
        f"output: {len(outputs)} tensors in {len(shards)} shards, {human_bytes(sum(o['nbytes'] for o in outputs))}",
        f"memory: predicted peak {human_bytes(mem['predicted_peak'])} at budget {human_bytes(mem['budget'])}",
        f"accounting: {acc['used_sources']} sources used, {len(acc['dropped'])} dropped, "
        f"{acc['outputs']} outputs, strict load {acc['strict_load']}",
        "",
        "## outputs",
    ]
    for group in plan["groups"]:
        members = [outputs[i] for i in group["outputs"]]
        by_node: Dict[int, List[dict]] = {}
        for out in members:
            by_node.setdefault(out["ref"].node, []).append(out)
        rows = chunk_rows(group, mem["budget"])
        chunk = ""
        if rows:
            chunk = f"  [{-(-group['rows'] // rows)} chunks of {rows} rows]"
        elif not group["unit"] and group["rows"] > 1:
            chunk = "  [not chunkable]"
        for node, outs in by_node.items():
            if len(outs) > 1:
                prefix = outs[0]["name"].rsplit(".", 1)[0]
                names = prefix + ".{" + ",".join(o["name"].rsplit(".", 1)[1] for o in outs) + "}"
                types = ", ".join(f"{o['dtype']}{o['shape']}" for o in outs)
                expr = r.expr(Ref(node, 0)).rsplit("[", 1)[0]
            else:
                names, types, expr = outs[0]["name"], f"{outs[0]['dtype']}{outs[0]['shape']}", r.expr(outs[0]["ref"])
            lines.append(f"{names}: {types} = {expr}{chunk}")
    if plan["guards"]:
        lines += ["", "## guards"]
        for g in plan["guards"]:
            lines.append(f"{r.expr(g['ref'])}.{g['method']}() == {g['value']!r}")
    lines += ["", "## dropped sources"]
    lines += [f"{file}: {name} ({why})" for file, name, why in acc["dropped"]] or ["none"]
    return "\n".join(lines) + "\n"
