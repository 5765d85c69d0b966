"""PRCC (Yang et al., TPAMI 2019): person re-identification under moderate clothing change,
three cameras A, B, C; a person wears the same clothes in A and B and other clothes in C.

Layout (the RGB part) and rules from the widely used clothes-change loader
(``guxinqian/Simple-CCReID`` ``data/datasets/prcc.py``)::

    prcc/rgb/train/<pid>/<A|B|C>_....jpg    the file name starts with its camera letter
    prcc/rgb/val/...                        not read (the published protocol trains on train/)
    prcc/rgb/test/{A,B,C}/<pid>/....jpg     A: gallery; B: same-clothes query; C: cross-clothes query

221 identities, 33,698 images, 3 cameras (table in arXiv 2410.13567); 150 training and 71 test
identities (assumption, commonly cited, not checked here). Not run on the real data here (no
download is possible); ``fedreid data check`` prints what a copy holds. ``sketch/`` and other
non-RGB folders are not read.

camids: A -> 0, B -> 1, C -> 2. ``meta["clothes_id"]`` is 0 for A and B and 1 for C (per
person: the pair (pid, clothes id) names an outfit). The query split holds both published
query sets; ``fedreid.eval.clothes_change`` separates them: its same-clothes setting keeps the
B queries (their positives in A wear the same clothes) and its clothes-changing setting the C
queries, exactly PRCC's "same clothes" and "cross clothes" results.
"""

from __future__ import annotations

import os

from fedreid.data.readers.common import Tally, absolute, find_base, finish, list_images
from fedreid.data.records import DataError, ReidSplits, Sample

CAMERAS = ("A", "B", "C")
NUM_CAMERAS = len(CAMERAS)
_CLOTHES = {"A": 0, "B": 0, "C": 1}
_TEST_SPLIT = {"A": "gallery", "B": "query", "C": "query"}
_NESTS = ("", "prcc", "PRCC")
_META = {camera: {"clothes_id": clothes} for camera, clothes in _CLOTHES.items()}


def _pid(dir_path: str, where: str) -> int:
    name = os.path.basename(dir_path)
    if not name.isdigit():
        raise DataError(
            f"{dir_path}: unparsable identity folder name; rule: folders under {where}/ are named "
            "by the integer pid; fix: rename or remove the folder"
        )
    return int(name)


def _pid_dirs(folder: str, where: str, tally: Tally) -> list[str]:
    """Sorted identity folders of ``folder``; loose files there are counted, not read."""
    dirs = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                dirs.append(entry.path)
            else:
                tally.add(f"entries that are not identity folders skipped in {where}/", entry.path)
    return sorted(dirs)


def _train(folder: str, tally: Tally) -> list[Sample]:
    samples = []
    for dir_path in _pid_dirs(folder, "rgb/train", tally):
        pid = _pid(dir_path, "rgb/train")
        for name, path in list_images(dir_path, tally, "rgb/train"):
            camera = name[0]
            if camera not in CAMERAS:
                raise DataError(
                    f"{path}: unparsable file name; rule: training file names start with the "
                    "camera letter A, B or C; fix: rename or remove the file"
                )
            samples.append(Sample(path, pid, CAMERAS.index(camera), meta=_META[camera]))
    return samples


def read_prcc(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """PRCC at ``root`` (holding ``rgb/``) or ``root/prcc``. ``seed`` is unused (fixed split)."""
    required = ["rgb/train", "rgb/test/A", "rgb/test/B", "rgb/test/C"]
    base = find_base(absolute(root), "PRCC", required, _NESTS)
    tally = Tally()
    train = _train(os.path.join(base, "rgb", "train"), tally)
    test: dict[str, list[Sample]] = {"query": [], "gallery": []}
    for camid, camera in enumerate(CAMERAS):
        where = f"rgb/test/{camera}"
        for dir_path in _pid_dirs(os.path.join(base, "rgb", "test", camera), where, tally):
            pid = _pid(dir_path, where)
            for _, path in list_images(dir_path, tally, where):
                test[_TEST_SPLIT[camera]].append(Sample(path, pid, camid, meta=_META[camera]))
    return finish("prcc", base, train, test["query"], test["gallery"], NUM_CAMERAS, tally)


__all__ = ["CAMERAS", "NUM_CAMERAS", "read_prcc"]
