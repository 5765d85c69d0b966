"""Occlusion test: erase a region of every query image, then score the occluded queries against
the untouched gallery (the "occluded" setting of the clothes-change and body-ReID studies,
research/methods.md §5: random-erasing crops at test time).

The erased region is deterministic: it depends on the seed and on the image's key (its index in
the query list), never on batch size or order, so two runs and two models see the same holes.
Modes: ``random`` (a rectangle covering ``fraction`` of the image, aspect ratio drawn from
[1/2, 2], at a random place), ``upper`` / ``lower`` (the top or bottom ``fraction`` of the
rows; 0.5 erases a half). ``fill`` is written as is, in the images' own units: on normalised
tensors the default 0.0 is the normalisation mean colour; on uint8 images pass e.g. 124
(ImageNet mean grey) or 0 (black).

Use: ``extract_features(model, occluded_batches(query_loader, Occlusion(...)))`` gives the
occluded query features (the loader must not shuffle); ``evaluate_occluded`` scores them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedreid.data.records import Sample
from fedreid.eval.junk import market_junk
from fedreid.eval.protocol_io import distances, evaluation_items, ids, metric_dict

OCCLUSION_MODES = ("random", "upper", "lower")
_ASPECT = (0.5, 2.0)  # height / width of the random rectangle


@dataclass(frozen=True)
class Occlusion:
    """Which region to erase: ``mode`` of ``OCCLUSION_MODES``, the erased share of the image
    (``fraction``, in (0, 1]), the value written there (``fill``) and the ``seed``."""

    mode: str = "random"
    fraction: float = 0.25
    fill: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in OCCLUSION_MODES:
            raise ValueError(
                f"occlusion mode must be one of {', '.join(OCCLUSION_MODES)}, got {self.mode!r}"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"occlusion fraction must be in (0, 1], got {self.fraction}")
        if self.seed < 0:
            raise ValueError(f"occlusion seed must be >= 0, got {self.seed}")


def occlusion_box(
    height: int, width: int, occlusion: Occlusion, key: int
) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the region erased in image ``key`` (exclusive ends)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if key < 0:
        raise ValueError(f"image key must be >= 0, got {key}")
    if occlusion.mode != "random":
        rows = min(height, max(1, round(occlusion.fraction * height)))
        return (
            (0, 0, rows, width) if occlusion.mode == "upper" else (height - rows, 0, height, width)
        )
    rng = np.random.default_rng([occlusion.seed, key])
    aspect = math.exp(rng.uniform(math.log(_ASPECT[0]), math.log(_ASPECT[1])))
    area = occlusion.fraction * height * width
    h = min(height, max(1, round(math.sqrt(area * aspect))))
    w = min(width, max(1, round(math.sqrt(area / aspect))))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, top + h, left + w


def occlude(images: torch.Tensor, keys: Sequence[int], occlusion: Occlusion) -> torch.Tensor:
    """A copy of the N×C×H×W batch ``images`` with each image's region set to ``fill``."""
    if images.ndim != 4 or len(keys) != images.shape[0]:
        raise ValueError(
            f"images must be N×C×H×W with one key per image, got {tuple(images.shape)} and "
            f"{len(keys)} keys"
        )
    out = images.clone()
    height, width = images.shape[2], images.shape[3]
    for i, key in enumerate(keys):
        top, left, bottom, right = occlusion_box(height, width, occlusion, int(key))
        out[i, :, top:bottom, left:right] = occlusion.fill
    return out


def occluded_batches(batches: Iterable[Any], occlusion: Occlusion) -> Iterator[Any]:
    """The batches of a query loader with their images occluded, keyed by running index.

    Batches are tensors, dicts with "image", or ``(images, *rest)`` tuples/lists (the forms
    ``extract_features`` accepts); the structure is kept.
    """
    offset = 0
    for batch in batches:
        if isinstance(batch, torch.Tensor):
            images = batch
        elif isinstance(batch, dict) and "image" in batch:
            images = batch["image"]
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            images = batch[0]
        else:
            raise ValueError(
                "a batch must be an image tensor, a dict with 'image', or (images, ...); "
                f"got {type(batch).__name__}"
            )
        keys = range(offset, offset + images.shape[0])
        offset += images.shape[0]
        erased = occlude(images, keys, occlusion)
        if isinstance(batch, torch.Tensor):
            yield erased
        elif isinstance(batch, dict):
            yield {**batch, "image": erased}
        else:
            yield type(batch)([erased, *batch[1:]])


def evaluate_occluded(
    qf_occluded: Any,
    gf: Any,
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    qf_clean: Any = None,
    metric: str = "cosine",
    max_rank: int = 50,
) -> dict[str, float]:
    """Occluded queries against the clean gallery, Market-1501 rule: ``occ_rank1/5/10``,
    ``occ_mAP``, ``occ_mINP``, ``occ_nq``; with ``qf_clean`` also ``occ_rank1_drop`` and
    ``occ_mAP_drop`` (clean minus occluded, so positive = occlusion hurts)."""
    gf, gallery = evaluation_items(gf, gallery_samples, "gf")
    g_pids, g_camids = ids(gallery)

    def score(feats: Any, name: str) -> dict[str, Any]:
        feats, query = evaluation_items(feats, query_samples, name)
        q_pids, q_camids = ids(query)
        dist = distances(feats, gf, metric)
        result = market_junk(dist, q_pids, g_pids, q_camids, g_camids, max_rank)
        if result is None:
            raise ValueError(
                "no query identity appears in the gallery under another camera; the occlusion "
                "test needs query identities in the gallery"
            )
        return result

    occluded = score(qf_occluded, "qf_occluded")
    out = metric_dict(occluded, "occ")
    if qf_clean is not None:
        clean = score(qf_clean, "qf_clean")
        out["occ_rank1_drop"] = float(clean["cmc"][0] - occluded["cmc"][0])
        out["occ_mAP_drop"] = float(clean["mAP"] - occluded["mAP"])
    return out


__all__ = [
    "OCCLUSION_MODES",
    "Occlusion",
    "evaluate_occluded",
    "occluded_batches",
    "occlude",
    "occlusion_box",
]
