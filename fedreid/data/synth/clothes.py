"""The ``clothes`` site kind: people re-dressed across three sessions (days).

Mirrors PRCC / LTCC (research/methods.md §5). Every identity has three outfits that differ
in upper-body colour (the shoes stay, the bag stays half of the time); session ``s`` wears
outfit ``s``, except that a quarter of the people wear their first outfit again on the third
day, so ``session`` and ``clothes_id`` are different facts. Training identities appear in
every session, each on two random cameras. Test identities follow PRCC: session 0 on camera
0 is the gallery, session 0 on camera 1 the same-clothes query, session 1 on camera 2 the
changed-clothes query, and session 2 on camera 3 more gallery. Per-image metadata:
``session`` and ``clothes_id`` (unique within the site: ``(pid - 1) * 3 + outfit``). File
names are Market style with the session as ``s``: ``0007_c3s2_004120_00.jpg``. Nobody
carries a handbag at this site (an attribute absent by construction), and the cameras watch
people walking away or past, never towards them: a logo, printed on the front of a shirt,
is worn but never visible here (an attribute invisible by construction).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .camera import CameraSpec, Capture
from .identity import AttributePriors, Identity, draw_identity, draw_outfit
from .plan import ImageJob, file_name
from .specs import SiteSpec

SESSIONS = 3
KEEP_OUTFIT_PROB = 0.25  # chance that session 2 repeats outfit 0
# test layout (PRCC): (session, camera, split)
TEST_SHOTS = ((0, 0, "gallery"), (0, 1, "query"), (1, 2, "query"), (2, 3, "gallery"))
NO_FRONT = (0.0, 0.6, 0.4)  # front, back, side: nobody walks towards these cameras

CLOTHES_SPEC = SiteSpec(
    key="clothes",
    dataset="PRCC/LTCC-like (clothes change)",
    layout="big",
    cameras=(
        CameraSpec(name="cam0", background="campus", light=1.05, blur=0.5, view_probs=NO_FRONT),
        CameraSpec(name="cam1", background="brick", light=0.95, cast=(1.04, 1.0, 0.95),
                   blur=0.6, view_probs=NO_FRONT),
        CameraSpec(name="cam2", background="plaza", light=1.1, cast=(0.95, 1.0, 1.05),
                   blur=0.5, occlusion=0.15, view_probs=NO_FRONT),
        CameraSpec(name="cam3", background="corridor", light=0.9, blur=0.7, view_probs=NO_FRONT),
    ),
    train_ids=80,
    test_ids=50,
    distractor_ids=0,
    cams_per_id=(2, 4),
    images_per_cam=(2, 3),
    priors=AttributePriors(
        upper_palette=("black", "white", "red", "blue", "grey", "navy", "green", "yellow",
                       "pink", "purple", "brown", "orange"),
        lower_palette=("black", "denim", "navy", "grey", "khaki", "beige", "white", "blue"),
        bag_probs=(0.5, 0.3, 0.2, 0.0),
        lower_style_probs=(0.7, 0.2, 0.1),
        short_sleeve_prob=0.5,
    ),
    real=None,
    conditions="4 cameras (back and side views only), 3 sessions with different outfits "
    "(same-clothes and changed-clothes queries), no handbags",
    outfits_per_id=SESSIONS,
)


def _session_outfits(rng: np.random.Generator) -> list[int]:
    outfits = list(range(SESSIONS))
    if rng.random() < KEEP_OUTFIT_PROB:
        outfits[2] = 0
    return outfits


def session_jobs(spec: SiteSpec, seed: int, uid: int, pid: int, role: str) -> list[ImageJob]:
    """One identity's pictures by session: all sessions for training, PRCC's layout for test."""
    rng = np.random.default_rng([seed, uid, pid, 0xC107])
    outfits = _session_outfits(rng)
    lo, hi = spec.images_per_cam
    if role == "train":
        shots = [
            (s, int(c), "train_all")
            for s in range(SESSIONS)
            for c in sorted(rng.choice(spec.num_cameras, size=2, replace=False))
        ]
    elif role == "test":
        shots = list(TEST_SHOTS)
    else:  # a gallery-only distractor
        shots = [(s, c, "gallery") for s, c, _ in TEST_SHOTS]
    start, step = int(rng.integers(0, 100_000)), int(rng.integers(5, 40))
    jobs: list[ImageJob] = []
    taken = [0] * spec.num_cameras  # shots count on across sessions: each picture its own seed
    for session, cam, split in shots:
        for _ in range(int(rng.integers(lo, hi + 1))):
            shot, taken[cam] = taken[cam], taken[cam] + 1
            name = file_name(spec.layout, pid, cam, shot, 0, start + step * len(jobs), session)
            jobs.append(ImageJob(split, pid, cam, shot, 0, outfits[session], name, session))
    return jobs


def redressed_identity(
    seed: int, site_uid: int, pid: int, pri: AttributePriors, n_prototypes: int, n_outfits: int
) -> Identity:
    """A person with ``n_outfits`` outfits that all differ in upper-body colour; the first
    is drawn as synthetic-8 draws it (look-alikes included), the shoes never change."""
    ident = draw_identity(seed, site_uid, pid, pri, n_prototypes, 1)
    rng = np.random.default_rng([seed, site_uid, pid, 0xC10])
    first = ident.outfits[0]
    outfits = [first]
    while len(outfits) < n_outfits:
        o = draw_outfit(rng, pri)
        if o.upper in {x.upper for x in outfits}:
            continue
        o = replace(o, shoes_rgb=first.shoes_rgb)
        if rng.random() < 0.5:
            o = replace(o, bag=first.bag, bag_rgb=first.bag_rgb)
        outfits.append(o)
    return replace(ident, outfits=tuple(outfits))


def clothes_image(
    job: ImageJob, cam: CameraSpec, cap: Capture, phase: float, base: list[int]
) -> tuple[CameraSpec, Capture, float, dict]:
    """The picture's session and clothes id."""
    clothes_id = (job.pid - 1) * SESSIONS + job.outfit
    return cam, cap, phase, {"session": job.session, "clothes_id": clothes_id}
