"""Which pictures a site gets: identities, cameras, split and file name of every image.

Planning draws no pixels, so it is instant; the generator renders the plan and the spec
table counts it. Every random choice is seeded from ``(seed, site, pid)`` alone, so a plan
does not depend on which other sites or workers exist.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .specs import SiteSpec

SPLITS = ("train_all", "query", "gallery")


def site_uid(key: str) -> int:
    """A stable number for a site key, used in every seed of that site."""
    return zlib.crc32(key.encode())


@dataclass(frozen=True, slots=True)
class ImageJob:
    """One picture to render. ``shot`` is the image index within (pid, camera) or, for
    video, the tracklet; ``frame`` is the frame within the tracklet (0 for images);
    ``session`` is the day the picture was taken (the clothes-change kind has several)."""

    split: str
    pid: int
    cam: int
    shot: int
    frame: int
    outfit: int
    filename: str
    session: int = 0

    @property
    def rel(self) -> str:
        """Path below ``<site>/pytorch/``; also the key of the image in meta.json."""
        return f"{self.split}/{self.pid:04d}/{self.filename}"


@dataclass(frozen=True, slots=True)
class SitePlan:
    spec: SiteSpec
    uid: int
    train_pids: tuple[int, ...]
    test_pids: tuple[int, ...]
    distractor_pids: tuple[int, ...]
    n_prototypes: int
    jobs: tuple[ImageJob, ...]

    def role(self, pid: int) -> str:
        if pid in self.train_pids:
            return "train"
        return "test" if pid in self.test_pids else "distractor"

    def counts(self) -> dict[str, dict[str, int]]:
        """Identities and images (and tracklets for video) per split."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            jobs = [j for j in self.jobs if j.split == split]
            row = {"ids": len({j.pid for j in jobs}), "images": len(jobs)}
            if self.spec.video:
                row["tracklets"] = len({(j.pid, j.cam, j.shot) for j in jobs})
            out[split] = row
        out["distractors"] = {"ids": len(self.distractor_pids)}
        return out


def file_name(
    layout: str, pid: int, cam: int, shot: int, frame: int, market_frame: int, session: int = 0
) -> str:
    """The reader's file-name rule for ``layout``; Market names carry the session as ``s``."""
    if layout == "big":
        return f"{pid:04d}_c{cam + 1}s{session + 1}_{market_frame:06d}_00.jpg"
    if layout == "small":
        return f"cam_{cam}_{pid:04d}_{shot:03d}.jpg"
    return f"cam_{cam}_{pid:04d}_t{shot:02d}_f{frame:03d}.jpg"


CameraRule = Callable[[np.random.Generator, SiteSpec, str], list[int]]
JobsRule = Callable[[SiteSpec, int, int, int, str], list[ImageJob]]


def default_cameras(rng: np.random.Generator, spec: SiteSpec, role: str) -> list[int]:
    """synthetic-8's rule: which cameras see an identity of ``role``."""
    n = spec.num_cameras
    half = n // 2
    if role == "distractor" and spec.layout != "big":
        return list(range(half, n))
    count = int(rng.integers(spec.cams_per_id[0], spec.cams_per_id[1] + 1))
    if role == "test" and spec.layout != "big":  # one camera from each half, so query meets gallery
        chosen = {int(rng.integers(half)), int(rng.integers(half, n))}
        rest = [c for c in rng.permutation(n).tolist() if c not in chosen]
        chosen.update(rest[: max(0, count - 2)])
        return sorted(chosen)
    return sorted(int(c) for c in rng.choice(n, size=count, replace=False))


def identity_jobs(
    spec: SiteSpec, seed: int, uid: int, pid: int, role: str, cameras: CameraRule = default_cameras
) -> list[ImageJob]:
    """The pictures of one identity: ``cameras`` picks its cameras, then each camera gets
    ``images_per_cam`` pictures (frames of tracklets for video) split by the layout's rule."""
    rng = np.random.default_rng([seed, uid, pid, 0x91A])
    lo, hi = spec.images_per_cam
    jobs = []
    for cam in cameras(rng, spec, role):
        outfit = cam % spec.outfits_per_id
        if spec.video:
            shots = [
                (t, f)
                for t in range(spec.tracklets_per_cam)
                for f in range(int(rng.integers(lo, hi + 1)))
            ]
        else:
            n = int(rng.integers(lo, hi + 1))
            if role == "test" and spec.layout == "big":
                n = max(n, 2)  # one query per camera and at least one gallery image
            shots = [(k, 0) for k in range(n)]
        start, step = int(rng.integers(0, 100_000)), int(rng.integers(5, 40))
        query_shot = int(rng.integers(len(shots)))
        for i, (shot, frame) in enumerate(shots):
            if role == "train":
                split = "train_all"
            elif role == "distractor":
                split = "gallery"
            elif spec.layout == "big":
                split = "query" if i == query_shot else "gallery"
            else:
                split = "query" if cam < spec.num_cameras // 2 else "gallery"
            name = file_name(spec.layout, pid, cam, shot, frame, start + step * i)
            jobs.append(ImageJob(split, pid, cam, shot, frame, outfit, name))
    return jobs


def plan_site(
    spec: SiteSpec,
    *,
    seed: int,
    scale: float,
    min_test_ids: int,
    jobs_rule: JobsRule = identity_jobs,
) -> SitePlan:
    """Identities 1..N (train, then test, then gallery-only distractors) and their images;
    ``jobs_rule`` lays out one identity's pictures (a site kind may bring its own)."""
    n_train, n_test, n_distractor = spec.scaled_ids(scale, min_test_ids)
    uid = site_uid(spec.key)
    pids = list(range(1, n_train + n_test + n_distractor + 1))
    train, test, distractor = (
        pids[:n_train],
        pids[n_train : n_train + n_test],
        pids[n_train + n_test :],
    )
    jobs: list[ImageJob] = []
    for role, group in (("train", train), ("test", test), ("distractor", distractor)):
        for pid in group:
            jobs.extend(jobs_rule(spec, seed, uid, pid, role))
    return SitePlan(
        spec=spec,
        uid=uid,
        train_pids=tuple(train),
        test_pids=tuple(test),
        distractor_pids=tuple(distractor),
        n_prototypes=max(1, round(spec.priors.proto_ratio * len(pids))),
        jobs=tuple(jobs),
    )
