"""The synthetic-8 table: one ``SiteSpec`` per FedKLPR benchmark split.

Each row mirrors its real data set (research/fedklpr.md §3): camera count, the ratio of
train to test identities, images per identity, gallery-only distractors, resolution and
capture conditions, scaled down so the default benchmark (~8.2k images at 128x64) renders in
well under a minute on two cores. The real statistics sit beside each row so the table can
be checked and printed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .camera import CameraSpec
from .identity import COLOURS, AttributePriors

LAYOUTS = ("big", "small", "video")


@dataclass(frozen=True, slots=True)
class RealStats:
    """The published FedReID statistics of the real split this site imitates."""

    cams: int
    train_ids: int
    train_imgs: int
    query_ids: int
    query_imgs: int
    gallery_imgs: int


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """One synthetic site.

    ``layout`` sets file names and the query/gallery rule:
    - "big" (Market style names): every camera of a test identity gives one query image,
      the rest goes to the gallery (the Market/Duke/CUHK03-NP protocol);
    - "small" and "video" (FedReID small-set rule): the first half of the cameras is the
      query, the second half the gallery; "video" draws short tracklets, and
      ``images_per_cam`` then counts frames per tracklet.
    Identity counts are at scale 1.0; distractors are gallery-only identities.
    """

    key: str
    dataset: str
    layout: str
    cameras: tuple[CameraSpec, ...]
    train_ids: int
    test_ids: int
    distractor_ids: int
    cams_per_id: tuple[int, int]
    images_per_cam: tuple[int, int]
    priors: AttributePriors
    real: RealStats | None  # None for the optional kinds (no single real split to mirror)
    conditions: str
    tracklets_per_cam: int = 1
    outfits_per_id: int = 1

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"site {self.key}: layout={self.layout!r} is not one of {LAYOUTS}")
        lo, hi = self.cams_per_id
        if not 1 <= lo <= hi <= len(self.cameras):
            raise ValueError(
                f"site {self.key}: cams_per_id={self.cams_per_id} must lie in 1..{len(self.cameras)}"
            )
        if self.layout == "big" and lo < 2:
            raise ValueError(
                f"site {self.key}: a 'big' site needs cams_per_id >= 2 so queries have matches"
            )
        if self.layout != "big" and len(self.cameras) < 2:
            raise ValueError(
                f"site {self.key}: a '{self.layout}' site needs >= 2 cameras (query and gallery halves)"
            )

    @property
    def video(self) -> bool:
        return self.layout == "video"

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    def scaled_ids(self, scale: float, min_test_ids: int) -> tuple[int, int, int]:
        """(train, test, distractor) identity counts at ``scale``; test never below
        ``min_test_ids`` (the benchmark's rule: at least 30 test identities)."""
        return (
            max(2, round(self.train_ids * scale)),
            max(min_test_ids, round(self.test_ids * scale)),
            round(self.distractor_ids * scale),
        )

    def to_meta(self) -> dict:
        return {
            "key": self.key,
            "dataset": self.dataset,
            "layout": self.layout,
            "video": self.video,
            "num_cameras": self.num_cameras,
            "train_ids": self.train_ids,
            "test_ids": self.test_ids,
            "distractor_ids": self.distractor_ids,
            "cams_per_id": list(self.cams_per_id),
            "images_per_cam": list(self.images_per_cam),
            "tracklets_per_cam": self.tracklets_per_cam,
            "outfits_per_id": self.outfits_per_id,
            "conditions": self.conditions,
            "real": None
            if self.real is None
            else {k: getattr(self.real, k) for k in RealStats.__slots__},
        }


def _cams(
    n: int, backgrounds: tuple[str, ...], views: tuple[tuple[float, float, float], ...], **cycled
) -> tuple[CameraSpec, ...]:
    """``n`` cameras; each setting is a tuple cycled over the cameras (one value = all)."""
    columns = {"background": backgrounds, "view_probs": views, **cycled}
    return tuple(
        CameraSpec(name=f"cam{i}", **{k: v[i % len(v)] for k, v in columns.items()})
        for i in range(n)
    )


_DARK = (
    "black",
    "charcoal",
    "navy",
    "grey",
    "darkgreen",
    "brown",
    "burgundy",
    "beige",
    "white",
    "denim",
    "khaki",
)
_BRIGHT = (
    "white",
    "red",
    "blue",
    "lightblue",
    "pink",
    "yellow",
    "green",
    "black",
    "grey",
    "orange",
    "purple",
)
_TROUSERS = ("black", "denim", "navy", "charcoal", "grey", "khaki", "beige")

SITE_SPECS: tuple[SiteSpec, ...] = (
    SiteSpec(
        key="duke",
        dataset="DukeMTMC-reID",
        layout="big",
        cameras=_cams(
            8,
            ("campus", "lawn", "brick", "snow", "plaza", "lawn", "street", "campus"),
            ((0.45, 0.4, 0.15), (0.2, 0.3, 0.5), (0.5, 0.2, 0.3), (0.3, 0.5, 0.2)),
            light=(1.0, 0.85, 1.1, 0.95, 1.05, 0.8, 1.0, 1.15),
            cast=((0.95, 1.0, 1.08), (1.0, 1.0, 1.0), (1.05, 1.0, 0.95), (0.92, 0.98, 1.1)),
            blur=(0.5, 0.8, 0.4, 0.7),
            occlusion=(0.2, 0.15, 0.25),
            pitch_deg=(12.0, 20.0, 25.0, 15.0),
            height_m=(3.5, 5.0, 6.0, 4.0),
            distance_m=(10.0, 14.0, 15.0, 12.0),
        ),
        train_ids=120,
        test_ids=80,
        distractor_ids=45,
        cams_per_id=(2, 4),
        images_per_cam=(2, 5),
        priors=AttributePriors(
            upper_palette=_DARK,
            lower_palette=_TROUSERS,
            pattern_probs=(0.65, 0.15, 0.1, 0.1),
            bag_probs=(0.4, 0.35, 0.15, 0.1),
            hat_probs=(0.75, 0.1, 0.15),
            lower_style_probs=(0.95, 0.02, 0.03),
            short_sleeve_prob=0.1,
        ),
        real=RealStats(8, 702, 16522, 702, 2228, 17611),
        conditions="8 outdoor campus cameras in winter, dark clothes, occlusion, gallery distractors",
    ),
    SiteSpec(
        key="market",
        dataset="Market-1501",
        layout="big",
        cameras=_cams(
            6,
            ("shopfront", "plaza", "campus", "street", "shopfront", "lawn"),
            ((0.4, 0.4, 0.2), (0.25, 0.25, 0.5), (0.5, 0.3, 0.2)),
            light=(1.1, 1.0, 1.15, 0.9, 1.05, 0.95),
            cast=((1.05, 1.0, 0.92), (1.0, 1.0, 1.0), (1.08, 1.02, 0.9)),
            blur=(0.4, 0.5, 0.4, 0.6, 0.5, 1.0),
            resolution=(1.0, 1.0, 1.0, 1.0, 1.0, 0.6),
            shift_jitter=(0.07,),
            scale_jitter=(0.1,),
            occlusion=(0.1,),
        ),
        train_ids=110,
        test_ids=75,
        distractor_ids=15,
        cams_per_id=(2, 5),
        images_per_cam=(1, 4),
        priors=AttributePriors(
            upper_palette=_BRIGHT,
            lower_palette=("black", "denim", "grey", "khaki", "white", "blue", "beige"),
            pattern_probs=(0.5, 0.2, 0.1, 0.2),
            bag_probs=(0.45, 0.3, 0.15, 0.1),
            hat_probs=(0.8, 0.17, 0.03),
            lower_style_probs=(0.55, 0.3, 0.15),
            short_sleeve_prob=0.75,
        ),
        real=RealStats(6, 751, 12936, 750, 3368, 19732),
        conditions="6 summer campus cameras (one low-resolution), bright clothes, detector jitter",
    ),
    SiteSpec(
        key="cuhk03",
        dataset="CUHK03-NP (detected)",
        layout="big",
        cameras=_cams(
            2,
            ("corridor", "station"),
            ((0.5, 0.3, 0.2), (0.3, 0.5, 0.2)),
            light=(1.05, 0.9),
            cast=((1.0, 1.02, 0.95), (0.95, 0.98, 1.05)),
            blur=(0.7, 0.9),
            shift_jitter=(0.1,),
            scale_jitter=(0.12,),
            occlusion=(0.12,),
            pitch_deg=(20.0,),
            height_m=(4.0,),
        ),
        train_ids=100,
        test_ids=70,
        distractor_ids=0,
        cams_per_id=(2, 2),
        images_per_cam=(3, 6),
        priors=AttributePriors(
            upper_palette=(
                "white",
                "black",
                "blue",
                "grey",
                "navy",
                "red",
                "lightblue",
                "charcoal",
                "beige",
                "green",
            ),
            lower_palette=_TROUSERS,
            pattern_probs=(0.6, 0.15, 0.1, 0.15),
            short_sleeve_prob=0.5,
            lower_style_probs=(0.75, 0.15, 0.1),
        ),
        real=RealStats(2, 767, 7365, 700, 1400, 5332),
        conditions="2 indoor campus cameras, misaligned detector boxes, one query per camera",
    ),
    SiteSpec(
        key="prid",
        dataset="PRID2011",
        layout="video",
        cameras=_cams(
            2,
            ("street", "lawn"),
            ((0.6, 0.2, 0.2), (0.2, 0.3, 0.5)),
            light=(1.1, 0.8),
            cast=((1.0, 1.0, 1.1), (1.12, 1.0, 0.85)),
            contrast=(1.0, 0.85),
            blur=(0.6, 0.9),
            noise=(0.02, 0.035),
            resolution=(0.8,),
        ),
        train_ids=60,
        test_ids=30,
        distractor_ids=45,
        cams_per_id=(2, 2),
        images_per_cam=(3, 6),
        priors=AttributePriors(
            upper_palette=(
                "black",
                "charcoal",
                "grey",
                "navy",
                "denim",
                "white",
                "red",
                "brown",
                "beige",
                "blue",
            ),
            lower_palette=_TROUSERS,
            short_sleeve_prob=0.3,
        ),
        real=RealStats(2, 285, 3744, 100, 100, 649),
        conditions="2 outdoor cameras with strong colour/light change, short tracklets, many gallery distractors",
    ),
    SiteSpec(
        key="cuhk01",
        dataset="CUHK01",
        layout="small",
        cameras=_cams(
            2,
            ("campus", "corridor"),
            ((0.5, 0.5, 0.0), (0.1, 0.1, 0.8)),
            light=(1.05, 0.95),
            blur=(0.5, 0.6),
        ),
        train_ids=50,
        test_ids=50,
        distractor_ids=0,
        cams_per_id=(2, 2),
        images_per_cam=(2, 2),
        priors=AttributePriors(
            upper_palette=(
                "white",
                "black",
                "blue",
                "grey",
                "red",
                "navy",
                "pink",
                "yellow",
                "lightblue",
                "green",
            ),
            lower_palette=_TROUSERS,
            short_sleeve_prob=0.6,
        ),
        real=RealStats(2, 485, 1940, 486, 972, 972),
        conditions="2 campus cameras, frontal/back vs side view, 2 images per camera",
    ),
    SiteSpec(
        key="viper",
        dataset="VIPeR",
        layout="small",
        cameras=_cams(
            2,
            ("lawn", "street"),
            ((0.45, 0.45, 0.1), (0.05, 0.05, 0.9)),
            light=(1.15, 0.8),
            cast=((1.08, 1.0, 0.9), (0.9, 1.0, 1.1)),
            blur=(0.9,),
            noise=(0.03,),
            resolution=(0.5,),
        ),
        train_ids=60,
        test_ids=60,
        distractor_ids=0,
        cams_per_id=(2, 2),
        images_per_cam=(1, 1),
        priors=AttributePriors(
            upper_palette=tuple(COLOURS), lower_palette=_TROUSERS + ("white", "blue")
        ),
        real=RealStats(2, 316, 632, 316, 316, 316),
        conditions="2 low-resolution outdoor cameras, ~90 degree viewpoint change, 1 image per camera",
    ),
    SiteSpec(
        key="3dpes",
        dataset="3DPeS",
        layout="small",
        cameras=_cams(
            2,
            ("plaza", "garden"),
            ((0.4, 0.3, 0.3), (0.3, 0.4, 0.3)),
            light=(1.1, 0.95),
            blur=(0.6, 0.7),
            scale_jitter=(0.12,),
            occlusion=(0.1,),
            pitch_deg=(35.0,),
            height_m=(6.0,),
            distance_m=(12.0,),
        ),
        train_ids=40,
        test_ids=36,
        distractor_ids=0,
        cams_per_id=(2, 2),
        images_per_cam=(1, 4),
        priors=AttributePriors(
            upper_palette=(
                "black",
                "white",
                "grey",
                "navy",
                "denim",
                "beige",
                "red",
                "brown",
                "khaki",
                "blue",
            ),
            lower_palette=_TROUSERS,
            short_sleeve_prob=0.5,
        ),
        real=RealStats(2, 93, 450, 86, 246, 316),
        conditions="2 elevated outdoor cameras (35 degree pitch), 1-4 images per camera",
    ),
    SiteSpec(
        key="ilids",
        dataset="iLIDS-VID",
        layout="video",
        cameras=_cams(
            2,
            ("station", "corridor"),
            ((0.5, 0.3, 0.2), (0.3, 0.5, 0.2)),
            light=(0.85, 0.95),
            cast=((1.08, 1.02, 0.85), (1.0, 1.0, 1.0)),
            blur=(0.8,),
            occlusion=(0.35,),
            pitch_deg=(25.0,),
            height_m=(5.0,),
        ),
        train_ids=30,
        test_ids=30,
        distractor_ids=0,
        cams_per_id=(2, 2),
        images_per_cam=(1, 3),
        priors=AttributePriors(
            upper_palette=_DARK,
            lower_palette=_TROUSERS,
            bag_probs=(0.35, 0.2, 0.25, 0.2),
            short_sleeve_prob=0.2,
        ),
        real=RealStats(2, 59, 248, 60, 98, 130),
        conditions="2 airport-hall cameras, clutter and heavy occlusion, very short tracklets",
    ),
)

SITE_KEYS: tuple[str, ...] = tuple(s.key for s in SITE_SPECS)


def site_spec(key: str) -> SiteSpec:
    """The spec of site ``key`` (one of ``SITE_KEYS``)."""
    for spec in SITE_SPECS:
        if spec.key == key:
            return spec
    raise ValueError(f"sites: unknown site {key!r}; choose from {list(SITE_KEYS)}")
