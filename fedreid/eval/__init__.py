"""Evaluation: features (flip TTA), CMC/mAP/mINP, k-reciprocal and KWF re-ranking."""

from fedreid.eval.features import extract_features, pairwise_distance, tracklet_features
from fedreid.eval.metrics import evaluate
from fedreid.eval.rerank import jaccard_distance, jaccard_graph, k_reciprocal, kwf

__all__ = [
    "evaluate",
    "extract_features",
    "jaccard_distance",
    "jaccard_graph",
    "k_reciprocal",
    "kwf",
    "pairwise_distance",
    "tracklet_features",
]
