"""LTCC (Long-Term Cloth-Changing, Qian et al. 2020): ``LTCC_ReID/{train,query,test}/``, the
gallery being ``test/``, one image per box named ``<pid>_<clothes>_c<camera>_<frame>.png``, e.g.
``015_1_c11_015923.png``: person 15 in outfit 1 seen by camera 11 (1-based, 12 cameras).

Layout and name rule from the widely used clothes-change loader (``guxinqian/Simple-CCReID``
``data/datasets/ltcc.py``); 152 identities, 17,138 images, 12 cameras (table in arXiv
2410.13567). Not run on the real data here (no download is possible); ``fedreid data check``
prints what a copy holds.

``meta["clothes_id"]`` is the outfit number of the file name, which is per person: two samples
wear the same clothes when both pid and clothes id agree. Evaluation
(``fedreid.eval.clothes_change``): the standard ("general") setting and the cloth-changing
setting, where gallery images of the query's own outfit are junk.
"""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import (
    Tally,
    absolute,
    bad_camera,
    bad_name,
    find_base,
    finish,
    list_images,
)
from fedreid.data.records import ReidSplits, Sample

NUM_CAMERAS = 12
_NAME = re.compile(r"^(\d+)_(\d+)_c(\d+)_")
_NAME_RULE = "'<pid>_<clothes>_c<camera>_<frame>.png' (regex ^(\\d+)_(\\d+)_c(\\d+)_)"
_SPLITS = (("train", "train"), ("query", "query"), ("gallery", "test"))
_NESTS = ("", "LTCC_ReID")


def read_ltcc(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """LTCC at ``root`` or ``root/LTCC_ReID``. ``seed`` is unused (fixed split)."""
    base = find_base(absolute(root), "LTCC", [folder for _, folder in _SPLITS], _NESTS)
    tally = Tally()
    clothes_meta: dict[int, dict[str, int]] = {}
    splits: dict[str, list[Sample]] = {}
    for split, folder in _SPLITS:
        samples = []
        for name, path in list_images(os.path.join(base, folder), tally, folder):
            match = _NAME.match(name)
            if match is None:
                raise bad_name(path, _NAME_RULE)
            pid, clothes, camera = (int(group) for group in match.groups())
            if not 1 <= camera <= NUM_CAMERAS:
                raise bad_camera(path, camera, "LTCC", 1, NUM_CAMERAS)
            meta = clothes_meta.setdefault(clothes, {"clothes_id": clothes})
            samples.append(Sample(path, pid, camera - 1, meta=meta))
        splits[split] = samples
    return finish(
        "ltcc", base, splits["train"], splits["query"], splits["gallery"], NUM_CAMERAS, tally
    )


__all__ = ["NUM_CAMERAS", "read_ltcc"]
