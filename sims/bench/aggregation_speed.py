"""Server aggregation cost of FedKLPR (sparse decode + KLPWA + SAS) vs Flower's FedAvg.

Eight ResNet-50-shaped site states (torchvision ``resnet50(weights=None)`` shapes without the
ImageNet ``fc`` head, which stays private in ReID, plus a 2048-d BNNeck; last stride 1 does not
change shapes) with random float32 weights and ~60 % of every conv kernel pruned at random.

Timed side by side in one process, interleaved, median of ``--repeats``. Both sides start
from the ``ArrayRecord``s a server receives and end with the ``ArrayRecord`` it returns:
- ours: per site ``Array -> numpy`` of the sparse encoded reply (``codec.npy_view``, zero-copy),
  ``decode_masks`` (the server keeps each site's mask for its next download) and
  ``SasAccumulator.add_encoded`` (folds the sparse form, no dense copy); then ``klpwa``
  weights (computed first, they are scalars), ``result()`` and the result ``ArrayRecord``.
  Validation (``validate_encoded`` on the converted arrays, with the declared-sparsity check)
  is timed on its own row. For reference, the same conversion with Flower's ``Array.numpy()``
  (``np.load``) is timed too, with the ratio ours would have with it.
- flower: ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`` (what FedAvg runs)
  on the same updates sent dense as ``ArrayRecord``s, including its ``Array -> numpy``
  (``Array.numpy()``) and building the result ``ArrayRecord``.
Peak memory per number of sites is measured with tracemalloc (NumPy reports its buffers to it)
in a fresh subprocess per (method, N), counting only what the aggregation allocates beyond its
inputs. Bytes are ``serialized_nbytes`` (= Flower's ``Array`` payload) of one site's reply.
Everything is single-threaded NumPy (one thread each side); torch is only used for the shapes.
The machine's 1-minute load average is printed with the figures.

    .venv/bin/python -m sims.bench.aggregation_speed [--sites 8] [--sparsity 0.6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from fedreid.fl.accounting import serialized_nbytes
from fedreid.fl.codec import encode_sparse, npy_view, validate_encoded
from fedreid.fl.sas import SasAccumulator
from fedreid.fl.weights import klaw, klpwa, praw

MB = 1e6


def resnet50_shapes() -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shared-state shapes/dtypes: ResNet-50 without fc, plus a BatchNorm1d(2048) neck."""
    import torch
    from torchvision.models import resnet50

    state = {
        k: v for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")
    }
    state.update({f"neck.{k}": v for k, v in torch.nn.BatchNorm1d(2048).state_dict().items()})
    return {
        k: (tuple(v.shape), np.dtype(str(v.dtype).removeprefix("torch."))) for k, v in state.items()
    }


def make_site(shapes, sparsity: float, seed: int):
    """Random site state; conv kernels (ndim 4) pruned at random to about ``sparsity``."""
    rng = np.random.default_rng(seed)
    state, masks = {}, {}
    for name, (shape, dtype) in shapes.items():
        if dtype.kind != "f":
            state[name] = np.asarray(rng.integers(0, 1000), dtype=dtype).reshape(shape)
            continue
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
        if len(shape) == 4:
            m = rng.random(shape, dtype=np.float32) >= sparsity
            w *= m
            masks[name] = m
        state[name] = w
    return state, masks


def build_inputs(n_sites: int, sparsity: float, want: str):
    """Global state, KL/ratio metrics and the replies as Flower would deliver them."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    shapes = resnet50_shapes()
    global_state, _ = make_site(shapes, 0.0, seed=10_000)
    sparse_records, dense_records = [], []
    for k in range(n_sites):
        state, masks = make_site(shapes, sparsity, seed=k)
        if want in ("ours", "both"):
            enc = encode_sparse(state, masks)
            sparse_records.append(ArrayRecord({n: Array(a) for n, a in enc.items()}))
        if want in ("flower", "both"):
            dense_records.append(
                RecordDict(
                    {
                        "arrays": ArrayRecord({n: Array(a) for n, a in state.items()}),
                        "metrics": MetricRecord({"num-examples": 1000 + 100 * k}),
                    }
                )
            )
        del state, masks
    rng = np.random.default_rng(1)
    metrics = {"kl": rng.random(n_sites) + 0.1, "ratio": np.full(n_sites, sparsity)}
    return shapes, global_state, sparse_records, dense_records, metrics


def run_ours(global_state, sparse_records, metrics, stages=None):
    from flwr.app import Array, ArrayRecord

    t0 = time.perf_counter()
    weights = klpwa(klaw(metrics["kl"]), praw(metrics["ratio"]))
    acc = SasAccumulator(global_state)
    t_np = t_add = 0.0
    for rec, w in zip(sparse_records, weights, strict=True):
        a = time.perf_counter()
        arrays = {n: npy_view(arr.data) for n, arr in rec.items()}
        b = time.perf_counter()
        masks = acc.add_encoded(arrays, float(w))  # a server keeps them for the downloads
        t_np, t_add = t_np + b - a, t_add + time.perf_counter() - b
        del masks, arrays
    a = time.perf_counter()
    out = acc.result()
    b = time.perf_counter()
    record = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in out.items()})
    if stages is not None:
        stages.update(
            to_numpy=t_np,
            add_encoded=t_add,
            result=b - a,
            result_record=time.perf_counter() - b,
            total=time.perf_counter() - t0,
        )
    return record


def run_flower(dense_records):
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    return aggregate_arrayrecords(dense_records, "num-examples")


def time_it(n_sites: int, sparsity: float, repeats: int) -> None:
    shapes, g, sparse, dense, metrics = build_inputs(n_sites, sparsity, "both")
    n_params = sum(int(np.prod(s)) for s, _ in shapes.values())
    print(
        f"{n_sites} sites, {n_params / 1e6:.1f}M values each, {sparsity:.0%} of conv weights "
        f"pruned; median of {repeats} interleaved repeats (seconds, one thread each side)"
    )
    expected = {n: s for n, (s, _) in shapes.items()}
    # A server converts each reply once and validates and decodes the same arrays.
    replies = [{n: npy_view(arr.data) for n, arr in rec.items()} for rec in sparse]
    rows: dict[str, list[float]] = {}
    loads = [os.getloadavg()[0]]
    for _ in range(repeats):
        stages: dict[str, float] = {}
        run_ours(g, sparse, metrics, stages)
        for k, v in stages.items():
            rows.setdefault(f"ours: {k}", []).append(v)
        a = time.perf_counter()
        run_flower(dense)
        rows.setdefault("flower: aggregate_arrayrecords", []).append(time.perf_counter() - a)
        a = time.perf_counter()
        for arrays in replies:
            problems = validate_encoded(arrays, expected, declared_sparsity=sparsity, tol=1e-3)
            assert not problems, problems
        rows.setdefault("ours: validate_encoded (all sites)", []).append(time.perf_counter() - a)
        a = time.perf_counter()
        for rec in sparse:
            {n: arr.numpy() for n, arr in rec.items()}
        rows.setdefault("reference: Array.numpy() of our replies", []).append(
            time.perf_counter() - a
        )
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    for k, v in med.items():
        print(f"  {k:<42} {v:8.3f}")
    flower = med["flower: aggregate_arrayrecords"]
    ours, fl = rows["ours: total"], rows["flower: aggregate_arrayrecords"]
    validation = rows["ours: validate_encoded (all sites)"]
    per_rep = [o / f for o, f in zip(ours, fl, strict=True)]
    per_rep_v = [(o + v) / f for o, v, f in zip(ours, validation, fl, strict=True)]
    with_np = med["ours: total"] - med["ours: to_numpy"]
    with_np += med["reference: Array.numpy() of our replies"]
    print("  ratios to flower: of the medians (median of the per-repeat ratios)")
    print(
        f"    ours total                     {med['ours: total'] / flower:5.2f} "
        f"({statistics.median(per_rep):.2f})"
    )
    print(
        f"    ours total + validation        "
        f"{(med['ours: total'] + med['ours: validate_encoded (all sites)']) / flower:5.2f} "
        f"({statistics.median(per_rep_v):.2f})"
    )
    print(f"    ours total with Array.numpy()  {with_np / flower:5.2f}")
    print(f"  load average (1 min) during the repeats: {min(loads):.2f}-{max(loads):.2f}")


def child_peak(method: str, n_sites: int, sparsity: float) -> None:
    """Subprocess body: print JSON with the aggregation's traced peak and the input size."""
    _, g, sparse, dense, metrics = build_inputs(n_sites, sparsity, method)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = run_ours(g, sparse, metrics) if method == "ours" else run_flower(dense)
    peak = tracemalloc.get_traced_memory()[1] - base
    del out
    records = sparse if method == "ours" else [r["arrays"] for r in dense]
    inputs = sum(len(a.data) for rec in records for a in rec.values())
    print(json.dumps({"peak": peak, "inputs": inputs}))


def memory_table(sparsity: float) -> None:
    print("Peak memory allocated by the aggregation beyond its inputs (tracemalloc, MB)")
    print(
        f"  {'sites':>5} {'ours peak':>10} {'flower peak':>12} {'ours inputs':>12} "
        f"{'flower inputs':>14}"
    )
    for n in (2, 4, 8):
        res = {}
        for method in ("ours", "flower"):
            cmd = [
                sys.executable,
                "-m",
                "sims.bench.aggregation_speed",
                "--child",
                method,
                "--sites",
                str(n),
                "--sparsity",
                str(sparsity),
            ]
            res[method] = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
        print(
            f"  {n:>5} {res['ours']['peak'] / MB:>10.0f} {res['flower']['peak'] / MB:>12.0f} "
            f"{res['ours']['inputs'] / MB:>12.0f} {res['flower']['inputs'] / MB:>14.0f}"
        )


def bytes_table(sparsity: float) -> None:
    from flwr.app import Array

    state, masks = make_site(resnet50_shapes(), sparsity, seed=0)
    dense = serialized_nbytes(state)
    assert dense == sum(len(Array(a).data) for a in state.values())
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
    print(f"Bytes of one site's reply at {sparsity:.0%} conv sparsity (actual {1 - kept:.3f})")
    print(f"  {'encoding':<22} {'MB':>8} {'vs dense':>9}")
    print(f"  {'dense (FedAvg)':<22} {dense / MB:>8.2f} {1:>9.3f}")
    for dt in ("float32", "float16"):
        n = serialized_nbytes(encode_sparse(state, masks, value_dtype=dt))
        print(f"  {'sparse ' + dt:<22} {n / MB:>8.2f} {n / dense:>9.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", choices=("ours", "flower"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_peak(args.child, args.sites, args.sparsity)
        return
    time_it(args.sites, args.sparsity, args.repeats)
    memory_table(args.sparsity)
    bytes_table(args.sparsity)


if __name__ == "__main__":
    main()
