"""The plan file: canonical msgpack, compact, and decoded without executing anything.

Canonical: map keys sorted, tuples/slices/dtypes/Refs/Slots as ext types, so the
same plan always has the same bytes. Compact: a graph of half a million nodes is
mostly the same few hundred (op, args, kwargs, outs) "signatures" applied to
different inputs, so the file stores each signature once and a node as
``[signature, inputs...]`` with inputs relative to the node; source tensors are
stored compactly too (source_tensors.py).
"""

import hashlib
import os
import tempfile
from typing import Any, Dict, List, Optional, Set, Tuple

import mlx.core as mx
import msgpack

from .checks import check_depth, integer, items
from .dtypes import dtype_name, mlx_dtype
from .gc_pause import gc_paused
from .ops import PlanError, is_allowed
from .source_tensors import encode_tensors
from .types import Node, Plan, Ref, Slot

FORMAT = "sanitrace-plan"
VERSION = 4
MAX_PLAN_BYTES = 1 << 30

# ext type codes (application range 0..127)
EXT_REF, EXT_TUPLE, EXT_SLICE, EXT_ELLIPSIS, EXT_DTYPE, EXT_DEVICE, EXT_CATEGORY, EXT_SLOT = range(1, 9)


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
_NAMED = {
    EXT_DTYPE: (mx.Dtype, "dtype"),
    EXT_CATEGORY: (mx.DtypeCategory, "dtype category"),
    EXT_DEVICE: (mx.DeviceType, "device"),
}


MAX_EXT_DEPTH = 16  # ext types nest (a tuple in a tuple): each level is a recursive unpack
_ext_depth = [0]


def _ext_hook(code: int, data: bytes):
    if _ext_depth[0] >= MAX_EXT_DEPTH:
        raise PlanError(f"ext types nested more than {MAX_EXT_DEPTH} deep")
    _ext_depth[0] += 1
    try:
        return _decode_ext(code, data)
    finally:
        _ext_depth[0] -= 1


def _decode_ext(code: int, data: bytes):
    if code == EXT_SLOT:
        return Slot(integer(unpack(data), "a slot"))
    if code == EXT_REF:
        node, out = items(unpack(data), "a reference", 2)
        return Ref(integer(node, "a reference"), integer(out, "a reference"))
    if code == EXT_TUPLE:
        return tuple(items(unpack(data), "a tuple"))
    if code == EXT_SLICE:
        bounds = items(unpack(data), "a slice", 3)
        if not all(b is None or type(b) is int for b in bounds):
            raise PlanError("a slice bound is not an integer")
        return slice(*bounds)
    if code == EXT_ELLIPSIS:
        if data:
            raise PlanError("an Ellipsis carries data")
        return Ellipsis
    if code in _NAMED:
        kind, what = _NAMED[code]
        name = data.decode("utf-8", "replace")
        value = mlx_dtype(name) if code == EXT_DTYPE else getattr(mx, name, None)
        if not isinstance(value, kind):
            raise PlanError(f"unknown {what} {data!r}")
        return value
    raise PlanError(f"unknown ext type {code}")


# Decoded size: each list and map is charged about its Python size as it is
# built, against a budget of DECODED_PER_BYTE bytes per byte of the plan. The
# committed plans' containers cost 5 to 22 (a node row [s, k] is 3 bytes and a
# 72-byte list); junk of empty lists or maps would cost 72 to 80 (1.4 GB for 16 MB).
DECODED_PER_BYTE = 32
_budget = [0]  # what the plan being decoded may still build (shared by nested ext unpacks)


def _too_big() -> PlanError:
    return PlanError(f"the plan decodes to more than {DECODED_PER_BYTE} times its size in objects")


def _list_hook(value: list) -> list:  # called for every list: kept to the minimum
    budget = _budget
    budget[0] -= 64 + 8 * len(value)
    if budget[0] < 0:
        raise _too_big()
    return value


def _pairs_hook(pairs: list) -> dict:
    _budget[0] -= 64 + 48 * len(pairs)
    if _budget[0] < 0:
        raise _too_big()
    return dict(pairs)


def unpack(data: bytes) -> Any:
    """Decode msgpack ``data`` within size, nesting and decoded-size limits (PlanError)."""
    if _ext_depth[0] == 0:
        _budget[0] = DECODED_PER_BYTE * len(data) + (1 << 20)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_ext_hook,
            list_hook=_list_hook,
            object_pairs_hook=_pairs_hook,
            max_str_len=1 << 26,
            max_bin_len=1 << 28,
            max_array_len=1 << 26,
            max_map_len=1 << 24,
            max_ext_len=1 << 20,
        )
    except msgpack.StackError:
        raise PlanError("msgpack arrays or maps nested too deep") from None


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
) -> Tuple[list, list, List[Node]]:
    """(signatures, rows) of the nodes ``order`` lists, numbered by ``remap``
    (node id -> position in ``order``), and those nodes as ``decode_graph`` gives
    them back (a traced plan's ``nodes`` without a decoding pass). A load node's
    args are ``[file, name]``, looked up in ``tensor_index``, or without one
    ``[source tensor index]``."""
    index: Dict[Any, int] = {}
    signatures: List[list] = []
    rows: List[list] = []
    planned: List[Node] = []
    append, place = rows.append, planned.append
    new = tuple.__new__  # Node(...) without NamedTuple's Python-level __new__
    outs_keys: Dict[int, str] = {}  # id -> repr of the outs lists, which the tracer shares between nodes
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
            tensor = args[0] if tensor_index is None else tensor_index[(args[0], args[1])]
            append([s, tensor])
            place(new(Node, (op, [], [tensor], {}, outs)))
            continue
        key = (op, repr((args, kwargs) if kwargs else args), outs_key)
        s = index.get(key)
        if s is None:
            s = index[key] = len(signatures)
            signatures.append([op, args, kwargs, outs])
        if len(inputs) == 1 and inputs[0].out == 0:  # most nodes
            at = remap[inputs[0].node]
            append([s, i - at])
            place(new(Node, (op, [Ref(at)], args, kwargs, outs)))
        else:
            refs = [Ref(remap[r.node], r.out) for r in inputs]
            append([s] + [i - r.node if r.out == 0 else [i - r.node, r.out] for r in refs])
            place(new(Node, (op, refs, args, kwargs, outs)))
    return _sorted(signatures), rows, planned


def decode_graph(signatures: list, rows: list, num_tensors: int) -> List[Node]:
    """Nodes from (signatures, rows), checking every op, reference and slot."""
    info = []
    for s in signatures:
        if not (isinstance(s, list) and len(s) == 4 and isinstance(s[0], str)):
            raise PlanError("malformed node signature")
        if not is_allowed(s[0]):
            raise PlanError(f"op {s[0]!r} is not in the replay allowlist")
        check_depth(s, f"the arguments of op {s[0]!r}")
        if not (isinstance(s[1], list) and isinstance(s[2], dict) and isinstance(s[3], list)):
            raise PlanError(f"malformed node signature for op {s[0]!r}")
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
            if not (
                isinstance(x, list)
                and len(x) == 2
                and type(x[0]) is int
                and type(x[1]) is int
                and 0 < x[0] <= i
                and 0 <= x[1] < len(nodes[i - x[0]].outs)
            ):
                raise PlanError(f"node {i}: reference to a missing node output")
            inputs.append(Ref(i - x[0], x[1]))
        append(new(Node, (op, inputs, args, kwargs, outs)))
    return nodes


# ---------------------------------------------------------------- the plan


def dumps(plan: Plan) -> bytes:
    """The canonical bytes of ``plan``."""
    source = plan.source
    files: List[Dict[str, Any]] = []
    for f in plan.files:
        if f.kind == "safetensors":
            files.append({"kind": f.kind, "metadata": f.metadata, "name": f.name, "size": f.size})
        elif f.kind == "source":
            files.append(
                {
                    "base": f.base,
                    "base_size": f.base_size,
                    "edits": [list(e) for e in f.edits],
                    "kind": f.kind,
                    "name": f.name,
                    "sha256": f.sha256,
                }
            )
        else:
            files.append({"data": f.data, "kind": f.kind, "name": f.name})
    body = {
        "accounting": {
            **plan.accounting._asdict(),
            "dropped": _dropped_rows(plan),
        },
        "copy_subdirectories": plan.copy_subdirectories,
        "files": files,
        "format": FORMAT,
        "guards": [{"args": list(g.args), "method": g.method, "ref": g.ref, "value": g.value} for g in plan.guards],
        "library": plan.library,
        "memory": plan.memory._asdict(),
        "options": plan.options,
        "source": {"files": [f._asdict() for f in source.files], "read_files": source.read_files},
        "version": plan.version,
        "versions": plan.versions,
    }
    body = _sorted(body)
    # canonical as built (lists of scalars, dicts in key order): no _sorted pass over them
    body["groups"] = [
        {
            "outputs": list(g.outputs),
            "peak_lines": [list(line) for line in g.peak_lines],
            "rows": g.rows,
            "unit": g.unit,
        }
        for g in plan.groups
    ]
    body["outputs"] = [[o.name, o.dtype, list(o.shape), o.ref, o.file, o.offset] for o in plan.outputs]
    body["source"]["names"], body["source"]["tensors"] = encode_tensors(source.tensors, source.files)
    body["signatures"], body["nodes"] = plan.graph.signatures, plan.graph.rows
    return pack({k: body[k] for k in sorted(body)})


def _dropped_rows(plan: Plan) -> list:
    """[source tensor index, reason] of each dropped source, in the accounting's order."""
    dropped = plan.accounting.dropped
    wanted: Dict[str, Set[str]] = {}  # file -> names of its dropped tensors
    for d in dropped:
        wanted.setdefault(d.file, set()).add(d.name)
    by_file = [wanted.get(f.name, set()) for f in plan.source.files]
    index = {}
    if dropped:
        for i, t in enumerate(plan.source.tensors):
            if t.name in by_file[t.file]:
                index[(plan.source.files[t.file].name, t.name)] = i
    return [[index[(d.file, d.name)], d.reason] for d in dropped]


def save(plan: Plan, path: str) -> bytes:
    """Write ``plan`` to ``path`` atomically (a failed write leaves any old file as it was)."""
    with gc_paused():
        data = dumps(plan)
    plan.__dict__.setdefault("digest", hashlib.sha256(data).hexdigest())
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sanitrace-plan-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return data
