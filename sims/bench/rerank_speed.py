"""Time and peak memory of k-reciprocal re-ranking: ours against the CVPR 2017 reference.

1,000 queries + 5,000 gallery items drawn around 700 identity centres (256-d, L2-normalised),
Euclidean distances in float32. The reference is the dense algorithm of Zhong et al. as
torchreid ships it, written out below (stable argsort so ties are reproducible). Peak memory
is the rise of the process's resident-set high-water mark during the call (Linux + glibc:
/proc/self/status, reset through /proc/self/clear_refs), which counts numpy and torch alike.

    .venv/bin/python -m sims.bench.rerank_speed [--queries 1000] [--gallery 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedreid.eval import k_reciprocal


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status (peak memory needs Linux)")


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak resident memory above the level at the start, in MiB).

    Freed heap memory is handed back to the OS first (glibc ``malloc_trim``), otherwise a call
    reusing what an earlier one freed would show no rise at all.
    """
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark to the current resident size
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, _status_mb("VmHWM") - base


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The dense CVPR 2017 algorithm (reid.md §1.3), looped as in the published code."""
    query_num = q_g_dist.shape[0]
    original_dist = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    all_num = original_dist.shape[0]
    v = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable").astype(np.int32)
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
        v[i, expansion] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(all_num):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
        del v_qe
    del initial_rank
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        non_zero = np.where(v[i, :] != 0)[0]
        for k in non_zero:
            items = inv_index[k]
            temp_min[0, items] = temp_min[0, items] + np.minimum(v[i, k], v[items, k])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]


def distance_blocks(num_q: int, num_g: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(700, 256)).astype(np.float32)
    ids = rng.integers(0, 700, num_q + num_g)
    feats = torch.from_numpy(
        centres[ids] + 0.8 * rng.normal(size=(len(ids), 256)).astype(np.float32)
    )
    feats = torch.nn.functional.normalize(feats, dim=1)
    d = torch.cdist(feats, feats).numpy()
    return d[:num_q, num_q:].copy(), d[:num_q, :num_q].copy(), d[num_q:, num_q:].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    blocks = distance_blocks(args.queries, args.gallery)
    print(f"k-reciprocal re-ranking, {args.queries} q + {args.gallery} g, k1=20 k2=6 λ=0.3")

    runs = [measure(lambda: k_reciprocal(*blocks)) for _ in range(args.repeats)]
    ours = runs[0][0]
    t_ours = statistics.median(r[1] for r in runs)
    m_ours = max(r[2] for r in runs)
    ref, t_ref, m_ref = measure(lambda: reference_re_ranking(*blocks))

    print(f"  {'':<28s} {'time (s)':>10s} {'peak (MiB)':>11s}")
    print(f"  {'ours (median, max peak)':<28s} {t_ours:10.2f} {m_ours:11.0f}")
    print(f"  {'reference (once)':<28s} {t_ref:10.2f} {m_ref:11.0f}")
    print(f"  {'reference / ours':<28s} {t_ref / t_ours:10.1f} {m_ref / max(m_ours, 1):11.1f}")
    print(f"  max |ours - reference| = {np.abs(ours - ref).max():.2e}")


if __name__ == "__main__":
    main()
