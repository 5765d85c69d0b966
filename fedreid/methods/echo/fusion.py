"""Decision-score fusion of several models' retrieval scores (ECHO-BID v2's model fusion).

ECHO-BID fuses the scores of four fine-tuned foundation models and beats each one
(research/methods.md §5). Each model's query×gallery cosine similarities are z-normalised per
query (row mean 0, standard deviation 1), so a model with a wider score range cannot
dominate, then averaged (optionally weighted). ``fused_clothes_change`` evaluates the fused
scores with the clothes-change protocol's general / clothes-changing / same-clothes rules
(:mod:`fedreid.eval.clothes_change`); ``fused_single_query`` with the Market-1501 rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.data.records import Sample
from fedreid.eval.clothes_change import MODES, clothes_change
from fedreid.eval.metrics import evaluate
from fedreid.eval.protocol_io import evaluation_items, ids, meta_values, metric_dict


def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Each row (a query's scores) shifted to mean 0 and scaled to standard deviation 1
    (a constant row becomes 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def fuse_scores(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The weighted mean (default: equal weights) of the per-query z-scored score matrices."""
    if not scores:
        raise ValueError("score fusion needs at least one model's scores")
    shapes = {np.shape(s) for s in scores}
    if len(shapes) != 1:
        raise ValueError(f"every model must score the same queries and gallery; got shapes {sorted(shapes)}")
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(scores),) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(scores)} values with a positive sum, got {weights}")
    return sum(wi * zscore_rows(s) for wi, s in zip(w, scores, strict=True)) / w.sum()


def _fused_distance(features: Sequence[tuple[Any, Any]], query_samples: Sequence[Sample],
                    gallery_samples: Sequence[Sample]) -> tuple[np.ndarray, list[Sample], list[Sample]]:
    scores = []
    query = gallery = None
    for qf, gf in features:
        q, query = evaluation_items(qf, query_samples, "qf")
        g, gallery = evaluation_items(gf, gallery_samples, "gf")
        scores.append((F.normalize(torch.as_tensor(q).float(), dim=1)
                       @ F.normalize(torch.as_tensor(g).float(), dim=1).T).numpy())
    return -fuse_scores(scores), query, gallery


def fused_clothes_change(features: Sequence[tuple[Any, Any]], query_samples: Sequence[Sample],
                         gallery_samples: Sequence[Sample]) -> dict[str, float]:
    """``general_*``, ``cc_*``, ``sc_*`` of the fused scores of several models' (query,
    gallery) features; settings without a query with a positive are left out."""
    dist, query, gallery = _fused_distance(features, query_samples, gallery_samples)
    q_clothes = np.array(meta_values(query, "clothes_id", "clothes-change"), dtype=np.int64)
    g_clothes = np.array(meta_values(gallery, "clothes_id", "clothes-change"), dtype=np.int64)
    q_pids, q_camids = ids(query)
    g_pids, g_camids = ids(gallery)
    out: dict[str, float] = {}
    for mode in MODES:
        result = clothes_change(dist, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode=mode)
        if result is not None:
            out.update(metric_dict(result, mode))
    return out


def fused_single_query(features: Sequence[tuple[Any, Any]], query_samples: Sequence[Sample],
                       gallery_samples: Sequence[Sample]) -> dict[str, float]:
    """Market-1501 ``mAP``, ``mINP``, ``rank1/5/10`` of the fused scores."""
    dist, query, gallery = _fused_distance(features, query_samples, gallery_samples)
    q_pids, q_camids = ids(query)
    g_pids, g_camids = ids(gallery)
    return metric_dict(evaluate(dist, q_pids, g_pids, q_camids, g_camids), "fused")
