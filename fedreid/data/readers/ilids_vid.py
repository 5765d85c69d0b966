"""iLIDS-VID: ``i-LIDS-VID/sequences/{cam1,cam2}/personXXX/*.png``, 300 identities, one
tracklet per identity and camera (frames such as ``cam1_person001_00317.png``; the frame
number is the last digit run of the name).

cam1 is camera 0, cam2 camera 1; tracklet ids are unique in the data set (numbered in camera,
then pid order). The identity split is ``small_split``'s (150/150 at seed-chosen identities,
not the ``train_test_splits_ilidsvid.mat`` rows); its view rule makes the cam1 tracklets the
query and the cam2 tracklets the gallery, the standard protocol.
"""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import (
    Tally,
    absolute,
    bad_name,
    find_base,
    finish,
    list_dirs,
    list_images,
)
from fedreid.data.readers.small_split import seeded_split
from fedreid.data.records import DataError, ReidSplits, Sample

NUM_CAMERAS = 2
_PERSON = re.compile(r"^person(\d+)$")
_FRAME = re.compile(r"(\d+)\.[^.]+$")
_FRAME_RULE = (
    "frame files end in the frame number, e.g. cam1_person001_00317.png (regex (\\d+)\\.ext$)"
)
_NESTS = ("", "i-LIDS-VID", "ilids-vid/i-LIDS-VID")


def read_ilids_vid(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """iLIDS-VID at ``root`` (holding ``sequences/``) or ``root/i-LIDS-VID``, split by ``seed``."""
    base = find_base(absolute(root), "iLIDS-VID", ["sequences/cam1", "sequences/cam2"], _NESTS)
    tally = Tally()
    samples = []
    tracklet = 0
    for camid, folder in enumerate(("cam1", "cam2")):
        for dir_name, dir_path in list_dirs(os.path.join(base, "sequences", folder)):
            match = _PERSON.match(dir_name)
            if match is None:
                raise DataError(
                    f"{dir_path}: unparsable tracklet folder name; rule: 'person<pid>' (regex "
                    "^person(\\d+)$); fix: rename or remove the folder"
                )
            pid = int(match.group(1))
            frames = list_images(dir_path, tally, f"sequences/{folder}")
            if not frames:
                tally.add("empty tracklet folders", dir_path)
            for name, path in frames:
                frame = _FRAME.search(name)
                if frame is None:
                    raise bad_name(path, _FRAME_RULE)
                samples.append(Sample(path, pid, camid, tracklet, int(frame.group(1))))
            tracklet += 1
    train, query, gallery = seeded_split(samples, seed)
    return finish("ilids-vid", base, train, query, gallery, NUM_CAMERAS, tally, video=True)
