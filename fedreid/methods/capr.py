"""``capr``: unsupervised camera-aware proxy training, FedCAPR's local method.

Each epoch: features of every training image → (per-camera centring) → k-reciprocal Jaccard
distance → DBSCAN → per-camera proxies, outliers as one-image proxies; then train with the
camera-aware proxy memory loss on P×K batches of proxies. No identity label is used.
Pseudo-labels and the memory are site-private.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.data.samplers import pk_batches
from fedreid.eval.features import extract_features
from fedreid.losses import CameraProxyMemoryLoss
from fedreid.methods.base import BatchOutput, ReidMethod
from fedreid.methods.batches import eval_batches
from fedreid.pseudo_labels import cluster_pseudo_labels, site_neighbourhood


class CAPRMethod(ReidMethod):
    name = "capr"
    supervised = False

    def __init__(self, cfg, model, train, device):
        super().__init__(cfg, model, train, device)
        c = cfg.method.capr
        self.memory = CameraProxyMemoryLoss(
            temperature=c.temperature,
            intra_weight=c.intra_weight,
            inter_weight=c.inter_weight,
            alpha=c.momentum,
            bg_knn=c.hard_negatives,
        ).to(device)
        self.private["memory"] = self.memory
        self.sample_proxy = np.full(len(train), -1, dtype=np.int64)
        self.cluster_labels = np.full(len(train), -1, dtype=np.int64)  # DBSCAN's, for CRR

    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        c = self.cfg.method.capr
        feats = extract_features(
            self.model,
            eval_batches(self.train_store, self.cfg.eval.batch_size, self.device),
            device=self.device,
            flip=False,
        )
        k1, k2 = site_neighbourhood(len(self.train_store), c.k1, c.k2) if c.adaptive_k else (c.k1, c.k2)
        pl = cluster_pseudo_labels(
            feats.cpu().numpy(), self.train_store.camids,
            eps=c.eps, min_samples=c.min_samples, k1=k1, k2=k2,
            camera_centre=c.camera_centre, outlier_instances=c.outlier_instances,
        )
        self.sample_proxy = np.asarray(pl.sample_proxy, dtype=np.int64)
        self.cluster_labels = pl.labels
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
        t = self.cfg.train
        if (self.sample_proxy >= 0).sum() == 0:
            return []  # nothing clustered yet: the epoch trains nothing (logged as 0 batches)
        return pk_batches(self.sample_proxy, t.batch_size, t.num_instances, rng)

    def loss(self, out: BatchOutput) -> tuple[torch.Tensor, dict[str, float]]:
        feats = F.normalize(out.bn_feat, dim=1)
        targets = torch.as_tensor(self.sample_proxy[out.indices], device=feats.device)
        camids = torch.as_tensor(self.train_store.camids[out.indices], device=feats.device)
        loss = self.memory(feats, targets, camids)
        return loss, {"loss_cap": float(loss.detach())}

    def after_step(self, out: BatchOutput) -> None:
        feats = F.normalize(out.bn_feat.detach(), dim=1)
        targets = torch.as_tensor(self.sample_proxy[out.indices], device=feats.device)
        self.memory.update(feats, targets)
