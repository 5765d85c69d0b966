"""IQAGA's image-quality weight of each sample's loss, from the norm of its feature.

A generated or badly captured image gives a backbone little to hold on to, and its pooled
feature comes out short (AdaFace's observation, which IQAGA reuses as its "IQA"): weighting
every sample's loss by how its feature norm compares with the running norm statistics
down-weights such images without any pixel model. The weight is

    z_i = clip(h · (‖f_i‖ − μ) / (σ + eps), −1, 1),    w_i = 1 + bound · z_i ∈ [1 − bound, 1 + bound]

where μ and σ are running statistics of the norms (``μ ← m · mean(batch) + (1 − m) · μ``, m = 0.99
weighting the *new* batch, as AdaFace does). μ and σ start from the first batch, not from
IQAGA's constants (50, 120), which suit 2048-d ResNet-50 features only. Because μ follows the
batch closely and h = 1/3 clips only beyond three deviations, the weights average ≈ 1, so the
weighting re-balances samples without changing the loss scale.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureNormQualityWeight(nn.Module):
    """Per-sample loss weights from feature norms (see the module docstring).

    ``forward(feats)`` returns detached weights ``[B]``; in training mode it first updates the
    running mean and deviation of the norms with the batch. The statistics are buffers, so a
    site keeps them between rounds with its other heads.
    """

    def __init__(self, bound: float = 0.4, h: float = 0.333, momentum: float = 0.99,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 <= bound < 1.0:
            raise ValueError(f"bound={bound}: the weight range [1 - bound, 1 + bound] needs 0 <= bound < 1")
        if h <= 0:
            raise ValueError(f"h={h} must be > 0 (IQAGA uses 0.333)")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum} must lie in (0, 1]; it is the new batch's weight (0.99)")
        self.bound = bound
        self.h = h
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise ValueError(f"feats must be a non-empty [batch, dim], got {tuple(feats.shape)}")
        norms = feats.detach().float().norm(dim=1).clamp(min=1e-3)
        if self.training:
            batch_std = norms.std() if norms.numel() > 1 else norms.new_zeros(())
            if int(self.seen) == 0:
                self.mean.copy_(norms.mean())
                self.std.copy_(batch_std)
            else:
                m = self.momentum
                self.mean.mul_(1 - m).add_(m * norms.mean())
                self.std.mul_(1 - m).add_(m * batch_std)
            self.seen += 1
        z = (self.h * (norms - self.mean) / (self.std + self.eps)).clamp(-1.0, 1.0)
        return 1.0 + self.bound * z
