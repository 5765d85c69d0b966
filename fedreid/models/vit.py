"""Vision Transformer backbones (timm ``VisionTransformer``) sized for re-ID crops.

ReID crops are tall (2:1), so the patch grid is built for the run's input size (128×64 with
patch 16 gives 8×4 = 32 tokens; patch 8 gives 16×8 = 128). ``forward`` returns the CLS
token, optionally followed by ``parts`` horizontal-stripe features (the mean of the patch
tokens in each stripe), the "CLS plus part tokens" global/local split of TransReID-style
models. ``forward_tokens`` exposes every token for methods that work on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedreid.models.parts import stripe_means


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int


VIT_SIZES = {
    "tiny": ViTSize(embed_dim=192, depth=12, num_heads=3),
    "small": ViTSize(embed_dim=384, depth=12, num_heads=6),
}


class ViTBackbone(nn.Module):
    """timm ``VisionTransformer`` without a classifier; B×3×H×W → B×D (CLS [+ stripes]).

    ``depth`` overrides the size's standard 12 blocks (0 keeps it): shallower ViTs are what a
    2-core CPU can train from random weights. Keys are timm's (``patch_embed.*``, ``blocks.*``),
    so a timm checkpoint loads directly (:func:`fedreid.models.weights.load_vit_file`).
    """

    def __init__(self, size: str, patch: int, image_size: tuple[int, int], *, parts: int = 0,
                 depth: int = 0) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if size not in VIT_SIZES:
            raise ValueError(f"ViT size {size!r}: choose one of {sorted(VIT_SIZES)}")
        height, width = image_size
        if height % patch or width % patch:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the ViT patch {patch}; set "
                f"data.height/data.width to multiples of {patch} (e.g. 128x64)"
            )
        grid_h = height // patch
        if parts < 0 or parts > grid_h:
            raise ValueError(f"model.parts={parts}: must lie in 0..{grid_h} (patch rows)")
        spec = VIT_SIZES[size]
        self.vit = VisionTransformer(
            img_size=(height, width), patch_size=patch, embed_dim=spec.embed_dim,
            depth=depth or spec.depth, num_heads=spec.num_heads, num_classes=0,
            global_pool="token", class_token=True,
        )
        self.grid = (grid_h, width // patch)
        self.parts = parts
        self.embed_dim = spec.embed_dim
        self.feat_dim: int = spec.embed_dim * (1 + parts)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS B×D, patch tokens B×N×D) after the final norm; N = grid rows × columns."""
        tokens = self.vit.forward_features(x)
        prefix = self.vit.num_prefix_tokens
        return tokens[:, 0], tokens[:, prefix:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, patches = self.forward_tokens(x)
        if not self.parts:
            return cls
        b, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, *self.grid)
        return torch.cat([cls, stripe_means(grid, self.parts)], dim=1)
