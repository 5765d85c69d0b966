"""Evaluation-time batches of an :class:`ImageStore`: normalised, in order, on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedreid.data.augment import normalize
from fedreid.data.store import ImageStore


def eval_batches(
    store: ImageStore, batch_size: int, device: torch.device, limit: int | None = None
) -> Iterator[tuple[torch.Tensor]]:
    n = len(store) if limit is None else min(limit, len(store))
    for start in range(0, n, batch_size):
        images = store.images[start : min(start + batch_size, n)]
        yield (normalize(images.to(device, non_blocking=True)),)
