"""MobileNetV2 backbone (torchvision ``features``, 1280-d), pooled to B×D."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from fedreid.models.parts import stripe_means
from fedreid.models.resnet import set_last_stride


def _downsamples(block: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in block.modules())


class MobileNetV2Backbone(nn.Module):
    """torchvision ``mobilenet_v2().features`` + global average pooling; no classifier.

    ``last_stride`` applies to the last downsampling block (``features.14``), as for ResNet, so
    both families give an H/16×W/16 map by default. Keys are ``features.*`` like torchvision's.
    """

    def __init__(self, last_stride: int = 1, parts: int = 0) -> None:
        super().__init__()
        net = models.mobilenet_v2(weights=None)
        self.features = net.features
        set_last_stride([b for b in self.features if _downsamples(b)][-1], last_stride)
        self.parts = parts
        self.feat_dim: int = net.last_channel * (1 + parts)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.forward_features(x)
        pooled = fmap.mean(dim=(2, 3))
        return torch.cat([pooled, stripe_means(fmap, self.parts)], dim=1) if self.parts else pooled
