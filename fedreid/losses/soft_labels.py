"""Refined soft pseudo-labels (DAPRH's "UET" step) and the cross-entropy that uses them.

Clustering gives each image one hard pseudo-identity, and some of those are wrong. DAPRH
softens each hard label towards the clusters the image actually lies near, measured against
*reliable* cluster centres: a centre is the mean of the members whose silhouette exceeds
``rho`` (members that sit well inside their cluster), so border images and mistakes pull it
less. Then

    A_ik = softmax_k(−‖f_i − c_k‖² / T),    y_i = (1 − α) · onehot(ŷ_i) + α · A_i,

and every ``y_i`` sums to 1. Features and centres are L2-normalised (squared distances lie in
[0, 4], which is what T = 0.05 is sized for).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import silhouette_samples


@dataclass
class RefinedLabels:
    """Soft targets ``[N, K]`` (zero rows for outliers, label -1), the reliable centres
    ``[K, D]`` (unit length), the silhouettes of the clustered samples (NaN for outliers)."""

    targets: torch.Tensor
    centres: torch.Tensor
    silhouettes: np.ndarray


def refined_soft_labels(features: torch.Tensor, labels: np.ndarray, *, alpha: float = 0.5,
                        temperature: float = 0.05, rho: float = 0.0) -> RefinedLabels:
    """Soft pseudo-labels from hard cluster ``labels`` (0..K-1, -1 = outlier) of ``features``.

    Raises ValueError when fewer than two clusters (silhouettes are undefined; the caller's
    guard decides what to train instead).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} must be N×D with one label each "
                         f"({labels.shape[0]} labels)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1] (0 = hard labels, DAPRH: 0.5)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (DAPRH: 0.05)")
    clustered = np.flatnonzero(labels >= 0)
    k = int(labels.max()) + 1 if clustered.size else 0
    if k < 2 or clustered.size <= k:
        raise ValueError(f"refined labels need at least two clusters with a shared member, got {k} "
                         f"clusters over {clustered.size} clustered images")
    f = F.normalize(features.detach().float().cpu(), dim=1)
    sil = np.full(len(labels), np.nan)
    sil[clustered] = silhouette_samples(f[clustered].numpy(), labels[clustered])
    centres = torch.zeros(k, f.shape[1])
    for c in range(k):
        members = np.flatnonzero(labels == c)
        reliable = members[sil[members] > rho]
        centres[c] = f[torch.from_numpy(reliable if reliable.size else members)].mean(dim=0)
    centres = F.normalize(centres, dim=1)
    idx = torch.from_numpy(clustered)
    affinity = F.softmax(-torch.cdist(f[idx], centres).pow(2) / temperature, dim=1)
    onehot = F.one_hot(torch.from_numpy(labels[clustered]), k).float()
    targets = torch.zeros(len(labels), k)
    targets[idx] = (1.0 - alpha) * onehot + alpha * affinity
    return RefinedLabels(targets=targets, centres=centres, silhouettes=sil)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample ``−Σ_k y_k · log softmax(logits)_k`` for soft targets ``[B, K]``."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft targets {tuple(targets.shape)} "
                         "must have the same [batch, classes] shape")
    return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)
