"""3DPeS in either of two layouts.

- FedReID / open-reid: ``cam_0/``, ``cam_1/`` with ``{pid:05d}_{idx:05d}.bmp`` (the two
  folders are camera 0 and 1).
- fast-reid: ``3DPeS/<pid>/*.bmp``, pid = folder name, no camera label. 3DPeS has more than two
  cameras and the open-reid conversion already groups an identity's views into two halves, so
  here an identity's images, sorted by name, are split the same way: the first
  ``len // 2`` are camera 0 and the rest camera 1 (a single image is camera 1).

No public split: see ``small_split``.
"""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import Tally, absolute, bad_name, finish, list_dirs, list_images
from fedreid.data.readers.small_split import seeded_split
from fedreid.data.records import DataError, ReidSplits, Sample

NUM_CAMERAS = 2
_NAME = re.compile(r"^(\d+)_(\d+)\.")
_NAME_RULE = "'<pid>_<index>.bmp' (regex ^(\\d+)_(\\d+)\\.)"
_NESTS = ("", "3dpes", "3DPeS")


def _open_reid(base: str, tally: Tally) -> list[Sample]:
    samples = []
    for camid, folder in enumerate(("cam_0", "cam_1")):
        for name, path in list_images(os.path.join(base, folder), tally, folder):
            match = _NAME.match(name)
            if match is None:
                raise bad_name(path, _NAME_RULE)
            samples.append(Sample(path, int(match.group(1)), camid))
    return samples


def _fast_reid(base: str, tally: Tally) -> list[Sample]:
    samples = []
    for dir_name, dir_path in list_dirs(base):
        if not dir_name.isdigit():
            raise DataError(
                f"{dir_path}: unparsable identity folder name; rule: fast-reid 3DPeS folders are named "
                "by the numeric pid; fix: rename or remove the folder"
            )
        images = list_images(dir_path, tally, "3DPeS identity folders")
        half = len(images) // 2
        samples.extend(
            Sample(path, int(dir_name), 0 if i < half else 1) for i, (_, path) in enumerate(images)
        )
    return samples


def read_3dpes(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """3DPeS at ``root`` (``cam_0``/``cam_1`` there or in ``3dpes``/``3DPeS``; else the
    fast-reid ``3DPeS/<pid>/`` folders), split by ``seed``."""
    top = absolute(root)
    tally = Tally()
    for nest in _NESTS:
        base = os.path.join(top, nest) if nest else top
        if os.path.isdir(os.path.join(base, "cam_0")) or os.path.isdir(os.path.join(base, "cam_1")):
            for folder in ("cam_0", "cam_1"):
                if not os.path.isdir(os.path.join(base, folder)):
                    raise DataError(
                        f"{os.path.join(base, folder)}: missing split folder for 3DPeS; rule: the open-reid "
                        "layout needs cam_0/ and cam_1/; fix: restore the folder"
                    )
            samples = _open_reid(base, tally)
            break
    else:
        base = top if os.path.basename(top) == "3DPeS" else os.path.join(top, "3DPeS")
        if not os.path.isdir(base):
            raise DataError(
                f"{os.path.join(top, 'cam_0')}: missing split folder for 3DPeS; rule: 3DPeS needs "
                "cam_0/ and cam_1/ (open-reid) or 3DPeS/<pid>/ folders (fast-reid); fix: point the "
                "root at the data set"
            )
        samples = _fast_reid(base, tally)
    train, query, gallery = seeded_split(samples, seed)
    return finish("3dpes", base, train, query, gallery, NUM_CAMERAS, tally)
