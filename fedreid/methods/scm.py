"""``scm``: SCM-ReID, supervised contrastive-metric learning with a hybrid loss.

Pham & Nguyen (J. Electronic Imaging 2025): the CTL recipe (label-smoothed CE on the BNNeck
logits, batch-hard triplet, centre loss, centroid triplet) plus a supervised contrastive
term over two independently augmented views of every image, computed on the L2-normalised
classifier logits. Default weights are the published ones (CE 1, triplet 1 with margin 0.5,
centre 5e-4, centroid triplet 1, SupCon 0.1 at τ = 0.1); setting a weight to 0 removes its
term (the ablation of sims.bench.scm_claim).

Lighter than the public code in one respect: both views go through the network once as a
2B batch and the metric losses use both views (the published code runs a second forward
pass over the two views only for SupCon), so a step costs two forward passes, not three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.losses import (
    CenterLoss,
    CentroidTripletLoss,
    CrossEntropyLabelSmooth,
    SupConLoss,
    TripletLoss,
    center_loss_optimizer,
    rescale_center_grads,
)
from fedreid.losses.weighted import weighted_sum
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead


@dataclass
class ScmOptions(MethodOptions):
    id_weight: float = 1.0  # label-smoothed CE on the BNNeck logits
    triplet_weight: float = 1.0  # batch-hard triplet on the pooled feature
    center_weight: float = 0.0005  # centre loss
    centroid_weight: float = 1.0  # centroid triplet (CTL)
    supcon_weight: float = 0.1  # supervised contrastive over the two views
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.5  # <= 0 means soft margin (also the centroid triplet's)
    supcon_temperature: float = 0.1  # τ of SupCon (base τ 0.07)
    center_lr: float = 0.5  # SGD learning rate of the centres
class SCMMethod(ReidMethod):
    name = "scm"
    supervised = True
    Options = ScmOptions
    batch_spec = BatchSpec(views=2, labels=True)

    def __init__(self, options: ScmOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        for key in ("id_weight", "triplet_weight", "center_weight", "centroid_weight", "supcon_weight"):
            if getattr(options, key) < 0:
                raise ValueError(f"method.scm.{key}={getattr(options, key)} must be >= 0 (0 removes the term)")
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)
        self.num_classes = len(pids)
        self.heads["classifier"] = IdentityHead(model.feat_dim, self.num_classes).to(self.device)
        self.heads["center"] = CenterLoss(self.num_classes, model.feat_dim).to(self.device)
        margin = options.triplet_margin if options.triplet_margin > 0 else None
        self.id_loss = CrossEntropyLabelSmooth(self.num_classes, epsilon=options.label_smoothing)
        self.triplet = TripletLoss(margin=margin)
        self.centroid = CentroidTripletLoss(margin=margin)
        self.supcon = SupConLoss(temperature=options.supcon_temperature)
        self.center_opt = center_loss_optimizer(self.heads["center"], lr=options.center_lr)

    def param_groups(self) -> list[dict]:
        shared = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": shared}, {"params": list(self.heads["classifier"].parameters())}]

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        b = len(batch.indices)
        targets = torch.as_tensor(self.labels[batch.indices], device=batch.images.device)
        both = targets.repeat(2)
        global_feat, bn_feat = self.model(torch.cat(batch.views))
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        self.center_opt.zero_grad(set_to_none=True)
        logits = self.heads["classifier"](bn_feat)
        terms = {
            "id": (o.id_weight, lambda: self.id_loss(logits, both)),
            "triplet": (o.triplet_weight, lambda: self.triplet(global_feat, both)),
            "center": (o.center_weight, lambda: self.heads["center"](global_feat, both)),
            "centroid": (o.centroid_weight, lambda: self.centroid(global_feat, both)),
            "supcon": (o.supcon_weight, lambda: self.supcon(
                torch.stack([F.normalize(logits[:b], dim=1), F.normalize(logits[b:], dim=1)], dim=1), targets)),
        }
        total, logs = weighted_sum(terms, logits)
        logs["train_acc"] = float((logits.argmax(1) == both).float().mean())
        return StepOutput(total, logs, embedding=bn_feat[:b])

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        if self.options.center_weight > 0:
            rescale_center_grads(self.heads["center"], self.options.center_weight)
            self.center_opt.step()
