"""Reading and writing safetensors headers, without any array library; and the
dtype table (``DTYPES``): each safetensors dtype's size and the mlx dtypes that
read and write it.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the data region. Offsets are relative to the start of the data region.
"""

import hashlib
import json
import math
import operator
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, List, NamedTuple, Optional, Tuple

MAX_HEADER_BYTES = 100_000_000  # the safetensors reference limit
# mlx holds each dimension in an int32 (mx.zeros((2**31,)) raises OverflowError,
# mx.load refuses such a header); element counts beyond 2**31 are fine
MAX_DIM = 2**31 - 1
MAX_NDIM = 64  # numpy's; a bound so a malformed shape cannot make math.prod crawl
MAX_OFFSET = 2**63 - 1  # a file offset (off_t)


class Dtype(NamedTuple):
    """A safetensors dtype and the mlx dtypes (by name) that read and write it."""

    size: int  # bytes per element
    loads_as: Optional[str]  # what mx.load gives; None: mx.load refuses the dtype
    raw: Optional[str]  # an mlx dtype of the same size to read its bytes into (None: never read)
    saved_from: Optional[str]  # the mlx dtype mx.save_safetensors writes as this dtype (None: none)


# Every safetensors dtype a header may name (read_header refuses others), as
# mlx 0.32.4 reads and writes it: mx.load refuses F64 and F8_E5M2 and gives
# F8_E4M3 and F8_E8M0 as uint8; the executor reads BF16 bytes into a uint16
# buffer and views it as bfloat16. One exception: mx.save_safetensors refuses
# float64, which a plan's output still writes as F64. tests/test_tables.py
# checks each row against the real mx.load and mx.save_safetensors.
DTYPES = {
    "BOOL": Dtype(1, "bool", "bool", "bool"),
    "U8": Dtype(1, "uint8", "uint8", "uint8"),
    "I8": Dtype(1, "int8", "int8", "int8"),
    "U16": Dtype(2, "uint16", "uint16", "uint16"),
    "I16": Dtype(2, "int16", "int16", "int16"),
    "F16": Dtype(2, "float16", "float16", "float16"),
    "BF16": Dtype(2, "bfloat16", "uint16", "bfloat16"),
    "U32": Dtype(4, "uint32", "uint32", "uint32"),
    "I32": Dtype(4, "int32", "int32", "int32"),
    "F32": Dtype(4, "float32", "float32", "float32"),
    "U64": Dtype(8, "uint64", "uint64", "uint64"),
    "I64": Dtype(8, "int64", "int64", "int64"),
    "F64": Dtype(8, None, None, "float64"),
    "C64": Dtype(8, "complex64", "complex64", "complex64"),
    "F8_E4M3": Dtype(1, "uint8", "uint8", None),
    "F8_E5M2": Dtype(1, None, None, None),
    "F8_E8M0": Dtype(1, "uint8", "uint8", None),
}

DTYPE_SIZES = {st: d.size for st, d in DTYPES.items()}  # bytes per element
# safetensors dtype -> the mlx dtype name mx.load gives, for those it reads
LOAD_DTYPES = {st: d.loads_as for st, d in DTYPES.items() if d.loads_as is not None}
# safetensors dtype -> (mlx dtype name to read its bytes into, the one mx.load gives)
READ_DTYPE_NAMES = {st: (d.raw, d.loads_as) for st, d in DTYPES.items() if d.raw is not None and d.loads_as is not None}
# mlx dtype name -> safetensors dtype string, as mx.save_safetensors writes it
MLX_TO_SAFETENSORS = {d.saved_from: st for st, d in DTYPES.items() if d.saved_from is not None}
MLX_ITEMSIZE = {name: DTYPE_SIZES[st] for name, st in MLX_TO_SAFETENSORS.items()}  # by mlx dtype name

# the safetensors Dtype enum order; its writer stores tensors by this order,
# descending, then by name
WRITER_ORDER = [
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
]


def mlx_nbytes(dtype: str, shape) -> int:
    """Bytes of an mlx array of ``dtype`` (a name in MLX_ITEMSIZE) and ``shape``:
    the one rule the planner's layout and plan loading both use."""
    return math.prod(shape) * MLX_ITEMSIZE[dtype]


class SafetensorsError(ValueError):
    """A safetensors file is malformed; the message names the file."""


class TensorInfo(NamedTuple):  # a NamedTuple: a DeepSeek-V3 trace makes 92k of them
    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    path: str
    header_bytes: bytes  # the raw JSON, exactly as stored (for hashing)
    tensors: Dict[str, TensorInfo]
    metadata: Optional[Dict[str, str]]

    @property
    def data_start(self) -> int:
        return 8 + len(self.header_bytes)

    def in_data_order(self) -> List[TensorInfo]:
        """The tensors in file order (by offset, then name): a plan's source table order."""
        return sorted(self.tensors.values(), key=_BY_BEGIN_NAME)

    @property
    def expected_size(self) -> int:
        """File size the header implies (header plus the end of the last tensor)."""
        end = max((t.end for t in self.tensors.values()), default=self.data_start)
        return max(end, self.data_start)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.header_bytes).hexdigest()


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, for messages."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"


def check_regular(path: str, error=SafetensorsError) -> os.stat_result:
    """``os.stat(path)`` when ``path`` is a regular file (symlinks followed); else
    ``error`` naming it. A FIFO or device would block a reader or never end."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular file")
    return st


def open_regular(path: str, error=SafetensorsError) -> BinaryIO:
    """``path`` opened for binary reading, refused (``error`` naming it) unless it
    is a regular file. Checked before opening and again on the open file, which
    is opened non-blocking: a FIFO swapped in meanwhile cannot hang the open."""
    check_regular(path, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: is {file_kind(mode)}, not a regular file")
    return os.fdopen(fd, "rb")


_BY_OFFSETS = operator.itemgetter(3, 4)  # TensorInfo (begin, end)
_BY_BEGIN_NAME = operator.itemgetter(3, 0)  # TensorInfo (begin, name)
_ints = {int}.issuperset  # of map(type, ...): JSON true and 1.0 are no sizes


def _short(value) -> str:
    """repr of a header value for a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_header(path: str) -> Header:
    """Parse and validate the header of ``path``; never reads the data region.

    Every malformed header raises SafetensorsError naming the file (and the
    tensor): an entry must be ``{"dtype": one of DTYPE_SIZES, "shape": [int],
    "data_offsets": [begin, end]}`` with dims <= MAX_DIM, ``end - begin`` the
    tensor's bytes, ``end`` <= MAX_OFFSET and no two tensors overlapping;
    ``__metadata__`` is a str -> str object. A name given twice is the last
    entry, as in mx.load. The data region may be missing (header-only and
    sparse copies are traceable)."""
    name = os.fspath(path)
    with open_regular(name) as f:
        try:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise SafetensorsError(f"{name}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{name}: header of {n} bytes exceeds the {MAX_HEADER_BYTES} byte limit")
            raw = f.read(n)
        except OSError as e:
            raise SafetensorsError(f"{name}: cannot read: {e.strerror}") from None
    if len(raw) != n:
        raise SafetensorsError(f"{name}: header truncated ({len(raw)} of {n} bytes)")
    if not raw.strip():
        raise SafetensorsError(f"{name}: header is empty")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{name}: header is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SafetensorsError(f"{name}: header is not valid JSON: {e}") from None
    except RecursionError:
        raise SafetensorsError(f"{name}: header is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise SafetensorsError(f"{name}: header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(type(v) is str for v in metadata.values())):
        raise SafetensorsError(f"{name}: __metadata__ is not an object of strings")
    data_start = 8 + n
    tensors = {}
    new = tuple.__new__  # TensorInfo(...) without NamedTuple's Python-level __new__ (Kimi-K2.6: 208,550)
    sizes = DTYPE_SIZES
    for key, entry in doc.items():
        if type(entry) is not dict:
            raise SafetensorsError(f"{name}: tensor {_short(key)}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if type(dtype) is not str or dtype not in sizes:
            raise SafetensorsError(f"{name}: tensor {_short(key)}: unknown dtype {_short(dtype)}")
        if (
            type(shape) is not list
            or len(shape) > MAX_NDIM
            or not _ints(map(type, shape))
            or (shape and not 0 <= min(shape) <= max(shape) <= MAX_DIM)
        ):
            raise SafetensorsError(
                f"{name}: tensor {_short(key)}: shape {_short(shape)} is not a list of at "
                f"most {MAX_NDIM} sizes 0..{MAX_DIM}"
            )
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or not _ints(map(type, offsets))
            or not 0 <= offsets[0] <= offsets[1] <= MAX_OFFSET
        ):
            raise SafetensorsError(
                f"{name}: tensor {_short(key)}: data_offsets {_short(offsets)} are not [begin, end] "
                f"with 0 <= begin <= end <= {MAX_OFFSET}"
            )
        begin, end = offsets
        if end - begin != math.prod(shape) * sizes[dtype]:
            raise SafetensorsError(
                f"{name}: tensor {_short(key)}: data_offsets {offsets} ({end - begin} bytes) do "
                f"not match {dtype} {shape}"
            )
        tensors[key] = new(TensorInfo, (key, dtype, tuple(shape), data_start + begin, data_start + end))
    previous = None
    for t in sorted(tensors.values(), key=_BY_OFFSETS):
        if previous is not None and t.begin < previous.end:
            raise SafetensorsError(
                f"{name}: tensors {_short(previous.name)} and {_short(t.name)} overlap in the data region"
            )
        previous = t
    return Header(name, raw, tensors, metadata)


def build_header(tensors: List[tuple], metadata: Optional[Dict[str, str]]) -> Tuple[bytes, List[int]]:
    """Header bytes for ``tensors`` ([(name, dtype, shape, nbytes)]) in that data order.

    Keys are sorted and separators compact, as nlohmann::json (used by
    mx.save_safetensors) writes them; the header is padded with spaces to a
    multiple of 8 like the reference writer, so every tensor is 8-byte aligned.
    Returns the bytes to write before the data (length prefix included) and the
    absolute file offset of each tensor.
    """
    doc: Dict[str, Any] = {}
    if metadata is not None:
        doc["__metadata__"] = metadata
    offset = 0
    relative: List[int] = []
    for name, dtype, shape, nbytes in tensors:
        doc[name] = {
            "data_offsets": [offset, offset + nbytes],
            "dtype": dtype,
            "shape": list(shape),
        }
        relative.append(offset)
        offset += nbytes
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    prefix = struct.pack("<Q", len(raw)) + raw
    return prefix, [len(prefix) + r for r in relative]
