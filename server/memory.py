"""Keep the memory a round frees for the next round instead of handing it back to the OS.

Every round the coordinator builds and drops about a model's worth of payload bytes per site
(the downloads) plus the global's record. glibc serves blocks above its mmap threshold
(at most 32 MB by default; a ResNet-50 download is ~38 MB) with fresh ``mmap`` pages and
unmaps them on free, so each round faults in every page again: on a ResNet-50 round at 8
sites that was a third of the coordinator's time (``sims.bench.aggregation_speed``).
Raising the mmap and trim thresholds makes those blocks come from the heap and be reused.
The resident size then stays at the round's peak between rounds, which the peak already
was.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap


def keep_freed_memory(threshold: int = KEEP_BELOW) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` for this process; False where
    the C library is not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
