"""A tracklet encoder for video visible-infrared re-ID (LSMRL-lite, research/methods.md §4).

One ViT encodes the frames of both modalities (shared weights) with a learned modality
embedding added to every token. Its blocks are split as the notes' STFL-lite:

- all but the last two blocks attend within a frame (spatial);
- the second-to-last block attends jointly over the tokens of ``group`` consecutive frames
  (the "spatial-temporal grouped encoder");
- the last block is a temporal patch shift (TPS): before attention a fixed quarter of the
  patch positions takes its token from frame t−1 and another quarter from frame t+1, so
  attention mixes time at no extra cost; the tokens are shifted back afterwards.

With ``temporal=False`` every block is spatial (the per-frame baseline). Then the frames'
CLS tokens attend, with a residual, to ``semantic_tokens`` learnable tokens shared by both
modalities (the "semantic diffusion" of LSMRL, whose prompts come from CLIP's text encoder:
CLIP weights cannot be downloaded here, so the shared tokens are learned from scratch), and
the sequence feature is the mean over frames. ``interact`` is the training-time cross-modal
interaction: each visible sequence attends to the batch's infrared sequences and the other
way round (bidirectional cross-attention, residual).

Input: S×T×3×H×W (S sequences of T frames) and S modality ids (0 visible, 1 infrared).
Keys: the ViT keeps timm's keys under ``backbone.vit``; the rest is ``backbone.modality``,
``backbone.semantic*``, ``backbone.interaction*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedreid.models.reid_net import ReidNet, ReidOutput
from fedreid.models.vit import ViTBackbone


def patch_shift(tokens: torch.Tensor, back: bool = False) -> torch.Tensor:
    """TPS on S×T×N×D patch tokens: positions p ≡ 0 (mod 4) take frame t−1's token, p ≡ 1
    (mod 4) frame t+1's (cyclic in time); ``back`` undoes it. The rest stay."""
    out = tokens.clone()
    sign = -1 if back else 1
    out[:, :, 0::4] = torch.roll(tokens[:, :, 0::4], shifts=sign, dims=1)
    out[:, :, 1::4] = torch.roll(tokens[:, :, 1::4], shifts=-sign, dims=1)
    return out


class SequenceViT(nn.Module):
    """The tracklet encoder described in the module docstring: S×T×3×H×W, S → S×D."""

    def __init__(self, base: ViTBackbone, *, temporal: bool = True, group: int = 2,
                 semantic_tokens: int = 4, interaction: bool = True, heads: int = 4) -> None:
        super().__init__()
        depth = len(base.vit.blocks)
        if temporal and depth < 3:
            raise ValueError(
                f"the spatial-temporal module needs a ViT of at least 3 blocks (1 spatial, 1 grouped, "
                f"1 patch-shift), got {depth}; raise model.vit_depth or set temporal=false"
            )
        if group < 1:
            raise ValueError(f"temporal group={group}: must be >= 1 frames")
        dim = base.embed_dim
        if base.parts:
            raise ValueError("the sequence encoder pools the CLS token; set model.parts=0")
        self.vit = base.vit
        self.embed_dim = self.feat_dim = dim
        self.temporal, self.group = temporal, group
        self.modality = nn.Parameter(torch.zeros(2, dim))  # zero: both modalities start alike
        self.semantic = nn.Parameter(torch.randn(semantic_tokens, dim) * 0.02) if semantic_tokens else None
        self.semantic_norm = nn.LayerNorm(dim) if semantic_tokens else None
        self.semantic_attn = nn.MultiheadAttention(dim, heads, batch_first=True) if semantic_tokens else None
        self.interaction_norm = nn.LayerNorm(dim) if interaction else None
        self.interaction = nn.MultiheadAttention(dim, heads, batch_first=True) if interaction else None

    def _blocks(self, h: torch.Tensor, s: int, t: int) -> torch.Tensor:
        """Run the ViT's blocks on (S·T)×(1+N)×D tokens, spatial then grouped then shifted."""
        blocks = self.vit.blocks
        spatial = len(blocks) - 2 if self.temporal else len(blocks)
        for block in blocks[:spatial]:
            h = block(h)
        if not self.temporal:
            return h
        n, d = h.shape[1], h.shape[2]
        if t % self.group:
            raise ValueError(f"sequence length {t} is not a multiple of the temporal group {self.group}")
        g = self.group
        h = blocks[-2](h.reshape(s * t // g, g * n, d)).reshape(s * t, n, d)
        prefix = self.vit.num_prefix_tokens
        seq = h.reshape(s, t, n, d)
        shifted = torch.cat([seq[:, :, :prefix], patch_shift(seq[:, :, prefix:])], dim=2)
        out = blocks[-1](shifted.reshape(s * t, n, d)).reshape(s, t, n, d)
        out = torch.cat([out[:, :, :prefix], patch_shift(out[:, :, prefix:], back=True)], dim=2)
        return out.reshape(s * t, n, d)

    def frame_features(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """S×T×3×H×W, S → S×T×D: each frame's CLS token after the shared tokens."""
        if x.dim() != 5:
            raise ValueError(f"sequences must be S×T×3×H×W, got {tuple(x.shape)}")
        s, t = x.shape[:2]
        vit = self.vit
        h = vit._pos_embed(vit.patch_embed(x.flatten(0, 1)))
        h = h + self.modality[modality.long()].repeat_interleave(t, dim=0)[:, None, :].to(h.dtype)
        h = self._blocks(vit.norm_pre(vit.patch_drop(h)), s, t)
        cls = vit.norm(h)[:, 0]
        if self.semantic is not None:
            q = self.semantic_norm(cls)[:, None, :]
            tokens = self.semantic.to(cls.dtype).expand(cls.shape[0], -1, -1)
            cls = cls + self.semantic_attn(q, tokens, tokens, need_weights=False)[0][:, 0]
        return cls.reshape(s, t, -1)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.frame_features(x, modality).mean(dim=1)  # temporal pooling

    def interact(self, feats: torch.Tensor, modality: torch.Tensor) -> torch.Tensor | None:
        """Each sequence feature refined by attending to the other modality's sequences in the
        batch (S×D); None without the module or when a modality is missing."""
        if self.interaction is None:
            return None
        vis, ir = modality == 0, modality == 1
        if not vis.any() or not ir.any():
            return None
        z = self.interaction_norm(feats)
        out = feats.clone()
        for mine, other in ((vis, ir), (ir, vis)):
            kv = z[other][None]
            out[mine] = feats[mine] + self.interaction(z[mine][None], kv, kv, need_weights=False)[0][0]
        return out


class SequenceReidNet(ReidNet):
    """:class:`ReidNet` over tracklets: ``model(x, modality)`` with x S×T×3×H×W."""

    backbone: SequenceViT

    def __init__(self, backbone: SequenceViT, neck: nn.Module, feat_norm: bool = True) -> None:
        super().__init__(backbone, neck="none", feat_norm=feat_norm)
        self.neck = neck

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> ReidOutput | torch.Tensor:
        feature = self.backbone(x, modality)
        bn_feat = self.neck(feature)
        if self.training:
            return ReidOutput(feature, bn_feat)
        return F.normalize(bn_feat, dim=1) if self.feat_norm else bn_feat


def as_sequence_model(model: ReidNet, **options) -> SequenceReidNet:
    """``model`` (a ViT :class:`ReidNet` of the registry) as a tracklet encoder; its weights
    and neck are kept (the same modules, not copies). ``options`` go to :class:`SequenceViT`."""
    if not isinstance(model.backbone, ViTBackbone):
        raise ValueError(
            f"the sequence encoder is a ViT, but the backbone is {type(model.backbone).__name__}; "
            "set model.arch to a ViT (vit_tiny_p16, vit_tiny_p8, vit_small_p16, vit_small_p8)"
        )
    return SequenceReidNet(SequenceViT(model.backbone, **options), model.neck, feat_norm=model.feat_norm)
