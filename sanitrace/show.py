"""Text rendering of a plan for review: stable, compact, one line per output group."""

import re
from typing import Dict, List

from .plan import Ref, chunk_rows, dtype_name

_NUMBER = re.compile(r"\d+")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def collapse(items: List[str]) -> str:
    """Render a list whose items differ in one running number as one pattern."""
    if len(items) > 2:
        skeletons = {tuple(_NUMBER.split(s)) for s in items}
        if len(skeletons) == 1:
            numbers = [[int(x) for x in _NUMBER.findall(s)] for s in items]
            varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
            if len(varying) == 1:
                col = [n[varying[0]] for n in numbers]
                if col == list(range(col[0], col[0] + len(col))):
                    parts = _NUMBER.split(items[0])
                    nums = [str(x) for x in numbers[0]]
                    nums[varying[0]] = f"{{{col[0]}..{col[-1]}}}"
                    return "".join(p + (nums[i] if i < len(nums) else "") for i, p in enumerate(parts))
    return ", ".join(items)


class Renderer:
    def __init__(self, plan: dict):
        self.plan = plan
        self.nodes = plan["nodes"]
        self.tensors = plan["source"]["tensors"]

    def literal(self, value) -> str:
        if isinstance(value, Ref):
            return self.expr(value)
        if isinstance(value, tuple):
            inner = [self.literal(v) for v in value]
            return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
        if isinstance(value, list):
            return "[" + collapse([self.literal(v) for v in value]) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {self.literal(v)}" for k, v in value.items()) + "}"
        if isinstance(value, slice):
            parts = ["" if x is None else str(x) for x in (value.start, value.stop, value.step)]
            return ":".join(parts[:2]) + (f":{parts[2]}" if value.step is not None else "")
        if value is Ellipsis:
            return "..."
        if type(value).__name__ == "Dtype":
            return dtype_name(value)
        if isinstance(value, bytes):
            return f"<{len(value)} bytes>"
        return repr(value)

    def expr(self, ref: Ref) -> str:
        op, args, kwargs, outs = self.nodes[ref.node]
        if op == "load":
            return self.tensors[args[0]][1]
        if op == "const":
            dtype, shape = outs[0]
            return f"const {dtype}{shape}"
        name = op.split(".", 1)[1]
        if op.startswith("array.") and args:
            target, rest = self.literal(args[0]), args[1:]
            if name == "__getitem__":
                text = f"{target}[{self._index(rest[0])}]"
            else:
                call = ", ".join([self.literal(a) for a in rest] + [f"{k}={self.literal(v)}" for k, v in kwargs.items()])
                text = f"{target}.{name}({call})" if name not in ("T", "mT") else f"{target}.{name}"
        else:
            call = ", ".join([self.literal(a) for a in args] + [f"{k}={self.literal(v)}" for k, v in kwargs.items()])
            text = f"{name}({call})"
        if len(outs) > 1:
            text += f"[{ref.out}]"
        return text

    def _index(self, index) -> str:
        if isinstance(index, tuple):
            return ", ".join(self.literal(i) for i in index)
        return self.literal(index)


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
        f"output: {len(outputs)} tensors in {len(shards)} shards ({', '.join(f['name'] for f in shards)}), "
        f"{human_bytes(sum(o['nbytes'] for o in outputs))}",
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
        rows = chunk_rows(group, plan["memory"]["budget"])
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


__all__ = ["render", "human_bytes"]
