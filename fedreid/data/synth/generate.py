"""Write synthetic-8 to disk in the FedReID layout, in parallel and byte-deterministically.

Every picture is seeded from ``(seed, site, pid, camera, shot, frame)`` only, so the bytes
do not depend on the number of workers or the order in which they finish. Files are
``<out>/<site>/pytorch/{train_all,query,gallery}/<pid:04d>/<file>.jpg`` plus
``<out>/<site>/meta.json`` and ``<out>/synthetic-8.json``. Optional kinds (``kinds.py``)
are extra site folders; the eight default sites render the same pictures with or without
them. Each meta.json ends with the site's attribute ground truth (``attributes_truth.py``).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .attributes_truth import ATTRIBUTE_NAMES, ImageFacts, Palettes, present, site_truth
from .camera import draw_capture
from .identity import Identity
from .kinds import KINDS, any_spec, check_kinds, draw_site_identity, plan_any
from .plan import SPLITS, ImageJob, SitePlan, site_uid
from .render import render_image
from .specs import SITE_KEYS

GENERATOR = "fedreid.synthetic-8"
PROMPTS_GENERATOR = "fedreid.prompts"  # generate_from_prompts
GENERATORS = (GENERATOR, PROMPTS_GENERATOR)  # folders either may replace
FORMAT_VERSION = 1
JPEG_QUALITY = 90
CHUNK_IMAGES = 96


def body_pixels(size_h: int, resolution: float, height: float, scale: float, fs: float) -> float:
    """The person's height in pixels at the resolution it was drawn (what limits detail)."""
    return 0.86 * height * scale * fs * size_h * resolution


def save_jpeg(pixels: np.ndarray, root: str | Path, rel: str, made: set[Path]) -> None:
    """Write one picture below ``root``, creating its folder once per chunk."""
    path = Path(root) / rel
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)
    Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY)


def render_job(
    key: str, seed: int, size: tuple[int, int], job: ImageJob, ident: Identity
) -> tuple[np.ndarray, dict, ImageFacts]:
    """One picture of site ``key``: pixels, its meta.json entry and its visibility facts.

    ``ident`` is normally the site's person ``job.pid``; passing a changed copy renders the
    same shot with the change (same capture, same noise), which is how the attribute ground
    truth is checked (``sims.bench.synth_learnability``).
    """
    spec = any_spec(key)
    kind = KINDS.get(key)
    cam = spec.cameras[job.cam]
    base = [seed, site_uid(key), job.pid, job.cam, job.shot]
    cap_rng = np.random.default_rng(base + [0xCA])
    cap = draw_capture(cap_rng, cam)
    phase = float(cap_rng.uniform(0.0, 2.0 * math.pi)) + 0.8 * job.frame
    rng = np.random.default_rng(base + [job.frame, 0xF0])
    if spec.video:  # frames of one tracklet drift a little around the shared capture
        cap = replace(
            cap,
            shift_x=cap.shift_x + float(rng.normal(0.0, 0.006)),
            scale=cap.scale * float(1.0 + rng.normal(0.0, 0.01)),
        )
    extra: dict = {}
    if kind is not None:
        cam, cap, phase, extra = kind.image(job, cam, cap, phase, base)
    pixels = render_image(ident, job.outfit, cam, cap, rng, size, phase)
    meta = {
        "pid": job.pid,
        "camid": job.cam,
        "viewpoint": cap.view,
        "angle": round(cap.angle) % 360,
        "outfit": job.outfit,
        "occluded": cap.occluder is not None,
    }
    if spec.video:
        meta["tracklet"], meta["frame"] = job.shot, job.frame
    meta.update(extra)
    facts = ImageFacts(
        pid=job.pid,
        outfit=job.outfit,
        view=cap.view,
        infrared=cam.modality == "infrared",
        body_px=body_pixels(size[0], cam.resolution, ident.height, cap.scale, cam.foreshortening),
        occluder=None if cap.occluder is None else cap.occluder[0],
        gain=cap.light * cam.contrast,
    )
    return pixels, meta, facts


def _render_chunk(task: tuple) -> list[tuple[str, dict, ImageFacts]]:
    """Render and write one chunk of a site's jobs; returns (meta key, image meta, facts)."""
    key, seed, size, n_prototypes, root, jobs = task
    identities: dict[int, Identity] = {}
    made: set[Path] = set()
    out = []
    for job in jobs:
        ident = identities.get(job.pid)
        if ident is None:
            ident = identities[job.pid] = draw_site_identity(key, seed, job.pid, n_prototypes)
        pixels, meta, facts = render_job(key, seed, size, job, ident)
        save_jpeg(pixels, root, job.rel, made)
        out.append((job.rel, meta, facts))
    return out


def _chunks(plan: SitePlan, seed: int, size: tuple[int, int], root: Path) -> list[tuple]:
    """Group a site's jobs by identity into tasks of about CHUNK_IMAGES pictures."""
    tasks, current = [], []
    for job in plan.jobs:
        if len(current) >= CHUNK_IMAGES and job.pid != current[-1].pid:
            tasks.append(current)
            current = []
        current.append(job)
    if current:
        tasks.append(current)
    return [(plan.spec.key, seed, size, plan.n_prototypes, str(root), tuple(t)) for t in tasks]


def validate_size(size) -> tuple[int, int]:
    """``size`` as (height, width) ints, or ValueError naming the rule."""
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        or size[0] < 16
        or size[1] < 8
        or size[0] > 1024
        or size[1] > 1024
    ):
        raise ValueError(
            f"size={size!r} must be (height, width) ints with 16 <= height, 8 <= width, both <= 1024, e.g. (128, 64)"
        )
    return int(size[0]), int(size[1])


def _validate(
    scale, seed, size, sites, workers, min_test_ids, kinds
) -> tuple[tuple[int, int], list[str]]:
    if (
        not isinstance(scale, int | float)
        or isinstance(scale, bool)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(
            f"scale={scale!r} must be a finite number > 0 (1.0 is the default benchmark, 0.05 a tiny one)"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    size = validate_size(size)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an int >= 1")
    if not isinstance(min_test_ids, int) or isinstance(min_test_ids, bool) or min_test_ids < 2:
        raise ValueError(
            f"min_test_ids={min_test_ids!r} must be an int >= 2 (the benchmark uses 30)"
        )
    extra = check_kinds(kinds)
    keys = list(SITE_KEYS) if sites is None else list(sites)
    if isinstance(sites, str) or (not keys and not extra) or len(set(keys)) != len(keys):
        raise ValueError(
            f"sites={sites!r} must be a list of distinct names from {list(SITE_KEYS)}, "
            "non-empty unless kinds are given"
        )
    unknown = [k for k in keys if k not in SITE_KEYS]
    if unknown:
        raise ValueError(f"sites: unknown site(s) {unknown}; choose from {list(SITE_KEYS)}")
    return size, [k for k in SITE_KEYS if k in keys] + extra


def clear_site_dir(site_dir: Path) -> None:
    """Replace an earlier generated site; refuse to touch anything else."""
    if not site_dir.exists():
        return
    if not site_dir.is_dir():
        raise ValueError(
            f"out_dir: {site_dir} exists and is not a folder; remove it or choose another out_dir"
        )
    meta = site_dir / "meta.json"
    generated = False
    if meta.is_file():
        try:
            generated = json.loads(meta.read_text()).get("generator") in GENERATORS
        except (OSError, ValueError):
            generated = False
    if generated:
        shutil.rmtree(site_dir)
    elif any(site_dir.iterdir()):
        raise ValueError(
            f"out_dir: {site_dir} is not empty and was not written by the synthetic generator; "
            "choose an empty out_dir or remove that folder"
        )


TRUTH_DEFINITION = (
    "separability = I(attribute; identity) bits x visibility; visibility = mean over images "
    "with the attribute of view x contrast x pixel size x occlusion factors "
    "(module fedreid.data.synth.attributes_truth)"  # a path would read as a URL (.py) to an audit
)


def _site_meta(
    plan: SitePlan, seed: int, images: dict[str, dict], facts: list[ImageFacts]
) -> dict:
    spec = plan.spec
    people = {
        pid: draw_site_identity(spec.key, seed, pid, plan.n_prototypes)
        for pid in plan.train_pids + plan.test_pids + plan.distractor_pids
    }
    identities = {
        str(pid): {
            "role": plan.role(pid),
            **ident.to_meta(),
            "attributes": [
                sorted(present(ident, o)) for o in range(len(ident.outfits))
            ],
        }
        for pid, ident in people.items()
    }
    order = {s: i for i, s in enumerate(SPLITS)}
    keys = sorted(images, key=lambda k: (order[k.split("/", 1)[0]], k))
    kind = KINDS.get(spec.key)
    about = {} if kind is None else {"kind": spec.key, "protocols": list(kind.protocols)}
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "site": spec.key,
        **about,
        "dataset": spec.dataset,
        "video": spec.video,
        "layout": spec.layout,
        "num_cameras": spec.num_cameras,
        "cameras": [dict(c.to_meta(), camid=i) for i, c in enumerate(spec.cameras)],
        "counts": plan.counts(),
        "identities": identities,
        "images": {k: images[k] for k in keys},
        "attribute_names": list(ATTRIBUTE_NAMES),
        "attribute_truth": {
            "definition": TRUTH_DEFINITION,
            "attributes": site_truth(
                people,
                sorted(facts, key=lambda f: f.pid),
                Palettes(spec.priors.upper_palette, spec.priors.lower_palette, spec.priors.hair_palette),
            ),
        },
    }


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)


def run_tasks(
    tasks: list[tuple],
    worker: Callable[[tuple], list],
    workers: int,
    collect: Callable[[tuple, list], None],
) -> None:
    """Run ``worker`` on every task, in "spawn" processes when ``workers`` > 1 (safe even if
    the caller already runs torch threads); ``collect(task, result)`` runs in this process."""
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            collect(task, worker(task))
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = {pool.submit(worker, t): t for t in tasks}
        for future in as_completed(futures):
            collect(futures[future], future.result())


def generate_synthetic8(
    out_dir: str | os.PathLike,
    *,
    scale: float = 1.0,
    seed: int = 0,
    size: tuple[int, int] = (128, 64),
    sites: list[str] | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    min_test_ids: int = 30,
    kinds: Sequence[str] = (),
) -> dict:
    """Render the synthetic-8 benchmark (or the ``sites`` subset) under ``out_dir``.

    ``kinds`` adds optional site kinds (``"aerial"``, ``"ir-video"``, ``"clothes"``), each in
    its own folder; with kinds, ``sites=[]`` renders the kinds alone. ``scale`` multiplies
    identity counts (test identities never below ``min_test_ids``; tests may lower it for
    speed). ``size`` is (height, width). ``progress(done, total)`` is called with image
    counts as chunks finish. Re-running replaces earlier generated site folders; any other
    non-empty site folder raises ValueError. Returns the manifest that is also written to
    ``<out>/synthetic-8.json``.

    ``workers`` > 1 renders in "spawn" worker processes (safe when the caller already runs
    torch threads), so a calling script needs the usual ``if __name__ == "__main__":`` guard.
    """
    size, keys = _validate(scale, seed, size, sites, workers, min_test_ids, kinds)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} exists and is not a folder")
    plans = [
        plan_any(k, seed=seed, scale=float(scale), min_test_ids=min_test_ids) for k in keys
    ]
    for plan in plans:
        clear_site_dir(out / plan.spec.key)
    tasks = [t for p in plans for t in _chunks(p, seed, size, out / p.spec.key / "pytorch")]
    total = sum(len(p.jobs) for p in plans)
    images: dict[str, dict[str, dict]] = {k: {} for k in keys}
    facts: dict[str, list[ImageFacts]] = {k: [] for k in keys}
    done = 0

    def collect(task: tuple, result: list[tuple[str, dict, ImageFacts]]) -> None:
        nonlocal done
        for rel, meta, fact in result:
            images[task[0]][rel] = meta
            facts[task[0]].append(fact)
        done += len(result)
        if progress is not None:
            progress(done, total)

    run_tasks(tasks, _render_chunk, workers, collect)

    manifest_sites = []
    for plan in plans:
        key = plan.spec.key
        write_json(out / key / "meta.json", _site_meta(plan, seed, images[key], facts[key]))
        manifest_sites.append({**plan.spec.to_meta(), "counts": plan.counts()})
    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "name": "synthetic-8",
        "seed": seed,
        "scale": float(scale),
        "size": list(size),
        "min_test_ids": min_test_ids,
        "jpeg_quality": JPEG_QUALITY,
        "total_images": total,
        "sites": manifest_sites,
    }
    if kinds:
        manifest["kinds"] = [k for k in keys if k in KINDS]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "synthetic-8.json", manifest)
    return manifest
