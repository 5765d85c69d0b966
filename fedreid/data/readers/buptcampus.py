"""BUPTCampus: video visible-infrared person re-identification with pixel-aligned RGB/IR
tracklet pairs (Du et al., TIFS 2023).

Layout, from the data set README (``dyhBUPT/BUPTCampus``) and its loader (``dataloader.py``)::

    <root>/DATA/<pid>/{RGB,IR,FakeIR}/<camera>/<pid>_<RGB|IR>_<camera>_<tracklet>_<frame>.jpg
    <root>/data_paths.json   {"<pid>": {"RGB"|"IR": {"<camera>": {"<tracklet>": [path, ...]}}}}
    <root>/train.txt, train_auxiliary.txt, query.txt, gallery.txt
        one tracklet per line: "<pid> <RGB|IR|RGB/IR> <camera> <tracklet>"

Paths in ``data_paths.json`` are relative to ``DATA/`` and list a tracklet's frames in order; a
line with modality ``RGB/IR`` stands for the aligned pair (both tracklets). Cameras are ``LS3,
G25, CQ1, W4, TSG1, TSG2`` -> camids 0..5 (the order a public VVI-ReID loader uses). 3,080
identities in all: train 1,074 (7,148 tracklets), auxiliary 930 single-camera identities,
test 1,076 with a query of 1,076 tracklets (536 infrared, 540 visible) and a gallery of 4,844
(2,422 pairs) (counts printed by that loader). ``FakeIR/`` (the PairGAN images) is not read,
nor ``train_auxiliary.txt``: the baseline protocol trains on ``train.txt``. Not run on the real
data here (no download is possible); ``fedreid data check`` prints what a copy holds.

The published test script evaluates query tracklets of one modality against gallery
tracklets of the other without removing same-camera gallery items; ``fedreid.eval`` applies
the Market rule (same identity and camera = junk), which gives the same numbers when, as in
this split, an identity's query and gallery tracklets come from different cameras (assumed,
not checked here).

``Sample.tracklet`` numbers tracklets in reading order (an aligned pair gives two ids),
``Sample.frame`` is the number ending the frame name, ``meta["modality"]`` "infrared" or
"visible".
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from fedreid.data.readers.common import Tally, absolute, bad_name, finish
from fedreid.data.readers.listing import FolderIndex
from fedreid.data.records import DataError, ReidSplits, Sample

CAMERAS = ("LS3", "G25", "CQ1", "W4", "TSG1", "TSG2")
_MODALITY = {"RGB": "visible", "IR": "infrared"}
_LINE_MODALITIES = {"RGB": ("RGB",), "IR": ("IR",), "RGB/IR": ("IR", "RGB")}
_SPLITS = (("train", "train.txt"), ("query", "query.txt"), ("gallery", "gallery.txt"))
_NESTS = ("", "BUPTCampus")
_LINE_RULE = "'<pid> <RGB|IR|RGB/IR> <camera> <tracklet>'"
_FRAME = re.compile(r"_(\d+)\.[^./]+$")
_FRAME_RULE = "frame names end in '_<frame number>.<ext>', e.g. 1_IR_CQ1_1_8535.jpg"
_META = {key: {"modality": value} for key, value in _MODALITY.items()}


def _find(top: str) -> str:
    required = ["DATA", "data_paths.json"] + [name for _, name in _SPLITS]
    for nest in _NESTS:
        base = os.path.join(top, nest) if nest else top
        present = [name for name in required if os.path.exists(os.path.join(base, name))]
        if len(present) == len(required):
            return base
        if present:
            missing = next(name for name in required if name not in present)
            raise DataError(
                f"{os.path.join(base, missing)}: missing for BUPTCampus; rule: the data set folder "
                f"holds {', '.join(required)}; fix: restore it from the archive"
            )
    raise DataError(
        f"{os.path.join(top, 'data_paths.json')}: missing for BUPTCampus (looked in {top} and "
        f"{os.path.join(top, 'BUPTCampus')}); rule: the folder holds DATA/, data_paths.json, "
        "train.txt, query.txt, gallery.txt; fix: point the root at the unpacked data set"
    )


def _load_paths(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            paths = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path}: unreadable data_paths.json ({err}); rule: "
            '{"<pid>": {"RGB"|"IR": {"<camera>": {"<tracklet>": [path, ...]}}}}; '
            "fix: restore it from the archive"
        ) from err
    if not isinstance(paths, dict):
        raise DataError(
            f"{path}: the top level is not an object; rule: one entry per pid; "
            "fix: restore it from the archive"
        )
    return paths


def _lookup(tree: Any, keys: tuple[str, ...]) -> Any:
    """``tree[k0][k1]...``, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


class _Reader:
    """Resolves list lines to frames; numbers tracklets across the whole data set."""

    def __init__(self, base: str, paths: dict[str, Any], tally: Tally) -> None:
        self.data = os.path.join(base, "DATA")
        self.paths_file = os.path.join(base, "data_paths.json")
        self.paths = paths
        self.tally = tally
        self.frames = FolderIndex()
        self.next_tracklet = 0

    def split(self, list_path: str) -> list[Sample]:
        samples: list[Sample] = []
        with open(list_path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    samples += self._line(f"{list_path} line {number}", line.split())
        return samples

    def _line(self, where: str, parts: list[str]) -> list[Sample]:
        if len(parts) != 4 or parts[1] not in _LINE_MODALITIES or not parts[0].isdigit():
            raise DataError(
                f"{where}: unparsable list line {' '.join(parts)!r}; rule: {_LINE_RULE}; "
                "fix: correct the line"
            )
        pid_text, modalities, camera, tracklet = parts
        if camera not in CAMERAS:
            raise DataError(
                f"{where}: camera {camera!r} is not a BUPTCampus camera; rule: cameras are "
                f"{', '.join(CAMERAS)}; fix: correct the line"
            )
        out: list[Sample] = []
        for modality in _LINE_MODALITIES[modalities]:
            frames = _lookup(self.paths, (pid_text, modality, camera, tracklet))
            if not isinstance(frames, list) or not frames:
                raise DataError(
                    f"{where}: no frames for pid {pid_text}, {modality}, camera {camera}, tracklet "
                    f"{tracklet} in {self.paths_file}; rule: every listed tracklet has a non-empty "
                    "frame list there; fix: restore data_paths.json from the archive"
                )
            for rel in frames:
                out.append(self._frame(where, rel, int(pid_text), camera, modality))
            self.next_tracklet += 1
        return out

    def _frame(self, where: str, rel: str, pid: int, camera: str, modality: str) -> Sample:
        path = os.path.join(self.data, rel)
        folder, name = os.path.split(path)
        match = _FRAME.search(name)
        if match is None:
            raise bad_name(path, _FRAME_RULE)
        if not self.frames.exists(folder, name):
            raise DataError(
                f"{path}: listed frame does not exist (tracklet of {where}, via "
                f"{self.paths_file}); rule: every listed frame must be present under DATA/; "
                "fix: unpack the archive completely"
            )
        return Sample(
            path,
            pid,
            CAMERAS.index(camera),
            self.next_tracklet,
            int(match.group(1)),
            _META[modality],
        )


def read_buptcampus(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """BUPTCampus at ``root`` or ``root/BUPTCampus``. ``seed`` is unused (fixed split)."""
    base = _find(absolute(root))
    tally = Tally()
    reader = _Reader(base, _load_paths(os.path.join(base, "data_paths.json")), tally)
    splits = {split: reader.split(os.path.join(base, name)) for split, name in _SPLITS}
    return finish(
        "buptcampus",
        base,
        splits["train"],
        splits["query"],
        splits["gallery"],
        len(CAMERAS),
        tally,
        video=True,
    )


__all__ = ["CAMERAS", "read_buptcampus"]
