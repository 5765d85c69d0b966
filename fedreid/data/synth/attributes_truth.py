"""Attribute ground truth: which binary attributes a site's people have, and how much each
one separates identities *as rendered* at that site.

Where it is written (every generated site's ``meta.json``, read back by ``attribute_truth``)::

    "attribute_names": ["upper:black", ..., "build:broad"]          # ATTRIBUTE_NAMES, in order
    "identities": {"7": {..., "attributes": [["bag:backpack", "upper:red", ...], ...]}}
                                                                    # names worn, per outfit
    "attribute_truth": {"definition": "...", "attributes": {
        "bag:backpack": {"frequency": 0.31, "information": 0.89, "visibility": 0.72,
                         "separability": 0.64, "class": "strong"}, ...}}

Every name of ``ATTRIBUTE_NAMES`` has an entry at every site. The reader turns an image's
outfit into ``Sample.meta["attributes"] = {name: 0 | 1}``. ``frequency`` is the mean share of
an identity's images with the attribute; the other fields are defined below.

The vocabulary (``ATTRIBUTE_NAMES``, 41 binary values, Market/Duke-attribute style) is what
a MoSAIC-style method uses as experts: upper and lower colour groups, pattern, sleeves,
lower-body style, bag type, hat type, hair colour and length, build.

Separability of attribute ``a`` at a site, in bits (0..1)::

    separability(a) = I(a; identity) * visibility(a)

- ``I(a; identity) = H(p) - mean over identities of H(p_id)``: ``p_id`` is the share of an
  identity's images in which it has ``a`` (it changes only when the person changes clothes),
  ``p`` the mean of ``p_id`` over the site's identities and ``H`` the binary entropy. An
  attribute nobody (or everybody) has carries 0 bits; one half the people have, 1 bit.
- ``visibility(a)``: the mean, over the images whose person has ``a``, of how visible the
  renderer made it in that image. A colour attribute (upper, lower, hair colour group) is
  as visible as the worn colour is distinct: the share of the site's palette colours of
  other groups that differ from it by at least the contrast step (RGB distance 0.25 in
  visible light; NIR reflectance 0.15 in infrared, where dyes of different hues look alike),
  after the picture's gain (light level x camera contrast) scales the difference.
  Any other attribute: 0 when the view hides it (a logo seen from the back; from the front
  a backpack shows only its straps), times its contrast against what surrounds it (stripes
  against the shirt, sleeves against skin, a hat against hair, a handbag against the
  trousers: gain x difference / the step, capped at 1), times its pixel size (an item of
  ``s`` body heights spans ``s * body_px`` pixels: 0 below 1 pixel, 1 from 2). Lower-body
  items behind a box occluder count 0.3, everything behind a pole 0.9.

Classes: ``absent`` (nobody has it), ``invisible`` (worn, visibility < 0.05), ``strong``
(separability >= 0.5 bit), ``weak`` (the rest).

The rules are checked against the renderer itself: ``counterfactual`` takes one attribute
away (a colour swapped for one of another group), the same shot is rendered again (same
capture, same noise), and ``measured_visibility`` turns the pixel difference into the same
scale (1 = at least two pixels changed by the contrast step). ``sims.bench.synth_learnability``
compares the two per site and attribute.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedreid.data.records import DataError

from .identity import COLOURS, HAIR, Identity, Outfit
from .infrared import NIR_DYE, NIR_HAIR, nir_identity

COLOUR_GROUPS: dict[str, str] = {
    "black": "black",
    "charcoal": "black",
    "white": "white",
    "grey": "grey",
    "lightgrey": "grey",
    "red": "red",
    "burgundy": "red",
    "orange": "red",
    "navy": "blue",
    "blue": "blue",
    "lightblue": "blue",
    "denim": "blue",
    "teal": "green",
    "darkgreen": "green",
    "green": "green",
    "olive": "green",
    "yellow": "yellow",
    "purple": "purple",
    "pink": "pink",
    "brown": "brown",
    "beige": "brown",
    "khaki": "brown",
}
GROUPS = ("black", "white", "grey", "red", "blue", "green", "yellow", "purple", "pink", "brown")
ATTRIBUTE_NAMES: tuple[str, ...] = (
    *(f"upper:{g}" for g in GROUPS),
    *(f"lower:{g}" for g in GROUPS),
    "pattern:stripes",
    "pattern:checks",
    "pattern:logo",
    "sleeves:short",
    "lower_style:shorts",
    "lower_style:skirt",
    "bag:backpack",
    "bag:shoulder",
    "bag:handbag",
    "hat:cap",
    "hat:beanie",
    *(f"hair:{h}" for h in HAIR),
    "hair_length:medium",
    "hair_length:long",
    "build:slim",
    "build:broad",
)
SLIM_BELOW, BROAD_FROM = 0.967, 1.083  # thirds of the generator's width range 0.85..1.2
STRONG_BITS = 0.5

# size of the attribute's detail in body heights (what must span >= 2 pixels to be seen)
_DETAIL = {
    "pattern:stripes": 1 / 44,
    "pattern:checks": 1 / 32,
    "pattern:logo": 0.08,
    "sleeves": 0.1,
    "lower_style": 0.2,
    "bag:backpack": 0.25,
    "bag:shoulder": 0.13,
    "bag:handbag": 0.1,
    "hat": 0.05,
    "hair_length": 0.08,
    "build": 0.2,  # the whole silhouette narrows or widens
}
STRAP = 0.02  # a backpack seen from the front: two straps
_LOWER_BODY = ("lower:", "lower_style:", "bag:handbag")


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """How one picture was rendered, as far as attribute visibility is concerned."""

    pid: int
    outfit: int
    view: str
    infrared: bool
    body_px: float  # the person's height in pixels of the final picture
    occluder: str | None  # "box", "bar" or None
    gain: float = 1.0  # light level x camera contrast: scales every difference


def present(ident: Identity, outfit: int) -> frozenset[str]:
    """The attribute names that person ``ident`` has when wearing outfit ``outfit``."""
    o = ident.outfits[outfit]
    names = {
        f"upper:{COLOUR_GROUPS[o.upper]}",
        f"lower:{COLOUR_GROUPS[o.lower]}",
        f"hair:{ident.hair}",
    }
    if o.pattern != "plain":
        names.add(f"pattern:{o.pattern}")
    if o.sleeves == "short":
        names.add("sleeves:short")
    if o.lower_style != "trousers":
        names.add(f"lower_style:{o.lower_style}")
    if o.bag != "none":
        names.add(f"bag:{o.bag}")
    if o.hat != "none":
        names.add(f"hat:{o.hat}")
    if ident.hair_length != "short":
        names.add(f"hair_length:{ident.hair_length}")
    if ident.width < SLIM_BELOW:
        names.add("build:slim")
    elif ident.width >= BROAD_FROM:
        names.add("build:broad")
    return frozenset(names)


def _contrast(a: Sequence[float], b: Sequence[float], infrared: bool, gain: float) -> float:
    dist = gain * math.dist(a, b) / (math.sqrt(3.0) if infrared else 1.0)  # greys: one step
    return min(1.0, dist / (0.15 if infrared else 0.25))


def _pair(name: str, ident: Identity, o: Outfit) -> tuple[Sequence[float], Sequence[float]]:
    """The two surfaces whose difference makes attribute ``name`` visible."""
    group = name.split(":", 1)[0]
    if group == "pattern":
        return o.upper_rgb, o.upper2_rgb
    if group == "sleeves":
        return o.upper_rgb, ident.skin_rgb
    if group == "lower_style":
        return o.lower_rgb, ident.skin_rgb
    if name == "bag:handbag":  # carried at hip height, beside the trousers
        return o.bag_rgb, o.lower_rgb
    if group == "bag":
        return o.bag_rgb, o.upper_rgb
    if group == "hat":
        return o.hat_rgb, ident.hair_rgb
    return ident.hair_rgb, o.upper_rgb  # hair_length


@dataclass(frozen=True)
class Palettes:
    """The colour names a site draws upper, lower and hair colours from."""

    upper: tuple[str, ...] = tuple(COLOURS)
    lower: tuple[str, ...] = tuple(COLOURS)
    hair: tuple[str, ...] = tuple(HAIR)


def colour_distinctness(
    colour: str, group: str, palette: Sequence[str], infrared: bool, gain: float = 1.0
) -> float:
    """Share of ``palette`` colours outside ``colour``'s group that differ from it by at least
    the contrast step after ``gain``, in RGB or (infrared) in NIR reflectance."""
    hair = group == "hair"
    if hair:
        others = [c for c in palette if c != colour]
    else:
        others = [c for c in palette if COLOUR_GROUPS[c] != COLOUR_GROUPS[colour]]
    if not others:
        return 0.0
    if infrared:
        table = NIR_HAIR if hair else NIR_DYE
        far = [gain * abs(table[c] - table[colour]) >= 0.15 for c in others]
    else:
        table = HAIR if hair else COLOURS
        far = [gain * math.dist(table[c], table[colour]) >= 0.25 for c in others]
    return sum(far) / len(others)


def visibility(
    name: str, ident: Identity, facts: ImageFacts, palettes: Palettes, worn: Identity
) -> float:
    """How visible attribute ``name`` of ``ident`` is in the picture described by ``facts``;
    ``worn`` is the person in the camera's colours (NIR greys for an infrared picture)."""
    group = name.split(":", 1)[0]
    if group in ("upper", "lower", "hair"):
        o = ident.outfits[facts.outfit]
        colour = {"upper": o.upper, "lower": o.lower, "hair": ident.hair}[group]
        vis = colour_distinctness(
            colour, group, getattr(palettes, group), facts.infrared, facts.gain
        )
    else:
        ident = worn
        vis = 0.0 if name == "pattern:logo" and facts.view != "front" else 1.0
        if group != "build":
            pair = _pair(name, ident, ident.outfits[facts.outfit])
            vis *= _contrast(*pair, facts.infrared, facts.gain)
        size = _DETAIL.get(name, _DETAIL.get(group, 0.3))
        if name == "bag:backpack" and facts.view == "front":
            size = STRAP
        vis *= min(1.0, max(0.0, size * facts.body_px - 1.0))
    if facts.occluder == "box" and name.startswith(_LOWER_BODY):
        vis *= 0.3
    elif facts.occluder == "bar":
        vis *= 0.9
    return vis


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.where((p <= 1e-12) | (p >= 1 - 1e-12), 0.0, h)


def site_truth(
    identities: dict[int, Identity], images: Iterable[ImageFacts], palettes: Palettes
) -> dict[str, dict]:
    """Frequency, identity information, visibility, separability and class of every name in
    ``ATTRIBUTE_NAMES`` over a site's pictures (see the module docstring)."""
    index = {n: i for i, n in enumerate(ATTRIBUTE_NAMES)}
    pids = sorted(identities)
    row = {pid: r for r, pid in enumerate(pids)}
    has = np.zeros((len(pids), len(index)))
    count = np.zeros(len(pids))
    vis_sum = np.zeros(len(index))
    vis_n = np.zeros(len(index))
    nir = {}
    for f in images:
        ident = identities[f.pid]
        worn = ident
        if f.infrared:
            worn = nir.get(f.pid) or nir.setdefault(f.pid, nir_identity(ident))
        count[row[f.pid]] += 1
        for name in present(ident, f.outfit):
            has[row[f.pid], index[name]] += 1
            vis_sum[index[name]] += visibility(name, ident, f, palettes, worn)
            vis_n[index[name]] += 1
    seen = count > 0
    p_id = has[seen] / count[seen, None]
    information = _entropy(p_id.mean(0)) - _entropy(p_id).mean(0)
    vis = np.divide(vis_sum, vis_n, out=np.zeros_like(vis_sum), where=vis_n > 0)
    out = {}
    for name, i in index.items():
        sep = float(information[i] * vis[i])
        if vis_n[i] == 0:
            label = "absent"
        elif vis[i] < 0.05:
            label = "invisible"
        else:
            label = "strong" if sep >= STRONG_BITS else "weak"
        out[name] = {
            "frequency": round(float(p_id[:, i].mean()), 4),
            "information": round(float(information[i]), 4),
            "visibility": round(float(vis[i]), 4),
            "separability": round(sep, 4),
            "class": label,
        }
    return out


def attribute_truth(site_dir: str | os.PathLike) -> dict[str, float]:
    """Separability (bits) of every attribute at a generated site, read from its meta.json."""
    path = os.path.join(os.fspath(site_dir), "meta.json")
    try:
        with open(path, encoding="utf-8") as fh:
            truth = json.load(fh)["attribute_truth"]["attributes"]
        return {name: float(truth[name]["separability"]) for name in ATTRIBUTE_NAMES}
    except FileNotFoundError:
        raise DataError(
            f"{path}: no meta.json; attribute_truth needs a folder written by the synthetic "
            "generator (fedreid data synth / generate); fix: pass such a site folder"
        ) from None
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path}: no attribute ground truth ({type(err).__name__}: {err}); it was written by "
            "an older generator or edited; fix: regenerate the site"
        ) from err


def counterfactual(
    ident: Identity, outfit: int, name: str, palettes: Palettes, rng: np.random.Generator
) -> Identity:
    """``ident`` with attribute ``name`` taken away from outfit ``outfit``: a colour group's
    colour swapped for a random palette colour of another group, an item removed, a pattern
    made plain, sleeves long, hair short, a slim or broad build made average."""
    o = ident.outfits[outfit]
    group = name.split(":", 1)[0]
    if group == "hair":
        other = [c for c in palettes.hair if c != ident.hair] or [c for c in HAIR if c != ident.hair]
        c = other[int(rng.integers(len(other)))]
        return replace(ident, hair=c, hair_rgb=HAIR[c])
    if group == "hair_length":
        return replace(ident, hair_length="short")
    if group == "build":
        return replace(ident, width=(SLIM_BELOW + BROAD_FROM) / 2)
    if group in ("upper", "lower"):
        worn = getattr(o, group)
        pool = [c for c in getattr(palettes, group) if COLOUR_GROUPS[c] != COLOUR_GROUPS[worn]]
        pool = pool or [c for c in COLOURS if COLOUR_GROUPS[c] != COLOUR_GROUPS[worn]]
        c = pool[int(rng.integers(len(pool)))]
        changed = replace(o, **{group: c, f"{group}_rgb": COLOURS[c]})
    else:
        changed = replace(o, **{
            "pattern": {"pattern": "plain"},
            "sleeves": {"sleeves": "long"},
            "lower_style": {"lower_style": "trousers"},
            "bag": {"bag": "none"},
            "hat": {"hat": "none"},
        }[group])
    outfits = list(ident.outfits)
    outfits[outfit] = changed
    return replace(ident, outfits=tuple(outfits))


def measured_visibility(a: np.ndarray, b: np.ndarray, infrared: bool) -> float:
    """How visible a change is between two uint8 renders of one shot, on the truth's scale:
    the number of pixels that changed by at least the contrast step (RGB distance 0.25, or
    0.15 of grey in infrared), over two pixels, capped at 1."""
    dist = np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=2) / 255.0
    step = 0.15 * math.sqrt(3.0) if infrared else 0.25
    return float(min(1.0, np.count_nonzero(dist >= step) / 2.0))
