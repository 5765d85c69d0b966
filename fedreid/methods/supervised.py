"""BoT's supervised recipe as a mixin: what ``bic2r`` and ``echo`` train with beside their own
terms (label-smoothed ID loss on the BNNeck logits + batch-hard triplet, P×K batches)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fedreid.data.batch import Batch
from fedreid.data.samplers import pk_batches
from fedreid.losses import CrossEntropyLabelSmooth, TripletLoss
from fedreid.models import IdentityHead


class IdTripletParts(NamedTuple):
    targets: torch.Tensor
    global_feat: torch.Tensor
    bn_feat: torch.Tensor
    logits: torch.Tensor
    l_id: torch.Tensor
    l_tri: torch.Tensor

    def logs(self) -> dict[str, float]:
        acc = (self.logits.argmax(1) == self.targets).float().mean()
        return {"loss_id": float(self.l_id.detach()), "loss_triplet": float(self.l_tri.detach()),
                "train_acc": float(acc)}


class IdTriplet:
    """Mixin (before :class:`ReidMethod` in the bases). Call :meth:`init_id_triplet` in
    ``__init__``; ``batches`` draws P×K batches over the relabelled identities and
    :meth:`id_triplet` runs the forward pass and both losses."""

    def init_id_triplet(self, feat_dim: int, label_smoothing: float, triplet_margin: float) -> int:
        """Relabel the identities to 0..C-1, add the classifier head and the two losses; returns C.
        ``triplet_margin <= 0`` means the soft margin."""
        pids = np.unique(self.train_store.pids)  # type: ignore[attr-defined]
        self.labels = np.searchsorted(pids, self.train_store.pids)  # type: ignore[attr-defined]
        self.heads["classifier"] = IdentityHead(feat_dim, len(pids)).to(self.device)  # type: ignore[attr-defined]
        self.id_loss = CrossEntropyLabelSmooth(len(pids), epsilon=label_smoothing)
        self.triplet = TripletLoss(margin=triplet_margin if triplet_margin > 0 else None)
        return len(pids)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)  # type: ignore[attr-defined]

    def id_triplet(self, batch: Batch) -> IdTripletParts:
        targets = torch.as_tensor(self.labels[batch.indices], device=batch.images.device)
        global_feat, bn_feat = self.model(batch.images)  # type: ignore[attr-defined]
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        logits = self.heads["classifier"](bn_feat)  # type: ignore[attr-defined]
        return IdTripletParts(targets, global_feat, bn_feat, logits, self.id_loss(logits, targets),
                              self.triplet(global_feat, targets))
