"""Benchmark data set readers: one module per folder layout, one registry name per data set.

Every reader is ``read_x(root, *, seed=0) -> ReidSplits``, lists folders without opening
images, and raises ``DataError`` naming the file and the rule it breaks; drops (junk ids,
non-image files) and query identities without a gallery match are counted in
``ReidSplits.warnings``. Pids are the data set's own (no relabelling); camids are 0-based.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from fedreid.data import images
from fedreid.data.readers.agreid import read_agreid, read_agreid_v2
from fedreid.data.readers.buptcampus import read_buptcampus
from fedreid.data.readers.cuhk01 import read_cuhk01
from fedreid.data.readers.fedreid_layout import read_fedreid
from fedreid.data.readers.hitsz_vcm import read_hitsz_vcm
from fedreid.data.readers.ilids_vid import read_ilids_vid
from fedreid.data.readers.ltcc import read_ltcc
from fedreid.data.readers.market_style import (
    read_cuhk03_np_detected,
    read_cuhk03_np_labeled,
    read_dukemtmc,
    read_market1501,
)
from fedreid.data.readers.msmt17 import read_msmt17
from fedreid.data.readers.pes3d import read_3dpes
from fedreid.data.readers.prcc import read_prcc
from fedreid.data.readers.prid2011 import read_prid2011
from fedreid.data.readers.viper import read_viper
from fedreid.data.records import ReidSplits

READERS: dict[str, Callable[..., ReidSplits]] = {
    "market1501": read_market1501,
    "dukemtmc": read_dukemtmc,
    "cuhk03-np-detected": read_cuhk03_np_detected,
    "cuhk03-np-labeled": read_cuhk03_np_labeled,
    "msmt17": read_msmt17,
    "cuhk01": read_cuhk01,
    "viper": read_viper,
    "prid2011": read_prid2011,
    "3dpes": read_3dpes,
    "ilids-vid": read_ilids_vid,
    "agreid": read_agreid,
    "agreid-v2": read_agreid_v2,
    "hitsz-vcm": read_hitsz_vcm,
    "buptcampus": read_buptcampus,
    "ltcc": read_ltcc,
    "prcc": read_prcc,
    "fedreid": read_fedreid,
}


def load_dataset(
    root: str | os.PathLike, name: str, *, seed: int = 0, validate_images: bool = False
) -> ReidSplits:
    """Read data set ``name`` at ``root``; with ``validate_images`` also decode every image and
    reject zero-byte, corrupt and duplicate (same content within a split) files."""
    reader = READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown data set name {name!r}; choose one of: {', '.join(READERS)}")
    splits = reader(root, seed=seed)
    if validate_images:
        for split in ("train", "query", "gallery"):
            images.validate_images(getattr(splits, split), split, video=splits.video)
    return splits


__all__ = [
    "READERS",
    "load_dataset",
    "read_3dpes",
    "read_agreid",
    "read_agreid_v2",
    "read_buptcampus",
    "read_cuhk01",
    "read_cuhk03_np_detected",
    "read_cuhk03_np_labeled",
    "read_dukemtmc",
    "read_fedreid",
    "read_hitsz_vcm",
    "read_ilids_vid",
    "read_ltcc",
    "read_market1501",
    "read_msmt17",
    "read_prcc",
    "read_prid2011",
    "read_viper",
]
