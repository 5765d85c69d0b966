"""The re-ID network (backbone + neck), the backbone registry and the shared/private split.

What a federation shares is decided by key name alone: every parameter and buffer of a
:class:`ReidNet` is shared, except anything registered under the ``private`` prefix. Site
state that must never leave the site (identity classifiers, proxy/camera memories, centres)
is therefore private by construction: a method either keeps it outside the model (e.g. an
:class:`~fedreid.models.bnneck.IdentityHead` held by the method) or attaches it as
``model.private = nn.ModuleDict({...})`` so it is saved with the model but never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

PRIVATE_PREFIX = "private"
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
class BackboneSpec:
    """One registry entry: how to build a backbone and which files fit it.

    ``factory(last_stride=...)`` returns the backbone; ``imagenet`` is the torchvision weights
    enum for ``weights="imagenet"``; ``head_prefixes`` are the ImageNet classifier keys that a
    torchvision state dict has and the backbone does not (they are dropped when loading).
    """

    factory: Callable[..., nn.Module]
    imagenet: WeightsEnum | None = None
    head_prefixes: tuple[str, ...] = ()


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        partial(ResNetBackbone, "resnet18"), models.ResNet18_Weights.IMAGENET1K_V1, ("fc.",)
    ),
    "resnet34": BackboneSpec(
        partial(ResNetBackbone, "resnet34"), models.ResNet34_Weights.IMAGENET1K_V1, ("fc.",)
    ),
    "resnet50": BackboneSpec(
        partial(ResNetBackbone, "resnet50"), models.ResNet50_Weights.IMAGENET1K_V1, ("fc.",)
    ),
    "mobilenet_v2": BackboneSpec(
        MobileNetV2Backbone, models.MobileNet_V2_Weights.IMAGENET1K_V1, ("classifier.",)
    ),
}


def backbone_spec(arch: str) -> BackboneSpec:
    """The registry entry of ``arch``, or a ValueError listing the known ones."""
    if arch not in BACKBONES:
        raise ValueError(f"model.arch={arch!r}: choose one of {sorted(BACKBONES)}")
    return BACKBONES[arch]


def is_shared_key(name: str) -> bool:
    """True when a state-dict key is sent to the server: everything not under ``private``."""
    return name.split(".", 1)[0] != PRIVATE_PREFIX


def shared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the shared parameters and buffers (``num_batches_tracked`` included).

    Copies, so that a snapshot kept as "the global model" is not changed by later training.
    """
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_shared_key(k)}


def load_shared_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load shared state into ``model``, leaving its private part untouched.

    ``strict``: every shared key of the model must be given and nothing else. Otherwise the
    given keys that the model has are loaded and (missing, unexpected) key lists are returned.
    A private key in ``state`` or a shape mismatch is always an error.
    """
    own = {k: v for k, v in model.state_dict().items() if is_shared_key(k)}
    private = sorted(k for k in state if not is_shared_key(k))
    if private:
        raise ValueError(f"shared state holds private keys {private[:5]}: they must never be sent")
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if strict and (missing or unexpected):
        raise ValueError(
            f"shared state does not fit {type(model).__name__}: missing {len(missing)} keys "
            f"{missing[:5]}, unexpected {len(unexpected)} keys {unexpected[:5]} "
            "(different arch or neck?); pass strict=False to load the overlap"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"shared state has {len(bad)} shape mismatches, e.g. {bad[:3]}")
    model.load_state_dict({k: state[k] for k in own.keys() & state.keys()}, strict=False)
    return missing, unexpected
