"""Batch-hard triplet loss (Hermans et al. 2017) as BoT uses it, but mined with masks so
identities may have different numbers of samples in the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise distances ``[N, M]``; the clamp keeps ``sqrt`` finite and differentiable at 0."""
    xx = x.pow(2).sum(dim=1, keepdim=True)
    yy = y.pow(2).sum(dim=1, keepdim=True).t()
    return (xx + yy - 2.0 * x @ y.t()).clamp(min=1e-12).sqrt()


def batch_hard_anchor_losses(
    dist: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor batch-hard triplet losses and which anchors count.

    Positives are *other* samples with the anchor's label (hardest = farthest), negatives
    samples with another label (hardest = nearest); ``allowed`` ([N, N] bool) restricts both.
    An anchor with no positive or no negative is invalid: its loss is 0 and ``valid`` is False.
    ``margin`` set: ``max(0, d_ap - d_an + margin)``; ``None``: soft margin
    ``log(1 + exp(d_ap - d_an))``.
    """
    n = dist.shape[0]
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(n, dtype=torch.bool, device=dist.device)
    neg = ~same
    if allowed is not None:
        pos &= allowed
        neg &= allowed
    valid = pos.any(dim=1) & neg.any(dim=1)
    d_ap = dist.masked_fill(~pos, float("-inf")).max(dim=1).values
    d_an = dist.masked_fill(~neg, float("inf")).min(dim=1).values
    diff = torch.where(valid, d_ap - d_an, torch.zeros_like(d_ap))
    losses = F.softplus(diff) if margin is None else F.relu(diff + margin)
    return torch.where(valid, losses, torch.zeros_like(losses)), valid


def check_margin(margin: float | None) -> None:
    """Shared argument check for the triplet-style losses."""
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0 or None (soft margin), got {margin}")


def check_features(feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Shared shape check: ``feats [N, D]`` with N >= 1 and ``labels [N]``."""
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"feats must be a non-empty [batch, dim], got {tuple(feats.shape)}")
    if labels.shape != feats.shape[:1]:
        raise ValueError(
            f"labels must be [{feats.shape[0]}] to match feats, got {tuple(labels.shape)}"
        )


class TripletLoss(nn.Module):
    """Batch-hard triplet on Euclidean distances; the mean over valid anchors.

    Anchors whose identity has no other sample in the batch, or (single-identity batch) no
    negative, are left out. If no anchor is valid the loss is a zero that still carries a
    graph, so ``backward()`` on a sum of losses keeps working and gives zero gradients.
    """

    def __init__(self, margin: float | None = 0.3) -> None:
        super().__init__()
        check_margin(margin)
        self.margin = margin

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_features(feats, labels)
        losses, valid = batch_hard_anchor_losses(euclidean_dist(feats, feats), labels, self.margin)
        weight = valid.to(losses.dtype)
        return (losses * weight).sum() / weight.sum().clamp(min=1.0)
