"""Part (horizontal-stripe) features: the local half of global + local re-ID descriptors."""

from __future__ import annotations

import torch


def stripe_means(feature_map: torch.Tensor, parts: int) -> torch.Tensor:
    """B×C×H×W → B×(parts·C): the mean of each of ``parts`` horizontal stripes, top first.

    Stripes split the rows as evenly as possible (PCB's uniform partition); a person's head,
    torso and legs fall into different stripes of an upright crop.
    """
    rows = feature_map.shape[2]
    if not 1 <= parts <= rows:
        raise ValueError(f"parts={parts}: must lie in 1..{rows} (rows of the feature map)")
    bounds = torch.linspace(0, rows, parts + 1).round().long().tolist()
    stripes = [feature_map[:, :, lo:hi].mean(dim=(2, 3)) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(stripes, dim=1)
