"""Cross-site camera style without images: per-camera low-frequency amplitude spectra.

An unlabelled site can tell labelled sites what its cameras "look like" without sending a
single image: for each camera, the mean over at least ``min_images`` of its images of the
Fourier amplitude spectrum, kept only at the lowest frequencies (``band`` = (4, 2): up to 4
cycles per image height and 2 per width, a 9×5 window per colour channel — 135 numbers, where
one 64×32 image has 6,144). The low-frequency amplitude is what FDA (Yang & Soatto, CVPR 2020)
and FedDG call "style": overall colour (the zero frequency is the mean colour), illumination
gradients, contrast of large regions. It carries no phase, so no arrangement of anything in
any image: shifting every image changes nothing in it, and an average over many images
cannot be turned back into one of them.

A labelled site renders its images in a received style with FDA's training-free swap: keep
each image's phase and its amplitude outside the band, replace (``strength`` = 1) or blend
the band's amplitude with the aggregate's.

The message of a site (:func:`site_style_message`) is a flat ``{name: array}`` dict, the shape
of a Flower ``ArrayRecord``: ``cam<k>.amplitude`` (float32 [3, 2·by+1, 2·bx+1], amplitudes
divided by H·W so sites with other image sizes agree) and ``cam<k>.count`` (int64 scalar, the
number of images averaged). Cameras with fewer than ``min_images`` images are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

DEFAULT_BAND = (4, 2)
STATS = ("amplitude", "count")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor [N, 3, H, W], got {shape}")


def _window(size: tuple[int, int], band: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the centred (fftshift-ed) spectrum inside ``band``."""
    h, w = size
    by, bx = band
    if by < 0 or bx < 0 or 2 * by + 1 > h or 2 * bx + 1 > w:
        raise ValueError(f"band={band} does not fit {h}x{w} images: it needs 0 <= by, bx and "
                         f"2·by+1 <= H, 2·bx+1 <= W")
    cy, cx = h // 2, w // 2
    return slice(cy - by, cy + by + 1), slice(cx - bx, cx + bx + 1)


def _spectrum(images: torch.Tensor) -> torch.Tensor:
    """Centred complex spectrum of float images, divided by H·W."""
    h, w = images.shape[2:]
    return torch.fft.fftshift(torch.fft.fft2(images.double() / 255.0), dim=(-2, -1)) / (h * w)


def style_aggregate(images: torch.Tensor, min_images: int,
                    band: tuple[int, int] = DEFAULT_BAND) -> dict[str, np.ndarray]:
    """The style of one camera: mean low-frequency amplitude of ``images`` (uint8 [N, 3, H, W]).

    Refuses fewer than ``min_images`` images (at least 2): an aggregate of one image would
    be that image's spectrum.
    """
    _check_images(images)
    if min_images < 2:
        raise ValueError(f"min_images={min_images}: a style aggregate must average at least 2 images "
                         "(the operator guide, 'What leaves a site', suggests 50)")
    if len(images) < min_images:
        raise ValueError(f"{len(images)} images are fewer than min_images={min_images}; a camera "
                         "with fewer images is not shared")
    rows, cols = _window(tuple(images.shape[2:]), band)
    amplitude = _spectrum(images)[:, :, rows, cols].abs().mean(dim=0)
    return {"amplitude": amplitude.float().numpy(), "count": np.array(len(images), dtype=np.int64)}


def site_style_message(images: torch.Tensor, camids: np.ndarray, min_images: int,
                       band: tuple[int, int] = DEFAULT_BAND) -> dict[str, np.ndarray]:
    """Every camera's aggregate with ``min_images`` or more images, as ``cam<k>.<stat>``."""
    _check_images(images)
    camids = np.asarray(camids)
    if camids.shape != (len(images),):
        raise ValueError(f"camids must have one entry per image ({len(images)}), got {camids.shape}")
    message: dict[str, np.ndarray] = {}
    for cam in sorted({int(c) for c in camids}):
        rows = np.flatnonzero(camids == cam)
        if len(rows) >= min_images:
            agg = style_aggregate(images[torch.from_numpy(rows)], min_images, band)
            message.update({f"cam{cam}.{k}": v for k, v in agg.items()})
    return message


@dataclass(frozen=True)
class StyleAggregate:
    """One received camera style: ``name`` is its message prefix (e.g. ``prid.cam1``)."""

    name: str
    amplitude: np.ndarray
    count: int


def style_bank(message: Mapping[str, np.ndarray]) -> list[StyleAggregate]:
    """Parse a (relayed) message into styles: keys ``<prefix>.amplitude`` and ``<prefix>.count``
    with any prefix (``cam2``, ``prid.cam2``). Malformed entries raise ValueError."""
    prefixes = sorted({key.rsplit(".", 1)[0] for key in message})
    bank = []
    for prefix in prefixes:
        missing = [s for s in STATS if f"{prefix}.{s}" not in message]
        extra = sorted(k for k in message if k.startswith(prefix + ".") and k.rsplit(".", 1)[1] not in STATS)
        if missing or extra:
            raise ValueError(f"style message entry {prefix!r}: missing {missing}, unexpected {extra}; "
                             f"each style has exactly {', '.join(STATS)}")
        amp = np.asarray(message[f"{prefix}.amplitude"], dtype=np.float64)
        count = int(np.asarray(message[f"{prefix}.count"]))
        if amp.ndim != 3 or amp.shape[0] != 3 or amp.shape[1] % 2 == 0 or amp.shape[2] % 2 == 0:
            raise ValueError(f"{prefix}.amplitude has shape {amp.shape}; expected [3, odd, odd]")
        if not np.isfinite(amp).all() or (amp < 0).any() or count < 2:
            raise ValueError(f"style {prefix!r}: amplitudes must be finite and >= 0 and count >= 2 "
                             f"(got count {count})")
        bank.append(StyleAggregate(prefix, amp, count))
    return bank


def save_style_message(path: Path, message: Mapping[str, np.ndarray]) -> None:
    """The message as an ``.npz`` at exactly ``path`` (numpy would otherwise add a suffix)."""
    with open(path, "wb") as fh:
        np.savez(fh, **message)


def load_style_bank(path: Path) -> list[StyleAggregate]:
    """Styles from an ``.npz`` holding a message (what the coordinator relays)."""
    if not Path(path).is_file():
        raise ValueError(f"style file {path} does not exist; export one with `fedreid site styles` "
                         "or point the option at the file the coordinator relayed")
    with np.load(path) as data:
        return style_bank({k: data[k] for k in data.files})


def load_style_banks(paths: str) -> list[StyleAggregate]:
    """Styles from several sites' files, comma-separated; each style is named after its file
    (``market-styles/cam2``) so that two sites' cameras stay apart."""
    bank = []
    for path in (Path(p.strip()) for p in paths.split(",") if p.strip()):
        bank += [replace(style, name=f"{path.stem}/{style.name}") for style in load_style_bank(path)]
    return bank


def apply_style(images: torch.Tensor, style: StyleAggregate | Mapping[str, np.ndarray],
                strength: float = 1.0) -> torch.Tensor:
    """``images`` (uint8 [N, 3, H, W]) rendered in ``style``: the low-frequency amplitude
    becomes ``(1 − strength) · own + strength · style``; phase and higher frequencies stay."""
    _check_images(images)
    amp = style.amplitude if isinstance(style, StyleAggregate) else np.asarray(style["amplitude"])
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must lie in [0, 1] (1 = FDA's full swap)")
    band = ((amp.shape[1] - 1) // 2, (amp.shape[2] - 1) // 2)
    rows, cols = _window(tuple(images.shape[2:]), band)
    spec = _spectrum(images)
    own = spec[:, :, rows, cols]
    target = torch.from_numpy(np.asarray(amp, dtype=np.float64))
    mixed = (1.0 - strength) * own.abs() + strength * target
    spec[:, :, rows, cols] = torch.polar(mixed, own.angle())
    h, w = images.shape[2:]
    out = torch.fft.ifft2(torch.fft.ifftshift(spec * (h * w), dim=(-2, -1))).real * 255.0
    return out.round().clamp(0, 255).to(torch.uint8)
