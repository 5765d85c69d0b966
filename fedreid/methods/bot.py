"""``bot``: the supervised BNNeck strong baseline (Luo et al., "Bag of Tricks").

Label-smoothed cross-entropy on the BNNeck feature, batch-hard triplet and centre loss on
the pooled feature, P×K batches. The classifier and the centres are site-private.
"""

from __future__ import annotations

import numpy as np
import torch

from fedreid.data.samplers import pk_batches
from fedreid.losses import (
    CenterLoss,
    CrossEntropyLabelSmooth,
    TripletLoss,
    center_loss_optimizer,
    rescale_center_grads,
)
from fedreid.methods.base import BatchOutput, ReidMethod
from fedreid.models import IdentityHead


class BoTMethod(ReidMethod):
    name = "bot"
    supervised = True

    def __init__(self, cfg, model, train, device):
        super().__init__(cfg, model, train, device)
        pids = np.unique(train.pids)
        self.labels = np.searchsorted(pids, train.pids)  # relabel to 0..C-1
        self.num_classes = len(pids)
        bot = cfg.method.bot
        feat_dim = model.feat_dim
        self.private["head"] = IdentityHead(feat_dim, self.num_classes).to(device)
        self.private["center"] = CenterLoss(self.num_classes, feat_dim).to(device)
        self.id_loss = CrossEntropyLabelSmooth(self.num_classes, epsilon=bot.label_smoothing)
        margin = bot.triplet_margin if bot.triplet_margin > 0 else None
        self.triplet = TripletLoss(margin=margin)
        self.center_weight = bot.center_weight
        self.center_opt = center_loss_optimizer(self.private["center"], lr=bot.center_lr)

    def param_groups(self) -> list[dict]:
        # The centres have their own SGD (BoT); keep them out of the main optimiser.
        shared = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": shared}, {"params": list(self.private["head"].parameters())}]

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        t = self.cfg.train
        return pk_batches(self.labels, t.batch_size, t.num_instances, rng)

    def loss(self, out: BatchOutput) -> tuple[torch.Tensor, dict[str, float]]:
        targets = torch.as_tensor(self.labels[out.indices], device=out.bn_feat.device)
        self.center_opt.zero_grad(set_to_none=True)
        logits = self.private["head"](out.bn_feat)
        l_id = self.id_loss(logits, targets)
        l_tri = self.triplet(out.global_feat, targets)
        l_center = self.private["center"](out.global_feat, targets)
        total = l_id + l_tri + self.center_weight * l_center
        acc = (logits.argmax(1) == targets).float().mean()
        return total, {
            "loss_id": float(l_id.detach()),
            "loss_triplet": float(l_tri.detach()),
            "loss_center": float(l_center.detach()),
            "train_acc": float(acc),
        }

    def after_step(self, out: BatchOutput) -> None:
        if self.center_weight > 0:
            rescale_center_grads(self.private["center"], self.center_weight)
            self.center_opt.step()
