"""Loading a plan: decode the file into the typed ``Plan``, checking as it goes.

Nothing in a plan file is trusted: the msgpack layer has size and nesting
limits, every record is type-checked field by field (no unknown fields), and
``checks.check_plan`` then derives and cross-checks sizes, offsets, names and
references. Any problem is one PlanError naming it.
"""

import hashlib
import os
import stat
from typing import Optional, Tuple

from .checks import check_depth, check_guard_args, check_plan, derive_shard, fields, integer, items, text
from .edits import edited_size
from .format import FORMAT, MAX_PLAN_BYTES, VERSION, decode_graph, unpack
from .source_tensors import decode_tensors
from .gc_pause import gc_paused
from .infer import check_avals
from .ops import PlanError
from .types import (
    Accounting,
    Dropped,
    Graph,
    Group,
    Guard,
    Memory,
    Output,
    OutputFile,
    Plan,
    Ref,
    Source,
    SourceFile,
    SourceTensor,
)
from ..safetensors_format import MLX_ITEMSIZE, mlx_nbytes

_OUTPUT_FIELDS = ("name", "dtype", "shape", "ref", "file", "offset")
_TOP_FIELDS = (
    "accounting",
    "copy_subdirectories",
    "files",
    "format",
    "groups",
    "guards",
    "library",
    "memory",
    "nodes",
    "options",
    "outputs",
    "signatures",
    "source",
    "version",
    "versions",
)


def _source(raw) -> Tuple[Source, Tuple[SourceTensor, ...]]:
    files_raw, names, read_raw, rows = fields(raw, "source", ("files", "names", "read_files", "tensors"))
    listed = []
    for f in items(files_raw, "source files"):
        name, size, sha, length, metadata = fields(
            f, "a source file", ("name", "size", "header_sha256", "header_length", "metadata")
        )
        listed.append(
            SourceFile(
                text(name, "a source file name"),
                integer(size, "a source file size"),
                text(sha, "a header hash"),
                integer(length, "a header length"),
                _metadata(metadata, "a source file"),
            )
        )
    files = tuple(listed)
    if not isinstance(read_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in read_raw.items()
    ):
        raise PlanError("source read_files must map names to bytes")
    tensors = tuple(decode_tensors(items(names, "source names"), items(rows, "source tensors"), files))
    return Source(files, tensors, read_raw), tensors


def _metadata(value, what: str) -> Optional[dict]:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise PlanError(f"{what}: metadata must map strings to strings")
    return value


def _outputs(rows) -> Tuple[Output, ...]:
    outputs = []
    for row in items(rows, "outputs"):
        name, dtype, shape, ref, file, offset = items(row, "an output", len(_OUTPUT_FIELDS))
        name = text(name, "an output name")
        if not isinstance(ref, Ref):
            raise PlanError(f"output {name!r}: no node reference")
        shape = tuple(integer(d, f"output {name!r}: a dimension") for d in items(shape, "a shape"))
        output = Output(
            name,
            text(dtype, f"output {name!r}: dtype"),
            shape,
            ref,
            integer(file, f"output {name!r}: file"),
            integer(offset, f"output {name!r}: offset"),
            0,
        )
        outputs.append(output._replace(nbytes=derive_nbytes(output)))
    return tuple(outputs)


def derive_nbytes(out: Output) -> int:
    """Bytes of an output, from its dtype and shape."""
    if out.dtype not in MLX_ITEMSIZE:
        raise PlanError(f"output {out.name!r}: unknown dtype {out.dtype!r}")
    return mlx_nbytes(out.dtype, out.shape)


def _files(rows, outputs: Tuple[Output, ...]) -> Tuple[OutputFile, ...]:
    files = []
    for i, f in enumerate(items(rows, "output files")):
        if isinstance(f, dict) and f.get("kind") == "text":
            data, _, name = fields(f, "a text file", ("data", "kind", "name"))
            if not isinstance(data, bytes):
                raise PlanError(f"text file {name!r}: data is not bytes")
            files.append(OutputFile(text(name, "a file name"), "text", len(data), data=data))
        elif isinstance(f, dict) and f.get("kind") == "source":
            files.append(_source_made(f))
        elif isinstance(f, dict) and f.get("kind") == "safetensors":
            _, metadata, name, size = fields(f, "a shard", ("kind", "metadata", "name", "size"))
            shard = OutputFile(
                text(name, "a shard name"),
                "safetensors",
                integer(size, "a shard size"),
                _metadata(metadata, f"shard {name!r}"),
            )
            files.append(derive_shard(shard, i, outputs))
        else:
            raise PlanError("an output file has an unknown kind")
    return tuple(files)


def _source_made(f: dict) -> OutputFile:
    """A file made from a source file (see edits.py); its size is derived."""
    base, base_size, edits, _, name, digest = fields(
        f, "a source-made file", ("base", "base_size", "edits", "kind", "name", "sha256")
    )
    name = text(name, "a file name")
    edits = tuple(tuple(items(e, f"file {name!r}: an edit", 3)) for e in items(edits, f"file {name!r}: edits"))
    base_size = integer(base_size, f"file {name!r}: base_size")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise PlanError(f"file {name!r}: sha256 is not a hex digest")
    return OutputFile(
        name,
        "source",
        edited_size(base_size, edits),
        base=text(base, f"file {name!r}: base"),
        base_size=base_size,
        edits=edits,
        sha256=digest,
    )


def _peak_line(line) -> Tuple[int, int]:
    fixed, per_unit = items(line, "a memory line", 2)
    return integer(fixed, "a memory line"), integer(per_unit, "a memory line")


def _groups(rows) -> Tuple[Group, ...]:
    groups = []
    for g in items(rows, "groups"):
        members, lines, count, unit = fields(g, "a group", ("outputs", "peak_lines", "rows", "unit"))
        peak_lines = tuple(_peak_line(line) for line in items(lines, "a group's memory model"))
        if not peak_lines:
            raise PlanError("a group has no memory model (peak_lines)")
        groups.append(
            Group(
                tuple(integer(i, "a group member") for i in items(members, "a group")),
                integer(count, "a group's rows"),
                integer(unit, "a group's unit"),
                peak_lines,
            )
        )
    return tuple(groups)


def _from_raw(raw) -> Plan:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise PlanError("not a sanitrace plan (format field missing)")
    if raw.get("version") != VERSION:
        raise PlanError(f"plan format version {raw.get('version')!r}; this sanitrace reads {VERSION}")
    for key in _TOP_FIELDS:
        if key not in raw:
            raise PlanError(f"plan has no {key!r} section")
    (
        accounting,
        copy_subdirectories,
        files,
        _,
        groups,
        guards,
        library,
        memory,
        rows,
        options,
        outputs,
        signatures,
        source,
        version,
        versions,
    ) = fields(raw, "the plan", _TOP_FIELDS)
    source, tensors = _source(source)
    nodes = decode_graph(items(signatures, "signatures"), items(rows, "nodes"), len(tensors))
    outputs = _outputs(outputs)
    guard_list = []
    for g in items(guards, "guards"):
        args, method, ref, value = fields(g, "a guard", ("args", "method", "ref", "value"))
        if not isinstance(ref, Ref):
            raise PlanError("a guard has no node reference")
        check_depth(value, "a guard value")
        method = text(method, "a guard method")
        guard_list.append(Guard(ref, method, value, check_guard_args(method, items(args, "a guard's args"))))
    source_tensors, used, dropped_raw, n_outputs, strict, loaded, loads, tokenizer = fields(
        accounting, "accounting", Accounting._fields
    )
    dropped = []
    for entry in items(dropped_raw, "dropped sources"):
        index, reason = items(entry, "a dropped source", 2)
        if type(index) is not int or not 0 <= index < len(tensors):
            raise PlanError("a dropped source names a missing tensor")
        t = tensors[index]
        dropped.append(Dropped(source.files[t.file].name, t.name, text(reason, "a drop reason")))
    if (
        not isinstance(options, dict)
        or not isinstance(versions, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items())
    ):
        raise PlanError("malformed options or versions")
    check_depth(options, "the options")
    plan = Plan(
        version=version,
        versions=versions,
        library=text(library, "the library"),
        options=options,
        source=source,
        graph=Graph(signatures, rows),
        outputs=outputs,
        files=_files(files, outputs),
        groups=_groups(groups),
        guards=tuple(guard_list),
        copy_subdirectories=copy_subdirectories is True,
        memory=Memory(
            *(integer(v, f"memory {k}", -1) for k, v in zip(Memory._fields, fields(memory, "memory", Memory._fields)))
        ),
        accounting=Accounting(
            integer(source_tensors, "accounting"),
            integer(used, "accounting"),
            tuple(dropped),
            integer(n_outputs, "accounting"),
            text(strict, "accounting"),
            integer(loaded, "accounting"),
            text(loads, "accounting"),
            text(tokenizer, "accounting"),
        ),
    )
    plan.__dict__["nodes"] = nodes  # the cached_property, already decoded and checked
    check_plan(plan)
    check_avals(plan)
    return plan


def loads(data: bytes) -> Plan:
    """Decode and validate a plan. Raises PlanError on anything unexpected."""
    if len(data) > MAX_PLAN_BYTES:
        raise PlanError(f"plan of {len(data)} bytes exceeds {MAX_PLAN_BYTES}")
    try:
        raw = unpack(data)
    except PlanError:
        raise
    except Exception as e:  # msgpack raises many types for corrupt input
        raise PlanError(f"not a sanitrace plan: {e}") from None
    try:
        plan = _from_raw(raw)
    except PlanError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, OverflowError, RecursionError) as e:
        raise PlanError(f"malformed plan: {type(e).__name__}: {str(e)[:200]}") from None
    plan.__dict__["digest"] = hashlib.sha256(data).hexdigest()  # the bytes that were reviewed
    return plan


def load(path: str) -> Plan:
    """Read and validate the plan file ``path`` (a regular file; PlanError names it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise PlanError(f"{path}: cannot open: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PlanError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PLAN_BYTES + 1)
    except OSError as e:
        raise PlanError(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        with gc_paused():
            return loads(data)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None
