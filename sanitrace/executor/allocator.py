"""Freed buffers leave the process: glibc's malloc told to map large buffers itself.

glibc serves a buffer above its mmap threshold with a mapping of its own, given
back to the OS when freed; but the threshold grows with the largest such buffer
freed (from 128 KiB up to 32 MiB), and from then on source pieces and chunks
below it come from the heap, where freed ones stay resident. Converting
Kimi-K2.6's layers (7.3 MiB experts, 0.9 MiB scales) held 0.2 GiB more than mlx
did, and the peak varied from run to run by as much (1.00 to 1.20 GiB). Fixing
the threshold at glibc's own starting value keeps the process at what mlx holds
(measured 0.96 GiB in every run), at the same speed; at 1 MiB the scales still
stayed on the heap (1.09-1.13 GiB). Elsewhere (macOS, musl) this does nothing.
"""

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameter, glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's DEFAULT_MMAP_THRESHOLD_MIN


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
