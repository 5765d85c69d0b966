"""Supervised contrastive loss (Khosla et al. 2020), contrast mode 'all', as SCM-ReID adds it
on two augmented views: every view of every sample is an anchor, and all other views with
the same label are its positives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SupConLoss(nn.Module):
    """``features [B, V, D]`` (V views), ``labels [B]``.

    Features are L2-normalised here (idempotent for normalised input; the loss is defined on
    cosine similarities, so unnormalised input would let the norm act as a temperature).
    Per anchor: ``-(T / base_T) * mean_{p in P(a)} log(exp(s_ap/T) / sum_{k != a} exp(s_ak/T))``,
    self-pairs excluded; the mean over anchors. Anchors without a positive (V = 1 and a
    label seen once) are left out rather than giving NaN; zero (with a graph) if none is left.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(
                f"temperature and base_temperature must be > 0, got {temperature} and "
                f"{base_temperature}"
            )
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(
                f"features must be [batch, views, dim], got {tuple(features.shape)}; "
                "stack the views with torch.stack(views, dim=1)"
            )
        batch, views, _ = features.shape
        if batch * views < 2:
            raise ValueError(f"need at least 2 vectors (batch * views), got {batch * views}")
        if labels.shape != (batch,):
            raise ValueError(f"labels must be [{batch}], got {tuple(labels.shape)}")
        anchors = F.normalize(features, dim=2).transpose(0, 1).reshape(batch * views, -1)
        anchor_labels = labels.repeat(views)
        n = anchors.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=anchors.device)
        logits = anchors @ anchors.t() / self.temperature
        log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
        log_prob = logits - log_denominator[:, None]
        pos = (anchor_labels[:, None] == anchor_labels[None, :]) & ~self_mask
        num_pos = pos.sum(dim=1).to(log_prob.dtype)
        mean_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        mean_log_prob_pos = mean_log_prob_pos / num_pos.clamp(min=1.0)
        per_anchor = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        has_pos = (num_pos > 0).to(per_anchor.dtype)
        return (per_anchor * has_pos).sum() / has_pos.sum().clamp(min=1.0)
