"""Reading and writing safetensors headers, without any array library.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the data region. Offsets are relative to the start of the data region.
"""

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional

MAX_HEADER_BYTES = 100_000_000  # the safetensors reference limit

# bytes per element of every safetensors dtype mx.load can return an array for
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
    "C64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}

# the safetensors Dtype enum order; its writer stores tensors by this order,
# descending, then by name
WRITER_ORDER = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
]

# mlx dtype name -> safetensors dtype string, as mx.save_safetensors writes it
MLX_TO_SAFETENSORS = {
    "bool": "BOOL",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
}
MLX_ITEMSIZE = {name: DTYPE_SIZES[st] for name, st in MLX_TO_SAFETENSORS.items()}  # by mlx dtype name


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

    @property
    def expected_size(self) -> int:
        """File size the header implies (header plus the end of the last tensor)."""
        end = max((t.end for t in self.tensors.values()), default=self.data_start)
        return max(end, self.data_start)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.header_bytes).hexdigest()


def read_header(path: str) -> Header:
    """Parse and validate the header of ``path``; never reads the data region."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise SafetensorsError(f"{name}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(
                    f"{name}: header of {n} bytes exceeds the {MAX_HEADER_BYTES} byte limit"
                )
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsError(f"{name}: cannot read: {e.strerror}") from e
    if len(raw) != n:
        raise SafetensorsError(f"{name}: header truncated ({len(raw)} of {n} bytes)")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{name}: header is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise SafetensorsError(f"{name}: header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    data_start = 8 + n
    tensors = {}
    for key, entry in doc.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(map(int, entry["shape"]))
            begin, end = map(int, entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{name}: tensor {key!r}: malformed entry") from e
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"{name}: tensor {key!r}: unknown dtype {dtype}")
        if min(shape, default=0) < 0 or begin < 0 or end < begin:
            raise SafetensorsError(f"{name}: tensor {key!r}: invalid shape or offsets")
        if (end - begin) != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise SafetensorsError(
                f"{name}: tensor {key!r}: {end - begin} bytes do not match "
                f"{dtype} {list(shape)}"
            )
        tensors[key] = TensorInfo(key, dtype, shape, data_start + begin, data_start + end)
    return Header(name, raw, tensors, metadata)


def build_header(
    tensors: List[tuple], metadata: Optional[Dict[str, str]]
) -> (bytes, List[int]):
    """Header bytes for ``tensors`` ([(name, dtype, shape, nbytes)]) in that data order.

    Keys are sorted and separators compact, as nlohmann::json (used by
    mx.save_safetensors) writes them; the header is padded with spaces to a
    multiple of 8 like the reference writer, so every tensor is 8-byte aligned.
    Returns the bytes to write before the data (length prefix included) and the
    absolute file offset of each tensor.
    """
    doc = {}
    if metadata is not None:
        doc["__metadata__"] = metadata
    offset = 0
    relative = []
    for name, dtype, shape, nbytes in tensors:
        doc[name] = {
            "data_offsets": [offset, offset + nbytes],
            "dtype": dtype,
            "shape": list(shape),
        }
        relative.append(offset)
        offset += nbytes
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = raw.encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    prefix = struct.pack("<Q", len(raw)) + raw
    return prefix, [len(prefix) + r for r in relative]


def write_file(path: str, tensors: List[tuple], metadata: Optional[Dict[str, str]]):
    """Write a complete safetensors file from [(name, dtype, shape, data_bytes)]."""
    prefix, _ = build_header(
        [(n, d, s, len(b)) for n, d, s, b in tensors], metadata
    )
    with open(path, "wb") as f:
        f.write(prefix)
        for *_, data in tensors:
            f.write(data)
