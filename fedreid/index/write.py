"""Adding versions to a site index: a build (features extracted from images, the first index or
a full re-index with a new model) or an upgrade (the current version's features mapped through
a transfer, no image). Both write a new version folder and switch to it atomically (see
``versions.py``); the version they replace stays on disk, usable, until pruned with ``keep``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fedreid.index import backends
from fedreid.index.fusion import upgrade_features
from fedreid.index.site_index import IVF_FILE, VECTORS_FILE, SiteIndex
from fedreid.index.store import DB_FILE, IndexStore, ItemRecord, ModelRef, NewVersion, VersionInfo
from fedreid.index.versions import remove_orphans, write_version_dir, writer_lock


def build_version(
    root: str | Path,
    features: np.ndarray,
    items: Sequence[ItemRecord],
    model: ModelRef,
    *,
    search: str = "auto",
    keep: int | None = None,
) -> VersionInfo:
    """Store ``features`` (N×D, row i = ``items[i]``) extracted by ``model`` as a new current
    version, creating the index at ``root`` if there is none. Items are matched to earlier
    versions' by key, so a re-index of the same site keeps item identities."""
    _check_keep(keep)
    feats = _unit_rows(features, "features")
    if len(items) != len(feats):
        raise ValueError(f"{len(feats)} feature rows but {len(items)} items; they must pair up")
    if len({item.key for item in items}) != len(items):
        raise ValueError("two items share a key (an image listed twice?); every item needs its own key")
    if feats.shape[1] != model.dim:
        raise ValueError(
            f"features are {feats.shape[1]}-d but model {model.name!r} gives {model.dim}-d; "
            "fix: extract with that model"
        )
    root = Path(root)
    with writer_lock(root):
        store = IndexStore.open(root) if (root / DB_FILE).exists() else IndexStore.create(root)
        try:
            model_id = store.ensure_model(model.name, model.arch, model.digest, model.dim)
            version = _write(store, feats, search, kind="build", model_id=model_id)
            store.commit_version(version, items=items, source_model=model_id)
            _prune(store, keep)
            return store.version(version.id)
        finally:
            store.close()


def upgrade_version(
    root: str | Path,
    transfer: Callable[[torch.Tensor], torch.Tensor],
    to_model: ModelRef,
    *,
    transfer_name: str,
    alpha: float = 1.0,
    search: str = "auto",
    keep: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VersionInfo:
    """Map the current version through ``transfer`` (and the α-fusion of ``fusion.py``) into
    ``to_model``'s space and make the result the current version; no image is read.

    ``transfer`` may carry ``in_dim``/``out_dim`` (a loaded :class:`~fedreid.index.Transfer`),
    checked before any work; ``progress(done, total)`` follows the rows.
    """
    _check_keep(keep)
    root = Path(root)
    with writer_lock(root):
        with SiteIndex(root) as index:
            current = index.version()
            old_model = index.store.model(current.model)
            in_dim, out_dim = getattr(transfer, "in_dim", None), getattr(transfer, "out_dim", None)
            if in_dim is not None and in_dim != current.dim:
                raise ValueError(
                    f"transfer {transfer_name} takes {in_dim}-d features but version {current.id} "
                    f"stores {current.dim}-d ({old_model.name}); fix: use the transfer trained "
                    f"from model {old_model.name!r}"
                )
            if out_dim is not None and out_dim != to_model.dim:
                raise ValueError(
                    f"transfer {transfer_name} gives {out_dim}-d features but model "
                    f"{to_model.name!r} gives {to_model.dim}-d; fix: pass the model the transfer maps into"
                )
            if old_model.digest == to_model.digest:
                raise ValueError(
                    f"version {current.id} is already in model {to_model.name!r}'s space "
                    f"({to_model.digest}); nothing to upgrade"
                )
            new = upgrade_features(
                index.vectors(current.id), transfer, alpha,
                progress=None if progress is None else lambda done: progress(done, current.count),
            )
            store = index.store
            if new.shape[1] != to_model.dim:
                raise ValueError(
                    f"the transfer gives {new.shape[1]}-d features but model {to_model.name!r} "
                    f"gives {to_model.dim}-d; fix: pass the model the transfer maps into"
                )
            model_id = store.ensure_model(to_model.name, to_model.arch, to_model.digest, to_model.dim)
            version = _write(store, new, search, kind="upgrade", model_id=model_id,
                             alpha=alpha, transfer=transfer_name)
            store.commit_version(version)
            _prune(store, keep)
            return store.version(version.id)


def _write(
    store: IndexStore,
    feats: np.ndarray,
    search: str,
    *,
    kind: str,
    model_id: int,
    alpha: float | None = None,
    transfer: str | None = None,
) -> NewVersion:
    """Clear a crashed writer's leftovers, then write the version folder (vectors, and an IVF
    index when the size calls for one); returns the row to commit."""
    remove_orphans(store.root, {v.id for v in store.versions()})
    kind_of_search = backends.choose_search(search, len(feats))
    ivf = backends.build_ivf(feats) if kind_of_search == "ivf" else None

    def write(folder: Path) -> None:
        backends.save_vectors(folder / VECTORS_FILE, feats)
        if ivf is not None:
            backends.save_ivf(folder / IVF_FILE, ivf.index)

    version_id = store.next_version_id()
    write_version_dir(store.root, version_id, write)
    return NewVersion(
        id=version_id, parent=store.current(), kind=kind, model=model_id, dim=feats.shape[1],
        count=len(feats), alpha=alpha, transfer=transfer, search=kind_of_search,
        nlist=ivf.nlist if ivf else None, nprobe=ivf.nprobe if ivf else None,
        recall=ivf.recall if ivf else None,
    )


def _prune(store: IndexStore, keep: int | None) -> None:
    """Keep the newest ``keep`` versions (the current one always); None keeps all."""
    if keep is None:
        return
    current = store.current()
    old = [v.id for v in store.versions() if v.id != current]
    drop = old[: max(0, len(old) - (keep - 1))]
    if drop:
        store.delete_versions(drop)
        remove_orphans(store.root, {v.id for v in store.versions()})


def _check_keep(keep: int | None) -> None:
    if keep is not None and keep < 1:
        raise ValueError(f"keep={keep}: keep at least the current version (keep >= 1)")


def _unit_rows(features: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """float32, C-contiguous, finite, L2-normalised rows (search is by inner product)."""
    feats = np.ascontiguousarray(torch.as_tensor(features).detach().cpu().numpy(), dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty N×D array, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: {int((norms == 0).sum())} rows are all zeros and have no direction")
    return feats / norms
