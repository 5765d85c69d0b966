"""Attribute experts for a ViT: a residual mixture of low-rank (LoRA) experts, gated per image.

MoSAIC-ReID (research/methods.md §3) ties one LoRA expert to one binary attribute value and
adds the experts, as a residual, to the output of the ViT's last blocks::

    h ← Block(h) + s · Σ_a g_a · B_a A_a LN(h)        (h: the block's input tokens)

``A_a`` (r×D) starts Kaiming-uniform and ``B_a`` (D×r) at zero, so a new expert adds exactly
nothing and the network starts as the plain ViT; a gate ``g_a = 0`` multiplies expert ``a``'s
low-rank code by zero, so it then adds exactly nothing whatever its weights (the knock-out of
the attribute analysis). Gates come from the identity's attribute labels (the oracle router)
or from a learned attribute head on the CLS token entering the first expert block, whose
sigmoid probabilities gate the experts (the deployable router).

The timm ``VisionTransformer`` is kept as ``vit`` with its own keys, so timm and fedreid
weights files still load; experts are ``experts.<i>`` and the head ``router``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from fedreid.models.parts import stripe_means
from fedreid.models.reid_net import ReidNet, ReidOutput
from fedreid.models.vit import ViTBackbone


class LoRAExperts(nn.Module):
    """``num_experts`` rank-``rank`` experts over ``dim``-wide tokens: B×N×D, B×E → B×N×D."""

    def __init__(self, dim: int, num_experts: int, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        if num_experts < 1 or rank < 1:
            raise ValueError(f"LoRA experts need num_experts >= 1 and rank >= 1, got {num_experts}, {rank}")
        self.scale = scale
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Parameter(torch.empty(num_experts, rank, dim))  # A_a
        self.up = nn.Parameter(torch.zeros(num_experts, dim, rank))  # B_a: zero, so experts start inert
        for a in range(num_experts):
            nn.init.kaiming_uniform_(self.down.data[a], a=math.sqrt(5))  # LoRA's (nn.Linear's) init

    @property
    def num_experts(self) -> int:
        return self.down.shape[0]

    def forward(self, tokens: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        if gates.shape != (tokens.shape[0], self.num_experts):
            raise ValueError(f"gates must be B×{self.num_experts} (one per expert), got {tuple(gates.shape)}")
        code = torch.einsum("bnd,erd->bner", self.norm(tokens), self.down)
        code = code * gates.to(code.dtype)[:, None, :, None]  # a gate of 0 zeroes its expert's code
        return self.scale * torch.einsum("bner,edr->bnd", code, self.up)


class AttributeRouter(nn.Module):
    """The deployable router: attribute logits (B×E) from a CLS token."""

    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_experts)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(cls))


class GatedOutput(NamedTuple):
    """The backbone's feature (B×feat_dim) and the router's logits (None with the oracle)."""

    feature: torch.Tensor
    router_logits: torch.Tensor | None


class ExpertViT(nn.Module):
    """A :class:`ViTBackbone`'s transformer with attribute experts on its last ``blocks`` blocks.

    ``forward(x, gates, keep)``: ``gates`` (B×E) are the oracle's gates; without them the
    learned router's probabilities gate the experts, and with neither every expert is off
    (the plain ViT). ``keep`` (E, 0/1) multiplies the gates: the knock-out of the analysis.
    """

    def __init__(self, base: ViTBackbone, num_experts: int, rank: int, blocks: int,
                 *, scale: float = 1.0, router: bool = False) -> None:
        super().__init__()
        depth = len(base.vit.blocks)
        if not 1 <= blocks <= depth:
            raise ValueError(f"expert blocks={blocks}: must lie in 1..{depth} (the ViT's depth)")
        if router and blocks == depth:
            raise ValueError(
                f"a learned router reads the CLS token entering the first expert block; with experts "
                f"on all {depth} blocks it would see no block's output; use fewer expert blocks"
            )
        self.vit = base.vit
        self.grid, self.parts = base.grid, base.parts
        self.embed_dim, self.feat_dim = base.embed_dim, base.feat_dim
        self.num_experts = num_experts
        self.first_expert_block = depth - blocks
        self.experts = nn.ModuleList(
            LoRAExperts(base.embed_dim, num_experts, rank, scale) for _ in range(blocks))
        self.router = AttributeRouter(base.embed_dim, num_experts) if router else None

    def forward_gated(self, x: torch.Tensor, gates: torch.Tensor | None = None,
                      keep: torch.Tensor | None = None) -> GatedOutput:
        vit = self.vit
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        logits = None
        for i, block in enumerate(vit.blocks):
            j = i - self.first_expert_block
            if j < 0:
                h = block(h)
                continue
            if j == 0:
                if self.router is not None:
                    logits = self.router(h[:, 0])
                # Router probabilities are detached: the router stays an attribute predictor
                # (trained by BCE alone), so its gates mean what the oracle's mean.
                gates = self._gates(h, gates, logits, keep)
            h = block(h) + self.experts[j](h, gates)
        tokens = vit.norm(h)
        cls, patches = tokens[:, 0], tokens[:, vit.num_prefix_tokens:]
        if not self.parts:
            return GatedOutput(cls, logits)
        b, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, *self.grid)
        return GatedOutput(torch.cat([cls, stripe_means(grid, self.parts)], dim=1), logits)

    def _gates(self, h: torch.Tensor, gates: torch.Tensor | None, logits: torch.Tensor | None,
               keep: torch.Tensor | None) -> torch.Tensor:
        if gates is None:
            gates = (torch.sigmoid(logits.detach()) if logits is not None
                     else h.new_zeros(h.shape[0], self.num_experts))
        gates = gates.to(h.dtype)
        return gates if keep is None else gates * keep.to(gates)

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_gated(x, gates, keep).feature


class ExpertReidNet(ReidNet):
    """:class:`ReidNet` whose backbone takes gates: ``model(x, gates, keep)``; ``forward_train``
    also returns the router's logits for its BCE."""

    backbone: ExpertViT

    def __init__(self, backbone: ExpertViT, neck: nn.Module, feat_norm: bool = True) -> None:
        super().__init__(backbone, neck="none", feat_norm=feat_norm)
        self.neck = neck

    def forward_train(self, x: torch.Tensor, gates: torch.Tensor | None = None
                      ) -> tuple[ReidOutput, torch.Tensor | None]:
        out = self.backbone.forward_gated(x, gates)
        return ReidOutput(out.feature, self.neck(out.feature)), out.router_logits

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> ReidOutput | torch.Tensor:
        feature = self.backbone(x, gates, keep)
        bn_feat = self.neck(feature)
        if self.training:
            return ReidOutput(feature, bn_feat)
        return nn.functional.normalize(bn_feat, dim=1) if self.feat_norm else bn_feat


def with_experts(model: ReidNet, num_experts: int, rank: int, blocks: int, *, scale: float = 1.0,
                 router: bool = False) -> ExpertReidNet:
    """``model`` (a ViT :class:`ReidNet` of the registry) with attribute experts; its weights
    and neck are kept (the same modules, not copies)."""
    if not isinstance(model.backbone, ViTBackbone):
        raise ValueError(
            f"attribute experts go into ViT blocks, but the backbone is {type(model.backbone).__name__}; "
            "set model.arch to a ViT (vit_tiny_p16, vit_tiny_p8, vit_small_p16, vit_small_p8)"
        )
    backbone = ExpertViT(model.backbone, num_experts, rank, blocks, scale=scale, router=router)
    return ExpertReidNet(backbone, model.neck, feat_norm=model.feat_norm)
