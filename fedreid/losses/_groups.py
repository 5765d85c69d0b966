"""Group bookkeeping shared by losses that treat "the i-th sample of each group" together."""

from __future__ import annotations

import torch


def occurrence_rank(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each sample, its group index, its group's size, and its position within the group.

    Position follows batch order, so samples with the same rank can be processed together
    without two of them hitting the same group (vectorised instead of a per-sample loop).
    Returns ``(inverse [N], counts [G], rank [N])`` with ``labels == unique[inverse]``.
    """
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(labels.numel(), device=labels.device) - starts[inverse[order]]
    return inverse, counts, rank
