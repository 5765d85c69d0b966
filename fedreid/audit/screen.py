"""Sensitive-content screen: images of the site that look like the operator's exemplars.

The study retrieved sensitive images from LAION by CLIP embedding similarity; CLIP weights
cannot be downloaded here, so an image is embedded by one of two encoders and compared by
cosine similarity with every exemplar (``--exemplars DIR``):

- ``ReidEncoder``: the site's own ReID model from a fedreid checkpoint (``{"model": shared
  state dict, "arch": ...}``, as ``fedreid train`` and the federation write it). It finds
  images of the *same person or scene* as an exemplar (a person who withdrew consent, a
  restricted area), as well as the model has learnt.
- ``PixelEncoder`` (when no checkpoint is given): a 32×16 grey thumbnail and a colour
  histogram. It needs no model and finds *copies* of an exemplar (resized, re-compressed,
  slightly cropped or brightened), not other pictures of the same kind.

An image whose best similarity reaches ``threshold`` is a finding; the report also lists each
exemplar's nearest site images, so an operator can set the threshold from what they see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Progress = Callable[[int, int], None]
PIXEL_THRESHOLD = 0.9  # measured by sims/bench/audit_quality (altered copies vs other images)
REID_THRESHOLD = 0.9


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class PixelEncoder:
    """Model-free embedding for near-copies: a mean/contrast-normalised 32×16 grey thumbnail
    (weight 0.8) and an 8×4×4 HSV histogram (weight 0.2), L2-normalised."""

    name = "pixels"
    default_threshold = PIXEL_THRESHOLD

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for image in images:
            picture = Image.fromarray(image)
            grey = np.asarray(picture.convert("L").resize((16, 32), Image.BILINEAR), np.float32)
            grey = (grey - grey.mean()).ravel()
            grey /= max(float(np.linalg.norm(grey)), 1e-6)
            hsv = np.asarray(picture.convert("HSV").resize((32, 64), Image.BILINEAR))
            hist, _ = np.histogramdd(hsv.reshape(-1, 3).astype(np.float32), bins=(8, 4, 4),
                                     range=((0, 256), (0, 256), (0, 256)))
            hist = np.sqrt(hist.ravel() / hist.sum())
            rows.append(np.concatenate([np.sqrt(0.8) * grey, np.sqrt(0.2) * hist]))
        return _l2(np.stack(rows).astype(np.float32))


class ReidEncoder:
    """A fedreid checkpoint's ReID network on CPU, input resized to ``size`` (H, W); eval mode
    gives L2-normalised features."""

    name = "reid"
    default_threshold = REID_THRESHOLD

    def __init__(self, checkpoint: Path, *, arch: str | None = None,
                 size: tuple[int, int] = (128, 64)) -> None:
        import torch

        from fedreid.models import build_model

        if not Path(checkpoint).is_file():
            raise ValueError(f"--encoder {checkpoint}: no such file; pass a fedreid checkpoint "
                             "(checkpoint.pt of `fedreid train` or a federation run)")
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unpickling error types
            raise ValueError(f"--encoder {checkpoint}: cannot read it with torch.load ({err})") from err
        saved_arch = saved.get("arch") if isinstance(saved, dict) else None
        arch = arch or saved_arch
        if not arch:
            raise ValueError(f"--encoder {checkpoint}: the checkpoint does not say its arch; pass "
                             "--arch (e.g. resnet18)")
        self.model = build_model(arch, str(checkpoint)).eval()
        self.size = size
        self._torch = torch

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from fedreid.data.augment import normalize

        height, width = self.size
        batch = np.stack([np.asarray(Image.fromarray(im).resize((width, height), Image.BILINEAR))
                          for im in images])
        x = normalize(self._torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous())
        with self._torch.inference_mode():
            return _l2(self.model(x).float().numpy())


def embed_files(encoder, paths: Sequence[Path], load: Callable[[Path], np.ndarray], *,
                batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
    """Embeddings ``[N, D]`` of the image files, in batches."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        chunks.append(encoder.embed([load(path) for path in chunk]))
        if progress:
            progress(min(start + batch_size, len(paths)), len(paths))
    if not chunks:
        return np.zeros((0, 1), np.float32)
    return np.concatenate(chunks)


@dataclass(frozen=True)
class ScreenResult:
    """Per image, the exemplars at or above the threshold (best first); per exemplar, its
    ``top_k`` nearest images (index, cosine), whatever their similarity."""

    matches: list[list[tuple[int, float]]]
    nearest: list[list[tuple[int, float]]]


def screen(features: np.ndarray, exemplars: np.ndarray, *, threshold: float,
           top_k: int = 5) -> ScreenResult:
    """Cosine similarities of L2-normalised site ``features`` [N, D] to ``exemplars`` [E, D]."""
    if features.ndim != 2 or exemplars.ndim != 2 or (
            len(features) and len(exemplars) and features.shape[1] != exemplars.shape[1]):
        raise ValueError(f"features {features.shape} and exemplars {exemplars.shape} must be "
                         "[N, D] and [E, D] from the same encoder")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold {threshold}: a cosine similarity lies in [-1, 1]")
    if len(features) == 0 or len(exemplars) == 0:
        return ScreenResult([[] for _ in features], [[] for _ in exemplars])
    sims = features @ exemplars.T
    matches = []
    for row in sims:
        hits = np.flatnonzero(row >= threshold)
        matches.append([(int(j), float(row[j])) for j in hits[np.argsort(-row[hits])]])
    k = min(top_k, len(features))
    nearest = []
    for column in sims.T:
        order = np.argsort(-column)[:k]
        nearest.append([(int(i), float(column[i])) for i in order])
    return ScreenResult(matches, nearest)
