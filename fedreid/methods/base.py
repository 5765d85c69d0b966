"""What a client method is: a recipe of model, losses, one training epoch and private state.

A federation shares the ``ReidNet`` (backbone + BNNeck); everything a method builds on top
of it — classifier heads, centre vectors, proxy memories, pseudo-labels — lives in
``self.private`` and never leaves the site. Adding a method is one file in this package plus
one line in :data:`fedreid.methods.METHODS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedreid.config.schema import FedReIDConfig
from fedreid.data.store import ImageStore


@dataclass
class BatchOutput:
    """What the shared training step hands to a method's loss."""

    global_feat: torch.Tensor  # pooled feature, before the BNNeck
    bn_feat: torch.Tensor  # after the BNNeck, not normalised
    indices: np.ndarray  # rows of the ImageStore in this batch


class ReidMethod(ABC):
    """One site's local training recipe."""

    name: str = ""
    supervised: bool = True

    def __init__(self, cfg: FedReIDConfig, model: nn.Module, train: ImageStore, device: torch.device):
        self.cfg = cfg
        self.model = model
        self.train_store = train
        self.device = device
        self.private = nn.ModuleDict()  # site-private modules: never sent

    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        """Work before an epoch (e.g. re-clustering); returns metrics to log."""
        return {}

    @abstractmethod
    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Indices of the training images, one array per batch, for one epoch."""

    @abstractmethod
    def loss(self, out: BatchOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one batch and its parts (for logging)."""

    def after_step(self, out: BatchOutput) -> None:  # noqa: B027 - optional hook
        """Hook after the optimiser step (memory updates, centre-loss step); default: none."""

    def param_groups(self) -> list[dict]:
        """Parameters the main optimiser trains: the shared net and the private heads."""
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        private = [p for p in self.private.parameters() if p.requires_grad]
        if private:
            groups.append({"params": private})
        return groups

    def private_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.private.state_dict().items()}

    def load_private_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.private.load_state_dict(state)
