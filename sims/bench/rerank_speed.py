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
from fedreid.eval.reference import reference_re_ranking


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
