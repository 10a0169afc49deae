"""What loading a plan checks and derives, beyond its encoding.

A plan is untrusted input. Every name must be a plain relative path (it
becomes a file under the output folder, or is read under the source folder);
every size and offset that follows from other facts is derived and must agree;
every reference points at something that exists; each output's dtype and
shape is the one its node computes. ``check_plan`` raises PlanError naming
the first problem.
"""

import re
from typing import Any, Sequence, Tuple

from ..safetensors_format import MLX_TO_SAFETENSORS, build_header
from .ops import PlanError
from .types import Output, OutputFile, Plan, Ref

MAX_DEPTH = 32  # nesting of a literal argument (lists, tuples, dicts) in a plan
MAX_ELEMENTS = 1 << 48  # no dimension product beyond what a 64-bit size can hold
# the value methods the tracer records as guards (a plan can name no other), with
# how many arguments each takes: __array__(dtype) (numpy's, by name), __format__(spec)
GUARD_METHODS = {
    "item": 0,
    "tolist": 0,
    "__bool__": 0,
    "__int__": 0,
    "__float__": 0,
    "__index__": 0,
    "__complex__": 0,
    "__bytes__": 0,
    "__array__": 1,
    "__format__": 1,
}
_GUARD_ARGUMENTS = frozenset([type(None), bool, int, float, str])
_LONG_NUMBER = re.compile(r"[0-9]{5}")


def fields(value: Any, what: str, names: Sequence[str]) -> list:
    """The values of a map that has exactly the keys ``names``, in that order."""
    if not isinstance(value, dict):
        raise PlanError(f"{what} is not a map")
    if len(value) != len(names) or any(n not in value for n in names):
        extra = sorted(map(str, set(value) - set(names)))
        missing = [n for n in names if n not in value]
        raise PlanError(f"{what}: unexpected fields {extra} / missing {missing}")
    return [value[n] for n in names]


def items(value: Any, what: str, length: int = -1) -> list:
    """``value`` when it is a list (of ``length`` items, when given)."""
    if not isinstance(value, list) or (length >= 0 and len(value) != length):
        raise PlanError(f"{what} is malformed")
    return value


def integer(value: Any, what: str, minimum: int = 0) -> int:
    """``value`` when it is an int (not a bool) of at least ``minimum``."""
    if type(value) is not int or value < minimum:
        raise PlanError(f"{what} is not an integer >= {minimum}: {value!r:.40}")
    return value


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PlanError(f"{what} is not a string")
    return value


def check_depth(value: Any, what: str) -> None:
    """Literal structures nest at most MAX_DEPTH levels (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple)):
            children = item
        elif isinstance(item, dict):
            children = list(item.values())
        else:
            continue
        if depth >= MAX_DEPTH:
            raise PlanError(f"{what} nest more than {MAX_DEPTH} levels deep")
        stack.extend((c, depth + 1) for c in children)


def check_guard_args(method: str, args: list) -> tuple:
    """A guard's arguments as a tuple: at most as many as ``method`` takes, each
    None, a bool, a number or a short string (a format spec or dtype name: no
    number in it over 4 digits, so ``__format__`` cannot be asked for a
    gigabyte-wide field)."""
    if (
        len(args) > GUARD_METHODS.get(method, 0)
        or not _GUARD_ARGUMENTS.issuperset(map(type, args))
        or any(isinstance(a, str) and (len(a) > 64 or _LONG_NUMBER.search(a)) for a in args)
    ):
        raise PlanError(f"a guard calls {method!r:.40} with arguments {args!r:.80}, which it does not take")
    return tuple(args)


def call_guard(array, method: str, args: tuple):
    """``array.method(*args)``, what a guard records and the executor re-checks.
    mlx 0.32's ``__format__`` of a 0-d array crashes the process on a spec its
    Python scalar refuses (``f"{x:d}"`` of a float): that spec raises ValueError here."""
    if method == "__format__" and array.ndim == 0:
        format(array.item(), *args)
    return getattr(array, method)(*args)


def group_rows(outputs: Sequence[Output]) -> int:
    """The leading size a group's outputs share (0 when they differ or are
    scalars): what a group's ``rows`` must be. The planner uses it too."""
    rows = {o.shape[0] if o.shape else 0 for o in outputs}
    return next(iter(rows)) if len(rows) == 1 else 0


def check_name(name: str, what: str) -> None:
    """A plain relative path: no absolute path, no empty, '.', '..' or NUL component,
    no backslash, valid UTF-8, and not sanitrace's own journal or lock."""
    problem = None
    if not name:
        problem = "is empty"
    elif name.startswith("/") or "\\" in name or "\0" in name:
        problem = "is not a plain relative path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' component"
    elif name.startswith(".sanitrace"):
        problem = "is reserved for sanitrace's own files"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
    if problem:
        raise PlanError(f"{what} {name!r:.120} {problem}")


def derive_shard(shard: OutputFile, index: int, outputs: Tuple[Output, ...]) -> OutputFile:
    """The shard with the header its outputs imply; its recorded size and every
    output's offset must be exactly where that header puts them."""
    entries = sorted((o for o in outputs if o.file == index), key=lambda o: o.name)
    try:
        header, offsets = build_header(
            [(o.name, MLX_TO_SAFETENSORS[o.dtype], o.shape, o.nbytes) for o in entries], shard.metadata
        )
    except KeyError as e:
        raise PlanError(f"{shard.name}: an output has dtype {e} that safetensors cannot store") from None
    if [o.offset for o in entries] != offsets:
        raise PlanError(f"{shard.name}: output offsets do not match the shard layout")
    size = len(header) + sum(o.nbytes for o in entries)
    if shard.size != size:
        raise PlanError(f"{shard.name}: size {shard.size} is not the {size} bytes its tensors need")
    return shard._replace(header=header)


def _check_ref(plan: Plan, ref: Ref, what: str) -> None:
    nodes = plan.nodes
    if not (0 <= ref.node < len(nodes) and 0 <= ref.out < len(nodes[ref.node].outs)):
        raise PlanError(f"{what} refers to a missing node")


def check_plan(plan: Plan) -> None:
    """Names, references, output avals, groups and source files of a decoded plan."""
    seen = set()
    for f in plan.source.files:
        check_name(f.name, "source file")
        if f.name in seen:
            raise PlanError(f"source file {f.name!r} appears twice")
        seen.add(f.name)
    for name in plan.source.read_files:
        check_name(name, "recorded source file")
    ends = {}
    for t in plan.source.tensors:
        ends[t.file] = t.end
    for i, f in enumerate(plan.source.files):
        size = max(ends.get(i, 0), 8 + f.header_length)
        if f.size != size:
            raise PlanError(f"source file {f.name!r}: size {f.size} is not the {size} bytes its header implies")
    seen = set()
    for file in plan.files:
        check_name(file.name, "output file")
        if file.kind == "source":
            check_name(file.base, f"the source file of {file.name!r}")
        if file.name in seen:
            raise PlanError(f"output file {file.name!r} appears twice")
        seen.add(file.name)
    names = set()
    nodes = plan.nodes
    for out in plan.outputs:
        if out.name in names:
            raise PlanError(f"output {out.name!r} appears twice")
        names.add(out.name)
        _check_ref(plan, out.ref, f"output {out.name!r}")
        if not 0 <= out.file < len(plan.files) or plan.files[out.file].kind != "safetensors":
            raise PlanError(f"output {out.name!r} is not in a shard")
        dtype, shape = nodes[out.ref.node].outs[out.ref.out]
        if dtype != out.dtype or list(shape) != list(out.shape):
            raise PlanError(
                f"output {out.name!r}: {out.dtype}{list(out.shape)} is not what its node "
                f"computes ({dtype}{list(shape)})"
            )
    for guard in plan.guards:
        _check_ref(plan, guard.ref, "a guard")
        if guard.method not in GUARD_METHODS:
            raise PlanError(f"a guard calls {guard.method!r:.40}, which is not a value method")
    member = [0] * len(plan.outputs)
    for group in plan.groups:
        for i in group.outputs:
            if not 0 <= i < len(plan.outputs):
                raise PlanError("a group names a missing output")
            member[i] += 1
        rows = group_rows([plan.outputs[i] for i in group.outputs])
        if group.rows != rows or (group.unit and not 0 < group.unit < rows):
            raise PlanError("a group's rows or chunk unit do not match its outputs")
    if any(count != 1 for count in member):
        raise PlanError("every output must belong to exactly one group")
    if plan.accounting.outputs != len(plan.outputs) or plan.accounting.source_tensors != len(plan.source.tensors):
        raise PlanError("the accounting does not match the plan's outputs and sources")
