"""Speed of fedreid.eval.evaluate against the per-query reference loop, Market-1501 sized.

A random problem the size of Market-1501's test split (3,368 queries × 15,913 gallery, 751
identities, 6 cameras, float32 distances). The reference is the widely used per-query loop
(torchreid / fast-reid ``eval_market1501``), written out below: timed as those libraries run
it (default quicksort argsort), and run again with a stable argsort to check that the numbers
agree (float32 random distances have ties, which a quicksort orders arbitrarily). Ours is the
median of ``--repeats`` runs.

    .venv/bin/python -m sims.bench.eval_speed [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from fedreid.eval import evaluate
from fedreid.eval.reference import reference_market1501


def market_sized_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    num_q, num_g, ids, cams = 3368, 15913, 751, 6
    g_pids = rng.integers(0, ids, num_g)
    q_pids = rng.choice(g_pids, num_q)
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    dist = rng.random((num_q, num_g), dtype=np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="evaluate's num_threads")
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    problem = market_sized_problem()
    print(f"Market-sized problem {problem[0].shape}, float32, {threads} thread(s)")

    def median_time(fn) -> float:
        return statistics.median(_timed(fn)[1] for _ in range(args.repeats))

    out = evaluate(*problem, num_threads=threads)
    cuhk = evaluate(*problem, num_threads=threads, cuhk03_single_shot=True)
    t_ours = median_time(lambda: evaluate(*problem, num_threads=threads))
    t_ours_1 = median_time(lambda: evaluate(*problem, num_threads=1))
    t_cuhk = median_time(lambda: evaluate(*problem, num_threads=threads, cuhk03_single_shot=True))
    _, t_ref = _timed(lambda: reference_market1501(*problem, kind=None))
    (cmc, m_ap, m_inp, _), t_ref_stable = _timed(lambda: reference_market1501(*problem, kind="stable"))

    rows = [
        ("ours (median)", t_ours),
        ("ours, 1 thread (median)", t_ours_1),
        ("ours, CUHK03 single-shot CMC (median)", t_cuhk),
        ("reference loop, quicksort argsort", t_ref),
        ("reference loop, stable argsort", t_ref_stable),
    ]
    for name, t in rows:
        print(f"  {name:<40s} {t:8.3f} s")
    print(f"  speed-up vs reference (quicksort)        {t_ref / t_ours:8.1f} x")
    print(f"  speed-up vs reference (stable)           {t_ref_stable / t_ours:8.1f} x")
    print(
        f"  max |diff| vs stable reference: CMC {np.abs(out['cmc'] - cmc).max():.2e}, "
        f"mAP {abs(out['mAP'] - m_ap):.2e}, mINP {abs(out['mINP'] - m_inp):.2e}"
    )
    print(f"  mAP {out['mAP']:.5f}, rank-1 {out['cmc'][0]:.5f}, CUHK03 rank-1 {cuhk['cmc'][0]:.5f}")


if __name__ == "__main__":
    main()
