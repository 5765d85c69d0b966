"""Which generated copies belong to which training image, and drawing one at random."""

from __future__ import annotations

import numpy as np
import torch

from fedreid.augment.copies import GeneratedImages


class CopyPool:
    """Generated copies grouped by the training row they were made from."""

    def __init__(self, generated: GeneratedImages, num_rows: int) -> None:
        self.generated = generated
        order = np.argsort(generated.source_row, kind="stable")
        self._order = order
        counts = np.bincount(generated.source_row, minlength=num_rows)
        self.counts = counts
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def __len__(self) -> int:
        return len(self.generated)

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random copy of each row (an index into ``generated``), -1 where it has none."""
        counts = self.counts[rows]
        picks = np.full(len(rows), -1, dtype=np.int64)
        has = counts > 0
        offsets = (rng.random(int(has.sum())) * counts[has]).astype(np.int64)
        picks[has] = self._order[self._starts[rows[has]] + offsets]
        return picks

    def images(self, picks: np.ndarray) -> torch.Tensor:
        return self.generated.images[torch.as_tensor(picks, dtype=torch.long)]
