"""Planted ground truth for the audit: person crops with known text drawn on them.

The audit's recall and precision can only be measured on images whose text is known, and no
real site may be copied here, so this writes a FedReID-layout site of canvases built from
given base crops, some with one or two text items (a name, a phone number, a date, a
licence plate, a staff badge) at a chosen size, angle and contrast, the rest clean.

Canvas: two base crops side by side, each scaled to ``canvas_hw[0]`` high and half the
width (256×256 by default: two people in a wider frame, so a phone number at 16 px fits).
Text size is the font's pixel size (PIL's ``size``: about the line height; capitals are
about 0.7 of it). Plates and badges get their own light patch; other text is drawn straight
on the image, ``high`` contrast in black or white against the local mean, ``low`` contrast
at a luminance 70 levels from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fedreid.audit.entities import GIVEN_NAMES, SURNAMES, read_names

KINDS = ("PERSON", "PERSON_UNLISTED", "PHONE_NUMBER", "DATE_TIME", "LICENSE_PLATE", "BADGE_ID")
# The entity type the audit should report for each planted kind.
EXPECTED_ENTITY = {
    "PERSON": "PERSON",
    "PERSON_UNLISTED": "PERSON",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "DATE_TIME": "DATE_TIME",
    "LICENSE_PLATE": "LICENSE_PLATE",
    "BADGE_ID": "ID_NUMBER",
}
# Names no deny list holds: what a pattern-only audit cannot know (measured, not hidden).
_UNLISTED_GIVEN = ("Thaddeus", "Ottoline", "Perpetua", "Cosima", "Evander", "Isolde", "Fenella",
                   "Barnaby", "Ignatius", "Leocadia")
_UNLISTED_FAMILY = ("Featherstone", "Ravenscroft", "Abernathy", "Quimby", "Oyelaran",
                    "Pennington", "Haverbrook", "Stallworth", "Wickersham", "Dunmore")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PLATE_LETTERS = "ABCDEFGHJKLMNPRSTVWXY"
_LOW_CONTRAST = 70


@dataclass(frozen=True)
class PlantedText:
    """One text item drawn on an image: what it says and how hard it is to read."""

    kind: str
    text: str
    size: int
    angle: float
    contrast: str


@dataclass(frozen=True)
class PlantedImage:
    """One written image (path relative to the site folder) and the text it carries."""

    relpath: str
    items: tuple[PlantedText, ...]


def make_text(kind: str, rng: np.random.Generator) -> str:
    """A random string of ``kind``, in one of the formats a site may show."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if kind == "PERSON":
        name = f"{pick(read_names(GIVEN_NAMES))} {pick(read_names(SURNAMES))}"
        return name.upper() if rng.random() < 0.3 else name
    if kind == "PERSON_UNLISTED":
        return f"{pick(_UNLISTED_GIVEN)} {pick(_UNLISTED_FAMILY)}"
    if kind == "PHONE_NUMBER":
        n = int(rng.integers(100, 1000))
        return pick((f"+44 20 7946 0{n}", f"020 7946 0{n}", f"(212) 555-01{n % 100:02d}",
                     f"+1 415 555 0{n % 100:02d}{n // 100}"))
    if kind == "DATE_TIME":
        d, m, y = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1990, 2026))
        return pick((f"{d:02d}/{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d} {_MONTHS[m % 11]} {y}"))
    if kind == "LICENSE_PLATE":
        letters = lambda k: "".join(pick(_PLATE_LETTERS) for _ in range(k))  # noqa: E731
        return pick((f"{letters(2)}{int(rng.integers(51, 75))} {letters(3)}",
                     f"{letters(2)}-{int(rng.integers(100, 1000))}-{letters(2)}"))
    if kind == "BADGE_ID":
        number = int(rng.integers(10000, 1000000))
        return pick((f"ID {number}", f"STAFF ID {number}", f"BADGE #{number}"))
    raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font: the same glyphs on every machine, no system fonts."""
    return ImageFont.load_default(size)


def _canvas(bases: Sequence[np.ndarray], rng: np.random.Generator, hw: tuple[int, int]) -> Image.Image:
    height, width = hw
    canvas = Image.new("RGB", (width, height))
    for slot in range(2):
        base = bases[int(rng.integers(len(bases)))]
        crop = Image.fromarray(base).convert("RGB").resize((width // 2, height), Image.BILINEAR)
        canvas.paste(crop, (slot * (width // 2), 0))
    return canvas


def _text_layer(item: PlantedText, local_luma: float, rng: np.random.Generator) -> Image.Image:
    """The item drawn on a transparent layer (with its patch for plates and badges), rotated."""
    font = _font(item.size)
    left, top, right, bottom = font.getbbox(item.text)
    pad = max(2, item.size // 4)
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if item.kind in ("LICENSE_PLATE", "BADGE_ID"):
        patch = (235, 220, 60) if item.kind == "LICENSE_PLATE" and rng.random() < 0.5 else (240, 240, 235)
        if item.contrast == "low":
            patch = tuple(int(c * 0.75) for c in patch)
        draw.rectangle((0, 0, layer.width - 1, layer.height - 1), fill=(*patch, 255))
        background = 0.299 * patch[0] + 0.587 * patch[1] + 0.114 * patch[2]
    else:
        background = local_luma
    if item.contrast == "high":
        ink = 0 if background > 110 else 255
    else:
        ink = int(np.clip(background - _LOW_CONTRAST if background > 127 else background + _LOW_CONTRAST, 0, 255))
    draw.text((pad - left, pad - top), item.text, font=font, fill=(ink, ink, ink, 255))
    return layer.rotate(item.angle, resample=Image.BICUBIC, expand=True)


def _place(canvas: Image.Image, layer: Image.Image, taken: list[tuple[int, int, int, int]],
           rng: np.random.Generator) -> tuple[int, int] | None:
    """A random spot where the layer fits inside the canvas without touching earlier text."""
    free_w, free_h = canvas.width - layer.width, canvas.height - layer.height
    if free_w < 0 or free_h < 0:
        return None
    for _ in range(50):
        x, y = int(rng.integers(free_w + 1)), int(rng.integers(free_h + 1))
        box = (x, y, x + layer.width, y + layer.height)
        if all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken):
            return x, y
    return None


def draw_items(canvas: Image.Image, items: Sequence[PlantedText],
               rng: np.random.Generator) -> tuple[PlantedText, ...]:
    """Draw ``items`` on ``canvas`` in place; return those that fitted (wide text at large
    sizes may not)."""
    gray = np.asarray(canvas.convert("L"), dtype=np.float32)
    taken: list[tuple[int, int, int, int]] = []
    drawn = []
    for item in items:
        probe = _text_layer(item, 128.0, np.random.default_rng(0))
        spot = _place(canvas, probe, taken, rng)
        if spot is None:
            continue
        x, y = spot
        local = float(gray[y : y + probe.height, x : x + probe.width].mean())
        layer = _text_layer(item, local, rng)
        canvas.paste(layer, (x, y), layer)
        taken.append((x, y, x + layer.width, y + layer.height))
        drawn.append(item)
    return tuple(drawn)


def plant_site(
    bases: Sequence[np.ndarray],
    out: Path,
    *,
    n_images: int,
    clean_fraction: float = 0.3,
    pair_fraction: float = 0.25,
    kinds: Sequence[str] = KINDS,
    sizes: Sequence[int] = (8, 12, 16, 24),
    angles: Sequence[float] = (0.0, 5.0, 10.0),
    contrasts: Sequence[str] = ("high", "low"),
    canvas_hw: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> list[PlantedImage]:
    """Write ``n_images`` JPEGs (quality 90) into ``out`` in the FedReID layout, one identity
    folder per image, and return their ground truth.

    ``bases`` are RGB uint8 crops (any size). A share ``clean_fraction`` carries no text; of
    the rest, ``pair_fraction`` carry two items (what the risk grading needs), the others
    one. Angles get a random sign. Same arguments and seed → identical files.
    """
    if not bases:
        raise ValueError("bases is empty; pass at least one RGB crop to draw on")
    if n_images < 1:
        raise ValueError(f"n_images={n_images}; pass a positive count")
    if not 0.0 <= clean_fraction <= 1.0 or not 0.0 <= pair_fraction <= 1.0:
        raise ValueError(f"clean_fraction={clean_fraction}, pair_fraction={pair_fraction}: "
                         "both must lie in [0, 1]")
    unknown = sorted(set(kinds) - set(KINDS)) + sorted(set(contrasts) - {"high", "low"})
    if unknown:
        raise ValueError(f"unknown kinds/contrasts {unknown}; kinds: {', '.join(KINDS)}; "
                         "contrasts: high, low")
    rng = np.random.default_rng(seed)
    planted: list[PlantedImage] = []
    for index in range(n_images):
        canvas = _canvas(bases, rng, canvas_hw)
        items: tuple[PlantedText, ...] = ()
        if rng.random() >= clean_fraction:
            count = 2 if rng.random() < pair_fraction else 1
            chosen = rng.choice(len(kinds), size=count, replace=False)
            wanted = []
            for k in chosen:
                kind = kinds[int(k)]
                angle = float(angles[int(rng.integers(len(angles)))])
                wanted.append(PlantedText(
                    kind=kind, text=make_text(kind, rng),
                    size=int(sizes[int(rng.integers(len(sizes)))]),
                    angle=angle * (1 if rng.random() < 0.5 else -1) if angle else 0.0,
                    contrast=str(contrasts[int(rng.integers(len(contrasts)))]),
                ))
            items = draw_items(canvas, wanted, rng)
        pid = index + 1
        relpath = f"pytorch/train_all/{pid:04d}/{pid:04d}_c1s1_{index:06d}_00.jpg"
        path = out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path, "JPEG", quality=90)
        planted.append(PlantedImage(relpath=relpath, items=items))
    return planted
