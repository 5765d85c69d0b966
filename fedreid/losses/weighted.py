"""A method's loss as a weighted sum of named terms, each computed only when its weight is on."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def weighted_sum(terms: Mapping[str, tuple[float, Callable[[], torch.Tensor]]],
                 like: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ weight · term()`` over the terms with weight > 0 (a switched-off term costs nothing),
    and ``loss_<name>`` of each computed term for the logs. ``like`` gives the zero's device
    and dtype."""
    total = like.new_zeros(())
    logs: dict[str, float] = {}
    for name, (weight, term) in terms.items():
        if weight > 0:
            value = term()
            total = total + weight * value
            logs[f"loss_{name}"] = float(value.detach())
    return total, logs
