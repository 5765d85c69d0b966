"""Embeddings for evaluation: flip test-time augmentation, tracklet pooling, distances."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.data.records import Sample


def _images(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: a tensor, a dict's "image", or a tuple's first item."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ValueError(f"a dict batch needs an 'image' key, got keys {sorted(batch)}")
        return batch["image"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(
        f"a batch must be an image tensor, a dict with 'image', or (images, ...); got {type(batch).__name__}"
    )


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    data: Iterable[Any] | torch.Tensor,
    device: str | torch.device = "cpu",
    flip: bool = True,
    batch_size: int = 64,
) -> torch.Tensor:
    """L2-normalised embeddings (N×D, float32, on the CPU) in the order the data yields them.

    ``data`` is a DataLoader (batches: tensors, dicts with "image", or ``(images, *rest)``) or
    one N×C×H×W tensor, cut into ``batch_size`` chunks. The model runs in eval mode (its
    previous mode is restored) and must return a B×D tensor. With ``flip`` the embedding of
    the horizontally flipped image is added before normalising (the usual ReID test-time
    augmentation).
    """
    batches = data.split(batch_size) if isinstance(data, torch.Tensor) else data
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in batches:
            x = _images(batch).to(device)
            emb = model(x)
            if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != x.shape[0]:
                shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise ValueError(
                    f"model must return a B×D embedding tensor in eval mode, got {shape} for a batch of {x.shape[0]}"
                )
            if flip:
                emb = emb + model(torch.flip(x, dims=[3]))
            out.append(F.normalize(emb.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("data yielded no batches; nothing to extract")
    return torch.cat(out)


def tracklet_features(
    feats: torch.Tensor, samples: Sequence[Sample]
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Average the frames of each tracklet (same pid, camid, tracklet) for video evaluation.

    Tracklets come out in order of first appearance; means are L2-normalised again so cosine
    distances stay comparable with image-level ones. Returns (features, pids, camids).
    """
    if feats.ndim != 2 or feats.shape[0] != len(samples):
        raise ValueError(
            f"feats must be N×D with one row per sample ({len(samples)}), got {tuple(feats.shape)}"
        )
    if any(s.tracklet < 0 for s in samples):
        bad = next(s for s in samples if s.tracklet < 0)
        raise ValueError(
            f"tracklet_features needs video samples (tracklet >= 0); {bad.path} has none"
        )
    keys = np.array([(s.pid, s.camid, s.tracklet) for s in samples], dtype=np.int64)
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(uniq))  # tracklet order: first appearance
    slot = torch.from_numpy(rank[inverse])
    sums = torch.zeros(len(uniq), feats.shape[1], dtype=torch.float32)
    sums.index_add_(0, slot, feats.detach().float().cpu())
    counts = torch.bincount(slot, minlength=len(uniq)).unsqueeze(1)
    order = np.argsort(first)
    return F.normalize(sums / counts, dim=1), uniq[order, 0], uniq[order, 1]


def pairwise_distance(qf: Any, gf: Any, metric: str = "cosine") -> torch.Tensor:
    """Query × gallery distances: ``cosine`` = 1 - cos, ``euclidean`` = ‖q - g‖ (not squared).

    Plain Euclidean (torchreid returns it squared) so that k-reciprocal re-ranking, which
    squares its input, works on squared distances as the CVPR 2017 code does.
    """
    q = torch.as_tensor(qf).float()
    g = torch.as_tensor(gf).float().to(q.device)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"qf and gf must be 2-D with the same feature dim, got {tuple(q.shape)} and {tuple(g.shape)}"
        )
    if metric == "cosine":
        return 1.0 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    if metric == "euclidean":
        sq = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
        return sq.clamp_min(0.0).sqrt()
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
