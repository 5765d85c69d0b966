"""Identity-balanced (P×K) batches, the sampler every metric-learning ReID recipe uses."""

from __future__ import annotations

import numpy as np


def pk_batches(
    labels: np.ndarray, batch_size: int, num_instances: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of batches of P = batch_size / K labels × K indices each.

    As BoT's RandomIdentitySampler: each label's indices are shuffled (sampled with
    replacement up to K when it has fewer) and cut into chunks of K; batches draw P labels
    that still have chunks. Unlike BoT, the epoch goes on with smaller batches while at least
    two labels have chunks left, so a site with fewer than P labels (a small site, or early
    pseudo-labels with few clusters) still trains. Labels < 0 (outliers) are skipped.
    """
    if batch_size % num_instances:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of num_instances={num_instances}"
        )
    p = batch_size // num_instances
    chunks: dict[int, list[np.ndarray]] = {}
    for label in np.unique(labels):
        if label < 0:
            continue
        idx = np.flatnonzero(labels == label)
        if len(idx) < num_instances:
            idx = rng.choice(idx, size=num_instances, replace=True)
        else:
            idx = rng.permutation(idx)
        n_chunks = len(idx) // num_instances
        chunks[int(label)] = [idx[i * num_instances : (i + 1) * num_instances] for i in range(n_chunks)]
    batches: list[np.ndarray] = []
    available = [k for k, v in chunks.items() if v]
    while len(available) >= min(p, 2):
        picked = rng.choice(len(available), size=min(p, len(available)), replace=False)
        batch = []
        for i in picked:
            batch.append(chunks[available[i]].pop())
        batches.append(np.concatenate(batch))
        available = [k for k in available if chunks[k]]
    return batches
