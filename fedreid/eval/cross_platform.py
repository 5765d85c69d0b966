"""Aerial-ground protocols: one platform's queries against another platform's gallery, overall
and per camera-geometry bin.

The rules (research/methods.md §1): report aerial->ground and ground->aerial separately, never
merged, and add Rank-1/mAP per geometry bin. AG-ReID's protocols are A->G and G->A; AG-ReID.v2's
are A->C, C->A (here ``a2g``/``g2a``: CCTV is the "ground" platform) and A->W, W->A (wearable).
A direction takes the query split's items of one platform and the gallery split's items of the
other; the Market-1501 rule applies inside (same identity and camera = junk), and a query whose
identity the chosen gallery lacks is skipped, as the public per-protocol loaders drop it.

Bins follow the aerial side's geometry. Aerial queries (A->G, A->W) are grouped by their own
bin. Aerial galleries (G->A, W->A) are scored once per bin with every aerial view of the
query's identity outside the bin counted as junk: "find this person's views from altitude b
among everyone's aerial views". With AG-ReID the identity includes the session's altitude level,
so this equals grouping the ground queries by that level.
Altitude bins are the reader's ``altitude_level`` where given (AG-ReID A0/A1/A2), otherwise the
altitude in metres cut at ``altitude_edges``; distance bins cut ``distance`` at
``distance_edges``. Items without the value are in no bin of that kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedreid.data.records import Sample
from fedreid.eval.junk import evaluate_with_junk, key_groups, market_junk
from fedreid.eval.protocol_io import distances, evaluation_items, ids, meta_values, metric_dict

PLATFORMS = ("aerial", "ground", "wearable")
DIRECTIONS = (
    ("a2g", "aerial", "ground"),
    ("g2a", "ground", "aerial"),
    ("a2w", "aerial", "wearable"),
    ("w2a", "wearable", "aerial"),
)
# Three altitude bins over AG-ReID's 15-45 m flights (below 25 m, 25-35 m, above 35 m) and
# near / mid / far distance bins. Assumptions: AG-ReID publishes levels, not the metres behind
# them, and no aerial set we read publishes distance.
ALTITUDE_EDGES = (25.0, 35.0)
DISTANCE_EDGES = (15.0, 30.0)


def geometry_bins(
    geometries: Sequence[Mapping[str, Any]],
    *,
    altitude_edges: Sequence[float] = ALTITUDE_EDGES,
    distance_edges: Sequence[float] = DISTANCE_EDGES,
) -> dict[str, np.ndarray]:
    """Per item: ``{"alt": bin, "dist": bin}`` as int arrays, -1 where the value is unknown.

    A value v falls in bin ``i`` = the number of edges <= v (``np.digitize``): with edges
    (25, 35), 24.9 m is bin 0, 25 m bin 1, 40 m bin 2.
    """
    for name, edges in (("altitude_edges", altitude_edges), ("distance_edges", distance_edges)):
        if list(edges) != sorted(edges):
            raise ValueError(f"{name} must be increasing, got {tuple(edges)}")
    alt = np.full(len(geometries), -1, dtype=np.int64)
    dist = np.full(len(geometries), -1, dtype=np.int64)
    for i, geometry in enumerate(geometries):
        if geometry.get("altitude_level") is not None:
            alt[i] = int(geometry["altitude_level"])
        elif geometry.get("altitude") is not None:
            alt[i] = int(np.digitize(float(geometry["altitude"]), altitude_edges))
        if geometry.get("distance") is not None:
            dist[i] = int(np.digitize(float(geometry["distance"]), distance_edges))
    return {"alt": alt, "dist": dist}


def cross_platform(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_platform: Any,
    g_platform: Any,
    *,
    query_platform: str,
    gallery_platform: str,
    q_bins: Mapping[str, Any] | None = None,
    g_bins: Mapping[str, Any] | None = None,
    max_rank: int = 50,
) -> dict[str, dict[str, Any]]:
    """Queries on ``query_platform`` against gallery items on ``gallery_platform``.

    ``q_bins`` / ``g_bins`` map a bin kind ("alt", "dist") to one int per query / gallery item
    (-1: none). Returns ``{"": overall, "<kind><bin>": ...}`` with ``evaluate``-style results;
    parts without a valid query are left out (so an empty dict when none has a match).
    """
    dist = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    q_rows = np.flatnonzero(np.asarray(q_platform) == query_platform)
    g_cols = np.flatnonzero(np.asarray(g_platform) == gallery_platform)
    sub = dist[np.ix_(q_rows, g_cols)]
    qp, gp, qc, gc = q_pids[q_rows], g_pids[g_cols], q_camids[q_rows], g_camids[g_cols]
    out: dict[str, dict[str, Any]] = {}
    overall = market_junk(sub, qp, gp, qc, gc, max_rank)
    if overall is None:
        return out
    out[""] = overall
    for kind, values in (q_bins or {}).items():
        bins = np.asarray(values)[q_rows]
        for b in np.unique(bins[bins >= 0]):
            rows = bins == b
            result = market_junk(sub[rows], qp[rows], gp, qc[rows], gc, max_rank)
            if result is not None:
                out[f"{kind}{b}"] = result
    cams, groups = key_groups(qc)
    same_camera = gc[None, :] == cams[:, 0:1]
    for kind, values in (g_bins or {}).items():
        bins = np.asarray(values)[g_cols]
        for b in np.unique(bins[bins >= 0]):
            junk = same_camera | (bins != b)[None, :]
            result = evaluate_with_junk(sub, qp, gp, groups, junk, max_rank)
            if result is not None:
                out[f"{kind}{b}"] = result
    return out


def evaluate_aerial_ground(
    qf: Any,
    gf: Any,
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    altitude_edges: Sequence[float] = ALTITUDE_EDGES,
    distance_edges: Sequence[float] = DISTANCE_EDGES,
    metric: str = "cosine",
    max_rank: int = 50,
) -> dict[str, float]:
    """Every direction of ``DIRECTIONS`` the site's platforms allow, as flat floats:
    ``a2g_rank1/5/10``, ``a2g_mAP``, ``a2g_mINP``, ``a2g_nq`` (queries with a match), and per
    bin ``a2g_rank1_alt0``, ``a2g_mAP_alt0``, ``a2g_nq_alt0`` (``dist0``... likewise).

    Needs ``meta["geometry"]["platform"]`` on every sample (the agreid readers and synthetic
    aerial sites record it). Raises ``ValueError`` when no direction has a valid query.
    """
    qf, query = evaluation_items(qf, query_samples, "qf")
    gf, gallery = evaluation_items(gf, gallery_samples, "gf")
    q_geometry = meta_values(query, "geometry", "aerial-ground")
    g_geometry = meta_values(gallery, "geometry", "aerial-ground")
    q_platform = meta_values(query, "geometry", "aerial-ground", "platform")
    g_platform = meta_values(gallery, "geometry", "aerial-ground", "platform")
    for s, platform in zip(list(query) + list(gallery), q_platform + g_platform, strict=True):
        if platform not in PLATFORMS:
            raise ValueError(
                f"{s.path}: meta['geometry']['platform'] is {platform!r}; it must be one of "
                f"{', '.join(PLATFORMS)}; fix the reader or the synthetic site's meta.json"
            )
    edges = {"altitude_edges": altitude_edges, "distance_edges": distance_edges}
    q_bins = geometry_bins(q_geometry, **edges)
    g_bins = geometry_bins(g_geometry, **edges)
    dist = distances(qf, gf, metric)
    q_pids, q_camids = ids(query)
    g_pids, g_camids = ids(gallery)
    out: dict[str, float] = {}
    for name, source, target in DIRECTIONS:
        parts = cross_platform(
            dist,
            q_pids,
            g_pids,
            q_camids,
            g_camids,
            q_platform,
            g_platform,
            query_platform=source,
            gallery_platform=target,
            q_bins=q_bins if source == "aerial" else None,
            g_bins=g_bins if target == "aerial" else None,
            max_rank=max_rank,
        )
        for part, result in parts.items():
            if part:
                out.update(metric_dict(result, name, ranks=(1,), suffix=part, minp=False))
            else:
                out.update(metric_dict(result, name))
    if not out:
        raise ValueError(
            "no aerial-ground direction has a query with a match: query platforms "
            f"{sorted(set(q_platform))}, gallery platforms {sorted(set(g_platform))}; each of "
            f"{', '.join(d for d, _, _ in DIRECTIONS)} needs its query platform in the query "
            "split and the identity on the other platform in the gallery split"
        )
    return out


__all__ = [
    "ALTITUDE_EDGES",
    "DIRECTIONS",
    "DISTANCE_EDGES",
    "PLATFORMS",
    "cross_platform",
    "evaluate_aerial_ground",
    "geometry_bins",
]
