"""CMC, mAP and mINP under the Market-1501 protocol, vectorised.

The widely used reference (torchreid / fast-reid ``eval_market1501``) argsorts every query row
and walks it. Here only the positions of the query's own identity matter: a gallery item of
the query's identity from another camera is a positive ("good"), one from the same camera is
removed ("junk"), everything else is a negative. So each row is sorted by value only (no
index array), the position of every same-identity item is found by binary search, and AP,
CMC and mINP follow from those few positions. Ties are broken by gallery index, which is
what the reference gives with a stable argsort.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_ROW_CHUNK = 64  # rows sorted together: small enough to stay in cache, large enough to amortise
_CUHK03_REPEATS = 10


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    dist = _as_array(distmat)
    if dist.ndim != 2 or dist.shape[0] == 0 or dist.shape[1] == 0:
        raise ValueError(
            f"distmat must be a non-empty 2-D array (queries × gallery), got shape {dist.shape}"
        )
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)
    num_q, num_g = dist.shape
    arrays = {}
    for name, value, n, side in (
        ("q_pids", q_pids, num_q, "rows"),
        ("g_pids", g_pids, num_g, "columns"),
        ("q_camids", q_camids, num_q, "rows"),
        ("g_camids", g_camids, num_g, "columns"),
    ):
        arr = _as_array(value)
        if arr.shape != (n,):
            raise ValueError(
                f"{name} must be 1-D with one entry per distmat {side} ({n}), got shape {arr.shape}"
            )
        arrays[name] = arr
    # a NaN makes the sum NaN; only a non-finite sum needs the element-wise look
    with np.errstate(invalid="ignore", over="ignore"):
        total = dist.sum()
    if not np.isfinite(total) and np.isnan(dist).any():
        bad = np.argwhere(np.isnan(dist))[0]
        raise ValueError(
            f"distmat contains NaN (first at query {bad[0]}, gallery {bad[1]}); "
            "check the features for NaN before computing distances"
        )
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return dist, arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"]


def _same_identity_pairs(q_pids, g_pids, q_camids, g_camids):
    """Every (query, gallery item of the query's identity), grouped by query.

    Returns pair_q, pair_g, good (different camera) and the number of pairs per query.
    """
    g_order = np.argsort(g_pids, kind="stable")
    uniq, starts, counts = np.unique(g_pids[g_order], return_index=True, return_counts=True)
    slot = np.searchsorted(uniq, q_pids)
    slot_clipped = np.minimum(slot, len(uniq) - 1)
    found = uniq[slot_clipped] == q_pids
    per_query = np.where(found, counts[slot_clipped], 0)
    total = int(per_query.sum())
    pair_q = np.repeat(np.arange(len(q_pids)), per_query)
    first = np.repeat(np.where(found, starts[slot_clipped], 0), per_query)
    offset = np.arange(total) - np.repeat(np.cumsum(per_query) - per_query, per_query)
    pair_g = g_order[first + offset]
    good = g_camids[pair_g] != q_camids[pair_q]
    return pair_q, pair_g, good, per_query


def _full_positions(dist, rows, seg_start, seg_stop, pair_g, pair_v, num_threads):
    """0-based position of each pair's gallery item in its row, under a stable ascending sort.

    ``rows[r]`` owns pairs ``seg_start[r]:seg_stop[r]``. Each row is value-sorted and the pair
    values are binary-searched; only values that occur more than once in their row need the
    index tie-break, done by direct comparison.
    """
    out = np.empty(len(pair_g), dtype=np.int64)
    num_g = dist.shape[1]
    col = np.arange(num_g)

    def work(lo: int, hi: int) -> None:
        for c0 in range(lo, hi, _ROW_CHUNK):
            c1 = min(hi, c0 + _ROW_CHUNK)
            ordered = dist[rows[c0:c1]]  # fancy indexing copies, so sort in place
            ordered.sort(axis=1)
            for r in range(c0, c1):
                s, e = seg_start[r], seg_stop[r]
                v = pair_v[s:e]
                srow = ordered[r - c0]
                left = np.searchsorted(srow, v, side="left")
                tied = np.searchsorted(srow, v, side="right") - left > 1
                if tied.any():
                    row = dist[rows[r]]
                    vt, gt = v[tied], pair_g[s:e][tied]
                    before = (row[None, :] == vt[:, None]) & (col[None, :] < gt[:, None])
                    left[tied] += np.count_nonzero(before, axis=1)
                out[s:e] = left

    n = len(rows)
    workers = max(1, min(num_threads, n // _ROW_CHUNK))
    if workers == 1:
        work(0, n)
    else:
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            for f in [
                pool.submit(work, a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]:
                f.result()
    return out


def _cuhk03_cmc(dist, g_pids, q_index, q_pids, good_flat, num_good, max_rank, seed):
    """Single-gallery-shot CMC: 10 draws of one gallery image per identity, ranks averaged.

    Each draw shares one image per identity across all queries; the query's own identity is
    drawn from its positives (junk removed), as the reference does per query.
    """
    rng = np.random.default_rng(seed)
    g_order = np.argsort(g_pids, kind="stable")
    uniq, starts, counts = np.unique(g_pids[g_order], return_index=True, return_counts=True)
    own_id = np.searchsorted(uniq, q_pids)
    good_start = np.cumsum(num_good) - num_good
    rows = np.arange(len(q_index))
    hist = np.zeros(max_rank + 1, dtype=np.int64)
    for _ in range(_CUHK03_REPEATS):
        reps = g_order[starts + rng.integers(0, counts)]
        own = good_flat[good_start + rng.integers(0, num_good)]
        own_v = dist[q_index, own]
        rep_v = dist[np.ix_(q_index, reps)]
        before = (rep_v < own_v[:, None]) | (
            (rep_v == own_v[:, None]) & (reps[None, :] < own[:, None])
        )
        before[rows, own_id] = False
        hist += np.bincount(np.minimum(before.sum(axis=1), max_rank), minlength=max_rank + 1)
    return np.cumsum(hist)[:max_rank] / (_CUHK03_REPEATS * len(q_index))


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    cuhk03_single_shot: bool = False,
    seed: int = 0,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """CMC, mAP and mINP of a query × gallery distance matrix (smaller = more similar).

    Market-1501 protocol: gallery items with the query's identity *and* camera are removed,
    queries with no remaining match are skipped, AP is non-interpolated, mINP is fast-reid's
    (positives / position of the hardest positive). ``max_rank`` is lowered to the gallery
    size when larger. With ``cuhk03_single_shot`` the CMC is the classic CUHK03 one (10 seeded
    draws of one gallery image per identity); AP and mINP stay on the full gallery.
    ``num_threads`` (default: the CPUs this process may use) splits the row sorting.

    Returns ``cmc`` (length max_rank), ``mAP``, ``mINP``, ``all_AP`` and ``all_INP`` (one per
    valid query, in query order), ``valid_queries`` (their indices) and ``num_valid_queries``.
    """
    dist, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    num_g = dist.shape[1]
    max_rank = min(int(max_rank), num_g)

    pair_q, pair_g, good, per_query = _same_identity_pairs(q_pids, g_pids, q_camids, g_camids)
    good_per_query = np.bincount(pair_q[good], minlength=len(q_pids))
    valid_q = np.flatnonzero(good_per_query > 0)
    if len(valid_q) == 0:
        raise ValueError(
            "no valid query: no query identity appears in the gallery under another camera "
            "(check q_pids/g_pids and q_camids/g_camids)"
        )
    keep = good_per_query[pair_q] > 0
    pair_q, pair_g, good = pair_q[keep], pair_g[keep], good[keep]
    pair_v = dist[pair_q, pair_g]

    # order pairs by (query, distance, gallery index): the order they take in each row
    order = np.lexsort((pair_g, pair_v, pair_q))
    pair_q, pair_g, good, pair_v = pair_q[order], pair_g[order], good[order], pair_v[order]
    seg_stop = np.cumsum(per_query[valid_q])
    seg_start = seg_stop - per_query[valid_q]

    threads = num_threads if num_threads is not None else _usable_cpus()
    full_pos = _full_positions(dist, valid_q, seg_start, seg_stop, pair_g, pair_v, threads)

    # junk items ranked before each pair, and the 1-based rank of each positive among positives
    junk = (~good).astype(np.int64)
    seg_of_pair = np.repeat(np.arange(len(valid_q)), per_query[valid_q])
    junk_cum = np.cumsum(junk)
    junk_before = junk_cum - junk - (junk_cum - junk)[seg_start][seg_of_pair]
    good_cum = np.cumsum(good)
    good_rank = good_cum - (good_cum - good)[seg_start][seg_of_pair]

    # positives in row order: their positions among kept items increase within each query
    pos = (full_pos - junk_before)[good]
    hit_rank = good_rank[good]
    num_good = good_per_query[valid_q]
    hit_stop = np.cumsum(num_good)
    hit_seg = np.repeat(np.arange(len(valid_q)), num_good)
    all_ap = np.bincount(hit_seg, weights=hit_rank / (pos + 1.0)) / num_good
    all_inp = num_good / (pos[hit_stop - 1] + 1.0)

    if cuhk03_single_shot:
        cmc = _cuhk03_cmc(
            dist, g_pids, valid_q, q_pids[valid_q], pair_g[good], num_good, max_rank, seed
        )
    else:
        first = pos[hit_stop - num_good]
        hist = np.bincount(np.minimum(first, max_rank), minlength=max_rank + 1)
        cmc = np.cumsum(hist)[:max_rank] / len(valid_q)

    return {
        "cmc": cmc,
        "mAP": float(all_ap.mean()),
        "mINP": float(all_inp.mean()),
        "all_AP": all_ap,
        "all_INP": all_inp,
        "valid_queries": valid_q,
        "num_valid_queries": len(valid_q),
    }
