"""Cluster-contrast memory (Dai et al., "Cluster Contrast"; TCMM's prototype term): one
L2-normalised centre per pseudo-identity, an InfoNCE loss of each feature against all
centres, and a momentum update of each centre with its *hardest* batch instance (the least
similar one), which keeps centres from collapsing onto easy, near-duplicate views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterContrastMemory(nn.Module):
    """``forward(feats, targets)``: CE over ``feats · centresᵀ / temperature``.

    ``momentum`` is the weight of the old centre in ``c ← momentum·c + (1 − momentum)·x_hard``
    (TCMM: 0.2). The centres are not saved with the module: they are rebuilt from clustering.
    """

    def __init__(self, temperature: float = 0.05, momentum: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; cluster contrast uses 0.05")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("centres", torch.empty(0, 0), persistent=False)

    def reset(self, centres: torch.Tensor) -> None:
        if centres.dim() != 2 or centres.shape[0] == 0:
            raise ValueError(f"centres must be a non-empty [clusters, dim], got {tuple(centres.shape)}")
        self.centres = F.normalize(centres.detach().to(self.centres.device), dim=1).clone()

    def _check(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        num, dim = self.centres.shape
        if num == 0:
            raise ValueError("the cluster memory is empty; call reset(centres) after clustering")
        if feats.dim() != 2 or feats.shape[1] != dim or targets.shape != feats.shape[:1]:
            raise ValueError(f"feats must be [batch, {dim}] with one target each, got "
                             f"{tuple(feats.shape)} and {tuple(targets.shape)}")
        if targets.min() < 0 or targets.max() >= num:
            raise ValueError(f"targets must lie in [0, {num}), got [{int(targets.min())}, {int(targets.max())}]")

    def forward(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(feats, targets)
        logits = F.normalize(feats, dim=1) @ self.centres.t() / self.temperature
        return F.cross_entropy(logits, targets)

    @torch.no_grad()
    def update(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        """Move each batch cluster's centre towards its least similar batch instance."""
        self._check(feats, targets)
        feats = F.normalize(feats.detach(), dim=1)
        sims = (feats * self.centres[targets]).sum(dim=1)
        for cluster in targets.unique():
            members = (targets == cluster).nonzero().squeeze(1)
            hardest = feats[members[sims[members].argmin()]]
            centre = self.momentum * self.centres[cluster] + (1.0 - self.momentum) * hardest
            self.centres[cluster] = F.normalize(centre, dim=0)
