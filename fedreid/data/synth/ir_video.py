"""The ``ir-video`` site kind: visible and infrared tracklets of the same people.

Mirrors HITSZ-VCM / BUPTCampus (research/methods.md §4): every identity walks past two
visible and two near-infrared cameras, one tracklet of 4-8 frames each. Cameras are ordered
visible, infrared, visible, infrared, so the video rule (first half of the cameras is the
query, second half the gallery) puts both modalities on both sides: IR->visible is camera 1
against camera 2, visible->IR camera 0 against camera 3. Tracklets walk (``infrared.walk``);
per-image metadata: ``modality`` ("visible" | "infrared"); tracklet and frame are in the file
name (``cam_<c>_<pid>_t<tracklet>_f<frame>.jpg``) and so in ``Sample.tracklet``/``frame``.
Nobody wears a hat at this site (an attribute absent by construction).
"""

from __future__ import annotations

import numpy as np

from .camera import CameraSpec, Capture
from .identity import AttributePriors
from .infrared import walk
from .plan import ImageJob
from .specs import SiteSpec

IR_VIDEO_SPEC = SiteSpec(
    key="ir-video",
    dataset="HITSZ-VCM-like (visible + infrared video)",
    layout="video",
    cameras=(
        CameraSpec(name="vis-0", background="street", light=1.05, blur=0.6),
        CameraSpec(name="ir-0", background="street", modality="infrared", light=1.0, blur=0.9,
                   noise=0.04, contrast=0.9),
        CameraSpec(name="vis-1", background="station", light=0.95, cast=(1.05, 1.0, 0.92),
                   blur=0.6),
        CameraSpec(name="ir-1", background="corridor", modality="infrared", light=0.95,
                   blur=1.0, noise=0.045, contrast=0.85),
    ),
    train_ids=60,
    test_ids=40,
    distractor_ids=10,
    cams_per_id=(4, 4),
    images_per_cam=(4, 8),
    priors=AttributePriors(
        upper_palette=("black", "white", "red", "navy", "blue", "grey", "green", "yellow",
                       "burgundy", "denim", "beige"),
        lower_palette=("black", "denim", "navy", "grey", "khaki", "beige", "white"),
        hat_probs=(1.0, 0.0, 0.0),
        short_sleeve_prob=0.45,
    ),
    real=None,
    conditions="2 visible + 2 near-infrared cameras, walking tracklets of 4-8 frames, no hats",
    tracklets_per_cam=1,
)


def ir_video_image(
    job: ImageJob, cam: CameraSpec, cap: Capture, phase: float, base: list[int]
) -> tuple[CameraSpec, Capture, float, dict]:
    """Frame ``job.frame`` of a walking tracklet, and the picture's modality."""
    cap, stride = walk(cap, job.frame, np.random.default_rng(base + [0x1A]))
    modality = "infrared" if cam.modality == "infrared" else "visible"  # the readers' names
    return cam, cap, phase + stride, {"modality": modality}
