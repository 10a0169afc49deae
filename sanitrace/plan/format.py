"""The plan file: canonical msgpack, compact, and decoded without executing anything.

Canonical: map keys sorted, tuples/slices/dtypes/Refs/Slots as ext types, so the
same plan always has the same bytes. Compact: a graph of half a million nodes is
mostly the same few hundred (op, args, kwargs, outs) "signatures" applied to
different inputs, so the file stores each signature once and a node as
``[signature, inputs...]`` with inputs relative to the node; source tensor names
are stored as a template plus its numbers ("model.layers.\\0.mlp.experts.\\0..."
with [3, 17]).
"""

import hashlib
import re
from typing import Any, List, Tuple

import mlx.core as mx
import msgpack

from ..safetensors_format import DTYPE_SIZES
from . import Node, Ref, Slot, dtype_name
from .ops import PlanError, is_allowed

FORMAT = "sanitrace-plan"
VERSION = 1
MAX_PLAN_BYTES = 1 << 30

# ext type codes (application range 0..127)
EXT_REF, EXT_TUPLE, EXT_SLICE, EXT_ELLIPSIS, EXT_DTYPE, EXT_DEVICE, EXT_CATEGORY, EXT_SLOT = range(1, 9)

_NUMBER = re.compile(r"(?<![0-9])(0|[1-9][0-9]*)(?![0-9])")
_HOLE = "\0"


def _ext(obj):
    if isinstance(obj, Slot):
        return msgpack.ExtType(EXT_SLOT, pack(obj.index))
    if isinstance(obj, Ref):
        return msgpack.ExtType(EXT_REF, pack([obj.node, obj.out]))
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, pack(list(obj)))
    if isinstance(obj, slice):
        return msgpack.ExtType(EXT_SLICE, pack([obj.start, obj.stop, obj.step]))
    if obj is Ellipsis:
        return msgpack.ExtType(EXT_ELLIPSIS, b"")
    if isinstance(obj, mx.Dtype):
        return msgpack.ExtType(EXT_DTYPE, dtype_name(obj).encode())
    if isinstance(obj, mx.DtypeCategory):
        return msgpack.ExtType(EXT_CATEGORY, obj.name.encode())
    if isinstance(obj, (mx.Device, mx.Stream, mx.DeviceType)):
        device = obj.device if isinstance(obj, mx.Stream) else obj
        device = device.type if isinstance(device, mx.Device) else device
        return msgpack.ExtType(EXT_DEVICE, device.name.encode())
    raise TypeError(f"cannot store a {type(obj).__name__} in a plan")


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj``; dicts must already be in canonical (sorted) order."""
    return msgpack.packb(obj, default=_ext, strict_types=True, use_bin_type=True)


def _ext_hook(code: int, data: bytes):
    if code == EXT_SLOT:
        return Slot(unpack(data))
    if code == EXT_REF:
        node, out = unpack(data)
        return Ref(node, out)
    if code == EXT_TUPLE:
        return tuple(unpack(data))
    if code == EXT_SLICE:
        return slice(*unpack(data))
    if code == EXT_ELLIPSIS:
        return Ellipsis
    if code == EXT_DTYPE:
        dtype = getattr(mx, data.decode(), None)
        if not isinstance(dtype, mx.Dtype):
            raise PlanError(f"unknown dtype {data!r}")
        return dtype
    if code == EXT_CATEGORY:
        category = getattr(mx, data.decode(), None)
        if not isinstance(category, mx.DtypeCategory):
            raise PlanError(f"unknown dtype category {data!r}")
        return category
    if code == EXT_DEVICE:
        device = getattr(mx, data.decode(), None)
        if not isinstance(device, mx.DeviceType):
            raise PlanError(f"unknown device {data!r}")
        return device
    raise PlanError(f"unknown ext type {code}")


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, ext_hook=_ext_hook,
        max_str_len=1 << 26, max_bin_len=1 << 28, max_array_len=1 << 26,
        max_map_len=1 << 24, max_ext_len=1 << 20,
    )


def _sorted(value):
    """``value`` with every dict in key order (the canonical form)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    if type(value) is tuple:
        return tuple(_sorted(v) for v in value)
    return value


# ---------------------------------------------------------------- graph


def _slot_count(value) -> int:
    if isinstance(value, Slot):
        return 1
    if isinstance(value, (list, tuple)):
        return sum(_slot_count(v) for v in value)
    if isinstance(value, dict):
        return sum(_slot_count(v) for v in value.values())
    return 0


def encode_graph(nodes: List[Node]) -> Tuple[list, list]:
    """(signatures, rows) of a node list."""
    index, signatures, rows = {}, [], []
    for i, n in enumerate(nodes):
        leaf = n.op == "load"
        key = repr((n.op, n.outs) if leaf else (n.op, n.args, n.kwargs, n.outs))
        s = index.get(key)
        if s is None:
            s = index[key] = len(signatures)
            signatures.append([n.op, [], {}, n.outs] if leaf else [n.op, n.args, n.kwargs, n.outs])
        if leaf:
            rows.append([s, n.args[0]])
        else:
            rows.append([s] + [i - r.node if r.out == 0 else [i - r.node, r.out] for r in n.inputs])
    return _sorted(signatures), rows


def decode_graph(signatures: list, rows: list, num_tensors: int) -> List[Node]:
    """Nodes from (signatures, rows), checking every op, reference and slot."""
    slots = []
    for s in signatures:
        if not (isinstance(s, list) and len(s) == 4 and isinstance(s[0], str)):
            raise PlanError("malformed node signature")
        if not is_allowed(s[0]):
            raise PlanError(f"op {s[0]!r} is not in the replay allowlist")
        slots.append(_slot_count((s[1], s[2])))
    nodes: List[Node] = []
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and row and isinstance(row[0], int) and 0 <= row[0] < len(signatures)):
            raise PlanError(f"node {i} is malformed")
        op, args, kwargs, outs = signatures[row[0]]
        if op == "load":
            if len(row) != 2 or not (isinstance(row[1], int) and 0 <= row[1] < num_tensors):
                raise PlanError(f"node {i}: source tensor index out of range")
            nodes.append(Node(op, [], [row[1]], {}, outs))
            continue
        inputs = []
        for x in row[1:]:
            back, out = (x, 0) if isinstance(x, int) else x
            if not (isinstance(back, int) and 0 < back <= i):
                raise PlanError(f"node {i}: reference to a node that is not earlier")
            if not (isinstance(out, int) and 0 <= out < len(nodes[i - back].outs)):
                raise PlanError(f"node {i}: reference to a missing output of node {i - back}")
            inputs.append(Ref(i - back, out))
        if len(inputs) != slots[row[0]]:
            raise PlanError(f"node {i}: {len(inputs)} inputs for {slots[row[0]]} slots")
        nodes.append(Node(op, inputs, args, kwargs, outs))
    return nodes


# ---------------------------------------------------------------- source tensors


def encode_tensors(tensors: list) -> Tuple[list, list]:
    """(name templates, rows [file, template, numbers, dtype, shape, begin])."""
    index, templates, rows = {}, [], []
    for file, name, dtype, shape, begin, _ in tensors:
        template = _NUMBER.sub(_HOLE, name)
        t = index.get(template)
        if t is None:
            t = index[template] = len(templates)
            templates.append(template)
        rows.append([file, t, [int(x) for x in _NUMBER.findall(name)], dtype, shape, begin])
    return templates, rows


def decode_tensors(templates: list, rows: list, num_files: int) -> list:
    tensors = []
    for row in rows:
        try:
            file, t, numbers, dtype, shape, begin = row
            parts = templates[t].split(_HOLE)
            if len(parts) != len(numbers) + 1 or not 0 <= file < num_files:
                raise ValueError
            name = parts[0] + "".join(str(n) + p for n, p in zip(numbers, parts[1:]))
            size = DTYPE_SIZES[dtype]
            for d in shape:
                size *= d
        except (ValueError, TypeError, IndexError, KeyError):
            raise PlanError(f"malformed source tensor entry {row!r:.80}") from None
        tensors.append([file, name, dtype, shape, begin, begin + size])
    return tensors


# ---------------------------------------------------------------- files


def dumps(plan: dict) -> bytes:
    body = {k: v for k, v in plan.items() if k != "nodes"}
    body["source"] = dict(plan["source"])
    names, tensors = encode_tensors(plan["source"]["tensors"])
    del body["source"]["tensors"]
    body = _sorted(body)
    body["source"]["names"], body["source"]["tensors"] = names, tensors
    body["signatures"], body["nodes"] = encode_graph(plan["nodes"])
    return pack({k: body[k] for k in sorted(body)})


def loads(data: bytes) -> dict:
    """Decode and validate a plan. Raises PlanError on anything unexpected."""
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"plan of {len(data)} bytes exceeds {MAX_PLAN_BYTES}")
    try:
        plan = unpack(data)
    except PlanError:
        raise
    except Exception as e:  # msgpack raises many types for corrupt input
        raise PlanError(f"not a sanitrace plan: {e}") from e
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise PlanError("not a sanitrace plan (format field missing)")
    if plan.get("version") != VERSION:
        raise PlanError(
            f"plan format version {plan.get('version')!r}; this sanitrace reads {VERSION}"
        )
    for key in ("source", "signatures", "nodes", "outputs", "files", "groups", "guards", "copy_subdirectories"):
        if key not in plan:
            raise PlanError(f"plan has no {key!r} section")
    source = plan["source"]
    source["tensors"] = decode_tensors(source.pop("names"), source["tensors"], len(source["files"]))
    plan["nodes"] = decode_graph(plan.pop("signatures"), plan["nodes"], len(source["tensors"]))
    validate(plan)
    return plan


def validate(plan: dict) -> None:
    """Output, guard and group references point into the graph and output list."""
    nodes = plan["nodes"]
    for entry in plan["outputs"] + plan["guards"]:
        ref = entry["ref"]
        if not (isinstance(ref, Ref) and 0 <= ref.node < len(nodes) and 0 <= ref.out < len(nodes[ref.node].outs)):
            raise PlanError(f"{entry.get('name', 'a guard')!r} refers to a missing node")
    for group in plan["groups"]:
        if not all(isinstance(i, int) and 0 <= i < len(plan["outputs"]) for i in group["outputs"]):
            raise PlanError("a group names a missing output")


def save(plan: dict, path: str) -> bytes:
    data = dumps(plan)
    with open(path, "wb") as f:
        f.write(data)
    return data


def load(path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read(MAX_PLAN_BYTES + 1)
    try:
        return loads(data)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def digest(plan: dict) -> str:
    return hashlib.sha256(dumps(plan)).hexdigest()
