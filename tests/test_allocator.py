"""The executor's buffers leave the process when freed (executor/allocator.py), on glibc."""

import subprocess
import sys

import pytest

# 32 buffers of SIZE, each followed by a small block that pins the heap above it, then freed:
# resident MiB left over. glibc first raises its mmap threshold past SIZE (one such buffer freed).
# 8 MiB is an expert of Kimi-K2.6, 896 KiB its block scales.
HOLES = """
import ctypes, sys
import psutil
from sanitrace.executor.allocator import map_large_buffers
size = int(sys.argv[2])
if sys.argv[1] == "fixed":
    assert map_large_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def touched(n):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    return p
libc.free(touched(size))
before = psutil.Process().memory_info().rss
big, small = [], []
for _ in range(32 * (8 << 20) // size):
    big.append(touched(size))
    small.append(touched(8 << 10))
for p in big:
    libc.free(p)
print((psutil.Process().memory_info().rss - before) >> 20)
"""


def resident_after_free(mode: str, size: int) -> int:
    run = subprocess.run([sys.executable, "-c", HOLES, mode, str(size)], capture_output=True, text=True, check=True)
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.parametrize("size", [8 << 20, 896 << 10], ids=["8MiB", "896KiB"])
def test_freed_chunk_buffers_are_given_back_to_the_os(size):
    default = resident_after_free("default", size)
    if default < 128:
        pytest.skip(f"this C library gives freed heap buffers back by itself ({default} MiB kept)")
    assert default >= 200  # glibc's default: the 256 MiB freed stay resident
    assert resident_after_free("fixed", size) <= 8
