"""CMC / mAP / mINP when a query's junk depends on more than its camera.

The Market-1501 rule (``fedreid.eval.metrics.evaluate``) removes gallery items of the query's
identity seen by the query's camera. The clothes-change settings also remove the query's own
outfit (or every other outfit), and the per-altitude ground->aerial scores remove aerial views
outside the altitude bin. All of them have the same shape: among the gallery items of the
query's identity, a set that depends on a few query attributes (camera, outfit, bin) is junk.

``evaluate_with_junk`` groups queries by those attributes, and for each group runs
``evaluate`` with camera ids rewritten so that its junk rule (same identity and same "camera")
removes exactly the group's junk set. So every number is ``evaluate``'s: the same ranks, ties
broken by gallery index, non-interpolated AP, queries without a positive skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedreid.eval.metrics import evaluate


def key_groups(*columns: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the stacked ``columns`` (one value per query each) and each query's row.

    Returns ``(keys, groups)``: ``keys`` is K×len(columns), ``groups[i]`` indexes query i's key.
    """
    table = np.stack([np.asarray(column) for column in columns], axis=1)
    keys, groups = np.unique(table, axis=0, return_inverse=True)
    return keys, groups.ravel()


def evaluate_with_junk(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_groups: Any,
    g_junk: Any,
    max_rank: int = 50,
) -> dict[str, Any] | None:
    """CMC, mAP and mINP where gallery item j is junk for query i when it shows the query's
    identity and ``g_junk[q_groups[i], j]`` is true; other items of the identity are positives.

    ``q_groups`` is an int per query, ``g_junk`` a bool array (groups × gallery). Returns
    ``evaluate``'s dict (``cmc``, ``mAP``, ``mINP``, ``all_AP``/``all_INP`` and
    ``valid_queries`` in query order, ``num_valid_queries``), or None when no query has a
    positive (a setting may legitimately have none, e.g. same-clothes queries where every
    gallery view of the person shows other clothes).
    """
    dist = np.asarray(distmat.detach().cpu() if hasattr(distmat, "detach") else distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_groups, g_junk = np.asarray(q_groups), np.asarray(g_junk, dtype=bool)
    if dist.ndim != 2 or dist.shape != (len(q_pids), len(g_pids)):
        raise ValueError(
            f"distmat must be queries × gallery = {len(q_pids)} × {len(g_pids)}, got {dist.shape}"
        )
    if q_groups.shape != q_pids.shape:
        raise ValueError(
            f"q_groups needs one entry per query ({len(q_pids)}), got {q_groups.shape}"
        )
    if g_junk.ndim != 2 or g_junk.shape[1] != len(g_pids):
        raise ValueError(f"g_junk must be groups × gallery (…, {len(g_pids)}), got {g_junk.shape}")
    if len(q_groups) and (q_groups.min() < 0 or q_groups.max() >= len(g_junk)):
        raise ValueError(f"q_groups must index the {len(g_junk)} rows of g_junk")
    parts = []
    for group in np.unique(q_groups):
        rows = np.flatnonzero(q_groups == group)
        junk = g_junk[group]
        if not np.isin(q_pids[rows], g_pids[~junk]).any():
            continue
        result = evaluate(
            dist[rows],
            q_pids[rows],
            g_pids,
            np.zeros(len(rows), dtype=np.int64),
            np.where(junk, 0, 1),
            max_rank,
        )
        parts.append((rows[result["valid_queries"]], result))
    if not parts:
        return None
    valid = np.concatenate([rows for rows, _ in parts])
    order = np.argsort(valid, kind="stable")
    counts = np.array([result["num_valid_queries"] for _, result in parts], dtype=np.float64)
    cmc = sum(result["cmc"] * n for (_, result), n in zip(parts, counts, strict=True))
    all_ap = np.concatenate([result["all_AP"] for _, result in parts])[order]
    all_inp = np.concatenate([result["all_INP"] for _, result in parts])[order]
    return {
        "cmc": cmc / counts.sum(),
        "mAP": float(all_ap.mean()),
        "mINP": float(all_inp.mean()),
        "all_AP": all_ap,
        "all_INP": all_inp,
        "valid_queries": valid[order],
        "num_valid_queries": len(valid),
    }


def market_junk(
    distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, max_rank: int = 50
) -> dict[str, Any] | None:
    """``evaluate`` (Market-1501 rule), but None instead of an error when no query is valid."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    if len(q_pids) == 0 or len(g_pids) == 0:
        return None
    # a query is valid when its identity has a gallery camera other than the query's own
    width = int(max(q_camids.max(initial=0), g_camids.max(initial=0))) + 1
    pairs = np.unique(g_pids.astype(np.int64) * width + g_camids)
    pids, cams_per_pid = np.unique(pairs // width, return_counts=True)
    slot = np.searchsorted(pids, q_pids)
    found = slot < len(pids)
    found[found] = pids[slot[found]] == q_pids[found]
    own = np.isin(q_pids.astype(np.int64) * width + q_camids, pairs)
    others = np.where(found, cams_per_pid[np.minimum(slot, len(pids) - 1)], 0) - own
    if not (others > 0).any():
        return None
    return evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)


__all__ = ["evaluate_with_junk", "key_groups", "market_junk"]
