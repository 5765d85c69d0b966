"""The re-ID network (backbone + neck) and the backbone registry.

What a federation shares is not decided here: a client method names the keys it shares
(:meth:`fedreid.methods.ReidMethod.shared_keys`, rules in :mod:`fedreid.models.sharing`).
Training-only modules (identity classifiers, centres, proxy memories) are never part of a
:class:`ReidNet`; the method holds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from fedreid.models.bnneck import BNNeck
from fedreid.models.mobilenet import MobileNetV2Backbone
from fedreid.models.resnet import ResNetBackbone
from fedreid.models.vit import ViTBackbone

NECKS = ("bnneck", "none")


class ReidOutput(NamedTuple):
    """Train-mode output: ``global_feat`` (before BN) for triplet/center losses, ``bn_feat``
    (after BN, not normalised) for the classifier and proxy memories."""

    global_feat: torch.Tensor
    bn_feat: torch.Tensor


class ReidNet(nn.Module):
    """Backbone (anything mapping images to B×D with a ``feat_dim`` attribute) + neck.

    Train mode returns :class:`ReidOutput`; eval mode returns the BN feature, L2-normalised
    when ``feat_norm`` (cosine retrieval, as BoT's ``NECK_FEAT=after, FEAT_NORM=yes``).
    ``neck="none"`` skips the BN (``bn_feat`` is then the pooled feature itself).
    """

    def __init__(self, backbone: nn.Module, neck: str = "bnneck", feat_norm: bool = True) -> None:
        super().__init__()
        feat_dim = getattr(backbone, "feat_dim", None)
        if not isinstance(feat_dim, int) or feat_dim < 1:
            raise ValueError(
                f"backbone {type(backbone).__name__} has feat_dim={feat_dim!r}: a backbone "
                "must set an int attribute feat_dim, the width of its B×D output"
            )
        if neck not in NECKS:
            raise ValueError(f"neck={neck!r}: choose one of {list(NECKS)}")
        self.backbone = backbone
        self.neck: nn.Module = BNNeck(feat_dim) if neck == "bnneck" else nn.Identity()
        self.feat_dim: int = feat_dim
        self.feat_norm = feat_norm

    def forward(self, x: torch.Tensor) -> ReidOutput | torch.Tensor:
        global_feat = self.backbone(x)
        bn_feat = self.neck(global_feat)
        if self.training:
            return ReidOutput(global_feat, bn_feat)
        return F.normalize(bn_feat, dim=1) if self.feat_norm else bn_feat


@dataclass(frozen=True)
class BackboneOptions:
    """What every backbone factory receives: the input size and the re-ID options.

    ``last_stride`` applies to CNNs; ``depth`` (0 = standard) to ViTs; ``parts`` (0 = the
    global feature only) adds horizontal-stripe features to either family.
    """

    image_size: tuple[int, int] = (128, 64)
    last_stride: int = 1
    parts: int = 0
    depth: int = 0


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build a backbone and which files fit it.

    ``factory(options)`` returns the backbone; ``imagenet`` is the torchvision weights enum for
    ``weights="imagenet"``; ``head_prefixes`` are the ImageNet classifier keys that a
    torchvision state dict has and the backbone does not (they are dropped when loading);
    ``family`` ("cnn" or "vit") tells weight loaders which file layout to expect.
    """

    factory: Callable[[BackboneOptions], nn.Module]
    imagenet: WeightsEnum | None = None
    head_prefixes: tuple[str, ...] = ()
    family: str = "cnn"


def _resnet(arch: str, o: BackboneOptions) -> nn.Module:
    return ResNetBackbone(arch, last_stride=o.last_stride, parts=o.parts)


def _mobilenet(o: BackboneOptions) -> nn.Module:
    return MobileNetV2Backbone(last_stride=o.last_stride, parts=o.parts)


def _vit(size: str, patch: int, o: BackboneOptions) -> nn.Module:
    return ViTBackbone(size, patch, o.image_size, parts=o.parts, depth=o.depth)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(partial(_resnet, "resnet18"), models.ResNet18_Weights.IMAGENET1K_V1, ("fc.",)),
    "resnet34": BackboneSpec(partial(_resnet, "resnet34"), models.ResNet34_Weights.IMAGENET1K_V1, ("fc.",)),
    "resnet50": BackboneSpec(partial(_resnet, "resnet50"), models.ResNet50_Weights.IMAGENET1K_V1, ("fc.",)),
    "mobilenet_v2": BackboneSpec(_mobilenet, models.MobileNet_V2_Weights.IMAGENET1K_V1, ("classifier.",)),
    "vit_tiny_p16": BackboneSpec(partial(_vit, "tiny", 16), head_prefixes=("head.",), family="vit"),
    "vit_tiny_p8": BackboneSpec(partial(_vit, "tiny", 8), head_prefixes=("head.",), family="vit"),
    "vit_small_p16": BackboneSpec(partial(_vit, "small", 16), head_prefixes=("head.",), family="vit"),
    "vit_small_p8": BackboneSpec(partial(_vit, "small", 8), head_prefixes=("head.",), family="vit"),
}


def backbone_spec(arch: str) -> BackboneSpec:
    """The registry entry of ``arch``, or a ValueError listing the known ones."""
    if arch not in BACKBONES:
        raise ValueError(f"model.arch={arch!r}: choose one of {sorted(BACKBONES)}")
    return BACKBONES[arch]
