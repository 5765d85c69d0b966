"""CUHK01: ``campus/0001001.png``, 971 identities × 4 images; the first 4 digits are the pid,
the last 3 the image index 001-004; camid = (index - 1) // 2, so images 1-2 are view A
(camera 0) and 3-4 view B (camera 1). No public split: see ``small_split``."""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import Tally, absolute, bad_name, find_base, finish, list_images
from fedreid.data.readers.small_split import seeded_split
from fedreid.data.records import DataError, ReidSplits, Sample

NUM_CAMERAS = 2
_NAME = re.compile(r"^(\d{4})(\d{3})\.")
_NAME_RULE = "7 digits: 4-digit pid then 3-digit image index (regex ^(\\d{4})(\\d{3})\\.)"


def read_cuhk01(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """CUHK01 at ``root/campus`` (or ``root/CUHK01/campus``), split by ``seed``."""
    base = find_base(absolute(root), "CUHK01", ["campus"], ("", "CUHK01", "cuhk01"))
    tally = Tally()
    samples = []
    for name, path in list_images(os.path.join(base, "campus"), tally, "campus"):
        match = _NAME.match(name)
        if match is None:
            raise bad_name(path, _NAME_RULE)
        index = int(match.group(2))
        if not 1 <= index <= 2 * NUM_CAMERAS:
            raise DataError(
                f"{path}: image index {index} gives a camera out of range for CUHK01; rule: indices "
                "001-004, camid = (index - 1) // 2 in 0..1; fix: remove or rename the file"
            )
        samples.append(Sample(path, int(match.group(1)), (index - 1) // 2))
    train, query, gallery = seeded_split(samples, seed)
    return finish("cuhk01", base, train, query, gallery, NUM_CAMERAS, tally)
