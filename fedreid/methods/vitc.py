"""``vitc``: ViTC-UReID — a ViT encoder with cluster and camera-aware proxy contrast (unsupervised).

Pham, Nguyen & Nguyen (J. Computer Science and Cybernetics, accepted); the mechanism as
summarised in research/methods.md §7. Every epoch the ViT's CLS embeddings of the site's
training images are clustered (the project's k-reciprocal Jaccard + DBSCAN, as ``capr``);
DBSCAN's outliers are kept as one-image clusters. Two memories are built from the clusters:
a cluster-centre memory (one centre per pseudo-identity, updated with the hardest batch
instance, τ = 0.05) and a camera-aware proxy memory (each cluster split by camera; CAP's
intra-camera loss, and its inter-camera loss against the hardest proxies of other clusters).
The dual loss is ``cluster_weight · L_cluster + camera_weight · L_camera``;
``camera_proxies=false`` leaves plain cluster contrast (the claim check's baseline).

Left out of the lightweight version: TCMM's token-level constraint and instance (anchor)
memory, and pretrained ViT-B/16 weights (none can be downloaded here; ``model.weights``
takes a local timm file).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.losses import CameraProxyMemoryLoss, ClusterContrastMemory
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.methods.clustering import KeepsClusterLabels
from fedreid.pseudo_labels import cluster_pseudo_labels, site_neighbourhood


@dataclass
class VitcOptions(MethodOptions):
    eps: float = 0.6  # DBSCAN radius on the Jaccard distance
    min_samples: int = 4  # DBSCAN's core-point neighbourhood size
    k1: int = 20  # k-reciprocal neighbours (the cap when adaptive_k)
    k2: int = 6  # neighbours averaged in the query expansion
    adaptive_k: bool = True  # shrink k1/k2 on small sites, as capr
    camera_centre: bool = True  # cluster per-camera-centred embeddings, as capr
    cluster_weight: float = 1.0  # weight of the cluster-contrast loss
    cluster_temperature: float = 0.05  # τ of the cluster-contrast loss
    cluster_momentum: float = 0.2  # old centre's weight in the hard-instance update
    camera_proxies: bool = True  # false: plain cluster contrast, no camera-aware memory
    camera_weight: float = 1.0  # weight of the camera-aware proxy loss
    camera_temperature: float = 0.05  # τ of the proxy memory (CAP's β)
    inter_weight: float = 0.5  # CAP's inter-camera term, relative to the intra-camera one
    proxy_momentum: float = 0.2  # old proxy's weight in the memory update
    hard_negatives: int = 50  # most similar proxies of other clusters in the inter-camera loss
class ViTCMethod(KeepsClusterLabels, ReidMethod):
    name = "vitc"
    supervised = False
    Options = VitcOptions
    batch_spec = BatchSpec(views=1, labels=False)
    default_arch = "vit_tiny_p16"

    def __init__(self, options: VitcOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        self.clusters = ClusterContrastMemory(options.cluster_temperature, options.cluster_momentum).to(self.device)
        self.proxies = CameraProxyMemoryLoss(
            temperature=options.camera_temperature, intra_weight=1.0, inter_weight=options.inter_weight,
            alpha=options.proxy_momentum, bg_knn=options.hard_negatives,
        ).to(self.device)
        self.heads["clusters"] = self.clusters
        self.heads["proxies"] = self.proxies
        n = len(self.train_store)
        self.sample_cluster = np.full(n, -1, dtype=np.int64)  # clusters + outliers as singletons
        self.sample_proxy = np.full(n, -1, dtype=np.int64)
        self.cluster_labels = np.full(n, -1, dtype=np.int64)  # DBSCAN's, outliers -1 (for CRR)
        self.clustered = False

    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        o = self.options
        feats = self.embed(self.train_store, flip=False)
        k1, k2 = site_neighbourhood(len(self.train_store), o.k1, o.k2) if o.adaptive_k else (o.k1, o.k2)
        pl = cluster_pseudo_labels(feats.numpy(), self.train_store.camids, eps=o.eps,
                                   min_samples=o.min_samples, k1=k1, k2=k2,
                                   camera_centre=o.camera_centre, outlier_instances=True)
        self.cluster_labels = np.asarray(pl.labels, dtype=np.int64)
        self.sample_proxy = np.asarray(pl.sample_proxy, dtype=np.int64)
        self.sample_cluster = np.asarray(pl.proxy_cluster, dtype=np.int64)[self.sample_proxy]
        self.clustered = True
        centres = torch.zeros(int(self.sample_cluster.max()) + 1, feats.shape[1])
        centres.index_add_(0, torch.as_tensor(self.sample_cluster), feats)
        self.clusters.reset(centres.to(self.device))
        self.proxies.reset(
            torch.as_tensor(pl.proxy_centers, dtype=torch.float32, device=self.device),
            torch.as_tensor(pl.proxy_cluster, device=self.device),
            torch.as_tensor(pl.proxy_camera, device=self.device),
        )
        return {"clusters": float(pl.num_clusters), "outliers": float(pl.num_outliers),
                "proxies": float(len(pl.proxy_cluster)), "k1": float(k1)}

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        if not self.clustered:
            return []
        return pk_batches(self.sample_cluster, self.setup.batch_size, self.setup.num_instances, rng)

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        _, bn_feat = self.model(batch.images)
        bn_feat = bn_feat.float()
        feats = F.normalize(bn_feat, dim=1)
        clusters = torch.as_tensor(self.sample_cluster[batch.indices], device=feats.device)
        l_cluster = self.clusters(feats, clusters)
        total = o.cluster_weight * l_cluster
        logs = {"loss_cluster": float(l_cluster.detach())}
        if o.camera_proxies:
            proxies = torch.as_tensor(self.sample_proxy[batch.indices], device=feats.device)
            l_camera = self.proxies(feats, proxies, batch.camids)
            total = total + o.camera_weight * l_camera
            logs["loss_camera"] = float(l_camera.detach())
        return StepOutput(total, logs, embedding=bn_feat)

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        feats = F.normalize(out.embedding.detach(), dim=1)
        self.clusters.update(feats, torch.as_tensor(self.sample_cluster[batch.indices], device=feats.device))
        if self.options.camera_proxies:
            self.proxies.update(feats, torch.as_tensor(self.sample_proxy[batch.indices], device=feats.device))
