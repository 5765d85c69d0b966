"""Every problem of a site's data folder in one pass, for ``fedreid site check``.

The readers and the image check stop at the first broken rule — right for training, tiring
for an operator fixing a folder one file per run. Here the same readers run on a *shadow* of
the folder (real folders, files linked back to the originals): each problem that names a
file or folder is recorded and that entry removed from the shadow, and the read starts over,
until the folder reads cleanly; then every image is decoded once and each undecodable file
and duplicate is recorded. The rules stay the readers' own; nothing in the data is changed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fedreid.data.images import inspect_image, validate_images
from fedreid.data.readers import load_dataset
from fedreid.data.records import DataError, Sample

SPLITS = ("train", "query", "gallery")
MAX_LAYOUT_PASSES = 100  # reads of the folder, one per layout problem


def _shadow(root: Path, shadow: Path) -> None:
    """``shadow`` mirrors ``root``: the same folders, every file a link to the original."""
    for folder, _dirs, files in os.walk(root, followlinks=True):
        target = shadow / Path(folder).relative_to(root)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.symlink(os.path.join(folder, name), target / name)


def _named_path(message: str, shadow: Path) -> Path | None:
    """The file or folder a reader's message starts with ("<path>: <problem>; rule; fix"),
    if it lies inside the shadow (and is not the shadow itself)."""
    head = message.split(": ", 1)[0]
    path = Path(head)
    inside = path.is_relative_to(shadow) and path != shadow
    return path if inside and (path.is_symlink() or path.exists()) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _image_problems(samples: list[Sample], split: str, video: bool) -> list[str]:
    """Undecodable files, then duplicates (the image check's own rule, on each group of files
    with the same content, so only those few are decoded twice)."""
    problems: list[str] = []
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        try:
            digest = inspect_image(sample.path)[2]
        except DataError as exc:
            problems.append(str(exc))
            continue
        groups.setdefault(digest, []).append(sample)
    for group in (g for g in groups.values() if len(g) > 1):
        while len(group) > 1:
            try:
                validate_images(group, split, video=video)
                break
            except DataError as exc:
                problems.append(str(exc))
                named = str(exc).split(": ", 1)[0]
                group = [s for s in group if s.path != named]
    return problems


def find_problems(root: str | os.PathLike, dataset: str, *, seed: int = 0) -> list[str]:
    """Every problem found in the site folder ``root`` read as ``dataset``, in the readers'
    words (paths name the real files). Empty: the folder passes the data check."""
    root = Path(root).resolve()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fedreid-site-check-") as tmp:
        shadow = Path(tmp) / root.name
        _shadow(root, shadow)
        splits = None
        for _ in range(MAX_LAYOUT_PASSES):
            try:
                splits = load_dataset(shadow, dataset, seed=seed)
                break
            except DataError as exc:
                problems.append(str(exc))
                named = _named_path(str(exc), shadow)
                if named is None:
                    break  # the folder as a whole is wrong: nothing more can be read
                _remove(named)
        else:
            problems.append(f"{root}: the check stopped after {MAX_LAYOUT_PASSES} layout problems; fix "
                            "these and run it again")
        if splits is not None:
            for split in SPLITS:
                problems += _image_problems(getattr(splits, split), split, splits.video)
        return [p.replace(str(shadow), str(root)) for p in problems]
