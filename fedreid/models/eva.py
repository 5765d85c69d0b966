"""EVA-02 backbones (timm ``Eva``) sized for re-ID crops and a 2-core CPU.

ECHO-BID fine-tunes EVA-02 Large (~300 M parameters, weights from a model hub); neither fits
here, so the same architecture is built small: EVA-02's blocks (SwiGLU MLP, rotary position
embedding, absolute position embedding, CLS token) at tiny (192 wide, 3 heads) or small
(384, 6 heads) width, patch 8 or 16 on the run's input size, ``depth`` blocks. It starts
from random weights (then a masked-image-modelling pre-pass on the site's own images gives
it its head start, :mod:`fedreid.methods.echo.mim`) or from a local timm EVA-02 state dict
(``model.weights=/path/file``: position embedding resampled to the grid, head dropped).

``forward_tokens(x, mask)`` replaces the patch tokens where ``mask`` is true by a given mask
token before the blocks — what masked-image modelling needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class EvaSize:
    embed_dim: int
    num_heads: int


EVA_SIZES = {"tiny": EvaSize(192, 3), "small": EvaSize(384, 6)}
EVA_ARCHS = {"eva02_tiny_p8": ("tiny", 8), "eva02_tiny_p16": ("tiny", 16),
             "eva02_small_p8": ("small", 8), "eva02_small_p16": ("small", 16)}


class EvaBackbone(nn.Module):
    """timm ``Eva`` (EVA-02 settings) without a classifier: B×3×H×W → B×D (the CLS token)."""

    def __init__(self, arch: str, image_size: tuple[int, int], depth: int = 0) -> None:
        super().__init__()
        from timm.models.eva import Eva

        if arch not in EVA_ARCHS:
            raise ValueError(f"EVA-02 arch {arch!r}: choose one of {sorted(EVA_ARCHS)}")
        size, patch = EVA_ARCHS[arch]
        height, width = image_size
        if height % patch or width % patch:
            raise ValueError(f"input {height}x{width} is not a multiple of the EVA-02 patch {patch}; "
                             f"set data.height/data.width to multiples of {patch}")
        spec = EVA_SIZES[size]
        self.eva = Eva(
            img_size=(height, width), patch_size=patch, embed_dim=spec.embed_dim, depth=depth or 12,
            num_heads=spec.num_heads, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
            ref_feat_shape=(16, 16), num_classes=0, global_pool="token",
        )
        self.patch = patch
        self.grid = (height // patch, width // patch)
        self.embed_dim = self.feat_dim = spec.embed_dim

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """All output tokens B×(1+N)×D; patch tokens where ``mask`` (B×N bool) is true enter
        the blocks as ``mask_token`` (D)."""
        eva = self.eva
        h = eva.patch_embed(x)
        if mask is not None:
            if mask_token is None or mask.shape != h.shape[:2]:
                raise ValueError(f"mask must be B×N={tuple(h.shape[:2])} with a mask token, got "
                                 f"{None if mask is None else tuple(mask.shape)}")
            h = torch.where(mask[..., None], mask_token.to(h.dtype), h)
        h, rope = eva._pos_embed(h)
        h = eva.norm_pre(h)
        for block in eva.blocks:
            h = block(h, rope=rope)
        return eva.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]


def load_eva_file(backbone: EvaBackbone, path: str | Path) -> None:
    """Load a timm EVA-02 state dict (optionally under ``model``/``state_dict``) into
    ``backbone``: the head is dropped, the absolute position embedding resampled to the
    backbone's grid; any other missing, extra or misshaped key is an error naming it."""
    from timm.layers import resample_abs_pos_embed

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"model.weights={str(path)!r}: no such file; pass a timm EVA-02 state dict "
                         "(e.g. eva02_tiny_patch14_224 .pth/.bin) or model.weights=none")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k[len("eva."):] if k.startswith("eva.") else k: v for k, v in state.items()
             if not k.startswith(("head.", "fc_norm."))}
    own = backbone.eva.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(backbone.grid),
                                                    num_prefix_tokens=1)
    if "patch_embed.proj.weight" in state and state["patch_embed.proj.weight"].shape != own["patch_embed.proj.weight"].shape:
        state["patch_embed.proj.weight"] = nn.functional.interpolate(
            state["patch_embed.proj.weight"].float(), size=(backbone.patch, backbone.patch), mode="bicubic")
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    bad = [k for k in sorted(own.keys() & state.keys()) if own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{path} does not fit the EVA-02 backbone: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatch {bad[:5]} (another size or depth? set "
                         "model.vit_depth to the file's depth)")
    backbone.eva.load_state_dict(state)
