"""Helpers shared by the Hub benches (hub_stream.py, hub_trace.py): the test Hub
server, the environment a subprocess sees, and reading the server's request log."""

import contextlib
import os
import re
import struct
import sys
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from harness import REPO

sys.path.insert(0, os.path.join(REPO, "tests"))
from hub_server import HubServer  # noqa: E402,F401  (re-exported for the benches)

SANITRACE = os.path.join(os.path.dirname(sys.executable), "sanitrace")


def sanitrace(*args: str) -> List[str]:
    """argv running the installed sanitrace (or ``python -m sanitrace``)."""
    exe = [SANITRACE] if os.path.exists(SANITRACE) else [sys.executable, "-m", "sanitrace"]
    return exe + list(args)


def shard_sizes(folder: str) -> Dict[str, int]:
    return {
        n: os.path.getsize(os.path.join(folder, n)) for n in sorted(os.listdir(folder)) if n.endswith(".safetensors")
    }


def header_bytes(path: str) -> int:
    """Length of a safetensors file's 8-byte prefix and JSON header."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def allocated(path: str) -> Tuple[int, int]:
    """(bytes allocated on disk (st_blocks), apparent bytes) of the files under ``path``."""
    blocks = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                blocks, size = blocks + st.st_blocks * 512, size + st.st_size
    return blocks, size


@contextlib.contextmanager
def environ(values: Dict[str, str]):
    """``os.environ`` with ``values`` set (subprocesses inherit it), restored on exit."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def file_of(path: str) -> Optional[str]:
    """The safetensors file a request path reads (resolve or CDN), else None."""
    split = urlsplit(path)
    name = unquote(split.path).partition("/resolve/")[2].partition("/")[2]
    name = name or parse_qs(split.query).get("file", [""])[0]
    return name if name.endswith(".safetensors") else None


def span(request, size: int) -> Tuple[int, int]:
    """(first byte, bytes asked for) of a GET, from its Range header."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", (request.range or "").strip())
    if not match:
        return 0, size
    start, last = int(match.group(1)), match.group(2)
    return start, max((size if last == "" else min(int(last) + 1, size)) - start, 0)


def file_gets(requests: list, sizes: Dict[str, int]) -> List[Tuple[int, str, object]]:
    """(log index, file, request) of every safetensors GET the server answered with data."""
    return [
        (i, file_of(r.path), r)
        for i, r in enumerate(requests)
        if r.method == "GET" and r.status in (200, 206) and file_of(r.path) in sizes
    ]


def covered(requests: list, sizes: Dict[str, int]) -> Dict[str, int]:
    """Per file, the bytes the server has sent at least once (union of the GETs' spans)."""
    spans: Dict[str, list] = {n: [] for n in sizes}
    for _, name, r in file_gets(requests, sizes):
        start = span(r, sizes[name])[0]
        spans[name].append((start, start + r.nbytes))
    result = {}
    for name, intervals in spans.items():
        total, end = 0, 0
        for a, b in sorted(intervals):
            total += max(b - max(a, end), 0)
            end = max(end, b)
        result[name] = total
    return result
