"""``bot``: the supervised BNNeck strong baseline (Luo et al., "Bag of Tricks").

Label-smoothed cross-entropy on the BNNeck feature, batch-hard triplet and centre loss on
the pooled feature, P×K batches. The classifier and the centres are site-only heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.losses import (
    CenterLoss,
    CrossEntropyLabelSmooth,
    TripletLoss,
    center_loss_optimizer,
    rescale_center_grads,
)
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead


@dataclass
class BotOptions(MethodOptions):
    label_smoothing: float = 0.1  # ε of the label-smoothed cross-entropy
    triplet_margin: float = 0.3  # <= 0 means soft margin
    center_weight: float = 0.0005  # weight of the centre loss
    center_lr: float = 0.5  # SGD learning rate of the centres (their own optimiser, BoT)
class BoTMethod(ReidMethod):
    name = "bot"
    supervised = True
    Options = BotOptions
    batch_spec = BatchSpec(views=1, labels=True)

    def __init__(self, options: BotOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)  # relabel to 0..C-1
        self.num_classes = len(pids)
        feat_dim = model.feat_dim
        self.heads["classifier"] = IdentityHead(feat_dim, self.num_classes).to(self.device)
        self.heads["center"] = CenterLoss(self.num_classes, feat_dim).to(self.device)
        self.id_loss = CrossEntropyLabelSmooth(self.num_classes, epsilon=options.label_smoothing)
        self.triplet = TripletLoss(margin=options.triplet_margin if options.triplet_margin > 0 else None)
        self.center_weight = options.center_weight
        self.center_opt = center_loss_optimizer(self.heads["center"], lr=options.center_lr)

    def param_groups(self) -> list[dict]:
        # The centres have their own SGD (BoT); keep them out of the main optimiser.
        shared = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": shared}, {"params": list(self.heads["classifier"].parameters())}]

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)

    def targets(self, batch: Batch) -> torch.Tensor:
        return torch.as_tensor(self.labels[batch.indices], device=batch.images.device)

    def training_step(self, batch: Batch) -> StepOutput:
        targets = self.targets(batch)
        global_feat, bn_feat = self.model(batch.images)
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        self.center_opt.zero_grad(set_to_none=True)
        logits = self.heads["classifier"](bn_feat)
        l_id = self.id_loss(logits, targets)
        l_tri = self.triplet(global_feat, targets)
        l_center = self.heads["center"](global_feat, targets)
        total = l_id + l_tri + self.center_weight * l_center
        acc = (logits.argmax(1) == targets).float().mean()
        return StepOutput(total, {
            "loss_id": float(l_id.detach()),
            "loss_triplet": float(l_tri.detach()),
            "loss_center": float(l_center.detach()),
            "train_acc": float(acc),
        }, embedding=bn_feat)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        if self.center_weight > 0:
            rescale_center_grads(self.heads["center"], self.center_weight)
            self.center_opt.step()
