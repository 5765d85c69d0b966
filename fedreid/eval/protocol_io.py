"""What the setup protocols (aerial-ground, cross-modality, clothes change, occlusion) share:
turning a site's features and ``Sample`` lists into evaluation items, reading the metadata
a protocol needs with an error that names the sample, and flattening results into the
``{"<prefix>_<metric>[_<bin>]": float}`` dicts the evaluator registry reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedreid.data.records import Sample
from fedreid.eval.features import pairwise_distance, tracklet_features


def _rows(feats: Any, samples: Sequence[Sample], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(feats)
    if tensor.ndim != 2 or tensor.shape[0] != len(samples):
        raise ValueError(
            f"{name} must be N×D with one row per sample ({len(samples)}), got {tuple(tensor.shape)}"
        )
    return tensor


def evaluation_items(
    feats: Any, samples: Sequence[Sample], name: str = "features"
) -> tuple[torch.Tensor, list[Sample]]:
    """Features and one representative ``Sample`` per evaluation item.

    Image data: the rows as given. Video data (every sample a frame, ``tracklet >= 0``): frames
    averaged per tracklet by ``tracklet_features`` (order of first appearance), each tracklet
    represented by its first frame.
    """
    tensor = _rows(feats, samples, name)
    if not samples or any(s.tracklet < 0 for s in samples):
        return tensor, list(samples)
    pooled, _, _ = tracklet_features(tensor, samples)
    first: dict[tuple[int, int, int], int] = {}
    for index, s in enumerate(samples):
        first.setdefault((s.pid, s.camid, s.tracklet), index)
    return pooled, [samples[index] for index in sorted(first.values())]


def check_tracklet_meta(samples: Sequence[Sample], key: str) -> None:
    """Every frame of a tracklet must agree on ``meta[key]`` (one modality per tracklet)."""
    seen: dict[tuple[int, int, int], tuple[Any, str]] = {}
    for s in samples:
        if s.tracklet < 0:
            continue
        value = s.meta.get(key)
        first = seen.setdefault((s.pid, s.camid, s.tracklet), (value, s.path))
        if first[0] != value:
            raise ValueError(
                f"{s.path}: meta[{key!r}] is {value!r} but {first[1]} of the same tracklet has "
                f"{first[0]!r}; tracklets are evaluated as one item, so their frames must agree; "
                "fix the reader or split the tracklet"
            )


def meta_values(samples: Sequence[Sample], key: str, needed_by: str, sub: str = "") -> list[Any]:
    """``meta[key]`` (or ``meta[key][sub]``) of each sample; a missing value names the sample."""
    out = []
    for s in samples:
        value = s.meta.get(key)
        if sub and isinstance(value, dict):
            value = value.get(sub)
        if value is None:
            field = f"meta[{key!r}][{sub!r}]" if sub else f"meta[{key!r}]"
            raise ValueError(
                f"{s.path}: no {field}; the {needed_by} protocol needs it on every query and "
                "gallery sample; fix: read the data with a reader that records it"
            )
        out.append(value)
    return out


def ids(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(pids, camids) as int64 arrays."""
    return (
        np.array([s.pid for s in samples], dtype=np.int64),
        np.array([s.camid for s in samples], dtype=np.int64),
    )


def distances(qf: torch.Tensor, gf: torch.Tensor, metric: str) -> np.ndarray:
    """Query × gallery distances as a NumPy array (``pairwise_distance``'s metrics)."""
    return pairwise_distance(qf, gf, metric).cpu().numpy()


def metric_dict(
    result: dict[str, Any],
    prefix: str,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    suffix: str = "",
    minp: bool = True,
) -> dict[str, float]:
    """``{prefix}_rank{k}{_suffix}``, ``_mAP``, ``_mINP`` and ``_nq`` (the number of queries
    with a positive, so a reader can tell a bin of 3 queries from one of 3,000)."""
    end = f"_{suffix}" if suffix else ""
    cmc = result["cmc"]
    out = {f"{prefix}_rank{k}{end}": float(cmc[min(k, len(cmc)) - 1]) for k in ranks}
    out[f"{prefix}_mAP{end}"] = float(result["mAP"])
    if minp:
        out[f"{prefix}_mINP{end}"] = float(result["mINP"])
    out[f"{prefix}_nq{end}"] = float(result["num_valid_queries"])
    return out


__all__ = [
    "check_tracklet_meta",
    "distances",
    "evaluation_items",
    "ids",
    "meta_values",
    "metric_dict",
]
