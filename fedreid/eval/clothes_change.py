"""Clothes-change protocols (research/methods.md §5; the CAL / Simple-CCReID rules).

For a query of identity p, camera c and outfit k, among the gallery items of identity p:

- ``general`` (LTCC's standard setting): positives are the other cameras; camera c is junk;
- ``cc`` (clothes-changing): positives are other cameras *and* other outfits; camera c and
  outfit k are junk;
- ``sc`` (same clothes): positives are other cameras in outfit k; camera c and every other
  outfit are junk.

Outfits are ``meta["clothes_id"]``, compared only within an identity (a clothes id is per
person in LTCC and PRCC). PRCC's two query sets follow: its B queries (same clothes as the A
gallery) have positives only under ``sc``, its C queries (changed clothes) only under ``cc``, so
``sc`` is PRCC's "same clothes" result and ``cc`` its "cross clothes" result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedreid.data.records import Sample
from fedreid.eval.junk import evaluate_with_junk, key_groups, market_junk
from fedreid.eval.protocol_io import (
    check_tracklet_meta,
    distances,
    evaluation_items,
    ids,
    meta_values,
    metric_dict,
)

MODES = ("general", "cc", "sc")


def clothes_change(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_clothes: Any,
    g_clothes: Any,
    *,
    mode: str = "general",
    max_rank: int = 50,
) -> dict[str, Any] | None:
    """CMC / mAP / mINP under one setting of ``MODES`` (``evaluate``-style result), or None
    when no query has a positive in that setting."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "general":
        return market_junk(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    g_camids, g_clothes = np.asarray(g_camids), np.asarray(g_clothes)
    keys, groups = key_groups(q_camids, q_clothes)
    junk = g_camids[None, :] == keys[:, 0:1]
    same_clothes = g_clothes[None, :] == keys[:, 1:2]
    junk = junk | (same_clothes if mode == "cc" else ~same_clothes)
    return evaluate_with_junk(distmat, q_pids, g_pids, groups, junk, max_rank)


def evaluate_clothes_change(
    qf: Any,
    gf: Any,
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    metric: str = "cosine",
    max_rank: int = 50,
) -> dict[str, float]:
    """``general_*``, ``cc_*`` and ``sc_*`` (``rank1/5/10``, ``mAP``, ``mINP``, ``nq``) for the
    settings that have a query with a positive. Needs ``meta["clothes_id"]`` on every sample;
    frames of video data are pooled per tracklet. Raises ``ValueError`` when even the general
    setting has no valid query."""
    for samples in (query_samples, gallery_samples):
        check_tracklet_meta(samples, "clothes_id")
    qf, query = evaluation_items(qf, query_samples, "qf")
    gf, gallery = evaluation_items(gf, gallery_samples, "gf")
    q_clothes = np.array(meta_values(query, "clothes_id", "clothes-change"), dtype=np.int64)
    g_clothes = np.array(meta_values(gallery, "clothes_id", "clothes-change"), dtype=np.int64)
    dist = distances(qf, gf, metric)
    q_pids, q_camids = ids(query)
    g_pids, g_camids = ids(gallery)
    out: dict[str, float] = {}
    for mode in MODES:
        result = clothes_change(
            dist,
            q_pids,
            g_pids,
            q_camids,
            g_camids,
            q_clothes,
            g_clothes,
            mode=mode,
            max_rank=max_rank,
        )
        if result is None and mode == "general":
            raise ValueError(
                "no query identity appears in the gallery under another camera; the "
                "clothes-change protocol needs query identities in the gallery"
            )
        if result is not None:
            out.update(metric_dict(result, mode))
    return out


__all__ = ["MODES", "clothes_change", "evaluate_clothes_change"]
