"""Softmax triplet losses: per-anchor, so each sample's term can carry its own weight.

Both mine each anchor's hardest positive and hardest negative in the batch (as the batch-hard
triplet does) and compare the two distances through a two-way softmax ``p = softmax(d_ap,
d_an)`` instead of a hinge:

- :func:`softmax_triplet_losses` (IQAGA, DAPRH): the cross-entropy of ``p`` against the target
  ``(m, 1 − m)``; ``m = 0`` gives ``softplus(d_ap − d_an)``, the soft-margin triplet, and
  ``m > 0`` stops pushing once ``d_an − d_ap`` reaches ``log((1 − m) / m)``.
- :func:`soft_triplet_loss` (MMT's soft triplet): the student's ``p`` learns the mean
  teacher's ``p`` for the same (anchor, positive, negative) triple, a target that is softer
  than 0/1 and follows how sure the teacher is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedreid.losses.triplet import check_features, euclidean_dist


def hardest_pairs(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index of each anchor's hardest positive (farthest, itself excluded) and hardest
    negative (nearest), and whether the anchor has both (``valid``)."""
    n = dist.shape[0]
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(n, dtype=torch.bool, device=dist.device)
    neg = ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    d = dist.detach()
    pos_idx = d.masked_fill(~pos, float("-inf")).argmax(dim=1)
    neg_idx = d.masked_fill(~neg, float("inf")).argmin(dim=1)
    return pos_idx, neg_idx, valid


def _pair_logits(dist: torch.Tensor, pos_idx: torch.Tensor, neg_idx: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(dist.shape[0], device=dist.device)
    return torch.stack([dist[rows, pos_idx], dist[rows, neg_idx]], dim=1)


def softmax_triplet_losses(feats: torch.Tensor, labels: torch.Tensor,
                           target_margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor ``−m·log p_ap − (1 − m)·log p_an`` on Euclidean distances, and ``valid``.

    Invalid anchors (no positive or no negative in the batch) get a zero loss; average with
    ``valid`` as the weight. ``target_margin`` is m in [0, 0.5) (IQAGA: 0.3, DAPRH's target
    stage: 0).
    """
    check_features(feats, labels)
    if not 0.0 <= target_margin < 0.5:
        raise ValueError(f"target_margin={target_margin} must lie in [0, 0.5): it is the softmax "
                         "target of the positive distance (0 = soft-margin triplet)")
    dist = euclidean_dist(feats, feats)
    pos_idx, neg_idx, valid = hardest_pairs(dist, labels)
    log_p = F.log_softmax(_pair_logits(dist, pos_idx, neg_idx), dim=1)
    losses = -(target_margin * log_p[:, 0] + (1.0 - target_margin) * log_p[:, 1])
    return torch.where(valid, losses, torch.zeros_like(losses)), valid


def soft_triplet_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MMT's soft triplet: triples mined on the student's distances; the cross-entropy of the
    student's ``softmax(d_ap, d_an)`` against the (detached) teacher's on the same triples,
    averaged over valid anchors (a zero with a graph when none is valid)."""
    check_features(student, labels)
    if teacher.shape != student.shape:
        raise ValueError(f"teacher features {tuple(teacher.shape)} must match the student's "
                         f"{tuple(student.shape)} (the same images, one row each)")
    dist_s = euclidean_dist(student, student)
    pos_idx, neg_idx, valid = hardest_pairs(dist_s, labels)
    log_p_s = F.log_softmax(_pair_logits(dist_s, pos_idx, neg_idx), dim=1)
    with torch.no_grad():
        dist_t = euclidean_dist(teacher.detach(), teacher.detach())
        p_t = F.softmax(_pair_logits(dist_t, pos_idx, neg_idx), dim=1)
    losses = -(p_t * log_p_s).sum(dim=1)
    weight = valid.to(losses.dtype)
    return (losses * weight).sum() / weight.sum().clamp(min=1.0)
