"""Near-infrared pictures and walking tracklets (the ``ir-video`` kind's renderer side).

Night-time surveillance cameras switch to active near-infrared (NIR). What a fabric reflects
in NIR depends on its dye, not on its visible colour: carbon-black absorbs, most synthetic
dyes reflect strongly whatever their hue, indigo (denim, navy) sits in between, and skin is
bright whatever its tone. So an IR picture is not a grey copy of the visible one: red and
white shirts look alike, navy and black ones differ, and only shapes (bag, hat, hair
length, sleeves, build) keep their cues. The person is re-coloured by this table *before*
drawing; the scene is mapped after (vegetation is bright in NIR) and dimmed towards the
edges, where the camera's illuminator does not reach.

A tracklet walks: the detector's crop follows the person, so in a side view the scene slides
past while the limbs swing, and in a front (back) view the person grows (shrinks) as they
approach (recede). Speed is drawn once per tracklet.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .camera import Capture
from .identity import COLOURS, HAIR, RGB, SKIN, Identity, Outfit

# NIR reflectance of each dye (0 = absorbs, 1 = reflects); deliberately not the visible
# luminance order: see the module docstring.
NIR_DYE: dict[str, float] = {
    "black": 0.12,
    "charcoal": 0.30,
    "grey": 0.52,
    "lightgrey": 0.70,
    "white": 0.86,
    "navy": 0.55,
    "blue": 0.72,
    "lightblue": 0.80,
    "denim": 0.42,
    "teal": 0.64,
    "darkgreen": 0.62,
    "green": 0.78,
    "olive": 0.58,
    "yellow": 0.84,
    "orange": 0.80,
    "red": 0.82,
    "burgundy": 0.66,
    "pink": 0.88,
    "purple": 0.60,
    "brown": 0.46,
    "beige": 0.76,
    "khaki": 0.70,
}
NIR_HAIR: dict[str, float] = {
    "black": 0.22,
    "darkbrown": 0.30,
    "brown": 0.42,
    "blonde": 0.70,
    "auburn": 0.50,
    "grey": 0.62,
}
NIR_SKIN = (0.84, 0.82, 0.80, 0.78, 0.76, 0.74)  # skin tones 0..5: melanin barely absorbs NIR
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def _luma(rgb: RGB) -> float:
    return float(np.dot(rgb, _LUMA))


def _nearest_dye(rgb: RGB) -> str:
    """The named colour closest to ``rgb`` (bags, hats and shoes keep only their RGB)."""
    return min(COLOURS, key=lambda n: math.dist(COLOURS[n], rgb))


def nir_value(rgb: RGB, name: str | None = None, table: dict[str, float] = NIR_DYE) -> float:
    """NIR brightness of a dyed surface: the dye's reflectance plus half the person's shade
    jitter (so two people in "red" stay as distinguishable as they are in daylight)."""
    name = name if name is not None else _nearest_dye(rgb)
    base = COLOURS[name] if table is NIR_DYE else HAIR[name]
    return float(np.clip(table[name] + 0.5 * (_luma(rgb) - _luma(base)), 0.0, 1.0))


def _grey(v: float) -> RGB:
    return (v, v, v)


def nir_outfit(o: Outfit) -> Outfit:
    """The outfit as NIR greys."""
    return replace(
        o,
        upper_rgb=_grey(nir_value(o.upper_rgb, o.upper)),
        upper2_rgb=_grey(nir_value(o.upper2_rgb, o.upper2)),
        lower_rgb=_grey(nir_value(o.lower_rgb, o.lower)),
        shoes_rgb=_grey(nir_value(o.shoes_rgb)),
        bag_rgb=_grey(nir_value(o.bag_rgb)),
        hat_rgb=_grey(nir_value(o.hat_rgb)),
    )


def nir_identity(ident: Identity) -> Identity:
    """The person as an NIR camera sees them (every surface grey, by material)."""
    return replace(
        ident,
        skin_rgb=_grey(NIR_SKIN[ident.skin] + 0.3 * (_luma(ident.skin_rgb) - _luma(SKIN[ident.skin]))),
        hair_rgb=_grey(nir_value(ident.hair_rgb, ident.hair, NIR_HAIR)),
        outfits=tuple(nir_outfit(o) for o in ident.outfits),
    )


def nir_picture(img: np.ndarray, person: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Finish an NIR frame: the person (already in NIR greys) is kept, the scene is mapped
    (bright vegetation, flat surfaces darker), then the illuminator's fall-off is applied."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    scene = 0.08 + 0.45 * (img @ _LUMA) + 0.45 * np.clip(g - np.maximum(r, b), 0.0, 1.0)
    grey = np.where(person, img[..., 0], scene)
    cx, cy = float(X.mean()), float(Y.mean())
    r2 = ((X - cx) / (2.0 * cx)) ** 2 + (Y - cy) ** 2  # 0 at the centre, 0.5 in the corners
    out = np.clip(grey * (1.15 - 1.1 * r2), 0.0, 1.0).astype(np.float32)
    return np.repeat(out[..., None], 3, axis=2)


def walk(cap: Capture, frame: int, rng: np.random.Generator) -> tuple[Capture, float]:
    """The capture of frame ``frame`` of a walking tracklet and the extra limb phase.

    ``rng`` must be seeded per tracklet (not per frame): it draws the walking speed.
    """
    speed = float(rng.uniform(0.6, 1.4))
    turn = float(rng.normal(0.0, 2.0))
    if cap.view == "side":  # the crop follows the walker: the scene slides the other way
        bx = float(np.clip(cap.bg_phase[0] - cap.facing * 0.035 * speed * frame, 0.0, 1.0))
        cap = replace(
            cap,
            bg_phase=(bx, cap.bg_phase[1]),
            shift_x=cap.shift_x + cap.facing * 0.004 * speed * frame,
        )
    else:  # towards (front) or away from (back) the camera
        grow = 0.012 if cap.view == "front" else -0.01
        cap = replace(
            cap,
            scale=cap.scale * math.exp(grow * speed * frame),
            bg_phase=(cap.bg_phase[0], float(np.clip(cap.bg_phase[1] + 0.02 * frame, 0.0, 1.0))),
        )
    cap = replace(cap, angle=cap.angle + turn * frame)
    return cap, 0.7 * speed * frame
