"""ResNet-18/34/50 backbones from torchvision, with the re-ID "last stride", pooled to B×D."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from fedreid.models.parts import stripe_means

_RESNETS = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}


def set_last_stride(block: nn.Module, stride: int) -> None:
    """Give every stride-2 convolution of ``block`` the stride ``stride`` (1 or 2).

    Re-ID networks keep their last stage at stride 1 (BoT: +0.6 R1 on Market) so a 256×128
    image gives a 16×8 map instead of 8×4. The first block of a stage downsamples in both its
    main path and its shortcut; changing all its stride-2 convs together keeps them aligned.
    """
    if stride not in (1, 2):
        raise ValueError(f"last_stride={stride!r}: must be 1 (re-ID default) or 2 (ImageNet)")
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (stride, stride)


class ResNetBackbone(nn.Module):
    """torchvision ResNet without ``avgpool``/``fc``; ``forward`` returns the pooled feature.

    Submodule names equal torchvision's, so an ImageNet state dict loads as it is (minus fc).
    ``parts`` > 0 appends that many horizontal-stripe means to the global one (PCB-style).
    """

    def __init__(self, arch: str, last_stride: int = 1, parts: int = 0) -> None:
        super().__init__()
        if arch not in _RESNETS:
            raise ValueError(f"arch={arch!r}: not a ResNet; choose one of {sorted(_RESNETS)}")
        net = _RESNETS[arch](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        set_last_stride(self.layer4[0], last_stride)
        self.parts = parts
        self.feat_dim: int = net.fc.in_features * (1 + parts)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The B×C×h×w map of layer4 (h×w = H/16×W/16 at last stride 1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.forward_features(x)
        pooled = fmap.mean(dim=(2, 3))
        return torch.cat([pooled, stripe_means(fmap, self.parts)], dim=1) if self.parts else pooled
