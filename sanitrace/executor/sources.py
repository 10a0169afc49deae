"""Source files: check them against the plan, then read tensor pieces by offset.

Reading is split so that only the main thread calls mlx: ``prepare()``
allocates an mlx buffer for a piece (main thread), ``Piece.fill()`` preads the
bytes straight into it (any thread; no mlx call), ``Piece.array()`` gives the
array with the dtype mx.load would give (main thread).
"""

import math
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from ..plan import Plan
from ..safetensors_format import SafetensorsError, read_header

# safetensors dtype -> (mlx dtype of the raw bytes, mlx dtype mx.load gives)
_DTYPES = {
    "BOOL": (mx.bool_, mx.bool_),
    "U8": (mx.uint8, mx.uint8),
    "I8": (mx.int8, mx.int8),
    "U16": (mx.uint16, mx.uint16),
    "I16": (mx.int16, mx.int16),
    "U32": (mx.uint32, mx.uint32),
    "I32": (mx.int32, mx.int32),
    "U64": (mx.uint64, mx.uint64),
    "I64": (mx.int64, mx.int64),
    "F16": (mx.float16, mx.float16),
    "BF16": (mx.uint16, mx.bfloat16),
    "F32": (mx.float32, mx.float32),
    "C64": (mx.complex64, mx.complex64),
    "F8_E4M3": (mx.uint8, mx.uint8),
    "F8_E8M0": (mx.uint8, mx.uint8),
}

Region = Optional[Tuple[int, int, int]]


class SourceMismatch(ValueError):
    """The source folder is not the one the plan was traced from."""


def verify_sources(plan: Plan, paths: List[str]) -> None:
    """``verify_file`` for every source file of the plan (``paths[i]`` is file i)."""
    tables = planned_tables(plan)
    for i, path in enumerate(paths):
        verify_file(plan, i, path, tables[i])


def planned_tables(plan: Plan) -> List[list]:
    """Per source file, the plan's (name, dtype, shape, begin, end) of its tensors,
    in data order: what ``verify_file`` compares a header with (built once per plan)."""
    tables: List[list] = [[] for _ in plan.source.files]
    for t in plan.source.tensors:
        tables[t.file].append((t.name, t.dtype, t.shape, t.begin, t.end))
    return tables


def verify_file(plan: Plan, index: int, path: str, planned: list) -> None:
    """Source file ``index`` exists at ``path`` with the plan's header and full
    length, and ``planned`` (its ``planned_tables`` entry) is the tensor table
    that header gives (names, dtypes, shapes, offsets): what the executor reads
    is derived from the real header."""
    entry = plan.source.files[index]
    if not os.path.isfile(path):
        raise SourceMismatch(f"{path}: missing (the plan reads it)")
    try:
        header = read_header(path)
    except SafetensorsError as e:
        raise SourceMismatch(str(e)) from None
    if header.sha256 != entry.header_sha256:
        raise SourceMismatch(f"{path}: header differs from the one the plan was traced from")
    size = os.path.getsize(path)
    if size < entry.size:
        raise SourceMismatch(f"{path}: truncated: {size} bytes, its header needs {entry.size}")
    table = [(t.name, t.dtype, t.shape, t.begin, t.end) for t in header.in_data_order()]
    if table != planned:
        raise SourceMismatch(f"{path}: the plan's tensor table does not match this file's header")


@dataclass
class Piece:
    """A source tensor piece being read into an mlx buffer."""

    buffer: mx.array  # evaluated, raw dtype, filled by fill()
    view: memoryview
    reader: "SourceReader"
    file: int  # index into the plan's source files
    offset: int
    name: str
    dtype: mx.Dtype  # what mx.load gives
    crop: Region  # applied after reading when the region is not contiguous on disk

    def fill(self) -> None:
        done, length = 0, len(self.view)
        fd = self.reader.fd(self.file)
        while done < length:
            n = os.preadv(fd, [self.view[done:]], self.offset + done)
            if n <= 0:
                path = self.reader.paths[self.file]
                raise SourceMismatch(f"{path}: tensor {self.name!r}: unexpected end of file")
            done += n

    def array(self) -> mx.array:
        array = self.buffer
        if array.dtype != self.dtype:
            array = array.view(self.dtype)
        if self.crop is not None:
            axis, a, b = self.crop
            array = array[(slice(None),) * axis + (slice(a, b),)]
        return array


class SourceReader:
    """Reads pieces of source tensors with pread; nothing stays mapped or cached.
    A file is opened at its first read (any thread) and closed by ``forget``."""

    def __init__(self, plan: Plan, paths: List[str]):
        self.paths = paths
        self.tensors = plan.source.tensors
        self._fds: Dict[int, int] = {}
        self._lock = threading.Lock()

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def fd(self, file_index: int) -> int:
        with self._lock:
            if file_index not in self._fds:
                self._fds[file_index] = os.open(self.paths[file_index], os.O_RDONLY)
            return self._fds[file_index]

    def forget(self, file_index: int) -> None:
        """Close file ``file_index`` (it is about to be deleted)."""
        with self._lock:
            fd = self._fds.pop(file_index, None)
        if fd is not None:
            os.close(fd)

    def prepare(self, index: int, region: Region) -> Piece:
        """Allocate the buffer for tensor ``index`` of the source table, whole or
        rows start:stop along an axis (main thread). Call ``mx.eval`` on the
        buffers before filling them."""
        file_index, name, dtype, shape, begin, end = self.tensors[index]
        raw, final = _DTYPES[dtype]
        shape = list(shape)
        offset, crop = begin, None
        if region is not None:
            axis, a, b = region
            if math.prod(shape[:axis]) == 1:
                offset += a * math.prod(shape[axis + 1:]) * raw.size
                shape[axis] = b - a
            else:
                crop = region  # strided on disk: read whole, slice after
        buffer = mx.zeros(shape, dtype=raw)
        return Piece(buffer, None, self, file_index, offset, name, final, crop)


def byte_view(array: mx.array) -> memoryview:
    """The bytes of an evaluated, contiguous array (no copy)."""
    return memoryview(array).cast("B") if array.size else memoryview(b"")


def fill_all(pieces) -> None:
    for piece in pieces:
        piece.fill()
