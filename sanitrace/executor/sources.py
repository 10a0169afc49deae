"""Source files: check them against the plan, then read tensor pieces by offset."""

import math
import os
from typing import Dict, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..safetensors_format import SafetensorsError, read_header

# safetensors dtype -> (numpy dtype of the raw bytes, mlx dtype mx.load gives)
_DTYPES = {
    "BOOL": (np.bool_, mx.bool_),
    "U8": (np.uint8, mx.uint8),
    "I8": (np.int8, mx.int8),
    "U16": (np.uint16, mx.uint16),
    "I16": (np.int16, mx.int16),
    "U32": (np.uint32, mx.uint32),
    "I32": (np.int32, mx.int32),
    "U64": (np.uint64, mx.uint64),
    "I64": (np.int64, mx.int64),
    "F16": (np.float16, mx.float16),
    "BF16": (np.uint16, mx.bfloat16),
    "F32": (np.float32, mx.float32),
    "C64": (np.complex64, mx.complex64),
    "F8_E4M3": (np.uint8, mx.uint8),
    "F8_E8M0": (np.uint8, mx.uint8),
}


class SourceMismatch(ValueError):
    """The source folder is not the one the plan was traced from."""


def verify_sources(plan: dict, source_dir: str) -> None:
    """Every plan source file exists with the same header and full length."""
    for entry in plan["source"]["files"]:
        path = os.path.join(source_dir, entry["name"])
        if not os.path.isfile(path):
            raise SourceMismatch(f"{path}: missing (the plan reads it)")
        try:
            header = read_header(path)
        except SafetensorsError as e:
            raise SourceMismatch(str(e)) from None
        if header.sha256 != entry["header_sha256"]:
            raise SourceMismatch(f"{path}: header differs from the one the plan was traced from")
        size = os.path.getsize(path)
        if size < entry["size"]:
            raise SourceMismatch(
                f"{path}: truncated: {size} bytes, its header needs {entry['size']}"
            )


class SourceReader:
    """Reads pieces of source tensors with pread; nothing stays mapped or cached."""

    def __init__(self, plan: dict, source_dir: str):
        self.files = [os.path.join(source_dir, f["name"]) for f in plan["source"]["files"]]
        self.tensors = plan["source"]["tensors"]
        self._fds: Dict[int, int] = {}

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, file_index: int) -> int:
        if file_index not in self._fds:
            self._fds[file_index] = os.open(self.files[file_index], os.O_RDONLY)
        return self._fds[file_index]

    def read(self, index: int, region: Optional[Tuple[int, int, int]]) -> mx.array:
        """Tensor ``index`` of the source table, whole or rows start:stop along an axis."""
        file_index, name, dtype, shape, begin, end = self.tensors[index]
        np_dtype, mx_dtype = _DTYPES[dtype]
        itemsize = np.dtype(np_dtype).itemsize
        if region is not None and math.prod(shape[: region[0]]) == 1:
            axis, a, b = region
            row = math.prod(shape[axis + 1:]) * itemsize
            data = self._pread(file_index, begin + a * row, (b - a) * row, name)
            piece_shape = list(shape)
            piece_shape[axis] = b - a
            region = None
        else:
            data = self._pread(file_index, begin, end - begin, name)
            piece_shape = list(shape)
        array = mx.array(np.frombuffer(data, dtype=np_dtype).reshape(piece_shape))
        del data
        if array.dtype != mx_dtype:
            array = array.view(mx_dtype)
        if region is not None:
            axis, a, b = region
            index_tuple = (slice(None),) * axis + (slice(a, b),)
            array = array[index_tuple]
        return array

    def _pread(self, file_index: int, offset: int, length: int, name: str) -> bytearray:
        buf = bytearray(length)
        view = memoryview(buf)
        fd = self._fd(file_index)
        done = 0
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise SourceMismatch(
                    f"{self.files[file_index]}: tensor {name!r}: unexpected end of file"
                )
            done += n
        return buf
