"""Masked-image modelling on a site's own images: the "head start" of ECHO-BID, offline.

ECHO-BID's ablations credit masked-image-modelling (MIM) pretraining for EVA-02's head start
(research/methods.md §5). EVA-02 learns MIM by regressing CLIP features of masked patches;
no CLIP weights exist here, so this pre-pass is SimMIM/MAE's pixel version: a random
``ratio`` of the patch tokens enter the encoder as one learned mask token, a linear head
predicts each masked patch's pixels from its output token, and the loss is the mean squared
error on the masked patches only, each target patch normalised by its own mean and standard
deviation (MAE's ``norm_pix_loss``). It runs for a few epochs before supervised
fine-tuning, on the same training images, so it needs no labels and no other data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedreid.data.augment import train_augment
from fedreid.data.store import ImageStore
from fedreid.models.eva import EvaBackbone


class MaskedImageModelling(nn.Module):
    """The MIM's training-only parts: the mask token and the pixel head (token → patch)."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(dim, 3 * patch * patch)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """B×3×H×W → B×N×(3·p·p), patches in the row-major order of the patch embedding."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def random_mask(batch: int, tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """B×N bool with exactly ``round(ratio · N)`` (at least 1) true entries per row."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"MIM mask ratio={ratio}: must lie strictly between 0 and 1")
    count = max(1, round(ratio * tokens))
    order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
    return order < count


def mim_loss(backbone: EvaBackbone, mim: MaskedImageModelling, images: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted pixels of the masked patches (per-patch normalised)."""
    tokens = backbone.forward_tokens(images, mask.to(images.device), mim.mask_token)[:, 1:]
    pred = mim.head(tokens).float()
    target = patchify(images.float(), mim.patch)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    return (pred - target).pow(2).mean(-1)[mask.to(images.device)].mean()


def mim_pretrain(backbone: EvaBackbone, mim: MaskedImageModelling, store: ImageStore, *, epochs: int,
                 batch_size: int, lr: float, ratio: float, device: torch.device, seed: int) -> list[float]:
    """``epochs`` passes of MIM over ``store`` (flip + shift augmentation, no erasing) with
    its own AdamW; returns each epoch's mean loss."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    params = list(backbone.parameters()) + list(mim.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    backbone.train()
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(store))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            images = train_augment(store.batch(idx), gen, erasing_p=0.0).to(device)
            mask = random_mask(len(idx), backbone.grid[0] * backbone.grid[1], ratio, gen)
            loss = mim_loss(backbone, mim, images, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        losses.append(total / max(count, 1))
    return losses
