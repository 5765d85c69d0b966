"""Training losses: BoT's ID/triplet/center losses, centroid triplet (CTL), SupCon,
CAP's camera-aware proxy memory loss, the cluster-contrast memory, FedKLPR's KL
regulariser, Bi-C2R's compatibility losses, and the UDA pieces of IQAGA/DAPRH (feature-norm
quality weight, softmax and soft triplets, refined soft pseudo-labels).

All are hand-rolled (no pytorch-metric-learning) and device-agnostic.
"""

from fedreid.losses.camera_proxy import CameraProxyMemoryLoss
from fedreid.losses.center import CenterLoss, center_loss_optimizer, rescale_center_grads
from fedreid.losses.centroid_triplet import CentroidTripletLoss
from fedreid.losses.cluster_memory import ClusterContrastMemory
from fedreid.losses.compat import (
    affinity_alpha,
    anti_forgetting,
    directional_consistency,
    feature_alignment,
    forgetting_target,
    logit_distillation,
    relation_distillation,
)
from fedreid.losses.cross_entropy import CrossEntropyLabelSmooth
from fedreid.losses.kl import kl_feature_loss, mean_kl_divergence
from fedreid.losses.quality_weight import FeatureNormQualityWeight
from fedreid.losses.soft_labels import RefinedLabels, refined_soft_labels, soft_cross_entropy
from fedreid.losses.soft_triplet import hardest_pairs, soft_triplet_loss, softmax_triplet_losses
from fedreid.losses.supcon import SupConLoss
from fedreid.losses.triplet import TripletLoss, batch_hard_anchor_losses, euclidean_dist

__all__ = [
    "CameraProxyMemoryLoss",
    "CenterLoss",
    "ClusterContrastMemory",
    "CentroidTripletLoss",
    "CrossEntropyLabelSmooth",
    "FeatureNormQualityWeight",
    "RefinedLabels",
    "SupConLoss",
    "TripletLoss",
    "affinity_alpha",
    "anti_forgetting",
    "batch_hard_anchor_losses",
    "center_loss_optimizer",
    "directional_consistency",
    "euclidean_dist",
    "feature_alignment",
    "forgetting_target",
    "hardest_pairs",
    "kl_feature_loss",
    "logit_distillation",
    "mean_kl_divergence",
    "refined_soft_labels",
    "relation_distillation",
    "rescale_center_grads",
    "soft_cross_entropy",
    "soft_triplet_loss",
    "softmax_triplet_losses",
]
