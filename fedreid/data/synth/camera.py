"""Cameras: what one fixed camera does to every picture it takes.

A ``CameraSpec`` holds the scene (background style), the optics (blur, noise, resolution),
the light (brightness, colour cast, contrast), how people pass it (viewpoint distribution,
crop jitter, occlusion) and its geometry. Geometry drives foreshortening, so an aerial
camera is a spec with ``kind="aerial"``, a high ``height_m`` and steep ``pitch_deg``;
``modality="infrared"`` renders a near-infrared picture (``infrared.py``). Per-picture draws
live in ``Capture`` so that all frames of a tracklet share one.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

RGB = tuple[float, float, float]

VIEWS = ("front", "back", "side")
MODALITIES = ("rgb", "infrared")  # camera types; images say "visible" | "infrared"
PLATFORMS = ("ground", "aerial")

# style -> (wall/sky RGB, floor RGB, texture kind, texture RGB, horizon height as a fraction);
# a negative horizon leaves no sky: the ground seen from above (aerial cameras)
BACKGROUNDS: dict[str, tuple[RGB, RGB, str, RGB, float]] = {
    "campus": ((0.62, 0.66, 0.70), (0.55, 0.53, 0.50), "tiles", (0.42, 0.41, 0.40), 0.50),
    "lawn": ((0.55, 0.62, 0.68), (0.28, 0.45, 0.22), "noise", (0.18, 0.33, 0.14), 0.55),
    "brick": ((0.55, 0.30, 0.22), (0.50, 0.50, 0.50), "bricks", (0.40, 0.22, 0.16), 0.60),
    "corridor": ((0.82, 0.78, 0.68), (0.62, 0.58, 0.52), "stripes", (0.50, 0.40, 0.30), 0.55),
    "shopfront": ((0.30, 0.35, 0.45), (0.60, 0.60, 0.58), "stripes", (0.85, 0.75, 0.40), 0.55),
    "street": ((0.45, 0.47, 0.50), (0.35, 0.35, 0.36), "noise", (0.25, 0.25, 0.27), 0.45),
    "station": ((0.70, 0.70, 0.72), (0.45, 0.45, 0.50), "tiles", (0.30, 0.30, 0.35), 0.50),
    "night": ((0.12, 0.12, 0.18), (0.20, 0.20, 0.22), "noise", (0.05, 0.05, 0.08), 0.50),
    "garden": ((0.35, 0.50, 0.30), (0.55, 0.50, 0.40), "noise", (0.15, 0.35, 0.12), 0.60),
    "snow": ((0.75, 0.78, 0.82), (0.85, 0.86, 0.88), "plain", (0.80, 0.80, 0.85), 0.45),
    "plaza": ((0.80, 0.78, 0.70), (0.50, 0.48, 0.45), "tiles", (0.62, 0.60, 0.55), 0.40),
    "asphalt": ((0.30, 0.30, 0.31), (0.30, 0.30, 0.31), "markings", (0.85, 0.85, 0.80), -0.2),
    "paving": ((0.62, 0.58, 0.52), (0.62, 0.58, 0.52), "grid", (0.45, 0.42, 0.38), -0.2),
    "grass": ((0.30, 0.48, 0.22), (0.30, 0.48, 0.22), "noise", (0.22, 0.38, 0.16), -0.2),
}


@dataclass(frozen=True, slots=True)
class CameraSpec:
    """One camera of a site. ``blur`` is a Gaussian sigma in pixels of a 128-pixel-high
    image; ``resolution`` < 1 renders smaller and upsamples (a low-resolution camera)."""

    name: str
    background: str = "campus"
    view_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)  # front, back, side
    light: float = 1.0
    light_jitter: float = 0.12
    cast: RGB = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    blur: float = 0.5
    noise: float = 0.02
    scale_jitter: float = 0.06
    shift_jitter: float = 0.04
    occlusion: float = 0.1
    resolution: float = 1.0
    kind: str = "ground"
    height_m: float = 3.0
    pitch_deg: float = 15.0
    distance_m: float = 8.0
    modality: str = "rgb"

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(
                f"camera {self.name}: background={self.background!r} is not one of {sorted(BACKGROUNDS)}"
            )
        if self.modality not in MODALITIES:
            raise ValueError(
                f"camera {self.name}: modality={self.modality!r} is not one of {MODALITIES}"
            )
        if self.kind not in PLATFORMS:
            raise ValueError(f"camera {self.name}: kind={self.kind!r} is not one of {PLATFORMS}")
        if not 0.1 <= self.resolution <= 1.0:
            raise ValueError(
                f"camera {self.name}: resolution={self.resolution} must lie in [0.1, 1]"
            )

    @property
    def foreshortening(self) -> float:
        """Vertical squash of a standing person seen from ``pitch_deg`` above the horizon."""
        return 1.0 - 0.5 * math.sin(math.radians(self.pitch_deg)) ** 2

    @property
    def perspective(self) -> float:
        """How much wider the head end is than the feet (0 for a level camera)."""
        ratio = min(1.0, self.height_m / max(self.distance_m, 1.0))
        return 0.5 * math.sin(math.radians(self.pitch_deg)) * ratio

    def to_meta(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


@dataclass(frozen=True, slots=True)
class Capture:
    """The random state of one sighting (an image, or a whole tracklet)."""

    view: str
    angle: float  # degrees, 0 = facing the camera
    facing: int  # +1 walking to the right of the picture, -1 to the left
    light: float
    light_slope: float
    scale: float
    shift_x: float
    shift_y: float
    bg_phase: tuple[float, float]
    bg_tint: RGB
    occluder: tuple | None  # (kind, x0, x1, y0, y1, RGB) in body units, or None


def draw_capture(rng: np.random.Generator, cam: CameraSpec) -> Capture:
    """Draw a viewpoint, light level, framing and occluder for one sighting."""
    view = VIEWS[int(rng.choice(3, p=np.asarray(cam.view_probs) / np.sum(cam.view_probs)))]
    facing = 1 if rng.random() < 0.5 else -1
    base = {"front": 0.0, "back": 180.0, "side": 90.0 * facing}[view]
    occluder = None
    if rng.random() < cam.occlusion:
        kind = "box" if rng.random() < 0.6 else "bar"
        rgb = tuple(float(c) for c in rng.uniform(0.1, 0.9, 3))
        if kind == "box":  # a bench, car or bin hiding the lower body
            top = float(rng.uniform(0.45, 0.75))
            x0 = float(rng.uniform(-0.6, -0.1))
            occluder = (kind, x0, x0 + float(rng.uniform(0.4, 1.0)), top, 1.2, rgb)
        else:  # a pole or a passer-by's edge in front of the person
            x0 = float(rng.uniform(-0.2, 0.12))
            occluder = (kind, x0, x0 + float(rng.uniform(0.05, 0.12)), -0.2, 1.2, rgb)
    return Capture(
        view=view,
        angle=float(base + rng.normal(0.0, 15.0)),
        facing=facing,
        light=float(cam.light * math.exp(rng.normal(0.0, cam.light_jitter))),
        light_slope=float(rng.normal(0.0, 0.25)),
        scale=float(1.0 + rng.uniform(-cam.scale_jitter, cam.scale_jitter)),
        shift_x=float(rng.uniform(-cam.shift_jitter, cam.shift_jitter)),
        shift_y=float(rng.uniform(-cam.shift_jitter, cam.shift_jitter) * 0.5),
        bg_phase=(float(rng.random()), float(rng.random())),
        bg_tint=tuple(float(c) for c in rng.normal(0.0, 0.04, 3)),
        occluder=occluder,
    )


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Blobby texture: a coarse random grid upsampled bilinearly to h x w."""
    coarse = rng.random((cells[0] + 1, cells[1] + 1))
    ys = np.linspace(0, cells[0], h)
    xs = np.linspace(0, cells[1], w)
    y0 = np.minimum(ys.astype(int), cells[0] - 1)
    x0 = np.minimum(xs.astype(int), cells[1] - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


@lru_cache(maxsize=64)
def _scene(background: str, name: str, h: int, w: int) -> np.ndarray:
    """A camera's fixed scene, larger than one picture; captures crop it at random offsets."""
    top, floor, tex, tex_rgb, horizon = BACKGROUNDS[background]
    sh, sw = h + h // 5, 3 * w
    Y = ((np.arange(sh, dtype=np.float32) + 0.5) / h)[:, None] * np.ones((1, sw), np.float32)
    X = np.ones((sh, 1), np.float32) * ((np.arange(sw, dtype=np.float32) + 0.5) / h)[None, :]
    horizon += 0.1
    is_floor = Y > horizon
    img = np.where(is_floor[..., None], np.asarray(floor, np.float32), np.asarray(top, np.float32))
    if tex == "tiles":
        depth = np.maximum(Y - horizon, 1e-3)
        mask = (
            (np.mod((X - 0.75 * sw / h) / depth * 0.25, 1.0) < 0.08)
            | (np.mod(np.log(depth) * 4, 1.0) < 0.12)
        ) & is_floor
    elif tex == "stripes":
        mask = (np.mod(X * 5.0, 1.0) < 0.35) & ~is_floor
    elif tex == "bricks":
        mask = (
            (np.mod(Y * 14, 1.0) < 0.15) | (np.mod(X * 7 + 0.5 * np.floor(Y * 14), 1.0) < 0.1)
        ) & ~is_floor
    elif tex == "grid":  # paving slabs seen from above
        mask = (np.mod(X * 6.0, 1.0) < 0.06) | (np.mod(Y * 6.0, 1.0) < 0.06)
    elif tex == "markings":  # parking-bay lines seen from above
        mask = np.mod(X * 2.2, 1.0) < 0.05
    elif tex == "noise":
        mask = (
            _smooth_noise(np.random.default_rng(zlib.crc32(name.encode())), sh, sw, (7, 9)) > 0.55
        )
    else:
        mask = np.zeros((sh, sw), bool)
    img[mask] = tex_rgb
    img.flags.writeable = False
    return img


def render_background(cam: CameraSpec, cap: Capture, h: int, w: int) -> np.ndarray:
    """The camera's scene behind the person, cropped at the capture's offset and tinted."""
    scene = _scene(cam.background, cam.name + cam.background, h, w)
    oy = int(cap.bg_phase[1] * (scene.shape[0] - h))
    ox = int(cap.bg_phase[0] * (scene.shape[1] - w))
    return scene[oy : oy + h, ox : ox + w] + np.asarray(cap.bg_tint, np.float32)


def draw_occluder(img: np.ndarray, u: np.ndarray, v: np.ndarray, cap: Capture) -> np.ndarray:
    """Paint the capture's occluder over the picture; returns the occluded-pixel mask."""
    if cap.occluder is None:
        return np.zeros(u.shape, bool)
    _, x0, x1, y0, y1, rgb = cap.occluder
    mask = (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)
    img[mask] = np.asarray(rgb, np.float32) * (0.85 + 0.15 * v[mask, None].clip(0, 1))
    return mask


def apply_optics(img: np.ndarray, cam: CameraSpec, cap: Capture, X: np.ndarray) -> np.ndarray:
    """Light level, a left-right light gradient, colour cast, contrast and lens blur."""
    gain = cap.light * (1.0 + cap.light_slope * (X - X.mean()))[..., None]
    out = img * gain * np.asarray(cam.cast, np.float32)
    out = (out - 0.5) * cam.contrast + 0.5
    if cam.blur > 0:
        sigma = cam.blur * img.shape[0] / 128.0
        out = gaussian_filter(out, sigma=(sigma, sigma, 0), mode="nearest", truncate=3.0)
    return np.clip(out, 0.0, 1.0)


def add_noise(img: np.ndarray, cam: CameraSpec, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise on the final uint8 picture."""
    if cam.noise <= 0:
        return img
    shape = img.shape[:2] + ((1,) if cam.modality == "infrared" else (img.shape[2],))
    noisy = img.astype(np.float32) + rng.standard_normal(shape, dtype=np.float32) * np.float32(
        cam.noise * 255.0
    )
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
