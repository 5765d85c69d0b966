"""The federated regulariser: a penalty that keeps local training near the downloaded model.

FedKLPR uses a KL divergence between feature distributions (``kl``, :mod:`fedreid.losses.kl`);
FedCAPR the mean cosine distance (``cosine``). Both compare L2-normalised embeddings of the
same images under the local model and the frozen reference model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedreid.losses.kl import kl_feature_loss


@dataclass(frozen=True)
class RegulariserOptions:
    tau: float = 0.1
    direction: str = "ref_to_local"


def _kl(local: torch.Tensor, ref: torch.Tensor, o: RegulariserOptions) -> torch.Tensor:
    return kl_feature_loss(local, ref, tau=o.tau, direction=o.direction)


def _cosine(local: torch.Tensor, ref: torch.Tensor, o: RegulariserOptions) -> torch.Tensor:
    return (1 - F.cosine_similarity(local, ref, dim=1)).mean()


REGULARISERS: dict[str, Callable[[torch.Tensor, torch.Tensor, RegulariserOptions], torch.Tensor]] = {
    "kl": _kl,
    "cosine": _cosine,
}


def regulariser(kind: str, local: torch.Tensor, reference: torch.Tensor,
                options: RegulariserOptions) -> torch.Tensor:
    """Penalty of ``kind`` between normalised local and reference embeddings (B×D each)."""
    if kind not in REGULARISERS:
        raise ValueError(f"reg.kind={kind!r}: choose one of {sorted(REGULARISERS)}")
    return REGULARISERS[kind](local, reference.detach(), options)
