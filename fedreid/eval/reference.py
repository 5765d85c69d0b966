"""Straightforward reference implementations, kept to check the fast ones (tests, benchmarks).

Written out from the published algorithms (research/reid.md §1): the per-query Market-1501
loop of torchreid/fast-reid and the CVPR 2017 k-reciprocal re-ranking. Slow by design;
never used on a real path.
"""

from __future__ import annotations

import numpy as np


def reference_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, kind="stable"):
    """The widely used per-query loop (torchreid/fast-reid eval_market1501), written out.

    Two deliberate differences: argsort is stable by default (``kind=None`` is the
    reference's quicksort, which breaks ties arbitrarily), and a CMC shorter than max_rank (fewer kept items than max_rank, where
    the reference fails on a ragged array) is padded with its last value, 1.
    """
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind=kind)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = indices[q]
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        raw_cmc = matches[q][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        cmc = cmc[:max_rank]
        all_cmc.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
        precision = raw_cmc.cumsum() / (np.arange(len(raw_cmc)) + 1.0)
        all_ap.append((precision * raw_cmc).sum() / raw_cmc.sum())
    all_cmc = np.asarray(all_cmc).astype(np.float32)
    return (
        all_cmc.sum(0) / len(all_cmc),
        float(np.mean(all_ap)),
        float(np.mean(all_inp)),
        np.asarray(all_ap),
    )


def reference_jaccard(original_dist, num_rows, k1, k2):
    """Jaccard part of the CVPR 2017 algorithm (reid.md §1.3 steps 2-6), dense and looped.

    Rows 0..num_rows-1 against all items. argsort is stable so ties are reproducible.
    """
    all_num = original_dist.shape[0]
    v = np.zeros_like(original_dist, dtype=np.float32)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))
    for i in range(all_num):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for cand in recip:
            c_forward = initial_rank[cand, : half + 1]
            c_backward = initial_rank[c_forward, : half + 1]
            c_recip = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([np.mean(v[initial_rank[i, :k2]], axis=0) for i in range(all_num)])
    inv_index = [np.where(v[:, k] != 0)[0] for k in range(all_num)]
    jac = np.zeros((num_rows, all_num), dtype=np.float32)
    for i in range(num_rows):
        temp_min = np.zeros(all_num, dtype=np.float32)
        for k in np.where(v[i] != 0)[0]:
            items = inv_index[k]
            temp_min[items] += np.minimum(v[i, k], v[items, k])
        jac[i] = 1 - temp_min / (2.0 - temp_min)
    return jac


def reference_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """The CVPR 2017 re-ranking on distance matrices (torchreid's re_ranking), written out."""
    num_q = q_g.shape[0]
    dist = np.concatenate(
        [np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0
    )
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(1.0 * dist / np.max(dist, axis=0))
    jac = reference_jaccard(dist, num_q, k1, k2)
    final = jac * (1 - lambda_value) + dist[:num_q] * lambda_value
    return final[:, num_q:]
