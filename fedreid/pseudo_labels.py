"""Unsupervised pseudo-labels: k-reciprocal Jaccard + DBSCAN + per-camera proxies (FedCAPR).

A site without identity labels clusters its current features every local epoch; clusters are
pseudo-identities, outliers are set aside, and each cluster is split by camera into proxies
(the camera-aware proxy memory's entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from fedreid.eval.rerank import jaccard_graph


@dataclass
class PseudoLabels:
    """Cluster labels (-1 = outlier) and per-camera proxies.

    Proxy p is cluster ``proxy_cluster[p]`` seen by camera ``proxy_camera[p]``; proxies are
    ordered by (cluster, camera). ``proxy_centers`` (P×D) are L2-normalised mean features.
    ``sample_proxy`` maps each sample to its proxy (-1 for outliers).
    """

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    proxy_centers: torch.Tensor
    proxy_cluster: np.ndarray
    proxy_camera: np.ndarray
    sample_proxy: np.ndarray


def cluster_pseudo_labels(
    features: Any,
    camids: Any,
    *,
    eps: float = 0.5,
    min_samples: int = 4,
    k1: int = 20,
    k2: int = 6,
) -> PseudoLabels:
    """Cluster features (L2-normalised here) with DBSCAN on the k-reciprocal Jaccard distance.

    DBSCAN gets the sparse Jaccard graph with ``metric="precomputed"``, holding only pairs
    within eps: the others can never be neighbours, so the clusters are those of the dense
    matrix, in memory linear in N. Deterministic: no random state is involved.
    """
    f = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(features)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"features must be a non-empty N×D array, got shape {tuple(f.shape)}")
    f = F.normalize(f.float(), dim=1)
    cams = np.asarray(camids.cpu() if isinstance(camids, torch.Tensor) else camids)
    if cams.shape != (f.shape[0],):
        raise ValueError(
            f"camids must have one entry per feature row ({f.shape[0]}), got {cams.shape}"
        )
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1) for Jaccard distances, got {eps}")
    if int(min_samples) < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")

    graph = jaccard_graph(f, k1=k1, k2=k2, max_distance=eps)
    labels = DBSCAN(eps=eps, min_samples=int(min_samples), metric="precomputed").fit_predict(graph)
    labels = labels.astype(np.int64)
    inlier = np.flatnonzero(labels >= 0)
    num_clusters = int(labels.max()) + 1 if len(inlier) else 0

    pairs, sample_slot = np.unique(
        np.stack([labels[inlier], cams[inlier]], axis=1), axis=0, return_inverse=True
    )
    sample_proxy = np.full(len(labels), -1, dtype=np.int64)
    sample_proxy[inlier] = sample_slot.ravel()
    sums = torch.zeros(len(pairs), f.shape[1]).index_add_(
        0, torch.from_numpy(sample_proxy[inlier]), f.cpu()[torch.from_numpy(inlier)]
    )
    return PseudoLabels(
        labels=labels,
        num_clusters=num_clusters,
        num_outliers=len(labels) - len(inlier),
        proxy_centers=F.normalize(sums, dim=1),
        proxy_cluster=pairs[:, 0].astype(np.int64),
        proxy_camera=pairs[:, 1],
        sample_proxy=sample_proxy,
    )
