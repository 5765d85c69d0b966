"""Label-smoothed cross-entropy, the BoT ID loss: it stops the classifier over-fitting the
training identities (Szegedy et al. 2016; Luo et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLabelSmooth(nn.Module):
    """Mean over samples of ``-sum(target * log_softmax(logits))`` with
    ``target = (1 - epsilon) * onehot + epsilon / num_classes``.

    Device-agnostic: everything is built on the logits' device.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}; BoT uses 0.1")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be [batch, {self.num_classes}], got {tuple(logits.shape)}; "
                "check the classifier's output size against num_classes"
            )
        if targets.shape != logits.shape[:1]:
            raise ValueError(
                f"targets must be [{logits.shape[0]}] class indices, got {tuple(targets.shape)}"
            )
        if targets.numel() and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(
                f"targets must lie in [0, {self.num_classes}), got "
                f"[{int(targets.min())}, {int(targets.max())}]; relabel identities 0..C-1"
            )
        log_probs = F.log_softmax(logits, dim=1)
        onehot = F.one_hot(targets.long(), self.num_classes).to(log_probs.dtype)
        target = (1.0 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return -(target * log_probs).sum(dim=1).mean()
