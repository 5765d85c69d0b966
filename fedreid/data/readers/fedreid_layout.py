"""The FedReID preprocessed layout ``<site>/pytorch/{train_all,query,gallery}/<pid>/<image>``:
what FedReID's preprocessing writes for every benchmark set, what our synthetic generator
writes, and what a federated site reads.

File names carry the camera (the folder carries the pid, and the two must agree):

- Market style ``<pid>_c<camera>...`` (regex ``^(-?\\d+)_c(\\d+)``), camera 1-based;
- small-set style ``cam_<camera>_<pid>_<index>...`` (regex ``^cam_(\\d+)_(-?\\d+)_(\\d+)``),
  camera 0-based (FedReID's small-set preprocessing);
- video ``cam_<camera>_<pid>_t<tracklet>_f<frame>.<ext>``, camera 0-based;
- MSMT17 style ``<pid>_<index>_<camera>_<date><morning|noon|afternoon>_...``, camera 1-based.

An optional ``<site>/meta.json`` ``{"video": bool, "num_cameras": int, "images": {relpath:
{...}}}`` (every key optional) gives the video flag, the camera count (otherwise the largest
camera id + 1) and per-image metadata. ``relpath`` is the POSIX path below ``pytorch/``
(``train_all/0001/cam_0_0001_000.jpg``, as the synthetic generator writes it); a leading
``pytorch/`` is accepted. ``Sample.meta`` is the image's entry (shared, not copied: treat it as
read-only), plus, where meta.json has them as the generator writes them, ``"identity"`` =
``identities[str(pid)]`` (attributes, role), ``"camera"`` = ``cameras[camid]`` (geometry,
conditions) and ``"attributes"`` = ``{name: 0 | 1}`` over ``attribute_names``, 1 for the
names listed in ``identities[str(pid)]["attributes"][outfit]``. pid -1 (Market junk) is
dropped and counted; ``ReidSplits.name`` is the site folder's name.

Per-image fields with one meaning everywhere, checked when present (a wrong one is a
``DataError`` naming the file): ``geometry`` ``{"altitude": m, "distance": m, "pitch": deg,
"platform": "aerial" | "ground" | "wearable"}`` (numbers, or null where unknown; more keys
such as ``altitude_level`` may follow), ``modality`` ``"visible" | "infrared"``,
``outfit``, ``clothes_id`` and ``session`` (ints >= 0), and ``tracklet``/``frame`` (ints >= 0),
which become ``Sample.tracklet``/``frame`` when the file name carries none.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from fedreid.data.images import IMAGE_EXTS
from fedreid.data.readers.common import Tally, absolute, bad_name, find_base, finish
from fedreid.data.records import DataError, ReidSplits, Sample

_SPLITS = (("train", "train_all"), ("query", "query"), ("gallery", "gallery"))
_VIDEO = re.compile(r"^cam_(\d+)_(-?\d+)_t(\d+)_f(\d+)\.")
_SMALL = re.compile(r"^cam_(\d+)_(-?\d+)_(\d+)")
_MARKET = re.compile(r"^(-?\d+)_c(\d+)")
_MSMT = re.compile(r"^(-?\d+)_\d+_(\d+)_\d+(?:morning|noon|afternoon)")
_NAME_RULE = (
    "'<pid>_c<camera>...' (1-based camera), 'cam_<camera>_<pid>_<index>...' (0-based), "
    "'cam_<camera>_<pid>_t<tracklet>_f<frame>.<ext>' (0-based) or MSMT17 "
    "'<pid>_<index>_<camera>_<date><time>_...' (1-based)"
)
_META_RULE = (
    '{"video": bool, "num_cameras": int >= 1, "images": {relpath: {...}}}, every key optional'
)
_FIELD_RULE = (
    'geometry {"altitude": m, "distance": m, "pitch": deg (numbers or null), "platform": '
    '"aerial"|"ground"|"wearable"}, modality "visible"|"infrared", '
    "outfit/clothes_id/session/tracklet/frame ints >= 0"
)
_PLATFORMS = ("aerial", "ground", "wearable")
_MODALITIES = ("visible", "infrared")
JUNK_PID = -1


def _parse(name: str) -> tuple[int, int, int, int] | None:
    """``(pid, camid, tracklet, frame)`` from a file name, or None."""
    match = _VIDEO.match(name)
    if match:
        return int(match.group(2)), int(match.group(1)), int(match.group(3)), int(match.group(4))
    match = _SMALL.match(name)
    if match:
        return int(match.group(2)), int(match.group(1)), -1, -1
    match = _MARKET.match(name) or _MSMT.match(name)
    if match:
        return int(match.group(1)), int(match.group(2)) - 1, -1, -1
    return None


@dataclass(frozen=True)
class _SiteMeta:
    video: bool | None = None
    num_cameras: int | None = None
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    cameras: list[dict[str, Any]] = field(default_factory=list)
    attribute_names: tuple[str, ...] = ()


def _read_meta(path: str) -> _SiteMeta:
    """meta.json checked for shape only (values inside an entry are the writer's business).

    FedReID's own small-set folders keep an open-reid ``meta.json`` beside ``pytorch/``
    (``identities`` is a list there): extras of another shape are ignored, not errors.
    """
    if not os.path.isfile(path):
        return _SiteMeta()
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path}: unreadable meta.json ({err}); rule: {_META_RULE}; fix: rewrite or delete it"
        ) from err
    if not isinstance(meta, dict):
        raise DataError(
            f"{path}: the top level is not an object; rule: {_META_RULE}; fix: rewrite or delete it"
        )
    video, num_cameras, images = meta.get("video"), meta.get("num_cameras"), meta.get("images", {})
    problem = ""
    if video is not None and not isinstance(video, bool):
        problem = f"'video' is {video!r}, not true/false"
    elif num_cameras is not None and (type(num_cameras) is not int or num_cameras < 1):
        problem = f"'num_cameras' is {num_cameras!r}, not a positive integer"
    elif not isinstance(images, dict):
        problem = "'images' is not an object"
    else:
        bad = next((key for key, value in images.items() if not isinstance(value, dict)), None)
        if bad is not None:
            problem = f"images[{bad!r}] is not an object"
    if problem:
        raise DataError(f"{path}: {problem}; rule: {_META_RULE}; fix: rewrite or delete it")
    identities, cameras = meta.get("identities"), meta.get("cameras")
    names = meta.get("attribute_names")
    return _SiteMeta(
        video=video,
        num_cameras=num_cameras,
        images={key.removeprefix("pytorch/"): value for key, value in images.items()},
        identities=identities if isinstance(identities, dict) else {},
        cameras=cameras if isinstance(cameras, list) else [],
        attribute_names=tuple(names) if isinstance(names, list) else (),
    )


def _field_problem(image: dict[str, Any]) -> str:
    """What is wrong with the image entry's well-known fields ("" when nothing)."""
    geometry = image.get("geometry")
    if geometry is not None:
        if not isinstance(geometry, dict) or geometry.get("platform") not in _PLATFORMS:
            return f"geometry {geometry!r} needs a platform in {_PLATFORMS}"
        for key in ("altitude", "distance", "pitch"):
            value = geometry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return f"geometry[{key!r}] is {value!r}, not a number or null"
    modality = image.get("modality")
    if modality is not None and modality not in _MODALITIES:
        return f"modality is {modality!r}, not one of {_MODALITIES}"
    for key in ("outfit", "clothes_id", "session", "tracklet", "frame"):
        value = image.get(key)
        if value is not None and (type(value) is not int or value < 0):
            return f"{key} is {value!r}, not an int >= 0"
    return ""


def _sample_meta(
    image: dict | None, identity: dict | None, camera: dict | None, attributes: dict | None
) -> dict | None:
    """The image's own entry, plus its identity's, camera's and attributes when known."""
    if identity is None and camera is None and attributes is None:
        return image
    merged = dict(image) if image else {}
    if identity is not None:
        merged["identity"] = identity
    if camera is not None:
        merged["camera"] = camera
    if attributes is not None:
        merged["attributes"] = attributes
    return merged


class _SiteReader:
    """Walks one site's split folders; keeps what the whole site needs (meta, tallies)."""

    def __init__(self, base: str, meta: _SiteMeta) -> None:
        self.base = base
        self.meta = meta
        self.tally = Tally()
        self.used: set[str] = set()
        self.highest_camid = -1
        self.any_tracklet = False
        self._attributes: dict[tuple[int, int], dict[str, int] | None] = {}

    def attributes(self, pid: int, identity: dict | None, image: dict | None) -> dict | None:
        """``{name: 0 | 1}`` for the pid's outfit in this image, shared by its images."""
        outfit = image.get("outfit", 0) if image else 0
        key = (pid, outfit)
        if key not in self._attributes:
            names = self.meta.attribute_names
            lists = identity.get("attributes") if identity else None
            found = None
            if names and isinstance(lists, list) and outfit < len(lists):
                have = set(lists[outfit])
                found = {name: int(name in have) for name in names}
            self._attributes[key] = found
        return self._attributes[key]

    def split(self, folder: str) -> list[Sample]:
        pid_dirs = []
        with os.scandir(os.path.join(self.base, folder)) as entries:
            for entry in entries:
                if entry.is_dir():
                    pid_dirs.append((entry.name, entry.path))
                else:
                    self.tally.add(
                        f"entries that are not identity folders skipped in {folder}/", entry.path
                    )
        pid_dirs.sort()
        samples: list[Sample] = []
        for dir_name, dir_path in pid_dirs:
            self._identity_folder(folder, dir_name, dir_path, samples)
        return samples

    def _identity_folder(
        self, folder: str, dir_name: str, dir_path: str, samples: list[Sample]
    ) -> None:
        try:
            folder_pid = int(dir_name)
        except ValueError:
            raise DataError(
                f"{dir_path}: unparsable identity folder name; rule: folders under {folder}/ are named "
                "by the integer pid; fix: rename or remove the folder"
            ) from None
        meta = self.meta
        identity = meta.identities.get(str(folder_pid))
        with os.scandir(dir_path) as entries:
            names = sorted((entry.name, entry.path) for entry in entries)
        for name, path in names:
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
                self.tally.add(f"non-image entries skipped in {folder}/", path)
                continue
            parsed = _parse(name)
            if parsed is None:
                raise bad_name(path, _NAME_RULE)
            pid, camid, tracklet, frame = parsed
            if pid != folder_pid:
                raise DataError(
                    f"{path}: file-name pid {pid} differs from its folder's pid {folder_pid}; rule: "
                    "the identity folder and the file name must agree; fix: move or rename the file"
                )
            if pid == JUNK_PID:
                self.tally.add(f"junk images (pid -1) dropped from {folder}/", path)
                continue
            if camid < 0 or (meta.num_cameras is not None and camid >= meta.num_cameras):
                allowed = (
                    f"0..{meta.num_cameras - 1}" if meta.num_cameras is not None else "0 or more"
                )
                raise DataError(
                    f"{path}: camera id {camid} (0-based) out of range for this site; rule: camera ids "
                    f"are {allowed} (Market-style names count cameras from 1, cam_ names from 0; "
                    "meta.json 'num_cameras' sets the count); fix: rename the file or correct meta.json"
                )
            self.highest_camid = max(self.highest_camid, camid)
            self.any_tracklet = self.any_tracklet or tracklet >= 0
            image = None
            if meta.images:
                key = f"{folder}/{dir_name}/{name}"
                image = meta.images.get(key)
                if image is not None:
                    self.used.add(key)
                    problem = _field_problem(image)
                    if problem:
                        raise DataError(
                            f"{path}: meta.json images[{key!r}]: {problem}; rule: {_FIELD_RULE}; "
                            "fix: correct that entry or regenerate meta.json"
                        )
                    if tracklet < 0 and "tracklet" in image:
                        tracklet, frame = image["tracklet"], image.get("frame", 0)
                        self.any_tracklet = True
            camera = meta.cameras[camid] if camid < len(meta.cameras) else None
            attributes = self.attributes(pid, identity, image)
            extra = _sample_meta(image, identity, camera, attributes)
            if extra is None:
                samples.append(Sample(path, pid, camid, tracklet, frame))
            else:
                samples.append(Sample(path, pid, camid, tracklet, frame, extra))

    def unused_meta(self) -> None:
        """Count meta.json image entries that name no file (a stale or mistyped meta.json)."""
        images = self.meta.images
        if len(self.used) < len(images):
            example = next(key for key in images if key not in self.used)
            self.tally.add(
                "meta.json image entries that match no image", example, len(images) - len(self.used)
            )


def read_fedreid(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """A FedReID-layout site at ``root`` (holding ``pytorch/``) or its ``pytorch/`` folder.
    ``seed`` is unused: the split is fixed by the folders."""
    top = absolute(root)
    base = find_base(top, "the FedReID layout", [folder for _, folder in _SPLITS], ("pytorch", ""))
    site = os.path.dirname(base) if os.path.basename(base) == "pytorch" else base
    meta = _read_meta(os.path.join(site, "meta.json"))
    reader = _SiteReader(base, meta)
    splits = {split: reader.split(folder) for split, folder in _SPLITS}
    reader.unused_meta()
    num_cameras = meta.num_cameras if meta.num_cameras is not None else reader.highest_camid + 1
    return finish(
        os.path.basename(site),
        base,
        splits["train"],
        splits["query"],
        splits["gallery"],
        num_cameras,
        reader.tally,
        video=meta.video if meta.video is not None else reader.any_tracklet,
    )
