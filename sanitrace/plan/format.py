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
from typing import Any, List, Optional, Tuple

import mlx.core as mx
import msgpack

from ..safetensors_format import DTYPE_SIZES, MLX_ITEMSIZE, MLX_TO_SAFETENSORS, build_header
from . import Node, Ref, Slot, dtype_name, gc_paused, mlx_dtype
from .ops import PlanError, is_allowed

FORMAT = "sanitrace-plan"
VERSION = 2
MAX_PLAN_BYTES = 1 << 30

# ext type codes (application range 0..127)
EXT_REF, EXT_TUPLE, EXT_SLICE, EXT_ELLIPSIS, EXT_DTYPE, EXT_DEVICE, EXT_CATEGORY, EXT_SLOT = range(1, 9)

_NUMBER = re.compile(r"(?<![0-9])(0|[1-9][0-9]*)(?![0-9])")  # one group: split() keeps the numbers
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


# ext types stored by name: mx attributes of a known type only
_NAMED = {EXT_DTYPE: (mx.Dtype, "dtype"), EXT_CATEGORY: (mx.DtypeCategory, "dtype category"),
          EXT_DEVICE: (mx.DeviceType, "device")}


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
    if code in _NAMED:
        kind, what = _NAMED[code]
        name = data.decode()
        value = mlx_dtype(name) if code == EXT_DTYPE else getattr(mx, name, None)
        if not isinstance(value, kind):
            raise PlanError(f"unknown {what} {data!r}")
        return value
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


def encode_graph(
    nodes: List[Node], order: List[int], remap: List[int], tensor_index: Optional[dict] = None
) -> Tuple[list, list]:
    """(signatures, rows) of the nodes ``order`` lists, numbered by ``remap``
    (node id -> position in ``order``). A load node's args are ``[file, name]``,
    looked up in ``tensor_index``, or without one ``[source tensor index]``."""
    index, signatures, rows = {}, [], []
    append = rows.append
    outs_keys = {}  # id -> repr of the outs lists, which the tracer shares between nodes
    for i, old in enumerate(order):
        op, inputs, args, kwargs, outs = nodes[old]
        outs_key = outs_keys.get(id(outs))
        if outs_key is None:
            outs_key = outs_keys[id(outs)] = repr(outs)
        if op == "load":
            s = index.get(outs_key)
            if s is None:
                s = index[outs_key] = len(signatures)
                signatures.append([op, [], {}, outs])
            append([s, args[0] if tensor_index is None else tensor_index[(args[0], args[1])]])
            continue
        key = (op, repr((args, kwargs) if kwargs else args), outs_key)
        s = index.get(key)
        if s is None:
            s = index[key] = len(signatures)
            signatures.append([op, args, kwargs, outs])
        if len(inputs) == 1 and inputs[0].out == 0:  # most nodes
            append([s, i - remap[inputs[0].node]])
        else:
            append([s] + [i - remap[r.node] if r.out == 0 else [i - remap[r.node], r.out] for r in inputs])
    return _sorted(signatures), rows


def decode_graph(signatures: list, rows: list, num_tensors: int) -> List[Node]:
    """Nodes from (signatures, rows), checking every op, reference and slot."""
    info = []
    for s in signatures:
        if not (isinstance(s, list) and len(s) == 4 and isinstance(s[0], str)):
            raise PlanError("malformed node signature")
        if not is_allowed(s[0]):
            raise PlanError(f"op {s[0]!r} is not in the replay allowlist")
        info.append((s[0], s[1], s[2], s[3], _slot_count((s[1], s[2])), s[0] == "load"))
    nodes: List[Node] = []
    append = nodes.append
    new = tuple.__new__  # Node(...) without NamedTuple's Python-level __new__
    for i, row in enumerate(rows):
        try:
            op, args, kwargs, outs, slots, leaf = info[row[0]]
        except (TypeError, IndexError, KeyError):
            raise PlanError(f"node {i} is malformed") from None
        if leaf:
            if len(row) != 2 or type(row[1]) is not int or not 0 <= row[1] < num_tensors:
                raise PlanError(f"node {i}: source tensor index out of range")
            append(new(Node, (op, [], [row[1]], {}, outs)))
            continue
        if len(row) - 1 != slots:
            raise PlanError(f"node {i}: {len(row) - 1} inputs for {slots} slots")
        if slots == 1 and type(row[1]) is int and 0 < row[1] <= i:  # the common case
            append(new(Node, (op, [Ref(i - row[1])], args, kwargs, outs)))
            continue
        inputs = []
        for x in row[1:]:
            if type(x) is int:
                if not 0 < x <= i:
                    raise PlanError(f"node {i}: reference to a node that is not earlier")
                inputs.append(Ref(i - x))
                continue
            if not (isinstance(x, list) and len(x) == 2 and type(x[0]) is int and type(x[1]) is int
                    and 0 < x[0] <= i and 0 <= x[1] < len(nodes[i - x[0]].outs)):
                raise PlanError(f"node {i}: reference to a missing node output")
            inputs.append(Ref(i - x[0], x[1]))
        append(new(Node, (op, inputs, args, kwargs, outs)))
    return nodes


# ---------------------------------------------------------------- source tensors


def encode_tensors(tensors: list, files: list) -> Tuple[list, list]:
    """(templates [name with \\0 holes, dtype, shape], rows [file, template, numbers, gap]).

    Tensors are in data order within each file, so a tensor's offset is stored
    as its gap after the previous one (almost always 0)."""
    index, templates, rows, ends = {}, [], [], {}
    split, join = _NUMBER.split, _HOLE.join
    for file, name, dtype, shape, begin, end in tensors:
        parts = split(name)  # text, number, text, ..., text
        key = (join(parts[::2]), dtype, *shape)
        t = index.get(key)
        if t is None:
            t = index[key] = len(templates)
            templates.append([key[0], dtype, list(shape)])
        start = ends.get(file)
        if start is None:
            start = 8 + files[file]["header_length"]
        rows.append([file, t, list(map(int, parts[1::2])), begin - start])
        ends[file] = end
    return templates, rows


def decode_tensors(templates: list, rows: list, files: list) -> list:
    tensors, ends, formats = [], {}, {}  # formats: template -> ("...%d...", holes, bytes)
    for row in rows:
        try:
            file, t, numbers, gap = row
            template, dtype, shape = templates[t]
            if t not in formats:
                size = DTYPE_SIZES[dtype]
                for d in shape:
                    size *= d
                formats[t] = (template.replace("%", "%%").replace(_HOLE, "%d"), template.count(_HOLE), size)
            pattern, holes, size = formats[t]
            if len(numbers) != holes:
                raise ValueError
            name = pattern % tuple(numbers)
            begin = ends.get(file, 8 + files[file]["header_length"]) + gap
            if begin < 8 + files[file]["header_length"] or begin + size > files[file]["size"]:
                raise ValueError
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            raise PlanError(f"malformed source tensor entry {row!r:.80}") from None
        tensors.append([file, name, dtype, list(shape), begin, begin + size])
        ends[file] = begin + size
    return tensors


# ---------------------------------------------------------------- outputs and files

_OUTPUT_FIELDS = ("name", "dtype", "shape", "ref", "file", "offset")


def _itemsize(dtype: str) -> int:
    if dtype not in MLX_ITEMSIZE:
        raise PlanError(f"unknown dtype {dtype!r}")
    return MLX_ITEMSIZE[dtype]


def decode_outputs(rows: list) -> list:
    outputs = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == len(_OUTPUT_FIELDS)):
            raise PlanError("malformed output entry")
        out = dict(zip(_OUTPUT_FIELDS, row))
        size = _itemsize(out["dtype"])
        for d in out["shape"]:
            size *= d
        out["nbytes"] = size
        outputs.append(out)
    return outputs


def attach_shard_headers(files: list, outputs: list) -> None:
    """Give each shard entry the header bytes its outputs imply, checking that the
    outputs' offsets are exactly where that header puts them."""
    members: dict = {}
    for out in outputs:
        members.setdefault(out["file"], []).append(out)
    for i, f in enumerate(files):
        if f["kind"] != "safetensors":
            continue
        entries = sorted(members.get(i, []), key=lambda o: o["name"])
        header, offsets = build_header(
            [(o["name"], MLX_TO_SAFETENSORS[o["dtype"]], o["shape"], o["nbytes"]) for o in entries],
            f["metadata"],
        )
        if [o["offset"] for o in entries] != offsets:
            raise PlanError(f"{f['name']}: output offsets do not match the shard layout")
        f["header"] = header


def dumps(plan: dict) -> bytes:
    source = plan["source"]
    tensor_index = {(source["files"][t[0]]["name"], t[1]): i for i, t in enumerate(source["tensors"])}
    body = {k: v for k, v in plan.items() if k not in ("graph", "nodes", "outputs", "files", "accounting", "source")}
    body["source"] = {k: v for k, v in source.items() if k != "tensors"}
    body["outputs"] = [[o[k] for k in _OUTPUT_FIELDS] for o in plan["outputs"]]
    body["files"] = [{k: v for k, v in f.items() if k != "header"} for f in plan["files"]]
    body["accounting"] = dict(plan["accounting"])
    body["accounting"]["dropped"] = [
        [tensor_index[(file, name)], reason] for file, name, reason in plan["accounting"]["dropped"]
    ]
    body = _sorted(body)
    body["source"]["names"], body["source"]["tensors"] = encode_tensors(source["tensors"], source["files"])
    body["signatures"], body["nodes"] = plan["graph"]["signatures"], plan["graph"]["rows"]
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
    for key in ("source", "signatures", "nodes", "outputs", "files", "groups", "guards",
                "copy_subdirectories", "accounting"):
        if key not in plan:
            raise PlanError(f"plan has no {key!r} section")
    try:
        source = plan["source"]
        source["tensors"] = decode_tensors(source.pop("names"), source["tensors"], source["files"])
        plan["graph"] = {"signatures": plan.pop("signatures"), "rows": plan.pop("nodes")}
        graph_nodes(plan)
        plan["outputs"] = decode_outputs(plan["outputs"])
        attach_shard_headers(plan["files"], plan["outputs"])
        plan["accounting"]["dropped"] = [
            [source["files"][source["tensors"][i][0]]["name"], source["tensors"][i][1], reason]
            for i, reason in plan["accounting"]["dropped"]
        ]
    except (KeyError, TypeError, IndexError, ValueError) as e:
        if isinstance(e, PlanError):
            raise
        raise PlanError(f"malformed plan: {type(e).__name__}: {e}") from None
    validate(plan)
    return plan


def graph_nodes(plan: dict) -> List[Node]:
    """The plan's graph as ``Node``s: ``plan["nodes"]``, decoded (and checked)
    from ``plan["graph"]`` on first use."""
    if "nodes" not in plan:
        graph = plan["graph"]
        plan["nodes"] = decode_graph(graph["signatures"], graph["rows"], len(plan["source"]["tensors"]))
    return plan["nodes"]


def validate(plan: dict) -> None:
    """Output, guard and group references point into the graph and output list."""
    nodes = graph_nodes(plan)
    for entry in plan["outputs"] + plan["guards"]:
        ref = entry["ref"]
        if not (isinstance(ref, Ref) and 0 <= ref.node < len(nodes) and 0 <= ref.out < len(nodes[ref.node].outs)):
            raise PlanError(f"{entry.get('name', 'a guard')!r} refers to a missing node")
    for group in plan["groups"]:
        if not all(isinstance(i, int) and 0 <= i < len(plan["outputs"]) for i in group["outputs"]):
            raise PlanError("a group names a missing output")
        lines = group.get("peak_lines")
        if not (isinstance(lines, list) and lines and all(
                isinstance(l, list) and len(l) == 2 and all(isinstance(x, int) for x in l) for l in lines)):
            raise PlanError("a group has no memory model (peak_lines)")


def save(plan: dict, path: str) -> bytes:
    with gc_paused():
        data = dumps(plan)
    with open(path, "wb") as f:
        f.write(data)
    return data


def load(path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read(MAX_PLAN_BYTES + 1)
    try:
        with gc_paused():
            return loads(data)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def digest(plan: dict) -> str:
    return hashlib.sha256(dumps(plan)).hexdigest()
