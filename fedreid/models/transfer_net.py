"""Bi-C2R's transfer network (BiCT-Net): maps features of one model's space into another's.

Each residual block (research/methods.md §2, ``RBTBlock_dual``)::

    out = x + a₁(x)·Σᵢ Pᵢ(x) + a₂(x)·Σₘ πₘ(x)·pₘ

- forward mapping: paths Pᵢ = Linear(d→h, no bias) → BN → PReLU → Linear(h→h) → BN →
  PReLU → Linear(h→d) → BN → PReLU;
- knowledge capture: π = softmax of three stacked linears (d → d/2 → d/4 → M, no
  nonlinearity between them, as the reference) over M learnable prototypes pₘ (zero at start);
- [a₁, a₂] = softmax of three stacked linears (d → d/2 → d/4 → 2): a per-sample balance.

Linears are Kaiming-initialised. One departure from the reference: the last BN of every path
starts with weight 0, so together with the zero prototypes an untrained transfer is exactly
the identity — in a federation consecutive models are close, and "no change" is the right
start (an untrained transfer then equals leaving the gallery as it is).
"""

from __future__ import annotations

import torch
from torch import nn


def _path(dim: int, hidden: int) -> nn.Sequential:
    path = nn.Sequential(
        nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.PReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.PReLU(),
        nn.Linear(hidden, dim), nn.BatchNorm1d(dim), nn.PReLU(),
    )
    nn.init.zeros_(path[7].weight)
    return path


def _stack(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, max(1, dim // 2)), nn.Linear(max(1, dim // 2), max(1, dim // 4)),
                         nn.Linear(max(1, dim // 4), out))


class TransferBlock(nn.Module):
    """One residual block of the transfer network (see the module docstring)."""

    def __init__(self, dim: int, paths: int = 2, hidden: int = 32, prototypes: int = 8) -> None:
        super().__init__()
        if min(dim, paths, hidden, prototypes) < 1:
            raise ValueError(
                f"transfer block: dim, paths, hidden and prototypes must be >= 1, got "
                f"{dim}, {paths}, {hidden}, {prototypes}"
            )
        self.paths = nn.ModuleList(_path(dim, hidden) for _ in range(paths))
        self.capture = _stack(dim, prototypes)
        self.prototypes = nn.Parameter(torch.zeros(prototypes, dim))
        self.balance = _stack(dim, 2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.balance(x), dim=1)
        mapped = torch.stack([p(x) for p in self.paths]).sum(0)
        captured = torch.softmax(self.capture(x), dim=1) @ self.prototypes
        return x + a[:, :1] * mapped + a[:, 1:] * captured


class TransferNet(nn.Sequential):
    """``blocks`` transfer blocks: N×dim → N×dim (not normalised; callers normalise)."""

    def __init__(self, dim: int, blocks: int = 1, paths: int = 2, hidden: int = 32,
                 prototypes: int = 8) -> None:
        if blocks < 1:
            raise ValueError(f"a transfer network needs at least one block, got blocks={blocks}")
        super().__init__(*(TransferBlock(dim, paths, hidden, prototypes) for _ in range(blocks)))
        self.dim = dim
