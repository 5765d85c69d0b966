"""MSMT17: images in ``train/`` and ``test/`` (V2: ``mask_train_v2/``, ``mask_test_v2/``, faces
blurred), split by four list files whose lines read ``<relpath> <label>``, for example
``0002/0002_001_03_0303morning_0001_0.jpg 2``.

pid = the label as given; camid = int(name.split('_')[2]) - 1, 15 cameras. Train is
``list_train`` + ``list_val`` (both under ``train/``; together the published 32,621 images, as
in the FedReID benchmark table). Images in a folder that no list names are counted.
"""

from __future__ import annotations

import os

from fedreid.data.images import IMAGE_EXTS
from fedreid.data.readers.common import Tally, absolute, bad_camera, finish, list_dirs
from fedreid.data.records import DataError, ReidSplits, Sample

NUM_CAMERAS = 15
_LABEL = "MSMT17"
_LISTS = (
    ("train", "list_train.txt", 0),
    ("train", "list_val.txt", 0),
    ("query", "list_query.txt", 1),
    ("gallery", "list_gallery.txt", 1),
)
_VERSIONS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
_NESTS = ("", "MSMT17_V1", "MSMT17_V2", "MSMT17")


def _find_base(top: str) -> tuple[str, tuple[str, str]]:
    """The folder holding the lists and one version's two image folders."""
    for nest in _NESTS:
        base = os.path.join(top, nest) if nest else top
        for folders in _VERSIONS:
            if all(os.path.isdir(os.path.join(base, folder)) for folder in folders):
                for _, list_name, _ in _LISTS:
                    if not os.path.isfile(os.path.join(base, list_name)):
                        raise DataError(
                            f"{os.path.join(base, list_name)}: missing split list for {_LABEL}; rule: "
                            "MSMT17 needs list_train.txt, list_val.txt, list_query.txt, list_gallery.txt; "
                            "fix: restore the file from the original archive"
                        )
                return base, folders
    raise DataError(
        f"{os.path.join(top, 'train')}: missing split folder for {_LABEL} (looked in {top} and its "
        f"{', '.join(n for n in _NESTS if n)} sub-folders); rule: V1 needs train/ and test/, V2 needs "
        "mask_train_v2/ and mask_test_v2/, beside the list files; fix: point the root at the data set"
    )


def _present(folder: str) -> set[str]:
    """Relative paths ``<pid dir>/<file>`` of the images under ``folder``."""
    found = set()
    for dir_name, dir_path in list_dirs(folder):
        with os.scandir(dir_path) as entries:
            for entry in entries:
                if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                    found.add(f"{dir_name}/{entry.name}")
    return found


def read_msmt17(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """MSMT17 V1 or V2 at ``root`` or ``root/MSMT17_V1`` (``_V2``). ``seed`` is unused (fixed split)."""
    base, folders = _find_base(absolute(root))
    present = [_present(os.path.join(base, folder)) for folder in folders]
    listed: list[set[str]] = [set(), set()]
    first_seen: dict[tuple[int, str], str] = {}
    splits: dict[str, list[Sample]] = {"train": [], "query": [], "gallery": []}
    for split, list_name, which in _LISTS:
        list_path = os.path.join(base, list_name)
        image_dir = os.path.join(base, folders[which])
        with open(list_path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                where = f"{list_path} line {number}"
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DataError(
                        f"{where}: unparsable list line {line.strip()!r}; rule: '<relpath> <label>'; fix: correct the line"
                    )
                rel, pid = parts[0], int(parts[1])
                path = os.path.join(image_dir, rel)
                if rel not in present[which]:
                    raise DataError(
                        f"{where}: listed image {path} does not exist; rule: every listed file must be present; fix: restore it or remove the line"
                    )
                if (which, rel) in first_seen:
                    raise DataError(
                        f"{where}: {path} listed again (first at {first_seen[which, rel]}); rule: no file twice "
                        "in the lists; fix: remove the repeated line"
                    )
                first_seen[which, rel] = where
                name_parts = os.path.basename(rel).split("_")
                if len(name_parts) < 3 or not name_parts[2].isdigit():
                    raise DataError(
                        f"{path}: unparsable file name; rule: <pid>_<index>_<camera>_<date+time>_...; fix: rename or remove the file"
                    )
                camera = int(name_parts[2])
                if not 1 <= camera <= NUM_CAMERAS:
                    raise bad_camera(path, camera, _LABEL, 1, NUM_CAMERAS)
                listed[which].add(rel)
                splits[split].append(Sample(path, pid, camera - 1))
    tally = Tally()
    for which, folder in enumerate(folders):
        for rel in sorted(present[which] - listed[which]):
            tally.add(
                f"images under {folder}/ named by no list file, not used",
                os.path.join(base, folder, rel),
            )
    return finish(
        "msmt17", base, splits["train"], splits["query"], splits["gallery"], NUM_CAMERAS, tally
    )
