"""``capr``: unsupervised camera-aware proxy training, FedCAPR's local method.

Each epoch: features of every training image → (per-camera centring) → k-reciprocal Jaccard
distance → DBSCAN → per-camera proxies, outliers as one-image proxies; then train with the
camera-aware proxy memory loss on P×K batches of proxies. No identity label is used.
Pseudo-labels and the memory never leave the site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.losses import CameraProxyMemoryLoss
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.methods.clustering import KeepsClusterLabels
from fedreid.pseudo_labels import cluster_pseudo_labels, site_neighbourhood


@dataclass
class CaprOptions(MethodOptions):
    eps: float = 0.5  # DBSCAN radius on the Jaccard distance
    min_samples: int = 4  # DBSCAN's core-point neighbourhood size
    k1: int = 20  # k-reciprocal neighbours (the cap when adaptive_k)
    k2: int = 6  # neighbours averaged in the query expansion
    temperature: float = 0.07  # softmax temperature of the proxy memory
    intra_weight: float = 0.6  # weight of the intra-camera proxy loss
    inter_weight: float = 0.7  # weight of the inter-camera proxy loss
    momentum: float = 0.2  # memory keeps this fraction of its old value
    hard_negatives: int = 50  # most similar proxies of other clusters in the inter-camera loss
    camera_centre: bool = True  # cluster per-camera-centred features (learns from random weights)
    outlier_instances: bool = True  # outliers train as one-image proxies instead of being dropped
    adaptive_k: bool = True  # shrink k1/k2 on small sites (fedreid.pseudo_labels.site_neighbourhood)


class CAPRMethod(KeepsClusterLabels, ReidMethod):
    name = "capr"
    supervised = False
    Options = CaprOptions
    batch_spec = BatchSpec(views=1, labels=False)

    def __init__(self, options: CaprOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        self.memory = CameraProxyMemoryLoss(
            temperature=options.temperature,
            intra_weight=options.intra_weight,
            inter_weight=options.inter_weight,
            alpha=options.momentum,
            bg_knn=options.hard_negatives,
        ).to(self.device)
        self.heads["memory"] = self.memory
        n = len(self.train_store)
        self.sample_proxy = np.full(n, -1, dtype=np.int64)
        self.cluster_labels = np.full(n, -1, dtype=np.int64)  # DBSCAN's, for CRR
        self.clustered = False

    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        o = self.options
        feats = self.embed(self.train_store, flip=False)
        k1, k2 = site_neighbourhood(len(self.train_store), o.k1, o.k2) if o.adaptive_k else (o.k1, o.k2)
        pl = cluster_pseudo_labels(
            feats.numpy(), self.train_store.camids,
            eps=o.eps, min_samples=o.min_samples, k1=k1, k2=k2,
            camera_centre=o.camera_centre, outlier_instances=o.outlier_instances,
        )
        self.sample_proxy = np.asarray(pl.sample_proxy, dtype=np.int64)
        self.cluster_labels = np.asarray(pl.labels, dtype=np.int64)
        self.clustered = True
        if len(pl.proxy_cluster) > 0:
            self.memory.reset(
                torch.as_tensor(pl.proxy_centers, dtype=torch.float32, device=self.device),
                torch.as_tensor(pl.proxy_cluster, device=self.device),
                torch.as_tensor(pl.proxy_camera, device=self.device),
            )
        return {
            "clusters": float(pl.num_clusters),
            "outliers": float(pl.num_outliers),
            "proxies": float(len(pl.proxy_cluster)),
            "k1": float(k1),
        }

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        if (self.sample_proxy >= 0).sum() == 0:
            return []  # nothing clustered yet: the epoch trains nothing (logged as 0 batches)
        return pk_batches(self.sample_proxy, self.setup.batch_size, self.setup.num_instances, rng)

    def training_step(self, batch: Batch) -> StepOutput:
        _, bn_feat = self.model(batch.images)
        bn_feat = bn_feat.float()
        feats = F.normalize(bn_feat, dim=1)
        targets = torch.as_tensor(self.sample_proxy[batch.indices], device=feats.device)
        loss = self.memory(feats, targets, batch.camids)
        return StepOutput(loss, {"loss_cap": float(loss.detach())}, embedding=bn_feat)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        feats = F.normalize(out.embedding.detach(), dim=1)
        targets = torch.as_tensor(self.sample_proxy[batch.indices], device=feats.device)
        self.memory.update(feats, targets)
