"""Placeholders for checkpoint tensors, made from safetensors headers only.

For each source file the conversion loads, we write a data-less header with its
tensors' dtypes and shapes to a sparse temporary file, let the real ``mx.load``
open it (so dtypes and dtype errors are exactly what eager conversion gets), and
then truncate the file. The arrays are lazy and never evaluated; if anything tried to, the read
would fail ("poisoned"), instead of silently producing zeros.
"""

import errno
import json
import os
import struct
import tempfile
from typing import Dict, Optional

import mlx.core as mx

from ..safetensors_format import Header, SafetensorsError, open_regular, read_header


class SourceSet:
    """The source files a trace has opened, keyed by their name in the model folder."""

    def __init__(self, model_dir: str):
        self.model_dir = os.path.abspath(model_dir)
        self.headers: Dict[str, Header] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="sanitrace-")

    def close(self):
        self._tmp.cleanup()

    def relative_name(self, path: str) -> str:
        full = os.path.abspath(os.fspath(path))
        rel = os.path.relpath(full, self.model_dir)
        if rel.startswith(".."):
            raise SafetensorsError(f"{full}: outside the model folder {self.model_dir}")
        return rel.replace(os.sep, "/")

    def placeholders(self, path: str, original_load) -> Dict[str, mx.array]:
        """name -> lazy poisoned array for every tensor of ``path``, in name order.

        Tensors of one dtype and shape share an array: the header mx.load opens
        has one entry per distinct (dtype, shape), a few per file (mx.load takes
        0.6 s to make DeepSeek-V3's 92k arrays one by one)."""
        name = self.relative_name(path)
        header = self.headers.get(name) or read_header(os.path.join(self.model_dir, name))
        self.headers[name] = header
        kinds: Dict[tuple, str] = {}  # (dtype, shape) -> its entry in the data-less header
        entries = {}
        largest = None
        for t in header.tensors.values():
            if (t.dtype, t.shape) not in kinds:
                key = kinds[(t.dtype, t.shape)] = str(len(kinds))
                entries[key] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [0, t.nbytes]}
                if largest is None or t.nbytes > largest.nbytes:
                    largest = t
        raw = json.dumps(entries, separators=(",", ":")).encode()
        fake = os.path.join(self._tmp.name, f"{len(self.headers)}.safetensors")
        with open(fake, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
        try:
            os.truncate(fake, 8 + len(raw) + (largest.nbytes if largest else 0))
            arrays = original_load(fake)
        except (OSError, OverflowError) as e:
            assert largest is not None  # only a tensor's size can overflow the placeholder file
            raise SafetensorsError(
                f"{name}: tensor {largest.name!r} ({largest.nbytes} bytes) is too large "
                f"for a placeholder file: {getattr(e, 'strerror', None) or e}"
            ) from None
        except (ValueError, RuntimeError) as e:
            raise SafetensorsError(f"{name}: mx.load refuses this file: {str(e).splitlines()[0]}") from None
        finally:
            os.truncate(fake, 8 + len(raw))
        tensors = header.tensors
        return {key: arrays[kinds[(tensors[key].dtype, tensors[key].shape)]] for key in sorted(tensors)}

    def missing_data(self, name: str, tensor: str) -> Optional[str]:
        """Why the opened file ``name`` holds no real bytes for ``tensor`` (a
        header-only copy, truncated or sparse), or None when they are there.

        A copy made by writing the header and truncating the file up to its
        size is as long as the header says but stores nothing: its data region
        is one hole. Holes are found with SEEK_DATA / SEEK_HOLE (in the tensor's
        bytes, or everywhere past the header's block), or, where the file
        system cannot tell, from ``st_blocks``."""
        header = self.headers[name]
        t = header.tensors[tensor]
        path = os.path.join(self.model_dir, name)
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            if st.st_size < header.expected_size:
                what = "headers only" if st.st_size <= header.data_start else "incomplete"
                return f"{path} is {what} ({st.st_size} of the {header.expected_size} bytes its header implies)"
            block = max(st.st_blksize, 4096)
            after_header = -(-header.data_start // block) * block  # the header's block stores a few data bytes
            holes = _holes(f.fileno(), t.begin, t.end)
            if not holes and after_header < header.expected_size:
                holes = _holes(f.fileno(), after_header, header.expected_size, everywhere=True)
            if holes is None:  # no SEEK_DATA: a file that allocates no more than its header
                holes = 0 < st.st_blocks * 512 <= after_header < header.expected_size
        if holes:
            return f"{path} is headers only (sparse: no data stored for tensor {tensor!r})"
        return None


def _holes(fd: int, begin: int, end: int, everywhere: bool = False) -> Optional[bool]:
    """Whether bytes ``begin:end`` of the open file ``fd`` have a hole (bytes not
    stored, read as zeros) or, with ``everywhere``, are all one hole; None when
    the file system cannot tell."""
    seek_data = getattr(os, "SEEK_DATA", None)
    if seek_data is None or begin >= end:
        return None if seek_data is None else False
    try:
        data = os.lseek(fd, begin, seek_data)
        if everywhere:
            return data >= end
        return data > begin or os.lseek(fd, begin, os.SEEK_HOLE) < end
    except OSError as e:
        return True if e.errno == errno.ENXIO else None  # ENXIO: no data from ``begin`` on
