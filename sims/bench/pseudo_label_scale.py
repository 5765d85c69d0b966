"""Time and peak memory of the pseudo-label pipeline at 2,000 and 15,000 images.

Features: ``--dim``-d (default 2048, ResNet-50's), around N/16 identity centres, 6 cameras,
L2-normalised. Per size it measures the dense Jaccard matrix (``jaccard_distance``), the
sparse one the clustering uses (``jaccard_graph``) and the whole ``cluster_pseudo_labels``
(Jaccard graph + DBSCAN + camera proxies). Peak memory is the rise of the resident-set
high-water mark during the call (see sims.bench.rerank_speed.measure); the features
themselves (N × dim float32) are not counted. Each figure is the median of ``--repeats``
runs for N ≤ 2,000 and a single run above.

    .venv/bin/python -m sims.bench.pseudo_label_scale [--sizes 2000 15000] [--dim 2048]
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import numpy as np
import torch

from fedreid.eval import jaccard_distance, jaccard_graph
from fedreid.pseudo_labels import cluster_pseudo_labels
from sims.bench.rerank_speed import measure


def clustered_features(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = max(1, n // 16)
    centres = rng.normal(size=(ids, dim)).astype(np.float32)
    labels = rng.integers(0, ids, n)
    feats = centres[labels] + 0.8 * rng.normal(size=(n, dim)).astype(np.float32)
    return torch.nn.functional.normalize(torch.from_numpy(feats), dim=1), rng.integers(0, 6, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 15000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"k1=20 k2=6, DBSCAN eps=0.5 min_samples=4, dim {args.dim}, {torch.get_num_threads()} threads"
    )
    print(f"  {'N':>6s} {'step':<24s} {'time (s)':>9s} {'peak (MiB)':>11s}")
    for n in args.sizes:
        feats, cams = clustered_features(n, args.dim)
        repeats = args.repeats if n <= 2000 else 1
        steps = (
            ("jaccard_distance (dense)", partial(jaccard_distance, feats)),
            ("jaccard_graph (sparse)", partial(jaccard_graph, feats)),
            ("cluster_pseudo_labels", partial(cluster_pseudo_labels, feats, cams)),
        )
        for name, fn in steps:
            runs = [measure(fn) for _ in range(repeats)]
            seconds = statistics.median(r[1] for r in runs)
            peak = max(r[2] for r in runs)
            print(f"  {n:6d} {name:<24s} {seconds:9.2f} {peak:11.0f}")
        labels = runs[0][0]
        print(
            f"  {n:6d} -> {labels.num_clusters} clusters ({n // 16} centres), "
            f"{labels.num_outliers} outliers, {len(labels.proxy_cluster)} proxies"
        )


if __name__ == "__main__":
    main()
