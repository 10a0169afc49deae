"""Freed buffers leave the process: glibc's malloc told to map large buffers itself.

glibc serves a buffer above its mmap threshold with a mapping of its own, given
back to the OS when freed; but the threshold grows with the largest such buffer
freed (up to 32 MiB), and from then on the 1-32 MiB source pieces and chunks
come from the heap, where freed ones stay resident. Converting Kimi-K2.6's
layers (7.3 MiB experts) held 0.2 GiB more than mlx did, and the peak varied
from run to run by as much (1.00 to 1.20 GiB, predicted 0.97). A fixed
threshold keeps the process at what mlx holds, at the same speed. Elsewhere
(macOS, musl) this does nothing.
"""

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameter, glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def map_large_buffers() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES for this process.

    Returns:
        True when glibc took the setting; False on another C library or platform.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
