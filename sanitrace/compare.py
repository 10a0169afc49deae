"""Compare two converted model folders tensor for tensor (names, dtypes, shapes, bytes)
and their config.json quantization sections."""

import hashlib
import json
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


def _quantization(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    return {k: config.get(k) for k in ("quantization", "quantization_config")}


def compare_folders(expected: str, actual: str) -> List[str]:
    """Differences between two MLX model folders; empty when they are equivalent."""
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
    if _quantization(expected) != _quantization(actual):
        problems.append(
            f"config quantization differs: {_quantization(actual)} != {_quantization(expected)}"
        )
    return problems
