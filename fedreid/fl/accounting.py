"""Communication accounting: the bytes Flower actually sends for a dict of arrays.

Flower's ``Array`` stores an ndarray as the bytes of ``np.save(..., allow_pickle=False)``
(research/flower.md §1.3), so ``serialized_nbytes`` counts exactly the array payload Flower
sends for a dict of arrays (message headers, metrics and chunk framing excluded). It runs
the same ``np.save`` code path into a byte counter instead of a buffer, so no copy of the
model is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class _ByteCounter:
    """Write-only file object that only counts what np.save writes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        size = memoryview(data).nbytes
        self.n += size
        return size


def serialized_nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Sum over arrays of ``len(np.save(BytesIO(), a, allow_pickle=False))``."""
    total = 0
    for key, arr in arrays.items():
        counter = _ByteCounter()
        try:
            np.save(counter, np.asarray(arr), allow_pickle=False)
        except ValueError as err:
            raise ValueError(
                f"arrays[{key!r}]: cannot be serialised without pickle: {err}"
            ) from err
        total += counter.n
    return total
