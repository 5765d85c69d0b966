"""AG-ReID (v1) and AG-ReID.v2: aerial-ground person re-identification, one image per box.

File names (both versions, from the data sets' READMEs): ``P<pid>T<MMDD><0|1>A<level>C<cam>F<frame>.jpg``,
e.g. ``P0006T02140A0C0F1831.jpg``: person 0006, recorded on 14 February in the morning (``T``
ends in 0 for AM, 1 for PM), UAV altitude level 0 (low; 1 medium, 2 high; the UAV flew at about
15-45 m), camera 0, frame 1831. Cameras are platforms: ``C0`` UAV, ``C2`` wearable glasses
(v2 only), ``C3`` CCTV.

Identity: the published loaders and the competition README ("Person ID: P0001T03220A1") take
the identity to be the whole ``P...T...A...`` prefix, so one person recorded in two sessions is
two identities. Here too: ``pid = int(P digits + T digits + A digits)`` (``P0006T02140A0`` ->
6021400). Camera ids are dense: v1 ``C0 -> 0, C3 -> 1``; v2 ``C0 -> 0, C2 -> 1, C3 -> 2``.

``Sample.meta["geometry"]`` = ``{"altitude", "altitude_level", "distance", "pitch", "platform"}``:
UAV images carry the altitude *level* from the name (metres are not published, so ``altitude``
is None); ground images carry the approximate mount height from the AG-ReID.v2 camera table
(CCTV about 3 m, wearable about 1.5 m) as ``altitude`` and no level (the ``A`` digit of a ground
image is the session's UAV level, already part of the pid). Distance and pitch are not
published (None). The identity-level attribute file (``qut_attribute_v4_88_attributes.mat``
for v1, ``qut_attribute_v8.mat`` for v2: a ``qut_attribute`` struct with ``train``/``test``
parts keyed by ``image_index`` = the pid above; or the .json/.csv forms of
``fedreid.data.readers.attributes``) adds ``meta["attributes"]`` when present.

v1 layout (the official toolkit README, ``huynguyen792/AG-ReID``): flat folders
``bounding_box_train/``, ``query_all_c0/``, ``query_all_c3/``, ``bounding_box_test_all_c0/``,
``bounding_box_test_all_c3/``. Query = both query folders, gallery = both test folders, so the
published protocols are sub-problems of one site: aerial->ground = ``query_all_c0`` against
``bounding_box_test_all_c3`` (1,701 queries, 3,331 gallery images, 189 identities), ground->
aerial = ``query_all_c3`` against ``bounding_box_test_all_c0`` (962 / 7,204); 199 training
identities. A file's camera must match its folder's ``_c0``/``_c3``.

v2 layout (the official loader, ``huynguyen792/AG-ReID.v2``): ``train_all/``, ``query/``,
``gallery/``, each holding images directly or in one level of sub-folders (the loader globs
recursively; the sub-folder names are not read). 1,615 identities (807 train / 808 test),
100,502 images. Its protocols A->C, C->A, A->W, W->A take one platform of ``query/`` against
another platform of ``gallery/`` (public loaders ``AGReIDv2_AC`` etc.), which is how
``fedreid.eval.cross_platform`` evaluates them. Image counts per folder are not published.

Neither reader has been run on the real data here (no download is possible); the counts above
are the READMEs' and ``fedreid data check`` prints what a copy holds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from fedreid.data.images import IMAGE_EXTS
from fedreid.data.readers.attributes import find_attribute_table
from fedreid.data.readers.common import (
    Tally,
    absolute,
    bad_name,
    find_base,
    finish,
    list_images,
)
from fedreid.data.records import DataError, ReidSplits, Sample

_NAME = re.compile(r"^P(\d+)T(\d+)A(\d+)C(\d+)F(\d+)\.")
_NAME_RULE = (
    "'P<pid>T<MMDD><0|1>A<altitude level>C<camera>F<frame>.jpg' "
    "(regex ^P(\\d+)T(\\d+)A(\\d+)C(\\d+)F(\\d+)\\.)"
)
ALTITUDE_LEVELS = (0, 1, 2)
GROUND_HEIGHT_M = {2: 1.5, 3: 3.0}  # AG-ReID.v2 camera table: wearable ~1.5 m, CCTV ~3 m
_PLATFORM = {0: "aerial", 2: "wearable", 3: "ground"}


@dataclass(frozen=True)
class _Version:
    name: str
    label: str
    cameras: tuple[int, ...]  # file-name camera numbers; the position is the camid
    splits: tuple[tuple[str, tuple[str, ...]], ...]  # split -> folders
    nests: tuple[str, ...]
    attribute_stem: str
    nested_images: bool  # images may sit one sub-folder deep


_V1 = _Version(
    name="agreid",
    label="AG-ReID",
    cameras=(0, 3),
    splits=(
        ("train", ("bounding_box_train",)),
        ("query", ("query_all_c0", "query_all_c3")),
        ("gallery", ("bounding_box_test_all_c0", "bounding_box_test_all_c3")),
    ),
    nests=("", "AG-ReID", "AG_ReID_v1"),
    attribute_stem="qut_attribute_v4_88_attributes",
    nested_images=False,
)
_V2 = _Version(
    name="agreid-v2",
    label="AG-ReID.v2",
    cameras=(0, 2, 3),
    splits=(("train", ("train_all",)), ("query", ("query",)), ("gallery", ("gallery",))),
    nests=("", "AG-ReID.v2", "AGReIDv2", "AG_ReID_v2"),
    attribute_stem="qut_attribute_v8",
    nested_images=True,
)


def camera_geometry(camera: int, level: int) -> dict[str, Any]:
    """The ``meta["geometry"]`` of an image from file-name camera ``camera`` (0, 2 or 3)."""
    if camera == 0:
        return {
            "altitude": None,
            "altitude_level": level,
            "distance": None,
            "pitch": None,
            "platform": "aerial",
        }
    return {
        "altitude": GROUND_HEIGHT_M[camera],
        "altitude_level": None,
        "distance": None,
        "pitch": None,
        "platform": _PLATFORM[camera],
    }


def _folder_camera(folder: str) -> int | None:
    """v1 folders named ``..._c0`` / ``..._c3`` hold one camera only."""
    match = re.search(r"_c(\d+)$", folder)
    return int(match.group(1)) if match else None


class _Parser:
    """Turns file names into samples; shares one geometry dict per (camera, level)."""

    def __init__(self, version: _Version, attributes: dict[int, dict[str, Any]] | None) -> None:
        self.version = version
        self.attributes = attributes
        self._geometry: dict[tuple[int, int], dict[str, Any]] = {}

    def sample(self, name: str, path: str, folder: str) -> Sample:
        version = self.version
        match = _NAME.match(name)
        if match is None:
            raise bad_name(path, _NAME_RULE)
        person, session, level_text, camera_text, _ = match.groups()
        level, camera = int(level_text), int(camera_text)
        if camera not in version.cameras:
            allowed = ", ".join(f"C{c}" for c in version.cameras)
            raise DataError(
                f"{path}: camera C{camera} is not one of the {version.label} cameras; rule: "
                f"cameras are {allowed} (C0 UAV, C2 wearable, C3 CCTV); fix: remove the file or "
                "read it with the right data set name (agreid or agreid-v2)"
            )
        expected = _folder_camera(folder)
        if expected is not None and camera != expected:
            raise DataError(
                f"{path}: camera C{camera} in folder {folder}/; rule: {folder}/ holds C{expected} "
                f"images only; fix: move the file to the folder of camera C{camera}"
            )
        if level not in ALTITUDE_LEVELS:
            raise DataError(
                f"{path}: altitude level A{level} out of range; rule: A0 (low), A1 (medium) or "
                "A2 (high); fix: rename or remove the file"
            )
        pid = int(person + session + level_text)
        geometry = self._geometry.get((camera, level))
        if geometry is None:
            geometry = self._geometry[camera, level] = camera_geometry(camera, level)
        meta: dict[str, Any] = {"geometry": geometry}
        if self.attributes is not None and pid in self.attributes:
            meta["attributes"] = self.attributes[pid]
        return Sample(path, pid, version.cameras.index(camera), meta=meta)


def _images(folder_path: str, folder: str, nested: bool, tally: Tally) -> list[tuple[str, str]]:
    """``(name, path)`` of a split folder's images, and with ``nested`` of its sub-folders' too
    (AG-ReID.v2 groups images in sub-folders); anything else is counted, not dropped silently."""
    if not nested:
        return list_images(folder_path, tally, folder)
    found = []
    with os.scandir(folder_path) as entries:
        for entry in entries:
            if entry.is_dir():
                found += list_images(entry.path, tally, folder)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                found.append((entry.name, entry.path))
            else:
                tally.add(f"non-image entries skipped in {folder}", entry.path)
    found.sort(key=lambda item: item[1])
    return found


def _read(root: str | os.PathLike, version: _Version) -> ReidSplits:
    top = absolute(root)
    required = [folder for _, folders in version.splits for folder in folders]
    base = find_base(top, version.label, required, version.nests)
    attributes = find_attribute_table((base, top), version.attribute_stem)
    parser = _Parser(version, attributes)
    tally = Tally()
    splits: dict[str, list[Sample]] = {}
    for split, folders in version.splits:
        samples = []
        for folder in folders:
            for name, path in _images(
                os.path.join(base, folder), folder, version.nested_images, tally
            ):
                samples.append(parser.sample(name, path, folder))
        splits[split] = samples
    return finish(
        version.name,
        base,
        splits["train"],
        splits["query"],
        splits["gallery"],
        len(version.cameras),
        tally,
    )


def read_agreid(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """AG-ReID (v1) at ``root`` or ``root/AG-ReID``. ``seed`` is unused (fixed split)."""
    return _read(root, _V1)


def read_agreid_v2(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """AG-ReID.v2 at ``root`` or ``root/AG-ReID.v2`` (``AGReIDv2``). ``seed`` is unused."""
    return _read(root, _V2)


__all__ = ["ALTITUDE_LEVELS", "GROUND_HEIGHT_M", "camera_geometry", "read_agreid", "read_agreid_v2"]
