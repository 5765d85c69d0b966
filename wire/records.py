"""Numpy dicts ⇄ Flower ArrayRecords, and the bytes Flower actually sends for them.

Shared by the coordinator and the sites: both ends of the wire use the same encoding.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    # np.asarray keeps 0-d buffers (num_batches_tracked) 0-d; ascontiguousarray would not.
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of the serialized array payloads exactly as Flower sends them."""
    return int(sum(len(arr.data) for arr in record.values()))
