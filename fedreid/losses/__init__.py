"""Training losses: BoT's ID/triplet/center losses, centroid triplet (CTL), SupCon,
CAP's camera-aware proxy memory loss, the cluster-contrast memory, and FedKLPR's KL
regulariser.

All are hand-rolled (no pytorch-metric-learning) and device-agnostic.
"""

from fedreid.losses.camera_proxy import CameraProxyMemoryLoss
from fedreid.losses.center import CenterLoss, center_loss_optimizer, rescale_center_grads
from fedreid.losses.centroid_triplet import CentroidTripletLoss
from fedreid.losses.cluster_memory import ClusterContrastMemory
from fedreid.losses.cross_entropy import CrossEntropyLabelSmooth
from fedreid.losses.kl import kl_feature_loss, mean_kl_divergence
from fedreid.losses.supcon import SupConLoss
from fedreid.losses.triplet import TripletLoss, batch_hard_anchor_losses, euclidean_dist

__all__ = [
    "CameraProxyMemoryLoss",
    "CenterLoss",
    "ClusterContrastMemory",
    "CentroidTripletLoss",
    "CrossEntropyLabelSmooth",
    "SupConLoss",
    "TripletLoss",
    "batch_hard_anchor_losses",
    "center_loss_optimizer",
    "euclidean_dist",
    "kl_feature_loss",
    "mean_kl_divergence",
    "rescale_center_grads",
]
