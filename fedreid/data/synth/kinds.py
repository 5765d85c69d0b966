"""The optional site kinds synthetic-8 can add: ``aerial``, ``ir-video``, ``clothes``.

A kind is a site spec plus three rules: how one identity's pictures are laid out
(``jobs_rule``), how a person is drawn (``identity``) and what changes per picture
(``image``: the camera as placed for that shot, the capture, the limb phase, and the
picture's extra metadata). The eight default sites use none of this, so they render exactly
as before. Each kind is its own site folder named by its key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from .aerial import AERIAL_SPEC, aerial_cameras, aerial_image
from .camera import CameraSpec, Capture
from .clothes import CLOTHES_SPEC, clothes_image, redressed_identity, session_jobs
from .identity import AttributePriors, Identity, draw_identity
from .ir_video import IR_VIDEO_SPEC, ir_video_image
from .plan import ImageJob, JobsRule, SitePlan, identity_jobs, plan_site, site_uid
from .specs import SiteSpec, site_spec

ImageRule = Callable[
    [ImageJob, CameraSpec, Capture, float, list[int]], tuple[CameraSpec, Capture, float, dict]
]
IdentityRule = Callable[[int, int, int, AttributePriors, int, int], Identity]


@dataclass(frozen=True)
class SiteKind:
    """An optional site: its spec, its rules, and the protocols its ground truth enables.

    ``query_protocol(spec, job)`` names the protocol a query picture belongs to (the first
    entries of ``protocols``); the table counts queries per protocol with it.
    """

    spec: SiteSpec
    jobs_rule: JobsRule
    identity: IdentityRule
    image: ImageRule
    protocols: tuple[str, ...]
    query_protocol: Callable[[SiteSpec, ImageJob], str]


KINDS: dict[str, SiteKind] = {
    "aerial": SiteKind(
        AERIAL_SPEC,
        partial(identity_jobs, cameras=aerial_cameras),
        draw_identity,
        aerial_image,
        ("aerial->ground", "ground->aerial", "per altitude level"),
        lambda spec, job: "aerial->ground"
        if spec.cameras[job.cam].kind == "aerial"
        else "ground->aerial",
    ),
    "ir-video": SiteKind(
        IR_VIDEO_SPEC,
        identity_jobs,
        draw_identity,
        ir_video_image,
        ("infrared->visible", "visible->infrared", "tracklet level"),
        lambda spec, job: "infrared->visible"
        if spec.cameras[job.cam].modality == "infrared"
        else "visible->infrared",
    ),
    "clothes": SiteKind(
        CLOTHES_SPEC,
        session_jobs,
        redressed_identity,
        clothes_image,
        ("same-clothes", "changed-clothes"),
        lambda spec, job: "same-clothes" if job.session == 0 else "changed-clothes",
    ),
}
KIND_KEYS: tuple[str, ...] = tuple(KINDS)


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """``kinds`` in canonical order; unknown, repeated or non-list values raise ValueError."""
    if isinstance(kinds, str) or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"kinds={kinds!r} must be a list of distinct names from {list(KIND_KEYS)}, "
            "e.g. ['aerial', 'clothes']"
        )
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"kinds: unknown kind(s) {unknown}; choose from {list(KIND_KEYS)}")
    return [k for k in KIND_KEYS if k in kinds]


def any_spec(key: str) -> SiteSpec:
    """The spec of a default site or of a kind."""
    return KINDS[key].spec if key in KINDS else site_spec(key)


def plan_any(key: str, *, seed: int, scale: float, min_test_ids: int) -> SitePlan:
    """The plan of a default site (synthetic-8's rule) or of a kind (its own rule)."""
    if key in KINDS:
        kind = KINDS[key]
        return plan_site(
            kind.spec, seed=seed, scale=scale, min_test_ids=min_test_ids, jobs_rule=kind.jobs_rule
        )
    return plan_site(site_spec(key), seed=seed, scale=scale, min_test_ids=min_test_ids)


def draw_site_identity(key: str, seed: int, pid: int, n_prototypes: int) -> Identity:
    """Person ``pid`` of site ``key`` as the generator renders them."""
    spec = any_spec(key)
    draw = KINDS[key].identity if key in KINDS else draw_identity
    return draw(seed, site_uid(key), pid, spec.priors, n_prototypes, spec.outfits_per_id)

