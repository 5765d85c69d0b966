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


# AG-ReID v1 (official toolkit layout): train 2 ids / 2 cams / 4; query: 2 aerial (ids P0010
# session 02140 level 0 and P0011 session 02141 level 2) + 1 ground (P0010); gallery: 2 aerial +
# 2 ground. Aerial->ground: 2 queries, 2 ground gallery; ground->aerial: 1 query, 2 aerial.
AGREID_FILES = {
    "bounding_box_train": [
        "P0001T04041A0C0F31.jpg",
        "P0001T04041A0C3F691.jpg",
        "P0002T04041A1C0F61.jpg",
        "P0002T04041A1C3F121.jpg",
    ],
    "query_all_c0": ["P0010T02140A0C0F91.jpg", "P0011T02141A2C0F100.jpg"],
    "query_all_c3": ["P0010T02140A0C3F751.jpg"],
    "bounding_box_test_all_c0": ["P0010T02140A0C0F31.jpg", "P0011T02141A2C0F61.jpg"],
    "bounding_box_test_all_c3": ["P0010T02140A0C3F691.jpg", "P0011T02141A2C3F700.jpg"],
}


def make_agreid(root: Path, *, attributes: str = "") -> Path:
    """AG-ReID v1; ``attributes`` = "mat"/"json"/"csv" writes the identity attribute file for
    the four pids (keys: the concatenated P+T+A number)."""
    for folder, names in AGREID_FILES.items():
        write_images(root / folder, names)
    if attributes:
        pids = {"train": [1040410, 2040411], "test": [10021400, 11021412]}
        write_attributes(root, "qut_attribute_v4_88_attributes", pids, attributes)
    return root


# AG-ReID.v2 (train_all/query/gallery with one level of sub-folders): train 2 ids / 3 cams / 3;
# query: 1 aerial (P0020 level 1), 1 CCTV and 1 wearable (P0021 level 0); gallery: aerial,
# CCTV and wearable images of both test ids (6).
AGREID_V2_FILES = {
    "train_all": [
        "P0001T03220A1/P0001T03220A1C0F01111.jpg",
        "P0001T03220A1/P0001T03220A1C2F01200.jpg",
        "P0002T03221A0/P0002T03221A0C3F00500.jpg",
    ],
    "query": [
        "P0020T05010A1/P0020T05010A1C0F00010.jpg",
        "P0021T05011A0/P0021T05011A0C3F00020.jpg",
        "P0021T05011A0/P0021T05011A0C2F00030.jpg",
    ],
    "gallery": [
        "P0020T05010A1/P0020T05010A1C0F00110.jpg",
        "P0020T05010A1/P0020T05010A1C2F00120.jpg",
        "P0020T05010A1/P0020T05010A1C3F00130.jpg",
        "P0021T05011A0/P0021T05011A0C0F00140.jpg",
        "P0021T05011A0/P0021T05011A0C2F00150.jpg",
        "P0021T05011A0/P0021T05011A0C3F00160.jpg",
    ],
}


def make_agreid_v2(root: Path) -> Path:
    base = root / "AG-ReID.v2"
    for folder, names in AGREID_V2_FILES.items():
        write_images(base / folder, names)
    return root


# HITSZ-VCM: train pid 1 (infrared D1 and visible D2, 12 frames each) plus a 3-frame tracklet
# (dropped, counted); test pids 3 and 4: infrared tracklets are the query (query_IDX rows 1, 3),
# visible ones the gallery. -> train 1 id / 2 tracklets / 24 frames; query 2 / 24; gallery 2 / 24.
VCM_TRAIN_ROWS = [(1, 1, 1, 1), (2, 1, 2, 2), (2, 1, 3, 3)]  # (modality, pid, camera, tracklet)
VCM_TEST_ROWS = [(1, 3, 1, 1), (2, 3, 4, 2), (1, 4, 5, 1), (2, 4, 6, 2)]
VCM_SHORT_TRACKLET = 2  # index into VCM_TRAIN_ROWS of the 3-frame tracklet


def _vcm_subset(base: Path, subset: str, rows: list[tuple[int, int, int, int]], short: int) -> None:
    names, info, start = [], [], 1
    for index, (modality, pid, camera, tracklet) in enumerate(rows):
        length = 3 if index == short else 12
        for frame in range(1, length + 1):
            picture = f"{tracklet * 100 + frame}.jpg"
            names.append(f"{pid:04d}M{modality}D{camera}T{tracklet}F{picture}")
            folder = base / subset.capitalize() / f"{pid:04d}" / ("ir" if modality == 1 else "rgb")
            write_image(folder / f"D{camera}" / picture)
        info.append(f"{modality} {start} {start + length - 1} {pid} {camera}")
        start += length
    (base / "info" / f"{subset}_name.txt").write_text("\n".join(names) + "\n")
    (base / "info" / f"track_{subset}_info.txt").write_text("\n".join(info) + "\n")


def make_hitsz_vcm(root: Path) -> Path:
    base = root / "HITSZ-VCM"
    (base / "info").mkdir(parents=True)
    _vcm_subset(base, "train", VCM_TRAIN_ROWS, VCM_SHORT_TRACKLET)
    _vcm_subset(base, "test", VCM_TEST_ROWS, -1)
    (base / "info" / "query_IDX.txt").write_text("1 3\n")
    return root


# BUPTCampus: train pid 1 (an aligned RGB/IR pair in CQ1); test pid 5 (infrared query in G25,
# aligned gallery pair in LS3) and pid 6 (visible query in CQ1, gallery pair in W4); 3 frames
# per tracklet. -> train 1 id / 2 tracklets / 6; query 2 / 2 / 6; gallery 2 / 4 / 12.
BUPT_LISTS = {
    "train.txt": ["1 RGB/IR CQ1 1"],
    "train_auxiliary.txt": ["9 RGB/IR TSG1 1"],
    "query.txt": ["5 IR G25 1", "6 RGB CQ1 2"],
    "gallery.txt": ["5 RGB/IR LS3 1", "6 RGB/IR W4 1"],
}


def make_buptcampus(root: Path) -> Path:
    base = root / "BUPTCampus"
    paths: dict = {}
    for list_name, lines in BUPT_LISTS.items():
        (base / list_name).parent.mkdir(parents=True, exist_ok=True)
        (base / list_name).write_text("\n".join(lines) + "\n")
        for line in lines:
            pid, modalities, camera, tracklet = line.split()
            for modality in modalities.split("/"):
                frames = [
                    f"{pid}/{modality}/{camera}/{pid}_{modality}_{camera}_{tracklet}_{8535 + f}.jpg"
                    for f in range(3)
                ]
                for rel in frames:
                    write_image(base / "DATA" / rel)
                paths.setdefault(pid, {}).setdefault(modality, {}).setdefault(camera, {})[
                    tracklet
                ] = frames
    (base / "data_paths.json").write_text(json.dumps(paths))
    return root


# LTCC: train 2 ids / 3 cams / 3 (id 15 in two outfits); query: id 20 outfit 1 camera 1;
# gallery: id 20 outfit 1 camera 2, id 20 outfit 2 camera 3, id 21 outfit 1 camera 12.
LTCC_FILES = {
    "train": ["015_1_c11_015923.png", "015_2_c5_000101.png", "016_1_c1_000777.png"],
    "query": ["020_1_c1_000001.png"],
    "test": ["020_1_c2_000002.png", "020_2_c3_000003.png", "021_1_c12_000004.png"],
}


def make_ltcc(root: Path) -> Path:
    for folder, names in LTCC_FILES.items():
        write_images(root / "LTCC_ReID" / folder, names)
    return root


# PRCC: train id 1 in A, B, C (3 images); test ids 10 and 11: gallery = A (2 images), query =
# B (same clothes, 2) + C (other clothes, 2); one val image, not read.
def make_prcc(root: Path) -> Path:
    rgb = root / "prcc" / "rgb"
    write_images(
        rgb / "train" / "001",
        ["A_cropped_rgb001.jpg", "B_cropped_rgb002.jpg", "C_cropped_rgb003.jpg"],
    )
    write_images(rgb / "val" / "002", ["A_cropped_rgb001.jpg"])
    for camera in "ABC":
        for pid in (10, 11):
            write_images(rgb / "test" / camera / f"{pid:03d}", [f"cropped_rgb{pid}{camera}.jpg"])
    return root
