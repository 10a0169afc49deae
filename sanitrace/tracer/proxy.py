"""Shape-only proxies and the recorder that turns their ops into a graph.

A ``Proxy`` is an ``mx.array`` subclass whose own array is a lazy placeholder
(made by the real ``mx.load`` from a data-less header file, see sources.py), so
``shape``, ``dtype``, ``nbytes`` and ``isinstance(x, mx.array)`` are the real
ones. Every op on a proxy runs the real mx op (lazy, never evaluated) on the
proxies to get the result's shape and dtype; the proxy of a result holds a
poisoned leaf of its dtype and shape (``Recorder.kind``). The op appends a
``Node`` to the recorder's graph: literal arguments are kept as they are, each
proxy becomes a ``Slot`` filled by one of the node's inputs, real arrays become
``const`` nodes.
"""

import os
import traceback
from typing import Callable, Dict, List, Optional

import mlx.core as mx
import numpy as np

from ..plan import OPS, Node, PlanError, Ref, Slot, dtype_name
from ..plan.checks import call_guard, check_guard_args
from ..plan.ops import ARRAY_METHODS, ARRAY_PROPERTIES

_REAL_ARRAY = mx.array
_BROADCAST_TO, _EVAL = mx.broadcast_to, mx.eval  # before tracing patches them
_ASTYPE = getattr(mx, "astype", mx.array.astype)  # mlx 0.31 has none: import, then refuse it
_SANITRACE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_CONST_BYTES = 64 << 20
POISON_MESSAGE = "Unable to read from file"


class TraceError(Exception):
    """Tracing cannot produce a faithful plan; the message says where and why."""


class NoValue(Exception):
    """A traced value cannot be computed at trace time: source ``tensor`` has no
    data (``why`` names its file)."""

    def __init__(self, tensor: str, why: str):
        super().__init__(why)
        self.tensor = tensor
        self.why = why


def user_site() -> str:
    """file:line of the innermost caller outside sanitrace (the sanitize code)."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_SANITRACE_DIR):
            return f"{frame.filename}:{frame.lineno}"
    return "<unknown>"


_LITERALS = frozenset([int, float, bool, str, bytes, type(None), slice, type(Ellipsis), mx.Dtype])
_SLOTS = [Slot(i) for i in range(256)]  # immutable; shared by every node
_new_node = tuple.__new__  # Node(...) without NamedTuple's Python-level __new__
_ALLOWED = frozenset(op for op in OPS)


def aval(array) -> list:
    return [dtype_name(array.dtype), list(array.shape)]


def _slot(index: int) -> Slot:
    return _SLOTS[index] if index < 256 else Slot(index)


class Recorder:
    """Collects the graph of one trace. Nodes are appended in creation order."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.nodes: List[Node] = []
        self.consts: Dict[tuple, int] = {}
        self.guards: List[dict] = []
        self.loads: Dict[tuple, int] = {}
        self.value_source: Optional[Callable[[Ref], mx.array]] = None
        self._poison: Optional[mx.array] = None  # a scalar that fails to evaluate
        self._kinds: Dict[tuple, tuple] = {}  # (dtype, shape) -> (leaf, outs)

    def kind(self, array) -> tuple:
        """(leaf, outs) of ``array``'s dtype and shape, one pair per dtype and shape
        (half a million nodes have a few hundred): outs is a node's ``[aval]``,
        shared and never mutated. The leaf is what the proxy of a result holds:
        a poisoned lazy array of that dtype and shape with no graph behind it.
        So results never chain mlx's graph of the whole trace (half a
        million arrays, 0.4 GB and 0.5 s to free for DeepSeek-V3) nor keep the
        graph of their own op (20 KB for an mxfp8 mx.quantize, 1.2 GB for
        GLM-5.1-FP8 through mlx_vlm), and evaluating one still fails. An op runs
        on its input proxies themselves: each holds a leaf or a source
        placeholder, so its result is one op deep."""
        key = (array.dtype, array.shape)
        kind = self._kinds.get(key)
        if kind is None:
            outs = [aval(array)]
            if self._poison is None:
                return array, outs  # no non-empty source tensor seen: keep the real chain
            leaf = _BROADCAST_TO(_ASTYPE(self._poison, key[0]), key[1])
            kind = self._kinds[key] = (leaf, outs)
        return kind

    def add(self, op: str, inputs: list, args: list, kwargs: dict, outs: list) -> int:
        self.nodes.append(_new_node(Node, (op, inputs, args, kwargs, outs)))
        return len(self.nodes) - 1

    def sources(self, file: str, placeholders: Dict[str, mx.array]) -> Dict[str, "Proxy"]:
        """The proxies of a file's checkpoint tensors (name -> placeholder, in
        order); loading the same tensor again gives the same node. Tensors of
        one dtype and shape share a placeholder (sources.py)."""
        proxies = {}
        kinds: Dict[int, list] = {}  # id(placeholder) -> outs (all alive in ``placeholders``)
        loads, nodes = self.loads, self.nodes
        for name, placeholder in placeholders.items():
            outs = kinds.get(id(placeholder))
            if outs is None:
                outs = kinds[id(placeholder)] = self.kind(placeholder)[1]
                if self._poison is None and placeholder.size > 0:
                    # its first element: a flat view would need a dimension of size() elements,
                    # and mlx dimensions are 32-bit (fused experts have 2^32 elements)
                    self._poison = placeholder[(0,) * placeholder.ndim]
            node = loads.get((file, name))
            if node is None:
                node = loads[(file, name)] = len(nodes)
                nodes.append(_new_node(Node, ("load", [], [file, name], {}, outs)))
            proxy = proxies[name] = Proxy(placeholder)
            proxy._st_ref = Ref(node)
            proxy._st_recorder = self
        return proxies

    def const(self, array) -> Ref:
        """A real (non-proxy) array used by the conversion becomes a constant node."""
        if array.nbytes > MAX_CONST_BYTES:
            raise TraceError(
                f"{self.model_name}: a real array of {array.nbytes} bytes "
                f"{array.dtype}{list(array.shape)} enters the conversion at "
                f"{user_site()}; only small constants can be stored in a plan"
            )
        try:
            flat = mx.contiguous(array.reshape(-1)).view(mx.uint8)
            _EVAL(flat)  # not in memoryview(): mlx < 0.32.4 aborts there when evaluation fails
            data = bytes(memoryview(flat))  # type: ignore[arg-type]  # mx.array has the buffer protocol; its stub lacks __buffer__
        except RuntimeError as e:
            if POISON_MESSAGE in str(e):
                raise TraceError(
                    f"{self.model_name}: an array derived from checkpoint tensors "
                    f"by an untracked operation reaches the output ({user_site()})"
                ) from None
            raise
        key = (dtype_name(array.dtype), tuple(array.shape), data)
        if key not in self.consts:
            self.consts[key] = self.add("const", [], [data], {}, [aval(array)])
        return Ref(self.consts[key])

    def ref(self, value) -> Ref:
        """The graph value of a proxy, or of a real array as a constant."""
        return value._st_ref if isinstance(value, Proxy) else self.const(value)

    def encode(self, value, inputs: list):
        """``value`` with each array replaced by a Slot, its Ref appended to ``inputs``;
        dicts in key order (the order slots are numbered and plans are stored in)."""
        kind = type(value)
        if kind in _LITERALS:
            return value
        if isinstance(value, _REAL_ARRAY):
            inputs.append(self.ref(value))
            return _slot(len(inputs) - 1)
        if kind is tuple or kind is list:
            if _LITERALS.issuperset(map(type, value)):  # shapes, axes: the common case
                return value
            encoded = [self.encode(v, inputs) for v in value]
            return encoded if kind is list else tuple(encoded)
        if kind is dict:
            return {k: self.encode(value[k], inputs) for k in sorted(value)}
        if isinstance(value, np.generic):
            return value.item()
        return value

    def call(self, op: str, fn: Callable, args: tuple, kwargs: dict):
        """Run ``fn`` on the placeholders and record it as node ``op``.

        This runs for every op of a trace (450k for DeepSeek-V3): keep it lean."""
        if op not in _ALLOWED:
            raise TraceError(f"{self.model_name}: {op} on a checkpoint tensor at {user_site()} is not a replayable op")
        inputs: List[Ref] = []
        enc_args: list = []
        for a in args:  # the common cases inline: a proxy, a literal
            kind = type(a)
            if kind is Proxy:
                enc_args.append(_slot(len(inputs)))
                inputs.append(a._st_ref)
            elif kind in _LITERALS:
                enc_args.append(a)
            else:
                enc_args.append(self.encode(a, inputs))
        try:
            result = fn(*args, **kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            if POISON_MESSAGE in str(e):
                raise TraceError(
                    f"{self.model_name}: {op} at {user_site()} evaluated a checkpoint "
                    "tensor; sanitize may only build lazy graphs"
                ) from None
            raise
        if not kwargs:
            enc_kwargs = {}
        elif _LITERALS.issuperset(map(type, kwargs.values())):
            enc_kwargs = {k: kwargs[k] for k in sorted(kwargs)}
        else:
            enc_kwargs = self.encode(kwargs, inputs)
        if type(result) is _REAL_ARRAY:
            leaf, outs = self._kinds.get((result.dtype, result.shape)) or self.kind(result)
            self.nodes.append(_new_node(Node, (op, inputs, enc_args, enc_kwargs, outs)))
            proxy = Proxy(leaf)
            proxy._st_ref = Ref(len(self.nodes) - 1)
            proxy._st_recorder = self
            return proxy
        if isinstance(result, (list, tuple)) and all(isinstance(r, _REAL_ARRAY) for r in result):
            node = self.add(op, inputs, enc_args, enc_kwargs, [aval(r) for r in result])
            wrapped = [Proxy.wrap(self.kind(r)[0], Ref(node, i), self) for i, r in enumerate(result)]
            return type(result)(wrapped)
        raise TraceError(
            f"{self.model_name}: {op} at {user_site()} returned a {type(result).__name__}, which a plan cannot hold"
        )

    def value(self, proxy: "Proxy", method: str, *args):
        """A Python value of a checkpoint tensor: evaluated from real data and kept
        as a guard, with the arguments of the call."""
        recorded = [_guard_argument(a, method) for a in args]
        try:
            if self.value_source is None:
                raise NoValue("", "no source data is open")
            real = self.value_source(proxy._st_ref)
        except NoValue as e:
            needs = f"; tracing this model needs the real data of tensor {e.tensor!r}" if e.tensor else ""
            raise TraceError(
                f"{self.model_name}: sanitize needs the value of a checkpoint tensor "
                f"(.{method}({', '.join(map(repr, recorded))}) at {user_site()}), but {e.why}{needs}"
            ) from None
        try:
            check_guard_args(method, recorded)
        except PlanError as e:
            raise TraceError(f"{self.model_name}: at {user_site()}: {e}") from None
        result = call_guard(real, method, tuple(recorded))
        self.guards.append({"ref": proxy._st_ref, "method": method, "args": recorded, "value": _guard_value(result)})
        return result


def _guard_argument(value, method: str):
    """An argument of a value method as a plan keeps it: a literal, a numpy
    dtype (``np.asarray(x, np.float32)`` calls ``__array__(dtype)``) by name."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.dtype):
        return value.name
    raise TraceError(f"{user_site()}: .{method}() with a {type(value).__name__} argument cannot be kept in a plan")


def _guard_value(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_guard_value(v) for v in value]
    raise TraceError(f"cannot keep a {type(value).__name__} as a guard value")


def _method(name: str):
    base = getattr(_REAL_ARRAY, name)
    op = f"array.{name}"

    def method(self, *args, **kwargs):
        return self._st_recorder.call(op, base, (self,) + args, kwargs)

    method.__name__ = name
    return method


def _inplace(name: str):
    base = getattr(_REAL_ARRAY, name)
    op = name.replace("__i", "__", 1)

    def method(self, other):
        result = self._st_recorder.call(f"array.{op}", getattr(_REAL_ARRAY, op), (self, other), {})
        base(self, other)  # mx updates the array object in place; so does its placeholder
        self._st_ref = result._st_ref
        return self

    method.__name__ = name
    return method


def _property(name: str):
    def getter(self):
        return self._st_recorder.call(f"array.{name}", lambda a: getattr(_REAL_ARRAY, name).__get__(a), (self,), {})

    return property(getter)


def _value_method(name: str):
    def method(self, *args):
        return self._st_recorder.value(self, name, *args)

    method.__name__ = name
    return method


class Proxy(_REAL_ARRAY):
    """A checkpoint tensor (or a value derived from one) during tracing."""

    _st_ref: Ref
    _st_recorder: Recorder

    @staticmethod
    def wrap(array, ref: Ref, recorder: Recorder) -> "Proxy":
        proxy = Proxy(array)
        proxy._st_ref = ref
        proxy._st_recorder = recorder
        return proxy

    def __repr__(self):
        return f"Proxy({self._st_ref.node}.{self._st_ref.out}: {self.dtype}{list(self.shape)})"

    __str__ = __repr__

    def __iter__(self):
        return (self[i] for i in range(self.shape[0]))

    def __hash__(self):
        return id(self)

    def __setitem__(self, key, value):
        raise TraceError(f"item assignment to a checkpoint tensor at {user_site()} cannot be replayed")

    @property
    def at(self):
        raise TraceError(f"scatter update (.at) at {user_site()} cannot be replayed")

    def __array__(self, *args, **kwargs):
        return self._st_recorder.value(self, "__array__", *args)

    def __deepcopy__(self, memo):
        return self  # mx arrays are values; a copy is the same value

    def __reduce__(self):
        raise TraceError(f"pickling a checkpoint tensor at {user_site()}")


# What a proxy records is the replay allowlist (plan/ops.py): each array method
# and property there records its op. In-place operators record their out-of-place
# op (``a += b`` is array.__add__); value methods are kept as guards, not ops.
_INPLACE_METHODS = (
    "__iadd__ __isub__ __imul__ __itruediv__ __ifloordiv__ __imod__ __ipow__ __imatmul__ __iand__ __ior__ "
    "__ixor__ __ilshift__ __irshift__"
).split()
_VALUE_METHODS = (
    "item",
    "tolist",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
    "__bytes__",
    "__dlpack__",
    "__format__",
)
for _name in sorted(ARRAY_METHODS):
    if hasattr(_REAL_ARRAY, _name):  # an older mlx lacks a few (0.32.2: __pos__)
        setattr(Proxy, _name, _method(_name))
for _name in _INPLACE_METHODS:
    setattr(Proxy, _name, _inplace(_name))
for _name in sorted(ARRAY_PROPERTIES):
    if hasattr(_REAL_ARRAY, _name):  # mlx 0.32.2 has no mT
        setattr(Proxy, _name, _property(_name))
for _name in _VALUE_METHODS:
    setattr(Proxy, _name, _value_method(_name))


def find_proxy(value) -> Optional["Proxy"]:
    """The first proxy inside a (nested) argument structure, or None."""
    if type(value) is tuple:  # fast path: a proxy among the top-level arguments
        for v in value:
            if type(v) is Proxy:
                return v
    if isinstance(value, Proxy):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            found = find_proxy(v)
            if found is not None:
                return found
    elif isinstance(value, dict):
        return find_proxy(list(value.values()))
    return None
