"""Synthetic people: an identity is a body plus one or more outfits, drawn from site priors.

Attributes are named (``"red"``, ``"stripes"``, ``"backpack"``) so methods that learn from
attributes get labels, and carry a jittered RGB so two people in "red" are not pixel-identical.
Near-duplicate people (the hard negatives of real benchmarks) come from a pool of prototype
outfits that several identities perturb; the pool is indexed, so any identity can be drawn
alone, in any process, from ``(seed, site, pid)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

RGB = tuple[float, float, float]

COLOURS: dict[str, RGB] = {
    "black": (0.08, 0.08, 0.09),
    "charcoal": (0.22, 0.22, 0.24),
    "grey": (0.50, 0.50, 0.52),
    "lightgrey": (0.76, 0.76, 0.77),
    "white": (0.93, 0.93, 0.91),
    "navy": (0.10, 0.13, 0.35),
    "blue": (0.15, 0.30, 0.75),
    "lightblue": (0.55, 0.72, 0.92),
    "denim": (0.25, 0.35, 0.55),
    "teal": (0.10, 0.50, 0.50),
    "darkgreen": (0.10, 0.30, 0.15),
    "green": (0.25, 0.62, 0.25),
    "olive": (0.45, 0.45, 0.20),
    "yellow": (0.92, 0.80, 0.20),
    "orange": (0.92, 0.50, 0.15),
    "red": (0.80, 0.12, 0.12),
    "burgundy": (0.45, 0.08, 0.15),
    "pink": (0.95, 0.60, 0.72),
    "purple": (0.45, 0.20, 0.55),
    "brown": (0.40, 0.25, 0.12),
    "beige": (0.80, 0.72, 0.55),
    "khaki": (0.60, 0.55, 0.38),
}
HAIR: dict[str, RGB] = {
    "black": (0.06, 0.05, 0.05),
    "darkbrown": (0.20, 0.12, 0.07),
    "brown": (0.38, 0.24, 0.12),
    "blonde": (0.80, 0.68, 0.40),
    "auburn": (0.50, 0.20, 0.10),
    "grey": (0.62, 0.62, 0.62),
}
SKIN: tuple[RGB, ...] = (
    (0.96, 0.82, 0.70),
    (0.90, 0.72, 0.58),
    (0.80, 0.60, 0.45),
    (0.66, 0.46, 0.32),
    (0.48, 0.32, 0.22),
    (0.34, 0.22, 0.15),
)
PATTERNS = ("plain", "stripes", "checks", "logo")
BAGS = ("none", "backpack", "shoulder", "handbag")
HATS = ("none", "cap", "beanie")
LOWER_STYLES = ("trousers", "shorts", "skirt")
HAIR_LENGTHS = ("short", "medium", "long")


@dataclass(frozen=True, slots=True)
class AttributePriors:
    """How one site's people dress: palettes and attribute probabilities (the non-IID part).

    ``dup_prob`` is the chance that a person re-uses one of ``proto_ratio * n_ids``
    prototype outfits with small changes; this makes look-alike identities.
    """

    upper_palette: tuple[str, ...]
    lower_palette: tuple[str, ...]
    hair_palette: tuple[str, ...] = tuple(HAIR)
    skin_weights: tuple[float, ...] = (1, 1, 1, 1, 1, 1)
    pattern_probs: tuple[float, float, float, float] = (0.55, 0.2, 0.1, 0.15)
    bag_probs: tuple[float, float, float, float] = (0.5, 0.25, 0.15, 0.1)
    hat_probs: tuple[float, float, float] = (0.85, 0.1, 0.05)
    lower_style_probs: tuple[float, float, float] = (0.8, 0.12, 0.08)
    short_sleeve_prob: float = 0.4
    dup_prob: float = 0.35
    proto_ratio: float = 0.3
    colour_jitter: float = 0.04


@dataclass(frozen=True, slots=True)
class Outfit:
    """What a person wears on one day; several per identity model clothes changes."""

    upper: str
    upper_rgb: RGB
    upper2: str
    upper2_rgb: RGB
    pattern: str
    sleeves: str
    lower: str
    lower_rgb: RGB
    lower_style: str
    shoes_rgb: RGB
    bag: str
    bag_rgb: RGB
    hat: str
    hat_rgb: RGB


@dataclass(frozen=True, slots=True)
class Identity:
    """A person: body attributes that never change plus their outfits."""

    pid: int
    skin: int
    skin_rgb: RGB
    hair: str
    hair_rgb: RGB
    hair_length: str
    width: float
    height: float
    outfits: tuple[Outfit, ...]
    prototype: int  # index of the shared prototype outfit, -1 when drawn fresh

    def to_meta(self) -> dict:
        """JSON-ready attribute dict (RGB rounded to 3 decimals)."""
        return _rounded(asdict(self))


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 3)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v) for v in obj]
    return obj


def _pick(rng: np.random.Generator, names: tuple[str, ...], probs=None) -> str:
    p = None if probs is None else np.asarray(probs, float) / np.sum(probs)
    return names[int(rng.choice(len(names), p=p))]


def jitter(rng: np.random.Generator, rgb: RGB, sd: float) -> RGB:
    """``rgb`` plus Gaussian noise of ``sd`` per channel, clipped to [0, 1]."""
    v = np.clip(np.asarray(rgb) + rng.normal(0.0, sd, 3), 0.0, 1.0)
    return (float(v[0]), float(v[1]), float(v[2]))


def draw_outfit(rng: np.random.Generator, pri: AttributePriors) -> Outfit:
    """A fresh outfit from the site's palettes and attribute probabilities."""
    upper = _pick(rng, pri.upper_palette)
    upper2 = _pick(rng, tuple(c for c in COLOURS if c != upper))
    lower = _pick(rng, pri.lower_palette)
    shoes = _pick(rng, ("black", "white", "brown", "grey", "navy"))
    bag_colour = _pick(rng, ("black", "charcoal", "brown", "navy", "red", "beige", "grey"))
    hat_colour = _pick(rng, pri.upper_palette)
    j = pri.colour_jitter
    return Outfit(
        upper=upper,
        upper_rgb=jitter(rng, COLOURS[upper], j),
        upper2=upper2,
        upper2_rgb=jitter(rng, COLOURS[upper2], j),
        pattern=_pick(rng, PATTERNS, pri.pattern_probs),
        sleeves="short" if rng.random() < pri.short_sleeve_prob else "long",
        lower=lower,
        lower_rgb=jitter(rng, COLOURS[lower], j),
        lower_style=_pick(rng, LOWER_STYLES, pri.lower_style_probs),
        shoes_rgb=jitter(rng, COLOURS[shoes], j),
        bag=_pick(rng, BAGS, pri.bag_probs),
        bag_rgb=jitter(rng, COLOURS[bag_colour], j),
        hat=_pick(rng, HATS, pri.hat_probs),
        hat_rgb=jitter(rng, COLOURS[hat_colour], j),
    )


def _perturb(rng: np.random.Generator, base: Outfit, pri: AttributePriors) -> Outfit:
    """A look-alike: same outfit, re-jittered colours, zero to two attribute groups redrawn."""
    fresh = draw_outfit(rng, pri)
    j = pri.colour_jitter
    fields = {
        "upper_rgb": jitter(rng, COLOURS[base.upper], j),
        "lower_rgb": jitter(rng, COLOURS[base.lower], j),
    }
    groups = (
        ("bag", "bag_rgb"),
        ("hat", "hat_rgb"),
        ("lower", "lower_rgb", "lower_style"),
        ("pattern", "upper2", "upper2_rgb"),
        ("sleeves",),
        ("shoes_rgb",),
    )
    for g in rng.choice(len(groups), size=int(rng.integers(0, 3)), replace=False):
        fields.update({name: getattr(fresh, name) for name in groups[int(g)]})
    return replace(base, **fields)


def prototype_outfit(seed: int, site_uid: int, index: int, pri: AttributePriors) -> Outfit:
    """Prototype ``index`` of a site's look-alike pool; a pure function of its arguments."""
    return draw_outfit(np.random.default_rng([seed, site_uid, index, 0x9907]), pri)


def draw_identity(
    seed: int, site_uid: int, pid: int, pri: AttributePriors, n_prototypes: int, n_outfits: int = 1
) -> Identity:
    """Person ``pid`` of a site; independent of the order in which identities are drawn."""
    rng = np.random.default_rng([seed, site_uid, pid, 0x1D])
    skin = int(rng.choice(len(SKIN), p=np.asarray(pri.skin_weights) / np.sum(pri.skin_weights)))
    hair = _pick(rng, pri.hair_palette)
    proto = -1
    outfits = []
    for _ in range(n_outfits):
        if n_prototypes > 0 and rng.random() < pri.dup_prob:
            proto = int(rng.integers(n_prototypes)) if proto < 0 else proto
            outfits.append(_perturb(rng, prototype_outfit(seed, site_uid, proto, pri), pri))
        else:
            outfits.append(draw_outfit(rng, pri))
    return Identity(
        pid=pid,
        skin=skin,
        skin_rgb=jitter(rng, SKIN[skin], 0.02),
        hair=hair,
        hair_rgb=jitter(rng, HAIR[hair], 0.03),
        hair_length=_pick(rng, HAIR_LENGTHS, (0.45, 0.3, 0.25)),
        width=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.9, 1.06)),
        outfits=tuple(outfits),
        prototype=proto,
    )
