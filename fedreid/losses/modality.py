"""Losses between two modalities (visible / infrared) of the same identities.

Cross-modal re-ID fails when an identity's visible and infrared features form two clusters;
these losses pull them together (research/methods.md §4, LSMRL's identity- and
modality-level terms; the paper's exact forms are not public, so these are the notes'):

- :func:`cross_modal_triplet`: batch-hard triplet whose positives *and* negatives come from
  the other modality, so the margin is enforced across the gap, not within a modality;
- :func:`modality_centre_loss`: each identity's visible centre against its infrared centre
  (squared distance of the normalised centres, identities seen in both modalities only);
- :func:`modality_discrepancy`: MMD² between the two modalities' feature sets, Gaussian
  kernels at several bandwidths (multiples of the median distance), unbiased estimate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedreid.losses.triplet import (
    batch_hard_anchor_losses,
    check_features,
    check_margin,
    euclidean_dist,
)


def _check_modality(feats: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> None:
    check_features(feats, labels)
    if modality.shape != labels.shape:
        raise ValueError(f"modality must be [{labels.shape[0]}] like labels, got {tuple(modality.shape)}")


def cross_modal_triplet(feats: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
                        margin: float | None = 0.3) -> torch.Tensor:
    """Mean batch-hard triplet over anchors that have a positive and a negative in the other
    modality (0, still in the graph, when none has)."""
    _check_modality(feats, labels, modality)
    check_margin(margin)
    other = modality[:, None] != modality[None, :]
    losses, valid = batch_hard_anchor_losses(euclidean_dist(feats, feats), labels, margin, allowed=other)
    return losses[valid].mean() if valid.any() else feats.sum() * 0.0


def modality_centre_loss(feats: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Mean over identities with both modalities of ‖c_vis − c_ir‖² (centres of the
    L2-normalised features); 0 when no identity has both."""
    _check_modality(feats, labels, modality)
    z = F.normalize(feats, dim=1)
    terms = []
    for label in torch.unique(labels):
        mine = labels == label
        vis, ir = mine & (modality == 0), mine & (modality == 1)
        if vis.any() and ir.any():
            terms.append((z[vis].mean(0) - z[ir].mean(0)).pow(2).sum())
    return torch.stack(terms).mean() if terms else feats.sum() * 0.0


def modality_discrepancy(first: torch.Tensor, second: torch.Tensor,
                         scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """Unbiased MMD² between two sets of L2-normalised features (N×D, M×D) with a sum of
    Gaussian kernels whose bandwidths are ``scales`` × the median pairwise distance (fixed,
    not differentiated). Needs two items on each side; otherwise 0 in the graph."""
    if first.shape[0] < 2 or second.shape[0] < 2:
        return (first.sum() + second.sum()) * 0.0
    x, y = F.normalize(first, dim=1), F.normalize(second, dim=1)
    joint = torch.cat([x, y])
    d2 = torch.cdist(joint, joint).pow(2)
    off = ~torch.eye(len(joint), dtype=torch.bool, device=joint.device)
    median = d2.detach()[off].median().clamp_min(1e-6)
    kernel = sum(torch.exp(-d2 / (2.0 * s * s * median)) for s in scales)
    n = x.shape[0]
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    m = y.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2.0 * kxy.mean()
