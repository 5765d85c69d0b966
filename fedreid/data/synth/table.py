"""The synthetic-8 table as rows (for the CLI) and Markdown (for the README).

Counts come from the plan, so they are exactly what ``generate_synthetic8`` writes for the
same scale, seed and ``min_test_ids``; the real statistics are shown beside them. Optional
kinds add rows (no real counts: they imitate families of data sets) and a second table of
their ground truth and protocol query counts. ``site_styles`` describes every default
camera in the prompt vocabulary, so which sites a generated set leaves unseen is explicit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .kinds import KINDS, check_kinds, plan_any
from .prompts import DEFAULT_HELD_OUT, LIGHT_CASTS, LIGHT_LEVELS, VIEWS
from .specs import SITE_KEYS, SITE_SPECS, site_spec

_GROUND_TRUTH = {
    "aerial": "geometry (altitude, distance, pitch, platform, altitude level) per image",
    "ir-video": "modality per image; tracklet and frame in the file name",
    "clothes": "session and clothes_id per image",
}


def spec_rows(
    scale: float = 1.0,
    *,
    seed: int = 0,
    min_test_ids: int = 30,
    kinds: Sequence[str] = (),
    sites: Sequence[str] | None = None,
) -> list[dict]:
    """One dict per site (all eight, or ``sites``), then per kind: synthetic counts at
    ``scale``, settings, and the real counts (None for kinds)."""
    rows = []
    keys = SITE_KEYS if sites is None else [k for k in SITE_KEYS if k in sites]
    for key in [*keys, *check_kinds(kinds)]:
        plan = plan_any(key, seed=seed, scale=scale, min_test_ids=min_test_ids)
        spec, counts = plan.spec, plan.counts()
        res = sorted({c.resolution for c in spec.cameras})
        lo, hi = spec.images_per_cam
        per_cam = f"{lo}" if lo == hi else f"{lo}-{hi}"
        if spec.video:
            per_cam += f" frames x {spec.tracklets_per_cam} tracklet"
        rows.append(
            {
                "site": spec.key,
                "dataset": spec.dataset,
                "video": spec.video,
                "cams": spec.num_cameras,
                "train_ids": counts["train_all"]["ids"],
                "train_imgs": counts["train_all"]["images"],
                "query_ids": counts["query"]["ids"],
                "query_imgs": counts["query"]["images"],
                "gallery_ids": counts["gallery"]["ids"],
                "gallery_imgs": counts["gallery"]["images"],
                "distractor_ids": counts["distractors"]["ids"],
                "imgs_per_cam": per_cam,
                "resolution": "/".join(f"{r:g}" for r in res),
                "conditions": spec.conditions,
                **{
                    f"real_{name}": None if spec.real is None else getattr(spec.real, name)
                    for name in ("train_ids", "train_imgs", "query_ids", "query_imgs", "gallery_imgs")
                },
            }
        )
        if key in KINDS:
            kind = KINDS[key]
            queries: dict[str, set] = {name: set() for name in kind.protocols[:2]}
            for job in plan.jobs:
                if job.split == "query":
                    queries[kind.query_protocol(spec, job)].add((job.pid, job.cam, job.shot, job.frame))
            unit = "tracklets" if spec.video else "images"
            if spec.video:
                queries = {k: {q[:3] for q in v} for k, v in queries.items()}
            rows[-1]["ground_truth"] = _GROUND_TRUTH[key]
            rows[-1]["protocols"] = ", ".join(
                [f"{name} ({len(q)} query {unit})" for name, q in queries.items()]
                + list(kind.protocols[2:])
            )
    return rows


def _real(value: int | None, fmt: str = "") -> str:
    return "" if value is None else f" ({value:{fmt}})"


def render_spec_table(
    scale: float = 1.0,
    *,
    seed: int = 0,
    min_test_ids: int = 30,
    kinds: Sequence[str] = (),
    sites: Sequence[str] | None = None,
) -> str:
    """Markdown table: synthetic count, then the real count in parentheses (all eight sites,
    or ``sites``); with ``kinds``, their rows and a second table of their ground truth and
    protocols."""
    head = (
        "| Site | Imitates | Cams | Train IDs | Train imgs | Query IDs | Query imgs | Gallery imgs "
        "| Distractor IDs | Imgs/ID/cam | Res. | Conditions |"
    )
    lines = [head, "|" + "---|" * 12]
    total = 0
    rows = spec_rows(scale, seed=seed, min_test_ids=min_test_ids, kinds=kinds, sites=sites)
    for r in rows:
        total += r["train_imgs"] + r["query_imgs"] + r["gallery_imgs"]
        lines.append(
            f"| {r['site']} | {r['dataset']} | {r['cams']} | {r['train_ids']}{_real(r['real_train_ids'])} "
            f"| {r['train_imgs']}{_real(r['real_train_imgs'], ',')} | {r['query_ids']}{_real(r['real_query_ids'])} "
            f"| {r['query_imgs']}{_real(r['real_query_imgs'], ',')} | {r['gallery_imgs']}{_real(r['real_gallery_imgs'], ',')} "
            f"| {r['distractor_ids']} | {r['imgs_per_cam']} | {r['resolution']} | {r['conditions']} |"
        )
    lines.append(f"\nscale {scale:g}, seed {seed}: {total:,} images; real counts in parentheses.")
    extra = [r for r in rows if "protocols" in r]
    if extra:
        lines += ["", "| Kind | Ground truth | Protocols |", "|---|---|---|"]
        lines += [f"| {r['site']} | {r['ground_truth']} | {r['protocols']} |" for r in extra]
    return "\n".join(lines)


def site_styles(key: str) -> list[str]:
    """Each camera of default site ``key`` in the prompt vocabulary (nearest light level and
    cast; views the camera shows at least a quarter of the time; its background)."""
    out = []
    for cam in site_spec(key).cameras:
        level = min(LIGHT_LEVELS, key=lambda w: abs(LIGHT_LEVELS[w] - cam.light))
        cast = min(LIGHT_CASTS, key=lambda w: float(np.linalg.norm(np.subtract(LIGHT_CASTS[w], cam.cast))))
        probs = np.asarray(cam.view_probs) / np.sum(cam.view_probs)
        views = [v for v, p in zip(VIEWS, probs, strict=True) if p >= 0.25]
        out.append(
            f"{level} {cast} light, {' and '.join(views)} view{'s' if len(views) > 1 else ''}, "
            f"{cam.background} background"
        )
    return out


def held_out_sites(exclude_styles: Sequence[str] = DEFAULT_HELD_OUT) -> dict[str, list[int]]:
    """Default sites with cameras whose style uses a held-out word: ``{site: [camids]}``."""
    held = set(exclude_styles)
    out = {}
    for spec in SITE_SPECS:
        cams = [
            i
            for i, text in enumerate(site_styles(spec.key))
            if held & set(text.replace(",", " ").split())
        ]
        if cams:
            out[spec.key] = cams
    return out
