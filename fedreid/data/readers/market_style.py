"""The Market-1501 folder layout, shared by Market-1501, DukeMTMC-reID and CUHK03-NP:
``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (the gallery), one image per box,
named ``<pid>_c<camera>...`` with a 1-based camera.

- Market-1501 ``0002_c1s1_000451_03.jpg``: cameras 1-6. pid -1 marks junk boxes and is dropped
  (counted); pid 0000 marks distractors, which stay in the gallery.
- DukeMTMC-reID ``0001_c2_f0046182.jpg``: cameras 1-8.
- CUHK03-NP ``0001_c1_5.png`` under ``cuhk03-np/{detected,labeled}/``: cameras 1-2.

Pids are kept as in the file names (no relabelling; samplers map them to class indices).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from fedreid.data.readers.attributes import find_attribute_table
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

_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_NAME_RULE = "names start with '<pid>_c<camera>' (regex ^(-?\\d+)_c(\\d+), camera 1-based)"
_SPLITS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))
JUNK_PID = -1


@dataclass(frozen=True)
class _Layout:
    name: str
    label: str
    num_cameras: int
    nests: tuple[str, ...]
    attribute_stem: str = ""


def _read(root: str | os.PathLike, layout: _Layout) -> ReidSplits:
    top = absolute(root)
    base = find_base(top, layout.label, [folder for _, folder in _SPLITS], layout.nests)
    attributes = None
    if layout.attribute_stem:
        folders = (
            base,
            top,
            os.path.join(top, "Market-1501_Attribute"),
            os.path.join(top, "DukeMTMC-attribute"),
        )
        attributes = find_attribute_table(folders, layout.attribute_stem)
    tally = Tally()
    splits: dict[str, list[Sample]] = {}
    for split, folder in _SPLITS:
        samples = []
        for name, path in list_images(os.path.join(base, folder), tally, folder):
            match = _NAME.match(name)
            if match is None:
                raise bad_name(path, _NAME_RULE)
            pid, camera = int(match.group(1)), int(match.group(2))
            if pid == JUNK_PID:
                tally.add(f"junk images (pid -1) dropped from {folder}", path)
                continue
            if not 1 <= camera <= layout.num_cameras:
                raise bad_camera(path, camera, layout.label, 1, layout.num_cameras)
            if attributes is not None and pid in attributes:
                samples.append(Sample(path, pid, camera - 1, meta={"attributes": attributes[pid]}))
            else:
                samples.append(Sample(path, pid, camera - 1))
        splits[split] = samples
    return finish(
        layout.name,
        base,
        splits["train"],
        splits["query"],
        splits["gallery"],
        layout.num_cameras,
        tally,
    )


_MARKET = _Layout("market1501", "Market-1501", 6, ("", "Market-1501-v15.09.15"), "market_attribute")
_DUKE = _Layout("dukemtmc", "DukeMTMC-reID", 8, ("", "DukeMTMC-reID"), "duke_attribute")
_CUHK03_DETECTED = _Layout(
    "cuhk03-np-detected", "CUHK03-NP detected", 2, ("detected", "cuhk03-np/detected", "")
)
_CUHK03_LABELED = _Layout(
    "cuhk03-np-labeled", "CUHK03-NP labeled", 2, ("labeled", "cuhk03-np/labeled", "")
)


def read_market1501(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """Market-1501 at ``root`` or ``root/Market-1501-v15.09.15``; ``market_attribute.mat``
    (or .json/.csv) beside the splits or in ``root/Market-1501_Attribute`` adds
    ``meta["attributes"]``. ``seed`` is unused: the split is fixed by the folders."""
    return _read(root, _MARKET)


def read_dukemtmc(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """DukeMTMC-reID at ``root`` or ``root/DukeMTMC-reID``; ``duke_attribute.mat`` (or
    .json/.csv) adds ``meta["attributes"]``. ``seed`` is unused (fixed split)."""
    return _read(root, _DUKE)


def read_cuhk03_np_detected(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """CUHK03-NP detected boxes: ``root/detected``, ``root/cuhk03-np/detected`` or ``root``
    itself. ``seed`` is unused (fixed split)."""
    return _read(root, _CUHK03_DETECTED)


def read_cuhk03_np_labeled(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """CUHK03-NP hand-labelled boxes, laid out like the detected ones. ``seed`` is unused."""
    return _read(root, _CUHK03_LABELED)
