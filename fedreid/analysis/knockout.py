"""Knock-out evaluation: retrieval with every attribute expert on, then with each one off.

For each condition (all experts on; expert ``a`` off for every image) it records, per query,
the average precision and whether the first gallery match is right (Rank-1 hit), under the
Market-1501 rule of :func:`fedreid.eval.evaluate` (same identity and camera left out). The
valid queries do not depend on the features, so every condition scores the same queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedreid.eval import evaluate

Embed = Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class QueryScores:
    """AP and Rank-1 hit (0/1) of each valid query; ``queries`` are their row indices."""

    queries: np.ndarray
    ap: np.ndarray
    hit: np.ndarray


def query_scores(qf: np.ndarray, gf: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                 q_camids: np.ndarray, g_camids: np.ndarray) -> QueryScores:
    """Per-query AP and Rank-1 hit of cosine retrieval (rows of ``qf``/``gf`` are unit vectors)."""
    dist = 1.0 - np.asarray(qf, dtype=np.float64) @ np.asarray(gf, dtype=np.float64).T
    result = evaluate(dist, q_pids, g_pids, q_camids, g_camids, max_rank=1)
    valid = np.asarray(result["valid_queries"])
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    rows = dist[valid].copy()
    junk = (q_pids[valid, None] == g_pids[None, :]) & (np.asarray(q_camids)[valid, None] == np.asarray(g_camids)[None, :])
    rows[junk] = np.inf
    first = rows.argmin(axis=1)  # ties go to the lower gallery index, as evaluate's ordering
    hit = (g_pids[first] == q_pids[valid]).astype(np.float64)
    return QueryScores(valid, np.asarray(result["all_AP"], dtype=np.float64), hit)


@dataclass(frozen=True)
class Knockout:
    """Per-query figures of every condition: row 0 all experts on, row ``1 + a`` expert ``a``
    off. ``attributes`` (Q×E, 0/1) are the valid queries' attribute values; ``group`` names
    the site of each query (for a federation's pooled analysis)."""

    names: tuple[str, ...]
    attributes: np.ndarray
    ap: np.ndarray
    hit: np.ndarray
    group: np.ndarray

    @property
    def num_queries(self) -> int:
        return self.ap.shape[1]

    @staticmethod
    def concat(parts: Sequence[Knockout]) -> Knockout:
        """Queries of several sites pooled (their experts must be the same)."""
        if not parts:
            raise ValueError("no knock-out results to pool")
        names = parts[0].names
        if any(p.names != names for p in parts):
            raise ValueError("knock-out results with different experts cannot be pooled")
        return Knockout(names, np.concatenate([p.attributes for p in parts]),
                        np.concatenate([p.ap for p in parts], axis=1),
                        np.concatenate([p.hit for p in parts], axis=1),
                        np.concatenate([p.group for p in parts]))


def run_knockout(
    embed: Embed,
    names: Sequence[str],
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    q_attributes: np.ndarray,
    *,
    group: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Knockout:
    """Score all experts on, then each expert off. ``embed(off)`` returns (query, gallery)
    features with the experts whose indices are in ``off`` knocked out; ``q_attributes`` is
    N_query×E (NaN = unknown, counted as 0)."""
    q_attributes = np.asarray(q_attributes, dtype=np.float64)
    if q_attributes.shape != (len(q_pids), len(names)):
        raise ValueError(
            f"q_attributes must be {len(q_pids)}×{len(names)} (queries × experts), got {q_attributes.shape}"
        )
    conditions: list[tuple[int, ...]] = [(), *((a,) for a in range(len(names)))]
    aps, hits, valid = [], [], None
    for i, off in enumerate(conditions):
        qf, gf = embed(off)
        scores = query_scores(qf, gf, q_pids, g_pids, q_camids, g_camids)
        valid = scores.queries
        aps.append(scores.ap)
        hits.append(scores.hit)
        if progress is not None:
            progress(i + 1, len(conditions))
    attrs = np.nan_to_num(q_attributes[valid], nan=0.0)
    return Knockout(tuple(names), attrs, np.stack(aps), np.stack(hits), np.full(len(valid), group))
