"""The ``aerial`` site kind: ground CCTV cameras and drones at three altitude levels.

Mirrors AG-ReID (research/methods.md §1): a UAV at 15-45 m coded as levels A0/A1/A2 and
ground cameras at about 3 m, so aerial->ground and ground->aerial retrieval both exist.
Every identity is seen by 1-2 ground and 1-2 aerial cameras; test identities follow the
Market rule (one query per camera, the rest gallery), so each platform appears on both sides.

Each picture draws its own geometry: a drone's altitude varies +-15 % around its level and
its horizontal distance 0.3-1.5x the nominal one; pitch is the depression angle
``atan(altitude / distance)`` (about 27-82 degrees for the drones, 14-26 for the ground
cameras). The picture is rendered from that geometry (foreshortening, top-down stretch,
crown of the head) at a resolution that falls with the slant range (``24 m / range``, at
least 0.4), and the drone crops are looser (the person 15 % smaller). Per-image metadata:
``geometry = {"altitude": m, "distance": m, "pitch": deg, "platform": "aerial"|"ground",
"altitude_level": 0|1|2 for A0/A1/A2, null on the ground}`` (the level as the AG-ReID
reader writes it).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .camera import CameraSpec, Capture
from .identity import AttributePriors
from .plan import ImageJob
from .specs import SiteSpec

ALTITUDE_LEVELS = {"A0": 15.0, "A1": 30.0, "A2": 45.0}
DRONE_DISTANCE_M = 20.0
DRONE_RANGE_PX_M = 24.0  # slant range up to which a drone picture keeps full resolution
DRONE_MIN_RESOLUTION = 0.4
DRONE_CROP = 0.85  # drone crops are looser: the person fills less of the picture


def _drone(level: str, background: str, light: float) -> CameraSpec:
    altitude = ALTITUDE_LEVELS[level]
    return CameraSpec(
        name=f"uav-{level}",
        background=background,
        view_probs=(0.34, 0.33, 0.33),
        light=light,
        blur=0.6,
        noise=0.025,
        scale_jitter=0.1,
        shift_jitter=0.06,
        occlusion=0.03,
        kind="aerial",
        height_m=altitude,
        distance_m=DRONE_DISTANCE_M,
        pitch_deg=round(math.degrees(math.atan2(altitude, DRONE_DISTANCE_M)), 1),
    )


AERIAL_SPEC = SiteSpec(
    key="aerial",
    dataset="AG-ReID-like (aerial + ground)",
    layout="big",
    cameras=(
        CameraSpec(name="cctv-0", background="campus", light=1.05, height_m=3.0, distance_m=9.0,
                   pitch_deg=18.4),
        CameraSpec(name="cctv-1", background="street", light=0.95, cast=(0.95, 1.0, 1.06),
                   height_m=3.5, distance_m=11.0, pitch_deg=17.7, occlusion=0.15),
        _drone("A0", "paving", 1.1),
        _drone("A1", "grass", 1.0),
        _drone("A2", "asphalt", 1.05),
    ),
    train_ids=100,
    test_ids=60,
    distractor_ids=20,
    cams_per_id=(2, 4),
    images_per_cam=(2, 4),
    priors=AttributePriors(
        upper_palette=("white", "black", "red", "blue", "yellow", "green", "grey", "navy",
                       "orange", "pink", "purple", "beige"),
        lower_palette=("black", "denim", "navy", "grey", "khaki", "beige", "white", "blue"),
        hat_probs=(0.6, 0.25, 0.15),
        bag_probs=(0.45, 0.3, 0.15, 0.1),
        short_sleeve_prob=0.5,
    ),
    real=None,
    conditions="2 ground cameras (3 m) + drones at 15/30/45 m (A0/A1/A2), per-image altitude, "
    "distance and pitch; low-resolution top-down views",
)


def aerial_cameras(rng: np.random.Generator, spec: SiteSpec, role: str) -> list[int]:
    """1-2 ground and 1-2 aerial cameras for every identity (both platforms always)."""
    ground = [i for i, c in enumerate(spec.cameras) if c.kind == "ground"]
    drones = [i for i, c in enumerate(spec.cameras) if c.kind == "aerial"]
    picked = [
        int(c)
        for group in (ground, drones)
        for c in rng.choice(group, size=int(rng.integers(1, 3)), replace=False)
    ]
    return sorted(picked)


def draw_geometry(rng: np.random.Generator, cam: CameraSpec) -> dict:
    """One picture's geometry (rounded as written to meta.json, and rendered as written)."""
    level = None
    if cam.kind == "aerial":
        level = list(ALTITUDE_LEVELS.values()).index(cam.height_m)
        altitude = cam.height_m * float(rng.uniform(0.85, 1.15))
        distance = cam.distance_m * float(rng.uniform(0.3, 1.5))
    else:
        altitude = cam.height_m
        distance = cam.distance_m * float(rng.uniform(0.7, 1.3))
    altitude, distance = round(altitude, 1), round(distance, 1)
    pitch = round(math.degrees(math.atan2(altitude, distance)), 1)
    return {
        "altitude": altitude,
        "distance": distance,
        "pitch": pitch,
        "platform": cam.kind,
        "altitude_level": level,
    }


def aerial_image(
    job: ImageJob, cam: CameraSpec, cap: Capture, phase: float, base: list[int]
) -> tuple[CameraSpec, Capture, float, dict]:
    """Per-picture geometry: the camera as placed for this shot, and its metadata."""
    geo = draw_geometry(np.random.default_rng(base + [job.frame, 0xAE]), cam)
    cam = replace(cam, height_m=geo["altitude"], distance_m=geo["distance"], pitch_deg=geo["pitch"])
    if cam.kind == "aerial":
        slant = math.hypot(geo["altitude"], geo["distance"])
        resolution = min(1.0, max(DRONE_MIN_RESOLUTION, DRONE_RANGE_PX_M / slant))
        cam = replace(cam, resolution=resolution)
        cap = replace(cap, scale=cap.scale * DRONE_CROP)
    return cam, cap, phase, {"geometry": geo}
