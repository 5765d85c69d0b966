"""What a method's training step receives: a typed batch built from what it asked for."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedreid.data.augment import train_augment
from fedreid.data.fields import FIELDS
from fedreid.data.store import ImageStore


@dataclass(frozen=True)
class BatchSpec:
    """A method's request to the data layer.

    ``views``: independently augmented copies of each image (two for SupCon-style methods);
    ``labels``: identity labels (supervised methods only — unsupervised ones get ``None`` so
    they cannot use them by mistake); ``fields``: per-image metadata from
    :data:`fedreid.data.fields.FIELDS` (geometry, modality, clothes, tracklet, attributes).
    """

    views: int = 1
    labels: bool = True
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"BatchSpec.views={self.views}: a method needs at least one view")
        unknown = [f for f in self.fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"BatchSpec.fields {unknown}: choose among {sorted(FIELDS)}")


@dataclass
class Batch:
    """One training batch on the training device. ``indices`` are rows of the site's train
    store, which is how a method finds its own per-image state (pseudo-labels, proxies)."""

    indices: np.ndarray
    views: list[torch.Tensor]
    camids: torch.Tensor
    pids: torch.Tensor | None = None
    fields: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def images(self) -> torch.Tensor:
        """The first view (what single-view methods and the KL regulariser use)."""
        return self.views[0]


def make_batch(store: ImageStore, indices: np.ndarray, spec: BatchSpec, generator: torch.Generator,
               device: torch.device, *, erasing_p: float = 0.5) -> Batch:
    """Augment ``spec.views`` views of the images at ``indices`` and gather the asked fields."""
    raw = store.batch(indices)
    views = [train_augment(raw, generator, erasing_p=erasing_p).to(device, non_blocking=True)
             for _ in range(spec.views)]
    rows = torch.as_tensor(indices, dtype=torch.long)
    return Batch(
        indices=indices,
        views=views,
        camids=torch.as_tensor(store.camids[indices], device=device),
        pids=torch.as_tensor(store.pids[indices], device=device) if spec.labels else None,
        fields={name: torch.as_tensor(store.field(name)[rows.numpy()], device=device)
                for name in spec.fields},
    )
