"""Pieces every reader shares: finding the data root, listing images, counted warnings, and the
final checks (empty splits, query identities without a gallery match)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fedreid.data.images import IMAGE_EXTS
from fedreid.data.records import DataError, ReidSplits, Sample


class Tally:
    """Counts repeated warning events, so 2,798 junk files give one line with one example."""

    def __init__(self) -> None:
        self._events: dict[str, list] = {}

    def add(self, what: str, example: str, count: int = 1) -> None:
        entry = self._events.setdefault(what, [0, example])
        entry[0] += count

    def lines(self) -> list[str]:
        return [
            f"{count} {what} (e.g. {example})" for what, (count, example) in self._events.items()
        ]


def absolute(root: str | os.PathLike) -> str:
    """Absolute root so every ``Sample.path`` opens from any working directory."""
    path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(path):
        raise DataError(
            f"{path}: data root does not exist or is not a folder; fix: pass the folder that holds the data set"
        )
    return path


def find_base(root: str, label: str, required: Sequence[str], nests: Sequence[str]) -> str:
    """Return the first of ``root/<nest>`` holding the ``required`` folders.

    A candidate holding some but not all of them is the one the user meant: name what it lacks.
    """
    candidates = [os.path.join(root, nest) if nest else root for nest in nests]
    for base in candidates:
        present = [name for name in required if os.path.isdir(os.path.join(base, name))]
        if len(present) == len(required):
            return base
        if present:
            missing = [name for name in required if name not in present]
            raise DataError(
                f"{os.path.join(base, missing[0])}: missing split folder for {label}; "
                f"rule: {label} needs {', '.join(n + '/' for n in required)} under one folder; "
                "fix: restore the folder or point the root at the right copy"
            )
    looked = ", ".join(candidates)
    raise DataError(
        f"{os.path.join(root, required[0])}: missing split folder for {label} (looked in {looked}); "
        f"rule: {label} needs {', '.join(n + '/' for n in required)}; fix: point the root at the unpacked data set"
    )


def list_images(folder: str, tally: Tally, where: str) -> list[tuple[str, str]]:
    """Sorted ``(name, path)`` of the image files directly in ``folder``; other entries are
    counted (Market-1501 ships ``Thumbs.db`` files) rather than dropped silently."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS and entry.is_file():
                found.append((entry.name, entry.path))
            else:
                tally.add(f"non-image entries skipped in {where}", entry.path)
    found.sort()
    return found


def list_dirs(folder: str) -> list[tuple[str, str]]:
    """Sorted ``(name, path)`` of the sub-folders of ``folder``."""
    with os.scandir(folder) as entries:
        found = [(entry.name, entry.path) for entry in entries if entry.is_dir()]
    found.sort()
    return found


def bad_name(path: str, rule: str) -> DataError:
    return DataError(f"{path}: unparsable file name; rule: {rule}; fix: rename or remove the file")


def bad_camera(path: str, camera: int, label: str, lowest: int, highest: int) -> DataError:
    return DataError(
        f"{path}: camera {camera} out of range for {label}; rule: cameras are {lowest}..{highest} "
        "in this data set; fix: remove the file or read it with the right data set name"
    )


def finish(
    name: str,
    root: str,
    train: list[Sample],
    query: list[Sample],
    gallery: list[Sample],
    num_cameras: int,
    tally: Tally,
    *,
    video: bool = False,
) -> ReidSplits:
    """Reject empty splits, count query identities with no usable gallery match, build the record."""
    for split, samples in (("train", train), ("query", query), ("gallery", gallery)):
        if not samples:
            raise DataError(
                f"{root}: split '{split}' of {name} is empty; rule: train, query and gallery each need "
                "at least one image; fix: check the folder contents (or, for seeded splits, that the "
                "data set has enough identities)"
            )
    gallery_cams: dict[int, set[int]] = {}
    for sample in gallery:
        gallery_cams.setdefault(sample.pid, set()).add(sample.camid)
    unmatched_pids: set[int] = set()
    unmatched_images = 0
    example = ""
    for sample in query:
        cams = gallery_cams.get(sample.pid, ())
        if not any(cam != sample.camid for cam in cams):
            unmatched_pids.add(sample.pid)
            unmatched_images += 1
            example = example or sample.path
    warnings = tally.lines()
    if unmatched_pids:
        warnings.append(
            f"{len(unmatched_pids)} query identities ({unmatched_images} images) have no gallery image "
            f"of the same identity from another camera; evaluation skips them (e.g. {example})"
        )
    return ReidSplits(
        name=name,
        root=root,
        train=train,
        query=query,
        gallery=gallery,
        num_cameras=num_cameras,
        video=video,
        warnings=warnings,
    )
