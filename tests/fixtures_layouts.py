"""Tiny fake data sets in each real folder layout, with real file-name formats.

Every image is a valid 4-wide, 8-high picture with its own colour, so no two files share
content (the duplicate rule would fire otherwise). Each ``make_*`` returns the root to pass
to the reader; the counts the tests expect are written next to each builder.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image

_colours = itertools.count(1)


def write_image(path: Path) -> Path:
    """A 4x8 (WxH) image in the format its extension names, with a colour no other file has."""
    n = next(_colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (
        n * 4 % 256,
        n // 64 * 4 % 256,
        n // 4096 * 4 % 256,
    )  # steps of 4 survive JPEG at q100
    Image.new("RGB", (4, 8), colour).save(
        path, **({"quality": 100} if path.suffix == ".jpg" else {})
    )
    return path


def write_images(folder: Path, names: list[str]) -> None:
    for name in names:
        write_image(folder / name)


# Market-1501: train 4 images / 2 ids / 4 cams; query 2 / 2 ids; gallery 5 kept (ids 1, 3 and
# the 0000 distractors) after 2 junk (-1) files are dropped; one Thumbs.db to skip.
MARKET_TRAIN = [
    "0002_c1s1_000451_03.jpg",
    "0002_c2s1_000551_01.jpg",
    "0007_c3s3_002478_01.jpg",
    "0007_c6s1_001211_02.jpg",
]
MARKET_QUERY = ["0001_c1s1_001051_00.jpg", "0003_c2s1_000301_00.jpg"]
MARKET_GALLERY = [
    "0001_c2s1_000801_01.jpg",
    "0001_c5s2_000801_02.jpg",
    "0003_c4s1_000101_01.jpg",
    "0000_c1s1_000001_01.jpg",
    "0000_c3s1_000001_02.jpg",
    "-1_c1s1_000401_03.jpg",
    "-1_c2s1_000901_05.jpg",
]


def make_market(root: Path, *, nested: bool = False, attributes: str = "") -> Path:
    """Market-1501 at ``root`` (or under ``Market-1501-v15.09.15``). ``attributes`` = "mat",
    "json" or "csv" writes an attribute file for ids 1, 2, 3, 7 (age = pid % 4 + 1)."""
    base = root / "Market-1501-v15.09.15" if nested else root
    write_images(base / "bounding_box_train", MARKET_TRAIN)
    write_images(base / "query", MARKET_QUERY)
    write_images(base / "bounding_box_test", MARKET_GALLERY)
    (base / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    if attributes:
        write_attributes(base, "market_attribute", {"train": [2, 7], "test": [1, 3]}, attributes)
    return root


def write_attributes(folder: Path, stem: str, pids: dict[str, list[int]], form: str) -> None:
    """Lin et al.'s identity-level attribute file in .mat form, or the documented .json/.csv."""
    if form == "mat":
        from scipy.io import savemat

        parts = {
            part: {
                "age": np.array([[pid % 4 + 1 for pid in ids]], dtype=float),
                "backpack": np.array([[1 + pid % 2 for pid in ids]], dtype=float),
                "image_index": np.array([[f"{pid:04d}" for pid in ids]], dtype=object),
            }
            for part, ids in pids.items()
        }
        savemat(folder / f"{stem}.mat", {stem: parts})
    elif form == "json":
        data = {
            part: {f"{pid:04d}": {"age": pid % 4 + 1, "backpack": 1 + pid % 2} for pid in ids}
            for part, ids in pids.items()
        }
        (folder / f"{stem}.json").write_text(json.dumps(data))
    else:
        rows = ["pid,age,backpack"] + [
            f"{pid},{pid % 4 + 1},{1 + pid % 2}" for ids in pids.values() for pid in ids
        ]
        (folder / f"{stem}.csv").write_text("\n".join(rows) + "\n")


# DukeMTMC-reID: train 3 / 2 ids / 3 cams; query 1; gallery 2 (id 3 is gallery-only).
def make_duke(root: Path) -> Path:
    base = root / "DukeMTMC-reID"
    write_images(
        base / "bounding_box_train",
        ["0005_c2_f0046182.jpg", "0005_c8_f0050000.jpg", "0009_c1_f0000001.jpg"],
    )
    write_images(base / "query", ["0001_c2_f0046182.jpg"])
    write_images(base / "bounding_box_test", ["0001_c7_f0048000.jpg", "0003_c5_f0010000.jpg"])
    return root


# CUHK03-NP: detected train 2 / query 1 / gallery 3; labeled has one more train image.
def make_cuhk03_np(root: Path) -> Path:
    for kind, extra in (("detected", []), ("labeled", ["0002_c1_2.png"])):
        base = root / "cuhk03-np" / kind
        write_images(base / "bounding_box_train", ["0001_c1_1.png", "0001_c2_6.png"] + extra)
        write_images(base / "query", ["0003_c1_1.png"])
        write_images(
            base / "bounding_box_test", ["0003_c2_6.png", "0004_c1_1.png", "0004_c2_6.png"]
        )
    return root


# MSMT17: train 3 (2 from list_train, 1 from list_val) / 2 ids; query 1; gallery 2; one
# unlisted test image (counted).
MSMT_LISTS = {
    "list_train.txt": [
        "0000/0000_000_01_0303morning_0015_0.jpg 0",
        "0000/0000_001_05_0303noon_0020_1.jpg 0",
    ],
    "list_val.txt": ["0001/0001_000_15_0303afternoon_0100_0.jpg 1"],
    "list_query.txt": ["0000/0000_000_02_0113morning_0001_0.jpg 0"],
    "list_gallery.txt": [
        "0000/0000_003_07_0113noon_0050_2.jpg 0",
        "0001/0001_002_11_0113afternoon_0070_0.jpg 1",
    ],
}


def make_msmt17(root: Path, *, version: int = 1) -> Path:
    base = root / f"MSMT17_V{version}"
    train_dir, test_dir = ("train", "test") if version == 1 else ("mask_train_v2", "mask_test_v2")
    for list_name, lines in MSMT_LISTS.items():
        folder = base / (train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir)
        write_images(folder, [line.split()[0] for line in lines])
        (base / list_name).write_text("\n".join(lines) + "\n")
    write_image(base / test_dir / "0001" / "0001_005_12_0113noon_0090_0.jpg")
    return root


# CUHK01: 6 ids x 4 images -> train 3 ids / 12; query 3 ids / 6 (images 1-2); gallery 6.
def make_cuhk01(root: Path) -> Path:
    write_images(
        root / "campus", [f"{pid:04d}{img:03d}.png" for pid in range(1, 7) for img in range(1, 5)]
    )
    return root


# VIPeR: 6 ids x 2 cams -> train 3 ids / 6; query 3; gallery 3.
def make_viper(root: Path) -> Path:
    base = root / "VIPeR"
    write_images(base / "cam_a", [f"{pid:03d}_45.bmp" for pid in range(6)])
    write_images(base / "cam_b", [f"{pid:03d}_90.bmp" for pid in range(6)])
    return root


# PRID2011: shared ids 1-6 in both cams; cam_a-only 201-202; cam_b-only 201-204.
# -> train 3 shared ids (6) + 2 cam_a-only = 8 images / 5 ids; query 3; gallery 3 + 4 = 7.
def make_prid(root: Path) -> Path:
    base = root / "prid_2011" / "single_shot"
    write_images(base / "cam_a", [f"person_{pid:04d}.png" for pid in [*range(1, 7), 201, 202]])
    write_images(
        base / "cam_b", [f"person_{pid:04d}.png" for pid in [*range(1, 7), *range(201, 205)]]
    )
    return root


# 3DPeS (open-reid): 4 ids, each 2 images in cam_0 and 1 in cam_1 -> train 2 ids / 6; query 2
# ids / 4; gallery 2 ids / 2.
def make_3dpes(root: Path) -> Path:
    write_images(
        root / "cam_0", [f"{pid:05d}_{idx:05d}.bmp" for pid in range(1, 5) for idx in range(2)]
    )
    write_images(
        root / "cam_1", [f"{pid:05d}_{idx:05d}.bmp" for pid in range(1, 5) for idx in range(2, 3)]
    )
    return root


# 3DPeS (fast-reid): 4 pid folders x 3 images -> first image camera 0, the rest camera 1;
# train 2 ids / 6; query 2; gallery 4.
def make_3dpes_fastreid(root: Path) -> Path:
    for pid in range(1, 5):
        write_images(
            root / "3DPeS" / str(pid),
            [f"{pid}_{view}_000_{frame:03d}.bmp" for view, frame in ((1, 1), (2, 5), (2, 9))],
        )
    return root


# iLIDS-VID: 4 ids x 2 cams x 3 frames -> train 2 ids / 4 tracklets / 12 frames; query 2
# tracklets / 6; gallery 2 tracklets / 6.
def make_ilids_vid(root: Path) -> Path:
    for cam in (1, 2):
        for pid in range(1, 5):
            folder = root / "i-LIDS-VID" / "sequences" / f"cam{cam}" / f"person{pid:03d}"
            write_images(
                folder, [f"cam{cam}_person{pid:03d}_{frame:05d}.png" for frame in (317, 318, 319)]
            )
    return root


# FedReID layout (small-set names): train 3 / 2 ids; query 1; gallery 2 (id 4 gallery-only).
FEDREID_FILES = {
    "train_all": ["0001/cam_0_1_0.png", "0001/cam_1_1_1.png", "0002/cam_2_2_0.png"],
    "query": ["0003/cam_0_3_0.png"],
    "gallery": ["0003/cam_1_3_0.png", "0004/cam_1_4_0.png"],
}
FEDREID_VIDEO_FILES = {
    "train_all": ["0001/cam_0_1_t0_f0.png", "0001/cam_0_1_t0_f1.png", "0001/cam_1_1_t1_f0.png"],
    "query": ["0003/cam_0_3_t2_f0.png", "0003/cam_0_3_t2_f1.png"],
    "gallery": ["0003/cam_1_3_t3_f0.png", "0003/cam_1_3_t3_f1.png", "0003/cam_1_3_t3_f2.png"],
}
FEDREID_MARKET_FILES = {
    "train_all": ["0002/0002_c1s1_000451_03.jpg", "0002/0002_c2s1_000551_01.jpg"],
    "query": ["0001/0001_c1s1_001051_00.jpg"],
    "gallery": [
        "0001/0001_c2s1_000801_01.jpg",
        "0000/0000_c1s1_000001_01.jpg",
        "-1/-1_c1s1_000401_03.jpg",
    ],
}


def make_fedreid(
    root: Path, files: dict[str, list[str]] = FEDREID_FILES, meta: dict | None = None
) -> Path:
    """A site ``root/pytorch/{train_all,query,gallery}/<pid>/<image>`` with optional meta.json."""
    for split, names in files.items():
        write_images(root / "pytorch" / split, names)
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


def fedreid_meta(
    files: dict[str, list[str]] = FEDREID_FILES, *, video: bool = False, num_cameras: int = 3
) -> dict:
    """meta.json in the synthetic generator's form: image keys below ``pytorch/``, per-image
    entries, identity attributes keyed by ``str(pid)``, one geometry dict per camera."""
    images = {
        f"{split}/{name}": {"outfit": i % 2, "viewpoint": "front"}
        for split, names in files.items()
        for i, name in enumerate(names)
    }
    pids = {int(name.split("/")[0]) for names in files.values() for name in names}
    identities = {str(pid): {"role": "train", "hat": pid % 2 == 1} for pid in pids}
    cameras = [{"camid": c, "altitude": 3.0 + c} for c in range(num_cameras)]
    return {
        "video": video,
        "num_cameras": num_cameras,
        "cameras": cameras,
        "identities": identities,
        "images": images,
    }
