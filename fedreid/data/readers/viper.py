"""VIPeR: ``VIPeR/{cam_a,cam_b}/*.bmp``, 632 identities × one image per camera, named
``NNN_ANGLE.bmp``; the two views of an identity share the ``NNN`` prefix (paired by pid, not by
list position). cam_a is camera 0, cam_b camera 1. No public split: see ``small_split``."""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import Tally, absolute, bad_name, find_base, finish, list_images
from fedreid.data.readers.small_split import seeded_split
from fedreid.data.records import ReidSplits, Sample

NUM_CAMERAS = 2
_NAME = re.compile(r"^(\d+)_")
_NAME_RULE = "'<pid>_<angle>.bmp' (regex ^(\\d+)_)"


def read_viper(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """VIPeR at ``root`` or ``root/VIPeR``, split by ``seed``."""
    base = find_base(absolute(root), "VIPeR", ["cam_a", "cam_b"], ("", "VIPeR"))
    tally = Tally()
    samples = []
    for camid, folder in enumerate(("cam_a", "cam_b")):
        for name, path in list_images(os.path.join(base, folder), tally, folder):
            match = _NAME.match(name)
            if match is None:
                raise bad_name(path, _NAME_RULE)
            samples.append(Sample(path, int(match.group(1)), camid))
    train, query, gallery = seeded_split(samples, seed)
    return finish("viper", base, train, query, gallery, NUM_CAMERAS, tally)
