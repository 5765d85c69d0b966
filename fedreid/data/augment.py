"""Batch-wise image transforms on uint8 tensors (BoT augmentation, vectorised).

Per-image torchvision transforms cost more than the network on a 2-core CPU at 128×64;
the same operations applied to a whole batch at once are nearly free.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalize(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] → float, ImageNet mean/std normalised."""
    scale = (1.0 / (255.0 * IMAGENET_STD)).to(batch_u8.device)
    offset = (IMAGENET_MEAN / IMAGENET_STD).to(batch_u8.device)
    return batch_u8.float().mul_(scale).sub_(offset)  # in place: one float copy in all


def hflip(batch: torch.Tensor) -> torch.Tensor:
    return batch.flip(-1)


def train_augment(
    batch_u8: torch.Tensor,
    generator: torch.Generator,
    *,
    flip_p: float = 0.5,
    pad: int = 10,
    erasing_p: float = 0.5,
) -> torch.Tensor:
    """Flip, pad-and-random-crop, normalise, random erasing — BoT's order and parameters."""
    b, _, h, w = batch_u8.shape
    x = normalize(batch_u8)
    flips = torch.rand(b, generator=generator) < flip_p
    x[flips] = x[flips].flip(-1)
    if pad > 0:
        x = _random_shift(x, generator, pad)
    if erasing_p > 0:
        x = random_erasing(x, generator, p=erasing_p)
    return x.contiguous()


def _random_shift(x: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad`` then crop back to size at a random offset, without the padded copy."""
    b, _, h, w = x.shape
    out = torch.zeros_like(x)
    offsets = torch.randint(-pad, pad + 1, (b, 2), generator=generator).tolist()
    for i, (dy, dx) in enumerate(offsets):
        out[i, :, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
            i, :, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
        ]
    return out


def random_erasing(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """Zero (= the mean colour after normalisation) one random rectangle per chosen image."""
    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=generator) < p
    target = torch.empty(b).uniform_(*area, generator=generator) * h * w
    log_r = torch.empty(b).uniform_(
        float(torch.log(torch.tensor(aspect[0]))), float(torch.log(torch.tensor(aspect[1]))),
        generator=generator,
    )
    ratio = log_r.exp()
    eh = (target * ratio).sqrt().round().clamp(1, h).long()
    ew = (target / ratio).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = (
        (ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
        & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1))
        & chosen.view(b, 1, 1)
    )
    return x.masked_fill_(inside.unsqueeze(1), 0.0)
