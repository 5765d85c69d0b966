"""A site's train / query / gallery splits decoded into memory, ready for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedreid.data.readers import load_dataset
from fedreid.data.records import ReidSplits
from fedreid.data.store import ImageStore


@dataclass
class SplitImages:
    """The decoded images of one site's three splits (and the reader's records)."""

    name: str
    splits: ReidSplits
    train: ImageStore
    query: ImageStore
    gallery: ImageStore

    @property
    def video(self) -> bool:
        return self.splits.video


def load_split_images(root: str | Path, dataset: str, size: tuple[int, int], seed: int = 0) -> SplitImages:
    """Read a site folder with reader ``dataset`` and decode every image at ``size`` (H, W)."""
    splits = load_dataset(root, dataset, seed=seed)
    return SplitImages(
        name=Path(root).name,
        splits=splits,
        train=ImageStore(splits.train, size),
        query=ImageStore(splits.query, size),
        gallery=ImageStore(splits.gallery, size),
    )
