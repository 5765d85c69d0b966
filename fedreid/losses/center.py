"""Center loss (Wen et al. 2016) as BoT uses it: pulls each feature towards a learnable
centre of its identity, with the centres trained by their own SGD."""

from __future__ import annotations

import torch
from torch import nn

from fedreid.losses.triplet import check_features


class CenterLoss(nn.Module):
    """``sum_i ||f_i - c_{y_i}||^2 / B`` with centres ``[num_classes, feat_dim]`` (randn init).

    Gathers the batch's centres instead of BoT's full ``[B, C]`` distance matrix: the same
    value and gradients (up to BoT's 1e-12 clamp) at O(B*D) cost.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ValueError(
                f"num_classes and feat_dim must be >= 1, got {num_classes} and {feat_dim}"
            )
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_features(feats, labels)
        num_classes, feat_dim = self.centers.shape
        if feats.shape[1] != feat_dim:
            raise ValueError(f"feats must have dim {feat_dim}, got {feats.shape[1]}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]; relabel identities 0..C-1"
            )
        diff = feats - self.centers[labels.long()]
        return diff.pow(2).sum() / feats.shape[0]


def center_loss_optimizer(center_loss: CenterLoss, lr: float = 0.5) -> torch.optim.SGD:
    """The centres' own plain SGD (BoT ``CENTER_LR = 0.5``), separate from the model's Adam."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}; BoT uses 0.5")
    return torch.optim.SGD(center_loss.parameters(), lr=lr)


def rescale_center_grads(center_loss: CenterLoss, weight: float) -> None:
    """Multiply the centres' gradients by ``1 / weight`` in place.

    Call after ``backward()`` of a total loss containing ``weight * center_loss`` and before
    the centre optimiser's step (BoT: weight 0.0005). It undoes the loss weight for the
    centres only, so they move at lr 0.5 on the unweighted loss while the model feels the
    small weight.
    """
    if weight <= 0:
        raise ValueError(f"weight must be > 0 (the center loss weight, e.g. 0.0005), got {weight}")
    for param in center_loss.parameters():
        if param.grad is not None:
            param.grad.mul_(1.0 / weight)
