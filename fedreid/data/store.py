"""Decode a split once into one uint8 tensor, so CPU training never waits on JPEG decoding.

ReID crops are small (128×64 is 24 KB as uint8), so a whole site fits in memory; batches are
then index lookups plus vectorised augmentation (:mod:`fedreid.data.augment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from fedreid.data.fields import read_field
from fedreid.data.records import DataError, Sample


def _decode(path: str, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot decode image ({exc}); run `fedreid data check` on the folder "
            "to list every unreadable file"
        ) from exc


class ImageStore:
    """All images of one split as ``uint8[N, 3, H, W]`` plus their labels."""

    def __init__(self, samples: Sequence[Sample], size: tuple[int, int], threads: int = 4):
        if not samples:
            raise DataError("ImageStore got an empty split; check the data folder")
        self.samples = list(samples)
        self.size = size
        with ThreadPoolExecutor(max_workers=threads) as pool:
            arrays = list(pool.map(lambda s: _decode(s.path, size), self.samples))
        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        self.pids = np.array([s.pid for s in self.samples], dtype=np.int64)
        self.camids = np.array([s.camid for s in self.samples], dtype=np.int64)
        self._fields: dict[str, np.ndarray] = {}

    @classmethod
    def from_tensor(cls, images: torch.Tensor, pids: np.ndarray, camids: np.ndarray,
                    samples: Sequence[Sample] | None = None) -> ImageStore:
        """A store over images already in memory (``uint8[N, 3, H, W]``): benchmarks, or an
        altered copy of a split (``samples`` keeps the original records and metadata)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or not len(images) == len(pids) > 0:
            raise ValueError(f"images must be uint8 [N, 3, H, W] with one pid each, got "
                             f"{images.dtype} {tuple(images.shape)} and {len(pids)} pids")
        store = cls.__new__(cls)
        store.samples = list(samples) if samples is not None else [
            Sample(f"memory:{i}", int(p), int(c)) for i, (p, c) in enumerate(zip(pids, camids, strict=True))]
        store.size = tuple(images.shape[2:])
        store.images = images.contiguous()
        store.pids = np.asarray(pids, dtype=np.int64)
        store.camids = np.asarray(camids, dtype=np.int64)
        store._fields = {}
        return store

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]

    def field(self, name: str) -> np.ndarray:
        """Per-image metadata ``name`` (see :mod:`fedreid.data.fields`), read once and cached."""
        if name not in self._fields:
            self._fields[name] = read_field(name, self.samples)
        return self._fields[name]
