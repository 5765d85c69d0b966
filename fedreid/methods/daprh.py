"""``daprh``: an unlabelled site refines its pseudo-labels with a mean teacher (DAPRH's target
stage; Pham, Nguyen & Nguyen, Knowledge-Based Systems 2024, research/uda.md §2).

Every epoch (one per round in a federation):

1. the teacher embeds every training image; the project's k-reciprocal Jaccard distance +
   DBSCAN clusters them (:func:`fedreid.pseudo_labels.cluster_pseudo_labels`); outliers sit
   the epoch out;
2. the classifier of student and teacher is set to the L2-normalised cluster centroids (it is
   sized to the training split and sliced to the cluster count, so the optimiser keeps one
   parameter while the count changes);
3. hard labels are softened towards silhouette-filtered cluster centres
   (:func:`fedreid.losses.refined_soft_labels`, α 0.5, T 0.05, ρ 0).

The step: the student sees one augmented view, the teacher (an EMA of the student, momentum
``min(1 − 1/(t+1), ema)``) sees a camera-style copy of the same image (another camera of
this site, from ``fedreid site augment``), or a second augmentation where the image has no
copy or ``teacher_view=augment``. Loss =
``(1 − a)·CE(soft labels) + a·KL(teacher ‖ student) + (1 − b)·triplet + b·soft-triplet``
with a = ``kl_weight`` 0.4, b = ``soft_triplet_weight`` 0.6; the triplet is the soft-margin
(softmax, m = 0) batch-hard triplet on pseudo-labels, the soft triplet MMT's.

Guards: fewer than two clusters (or clusters that refinement cannot use) → the epoch trains
nothing; more than ``max_outlier_fraction`` outliers → the classifier terms (CE and KL) are
off and only the triplet terms train.

Changed from the paper, because a federation forbids it or a site's CPU cannot afford it:

- **Domain-invariant mapping.** DAPRH's DIM trains a discriminator on source and target
  features of the same batch; no site holds another site's features. It is replaced by
  *local BN statistics*: with ``adapt_bn`` the site re-estimates every BatchNorm's running
  statistics on its own images when a model arrives (AdaBN), before clustering, so its
  features are normalised by its own domain's statistics, not the federation's average.
  (The opt-in alternative of research/uda.md §3.4(C), a discriminator against centroids
  broadcast by the coordinator, needs a relay the coordinator does not have; not built.)
- **Stage 0 GAN**: per-site camera styles (this site's cameras only), not source→target.
- **Holistic part features**: the released trainer gives the part classifier no loss, so only
  the global feature is used; the backbone is the registry's (ResNet-18 by default).
- The teacher is reset to the downloaded model each round (its EMA would otherwise lag a
  model the aggregation has moved), and never leaves the site, like the classifier.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.augment import CopyPool, generated_folder, load_generated
from fedreid.data.augment import train_augment
from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.data.store import ImageStore
from fedreid.losses import TripletLoss, refined_soft_labels, soft_cross_entropy, soft_triplet_loss
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.methods.batches import eval_batches
from fedreid.methods.clustering import KeepsClusterLabels
from fedreid.models import IdentityHead
from fedreid.pseudo_labels import cluster_pseudo_labels, site_neighbourhood

TEACHER_VIEWS = ("camstyle", "augment")
CLUSTER_MODELS = ("teacher", "student")
COPY_ERASING = 0.5  # random erasing of the teacher's camera-style copies (BoT's default)


@dataclass
class DaprhOptions(MethodOptions):
    eps: float = 0.6  # DBSCAN radius on the Jaccard distance
    min_samples: int = 4  # DBSCAN's core-point neighbourhood size
    k1: int = 20  # k-reciprocal neighbours (the cap when adaptive_k)
    k2: int = 6  # neighbours averaged in the query expansion
    adaptive_k: bool = True  # shrink k1/k2 on small sites, as capr
    camera_centre: bool = True  # cluster per-camera-centred features, as capr
    cluster_with: str = "teacher"  # teacher | student: whose features are clustered
    alpha: float = 0.5  # weight of the refined (soft) part of each pseudo-label (UET α)
    temperature: float = 0.05  # softmax temperature over squared distances to the centres
    silhouette_min: float = 0.0  # members above this silhouette define a reliable centre (ρ)
    kl_weight: float = 0.4  # a: KL to the teacher's class probabilities; the soft-label CE gets 1 - a
    soft_triplet_weight: float = 0.6  # b: MMT's soft triplet; the hard triplet gets 1 - b
    ema: float = 0.99  # the teacher's EMA momentum (ramped up from 0 after each reset)
    teacher_view: str = "camstyle"  # camstyle (a camera-style copy, else a 2nd augmentation) | augment
    generated: str = "augmented"  # camera-style copies: folder relative to the site folder, or absolute ({site} = its name)
    max_outlier_fraction: float = 0.5  # above it the classifier terms are off for the epoch
    adapt_bn: bool = True  # re-estimate BN statistics on the site's images when a model arrives (replaces DIM)


@torch.no_grad()
def adapt_bn_statistics(model: nn.Module, store: ImageStore, batch_size: int, device: torch.device) -> int:
    """AdaBN: every BatchNorm's running statistics recomputed on ``store``'s images (a plain
    average over the split); returns the number of BN layers reset."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        for (images,) in eval_batches(store, batch_size, device):
            if len(images) > 1:
                model(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← momentum · θ_t + (1 − momentum) · θ_s`` over the parameters."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


class DAPRHMethod(KeepsClusterLabels, ReidMethod):
    name = "daprh"
    supervised = False
    Options = DaprhOptions
    batch_spec = BatchSpec(views=2, labels=False)

    def __init__(self, options: DaprhOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        self._check(options)
        n = len(self.train_store)
        self.heads["classifier"] = IdentityHead(model.feat_dim, n).to(self.device)
        self.teacher: nn.Module | None = None
        self.teacher_classifier = torch.zeros(n, model.feat_dim, device=self.device)
        self.ema_steps = 0
        self.cluster_labels = np.full(n, -1, dtype=np.int64)
        self.soft_targets = torch.zeros(n, 0)
        self.num_clusters = 0
        self.use_id = False
        self.clustered = False
        self.triplet = TripletLoss(margin=None)
        self.pool = None
        if options.teacher_view == "camstyle":
            folder = generated_folder(options.generated, self.train_store)
            self.pool = CopyPool(load_generated(folder, self.train_store, option="method.daprh.generated"), n)
        self._rng = np.random.default_rng(0)
        self._gen = torch.Generator().manual_seed(0)

    @staticmethod
    def _check(o: DaprhOptions) -> None:
        if o.teacher_view not in TEACHER_VIEWS:
            raise ValueError(f"method.daprh.teacher_view={o.teacher_view!r}: choose one of {', '.join(TEACHER_VIEWS)}")
        if o.cluster_with not in CLUSTER_MODELS:
            raise ValueError(f"method.daprh.cluster_with={o.cluster_with!r}: choose one of {', '.join(CLUSTER_MODELS)}")
        for key in ("kl_weight", "soft_triplet_weight", "alpha", "max_outlier_fraction"):
            if not 0.0 <= getattr(o, key) <= 1.0:
                raise ValueError(f"method.daprh.{key}={getattr(o, key)} must lie in [0, 1]")
        if not 0.0 <= o.ema < 1.0:
            raise ValueError(f"method.daprh.ema={o.ema} must lie in [0, 1) (DAPRH: 0.99)")

    # ---- the teacher ------------------------------------------------------------------
    def _reset_teacher(self) -> None:
        """Start the teacher from the current model (after AdaBN when asked)."""
        if self.options.adapt_bn:
            adapt_bn_statistics(self.model, self.train_store, self.setup.eval_batch_size, self.device)
        teacher = copy.deepcopy(self.model)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        self.ema_steps = 0

    def on_download(self, global_state: Mapping[str, torch.Tensor]) -> None:
        self.teacher = None  # rebuilt from the downloaded model before the first epoch

    # ---- clustering and refined labels ------------------------------------------------
    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        o = self.options
        if self.teacher is None:
            self._reset_teacher()
        source = self.teacher if o.cluster_with == "teacher" else self.model
        feats = self.embed(self.train_store, flip=False, model=source)
        k1, k2 = site_neighbourhood(len(self.train_store), o.k1, o.k2) if o.adaptive_k else (o.k1, o.k2)
        pl = cluster_pseudo_labels(feats.numpy(), self.train_store.camids, eps=o.eps,
                                   min_samples=o.min_samples, k1=k1, k2=k2, camera_centre=o.camera_centre)
        labels = np.asarray(pl.labels, dtype=np.int64)
        outlier_fraction = pl.num_outliers / len(labels)
        logs = {"clusters": float(pl.num_clusters), "outliers": float(pl.num_outliers), "k1": float(k1)}
        try:
            refined = refined_soft_labels(feats, labels, alpha=o.alpha, temperature=o.temperature,
                                          rho=o.silhouette_min)
        except ValueError:
            self.clustered = False  # degenerate: nothing trains this epoch
            self.cluster_labels = labels
            return {**logs, "degenerate": 1.0}
        self.cluster_labels = labels
        self.num_clusters = pl.num_clusters
        self.soft_targets = refined.targets
        self.use_id = outlier_fraction <= o.max_outlier_fraction
        self.clustered = True
        centroids = torch.zeros(pl.num_clusters, feats.shape[1]).index_add_(
            0, torch.from_numpy(labels[labels >= 0]), feats[torch.from_numpy(np.flatnonzero(labels >= 0))])
        centroids = F.normalize(centroids, dim=1).to(self.device)
        with torch.no_grad():
            self.heads["classifier"].weight[: pl.num_clusters] = centroids
            self.teacher_classifier[: pl.num_clusters] = centroids
        sil = refined.silhouettes[labels >= 0]
        return {**logs, "degenerate": 0.0, "id_terms": float(self.use_id), "silhouette": float(sil.mean())}

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        self._rng = np.random.default_rng(rng.integers(2**62))
        self._gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if not self.clustered:
            return []
        return pk_batches(self.cluster_labels, self.setup.batch_size, self.setup.num_instances, rng)

    # ---- one step -----------------------------------------------------------------------
    def teacher_images(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """The teacher's view: camera-style copies where the image has one (camstyle), else
        the batch's second augmentation; returns the images and how many are copies."""
        view = batch.views[1]
        if self.pool is None:
            return view, 0
        picks = self.pool.draw(batch.indices, self._rng)
        slots = np.flatnonzero(picks >= 0)
        if slots.size == 0:
            return view, 0
        copies = train_augment(self.pool.images(picks[slots]), self._gen, erasing_p=COPY_ERASING)
        view = view.clone()
        view[torch.as_tensor(slots, device=view.device)] = copies.to(view.device, view.dtype)
        return view, int(slots.size)

    def training_step(self, batch: Batch) -> StepOutput:
        if self.teacher is None:
            raise ValueError("daprh trains after prepare_epoch (clustering) has built its teacher")
        o = self.options
        k = self.num_clusters
        labels = torch.as_tensor(self.cluster_labels[batch.indices], device=batch.images.device)
        global_s, bn_s = self.model(batch.images)
        global_s, bn_s = global_s.float(), bn_s.float()
        teacher_view, copies = self.teacher_images(batch)
        with torch.no_grad():
            self.teacher.train()
            global_t, bn_t = self.teacher(teacher_view)
            global_t, bn_t = global_t.float(), bn_t.float()
        l_tri = self.triplet(global_s, labels)
        l_soft_tri = soft_triplet_loss(global_s, global_t, labels)
        total = (1 - o.soft_triplet_weight) * l_tri + o.soft_triplet_weight * l_soft_tri
        logs = {"loss_triplet": float(l_tri.detach()), "loss_soft_triplet": float(l_soft_tri.detach()),
                "teacher_copies_fraction": copies / len(batch.indices)}
        if self.use_id:
            logits = F.linear(bn_s, self.heads["classifier"].weight[:k])
            with torch.no_grad():
                p_t = F.softmax(F.linear(bn_t, self.teacher_classifier[:k]), dim=1)
            soft = self.soft_targets[torch.as_tensor(batch.indices)].to(logits.device)
            l_id = soft_cross_entropy(logits, soft).mean()
            log_p_s = F.log_softmax(logits, dim=1)
            l_kl = (p_t * (p_t.clamp(min=1e-12).log() - log_p_s)).sum(dim=1).mean()
            total = total + (1 - o.kl_weight) * l_id + o.kl_weight * l_kl
            logs.update(loss_id=float(l_id.detach()), loss_kl=float(l_kl.detach()),
                        train_acc=float((logits.argmax(1) == labels).float().mean()))
        return StepOutput(total, logs, embedding=bn_s)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        momentum = min(1.0 - 1.0 / (self.ema_steps + 1), self.options.ema)
        ema_update(self.teacher, self.model, momentum)
        k = self.num_clusters
        with torch.no_grad():
            self.teacher_classifier[:k].mul_(momentum).add_(
                self.heads["classifier"].weight[:k].detach(), alpha=1.0 - momentum)
        self.ema_steps += 1
