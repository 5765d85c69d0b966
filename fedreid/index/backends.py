"""Search over one version's vectors: exact torch top-k or a faiss IVF index, and the faiss
flat file that holds the vectors on disk.

Which search a version gets is chosen by its size (``choose_search``), from
``sims/bench/index_search.py`` (512-d, one thread, single-query p50 / recall@10; the README's
"Gallery index" has the figures): at 10⁴ vectors exact search is as fast as IVF, takes less
than extracting the query image, and is exact; from 10⁵ vectors on IVF answers an order of
magnitude faster at recall@10 ≥ 0.95 and holds a fraction of the memory for a batch, so from
10⁵ vectors on a version gets an IVF index. Exact search is a chunked torch matmul rather
than faiss's flat index: on a 2-core machine faiss's flat search was faster than torch with
one thread but slower with two, while torch held steady.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from fedreid.data.records import DataError

SEARCH_KINDS = ("auto", "exact", "ivf")
IVF_MIN_VECTORS = 100_000
NPROBE_CHOICES = (4, 8, 16, 32, 64, 128, 256)
_CALIBRATION_QUERIES = 256
_CALIBRATION_K = 10
_TRAIN_POINTS_PER_LIST = 64


@dataclass
class FlatVectors:
    """The vectors of one version as an ``N×D`` float32 array viewing a loaded faiss index.

    The array shares the index's memory (no copy of up to gigabytes), so the index is kept
    here for as long as the array is used.
    """

    index: faiss.IndexFlatIP

    @property
    def array(self) -> np.ndarray:
        n, d = self.index.ntotal, self.index.d
        if n == 0:
            return np.zeros((0, d), dtype=np.float32)
        return faiss.rev_swig_ptr(self.index.get_xb(), n * d).reshape(n, d)


def save_vectors(path: Path, vectors: np.ndarray) -> None:
    """Write ``vectors`` (N×D float32) as a faiss flat inner-product index file."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(path))


def load_vectors(path: Path) -> FlatVectors:
    """Read a file written by :func:`save_vectors`; a damaged or missing file is a DataError."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise DataError(
            f"{path}: cannot read the stored vectors ({str(err).splitlines()[0]}); "
            "fix: switch to another version with `fedreid site index stats`, or rebuild the index"
        ) from err
    if not isinstance(index, faiss.IndexFlatIP):
        raise DataError(f"{path}: holds a {type(index).__name__}, not the flat vectors of a version")
    return FlatVectors(index)


def exact_topk(
    gallery: np.ndarray | torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product top-k of every query over the whole gallery: (scores, rows), Q×k each.

    The gallery is scanned in chunks so the score block stays ``Q×chunk`` (64 MiB for 256
    queries) whatever the gallery size; each chunk's top-k are merged at the end.
    """
    g = torch.as_tensor(gallery)
    q = queries.to(torch.float32)
    k = min(k, g.shape[0])
    scores, rows = [], []
    for start in range(0, g.shape[0], chunk):
        s, i = (q @ g[start : start + chunk].T).topk(min(k, g.shape[0] - start), dim=1)
        scores.append(s)
        rows.append(i + start)
    if len(scores) == 1:
        return scores[0].numpy(), rows[0].numpy()
    s, i = torch.cat(scores, dim=1), torch.cat(rows, dim=1)
    top = s.topk(k, dim=1).indices
    return s.gather(1, top).numpy(), i.gather(1, top).numpy()


def choose_search(kind: str, count: int) -> str:
    """``auto`` → ``exact`` below ``IVF_MIN_VECTORS`` vectors, else ``ivf``."""
    if kind not in SEARCH_KINDS:
        raise ValueError(f"search={kind!r}: choose one of {list(SEARCH_KINDS)}")
    if kind == "auto":
        return "ivf" if count >= IVF_MIN_VECTORS else "exact"
    return kind


def ivf_lists(count: int) -> int:
    """Number of IVF lists: the power of two nearest √N (1,024 at 10⁶), at least 16."""
    return max(16, 2 ** round(np.log2(max(count, 1)) / 2))


@dataclass(frozen=True)
class IvfBuild:
    """A trained IVF index and the nprobe that reached the recall target on its own vectors."""

    index: faiss.IndexIVFFlat
    nlist: int
    nprobe: int
    recall: float


def build_ivf(vectors: np.ndarray, *, target_recall: float = 0.95, seed: int = 0) -> IvfBuild:
    """Train an IVF-Flat inner-product index on ``vectors`` and calibrate its nprobe.

    k-means trains on ``64·nlist`` sampled vectors. Calibration: 256 stored vectors are used as
    queries, their exact top-10 (themselves excluded) is the truth, and the smallest nprobe of
    ``NPROBE_CHOICES`` whose recall@10 reaches ``target_recall`` is kept (the largest tried if
    none does; the reached recall is recorded, so ``index stats`` shows it).
    """
    n, d = vectors.shape
    nlist = ivf_lists(n)
    if n < nlist * 4:
        raise ValueError(
            f"an IVF index needs at least {nlist * 4} vectors for {nlist} lists, got {n}; "
            "use search='exact' for a gallery this small"
        )
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, min(n, nlist * _TRAIN_POINTS_PER_LIST), replace=False))]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(train))
    index.add(vectors)
    rows = np.sort(rng.choice(n, min(n, _CALIBRATION_QUERIES), replace=False))
    queries = torch.from_numpy(vectors[rows].copy())
    k = min(_CALIBRATION_K, n - 1)
    _, truth = exact_topk(vectors, queries, k + 1)
    nprobe, recall = NPROBE_CHOICES[-1], 0.0
    for candidate in NPROBE_CHOICES:
        index.nprobe = min(candidate, nlist)
        _, found = index.search(queries.numpy(), k + 1)
        recall = recall_at_k(_drop_self(found, rows, k), _drop_self(truth, rows, k))
        if recall >= target_recall or candidate >= nlist:
            nprobe = index.nprobe
            break
    index.nprobe = nprobe
    return IvfBuild(index, nlist, nprobe, recall)


def _drop_self(rows: np.ndarray, own: np.ndarray, k: int) -> list[list[int]]:
    return [[r for r in found if r != me][:k] for found, me in zip(rows.tolist(), own.tolist(), strict=True)]


def recall_at_k(found: np.ndarray | list, truth: np.ndarray | list) -> float:
    """Mean fraction of each query's true top-k rows that the approximate search returned."""
    hits = [len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def save_ivf(path: Path, index: faiss.IndexIVFFlat) -> None:
    faiss.write_index(index, str(path))


def load_ivf(path: Path, nprobe: int) -> faiss.IndexIVFFlat:
    """Read an IVF file and set the nprobe recorded for its version."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise DataError(
            f"{path}: cannot read the IVF index ({str(err).splitlines()[0]}); "
            "fix: rebuild the index or search another version"
        ) from err
    index.nprobe = nprobe
    return index
