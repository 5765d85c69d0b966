"""Geometry-conditioned attention for aerial-ground re-ID: GIQT rectification and prompts.

GeoReID (Hambarde & Proença 2026; research/methods.md §1) says extreme camera geometry
distorts the query-key similarity of attention, and corrects it with a low-rank,
geometry-conditioned transform of that similarity (GIQT) plus prompts generated from the
geometry. The paper's equations are not public; this is the reconstruction of the notes.
In the last ``blocks`` blocks of a ViT, per head h::

    q̃ = q + ((q U_h) ⊙ φ_h(g)) V_hᵀ      so   q̃ᵀk = qᵀ (I + U_h diag(φ_h(g)) V_hᵀ) k

with U, V ∈ R^{d_h×r}, φ = Linear → GELU → Linear over the geometry code g, and V = 0 at
the start, so the rectified ViT is exactly the plain one until V learns. ``scale`` s
multiplies the V term and the prompt gates' argument (LoRA's α/r): with Adam, whose steps
do not depend on the gradient's size, it is how fast the zero-initialised parts move. Softmax, values and
the block's projections are the ViT's own (GIQT changes the similarity, not the features).

Prompts: an MLP maps g to ``prompts`` tokens that every rectified block's queries also
attend to, as extra keys/values through the block's own projection, with a per-head gate
``tanh(α)`` (α = 0 at the start, zero-initialised gated attention): a view-adaptive prior
that, like the rectifier, adds exactly nothing before training.

Geometry code g (:func:`geometry_code`): altitude/50 m, distance/100 m, pitch/90° and one
"known" flag per value. It comes from the metadata or from a small CNN regressor trained on
the images that have metadata (the heads of the ``aerialgeometry`` package, scaled down:
a few conv layers and an MLP regressing the three values; its pretrained ResNet-50 cannot be
downloaded here). ``source="metadata"`` uses the metadata and, with a regressor, fills the
unknown values with its prediction; ``source="regressor"`` always uses the prediction (a
site that has no metadata at test time). Predictions are detached: the regressor is trained
by its own regression loss only, so its output keeps meaning "geometry".

The timm ``VisionTransformer`` stays ``vit`` with its own keys (timm and fedreid weights
files load; the plain ViT's keys are a subset), the new modules are ``rectifiers.<j>``,
``prompts``, ``prompt_gates`` and ``regressor``: a share rule can keep them on the site.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedreid.models.parts import stripe_means
from fedreid.models.reid_net import ReidNet, ReidOutput
from fedreid.models.vit import ViTBackbone

GEOMETRY_SCALE = (50.0, 100.0, 90.0)  # altitude m, horizontal distance m, pitch degrees -> ~0..1
CODE_DIM = 2 * len(GEOMETRY_SCALE)  # scaled values + known flags
SOURCES = ("metadata", "regressor")


def geometry_code(geometry: torch.Tensor, predicted: torch.Tensor | None = None,
                  *, source: str = "metadata") -> torch.Tensor:
    """B×3 raw geometry (NaN = unknown) → B×6 code: scaled values, then known flags.

    ``predicted`` (B×3, already scaled) fills unknown values (``metadata``) or replaces all
    of them (``regressor``); filled values count as known.
    """
    if source not in SOURCES:
        raise ValueError(f"geometry source {source!r}: choose one of {SOURCES}")
    if geometry.ndim != 2 or geometry.shape[1] != len(GEOMETRY_SCALE):
        raise ValueError(f"geometry must be B×3 (altitude, distance, pitch), got {tuple(geometry.shape)}")
    scale = geometry.new_tensor(GEOMETRY_SCALE)
    known = torch.isfinite(geometry)
    values = torch.where(known, geometry / scale, torch.zeros_like(geometry))
    if predicted is not None:
        predicted = predicted.detach().to(values.dtype)
        values = predicted if source == "regressor" else torch.where(known, values, predicted)
        known = torch.ones_like(known)
    elif source == "regressor":
        raise ValueError("geometry source 'regressor' needs the regressor's prediction")
    return torch.cat([values, known.to(values.dtype)], dim=1)


def geometry_loss(predicted: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the regressor's scaled prediction on the known values only
    (zero, still in the graph, when a batch has none)."""
    target = geometry / geometry.new_tensor(GEOMETRY_SCALE)
    known = torch.isfinite(target)
    if not known.any():
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[known], target[known].to(predicted.dtype))


class GeometryRegressor(nn.Module):
    """Images B×3×H×W → scaled geometry B×3: three strided conv layers, pooling, an MLP."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width // 2, width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels, width), nn.ReLU(inplace=True),
                                  nn.Linear(width, len(GEOMETRY_SCALE)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class QKRectifier(nn.Module):
    """Per-head low-rank, geometry-scaled transform of the queries (see the module docstring)."""

    def __init__(self, num_heads: int, head_dim: int, rank: int, code_dim: int = CODE_DIM,
                 hidden: int = 32, scale: float = 1.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"GIQT rank={rank}: must be >= 1")
        self.num_heads, self.rank, self.scale = num_heads, rank, scale
        self.phi = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, num_heads * rank))
        self.u = nn.Parameter(torch.randn(num_heads, head_dim, rank) / head_dim ** 0.5)
        self.v = nn.Parameter(torch.zeros(num_heads, head_dim, rank))  # zero: starts as the identity

    def forward(self, q: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """q: B×H×N×d_h, code: B×G → rectified queries, same shape."""
        phi = self.phi(code).view(q.shape[0], self.num_heads, 1, self.rank).to(q.dtype)
        low = torch.einsum("bhnd,hdr->bhnr", q, self.u.to(q.dtype)) * phi
        return q + self.scale * torch.einsum("bhnr,hdr->bhnd", low, self.v.to(q.dtype))


class GeometryPrompts(nn.Module):
    """Geometry code B×G → ``num_prompts`` prompt tokens B×P×D."""

    def __init__(self, num_prompts: int, dim: int, code_dim: int = CODE_DIM, hidden: int = 64) -> None:
        super().__init__()
        self.num_prompts, self.dim = num_prompts, dim
        self.mlp = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, num_prompts * dim))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.mlp(code).view(code.shape[0], self.num_prompts, self.dim)


class GeoOutput(NamedTuple):
    """The backbone's feature (B×feat_dim) and the regressor's scaled geometry (or None)."""

    feature: torch.Tensor
    predicted: torch.Tensor | None


def _attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """timm ``Attention``'s own score-softmax-value step (fused or not, as the block is set)."""
    drop = attn.attn_drop.p if attn.training else 0.0
    if attn.fused_attn:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn.attn_drop(weights) @ v


class GIQTViT(nn.Module):
    """A :class:`ViTBackbone`'s transformer whose last ``blocks`` blocks are rectified.

    ``forward(x, geometry)``: ``geometry`` B×3 raw (altitude m, distance m, pitch °; NaN =
    unknown), or None (all unknown: the regressor's prediction where there is one).
    """

    def __init__(self, base: ViTBackbone, *, blocks: int, rank: int, prompts: int,
                 rectify: bool = True, regressor: bool = False, source: str = "metadata",
                 scale: float = 1.0) -> None:
        super().__init__()
        depth = len(base.vit.blocks)
        if not 1 <= blocks <= depth:
            raise ValueError(f"GIQT blocks={blocks}: must lie in 1..{depth} (the ViT's depth)")
        if source not in SOURCES:
            raise ValueError(f"GIQT geometry source {source!r}: choose one of {SOURCES}")
        if source == "regressor" and not regressor:
            raise ValueError("GIQT geometry source 'regressor' needs regressor=true")
        if not rectify and prompts < 1:
            raise ValueError("GIQT with rectify=false and prompts=0 changes nothing; build the plain ViT")
        attn = base.vit.blocks[0].attn
        if getattr(attn, "gate", None) is not None:
            raise ValueError("GIQT supports timm's ungated attention only")
        self.vit = base.vit
        self.grid, self.parts = base.grid, base.parts
        self.embed_dim, self.feat_dim = base.embed_dim, base.feat_dim
        self.first = depth - blocks
        self.source, self.scale = source, scale
        heads, head_dim = attn.num_heads, attn.head_dim
        self.rectifiers = (nn.ModuleList(QKRectifier(heads, head_dim, rank, scale=scale) for _ in range(blocks))
                           if rectify else None)
        self.prompts = GeometryPrompts(prompts, base.embed_dim) if prompts else None
        self.prompt_gates = nn.Parameter(torch.zeros(blocks, heads)) if prompts else None
        self.regressor = GeometryRegressor() if regressor else None

    def code(self, x: torch.Tensor, geometry: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The geometry code of each image and the regressor's prediction (None without one)."""
        if geometry is None:
            geometry = x.new_full((x.shape[0], len(GEOMETRY_SCALE)), float("nan"))
        predicted = self.regressor(x) if self.regressor is not None else None
        return geometry_code(geometry.to(x.dtype), predicted, source=self.source), predicted

    def _block(self, j: int, block: nn.Module, h: torch.Tensor, code: torch.Tensor,
               prompts: torch.Tensor | None) -> torch.Tensor:
        attn = block.attn
        b, n, _ = h.shape
        y = block.norm1(h)
        q, k, v = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if self.rectifiers is not None:
            q = self.rectifiers[j](q, code)
        out = _attention(attn, q, k, v)
        if prompts is not None:
            p = prompts.shape[1]
            _, pk, pv = attn.qkv(block.norm1(prompts)).reshape(
                b, p, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            gate = torch.tanh(self.scale * self.prompt_gates[j]).view(1, -1, 1, 1).to(out.dtype)
            out = out + gate * _attention(attn, q, attn.k_norm(pk), pv)
        out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, n, -1))))
        h = h + block.drop_path1(block.ls1(out))
        return h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))

    def forward_geo(self, x: torch.Tensor, geometry: torch.Tensor | None = None) -> GeoOutput:
        vit = self.vit
        code, predicted = self.code(x, geometry)
        prompts = self.prompts(code).to(x.dtype) if self.prompts is not None else None
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for i, block in enumerate(vit.blocks):
            h = block(h) if i < self.first else self._block(i - self.first, block, h, code, prompts)
        tokens = vit.norm(h)
        cls, patches = tokens[:, 0], tokens[:, vit.num_prefix_tokens:]
        if not self.parts:
            return GeoOutput(cls, predicted)
        b, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, *self.grid)
        return GeoOutput(torch.cat([cls, stripe_means(grid, self.parts)], dim=1), predicted)

    def forward(self, x: torch.Tensor, geometry: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_geo(x, geometry).feature


class GIQTReidNet(ReidNet):
    """:class:`ReidNet` whose backbone takes geometry: ``model(x, geometry)``;
    ``forward_train`` also returns the regressor's prediction for its loss."""

    backbone: GIQTViT

    def __init__(self, backbone: GIQTViT, neck: nn.Module, feat_norm: bool = True) -> None:
        super().__init__(backbone, neck="none", feat_norm=feat_norm)
        self.neck = neck

    def forward_train(self, x: torch.Tensor, geometry: torch.Tensor | None = None
                      ) -> tuple[ReidOutput, torch.Tensor | None]:
        out = self.backbone.forward_geo(x, geometry)
        return ReidOutput(out.feature, self.neck(out.feature)), out.predicted

    def forward(self, x: torch.Tensor, geometry: torch.Tensor | None = None) -> ReidOutput | torch.Tensor:
        feature = self.backbone(x, geometry)
        bn_feat = self.neck(feature)
        if self.training:
            return ReidOutput(feature, bn_feat)
        return F.normalize(bn_feat, dim=1) if self.feat_norm else bn_feat


def with_giqt(model: ReidNet, *, blocks: int, rank: int, prompts: int, rectify: bool = True,
              regressor: bool = False, source: str = "metadata", scale: float = 1.0) -> GIQTReidNet:
    """``model`` (a ViT :class:`ReidNet` of the registry) with GIQT in its last ``blocks``
    blocks; its weights and neck are kept (the same modules, not copies)."""
    if not isinstance(model.backbone, ViTBackbone):
        raise ValueError(
            f"GIQT rectifies ViT attention, but the backbone is {type(model.backbone).__name__}; "
            "set model.arch to a ViT (vit_tiny_p16, vit_tiny_p8, vit_small_p16, vit_small_p8)"
        )
    backbone = GIQTViT(model.backbone, blocks=blocks, rank=rank, prompts=prompts, rectify=rectify,
                       regressor=regressor, source=source, scale=scale)
    return GIQTReidNet(backbone, model.neck, feat_norm=model.feat_norm)
