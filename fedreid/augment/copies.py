"""Camera-style copies of a site's training images on disk: write them, find them, read them.

Layout (beside the site's ``pytorch/`` by default, so the site's own reader never sees it)::

    <site>/augmented/
        meta.json                  {"generator": "fedreid camstyle", "format_version": 1,
                                    "quality_score": "sharpness", "gan": {...}, "cameras": [...],
                                    "images": {relpath: {"pid", "camid", "source",
                                               "source_camid", "kind", "quality"}}}
        pytorch/train_all/<pid>/<pid>_c<target camera + 1>_from_<source stem>.jpg

File names follow the Market rule of the FedReID layout (``<pid>_c<camera>``, 1-based), so
every copy keeps its source's identity and names the camera it was rendered as. ``source``
is the source image's path relative to the site folder: a method finds each copy's real
image by it, and so can swap an image for its copies (iqaga) or show a copy to the teacher
(daprh).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedreid.augment.gan import CamStyleGAN
from fedreid.augment.quality import quality_scores
from fedreid.data.records import DataError, Sample
from fedreid.data.store import ImageStore

FORMAT_VERSION = 1
GENERATOR = "fedreid camstyle"
AUGMENT_COMMAND = "fedreid site augment --data {site}"
WriteProgress = Callable[[int, int], None]


@dataclass
class GeneratedImages:
    """Generated copies matched to a training store: ``images`` uint8 [M, 3, H, W] at the
    store's size, ``source_row`` (the store row each copy was made from), ``camids`` (the
    camera each was rendered as), ``quality`` (the pixel score recorded when written)."""

    images: torch.Tensor
    source_row: np.ndarray
    camids: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return len(self.source_row)

    def subset(self, keep: np.ndarray) -> GeneratedImages:
        rows = torch.from_numpy(np.flatnonzero(keep))
        return GeneratedImages(self.images[rows], self.source_row[keep], self.camids[keep], self.quality[keep])


def write_camstyle_copies(site: Path, samples: Sequence[Sample], images: torch.Tensor, gan: CamStyleGAN,
                          out: Path, *, per_image: int = 0, score: str = "sharpness", seed: int = 0,
                          gan_info: dict | None = None, progress: WriteProgress | None = None) -> int:
    """Render every training image (``samples``, decoded as ``images`` at the GAN's size) as
    ``per_image`` other cameras of the site (0 = all others), write the copies and meta.json
    under ``out``; returns the number written. An earlier set in ``out`` is replaced."""
    if len(samples) != len(images):
        raise ValueError(f"{len(samples)} samples but {len(images)} images: decode every sample once")
    if per_image < 0:
        raise ValueError(f"per_image={per_image} must be >= 0 (0 = every other camera)")
    site = Path(site).resolve()
    rng = np.random.default_rng(seed)
    sources, targets = [], []
    for i, s in enumerate(samples):
        others = [c for c in gan.cameras if c != s.camid]
        if per_image and per_image < len(others):
            others = sorted(rng.choice(others, size=per_image, replace=False).tolist())
        sources += [i] * len(others)
        targets += others
    sources_a, targets_a = np.array(sources, dtype=np.int64), np.array(targets, dtype=np.int64)
    train_dir = out / "pytorch" / "train_all"
    if (out / "meta.json").exists():
        _remove_previous(out)
    entries: dict[str, dict] = {}
    chunk = 256
    for start in range(0, len(sources_a), chunk):
        rows = sources_a[start:start + chunk]
        fakes = gan.translate(images[torch.from_numpy(rows)], targets_a[start:start + chunk])
        scores = quality_scores(fakes, score)
        for fake, row, cam, q in zip(fakes, rows, targets_a[start:start + chunk], scores, strict=True):
            s = samples[int(row)]
            folder = train_dir / f"{s.pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{s.pid:04d}_c{int(cam) + 1}_from_{Path(s.path).stem}.jpg"
            Image.fromarray(fake.permute(1, 2, 0).numpy()).save(folder / name, quality=95)
            entries[f"train_all/{s.pid:04d}/{name}"] = {
                "pid": int(s.pid), "camid": int(cam), "source": _relative(s.path, site),
                "source_camid": int(s.camid), "kind": "camstyle", "quality": float(q),
            }
        if progress is not None:
            progress(min(start + chunk, len(sources_a)), len(sources_a))
    meta = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "quality_score": score,
            "cameras": gan.cameras, "image_size": list(gan.image_size), "gan": gan_info or {},
            "images": entries}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return len(entries)


def _relative(path: str, site: Path) -> str:
    rel = os.path.relpath(os.path.abspath(path), site)
    if rel.startswith(".."):
        raise ValueError(f"{path} is not inside the site folder {site}; pass --data the folder that "
                         "holds the site's images")
    return Path(rel).as_posix()


def _remove_previous(out: Path) -> None:
    """Delete the copies a previous run listed in meta.json (nothing else in ``out``)."""
    meta = _read_meta(out)
    for rel in meta["images"]:
        (out / "pytorch" / rel).unlink(missing_ok=True)
    (out / "meta.json").unlink()


def _read_meta(folder: Path) -> dict:
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); re-run `fedreid site augment` to rewrite it") from exc
    if meta.get("generator") != GENERATOR or meta.get("format_version") != FORMAT_VERSION \
            or not isinstance(meta.get("images"), dict):
        raise DataError(f"{path}: not a meta.json of `fedreid site augment` (format {FORMAT_VERSION}); "
                        "re-run the command into an empty folder")
    return meta


def site_folder(store: ImageStore) -> Path:
    """The site folder a training store was read from: the parent of the ``pytorch/`` folder
    its images lie under (FedReID layout), else the parent of their common folder."""
    paths = [s.path for s in store.samples]
    if any(p.startswith("memory:") for p in paths):
        raise ValueError("this training store was built in memory and has no site folder; give the "
                         "generated-images option as an absolute path")
    common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    for folder in (common, *common.parents):
        if folder.name == "pytorch":
            return folder.parent
    return common.parent


def generated_folder(option: str, store: ImageStore) -> Path:
    """Where a method finds its copies: ``option`` as an absolute path, or relative to the site
    folder; ``{site}`` in it is replaced by the site folder's name."""
    if not option:
        raise ValueError("the generated-images folder option is empty; give a folder (default: augmented)")
    if os.path.isabs(option):
        if "{site}" in option:
            option = option.replace("{site}", site_folder(store).name)
        return Path(option)
    site = site_folder(store)
    return site / option.replace("{site}", site.name)


def load_generated(folder: Path, store: ImageStore, *, option: str) -> GeneratedImages:
    """The copies in ``folder`` whose source is an image of ``store``, decoded at its size.

    ``option`` (the config key that named the folder) goes into the message when the copies
    are missing, with the command that makes them.
    """
    if not (folder / "meta.json").is_file():
        site = folder.parent if folder.name == "augmented" else "<site folder>"
        raise DataError(
            f"{folder}: no camera-style copies (meta.json missing), but {option} asks for them; create "
            f"them with `{AUGMENT_COMMAND.format(site=site)} --out {folder}`, or change {option}"
        )
    meta = _read_meta(folder)
    by_tail = _rows_by_tail(store, meta["images"])
    samples, rows, quality = [], [], []
    unmatched = 0
    for rel, entry in sorted(meta["images"].items()):
        row = by_tail.get(entry["source"])
        if row is None:
            unmatched += 1
            continue
        path = folder / "pytorch" / rel
        if not path.is_file():
            raise DataError(f"{path}: listed in {folder / 'meta.json'} but missing; re-run "
                            "`fedreid site augment` for this site")
        samples.append(Sample(str(path), int(entry["pid"]), int(entry["camid"])))
        rows.append(row)
        quality.append(float(entry.get("quality", 0.0)))
    if not samples:
        raise DataError(f"{folder}: none of its {len(meta['images'])} copies was made from an image of "
                        f"this site's training split ({unmatched} unmatched); re-run `fedreid site "
                        "augment` on this site's current data")
    decoded = ImageStore(samples, tuple(store.size))
    return GeneratedImages(decoded.images, np.array(rows, dtype=np.int64), decoded.camids,
                           np.array(quality, dtype=np.float64))


def _rows_by_tail(store: ImageStore, entries: dict[str, dict]) -> dict[str, int]:
    """Store rows keyed by the last path components, as many as the copies' sources have."""
    depths = {len(Path(e["source"]).parts) for e in entries.values()}
    out: dict[str, int] = {}
    for row, s in enumerate(store.samples):
        parts = Path(os.path.abspath(s.path)).parts
        for depth in depths:
            out.setdefault(Path(*parts[-depth:]).as_posix(), row)
    return out
