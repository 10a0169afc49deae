"""Compare two converted model folders: the same files, every file byte-equal,
except the shards, which are compared tensor for tensor (names, dtypes, shapes,
bytes, metadata).

The one stated exception: a shard's byte layout. mlx's save_safetensors orders
tensor data as its hash map iterates and leaves the header unpadded; sanitrace
writes the data in name order with an 8-byte aligned header. What a loader
reads from it (every tensor and the metadata) is the same.
"""

import hashlib
import os
from typing import Dict, List

from .safetensors_format import read_header


def _tensor_digests(folder: str) -> Dict[str, tuple]:
    result = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(folder, name)
        header = read_header(path)
        with open(path, "rb") as f:
            for key, t in header.tensors.items():
                f.seek(t.begin)
                digest = hashlib.sha256()
                left = t.nbytes
                while left:
                    chunk = f.read(min(left, 64 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                result[key] = (t.dtype, t.shape, digest.hexdigest())
    return result


def _files(folder: str) -> Dict[str, str]:
    """Every file under ``folder`` by relative name."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = path
    return found


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def compare_folders(expected: str, actual: str) -> List[str]:
    """Differences between two MLX model folders, shard layout aside.

    Args:
        expected: the reference folder (e.g. the library's own convert).
        actual: the folder to check.

    Returns:
        One line per difference (a missing or extra tensor or file, a tensor's
        dtype, shape or bytes, a shard's metadata, another file's bytes);
        empty when the folders are equivalent.
    """
    problems = []
    want, got = _tensor_digests(expected), _tensor_digests(actual)
    for key in sorted(want.keys() - got.keys()):
        problems.append(f"missing tensor {key}")
    for key in sorted(got.keys() - want.keys()):
        problems.append(f"extra tensor {key}")
    for key in sorted(want.keys() & got.keys()):
        (wd, ws, wh), (gd, gs, gh) = want[key], got[key]
        if (wd, ws) != (gd, gs):
            problems.append(f"{key}: {gd}{list(gs)}, expected {wd}{list(ws)}")
        elif wh != gh:
            problems.append(f"{key}: bytes differ")
    want_files, got_files = _files(expected), _files(actual)
    for name in sorted(want_files.keys() - got_files.keys()):
        problems.append(f"missing file {name}")
    for name in sorted(got_files.keys() - want_files.keys()):
        problems.append(f"extra file {name}")
    for name in sorted(want_files.keys() & got_files.keys()):
        if name.endswith(".safetensors"):
            if read_header(want_files[name]).metadata != read_header(got_files[name]).metadata:
                problems.append(f"{name}: metadata differs")
        elif not _same_bytes(want_files[name], got_files[name]):
            problems.append(f"{name}: bytes differ")
    return problems
