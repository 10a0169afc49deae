"""Source files: check them against the plan, then read tensor pieces by offset.

Reading is split so that only the main thread calls mlx: ``prepare()``
allocates an mlx buffer for a piece (main thread), ``Piece.fill()`` preads the
bytes straight into it (any thread; no mlx call), ``Piece.array()`` gives the
array with the dtype mx.load would give (main thread).

A piece is exactly the region the planner costs (``planner.chunking``'s
``_region_bytes``): rows start:stop along one axis are, on disk, one run of
bytes per index of the axes before it, so a piece is read as that many runs
(one when the axis is the leading one), never as the whole tensor.
"""

import math
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import mlx.core as mx

from ..plan import Plan
from ..plan.dtypes import READ_DTYPES
from ..safetensors_format import SafetensorsError, read_header

Region = Optional[Tuple[int, int, int]]  # (axis, start, stop); None = the whole tensor


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
    """A source tensor piece being read into an mlx buffer: ``runs`` runs of
    ``run_bytes`` bytes each, the first at file offset ``offset``, the next
    ``stride`` bytes further, landing back to back in the buffer."""

    buffer: mx.array  # evaluated, raw dtype, the piece's shape, filled by fill()
    view: Optional[memoryview]  # of buffer, set once buffer is evaluated (before fill())
    reader: "SourceReader"
    file: int  # index into the plan's source files
    offset: int
    name: str
    dtype: mx.Dtype  # what mx.load gives
    runs: int = 1
    run_bytes: int = 0
    stride: int = 0

    def fill(self) -> None:
        assert self.view is not None  # the buffer is evaluated before the read thread fills it
        fd = self.reader.fd(self.file)
        for i in range(self.runs):
            start = i * self.run_bytes
            self._pread(fd, self.view[start : start + self.run_bytes], self.offset + i * self.stride)
        self.reader.count(len(self.view))

    def _pread(self, fd: int, view: memoryview, offset: int) -> None:
        done, length = 0, len(view)
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                path = self.reader.paths[self.file]
                raise SourceMismatch(f"{path}: tensor {self.name!r}: unexpected end of file")
            done += n

    def array(self) -> mx.array:
        return self.buffer if self.buffer.dtype == self.dtype else self.buffer.view(self.dtype)


class SourceReader:
    """Reads pieces of source tensors with pread; nothing stays mapped or cached.
    A file is opened at its first read (any thread) and closed by ``forget``."""

    def __init__(self, plan: Plan, paths: List[str]):
        self.paths = paths
        self.tensors = plan.source.tensors
        self._fds: Dict[int, int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0  # bytes of source data read so far

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
        raw, final = READ_DTYPES[dtype]  # (dtype of the raw bytes, what mx.load gives)
        dims = list(shape)
        runs, run_bytes, stride = 1, end - begin, 0
        offset = begin
        if region is not None:
            axis, a, b = region
            row_bytes = math.prod(dims[axis + 1 :]) * raw.size
            runs = math.prod(dims[:axis])
            run_bytes, stride = (b - a) * row_bytes, dims[axis] * row_bytes
            offset += a * row_bytes
            dims[axis] = b - a
            if run_bytes == stride:  # whole rows of every outer index: one run
                runs, run_bytes = 1, runs * run_bytes
        buffer = mx.zeros(dims, dtype=raw)
        return Piece(buffer, None, self, file_index, offset, name, final, runs, run_bytes, stride)

    def count(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes


def byte_view(array: mx.array) -> memoryview:
    """The bytes of an evaluated, contiguous array (no copy)."""
    # mx.array has the buffer protocol; mlx's stubs do not declare __buffer__
    return memoryview(array).cast("B") if array.size else memoryview(b"")  # type: ignore[arg-type]


def fill_all(pieces) -> None:
    for piece in pieces:
        piece.fill()
