"""Features and metadata from a site's images: the model, the gallery's items with their
capture times, and chunked extraction.

A model is identified by its checkpoint's content digest, so the index can tell whether a
query model is the one a gallery version's features belong to. Capture time: the image's
``capture_time`` in the site's meta.json (epoch seconds or ISO 8601; naive times are UTC)
when present, else the file's modification time; ``time_source`` records which.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from fedreid.data.augment import normalize
from fedreid.data.images import IMAGE_EXTS
from fedreid.data.readers import load_dataset
from fedreid.data.records import DataError, Sample
from fedreid.data.store import ImageStore
from fedreid.eval.features import extract_features
from fedreid.index.store import ItemRecord, ModelRef
from fedreid.models import ReidNet, build_model

CAPTURE_TIME_KEY = "capture_time"


def file_digest(path: Path) -> str:
    """``sha256:`` + the first 16 hex digits of the file's SHA-256 (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def load_model(
    weights: str | Path, arch: str | None = None, name: str | None = None
) -> tuple[ReidNet, ModelRef]:
    """A ReID net in eval mode from a fedreid checkpoint (``{"model": state, "arch": ...}``, as
    ``fedreid train`` and the federation write it) and its reference. ``arch`` is needed only
    when the checkpoint does not record it; ``name`` defaults to the file's stem."""
    path = Path(weights)
    if not path.is_file():
        raise ValueError(
            f"--weights {weights}: no such file; the index needs the checkpoint file itself "
            "(its digest tells model versions apart), e.g. runs/<run>/checkpoint.pt"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unpickling error types
        raise ValueError(f"--weights {path}: cannot read it with torch.load ({err})") from err
    saved_arch = saved.get("arch") if isinstance(saved, dict) else None
    if arch and saved_arch and arch != saved_arch:
        raise ValueError(f"--arch {arch} but {path} was saved from {saved_arch}; drop --arch")
    arch = arch or saved_arch
    if not arch:
        raise ValueError(f"--weights {path}: the checkpoint does not say its arch; pass --arch (e.g. resnet18)")
    model = build_model(arch, str(path)).eval()
    return model, ModelRef(name or path.stem, arch, file_digest(path), model.feat_dim)


def capture_time(sample: Sample) -> tuple[float, str]:
    """``(epoch seconds, "meta" | "mtime")`` for one image; see the module docstring."""
    value = sample.meta.get(CAPTURE_TIME_KEY) if sample.meta else None
    if value is None:
        return os.stat(sample.path).st_mtime, "mtime"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), "meta"
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            return stamp.timestamp(), "meta"
    raise DataError(
        f"{sample.path}: meta.json {CAPTURE_TIME_KEY!r} is {value!r}; rule: epoch seconds or an "
        "ISO 8601 time such as '2025-03-01T14:05:00'; fix: correct or remove the entry"
    )


def gallery_items(root: str | Path, dataset: str = "fedreid", split: str = "gallery") -> tuple[list[Sample], list[ItemRecord]]:
    """The images of one split of a site and their index records (key: path below ``root``)."""
    if split not in ("train", "query", "gallery"):
        raise ValueError(f"split={split!r}: choose train, query or gallery")
    splits = load_dataset(root, dataset)
    samples = getattr(splits, split)
    if not samples:
        raise DataError(f"{root}: the {split} split is empty; nothing to index")
    base = Path(root).resolve()
    records = []
    for sample in samples:
        when, source = capture_time(sample)
        key = Path(sample.path).resolve().relative_to(base).as_posix()
        records.append(ItemRecord(key, sample.pid, sample.camid, when, source))
    return samples, records


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Query images: the files given, plus every image below the folders given (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"query image {path}: no such file or folder")
    if not found:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {', '.join(map(str, paths))}")
    return found


@torch.inference_mode()
def extract(
    model: torch.nn.Module,
    paths: Sequence[str],
    size: tuple[int, int],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    flip: bool = True,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised features (float32 N×D) of the images at ``paths``, resized to ``size``.

    Images are decoded ``8·batch_size`` at a time, so memory stays bounded for any gallery;
    ``flip`` adds the mirrored image's embedding (the evaluation's test-time augmentation).
    ``progress(images_done)`` is called after each chunk.
    """
    model = model.to(device)
    chunk = batch_size * 8
    parts = []
    for start in range(0, len(paths), chunk):
        # labels are unknown here; the store only needs paths to decode
        store = ImageStore([Sample(p, -1, -1) for p in paths[start : start + chunk]], size)
        images = normalize(store.images)
        parts.append(extract_features(model, images, device, flip=flip, batch_size=batch_size).numpy())
        if progress is not None:
            progress(min(len(paths), start + chunk))
    if not parts:
        raise ValueError("no images to extract features from")
    return np.concatenate(parts)
