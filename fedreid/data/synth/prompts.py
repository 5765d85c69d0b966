"""Identity prompts: one line of text per person, parsed into the generator's attributes.

DPPP's GenePerson (research/methods.md §6) drives a diffusion model with prompts built from
appearance, illumination and viewpoint. No diffusion weights exist offline, so the prompts
drive the procedural renderer instead: every word must name something it can draw. A prompt
is noun phrases; the modifiers before a noun describe it, and the noun decides what they may
be::

    red t-shirt with white stripes, blue jeans, black backpack, no hat,
    long blonde hair, fair skin, slim tall build, dim warm light, front and side views,
    street background

Content (clothing, bag, hat, hair, skin, build) makes the identity; style (light, views,
background) is drawn per picture among the words given, or from the camera when none are.
Anything left out is sampled. Filler words (``a``, ``with``, ``wearing``...) are ignored;
any other word outside the vocabulary is an error naming the line, the word and the
vocabulary. ``random_prompts`` writes prompts in the same language.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from .camera import BACKGROUNDS
from .identity import COLOURS, HAIR

FILLER = frozenset(
    "a an the with and wearing wears in on under at from seen person pedestrian someone who "
    "is has carrying carries of".split()
)
UPPER = {  # garment -> sleeves it implies (None: either)
    "shirt": None,
    "top": None,
    "blouse": None,
    "t-shirt": "short",
    "jacket": "long",
    "coat": "long",
    "sweater": "long",
    "hoodie": "long",
}
LOWER = {"trousers": "trousers", "jeans": "trousers", "pants": "trousers", "shorts": "shorts",
         "skirt": "skirt"}
PATTERN_NOUNS = {"stripes": "stripes", "checks": "checks", "logo": "logo"}
PATTERN_ADJ = {"plain": "plain", "striped": "stripes", "checked": "checks"}
SLEEVES = {"short-sleeved": "short", "long-sleeved": "long"}
BAGS = {"backpack": "backpack", "handbag": "handbag", "bag": "shoulder"}
HATS = {"cap": "cap", "beanie": "beanie", "hat": None}
HAIR_LENGTHS = ("short", "medium", "long")
SKIN_TONES = ("pale", "fair", "olive", "tan", "brown", "dark")  # generator skin 0..5
WIDTHS = {"slim": (0.85, 0.967), "average": (0.967, 1.083), "broad": (1.083, 1.2)}
HEIGHTS = {"petite": (0.9, 0.95), "tall": (1.0, 1.06)}
LIGHT_LEVELS = {"bright": 1.2, "normal": 1.0, "dim": 0.72, "dark": 0.5}
LIGHT_CASTS = {"warm": (1.08, 1.0, 0.86), "neutral": (1.0, 1.0, 1.0), "cool": (0.9, 1.0, 1.1)}
VIEWS = ("front", "back", "side")
SCENES = tuple(k for k, v in BACKGROUNDS.items() if v[4] >= 0)  # ground-level scenes only
STYLE_WORDS = frozenset((*LIGHT_LEVELS, *LIGHT_CASTS, *VIEWS, *SCENES))
# indoor scenes of cuhk03 and ilids (and camera 1 of cuhk01): kept out of generated sets so
# those synthetic-8 sites test generalisation to unseen styles
DEFAULT_HELD_OUT = ("corridor", "station")

_HEADS = {
    **{w: "upper" for w in UPPER},
    **{w: "lower" for w in LOWER},
    **{w: "pattern" for w in PATTERN_NOUNS},
    **{w: "bag" for w in BAGS},
    **{w: "hat" for w in HATS},
    "hair": "hair",
    "skin": "skin",
    "build": "build",
    "light": "light",
    "lighting": "light",
    "illumination": "light",
    "view": "view",
    "views": "view",
    "background": "scene",
    "scene": "scene",
}
_MODIFIERS = {  # what may stand before each kind of noun
    "upper": (*COLOURS, *PATTERN_ADJ, *SLEEVES),
    "lower": tuple(COLOURS),
    "pattern": tuple(COLOURS),
    "bag": (*COLOURS, "no", "shoulder"),
    "hat": (*COLOURS, "no"),
    "hair": (*HAIR_LENGTHS, *HAIR),
    "skin": SKIN_TONES,
    "build": (*WIDTHS, *HEIGHTS),
    "light": (*LIGHT_LEVELS, *LIGHT_CASTS),
    "view": VIEWS,
    "scene": SCENES,
}
_ALL_MODIFIERS = frozenset(w for ws in _MODIFIERS.values() for w in ws)


def vocabulary() -> str:
    """Every word a prompt may use, grouped as an error message lists them."""
    groups = {
        "upper garments": UPPER,
        "lower garments": LOWER,
        "patterns": (*PATTERN_NOUNS, *PATTERN_ADJ),
        "sleeves": SLEEVES,
        "bags": (*BAGS, "shoulder", "no"),
        "hats": (*HATS, "no"),
        "clothing colours": COLOURS,
        "hair": ("hair", *HAIR_LENGTHS, *HAIR),
        "skin": ("skin", *SKIN_TONES),
        "build": ("build", *WIDTHS, *HEIGHTS),
        "light": ("light", "lighting", "illumination", *LIGHT_LEVELS, *LIGHT_CASTS),
        "views": ("view", "views", *VIEWS),
        "backgrounds": ("background", "scene", *SCENES),
        "ignored": sorted(FILLER),
    }
    return "; ".join(f"{name}: {', '.join(words)}" for name, words in groups.items())


@dataclass(frozen=True)
class IdentityPrompt:
    """One parsed prompt. Content fields are None where the prompt left them to chance;
    style fields list the words given (empty: the camera decides)."""

    text: str
    line: int = 0
    upper: str | None = None
    upper_garment: str | None = None
    sleeves: str | None = None
    pattern: str | None = None
    upper2: str | None = None
    lower: str | None = None
    lower_style: str | None = None
    bag: str | None = None
    bag_colour: str | None = None
    hat: str | None = None
    hat_colour: str | None = None
    hair: str | None = None
    hair_length: str | None = None
    skin: int | None = None
    width: str | None = None
    height: str | None = None
    light: tuple[str, ...] = ()
    cast: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    scenes: tuple[str, ...] = ()
    style_words: tuple[str, ...] = field(default=(), repr=False)


class _Parse:
    """Collects one prompt's fields; every complaint names the source line and the word."""

    def __init__(self, text: str, where: str) -> None:
        self.fields: dict = {}
        self.where = where
        self.text = text

    def fail(self, word: str, problem: str, fix: str) -> ValueError:
        return ValueError(
            f"{self.where}: word {word!r}: {problem} (prompt {self.text!r}); fix: {fix}"
        )

    def set(self, name: str, value, word: str) -> None:
        if name in self.fields and self.fields[name] != value:
            raise self.fail(
                word, f"{name} given twice ({self.fields[name]!r} and {value!r})",
                "describe one outfit and one look per line",
            )
        self.fields[name] = value

    def add(self, name: str, value: str) -> None:
        self.fields[name] = (*self.fields.get(name, ()), value)

    def noun(self, head: str, mods: list[str]) -> None:
        slot = _HEADS[head]
        allowed = _MODIFIERS[slot]
        for m in mods:
            if m not in allowed:
                raise self.fail(
                    m, f"{m!r} cannot describe {head!r}",
                    f"before {head!r} use only: {', '.join(allowed)}",
                )
        getattr(self, "_" + slot)(head, mods)

    def _colour(self, mods: list[str], table=COLOURS) -> str | None:
        colours = [m for m in mods if m in table]
        if len(colours) > 1:
            raise self.fail(colours[1], "two colours for one item", "give each item one colour")
        return colours[0] if colours else None

    def _upper(self, head: str, mods: list[str]) -> None:
        self.set("upper_garment", head, head)
        if (colour := self._colour(mods)) is not None:
            self.set("upper", colour, colour)
        sleeves = [SLEEVES[m] for m in mods if m in SLEEVES] or (
            [UPPER[head]] if UPPER[head] else []
        )
        for s in sleeves:
            self.set("sleeves", s, head)
        for m in mods:
            if m in PATTERN_ADJ:
                self.set("pattern", PATTERN_ADJ[m], m)

    def _pattern(self, head: str, mods: list[str]) -> None:
        self.set("pattern", PATTERN_NOUNS[head], head)
        if (colour := self._colour(mods)) is not None:
            self.set("upper2", colour, colour)

    def _lower(self, head: str, mods: list[str]) -> None:
        self.set("lower_style", LOWER[head], head)
        colour = self._colour(mods) or ("denim" if head == "jeans" else None)
        if colour is not None:
            self.set("lower", colour, head)

    def _bag(self, head: str, mods: list[str]) -> None:
        kind = "none" if "no" in mods else BAGS[head]
        if kind == "none" and head != "bag":
            raise self.fail(head, f"'no' before {head!r}", "write 'no bag'")
        self.set("bag", kind, head)
        if (colour := self._colour(mods)) is not None:
            self.set("bag_colour", colour, colour)

    def _hat(self, head: str, mods: list[str]) -> None:
        if "no" in mods:
            if head != "hat":
                raise self.fail(head, f"'no' before {head!r}", "write 'no hat'")
            self.set("hat", "none", head)
            return
        if HATS[head] is None:
            raise self.fail(head, "'hat' names no kind of hat", "write 'cap', 'beanie' or 'no hat'")
        self.set("hat", HATS[head], head)
        if (colour := self._colour(mods)) is not None:
            self.set("hat_colour", colour, colour)

    def _hair(self, head: str, mods: list[str]) -> None:
        for m in mods:
            if m in HAIR_LENGTHS:
                self.set("hair_length", m, m)
        if (colour := self._colour(mods, HAIR)) is not None:
            self.set("hair", colour, colour)

    def _skin(self, head: str, mods: list[str]) -> None:
        for m in mods:
            self.set("skin", SKIN_TONES.index(m), m)

    def _build(self, head: str, mods: list[str]) -> None:
        for m in mods:
            self.set("width" if m in WIDTHS else "height", m, m)

    def _light(self, head: str, mods: list[str]) -> None:
        for m in mods:
            self.add("light" if m in LIGHT_LEVELS else "cast", m)

    def _view(self, head: str, mods: list[str]) -> None:
        for m in mods:
            self.add("views", m)

    def _scene(self, head: str, mods: list[str]) -> None:
        for m in mods:
            self.add("scenes", m)


def parse_prompt(text: str, *, line: int = 0, where: str = "prompt") -> IdentityPrompt:
    """Parse one prompt; ``where`` (e.g. ``"people.txt:3"``) starts every error message."""
    state = _Parse(text, where)
    pending: list[str] = []
    for word in re.split(r"[\s,;.]+", text.lower().strip()):
        if not word or word in FILLER:
            continue
        if word in _HEADS:
            state.noun(word, pending)
            pending = []
        elif word in _ALL_MODIFIERS:
            pending.append(word)
        else:
            raise state.fail(word, "not in the vocabulary", f"use the vocabulary: {vocabulary()}")
    if pending:
        raise state.fail(
            pending[-1], "words with no noun after them",
            "end each phrase with what it describes, e.g. 'red shirt', 'long hair', 'dim light'",
        )
    if not state.fields:
        raise state.fail(text, "nothing to draw", "describe at least one item, e.g. 'red shirt'")
    fields = state.fields
    styles = tuple(dict.fromkeys((*fields.get("light", ()), *fields.get("cast", ()),
                                  *fields.get("views", ()), *fields.get("scenes", ()))))
    for name in ("light", "cast", "views", "scenes"):
        if name in fields:
            fields[name] = tuple(dict.fromkeys(fields[name]))
    return IdentityPrompt(text=text.strip(), line=line, style_words=styles, **fields)


def parse_prompts(path: str | os.PathLike) -> list[IdentityPrompt]:
    """One prompt per non-empty line of ``path`` (``#`` starts a comment line)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"prompts file {path}: unreadable ({err}); fix: pass a UTF-8 text file") from err
    prompts = [
        parse_prompt(text, line=n, where=f"{path}:{n}")
        for n, text in enumerate(lines, start=1)
        if text.strip() and not text.lstrip().startswith("#")
    ]
    if len(prompts) < 2:
        raise ValueError(
            f"prompts file {path}: {len(prompts)} prompt(s); a data set needs at least 2 "
            "identities (one per line); fix: add lines"
        )
    return prompts


def check_held_out(prompt: IdentityPrompt, held_out: tuple[str, ...]) -> None:
    """Refuse a prompt that asks for a held-out style."""
    for word in prompt.style_words:
        if word in held_out:
            where = f"line {prompt.line}" if prompt.line else "prompt"
            raise ValueError(
                f"{where}: style {word!r} is held out of generated sets (held out: "
                f"{list(held_out)}) in {prompt.text!r}; fix: drop the word or pass "
                "exclude_styles without it"
            )


def check_styles(words: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a list of style words to hold out."""
    if isinstance(words, str):
        raise ValueError(f"exclude_styles={words!r} must be a list of words, e.g. ['corridor']")
    bad = [w for w in words if w not in STYLE_WORDS]
    if bad:
        raise ValueError(
            f"exclude_styles: {bad} are not style words; choose from {sorted(STYLE_WORDS)}"
        )
    for group, options in (("light levels", LIGHT_LEVELS), ("casts", LIGHT_CASTS),
                           ("views", VIEWS), ("backgrounds", SCENES)):
        if all(o in words for o in options):
            raise ValueError(f"exclude_styles holds out every one of the {group}; keep at least one")
    return tuple(dict.fromkeys(words))


def _sample(rng: np.random.Generator, options, k: int = 1) -> list[str]:
    options = list(options)
    return [options[int(i)] for i in rng.choice(len(options), size=k, replace=False)]


def random_prompts(
    n: int, seed: int, *, exclude_styles: tuple[str, ...] | list[str] = DEFAULT_HELD_OUT
) -> list[str]:
    """``n`` prompts in the prompt language, every content and style dimension drawn."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"random={n!r} must be an int >= 2 (identities to sample)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    held = check_styles(exclude_styles)
    rng = np.random.default_rng([seed, 0x9207])
    out = []
    for _ in range(n):
        parts = []
        upper = _sample(rng, COLOURS)[0]
        garment = _sample(rng, UPPER)[0]
        pattern = _sample(rng, ("plain", "plain", "stripes", "checks", "logo"))[0]
        phrase = f"{upper} {garment}"
        if pattern != "plain":
            phrase += f" with {_sample(rng, [c for c in COLOURS if c != upper])[0]} {pattern}"
        parts.append(phrase)
        parts.append(f"{_sample(rng, COLOURS)[0]} {_sample(rng, LOWER)[0]}")
        bag = _sample(rng, ("no bag", "backpack", "bag", "handbag"))[0]
        parts.append(bag if bag == "no bag" else f"{_sample(rng, COLOURS)[0]} {bag}")
        hat = _sample(rng, ("no hat", "no hat", "cap", "beanie"))[0]
        parts.append(hat if hat == "no hat" else f"{_sample(rng, COLOURS)[0]} {hat}")
        parts.append(f"{_sample(rng, HAIR_LENGTHS)[0]} {_sample(rng, HAIR)[0]} hair")
        parts.append(f"{_sample(rng, SKIN_TONES)[0]} skin")
        parts.append(f"{_sample(rng, WIDTHS)[0]} build")
        levels = [w for w in LIGHT_LEVELS if w not in held]
        casts = [w for w in LIGHT_CASTS if w not in held]
        parts.append(f"{_sample(rng, levels)[0]} {_sample(rng, casts)[0]} light")
        views = [w for w in VIEWS if w not in held]
        k = int(rng.integers(1, len(views) + 1))
        parts.append(" and ".join(_sample(rng, views, k)) + (" views" if k > 1 else " view"))
        scenes = [w for w in SCENES if w not in held]
        parts.append(" ".join(_sample(rng, scenes, min(2, len(scenes)))) + " background")
        out.append(", ".join(parts))
    return out

