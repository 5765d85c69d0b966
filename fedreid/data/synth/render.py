"""Draw one pedestrian picture with vectorised NumPy masks (no per-pixel Python loops).

Shapes live in body units: ``v`` runs 0 (top of head) to 1 (soles), ``u`` is the signed
horizontal offset from the body axis in body heights. The camera's geometry warps the pixel
grid into these units (foreshortening and perspective), so a new camera never touches the
drawing code. What is visible depends on the viewpoint: a logo only from the front, a
backpack from the back (straps from the front, a bulge from the side), the face from the
front and side. An aerial camera also stretches the head end and squeezes the legs (the
steeper the pitch, the more) and shows the crown of the head (hair or hat) from above; an
infrared camera re-colours the person by material before drawing (``infrared.py``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .camera import CameraSpec, Capture, add_noise, apply_optics, draw_occluder, render_background
from .identity import Identity, Outfit
from .infrared import nir_identity, nir_picture

HEAD_V, HEAD_RU, HEAD_RV = 0.075, 0.05, 0.068
SHOULDER_V, HIP_V, FOOT_V = 0.155, 0.50, 0.955


class _Canvas:
    """The picture being painted plus the person mask (what an infrared camera keeps)."""

    def __init__(self, img: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        self.img, self.u, self.v = img, u, v
        self.person = np.zeros(u.shape, bool)

    def paint(self, mask: np.ndarray, rgb) -> None:
        self.img[mask] = rgb
        self.person |= mask

    def box(self, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        return (self.u >= min(u0, u1)) & (self.u <= max(u0, u1)) & (self.v >= v0) & (self.v <= v1)

    def ellipse(self, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        return ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 <= 1.0

    def capsule(
        self, p0: tuple[float, float], p1: tuple[float, float], r: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Thick segment (a limb); also returns the position 0..1 along it (for sleeves)."""
        du, dv = p1[0] - p0[0], p1[1] - p0[1]
        t = np.clip(((self.u - p0[0]) * du + (self.v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
        d2 = (self.u - p0[0] - t * du) ** 2 + (self.v - p0[1] - t * dv) ** 2
        return d2 <= r * r, t


def _torso(c: _Canvas, half: float) -> np.ndarray:
    taper = half - 0.025 * (c.v - SHOULDER_V) / (HIP_V - SHOULDER_V)
    body = (c.v >= SHOULDER_V + 0.03) & (c.v <= HIP_V) & (np.abs(c.u) <= taper)
    return body | c.ellipse(0.0, SHOULDER_V + 0.04, half, 0.045)


def _upper_colour(c: _Canvas, mask: np.ndarray, o: Outfit, view: str) -> None:
    c.paint(mask, o.upper_rgb)
    if o.pattern == "stripes":
        c.paint(mask & (np.mod(c.v * 22.0, 1.0) < 0.45), o.upper2_rgb)
    elif o.pattern == "checks":
        c.paint(
            mask & ((np.mod(c.v * 16.0, 1.0) < 0.5) ^ (np.mod(c.u * 16.0 + 0.25, 1.0) < 0.5)),
            o.upper2_rgb,
        )
    elif o.pattern == "logo" and view == "front":
        c.paint(mask & c.box(-0.04, 0.04, 0.22, 0.30), o.upper2_rgb)


def _limb(c: _Canvas, p0, p1, r: float, cloth, skin_rgb, covered: float) -> None:
    """A limb clothed from its root to ``covered`` (fraction of its length), skin beyond."""
    mask, t = c.capsule(p0, p1, r)
    c.paint(mask & (t <= covered), cloth)
    c.paint(mask & (t > covered), skin_rgb)


def _legs(
    c: _Canvas, ident: Identity, o: Outfit, view: str, facing: int, phase: float, width: float
) -> None:
    r = 0.05 * ident.width
    if view == "side":
        stride = 0.13 * math.sin(phase)
        ends = [((0.0, HIP_V), (stride, FOOT_V)), ((0.0, HIP_V), (-stride, FOOT_V))]
    else:
        hip = 0.055 * width
        ends = [((-hip, HIP_V), (-hip * 1.1, FOOT_V)), ((hip, HIP_V), (hip * 1.1, FOOT_V))]
    covered = {"trousers": 1.0, "shorts": 0.35, "skirt": 0.0}[o.lower_style]
    for p0, p1 in ends:
        _limb(c, p0, p1, r, o.lower_rgb, ident.skin_rgb, covered)
        toe = 0.02 * facing if view == "side" else 0.0
        c.paint(c.ellipse(p1[0] + toe, FOOT_V + 0.012, 0.045, 0.022), o.shoes_rgb)
    if o.lower_style == "skirt":
        flare = (c.v - (HIP_V - 0.03)) / 0.25
        skirt = (
            (c.v >= HIP_V - 0.03)
            & (c.v <= HIP_V + 0.22)
            & (np.abs(c.u) <= width * (0.1 + 0.05 * flare))
        )
        c.paint(skirt, o.lower_rgb)


def _arms(
    c: _Canvas,
    ident: Identity,
    o: Outfit,
    view: str,
    facing: int,
    phase: float,
    half: float,
    near: bool,
) -> None:
    covered = 0.45 if o.sleeves == "short" else 0.92
    r = 0.032 * ident.width
    if view == "side":
        swing = 0.12 * math.sin(phase + (0.0 if near else math.pi))
        arms = [((0.0, SHOULDER_V + 0.03), (facing * swing, 0.46))]
    elif near:
        arms = [
            ((s * (half - 0.005), SHOULDER_V + 0.03), (s * (half + 0.03), 0.47)) for s in (-1, 1)
        ]
    else:
        return
    for p0, p1 in arms:
        _limb(c, p0, p1, r, o.upper_rgb, ident.skin_rgb, covered)
        c.paint(c.ellipse(p1[0], p1[1] + 0.012, 0.026, 0.024), ident.skin_rgb)


def _head(c: _Canvas, ident: Identity, o: Outfit, view: str, facing: int) -> None:
    head = c.ellipse(0.0, HEAD_V, HEAD_RU, HEAD_RV)
    c.paint(c.box(-0.022, 0.022, HEAD_V + 0.04, SHOULDER_V + 0.01), ident.skin_rgb)
    long_v = {"short": 0.0, "medium": 0.15, "long": 0.25}[ident.hair_length]
    if view == "back":
        if long_v:
            c.paint(c.box(-0.05, 0.05, HEAD_V, long_v), ident.hair_rgb)
        c.paint(head, ident.hair_rgb)
    elif view == "front":
        c.paint(head, ident.skin_rgb)
        c.paint(head & ((c.v < HEAD_V - 0.03) | (np.abs(c.u) > 0.038)), ident.hair_rgb)
        if long_v:
            c.paint(
                c.box(-0.065, -0.035, HEAD_V, long_v) | c.box(0.035, 0.065, HEAD_V, long_v),
                ident.hair_rgb,
            )
        eyes = c.ellipse(-0.018, HEAD_V - 0.005, 0.007, 0.006) | c.ellipse(
            0.018, HEAD_V - 0.005, 0.007, 0.006
        )
        c.paint(eyes, (0.1, 0.08, 0.08))
    else:
        if long_v:
            c.paint(c.box(-facing * 0.05, 0.0, HEAD_V, long_v), ident.hair_rgb)
        c.paint(head, ident.skin_rgb)
        c.paint(head & ((facing * c.u < 0.008) | (c.v < HEAD_V - 0.035)), ident.hair_rgb)
    if o.hat == "cap":
        c.paint(head & (c.v < HEAD_V - 0.03), o.hat_rgb)
        brim = (
            c.box(-0.055, 0.055, HEAD_V - 0.035, HEAD_V - 0.02)
            if view != "side"
            else c.box(0.0, facing * 0.085, HEAD_V - 0.035, HEAD_V - 0.022)
        )
        c.paint(brim, o.hat_rgb)
    elif o.hat == "beanie":
        c.paint(
            c.ellipse(0.0, HEAD_V - 0.01, HEAD_RU * 1.08, HEAD_RV * 1.02) & (c.v < HEAD_V - 0.015),
            o.hat_rgb,
        )


def _bag(
    c: _Canvas, o: Outfit, view: str, facing: int, half: float, phase: float, stage: str
) -> None:
    """Bags: ``stage`` "behind" is painted before the torso, "front" after it."""
    if o.bag == "backpack":
        if view == "side" and stage == "behind":
            c.paint(
                c.box(-facing * half * 0.7, -facing * (half * 0.7 + 0.08), 0.18, 0.43), o.bag_rgb
            )
        elif view == "back" and stage == "front":
            c.paint(c.box(-0.085, 0.085, 0.18, 0.43), o.bag_rgb)
            c.paint(c.box(-0.085, 0.085, 0.30, 0.31), tuple(0.6 * x for x in o.bag_rgb))
        elif view == "front" and stage == "front":
            c.paint(
                c.box(-0.075, -0.055, SHOULDER_V, 0.36) | c.box(0.055, 0.075, SHOULDER_V, 0.36),
                o.bag_rgb,
            )
    elif o.bag == "shoulder" and stage == "front":
        side = -1.0 if view == "front" else 1.0
        if view != "side":
            strap, _ = c.capsule((-side * 0.08, SHOULDER_V + 0.01), (side * 0.09, 0.45), 0.012)
            c.paint(strap, o.bag_rgb)
            c.paint(c.box(side * 0.07, side * (half + 0.05), 0.42, 0.55), o.bag_rgb)
        else:
            c.paint(c.box(-0.07, 0.07, 0.42, 0.56), o.bag_rgb)
    elif o.bag == "handbag" and stage == "front":
        if view == "side":
            hand = facing * 0.12 * math.sin(phase)
            c.paint(c.box(hand - 0.04, hand + 0.04, 0.47, 0.58), o.bag_rgb)
        else:
            side = 1.0 if view == "front" else -1.0
            c.paint(c.box(side * (half + 0.005), side * (half + 0.08), 0.46, 0.57), o.bag_rgb)


def draw_person(c: _Canvas, ident: Identity, outfit: int, cap: Capture, phase: float) -> None:
    """Paint the person in back-to-front order for the capture's viewpoint."""
    o = ident.outfits[outfit]
    a = math.radians(cap.angle)
    width = ident.width * (abs(math.cos(a)) + 0.55 * abs(math.sin(a)))
    half = 0.125 * width
    view, facing = cap.view, cap.facing
    _arms(c, ident, o, view, facing, phase, half, near=False)
    _bag(c, o, view, facing, half, phase, "behind")
    _legs(c, ident, o, view, facing, phase, width)
    torso = _torso(c, half)
    _upper_colour(c, torso, o, view)
    _bag(c, o, view, facing, half, phase, "front")
    _arms(c, ident, o, view, facing, phase, half, near=True)
    _head(c, ident, o, view, facing)
    shade = 1.0 - 0.35 * np.clip(np.abs(c.u) / (half + 0.04), 0.0, 1.0) ** 2
    c.img[c.person] *= shade[c.person, None]


def top_down(v: np.ndarray, pitch_deg: float) -> np.ndarray:
    """Body height ``v`` at each picture row for a camera looking down at ``pitch_deg``.

    The picture position of body height ``b`` is ``f(b) = (1 + a) b - a b^2`` with
    ``a = 0.8 sin^2(pitch)``: head and shoulders get more rows, the legs fewer. ``v`` (the
    level-camera mapping) plays ``f``; this returns the inverse, extended beyond [0, 1].
    """
    a = 0.8 * math.sin(math.radians(pitch_deg)) ** 2
    if a < 1e-6:
        return v
    disc = np.maximum((1.0 + a) ** 2 - 4.0 * a * v, 0.0)
    return ((1.0 + a) - np.sqrt(disc)) / (2.0 * a)


def _crown(c: _Canvas, ident: Identity, o: Outfit, pitch_deg: float) -> None:
    """The top of the head seen from above: hair, or the hat when one is worn."""
    reach = HEAD_V - HEAD_RV + 1.4 * HEAD_RV * math.sin(math.radians(pitch_deg))
    top = c.ellipse(0.0, HEAD_V, HEAD_RU, HEAD_RV) & (c.v < reach)
    c.paint(top, o.hat_rgb if o.hat != "none" else ident.hair_rgb)


def render_image(
    ident: Identity,
    outfit: int,
    cam: CameraSpec,
    cap: Capture,
    rng: np.random.Generator,
    size: tuple[int, int],
    phase: float,
) -> np.ndarray:
    """One uint8 H x W x 3 picture of ``ident`` as camera ``cam`` sees it in ``cap``."""
    H, W = size
    h, w = max(16, round(H * cam.resolution)), max(8, round(W * cam.resolution))
    Y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None] * np.ones((1, w), np.float32)
    X = np.ones((h, 1), np.float32) * ((np.arange(w, dtype=np.float32) + 0.5) / h)[None, :]
    infrared = cam.modality == "infrared"
    if infrared:
        ident = nir_identity(ident)
    img = render_background(cam, cap, h, w)
    fs = cam.foreshortening
    ph = 0.86 * ident.height * cap.scale
    top = 0.955 + cap.shift_y - ph * fs
    v = (Y - top) / (ph * fs)
    aerial = cam.kind == "aerial"
    if aerial:
        v = top_down(v, cam.pitch_deg)
    u = (X - (0.5 * w / h + cap.shift_x)) / ph / (1.0 + cam.perspective * (0.5 - v))
    canvas = _Canvas(img, u, v)
    draw_person(canvas, ident, outfit, cap, phase)
    if aerial:
        _crown(canvas, ident, ident.outfits[outfit], cam.pitch_deg)
    hidden = draw_occluder(img, u, v, cap)
    if infrared:
        img = nir_picture(img, canvas.person & ~hidden, X, Y)
    img = apply_optics(img, cam, cap, X)
    out = np.rint(img * 255.0).astype(np.uint8)
    if (h, w) != (H, W):
        out = np.asarray(Image.fromarray(out).resize((W, H), Image.BILINEAR))
    return add_noise(out, cam, rng)
