"""No-reference pixel quality of generated images, offline: a pre-filter before training.

A GAN run of a few thousand CPU iterations leaves some copies smeared or speckled. These
scores rank a site's copies so the worst fraction can be left out; higher is better for all
of them. They were fitted on nothing (or, PIQE, on natural images), so use them to rank
within one site, never as absolute thresholds.

- ``sharpness``: 1 − the blur effect of Crete et al. (2007, "The blur effect: perception and
  estimation with a new no-reference perceptual blur metric"): how much of the image's
  neighbouring-pixel variation survives an extra averaging blur, along rows and columns,
  on luminance. In [0, 1], resolution-free, no parameters.
- ``laplacian``: log(1 + variance of the Laplacian of luminance), the classic focus measure.
- ``piqe``: −PIQE (Venkatanath et al. 2015) from the ``pypiqe`` package (numpy + OpenCV, no
  model file: works offline). Its 16-pixel blocks need 128×64 images or larger to mean much.
- ``none``: every image scores 0 (nothing is ranked).

BRISQUE and NIQE need fitted parameter files that ``piq``, ``pyiqa`` and OpenCV download or do
not ship (research/uda.md §4); they are not offered.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _luminance(images_u8: torch.Tensor) -> torch.Tensor:
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4 or images_u8.shape[1] != 3:
        raise ValueError(f"images must be uint8 [N, 3, H, W], got {images_u8.dtype} {tuple(images_u8.shape)}")
    return (images_u8.float() / 255.0 * LUMA).sum(dim=1, keepdim=True)


def sharpness(images_u8: torch.Tensor, h_size: int = 5) -> np.ndarray:
    """1 − Crete's blur effect per image (``h_size``: the averaging blur; 11 in the paper for
    large images, 5 suits 64-pixel crops)."""
    y = _luminance(images_u8)
    scores = []
    for dim in (2, 3):
        kernel = torch.full((1, 1, h_size, 1) if dim == 2 else (1, 1, 1, h_size), 1.0 / h_size)
        pad = (0, 0, h_size // 2, h_size // 2) if dim == 2 else (h_size // 2, h_size // 2, 0, 0)
        blurred = F.conv2d(F.pad(y, pad, mode="replicate"), kernel)
        d_f = y.diff(dim=dim).abs()
        d_b = blurred.diff(dim=dim).abs()
        s_f = d_f.flatten(1).sum(dim=1)
        s_v = (d_f - d_b).clamp(min=0).flatten(1).sum(dim=1)
        scores.append(torch.where(s_f > 0, (s_f - s_v) / s_f.clamp(min=1e-12), torch.ones_like(s_f)))
    blur = torch.maximum(scores[0], scores[1])
    return (1.0 - blur).numpy().astype(np.float64)


def laplacian(images_u8: torch.Tensor) -> np.ndarray:
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    lap = F.conv2d(_luminance(images_u8) * 255.0, kernel)
    return np.log1p(lap.flatten(1).var(dim=1).numpy().astype(np.float64))


def piqe(images_u8: torch.Tensor) -> np.ndarray:
    try:
        from pypiqe import piqe as _piqe
    except ImportError as exc:
        raise ValueError("quality score 'piqe' needs the pypiqe package: `.venv/bin/pip install -e '.[quality]'` "
                         "(pypiqe 1.2: numpy + OpenCV, no model file), or choose sharpness") from exc
    arrays = images_u8.permute(0, 2, 3, 1).numpy()
    return np.array([-float(_piqe(a)[0]) for a in arrays], dtype=np.float64)


def _none(images_u8: torch.Tensor) -> np.ndarray:
    return np.zeros(len(images_u8), dtype=np.float64)


QUALITY_SCORES: dict[str, Callable[[torch.Tensor], np.ndarray]] = {
    "sharpness": sharpness,
    "laplacian": laplacian,
    "piqe": piqe,
    "none": _none,
}


def quality_scores(images_u8: torch.Tensor, score: str) -> np.ndarray:
    """Score ``score`` of every image (higher = better); unknown names list the known ones."""
    if score not in QUALITY_SCORES:
        raise ValueError(f"quality score {score!r}: choose one of {', '.join(QUALITY_SCORES)}")
    return QUALITY_SCORES[score](images_u8)


def keep_best(scores: np.ndarray, drop_worst: float) -> np.ndarray:
    """Boolean mask keeping all but the ``drop_worst`` fraction with the lowest scores (ties
    broken by position, so the result is deterministic)."""
    if not 0.0 <= drop_worst < 1.0:
        raise ValueError(f"drop_worst={drop_worst} must lie in [0, 1): the fraction of generated "
                         "images left out")
    keep = np.ones(len(scores), dtype=bool)
    n_drop = int(np.floor(drop_worst * len(scores)))
    if n_drop:
        keep[np.argsort(scores, kind="stable")[:n_drop]] = False
    return keep
