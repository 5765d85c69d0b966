"""PRID2011 single-shot: ``prid_2011/single_shot/{cam_a,cam_b}/person_0001.png``.

cam_a (camera 0) holds 385 persons, cam_b (camera 1) 749; only ids 1-200 are the same person in
both cameras. The numbers above 200 name different people in each camera, so:

- ids 1-200 are split by ``small_split`` (100 train / 100 test): train keeps both views; a test
  identity's cam_a image is the query and its cam_b image the gallery;
- cam_b ids 201-749 join the gallery as distractors (the standard protocol);
- cam_a ids 201-385 join the training set under pid ``CAM_A_ONLY_PID_OFFSET + id`` so they
  cannot collide with the cam_b person of the same number (FedReID trains on them too: its
  table lists 285 = 100 + 185 training identities).
"""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import Tally, absolute, bad_name, find_base, finish, list_images
from fedreid.data.readers.small_split import query_gallery_by_views, split_identities
from fedreid.data.records import ReidSplits, Sample

NUM_CAMERAS = 2
SHARED_IDS = 200
CAM_A_ONLY_PID_OFFSET = 1000
_NAME = re.compile(r"^person_(\d+)\.")
_NAME_RULE = "'person_<pid>.png' (regex ^person_(\\d+)\\.)"
_NESTS = ("", "single_shot", "prid_2011/single_shot", "prid2011/prid_2011/single_shot")


def read_prid2011(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """PRID2011 single-shot at ``root`` or one of its parents, split by ``seed``."""
    base = find_base(absolute(root), "PRID2011 single-shot", ["cam_a", "cam_b"], _NESTS)
    tally = Tally()
    shared: list[Sample] = []
    cam_a_only: list[Sample] = []
    distractors: list[Sample] = []
    for camid, folder in enumerate(("cam_a", "cam_b")):
        for name, path in list_images(os.path.join(base, folder), tally, folder):
            match = _NAME.match(name)
            if match is None:
                raise bad_name(path, _NAME_RULE)
            pid = int(match.group(1))
            if pid <= SHARED_IDS:
                shared.append(Sample(path, pid, camid))
            elif camid == 0:
                cam_a_only.append(Sample(path, CAM_A_ONLY_PID_OFFSET + pid, camid))
            else:
                distractors.append(Sample(path, pid, camid))
    train_pids, _ = split_identities((s.pid for s in shared), seed)
    train = [s for s in shared if s.pid in train_pids] + cam_a_only
    query, gallery = query_gallery_by_views([s for s in shared if s.pid not in train_pids])
    return finish("prid2011", base, train, query, gallery + distractors, NUM_CAMERAS, tally)
