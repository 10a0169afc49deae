"""Placeholders for checkpoint tensors, made from safetensors headers only.

For each source file the conversion loads, we write a data-less header with its
tensors' dtypes and shapes to a sparse temporary file, let the real ``mx.load``
open it (so dtypes and dtype errors are exactly what eager conversion gets), and
then truncate the file. The arrays are lazy and never evaluated; if anything tried to, the read
would fail ("poisoned"), instead of silently producing zeros.
"""

import json
import os
import struct
import tempfile
from typing import Dict

import mlx.core as mx

from ..safetensors_format import Header, SafetensorsError, read_header


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

    def has_data(self) -> bool:
        """True when every opened file is as long as its header says."""
        return all(
            os.path.getsize(os.path.join(self.model_dir, n)) >= h.expected_size
            for n, h in self.headers.items()
        )
