"""The records every reader returns, so readers, samplers and evaluation share one shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A data folder breaks a layout rule. The message names the file, the rule and the fix."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of one person seen by one camera.

    ``camid`` is 0-based. ``tracklet``/``frame`` are -1 for image data sets. ``meta`` carries
    what later methods need and a reader could find: attributes, outfit id, modality,
    camera geometry (altitude, distance, pitch).
    """

    path: str
    pid: int
    camid: int
    tracklet: int = -1
    frame: int = -1
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ReidSplits:
    """Train / query / gallery of one data set (one federated site)."""

    name: str
    root: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    num_cameras: int
    video: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts per split: identities, cameras, images (and tracklets for video sets)."""

        def stats(samples: list[Sample]) -> dict[str, int]:
            out = {
                "ids": len({s.pid for s in samples}),
                "cams": len({s.camid for s in samples}),
                "images": len(samples),
            }
            if self.video:
                out["tracklets"] = len({(s.pid, s.camid, s.tracklet) for s in samples})
            return out

        return {
            "name": self.name,
            "root": self.root,
            "num_cameras": self.num_cameras,
            "video": self.video,
            "train": stats(self.train),
            "query": stats(self.query),
            "gallery": stats(self.gallery),
            "warnings": list(self.warnings),
        }
