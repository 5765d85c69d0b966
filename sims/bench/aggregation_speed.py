"""The coordinator's whole round vs Flower 1.41's FedAvg.aggregate_train, and what a reply costs.

Sites are ResNet-50 shaped (torchvision ``resnet50(weights=None)`` without the ``fc`` head,
which stays private in ReID, plus a 2048-d BNNeck) with random float32 weights and 60 % of
every conv kernel pruned at random; KLPWA (convex, the default) weights from random signals.

1. Round time, side by side in one process, interleaved, median of ``--repeats`` (seconds;
   ratio = median of the per-repeat ratios to Flower's time in the same repeat):
   - ``ours``: the coordinator's whole per-round work, run through the strategy itself
     (``server.strategy.FedReIDStrategy``) on Flower ``Message`` replies:
     ``aggregate_round``, what the round loop calls (per reply ``npy_view`` of the payloads,
     zero copy; ``check_reply``: metrics, structure, finiteness, bitmap or digest vs the held
     mask, declared sparsity; ``FlatSas.fold``, which holds up to 8 replies; then
     ``result()``: with every reply held, the one-pass AVX-512 finish of
     :mod:`fedreid.fl.simd`, which also writes each float32 download; otherwise folds into
     numerators and the coded finish; no record of the whole global: the downloads come
     from the aggregator), then ``configure_train`` for the next round (every site's
     download record: values written by the finish, or taken from the flat global;
     digests, dense tensors; the dense ``Array``s shared by the records). ``held`` = replies refer to masks the server holds by digest (every round
     once the target sparsity is reached); ``sent`` = every mask changed (bitmaps sent, kept
     positions recomputed); ``held+DP`` adds the noise and the ``dp_accounting`` ledger;
     ``int8`` = ``codec.upload`` and ``codec.download=difference-int8``: held replies of int8
     differences, folded onto the global, then the view's int8 step to the new global
     (quantised once a round) shared by every site's download.
   - ``old``: the previous path (``validate_encoded``, ``SasAccumulator.add_encoded``, and
     ``encode_sparse`` + ``Array(ndarray)`` downloads with bitmaps).
   - ``flower``: ``FedAvg().aggregate_train`` on the same site states sent dense (one
     ``Message`` per site: its ``Array.numpy()`` = ``np.load``, weighted sum, the result
     ``ArrayRecord``, metric aggregation); dense float32, and dense float16 in the fp16 rows.
   Flower sends one record to every site, so its downloads cost nothing here.
2. Streaming: time per site and peak memory for 2, 8, 32 and 128 sites, one fresh
   subprocess per cell; replies are read from disk one at a time as they "arrive" (ours) or
   all at once as Flower's ``aggregate_train`` receives them. Peak memory = the largest RSS
   (sampled every 2 ms from ``/proc/self/statm``) during two rounds (bitmaps, then digests)
   minus the RSS before the first reply, when the process holds only the global model. It
   counts what tracemalloc misses (torch's allocator). Both are timed on a warm allocator,
   median of 3 rounds: ours after a first round with bitmaps (then masks held), Flower's
   ``aggregate_train`` after a first call with the same replies. Flower at 128 sites would need
   128 dense replies (12 GB) at once: its time is measured with 8 distinct replies
   referenced 16 times each and its memory is *computed* as the measured 32-site peak plus
   96 more replies.
3. Bytes of one reply and one download (``serialized_nbytes`` = Flower's ``Array``
   payloads), ResNet-18 and ResNet-50, and the precision of half-precision values.

Both sides run with freed payload memory kept for reuse, as the coordinator runs
(:mod:`server.memory`); ``--fresh-pages`` keeps glibc's defaults, where every round faults
its payload pages in again. Single-threaded on both sides by default, as NumPy is for
Flower (``--threads N``: torch's threads on our side, for half-precision conversions). The
machine's 1-minute load average is printed with the figures. ``--clock cpu`` times the
calling thread's CPU time (user + system, page faults included) instead of wall time: on a
shared, overloaded machine wall time mostly measures waiting for a core, and both sides run
in that one thread (so it needs ``--threads 1``); ``wall`` (default) is right on a quiet
machine.

    .venv/bin/python -m sims.bench.aggregation_speed [--repeats 5] [--sparsity 0.6]
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fedreid.fl.accounting import serialized_nbytes
from fedreid.fl.codec import (
    encode_initial,
    encode_sparse,
    npy_payload,
    npy_view,
    pack_mask,
    state_digest,
    to_wire_values,
    validate_encoded,
    values_f32,
)
from fedreid.fl.flat_sas import FlatSas
from fedreid.fl.sas import SasAccumulator
from fedreid.fl.weight_rules import KlpwaWeights
from server.memory import keep_freed_memory

MB = 1e6
DISTINCT = 8  # distinct site replies built; larger federations reuse them under new names
STREAM_ROUNDS = 3  # timed rounds per streaming cell (median), after a warm-up round


# ---- inputs ------------------------------------------------------------------------------


def resnet_shapes(arch: str = "resnet50") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shared-state shapes/dtypes: the backbone without fc, plus a BatchNorm1d neck."""
    from torchvision import models

    net = getattr(models, arch)(weights=None)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    dim = net.fc.in_features
    state.update({f"neck.{k}": v for k, v in torch.nn.BatchNorm1d(dim).state_dict().items()})
    return {k: (tuple(v.shape), np.dtype(str(v.dtype).removeprefix("torch."))) for k, v in state.items()}


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


def metrics_of(masks, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.size for m in masks.values())
    return {"num-examples": float(rng.integers(100, 2000)), "prune_ratio": 1 - kept / total,
            "kl_divergence": float(rng.random()) + 0.05, "cosine_distance": float(rng.random()) * 0.1}


def payloads(arrays) -> dict[str, bytes]:
    return {k: npy_payload(v) for k, v in arrays.items()}


def flower_array(a: np.ndarray, data: bytes | None = None):
    """A Flower Array from an ndarray, serialised once (``npy_payload``) instead of np.save."""
    from flwr.app import Array

    return Array(dtype=str(a.dtype), shape=tuple(int(s) for s in a.shape), stype="numpy.ndarray",
                 data=npy_payload(a) if data is None else data)


def site_replies(shapes, sparsity: float, seed: int, want_dense: tuple[str, ...]):
    """One site's replies as received: wire payloads (bits / digests, fp32 / fp16) and the
    dense states Flower would get, plus its metrics."""
    state, masks = make_site(shapes, sparsity, seed)
    held = {k: pack_mask(m).digest for k, m in masks.items()}
    out = {"metrics": metrics_of(masks, seed)}
    for vd in ("float32", "float16"):
        out[f"sent/{vd}"] = payloads(encode_sparse(state, masks, value_dtype=vd))
        out[f"held/{vd}"] = payloads(encode_sparse(state, masks, value_dtype=vd, receiver_digests=held))
    # int8 differences from a download (their values do not change the work: zeros stand in)
    zeros = {k: np.zeros_like(v) for k, v in state.items()}
    out["held/int8"] = payloads(encode_sparse(state, masks, receiver_digests=held, reference=zeros,
                                              int8_differences=True))
    for vd in want_dense:
        out[f"dense/{vd}"] = payloads({k: v.astype(vd) if v.dtype.kind == "f" else v
                                       for k, v in state.items()})
    return out


def flower_message(node: int, data: dict[str, bytes], metrics: dict[str, float]):
    """A train reply as Flower's grid delivers it to ``aggregate_train``."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in a ServerApp

    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=node, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = f"m{node}"  # as Flower's grids do
    record = ArrayRecord({k: flower_array(npy_view(b), b) for k, b in data.items()})
    content = RecordDict({"arrays": record,
                          "metrics": MetricRecord({"num-examples": int(metrics["num-examples"])})})
    return Message(content, reply_to=instruction)


def quiet_flower() -> None:
    """Flower logs every aggregation at INFO; its logger is configured on import."""
    import flwr.common.logger  # noqa: F401

    logging.getLogger("flwr").setLevel(logging.WARNING)


# ---- one round each way ------------------------------------------------------------------


def download_records(agg: FlatSas, sites: list[str], value_dtype: str = "float32"):
    """Each site's download as Flower Arrays, one site at a time. Dense tensors and shape
    arrays are the same for every site, so their Arrays are built once per round and shared
    by every record (Flower identifies objects by content, so sharing them is safe)."""
    shared = {}
    for site in sites:
        record = {}
        for key, value in agg.download_for(site, value_dtype).items():
            if key.endswith(("::dense", "::shape")):
                if key not in shared:
                    shared[key] = flower_array(value)
                record[key] = shared[key]
            else:
                record[key] = flower_array(value)
        yield record


def old_round(global_state, replies, spec, value_dtype: str, weights) -> dict:
    """The previous server path: validate_encoded, SasAccumulator, encode_sparse downloads."""
    from flwr.app import Array, ArrayRecord

    acc = SasAccumulator(global_state)
    site_masks = {}
    for (site, data, metrics), w in zip(replies, weights, strict=True):
        arrays = {k: npy_view(b) for k, b in data.items()}
        problems = validate_encoded(arrays, spec["shapes"], metrics["prune_ratio"], 1e-4,
                                    expected_dtypes=spec["dtypes"])
        assert not problems, problems
        site_masks[site] = acc.add_encoded(arrays, float(w))
    new = acc.result()
    for site, _, _ in replies:
        enc = encode_sparse(new, site_masks[site], value_dtype=value_dtype)
        ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in enc.items()})
    return new


def flower_round(messages) -> None:
    from flwr.serverapp.strategy import FedAvg

    FedAvg().aggregate_train(1, messages)


# ---- table 1: round time -----------------------------------------------------------------


def clock() -> float:
    """Seconds on the clock ``--clock`` chose (``BENCH_CLOCK``: wall or cpu)."""
    return time.thread_time() if os.environ.get("BENCH_CLOCK") == "cpu" else time.perf_counter()


def timed(fn) -> float:
    a = clock()
    fn()
    return clock() - a


class _Grid:
    """The nodes a strategy sees; every one already admitted (no messages are exchanged)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def our_message(node: int, site: str, data: dict[str, bytes], metrics: dict[str, float]):
    """A site's train reply (encoded arrays, metrics, its name) as the strategy receives it."""
    from flwr.app import ConfigRecord

    msg = flower_message(node, data, metrics)
    msg.content["metrics"].update(metrics)
    msg.content["meta"] = ConfigRecord({"site": site})
    return msg


def make_strategy(g, names: list[str], vd: str, dp: bool, int8: bool = False):
    """The coordinator's strategy for ``names``, each admitted on node k + 1."""
    from fedreid.config import load_config
    from server.strategy import FedReIDStrategy

    over = [f"codec.value_dtype={vd}", f"data.sites=[{','.join(names)}]"]
    if dp:
        over += ["dp.enabled=true", "dp.noise_multiplier=1.0", "dp.clipping_norm=5.0"]
    if int8:
        over += ["codec.upload=difference-int8", "codec.download=difference-int8"]
    strat = FedReIDStrategy(load_config(over), g, num_sites=len(names), node_wait_s=0.0)
    strat.state.node_site.update({k + 1: name for k, name in enumerate(names)})
    return strat


def strategy_round(strat, msgs, grid: _Grid, rnd: int) -> None:
    """Aggregate the replies, then every site's next download."""
    from flwr.app import ArrayRecord, ConfigRecord

    strat.aggregate_round(rnd, msgs)
    list(strat.configure_train(rnd + 1, ArrayRecord(), ConfigRecord(), grid))


def round_cell(g, sites, spec, vd: str, repeats: int, loads: list[float]) -> dict[str, list[float]]:
    """Seconds per repeat of each way of running one round, interleaved."""
    rule = KlpwaWeights()
    names = [f"s{k}" for k in range(len(sites))]
    grid = _Grid([k + 1 for k in range(len(sites))])
    msgs = {kind: [our_message(k + 1, name, site[f"{kind}/{vd}"], site["metrics"])
                   for k, (name, site) in enumerate(zip(names, sites, strict=True))]
            for kind in ("sent", "held")}
    replies = [(name, site[f"sent/{vd}"], site["metrics"]) for name, site in zip(names, sites, strict=True)]
    dense = {d: [flower_message(k + 1, site[f"dense/{d}"], site["metrics"]) for k, site in enumerate(sites)]
             for d in ("float32", "float16")}
    weights = rule.reference([site["metrics"] for site in sites])
    ours, dp = make_strategy(g, names, vd, dp=False), make_strategy(g, names, vd, dp=True)
    int8 = make_strategy(g, names, vd, dp=False, int8=True)
    for strat in (ours, dp, int8):
        strategy_round(strat, msgs["sent"], grid, 1)  # the server now holds every mask
    int8_msgs = [our_message(k + 1, name, site["held/int8"], site["metrics"])
                 for k, (name, site) in enumerate(zip(names, sites, strict=True))]

    int8_rounds = iter(range(2, 1_000_000))

    def int8_round() -> None:
        """int8 differences up; each site's download one int8 step of the view (a new round
        each time: every site replied to the last one, so it holds the view before the step)."""
        strategy_round(int8, int8_msgs, grid, next(int8_rounds))

    def sent() -> None:
        for name in names:
            ours.flat.forget(name)  # every mask changed: positions are recomputed
        strategy_round(ours, msgs["sent"], grid, 2)

    runs = {
        "flower": lambda: flower_round(dense["float32"]),
        "held": lambda: strategy_round(ours, msgs["held"], grid, 2),
        "sent": sent,
        "dp": lambda: strategy_round(dp, msgs["held"], grid, 2),
        "old": lambda: old_round(g, replies, spec, vd, weights),
        "flower16": lambda: flower_round(dense["float16"]),
        "int8": int8_round,
    }
    rows: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            rows[key].append(timed(run))
        loads.append(os.getloadavg()[0])
    return rows


def round_table(sparsity: float, repeats: int) -> None:
    shapes = resnet_shapes()
    spec = {"shapes": {k: s for k, (s, _) in shapes.items()}, "dtypes": {k: d for k, (_, d) in shapes.items()}}
    g, _ = make_site(shapes, 0.0, seed=10_000)
    sites = [site_replies(shapes, sparsity, k, ("float32", "float16")) for k in range(8)]
    n_params = sum(int(np.prod(s)) for s, _ in shapes.values())
    print(f"1. Round time: ResNet-50 ({n_params / 1e6:.1f}M values), {sparsity:.0%} of conv weights "
          f"pruned, KLPWA; median of {repeats} interleaved repeats, seconds "
          f"(ratio: median of per-repeat ratios to flower fp32)")
    header = f"  {'sites':>5} {'values':>7} {'flower':>7} {'flower16':>8} {'ours held':>9} {'ratio':>6} " \
             f"{'ours sent':>9} {'ratio':>6} {'held+DP':>8} {'old':>6} {'ratio':>6} {'ours int8':>9} {'ratio':>6}"
    print(header)
    loads = [os.getloadavg()[0]]
    for n in (2, 4, 8):
        for vd in ("float32", "float16"):
            rows = round_cell(g, sites[:n], spec, vd, repeats, loads)
            med = {k: statistics.median(v) for k, v in rows.items()}
            ratio = {k: statistics.median(o / f for o, f in zip(v, rows["flower"], strict=True))
                     for k, v in rows.items()}
            print(f"  {n:>5} {'fp' + vd[-2:]:>7} {med['flower']:>7.3f} {med['flower16']:>8.3f} "
                  f"{med['held']:>9.3f} {ratio['held']:>6.2f} {med['sent']:>9.3f} {ratio['sent']:>6.2f} "
                  f"{med['dp']:>8.3f} {med['old']:>6.3f} {ratio['old']:>6.2f} {med['int8']:>9.3f} "
                  f"{ratio['int8']:>6.2f}")
    print(f"  load average (1 min) during the repeats: {min(loads):.2f}-{max(loads):.2f}")


# ---- table 2: streaming, one subprocess per cell -----------------------------------------


class PeakRss:
    """Largest resident set size seen while running (sampled every 2 ms)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def allocator_as_asked() -> None:
    """Keep freed memory as the coordinator does (:mod:`server.memory`; Flower's side gains
    too), unless ``--fresh-pages`` (``BENCH_FRESH_PAGES``) asked for glibc's defaults."""
    if not os.environ.get("BENCH_FRESH_PAGES"):
        keep_freed_memory()


def load(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def child(method: str, n_sites: int, folder: Path) -> None:
    """Subprocess body: one cell of table 2, printed as 'seconds_per_site peak_bytes'."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    allocator_as_asked()
    quiet_flower()
    shapes = resnet_shapes()
    g, _ = make_site(shapes, 0.0, seed=10_000)
    metrics = [load(folder / f"site{k}.metrics.pkl") for k in range(DISTINCT)]
    if method == "ours":
        names = [f"s{i}" for i in range(n_sites)]
        strat = make_strategy(g, names, "float32", dp=False)
        del g  # the server holds the global once, in the aggregator

        def arriving(kind: str, loading: list[float]):
            """Replies read one at a time as they arrive (reading time added to ``loading``);
            each is dropped once folded."""
            for i, name in enumerate(names):
                a = clock()
                msg = our_message(i + 1, name, load(folder / f"site{i % DISTINCT}.{kind}.pkl"),
                                  metrics[i % DISTINCT])
                loading[0] += clock() - a
                yield msg

        with PeakRss() as mem:
            times = []
            for rnd, kind in enumerate(("sent",) + ("held",) * STREAM_ROUNDS, start=1):
                start = clock()
                loading = [0.0]
                strat.aggregate_round(rnd, arriving(kind, loading))
                for record in download_records(strat.flat, names):
                    del record  # pushed, then dropped
                times.append(clock() - start - loading[0])
            seconds = statistics.median(times[1:])
    else:
        from flwr.app import ArrayRecord

        current = ArrayRecord({k: flower_array(v) for k, v in g.items()})  # Flower's global
        del g
        share = n_sites > 32  # 128 dense replies do not fit: reuse 8 distinct ones
        with PeakRss() as mem:
            distinct = [load(folder / f"site{k}.dense.pkl") for k in range(DISTINCT)] if share else None
            msgs = []
            for i in range(n_sites):
                data = distinct[i % DISTINCT] if share else load(folder / f"site{i % DISTINCT}.dense.pkl")
                msgs.append(flower_message(i + 1, data, metrics[i % DISTINCT]))
                del data
            flower_round(msgs)  # first call: the allocator warms up, as ours did in round 1
            seconds = statistics.median(timed(lambda: flower_round(msgs)) for _ in range(STREAM_ROUNDS))
        del current
    print(f"{seconds / n_sites} {mem.peak - mem.base}")


def streaming_table(sparsity: float) -> None:
    shapes = resnet_shapes()
    with tempfile.TemporaryDirectory(prefix="aggbench-", dir="/tmp") as tmp:
        folder = Path(tmp)
        for k in range(DISTINCT):
            replies = site_replies(shapes, sparsity, k, ("float32",))
            for name, part in (("sent", "sent/float32"), ("held", "held/float32"),
                               ("dense", "dense/float32"), ("metrics", "metrics")):
                with open(folder / f"site{k}.{name}.pkl", "wb") as f:
                    pickle.dump(replies[part], f)
            del replies
        dense_reply = sum(len(b) for b in load(folder / "site0.dense.pkl").values())
        print("2. Streaming: seconds per site and peak memory (MB above the global model; RSS)")
        print(f"  {'sites':>5} {'ours s/site':>11} {'flower s/site':>13} {'ratio':>6} "
              f"{'ours peak':>9} {'flower peak':>11}")
        env = dict(os.environ)
        flower_32 = None
        for n in (2, 8, 32, 128):
            res = {}
            for method in ("ours", "flower"):
                cmd = [sys.executable, "-m", "sims.bench.aggregation_speed", "--child", method,
                       "--sites", str(n), "--folder", str(folder)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                res[method] = [float(x) for x in out.stdout.split()[-2:]]
            if n == 32:
                flower_32 = res["flower"][1]
            fl_peak = f"{res['flower'][1] / MB:>11.0f}"
            if n > 32:
                fl_peak = f"{(flower_32 + (n - 32) * dense_reply) / MB:>10.0f}*"
            print(f"  {n:>5} {res['ours'][0]:>11.3f} {res['flower'][0]:>13.3f} "
                  f"{res['ours'][0] / res['flower'][0]:>6.2f} {res['ours'][1] / MB:>9.0f} {fl_peak}")
        print("  * computed: the 32-site peak plus 96 more dense replies "
              f"({dense_reply / MB:.1f} MB each); Flower holds every reply at once")


# ---- table 3: bytes and precision --------------------------------------------------------


def bytes_table(sparsity: float) -> None:
    print(f"3. Bytes per message at {sparsity:.0%} conv sparsity (MB; ratio to dense float32)")
    print(f"  {'model':<9} {'message':<34} {'MB':>7} {'vs dense':>8}")
    for arch in ("resnet18", "resnet50"):
        state, masks = make_site(resnet_shapes(arch), sparsity, seed=0)
        dense = serialized_nbytes(state)
        held = {k: pack_mask(m).digest for k, m in masks.items()}
        rows = [("dense float32 (FedAvg)", dense)]
        for vd in ("float32", "float16", "bfloat16"):
            rows.append((f"reply {vd}, bitmap sent", serialized_nbytes(encode_sparse(state, masks, vd))))
            rows.append((f"reply {vd}, mask held (digest)",
                         serialized_nbytes(encode_sparse(state, masks, vd, receiver_digests=held))))
        bitmaps = serialized_nbytes({k: np.packbits(m) for k, m in masks.items()})
        rows.append(("bitmaps alone (no longer downloaded)", bitmaps))
        rows.append(("round-one download, seed digest", serialized_nbytes(encode_initial(state_digest(state)))))
        for label, n in rows:
            print(f"  {arch:<9} {label:<34} {n / MB:>9.4f} {n / dense:>8.5f}")
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(2_000_000) * 0.05).astype(np.float32)
    update = (rng.standard_normal(base.size) * 5e-5).astype(np.float32)  # ~1e-3 of |w|
    trained = base + update
    print("  precision of a trained weight after transport, relative to a site's update "
          "(|Δ| ≈ 1e-3 |w|; RMS error / RMS update):")
    for label, got in (
        ("float16 values", values_f32(to_wire_values(trained, "float16"))),
        ("bfloat16 values", values_f32(to_wire_values(trained, "bfloat16"))),
        ("float16 deltas from the download", base + values_f32(to_wire_values(trained - base, "float16"))),
    ):
        err = np.sqrt(np.mean((got.astype(np.float64) - trained) ** 2)) / np.sqrt(np.mean(update.astype(np.float64) ** 2))
        print(f"    {label:<34} {err:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on our side; Flower's NumPy uses one")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this thread's CPU time (for a loaded machine)")
    p.add_argument("--fresh-pages", action="store_true",
                   help="leave glibc's defaults (freed payloads unmapped, every round faults pages in)")
    p.add_argument("--only", choices=("round", "streaming", "bytes"), help="run one table")
    p.add_argument("--child", choices=("ours", "flower"), help=argparse.SUPPRESS)
    p.add_argument("--sites", type=int, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.sites, args.folder)
        return
    if args.clock == "cpu" and args.threads > 1:
        p.error(f"--clock cpu times the calling thread only; with --threads {args.threads} the "
                f"other threads' work would go uncounted: use --clock wall")
    torch.set_num_threads(args.threads)
    os.environ["BENCH_CLOCK"] = args.clock  # children inherit all three
    os.environ["BENCH_THREADS"] = str(args.threads)
    os.environ["BENCH_FRESH_PAGES"] = "1" if args.fresh_pages else ""
    allocator_as_asked()
    print(f"clock: {args.clock}; torch threads: {args.threads}")
    quiet_flower()
    if args.only in (None, "round"):
        round_table(args.sparsity, args.repeats)
    if args.only in (None, "streaming"):
        streaming_table(args.sparsity)
    if args.only in (None, "bytes"):
        bytes_table(args.sparsity)


if __name__ == "__main__":
    main()
