"""FedKLPR's KL regulariser (KLL) and the KL measure behind its aggregation weight (KLAW).

Each feature vector becomes a distribution over its dimensions, ``softmax(feature / tau)``;
the local model is pulled towards the (frozen) reference model's distribution. The paper
does not give the direction or tau (research/fedklpr.md §1.1): the default is the
teacher->student ``KL(p_ref || p_local)``, and tau must be small for L2-normalised features
(tau = 1 gives near-uniform distributions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIRECTIONS = ("ref_to_local", "local_to_ref", "symmetric")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row, averaged over rows (``batchmean``)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def kl_feature_loss(
    local_feats: torch.Tensor,
    reference_feats: torch.Tensor,
    tau: float = 0.1,
    direction: str = "ref_to_local",
) -> torch.Tensor:
    """KL between per-sample ``softmax(feature / tau)`` of local and reference features.

    ``direction``: ``"ref_to_local"`` = KL(p_ref || p_local) (equal to
    ``F.kl_div(log_softmax(local/tau), softmax(ref/tau), reduction="batchmean")``);
    ``"local_to_ref"`` = KL(p_local || p_ref); ``"symmetric"`` = the mean of the two.
    The reference is detached: only the local model learns.
    """
    if local_feats.dim() != 2 or local_feats.shape != reference_feats.shape:
        raise ValueError(
            "local_feats and reference_feats must both be [batch, dim] of the same shape, got "
            f"{tuple(local_feats.shape)} and {tuple(reference_feats.shape)}"
        )
    if local_feats.shape[0] == 0:
        raise ValueError("local_feats is an empty batch; pass at least one sample")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}; try 0.1 for L2-normalised features")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    log_local = F.log_softmax(local_feats / tau, dim=1)
    log_ref = F.log_softmax(reference_feats.detach() / tau, dim=1)
    if direction == "ref_to_local":
        return _kl(log_ref, log_local)
    if direction == "local_to_ref":
        return _kl(log_local, log_ref)
    return 0.5 * (_kl(log_ref, log_local) + _kl(log_local, log_ref))


def mean_kl_divergence(
    local_feats: torch.Tensor,
    reference_feats: torch.Tensor,
    tau: float = 0.1,
    direction: str = "ref_to_local",
) -> float:
    """The same divergence as a plain float, without a graph, in float64: KLAW's raw value
    on a fixed probe batch (local = trained model, reference = downloaded model)."""
    with torch.no_grad():
        return float(
            kl_feature_loss(local_feats.double(), reference_feats.double(), tau, direction)
        )
