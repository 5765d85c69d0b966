"""Reading a site index: its versions, a version's gallery as arrays, and search.

Readers take no lock: they read ``current`` once and then only files of complete versions,
which writers never modify (a new version is a new folder), so a search running during an
upgrade keeps answering from the version it started with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from fedreid.data.records import DataError
from fedreid.index import backends
from fedreid.index.store import IndexStore, ModelInfo, VersionInfo
from fedreid.index.versions import version_dir

VECTORS_FILE = "vectors.faiss"
IVF_FILE = "ivf.faiss"


@dataclass(frozen=True)
class Gallery:
    """One version's vectors (row order) and what is known about each row."""

    version: VersionInfo
    model: ModelInfo
    features: np.ndarray
    keys: list[str]
    pids: np.ndarray
    camids: np.ndarray
    capture_times: np.ndarray
    time_sources: list[str]
    source_models: np.ndarray
    hops: np.ndarray


@dataclass(frozen=True)
class Hits:
    """Top-k per query (Q×k arrays; a query with fewer than k matches is padded with row -1,
    pid -1, key "" and score -inf)."""

    version: int
    scores: np.ndarray
    rows: np.ndarray
    keys: list[list[str]]
    pids: np.ndarray
    camids: np.ndarray
    capture_times: np.ndarray
    source_models: np.ndarray
    hops: np.ndarray


class SiteIndex:
    """A site's gallery index at ``root``, opened for reading."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.store = IndexStore.open(self.root)
        self._flat: dict[int, backends.FlatVectors] = {}
        self._ivf: dict[int, faiss.IndexIVFFlat] = {}

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SiteIndex:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def version(self, version_id: int | None = None) -> VersionInfo:
        """The given version, or the current one."""
        if version_id is None:
            version_id = self.store.current()
            if version_id is None:
                raise DataError(f"{self.root}: the index has no complete version yet; run `index build`")
        return self.store.version(version_id)

    def vectors(self, version_id: int | None = None) -> np.ndarray:
        """A version's N×D float32 vectors (a read-only view, loaded once per version)."""
        info = self.version(version_id)
        if info.id not in self._flat:
            path = version_dir(self.root, info.id) / VECTORS_FILE
            if not path.is_file():
                raise DataError(
                    f"{path}: the vectors of version {info.id} are missing; fix: search another "
                    "version (`index stats` lists them) or rebuild the index"
                )
            flat = backends.load_vectors(path)
            if (flat.index.ntotal, flat.index.d) != (info.count, info.dim):
                raise DataError(
                    f"{path}: holds {flat.index.ntotal}×{flat.index.d} vectors, version {info.id} "
                    f"records {info.count}×{info.dim}; fix: rebuild the index"
                )
            self._flat[info.id] = flat
        return self._flat[info.id].array

    def gallery(self, version_id: int | None = None) -> Gallery:
        """Everything about one version as arrays, e.g. to evaluate it against new queries."""
        info = self.version(version_id)
        rows = self.store.entries(info.id)
        columns = zip(*rows, strict=True) if rows else ((),) * 8
        _, keys, pids, camids, times, time_sources, sources, hops = columns
        return Gallery(
            info, self.store.model(info.model), self.vectors(info.id), list(keys),
            np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64),
            np.asarray(times, dtype=np.float64), list(time_sources),
            np.asarray(sources, dtype=np.int64), np.asarray(hops, dtype=np.int64),
        )

    def check_model(self, digest: str, version_id: int | None = None) -> None:
        """Raise unless the version's vectors are in the space of the model with ``digest``."""
        info = self.version(version_id)
        model = self.store.model(info.model)
        if model.digest == digest:
            return
        same = [v.id for v in self.store.versions() if self.store.model(v.model).digest == digest]
        hint = (f"search version {same[-1]}, which is in that model's space" if same else
                "run `index upgrade` with a transfer into that model, or `index build` to re-index")
        raise ValueError(
            f"version {info.id} holds features of model {model.name!r} ({model.digest}) but the "
            f"query model is {digest}; comparing the two spaces gives meaningless ranks; fix: {hint}"
        )

    def search(
        self, queries: np.ndarray | torch.Tensor, k: int = 10, version_id: int | None = None
    ) -> Hits:
        """Top-``k`` stored rows per query by inner product (cosine for unit vectors), with the
        version's own search (exact or IVF)."""
        if k < 1:
            raise ValueError(f"k={k}: ask for at least one match")
        info = self.version(version_id)
        q = torch.as_tensor(queries, dtype=torch.float32)
        if q.ndim != 2 or q.shape[1] != info.dim:
            raise ValueError(
                f"query features are {tuple(q.shape)} but version {info.id} stores {info.dim}-d "
                "vectors; fix: extract queries with the model of that version"
            )
        if info.search == "ivf":
            scores, rows = self._ivf_index(info).search(np.ascontiguousarray(q.numpy()), k)
            scores = np.where(rows < 0, -np.inf, scores)
        else:
            scores, rows = backends.exact_topk(self.vectors(info.id), q, k)
        if rows.shape[1] < k:  # fewer stored vectors than k
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return self._hits(info.id, scores, rows)

    def _ivf_index(self, info: VersionInfo) -> faiss.IndexIVFFlat:
        if info.id not in self._ivf:
            path = version_dir(self.root, info.id) / IVF_FILE
            if not path.is_file():
                raise DataError(f"{path}: the IVF index of version {info.id} is missing; fix: rebuild")
            self._ivf[info.id] = backends.load_ivf(path, int(info.nprobe or 1))
        return self._ivf[info.id]

    def _hits(self, version_id: int, scores: np.ndarray, rows: np.ndarray) -> Hits:
        meta = {r[0]: r[1:] for r in self.store.entries(version_id, rows.ravel().tolist())}
        blank = ("", -1, -1, float("nan"), "", -1, -1)
        cells = [[meta.get(int(r), blank) for r in line] for line in rows]

        def column(j: int, dtype: type) -> np.ndarray:
            return np.array([[c[j] for c in line] for line in cells], dtype=dtype)

        return Hits(
            version_id, scores.astype(np.float32), rows.astype(np.int64),
            [[c[0] for c in line] for line in cells], column(1, np.int64), column(2, np.int64),
            column(3, np.float64), column(5, np.int64), column(6, np.int64),
        )

    def stats(self) -> dict:
        """Versions (with model, counts, search settings and lineage), the current one, and per
        version the identities, cameras, capture-time range and transferred rows."""
        current = self.store.current()
        versions = []
        for info in self.store.versions():
            model = self.store.model(info.model)
            folder = version_dir(self.root, info.id)
            size = sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0
            versions.append({
                **asdict(info), "model_name": model.name, "model_digest": model.digest,
                "current": info.id == current, "bytes": size,
                **self.store.version_summary(info.id),
            })
        return {"root": str(self.root), "current": current, "versions": versions,
                "models": [asdict(m) for m in self.store.models()]}
