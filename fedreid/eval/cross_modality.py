"""Visible-infrared protocols at tracklet level: infrared->visible and visible->infrared, with
Rank-1/5/10/20 and mAP as the video VI-ReID test scripts print them (research/methods.md §4).

Frames are averaged per tracklet (``fedreid.eval.features.tracklet_features``); each tracklet
carries one ``meta["modality"]``. A direction m1->m2 takes the query split's m1 tracklets
against the gallery split's m2 tracklets. When the query split has no m1 tracklet but the
gallery split has, the two splits swap roles: HITSZ-VCM's query is its infrared test
tracklets and its published visible->infrared test queries the visible ("gallery")
tracklets against the infrared ("query") ones. BUPTCampus's query holds both modalities, so no
swap happens there. The Market-1501 rule applies (same identity and camera = junk), as in the
HITSZ-VCM test script.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedreid.data.records import Sample
from fedreid.eval.junk import market_junk
from fedreid.eval.protocol_io import (
    check_tracklet_meta,
    distances,
    evaluation_items,
    ids,
    meta_values,
    metric_dict,
)

MODALITIES = ("visible", "infrared")
DIRECTIONS = (("ir2v", "infrared", "visible"), ("v2ir", "visible", "infrared"))
RANKS = (1, 5, 10, 20)


def cross_modality(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_modality: Any,
    g_modality: Any,
    *,
    query_modality: str,
    gallery_modality: str,
    max_rank: int = 50,
) -> dict[str, Any] | None:
    """Queries of ``query_modality`` against gallery items of ``gallery_modality``
    (``evaluate``-style result), or None when no such query has a match."""
    rows = np.flatnonzero(np.asarray(q_modality) == query_modality)
    cols = np.flatnonzero(np.asarray(g_modality) == gallery_modality)
    return market_junk(
        np.asarray(distmat)[np.ix_(rows, cols)],
        np.asarray(q_pids)[rows],
        np.asarray(g_pids)[cols],
        np.asarray(q_camids)[rows],
        np.asarray(g_camids)[cols],
        max_rank,
    )


def evaluate_cross_modality(
    qf: Any,
    gf: Any,
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    metric: str = "cosine",
    max_rank: int = 50,
) -> dict[str, float]:
    """``ir2v_rank1/5/10/20``, ``ir2v_mAP``, ``ir2v_mINP``, ``ir2v_nq`` and the same for
    ``v2ir``, for the directions the site's modalities allow.

    ``qf``/``gf`` hold one row per sample (frames of video data are pooled per tracklet; image
    data is evaluated per image). Needs ``meta["modality"]`` ("visible" or "infrared") on every
    sample. Raises ``ValueError`` when neither direction has a query with a match.
    """
    for samples in (query_samples, gallery_samples):
        check_tracklet_meta(samples, "modality")
    qf, query = evaluation_items(qf, query_samples, "qf")
    gf, gallery = evaluation_items(gf, gallery_samples, "gf")
    q_modality = meta_values(query, "modality", "cross-modality")
    g_modality = meta_values(gallery, "modality", "cross-modality")
    for s, modality in zip(list(query) + list(gallery), q_modality + g_modality, strict=True):
        if modality not in MODALITIES:
            raise ValueError(
                f"{s.path}: meta['modality'] is {modality!r}; it must be 'visible' or 'infrared'; "
                "fix the reader or the site's meta.json"
            )
    dist = distances(qf, gf, metric)
    q_pids, q_camids = ids(query)
    g_pids, g_camids = ids(gallery)
    forward = (dist, q_pids, g_pids, q_camids, g_camids, q_modality, g_modality)
    swapped = (dist.T, g_pids, q_pids, g_camids, q_camids, g_modality, q_modality)
    out: dict[str, float] = {}
    for name, source, target in DIRECTIONS:
        arrays = forward if source in q_modality else swapped
        result = cross_modality(
            *arrays, query_modality=source, gallery_modality=target, max_rank=max_rank
        )
        if result is not None:
            out.update(metric_dict(result, name, ranks=RANKS))
    if not out:
        raise ValueError(
            f"no cross-modality query has a match: query modalities {sorted(set(q_modality))}, "
            f"gallery modalities {sorted(set(g_modality))}; infrared->visible needs infrared "
            "tracklets on one side and visible tracklets of the same identities on the other"
        )
    return out


__all__ = ["DIRECTIONS", "MODALITIES", "RANKS", "cross_modality", "evaluate_cross_modality"]
