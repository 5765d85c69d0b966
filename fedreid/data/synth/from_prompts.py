"""Render identities described by prompts into one site in the FedReID layout.

DPPP stage 1 without diffusion weights (research/methods.md §6): each prompt is one identity
(pids 1..N in prompt order). Every picture draws its style — light level, colour cast,
viewpoint, background — among the prompt's words, or, for a dimension the prompt leaves
open, from its camera (``cameras`` cameras, each with its own background, light and cast
drawn among the allowed words). Styles in ``exclude_styles`` never appear (default: the
indoor scenes ``corridor`` and ``station``, so synthetic-8's cuhk03 and ilids sites, and
camera 1 of cuhk01, stay unseen styles for evaluation); a prompt asking for one is refused.

Output: ``<out>/pytorch/{train_all,query,gallery}/<pid>/cam_<c>_<pid>_<k>.jpg`` (image ``i``
of an identity is camera ``i mod cameras``); test identities (``test_fraction`` of them)
put the first half of the cameras in the query and the rest in the gallery. ``meta.json``
keeps each identity's prompt and attributes and, per picture, the prompt and the style words
drawn, plus the attribute ground truth. Seeds depend on ``(seed, pid, camera, shot)`` only:
the same prompts and seed give identical files.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .attributes_truth import ATTRIBUTE_NAMES, ImageFacts, Palettes, present, site_truth
from .camera import CameraSpec, draw_capture
from .generate import (
    FORMAT_VERSION,
    PROMPTS_GENERATOR,
    TRUTH_DEFINITION,
    body_pixels,
    clear_site_dir,
    run_tasks,
    save_jpeg,
    validate_size,
    write_json,
)
from .identity import COLOURS, HAIR, SKIN, AttributePriors, Identity, draw_outfit, jitter
from .prompts import (
    DEFAULT_HELD_OUT,
    HEIGHTS,
    LIGHT_CASTS,
    LIGHT_LEVELS,
    SCENES,
    VIEWS,
    WIDTHS,
    IdentityPrompt,
    check_held_out,
    check_styles,
    parse_prompt,
)
from .render import render_image

PROMPT_UID = zlib.crc32(b"prompts")
PRIORS = AttributePriors(upper_palette=tuple(COLOURS), lower_palette=tuple(COLOURS))
_VIEW_PROBS = {"front": (1.0, 0.0, 0.0), "back": (0.0, 1.0, 0.0), "side": (0.0, 0.0, 1.0)}
CHUNK = 64


def prompt_identity(prompt: IdentityPrompt, seed: int, pid: int) -> Identity:
    """The person a prompt describes; what it leaves open is drawn from ``(seed, pid)``."""
    rng = np.random.default_rng([seed, PROMPT_UID, pid, 0x1D])
    o = draw_outfit(rng, PRIORS)
    j = PRIORS.colour_jitter
    if prompt.upper is not None:
        o = replace(o, upper=prompt.upper, upper_rgb=jitter(rng, COLOURS[prompt.upper], j))
    if prompt.upper2 is not None:
        o = replace(o, upper2=prompt.upper2, upper2_rgb=jitter(rng, COLOURS[prompt.upper2], j))
    if prompt.pattern is not None:
        o = replace(o, pattern=prompt.pattern)
    if prompt.sleeves is not None:
        o = replace(o, sleeves=prompt.sleeves)
    if prompt.lower is not None:
        o = replace(o, lower=prompt.lower, lower_rgb=jitter(rng, COLOURS[prompt.lower], j))
    if prompt.lower_style is not None:
        o = replace(o, lower_style=prompt.lower_style)
    if prompt.bag is not None:
        o = replace(o, bag=prompt.bag)
    if prompt.bag_colour is not None:
        o = replace(o, bag_rgb=jitter(rng, COLOURS[prompt.bag_colour], j))
    if prompt.hat is not None:
        o = replace(o, hat=prompt.hat)
    if prompt.hat_colour is not None:
        o = replace(o, hat_rgb=jitter(rng, COLOURS[prompt.hat_colour], j))
    skin = prompt.skin if prompt.skin is not None else int(rng.integers(len(SKIN)))
    hair = prompt.hair or list(HAIR)[int(rng.integers(len(HAIR)))]
    width = WIDTHS.get(prompt.width, (0.85, 1.2))
    height = HEIGHTS.get(prompt.height, (0.9, 1.06))
    return Identity(
        pid=pid,
        skin=skin,
        skin_rgb=jitter(rng, SKIN[skin], 0.02),
        hair=hair,
        hair_rgb=jitter(rng, HAIR[hair], 0.03),
        hair_length=prompt.hair_length or ("short", "medium", "long")[int(rng.integers(3))],
        width=float(rng.uniform(*width)),
        height=float(rng.uniform(*height)),
        outfits=(o,),
        prototype=-1,
    )


def _choose(rng: np.random.Generator, words: Sequence[str]) -> str:
    return words[int(rng.integers(len(words)))]


def prompt_cameras(n: int, seed: int, held_out: tuple[str, ...]) -> tuple[tuple[CameraSpec, dict], ...]:
    """``n`` cameras with their default style words (background, light level, cast)."""
    rng = np.random.default_rng([seed, PROMPT_UID, 0xCA3])
    scenes = [s for s in SCENES if s not in held_out]
    levels = [w for w in LIGHT_LEVELS if w not in held_out]
    casts = [w for w in LIGHT_CASTS if w not in held_out]
    out = []
    for c in range(n):
        style = {"background": _choose(rng, scenes), "light": _choose(rng, levels),
                 "cast": _choose(rng, casts)}
        cam = CameraSpec(
            name=f"gen{c}",
            background=style["background"],
            light=LIGHT_LEVELS[style["light"]],
            cast=LIGHT_CASTS[style["cast"]],
            blur=float(rng.uniform(0.3, 0.9)),
            noise=float(rng.uniform(0.01, 0.04)),
        )
        out.append((cam, style))
    return tuple(out)


def _allowed(chosen: tuple[str, ...], every: Sequence[str], held_out: tuple[str, ...]) -> list[str]:
    return [w for w in (chosen or every) if w not in held_out]


def _render_chunk(task: tuple) -> list[tuple[str, dict, ImageFacts]]:
    """Render one chunk of (job, identity, prompt) entries; returns meta and facts per picture."""
    seed, size, root, cameras, held_out, entries = task
    made: set[Path] = set()
    out = []
    for rel, pid, cam_i, shot, ident, prompt in entries:
        base_cam, cam_style = cameras[cam_i]
        rng = np.random.default_rng([seed, PROMPT_UID, pid, cam_i, shot, 0x5E])
        style = {
            "background": _choose(rng, _allowed(prompt.scenes, [cam_style["background"]], held_out)),
            "light": _choose(rng, _allowed(prompt.light, [cam_style["light"]], held_out)),
            "cast": _choose(rng, _allowed(prompt.cast, [cam_style["cast"]], held_out)),
        }
        views = _allowed(prompt.views, VIEWS, held_out)
        probs = np.mean([_VIEW_PROBS[v] for v in views], axis=0)
        cam = replace(
            base_cam,
            background=style["background"],
            light=LIGHT_LEVELS[style["light"]],
            cast=LIGHT_CASTS[style["cast"]],
            view_probs=tuple(float(p) for p in probs),
        )
        cap = draw_capture(rng, cam)
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        pixels = render_image(ident, 0, cam, cap, rng, size, phase)
        save_jpeg(pixels, root, rel, made)
        meta = {
            "pid": pid,
            "camid": cam_i,
            "viewpoint": cap.view,
            "angle": round(cap.angle) % 360,
            "outfit": 0,
            "occluded": cap.occluder is not None,
            "prompt": prompt.text,
            "style": {**style, "viewpoint": cap.view},
        }
        facts = ImageFacts(
            pid=pid,
            outfit=0,
            view=cap.view,
            infrared=False,
            body_px=body_pixels(size[0], cam.resolution, ident.height, cap.scale, cam.foreshortening),
            occluder=None if cap.occluder is None else cap.occluder[0],
            gain=cap.light * cam.contrast,
        )
        out.append((rel, meta, facts))
    return out


def _as_prompts(prompts: Sequence[IdentityPrompt | str]) -> list[IdentityPrompt]:
    if isinstance(prompts, str) or len(prompts) < 2:
        raise ValueError(
            "prompts must be a list of at least 2 prompts (strings or parse_prompts results), "
            f"got {prompts!r:.80}"
        )
    return [
        p if isinstance(p, IdentityPrompt) else parse_prompt(p, line=i, where=f"prompt {i}")
        for i, p in enumerate(prompts, start=1)
    ]


def _check(images_per_identity, cameras, test_fraction, workers, seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    if not isinstance(cameras, int) or isinstance(cameras, bool) or not 2 <= cameras <= 16:
        raise ValueError(f"cameras={cameras!r} must be an int in 2..16 (query and gallery halves)")
    if (
        not isinstance(images_per_identity, int)
        or isinstance(images_per_identity, bool)
        or not cameras <= images_per_identity <= 1000
    ):
        raise ValueError(
            f"images_per_identity={images_per_identity!r} must be an int in {cameras}..1000 "
            "(at least one picture per camera)"
        )
    if not isinstance(test_fraction, int | float) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an int >= 1")


def generate_from_prompts(
    prompts: Sequence[IdentityPrompt | str],
    out: str | os.PathLike,
    *,
    seed: int = 0,
    size: tuple[int, int] = (128, 64),
    images_per_identity: int = 8,
    cameras: int = 4,
    test_fraction: float = 0.25,
    exclude_styles: Sequence[str] = DEFAULT_HELD_OUT,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render one identity per prompt into the site folder ``out``; returns its summary
    (also in ``meta.json`` without the per-image entries). See the module docstring."""
    people = _as_prompts(prompts)
    _check(images_per_identity, cameras, test_fraction, workers, seed)
    size = validate_size(size)
    held = check_styles(list(exclude_styles))
    for p in people:
        check_held_out(p, held)
    site = Path(out)
    clear_site_dir(site)
    n = len(people)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    order = np.random.default_rng([seed, PROMPT_UID, 0x7E5]).permutation(n)
    test = {int(i) + 1 for i in order[:n_test]}
    cams = prompt_cameras(cameras, seed, held)
    identities = {pid: prompt_identity(p, seed, pid) for pid, p in enumerate(people, start=1)}
    entries = []
    for pid, prompt in enumerate(people, start=1):
        for i in range(images_per_identity):
            cam, shot = i % cameras, i // cameras
            split = (
                "train_all" if pid not in test else ("query" if cam < cameras // 2 else "gallery")
            )
            rel = f"{split}/{pid:04d}/cam_{cam}_{pid:04d}_{shot:03d}.jpg"
            entries.append((rel, pid, cam, shot, identities[pid], prompt))
    root = site / "pytorch"
    tasks = [
        (seed, size, str(root), cams, held, tuple(entries[i : i + CHUNK]))
        for i in range(0, len(entries), CHUNK)
    ]
    images: dict[str, dict] = {}
    facts: dict[str, ImageFacts] = {}

    def collect(task: tuple, result: list) -> None:
        for rel, meta, fact in result:
            images[rel] = meta
            facts[rel] = fact
        if progress is not None:
            progress(len(images), len(entries))

    run_tasks(tasks, _render_chunk, workers, collect)
    counts = {
        split: {
            "ids": len({m["pid"] for k, m in images.items() if k.startswith(split + "/")}),
            "images": sum(k.startswith(split + "/") for k in images),
        }
        for split in ("train_all", "query", "gallery")
    }
    summary = {
        "generator": PROMPTS_GENERATOR,
        "format_version": FORMAT_VERSION,
        "site": site.name,
        "video": False,
        "layout": "small",
        "seed": seed,
        "size": list(size),
        "num_cameras": cameras,
        "held_out_styles": list(held),
        "cameras": [dict(c.to_meta(), camid=i, style=s) for i, (c, s) in enumerate(cams)],
        "counts": counts,
    }
    meta = {
        **summary,
        "identities": {
            str(pid): {
                "role": "test" if pid in test else "train",
                "prompt": people[pid - 1].text,
                **ident.to_meta(),
                "attributes": [sorted(present(ident, 0))],
            }
            for pid, ident in identities.items()
        },
        "images": {k: images[k] for k in sorted(images)},
        "attribute_names": list(ATTRIBUTE_NAMES),
        "attribute_truth": {
            "definition": TRUTH_DEFINITION,
            "attributes": site_truth(identities, [facts[k] for k in sorted(facts)], Palettes()),
        },
    }
    site.mkdir(parents=True, exist_ok=True)
    write_json(site / "meta.json", meta)
    return summary
