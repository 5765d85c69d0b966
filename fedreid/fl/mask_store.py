"""The coordinator's copy of every site's masks, and a bounded cache of their kept positions.

A site's mask is state the coordinator needs every round (to cut the site's download and to
read a reply that came without its bitmap), so it is kept packed: one bit per element,
~3 MB per ResNet-50 site. Folding and downloads want the kept *positions*; computing them
from the bitmap costs about 2.5x the fold itself, so they are cached per (site, tensor) as
int32 offsets within the tensor (4 bytes per kept element, ~38 MB per ResNet-50 site at
60 % sparsity), dropped when that mask changes; so are the masks' bits in the lane order of
:mod:`fedreid.fl.simd` (one bit per element). The cache is bounded (``cache_bytes``):
sites that do not fit are recomputed on use, so memory stays bounded whatever the number
of sites; entries are never evicted for others (with sites arriving in a cycle, an LRU
would miss every time).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedreid.fl.codec import PackedMask, pack_mask
from fedreid.fl.simd import le_bits

DEFAULT_CACHE_BYTES = 1 << 30


def kept_positions(mask: PackedMask) -> np.ndarray:
    """Flat offsets of the kept elements, ascending (int32 where they fit)."""
    n = int(np.prod(mask.shape, dtype=np.int64))
    pos = np.flatnonzero(np.unpackbits(mask.bits, count=n).view(np.bool_))
    return pos.astype(np.int32) if n < 2**31 else pos


class MaskStore:
    """Per site: name -> :class:`PackedMask`; kept positions cached up to ``cache_bytes``."""

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes: {cache_bytes} must be >= 0 (0 = no cache)")
        self.cache_bytes = cache_bytes
        self._masks: dict[str, dict[str, PackedMask]] = {}
        self._positions: dict[tuple[str, str], np.ndarray] = {}
        self._lanes: dict[tuple[str, str], np.ndarray] = {}
        self._cached = 0

    def sites(self) -> list[str]:
        return list(self._masks)

    def get(self, site: str) -> dict[str, PackedMask]:
        """The masks held for ``site`` (empty when none: it kept everything or is new)."""
        return dict(self._masks.get(site, {}))

    def mask(self, site: str, name: str) -> PackedMask | None:
        """The mask held for ``site``'s tensor ``name`` (None: it kept everything, or new)."""
        return self._masks.get(site, {}).get(name)

    def set(self, site: str, masks: Mapping[str, PackedMask]) -> None:
        """Replace ``site``'s masks; cached positions of changed or dropped masks go."""
        old = self._masks.get(site, {})
        for name, m in old.items():
            if name not in masks or masks[name].digest != m.digest:
                self._drop(site, name)
        self._masks[site] = dict(masks)

    def set_bool(self, site: str, masks: Mapping[str, np.ndarray]) -> None:
        """``set`` from bool masks (e.g. a checkpoint)."""
        self.set(site, {name: pack_mask(m) for name, m in masks.items()})

    def forget(self, site: str) -> None:
        """Drop everything held for ``site``: its next download is dense and its next reply
        must carry every bitmap (the repair after a mask mismatch or a failed round)."""
        for name in self._masks.pop(site, {}):
            self._drop(site, name)

    def positions(self, site: str, name: str) -> np.ndarray:
        """Kept offsets of ``site``'s mask for ``name`` (cached while the budget allows)."""
        hit = self._positions.get((site, name))
        if hit is not None:
            return hit
        return self._cache(self._positions, site, name, kept_positions(self._masks[site][name]))

    def lane_bits(self, site: str, name: str) -> np.ndarray:
        """``site``'s mask for ``name`` as :func:`fedreid.fl.simd.le_bits` words (cached
        while the budget allows)."""
        hit = self._lanes.get((site, name))
        if hit is not None:
            return hit
        return self._cache(self._lanes, site, name, le_bits(self._masks[site][name].bits))

    def _cache(self, cache: dict[tuple[str, str], np.ndarray], site: str, name: str,
               value: np.ndarray) -> np.ndarray:
        if self._cached + value.nbytes <= self.cache_bytes:
            cache[(site, name)] = value
            self._cached += value.nbytes
        return value

    @property
    def cached_bytes(self) -> int:
        return self._cached

    def _drop(self, site: str, name: str) -> None:
        for cache in (self._positions, self._lanes):
            value = cache.pop((site, name), None)
            if value is not None:
                self._cached -= value.nbytes
