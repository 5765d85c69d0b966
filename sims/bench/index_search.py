"""Search latency, memory and recall of a site's gallery index at 10⁴, 10⁵ and 10⁶ vectors.

Side by side in one process, on the same vectors and queries: brute-force torch matmul top-k
(the reference), the index's own exact search (chunked torch top-k), faiss's flat index,
faiss IVF-Flat as the index builds it (nlist ≈ √N, nprobe calibrated to recall@10 ≥ 0.95),
faiss HNSW (M=32, efConstruction 40, efSearch 64) and usearch HNSW (library defaults, f32).

Vectors (synthetic, like ReID galleries): N/20 identity centres in D dimensions, each vector a
centre plus Gaussian noise (σ=0.65 per coordinate relative to the centre's: same-identity
cosine ≈ 0.7), L2-normalised; queries are fresh draws of random identities.

Latency: one query at a time, the backends taking turns so machine load hits all alike
(p50/p95 over ``--queries``), and a batch of ``--batch`` queries (median of ``--repeats``);
on a machine shared with other work, ``--threads 1`` keeps descheduled worker threads out of
the figures. Memory: the resident-set growth that building leaves (for the torch rows, the
vector array they scan) and the peak resident growth while searching the batch. Recall@10 is
against the matmul top-10 of the batch. HNSW graphs build slowly on few cores (10⁵ vectors:
faiss 112 s, usearch 1,073 s on 2 busy cores), so they run only up to ``--hnsw-max`` vectors.

    .venv/bin/python -m sims.bench.index_search [--sizes 10000,100000,1000000] [--dim 512]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
from rich.console import Console
from usearch.index import Index as UsearchIndex

from fedreid.index.backends import build_ivf, exact_topk, recall_at_k
from sims.bench.rerank_speed import measure

K = 10


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors around random rows of ``centres`` (see the module docstring)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        labels = rng.integers(0, len(centres), stop - start)
        block = centres[labels] + 0.65 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not in /proc/self/status (the memory figures need Linux)")


def _settled_rss() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _rss_mb()


@dataclass
class Backend:
    name: str
    search: Callable[[np.ndarray], np.ndarray]  # queries Q×D → rows Q×K
    build_s: float
    index_mb: float
    note: str = ""
    single_ms: list[float] = field(default_factory=list)


def build_backends(vectors: np.ndarray, hnsw_max: int) -> list[Backend]:
    n, d = vectors.shape
    gallery = torch.from_numpy(vectors)
    data_mb = vectors.nbytes / 2**20

    def matmul(q: np.ndarray) -> np.ndarray:
        return (torch.from_numpy(q) @ gallery.T).topk(K, dim=1).indices.numpy()

    def exact(q: np.ndarray) -> np.ndarray:
        return exact_topk(gallery, torch.from_numpy(q), K)[1]

    backends = [
        Backend("torch matmul top-k (reference)", matmul, 0.0, data_mb),
        Backend("index exact (chunked torch)", exact, 0.0, data_mb),
    ]

    def timed_build(make: Callable[[], object]) -> tuple[object, float, float]:
        before = _settled_rss()
        t0 = time.perf_counter()
        built = make()
        seconds = time.perf_counter() - t0
        return built, seconds, _settled_rss() - before

    def make_flat() -> faiss.IndexFlatIP:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index

    flat, secs, mb = timed_build(make_flat)
    backends.append(Backend("faiss flat", lambda q, ix=flat: ix.search(q, K)[1], secs, mb))
    ivf, secs, mb = timed_build(lambda: build_ivf(vectors))
    backends.append(Backend(
        "faiss IVF-Flat (index)", lambda q, ix=ivf.index: ix.search(q, K)[1], secs, mb,
        f"nlist {ivf.nlist}, nprobe {ivf.nprobe}",
    ))
    if n <= hnsw_max:
        def make_hnsw() -> faiss.IndexHNSWFlat:
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 40
            index.add(vectors)
            index.hnsw.efSearch = 64
            return index

        hnsw, secs, mb = timed_build(make_hnsw)
        backends.append(Backend("faiss HNSW32", lambda q, ix=hnsw: ix.search(q, K)[1], secs, mb,
                                "efSearch 64"))

        def make_usearch() -> UsearchIndex:
            index = UsearchIndex(ndim=d, metric="ip", dtype="f32")
            index.add(np.arange(n), vectors)
            return index

        us, secs, mb = timed_build(make_usearch)
        backends.append(Backend(
            "usearch HNSW", lambda q, ix=us: np.asarray(ix.search(q, K).keys).reshape(len(q), K),
            secs, mb,
        ))
    return backends


def run_size(n: int, args: argparse.Namespace, console: Console) -> str:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((max(1, n // 20), args.dim), dtype=np.float32)
    with console.status(f"{n:,} vectors: generating and building"):
        vectors = clustered_vectors(n, args.dim, rng, centres)
        queries = clustered_vectors(max(args.batch, args.queries), args.dim, rng, centres)
        backends = build_backends(vectors, args.hnsw_max)
    with console.status(f"{n:,} vectors: single-query latency"):
        for i in range(args.queries):
            one = queries[i : i + 1]
            for backend in backends:
                t0 = time.perf_counter()
                backend.search(one)
                backend.single_ms.append((time.perf_counter() - t0) * 1000)
    batch = queries[: args.batch]
    with console.status(f"{n:,} vectors: batch search"):
        truth, results = None, []
        for backend in backends:
            runs = [measure(lambda b=backend: b.search(batch)) for _ in range(args.repeats)]
            truth = runs[0][0] if truth is None else truth
            results.append((statistics.median(r[1] for r in runs) * 1000,
                            max(r[2] for r in runs), recall_at_k(runs[0][0], truth)))
    reference_ms = results[0][0]
    lines = [
        f"{n:,} stored vectors x {args.dim}-d ({vectors.nbytes / 2**20:,.0f} MiB float32), "
        f"batch of {args.batch} queries",
        f"  {'backend':<31s} {'build s':>8s} {'index MiB':>10s} {'1q p50 ms':>10s} {'1q p95 ms':>10s} "
        f"{'batch ms':>10s} {'speed-up':>9s} {'peak MiB':>9s} {'recall@10':>10s}  note",
    ]
    for backend, (batch_ms, peak, recall) in zip(backends, results, strict=True):
        lines.append(
            f"  {backend.name:<31s} {backend.build_s:8.1f} {backend.index_mb:10,.0f} "
            f"{np.percentile(backend.single_ms, 50):10.2f} {np.percentile(backend.single_ms, 95):10.2f} "
            f"{batch_ms:10,.1f} {reference_ms / batch_ms:8.2f}x {peak:9,.0f} {recall:10.3f}  {backend.note}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=30, help="single queries timed per backend")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hnsw-max", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and faiss threads (0: leave the libraries' defaults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    console = Console()
    print(f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        print(run_size(n, args, console), flush=True)


if __name__ == "__main__":
    main()
