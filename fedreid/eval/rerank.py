"""Re-ranking: k-reciprocal encoding (Zhong et al., CVPR 2017) and KWF, plus the Jaccard
distance that unsupervised clustering runs on.

The CVPR 2017 reference keeps several dense (Q+G)² matrices (distances, a full argsort, V and
its query-expanded copy). Here only the k nearest neighbours of each item are kept (stable
top-k on row chunks, never a full argsort), the k-reciprocal sets, their expansion and the
encoding V are sparse matrices, and the Jaccard overlap Σ_k min(V_ik, V_jk) is summed over
V's inverted index in row chunks. Results equal the reference given the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

_TIE_MARGIN = 8  # extra top-k candidates that settle ties at the k-th neighbour
_ROW_BLOCK = 512  # rows of a distance matrix held at once while finding neighbours
_TRIPLES = 1 << 20  # (row, feature, item) terms summed at once in the Jaccard overlap
_CELLS = 1 << 20  # dense overlap cells held at once
_PAIR_BLOCK = 8192  # feature pairs gathered at once
KWF_WEIGHTINGS = ("uniform", "sim", "inv_dist_pow", "exp_decay")


def _numpy(x: Any, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        total = arr.sum()  # NaN or inf make the sum non-finite; only then look closer
    if not np.isfinite(total) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; fix the features or distances first")
    return arr


def _features(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D (items × dim) array, got {tuple(t.shape)}"
        )
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's outputs")
    return t


def _check_k(k1: int, k2: int) -> None:
    if int(k1) < 1 or int(k2) < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")


def _smallest_k(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the k smallest entries of each row, ordered by (value, column).

    The same as a stable argsort's first k columns, at top-k cost: ties at the k-th value are
    settled from a few extra candidates, or by a full stable sort of the rare rows that need it.
    """
    n = rows.shape[1]
    k = min(k, n)
    m = min(n, k + _TIE_MARGIN)
    vals, idx = torch.topk(rows, m, dim=1, largest=False, sorted=False)
    idx, perm = torch.sort(idx, dim=1)
    vals, perm = torch.sort(vals.gather(1, perm), dim=1, stable=True)
    idx = idx.gather(1, perm)[:, :k]
    if m < n:
        unsure = torch.nonzero(vals[:, k - 1] == vals[:, m - 1]).flatten()
        if len(unsure):
            idx[unsure] = torch.sort(rows[unsure], dim=1, stable=True).indices[:, :k]
    return idx


def _reciprocal(nn: np.ndarray, k: int) -> sp.csr_matrix:
    """R[i, j] = 1 iff j is among i's first k neighbours and i among j's."""
    n = nn.shape[0]
    k = min(k, nn.shape[1])
    rows = np.repeat(np.arange(n), k)
    a = sp.csr_matrix((np.ones(n * k, dtype=np.int32), (rows, nn[:, :k].ravel())), shape=(n, n))
    return a.multiply(a.T).tocsr()


def _expanded_sets(nn: np.ndarray, k1: int) -> sp.csr_matrix:
    """k-reciprocal sets R(i), each grown by R_half(c) of every candidate c ∈ R(i) with
    |R_half(c) ∩ R(i)| > 2/3 |R_half(c)| (R_half uses round(k1/2) neighbours)."""
    r = _reciprocal(nn, k1 + 1)
    rh = _reciprocal(nn, int(np.around(k1 / 2.0)) + 1)
    rh_size = np.diff(rh.indptr)
    inter = (r @ rh.T).multiply(r).tocsr()  # |R(i) ∩ R_half(c)| for c ∈ R(i)
    inter.data = (inter.data > 2.0 / 3 * rh_size[inter.indices]).astype(np.int32)
    inter.eliminate_zeros()
    grown = r + inter @ rh
    grown.data[:] = 1
    grown.sort_indices()
    return grown


def _encode(
    nn: np.ndarray, k1: int, k2: int, pair_dist: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> sp.csr_matrix:
    """V: row i holds softmax(-d(i, j)) over i's expanded k-reciprocal set, then (k2 > 1) the
    mean of the V rows of i's k2 nearest neighbours (local query expansion)."""
    n = nn.shape[0]
    sets = _expanded_sets(nn, k1)
    counts = np.diff(sets.indptr)
    rows = np.repeat(np.arange(n), counts)
    d = pair_dist(rows, sets.indices).astype(np.float32)
    starts = sets.indptr[:-1][counts > 0]
    shift = np.repeat(np.minimum.reduceat(d, starts), counts[counts > 0])
    w = np.exp(-(d - shift))
    w /= np.repeat(np.add.reduceat(w, starts), counts[counts > 0])
    v = sp.csr_matrix((w, sets.indices, sets.indptr), shape=(n, n))
    if k2 != 1:
        k2 = min(k2, nn.shape[1])
        avg = sp.csr_matrix(
            (np.ones(n * k2, dtype=np.float32), (np.repeat(np.arange(n), k2), nn[:, :k2].ravel())),
            shape=(n, n),
        )
        v = (avg @ v).tocsr()
        v.data /= np.float32(k2)
    return v


def _jaccard_blocks(
    v: sp.csr_matrix, row_lo: int, row_hi: int, col_lo: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Jaccard distance 1 - m/(2-m), m = Σ_k min(V_ik, V_jk), for rows [row_lo, row_hi) against
    items [col_lo, n), yielded as dense float64 blocks of consecutive rows.

    Only items sharing a non-zero column of V contribute, so the sum walks V's inverted index
    (CSC) and never touches the (mostly 1.0) pairs with no overlap.
    """
    inv = v[col_lo:].tocsc()
    ncols = v.shape[0] - col_lo
    col_count = np.diff(inv.indptr)
    per_entry = col_count[v.indices]
    cum = np.concatenate([[0], np.cumsum(per_entry)])[v.indptr]  # terms before each row
    max_rows = max(1, _CELLS // max(ncols, 1))
    r0 = row_lo
    while r0 < row_hi:
        r1 = int(np.searchsorted(cum, cum[r0] + _TRIPLES, side="right")) - 1
        r1 = min(row_hi, r0 + max_rows, max(r1, r0 + 1))
        a, b = v.indptr[r0], v.indptr[r1]
        local = np.repeat(np.arange(r1 - r0), np.diff(v.indptr[r0 : r1 + 1]))
        feat, val = v.indices[a:b], v.data[a:b]
        cnt = col_count[feat]
        total = int(cnt.sum())
        first = np.repeat(inv.indptr[feat] - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        items, other = inv.indices[first], inv.data[first]
        overlap = np.minimum(np.repeat(val, cnt), other).astype(np.float64)
        m = np.bincount(
            np.repeat(local, cnt) * ncols + items, weights=overlap, minlength=(r1 - r0) * ncols
        ).reshape(r1 - r0, ncols)
        yield r0, r1, 1.0 - m / (2.0 - m)
        r0 = r1


def k_reciprocal(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranked query × gallery distances (float32), as the CVPR 2017 reference.

    Like the reference: the joint distance D = [[qq, qg], [qgᵀ, gg]] is squared, each column
    divided by its maximum, transposed (D'), and the result is (1-λ)·Jaccard + λ·D'. Pass
    plain (not squared) distances to match the original paper's code. Neighbour ties are
    broken by index (a stable argsort).
    """
    qg = _numpy(q_g_dist, "q_g_dist", 2)
    num_q, num_g = qg.shape
    qq = _numpy(q_q_dist, "q_q_dist", 2)
    gg = _numpy(g_g_dist, "g_g_dist", 2)
    if qq.shape != (num_q, num_q):
        raise ValueError(f"q_q_dist must be {num_q}×{num_q} to match q_g_dist, got {qq.shape}")
    if gg.shape != (num_g, num_g):
        raise ValueError(f"g_g_dist must be {num_g}×{num_g} to match q_g_dist, got {gg.shape}")
    _check_k(k1, k2)
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    n = num_q + num_g
    if num_q == 0 or num_g == 0:
        raise ValueError(f"need at least one query and one gallery item, got {num_q} and {num_g}")

    def columns(lo: int, hi: int) -> np.ndarray:
        """Columns lo..hi of D, as rows."""
        if hi <= num_q:
            return np.concatenate([qq[:, lo:hi].T, qg[lo:hi]], axis=1)
        a, b = lo - num_q, hi - num_q
        return np.concatenate([qg[:, a:b].T, gg[:, a:b].T], axis=1)

    keep = min(max(k1 + 1, k2), n)
    nn = np.empty((n, keep), dtype=np.int64)
    col_max = np.empty(n, dtype=np.float32)
    bounds = sorted({*range(0, num_q, _ROW_BLOCK), *range(num_q, n, _ROW_BLOCK), n})
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        sq = np.square(columns(lo, hi)).astype(np.float32, copy=False)
        col_max[lo:hi] = sq.max(axis=1)
        sq /= col_max[lo:hi, None]
        nn[lo:hi] = _smallest_k(torch.from_numpy(sq), keep).numpy()

    def normalised(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """D'[rows, cols] = D[cols, rows]² / max of D's column ``rows``."""
        r, c = cols, rows  # D'[i, j] reads D[j, i]
        out = np.empty(len(rows), dtype=qg.dtype)
        for rq, cq, block, ro, co in (
            (True, True, qq, 0, 0),
            (True, False, qg, 0, num_q),
            (False, False, gg, num_q, num_q),
        ):
            sel = ((r < num_q) == rq) & ((c < num_q) == cq)
            out[sel] = block[r[sel] - ro, c[sel] - co]
        sel = (r >= num_q) & (c < num_q)
        out[sel] = qg[c[sel], r[sel] - num_q]
        return np.square(out).astype(np.float32) / col_max[rows]

    v = _encode(nn, k1, k2, normalised)
    out = np.square(qg).astype(np.float32, copy=False)  # becomes λ·D'[query, gallery] + ...
    out /= col_max[:num_q, None]
    out *= np.float32(lambda_value)
    for r0, r1, jac in _jaccard_blocks(v, 0, num_q, num_q):
        out[r0:r1] += jac.astype(np.float32) * np.float32(1 - lambda_value)
    return out


def _feature_encoding(features: Any, k1: int, k2: int) -> sp.csr_matrix:
    """V for squared Euclidean distances between features (k1+1 neighbours incl. self).

    One pass of row-block matmuls finds the neighbours and keeps the distances of the nearest
    2(k1+1); the expanded sets rarely reach further, and only those few pairs are recomputed
    from the features (gathering feature rows is slow, a second matmul pass slower still).
    """
    f = _features(features, "features")
    _check_k(k1, k2)
    n = f.shape[0]
    sq = (f * f).sum(dim=1)
    keep = min(max(k1 + 1, k2), n)
    stored = min(2 * keep, n)
    nn = np.empty((n, stored), dtype=np.int64)
    near = np.empty((n, stored), dtype=np.float32)
    for lo in range(0, n, _ROW_BLOCK):
        hi = min(n, lo + _ROW_BLOCK)
        d = (f[lo:hi] @ f.T).mul_(-2.0).add_(sq[None, :]).add_(sq[lo:hi, None])
        idx = _smallest_k(d, stored)
        nn[lo:hi] = idx.cpu().numpy()
        near[lo:hi] = d.gather(1, idx).cpu().numpy()
    known = (np.arange(n)[:, None] * n + nn).ravel()
    order = np.argsort(known)
    known, known_d = known[order], near.ravel()[order]

    def sq_euclidean(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        keys = rows * n + cols
        pos = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        hit = known[pos] == keys
        out = np.where(hit, known_d[pos], np.float32(0.0))
        miss = np.flatnonzero(~hit)
        for a in range(0, len(miss), _PAIR_BLOCK):
            sel = miss[a : a + _PAIR_BLOCK]
            r = torch.from_numpy(rows[sel]).to(f.device)
            c = torch.from_numpy(cols[sel]).to(f.device)
            dot = torch.linalg.vecdot(f[r], f[c])
            out[sel] = (sq[r] + sq[c] - 2.0 * dot).cpu().numpy()
        return out

    return _encode(nn[:, :keep], k1, k2, sq_euclidean)


def jaccard_distance(features: Any, k1: int = 20, k2: int = 6) -> np.ndarray:
    """N×N k-reciprocal Jaccard distance (float32, symmetric, zero diagonal, in [0, 1]).

    The reference's building blocks on squared Euclidean distances between the features
    (pass L2-normalised features, as FedCAPR does); weights are softmax(-d) as in fast-reid's
    ``compute_jaccard_distance``. Dense output: N=15,000 takes 0.9 GB; clustering uses the
    sparse :func:`jaccard_graph` instead.
    """
    v = _feature_encoding(features, k1, k2)
    n = v.shape[0]
    out = np.empty((n, n), dtype=np.float32)
    for r0, r1, jac in _jaccard_blocks(v, 0, n, 0):
        out[r0:r1] = np.clip(jac, 0.0, 1.0)
    np.fill_diagonal(out, 0.0)
    return out


def jaccard_graph(
    features: Any, k1: int = 20, k2: int = 6, max_distance: float | None = None
) -> sp.csr_matrix:
    """:func:`jaccard_distance` as a sparse matrix holding only the pairs closer than 1, or
    only those within ``max_distance``.

    Pairs whose encodings do not overlap (distance exactly 1) are left out, so DBSCAN with
    ``metric="precomputed"`` and ``eps = max_distance`` (< 1) finds the same neighbourhoods as
    on the dense matrix, in memory linear in N. The diagonal is stored, as explicit zeros.
    """
    v = _feature_encoding(features, k1, k2)
    n = v.shape[0]
    per_row, cols, vals = [], [], []
    for r0, r1, jac in _jaccard_blocks(v, 0, n, 0):
        jac[np.arange(r1 - r0), np.arange(r0, r1)] = 0.0
        r, c = np.nonzero(jac < 1.0 if max_distance is None else jac <= max_distance)
        per_row.append(np.bincount(r, minlength=r1 - r0))
        cols.append(c.astype(np.int32))
        vals.append(np.clip(jac[r, c], 0.0, 1.0).astype(np.float32))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(per_row))])
    return sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr), shape=(n, n))


def _kwf_weights(sims: torch.Tensor, weighting: str) -> torch.Tensor:
    """Neighbour weights (rows sum to 1) from cosine similarities, KWF's four strategies."""
    if weighting == "uniform":
        return torch.full_like(sims, 1.0 / sims.shape[1])
    if weighting == "sim":
        return sims / sims.sum(dim=1, keepdim=True)
    if weighting == "inv_dist_pow":
        # an item is usually its own first neighbour (distance 0): clamp so its weight stays
        # finite; it then dominates the fused feature
        w = (1.0 - sims).clamp_min(1e-6).pow(-2)
        return w / w.sum(dim=1, keepdim=True)
    return torch.softmax(sims, dim=1)  # exp_decay: exp(-(1 - s)) normalised


def kwf(
    q_feats: Any,
    g_feats: Any,
    g_camids: Any,
    q_camids: Any,
    top_m: int = 100,
    k: int = 6,
    weighting: str = "uniform",
) -> np.ndarray:
    """K-nearest weighted fusion re-ranking (Che et al., ICPRAM 2025): distances 1 - score.

    Features are L2-normalised. For each query its top-M gallery candidates are rescored with
    a multi-view feature: the weighted sum (not re-normalised) of the candidate's K nearest
    gallery neighbours outside the query's camera; the other items keep 1 - cosine. The query
    feature is not transformed (as in the public code). Work is shared per query camera, and
    the gallery × gallery similarity is computed once, in row blocks.
    """
    if weighting not in KWF_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {KWF_WEIGHTINGS}, got {weighting!r}")
    if int(top_m) < 1 or int(k) < 1:
        raise ValueError(f"top_m and k must be >= 1, got top_m={top_m}, k={k}")
    q = F.normalize(_features(q_feats, "q_feats"), dim=1)
    g = F.normalize(_features(g_feats, "g_feats").to(q.device), dim=1)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feats has dim {q.shape[1]} but g_feats has dim {g.shape[1]}")
    q_cam = np.asarray(q_camids.cpu() if isinstance(q_camids, torch.Tensor) else q_camids)
    g_cam = np.asarray(g_camids.cpu() if isinstance(g_camids, torch.Tensor) else g_camids)
    if q_cam.shape != (q.shape[0],):
        raise ValueError(
            f"q_camids must have one entry per query ({q.shape[0]}), got {q_cam.shape}"
        )
    if g_cam.shape != (g.shape[0],):
        raise ValueError(
            f"g_camids must have one entry per gallery item ({g.shape[0]}), got {g_cam.shape}"
        )

    sim = q @ g.T
    top = torch.topk(sim, min(int(top_m), g.shape[0]), dim=1).indices.cpu().numpy()
    dev = g.device
    g_cam_t = torch.from_numpy(g_cam).to(dev)
    # per query camera, the gallery items to fuse: the union of its queries' top-M (a camera
    # with no other camera in the gallery has no neighbours to fuse: single view stays)
    needed = {c: np.unique(top[q_cam == c]) for c in np.unique(q_cam) if (g_cam != c).any()}
    fused = {c: torch.empty(len(rows), g.shape[1], device=dev) for c, rows in needed.items()}
    union = np.unique(np.concatenate(list(needed.values()))) if needed else np.empty(0, int)
    for a in range(0, len(union), _ROW_BLOCK):
        block = union[a : a + _ROW_BLOCK]
        gg = g[torch.from_numpy(block).to(dev)] @ g.T
        for c, rows in needed.items():
            sel = np.isin(block, rows)
            if not sel.any():
                continue
            masked = gg[torch.from_numpy(sel).to(dev)].masked_fill(g_cam_t == int(c), -torch.inf)
            sims, nbr = torch.topk(masked, min(int(k), int((g_cam != c).sum())), dim=1)
            slot = torch.from_numpy(np.searchsorted(rows, block[sel])).to(dev)
            fused[c][slot] = torch.einsum("nk,nkd->nd", _kwf_weights(sims, weighting), g[nbr])
    dist = 1.0 - sim
    for c, rows in needed.items():
        qs = np.flatnonzero(q_cam == c)
        slot = torch.from_numpy(np.searchsorted(rows, top[qs])).to(dev)
        qs_t, cand = torch.from_numpy(qs).to(dev), torch.from_numpy(top[qs]).to(dev)
        dist[qs_t[:, None], cand] = 1.0 - (q[qs_t] @ fused[c].T).gather(1, slot)
    return dist.cpu().numpy()
