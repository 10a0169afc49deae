"""The in-memory plan: one frozen, typed form, built by the planner and by ``loads``.

Everything a consumer (show, diff, execute, retrace) reads is here, already
validated and with every derivable fact derived (tensor offsets, byte sizes,
shard headers). Records are NamedTuples; ``Plan`` is a frozen dataclass whose
decoded graph and digest are computed on first use.
"""

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple


class Ref:
    """Output ``out`` of graph node ``node`` (immutable; hundreds of thousands are made)."""

    __slots__ = ("node", "out")

    def __init__(self, node: int, out: int = 0):
        self.node = node
        self.out = out

    def __eq__(self, other):
        return type(other) is Ref and self.node == other.node and self.out == other.out

    def __hash__(self):
        return hash((self.node, self.out))

    def __repr__(self):
        return f"Ref({self.node}, {self.out})"


class Slot:
    """Where array input ``index`` of a node goes in its arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __eq__(self, other):
        return type(other) is Slot and self.index == other.index

    def __hash__(self):
        return hash(("slot", self.index))

    def __repr__(self):
        return f"Slot({self.index})"


class Node(NamedTuple):
    op: str  # "load", "const" or an allowlisted op name
    inputs: List[Ref]  # array inputs, in the order their Slots appear in args then kwargs
    args: list  # literal positional arguments (load: [source tensor index]; const: [bytes])
    kwargs: dict
    outs: List[list]  # [dtype name, shape] of each output


class SourceFile(NamedTuple):
    name: str  # relative to the model folder
    size: int  # the length its header implies (header + end of the last tensor)
    header_sha256: str
    header_length: int
    metadata: Optional[Dict[str, str]]


class SourceTensor(NamedTuple):
    file: int  # index into Source.files
    name: str
    dtype: str  # safetensors dtype string
    shape: Tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


class Source(NamedTuple):
    files: Tuple[SourceFile, ...]  # sorted by name
    tensors: Tuple[SourceTensor, ...]  # files in order, tensors in data order within a file
    read_files: Dict[str, bytes]  # small files the library read (config.json, ...)


class Output(NamedTuple):
    name: str
    dtype: str  # mlx dtype name
    shape: Tuple[int, ...]
    ref: Ref
    file: int  # index into Plan.files
    offset: int  # absolute, in that file
    nbytes: int


class OutputFile(NamedTuple):
    name: str  # relative to the output folder
    kind: str  # "safetensors", "text" (bytes in the plan) or "source" (a source file, edited)
    size: int  # shards: header + data; text: len(data); source: derived from base_size and edits
    metadata: Optional[Dict[str, str]] = None  # shards
    header: bytes = b""  # shards: the bytes before the data, derived from the outputs
    data: bytes = b""  # text files
    base: str = ""  # source: the source file it is made from (relative to the source folder)
    base_size: int = 0  # source: that file's size
    edits: Tuple[Tuple[int, int, bytes], ...] = ()  # source: (begin, end, bytes) replacements, ascending
    sha256: str = ""  # source: of the bytes written


class Group(NamedTuple):
    outputs: Tuple[int, ...]  # indices into Plan.outputs
    rows: int  # the shared leading size (0 when the outputs differ)
    unit: int  # chunk boundaries are multiples of this; 0 = whole only
    peak_lines: Tuple[Tuple[int, int], ...]  # memory model: max(fixed + per_unit * units)


class Guard(NamedTuple):
    ref: Ref
    method: str  # a value method of mx.array (checks.GUARD_METHODS)
    value: Any  # what it returned at trace time (arrays as nested lists)
    args: Tuple[Any, ...] = ()  # the literal arguments it was called with


class Memory(NamedTuple):
    budget: int
    baseline: int
    predicted_peak: int
    largest_group: int


class Dropped(NamedTuple):
    file: str
    name: str
    reason: str


class Accounting(NamedTuple):
    source_tensors: int
    used_sources: int
    dropped: Tuple[Dropped, ...]
    outputs: int
    strict_load: str
    loaded_parameters: int
    loads: str = ""  # "yes", "no: why" or "unchecked: why" (the library's own loader on the output)
    tokenizer: str = ""  # "" when the tokenizer/processor files are written, else why they are not


class Graph(NamedTuple):
    """The op graph in the file's encoding: shared signatures and one row per node."""

    signatures: list
    rows: list


@dataclass(frozen=True, eq=False)
class Plan:
    version: int
    versions: Dict[str, str]
    library: str
    options: Dict[str, Any]
    source: Source
    graph: Graph
    outputs: Tuple[Output, ...]
    files: Tuple[OutputFile, ...]
    groups: Tuple[Group, ...]
    guards: Tuple[Guard, ...]
    copy_subdirectories: bool
    memory: Memory
    accounting: Accounting

    @functools.cached_property
    def nodes(self) -> List[Node]:
        """The graph as ``Node``s in topological order (decoded and checked on first use)."""
        from .format import decode_graph

        return decode_graph(self.graph.signatures, self.graph.rows, len(self.source.tensors))

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the plan's bytes: of the file it was loaded from (``loads``
        sets it), else of its canonical encoding (a traced plan's file is that
        encoding). What ``show`` prints and ``execute --digest`` compares."""
        from .format import dumps

        return hashlib.sha256(dumps(self)).hexdigest()

    @property
    def output_bytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)

    @property
    def shards(self) -> List[OutputFile]:
        return [f for f in self.files if f.kind == "safetensors"]
