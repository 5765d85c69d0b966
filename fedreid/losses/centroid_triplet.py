"""Centroid triplet loss (Wieczorek et al. 2021, CTL): a batch-hard triplet between held-out
queries and the centroids of their identity's remaining samples, so that training matches
retrieval against identity centroids."""

from __future__ import annotations

import torch
from torch import nn

from fedreid.losses._groups import occurrence_rank
from fedreid.losses.triplet import (
    batch_hard_anchor_losses,
    check_features,
    check_margin,
    euclidean_dist,
)


class CentroidTripletLoss(nn.Module):
    """Mask i holds out each identity's i-th sample (batch order) as its query; the mean of
    that identity's other samples is its centroid. Batch-hard triplet runs on
    ``[queries; centroids]`` with duplicated labels, within each mask; per-mask means are
    averaged over the masks that have at least one valid anchor.

    Identities with one sample (no gallery) are skipped; an identity with n < K samples only
    takes part in masks 0..n-1 (CTL pads with mock images instead). All masks are computed in
    one pass: each sample is the query of exactly one mask, and its centroid is
    ``(group sum - sample) / (n - 1)``. Zero (with a graph) if no mask has a valid anchor.
    """

    def __init__(self, margin: float | None = 0.5) -> None:
        super().__init__()
        check_margin(margin)
        self.margin = margin

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_features(feats, labels)
        inverse, counts, rank = occurrence_rank(labels)
        keep = counts[inverse] >= 2
        if not bool(keep.any()):
            return feats.sum() * 0.0
        group = inverse[keep]
        queries = feats[keep]
        sums = feats.new_zeros(counts.numel(), feats.shape[1]).index_add(0, inverse, feats)
        sizes = counts[group].unsqueeze(1).to(feats.dtype)
        centroids = (sums[group] - queries) / (sizes - 1.0)

        points = torch.cat([queries, centroids])
        point_labels = torch.cat([group, group])
        point_mask = torch.cat([rank[keep], rank[keep]])
        allowed = point_mask[:, None] == point_mask[None, :]
        losses, valid = batch_hard_anchor_losses(
            euclidean_dist(points, points), point_labels, self.margin, allowed
        )

        num_masks = points.shape[0]  # an upper bound on mask ids; avoids a sync
        weight = valid.to(losses.dtype)
        mask_sum = losses.new_zeros(num_masks).index_add(0, point_mask, losses * weight)
        mask_count = losses.new_zeros(num_masks).index_add(0, point_mask, weight)
        mask_mean = mask_sum / mask_count.clamp(min=1.0)
        used = (mask_count > 0).to(losses.dtype)
        return (mask_mean * used).sum() / used.sum().clamp(min=1.0)
