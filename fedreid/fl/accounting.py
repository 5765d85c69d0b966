"""Communication accounting: bytes on the wire per round, per site, up and down.

Flower's ``Array`` stores an ndarray as the bytes of ``np.save(..., allow_pickle=False)``
(research/flower.md §1.3), so ``serialized_nbytes`` counts exactly the array payload Flower
sends for a dict of arrays (message headers, metrics and chunk framing excluded). It runs
the same ``np.save`` code path into a byte counter instead of a buffer, so no copy of the
model is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

DIRECTIONS = ("up", "down")


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


class ByteLedger:
    """Bytes per (round, site, direction), plus the dense-equivalent bytes when known.

    ``dense_nbytes`` is what the same tensors would cost sent dense (FedAvg), so the saving
    ``1 - bytes / dense`` can be reported per round and overall. Recording the same
    (round, site, direction) twice adds up (e.g. a resent message).
    """

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, dict[str, int]]] = {}

    def record(
        self,
        round_num: int,
        site: int | str,
        direction: str,
        nbytes: int,
        dense_nbytes: int | None = None,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: {direction!r} is not one of {DIRECTIONS}")
        if nbytes < 0 or (dense_nbytes is not None and dense_nbytes < 0):
            raise ValueError(f"nbytes {nbytes} / dense_nbytes {dense_nbytes} must be >= 0")
        cell = self._rows.setdefault(int(round_num), {}).setdefault(str(site), {})
        cell[direction] = cell.get(direction, 0) + int(nbytes)
        if dense_nbytes is not None:
            key = f"dense_{direction}"
            cell[key] = cell.get(key, 0) + int(dense_nbytes)

    def round_totals(self, round_num: int) -> dict[str, int]:
        """Summed counters of one round: keys among up, down, dense_up, dense_down."""
        out: dict[str, int] = {}
        for cell in self._rows.get(int(round_num), {}).values():
            for k, v in cell.items():
                out[k] = out.get(k, 0) + v
        return out

    def totals(self) -> dict[str, int]:
        """Summed counters over all rounds."""
        out: dict[str, int] = {}
        for r in self._rows:
            for k, v in self.round_totals(r).items():
                out[k] = out.get(k, 0) + v
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"rounds": {"<r>": {"<site>": {...}}}, "totals": {...}}``."""
        return {
            "rounds": {
                str(r): {s: dict(c) for s, c in sites.items()}
                for r, sites in sorted(self._rows.items())
            },
            "totals": self.totals(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ByteLedger:
        """Rebuild a ledger saved with ``to_dict`` (for resuming a run)."""
        ledger = cls()
        for r, sites in data.get("rounds", {}).items():
            ledger._rows[int(r)] = {
                str(s): {k: int(v) for k, v in c.items()} for s, c in sites.items()
            }
        return ledger
