"""A small StarGAN (Choi et al., CVPR 2018) whose domains are one site's cameras.

One generator renders an image as any camera of the site would have seen it: the target
camera's one-hot code is tiled over the image and concatenated to it (3 + C input channels).
The generator is StarGAN's (7×7 conv, two stride-2 convs, residual blocks with instance norm,
two transposed convs, 7×7 conv) at a fraction of the width — ``dim = 16`` and three residual
blocks give 0.3 M parameters instead of 8.4 M — because a site trains it on its own CPU.

One change for short CPU runs: the generator predicts a change of the image, not the image.
Its last convolution starts at zero and its output is ``tanh(atanh(x) + r)``, so an untrained
generator returns its input and training moves away from it only as far as the camera
classifier asks. StarGAN's from-scratch output is noise for thousands of iterations (a 400-
iteration run at 64×32 gave unrecognisable copies); this one degrades to the real image. The PatchGAN discriminator has two heads: real/fake per patch (WGAN critic) and the
camera of the whole image, whose kernel is the size of the last feature map so any input size
whose sides are multiples of 4 works.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATANH_LIMIT = 0.995  # inputs at ±1 would map to ±inf before the change is added


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def check_gan_size(size: tuple[int, int]) -> None:
    """The generator halves the image twice and the discriminator needs a 2×1 map or more."""
    h, w = size
    if h % 4 or w % 4 or min(h, w) < 8:
        raise ValueError(f"image size {h}x{w}: the camera-style GAN needs both sides multiples of 4 "
                         "and at least 8 (e.g. 64x32 or 128x64)")


class CamStyleGenerator(nn.Module):
    """``G(x, camera) -> x'`` with images in [-1, 1] and ``camera`` a [B] index in 0..C-1."""

    def __init__(self, num_cameras: int, dim: int = 16, res_blocks: int = 3) -> None:
        super().__init__()
        if num_cameras < 2:
            raise ValueError(f"num_cameras={num_cameras}: camera-style translation needs a site with "
                             "training images from at least two cameras")
        if dim < 1 or res_blocks < 0:
            raise ValueError(f"dim={dim} must be >= 1 and res_blocks={res_blocks} >= 0")
        self.num_cameras = num_cameras
        layers: list[nn.Module] = [nn.Conv2d(3 + num_cameras, dim, 7, 1, 3, bias=False), _norm(dim),
                                   nn.ReLU(inplace=True)]
        ch = dim
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), _norm(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [_Residual(ch) for _ in range(res_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), _norm(ch // 2),
                       nn.ReLU(inplace=True)]
            ch //= 2
        last = nn.Conv2d(ch, 3, 7, 1, 3, bias=False)
        nn.init.zeros_(last.weight)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        code = nn.functional.one_hot(camera.long(), self.num_cameras).to(x.dtype)
        code = code[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        change = self.net(torch.cat([x, code], dim=1))
        return torch.tanh(torch.atanh(x.clamp(-ATANH_LIMIT, ATANH_LIMIT)) + change)


class CamStyleDiscriminator(nn.Module):
    """``D(x) -> (patch scores [B, 1, h, w], camera logits [B, C])``."""

    def __init__(self, num_cameras: int, image_size: tuple[int, int], dim: int = 16) -> None:
        super().__init__()
        check_gan_size(image_size)
        h, w = image_size
        self.depth = int(math.floor(math.log2(min(h, w) / 2)))  # last map: short side 2..3
        layers: list[nn.Module] = []
        ch_in, ch = 3, dim
        for _ in range(self.depth):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
            ch_in, ch = ch, min(ch * 2, dim * 16)
        self.body = nn.Sequential(*layers)
        fh, fw = h >> self.depth, w >> self.depth
        self.src = nn.Conv2d(ch_in, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(ch_in, num_cameras, (fh, fw), bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.src(h), self.cls(h).flatten(1)
