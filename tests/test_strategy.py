"""The server strategy with hand-made replies: aggregation, validation, personalisation."""

from __future__ import annotations

from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.fl.codec import encode_sparse
from server.strategy import FedReIDStrategy
from wire.records import record_nbytes

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = {
    "conv.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
    "bn.running_mean": np.zeros(2, dtype=np.float32),
    "bn.num_batches_tracked": np.array(10, dtype=np.int64),
}


def make_strategy(strategy="fedklpr", **over):
    cfg = load_config([*strategy_overrides(strategy), *[f"{k}={v}" for k, v in over.items()]])
    return FedReIDStrategy(cfg, GLOBAL, num_sites=2, node_wait_s=0.1)


def instruction(node: int) -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{node}"  # as Flower's grids do
    return msg


def reply(node, site, state, masks, *, prune_ratio=None, klaw=0.5, n=10, arrays=None, drop_metric=None):
    arrays = arrays if arrays is not None else encode_sparse(state, masks)
    if prune_ratio is None:
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.size for m in masks.values())
        prune_ratio = 1 - kept / total if total else 0.0
    metrics = {"num-examples": n, "prune_ratio": prune_ratio, "kl_divergence": klaw,
               "cosine_distance": 0.1, "loss": 1.0}
    if drop_metric:
        metrics.pop(drop_metric)
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "metrics": MetricRecord(metrics),
        "meta": ConfigRecord({"site": site}),
    })
    return Message(content, reply_to=instruction(node))


def site_state(scale: float):
    return {"conv.weight": GLOBAL["conv.weight"] * scale, "bn.running_mean": np.full(2, scale, np.float32),
            "bn.num_batches_tracked": np.array(20, dtype=np.int64)}


def test_sas_with_klpwa_matches_hand_computation():
    s = make_strategy(**{"agg.combine": "product", "agg.praw_form": "ratio"})
    m1 = {"conv.weight": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)}  # sparsity 5/8
    m2 = {"conv.weight": np.array([[1, 0, 1, 0], [1, 1, 0, 0]], bool)}  # sparsity 4/8
    r1 = reply(11, "a", {**site_state(2.0), "conv.weight": GLOBAL["conv.weight"] * 2 * m1["conv.weight"]}, m1, klaw=1.0)
    r2 = reply(12, "b", {**site_state(3.0), "conv.weight": GLOBAL["conv.weight"] * 3 * m2["conv.weight"]}, m2, klaw=3.0)
    arrays, metrics = s.aggregate_train(1, [r1, r2])
    # KLAW (more divergence, more weight): [1/4, 3/4]; PRAW (ratio): [5/9, 4/9];
    # product normalised: a ∝ [5/36, 12/36] → [5/17, 12/17]
    a1, a2 = 5 / 17, 12 / 17
    w = GLOBAL["conv.weight"]
    expected = np.array(w)
    for j in np.ndindex(w.shape):
        num = a1 * m1["conv.weight"][j] * 2 * w[j] + a2 * m2["conv.weight"][j] * 3 * w[j]
        den = a1 * m1["conv.weight"][j] + a2 * m2["conv.weight"][j]
        expected[j] = num / den if den else w[j]  # no site kept it: previous global value
    got = arrays["conv.weight"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(arrays["bn.running_mean"].numpy(), a1 * 2 + a2 * 3, rtol=1e-6)
    assert arrays["bn.num_batches_tracked"].numpy().dtype == np.int64
    assert set(s.flat.store.sites()) == {"a", "b"}
    assert metrics["sites"] == 2


def corruptions():
    m = {"conv.weight": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)}
    st = {**site_state(1.0), "conv.weight": GLOBAL["conv.weight"] * m["conv.weight"]}
    good = encode_sparse(st, m)
    nan = dict(good, **{"conv.weight::values": np.array([np.nan, 1, 2], np.float32)})
    short = dict(good, **{"conv.weight::values": np.array([1, 2], np.float32)})
    shape = dict(good, **{"bn.running_mean::dense": np.zeros(3, np.float32)})
    dtype = dict(good, **{"bn.running_mean::dense": np.zeros(2, np.float64)})
    missing = {k: v for k, v in good.items() if not k.startswith("bn.running_mean")}
    return st, m, {
        "non-finite": dict(arrays=nan),
        "bitmap-values": dict(arrays=short),
        "shape": dict(arrays=shape),
        "dtype": dict(arrays=dtype),
        "missing key": dict(arrays=missing),
        "false sparsity": dict(prune_ratio=0.1),
        "missing metric": dict(drop_metric="kl_divergence"),
    }


@pytest.mark.parametrize("kind", list(corruptions()[2]))
def test_bad_reply_is_dropped_and_others_aggregated(kind):
    st, m, cases = corruptions()
    s = make_strategy()
    good = reply(11, "good", st, m)
    bad = reply(12, "bad", st, m, **cases[kind])
    arrays, metrics = s.aggregate_train(1, [good, bad])
    assert arrays is not None and metrics["sites"] == 1
    assert s.flat.store.sites() == ["good"]


def test_error_replies_and_all_bad_keep_global():
    s = make_strategy()
    err = Message(Error(code=2, reason="boom"), reply_to=instruction(11))
    st, m, cases = corruptions()
    bad = reply(12, "bad", st, m, **cases["non-finite"])
    recorder = Mock()
    s.recorder = recorder
    arrays, metrics = s.aggregate_train(1, [err, bad])
    assert arrays is None and metrics is None
    np.testing.assert_array_equal(s.state.global_state["conv.weight"], GLOBAL["conv.weight"])
    logged = recorder.log.call_args.kwargs
    reasons = " ".join(f["reason"] for f in logged["failures"])
    assert "boom" in reasons and "NaN" in reasons


def test_update_norm_limit_rejects_inflated_update():
    s = make_strategy(**{"agg.max_update_norm": 5.0})
    ok = reply(11, "ok", site_state(1.0), {})
    huge = reply(12, "huge", site_state(100.0), {})
    arrays, metrics = s.aggregate_train(1, [ok, huge])
    assert metrics["sites"] == 1


def test_configure_train_sends_each_site_its_personalised_sparse_model():
    big = {"conv.weight": np.ones((64, 64), np.float32)}  # np.save headers dominate tiny arrays
    cfg = load_config(strategy_overrides("fedklpr"))
    s = FedReIDStrategy(cfg, big, num_sites=2, node_wait_s=0.1)
    m = {"conv.weight": np.random.default_rng(0).random((64, 64)) < 0.3}
    pruned = reply(11, "a", {"conv.weight": big["conv.weight"] * m["conv.weight"]}, m)
    dense = reply(12, "b", big, {})
    s.aggregate_train(1, [pruned, dense])
    grid = Mock()
    grid.get_node_ids.return_value = [11, 12]
    s.state.node_site.update({11: "a", 12: "b"})  # admitted
    msgs = {msg.metadata.dst_node_id: msg for msg in s.configure_train(2, ArrayRecord(), ConfigRecord(), grid)}
    a, b = msgs[11].content["arrays"], msgs[12].content["arrays"]
    # a's mask is held on both sides: its digest travels instead of the bitmap
    assert "conv.weight::digest" in a and "conv.weight::bits" not in a and "conv.weight::dense" in b
    assert record_nbytes(a) < 0.5 * record_nbytes(b)
    assert msgs[11].content["config"]["server-round"] == 2
    assert s._train.down == record_nbytes(a) + record_nbytes(b)


@pytest.mark.parametrize("weighting", ["samples", "uniform", "cdw", "klpwa"])
def test_weightings_sum_to_one(weighting):
    s = make_strategy(**{"agg.weighting": weighting})
    r = [reply(11, "a", site_state(1.0), {}, n=10), reply(12, "b", site_state(2.0), {}, n=30)]
    s.aggregate_train(1, r)
    w = np.array([s.flat.summary.weights[k] for k in ("a", "b")])
    assert w.sum() == pytest.approx(1.0)
    if weighting == "samples":
        np.testing.assert_allclose(w, [0.25, 0.75])


def test_sampling_keeps_64_bit_node_ids_exact():
    """Real node ids reach 2**64 - 1; sampling them through numpy floats would corrupt them."""
    s = make_strategy(**{"fl.fraction_train": 0.5})
    nodes = [2**64 - 1, 2**63 + 12345, 16006583747849887001, 7]
    grid = Mock()
    grid.get_node_ids.return_value = nodes
    s.state.node_site.update({n: f"site{i}" for i, n in enumerate(nodes)})  # admitted
    s.min_sites = 1
    for _ in range(5):
        picked = s._sample(grid, 1.0)
        assert picked == sorted(nodes)
        assert set(s._sample(grid, 0.5)) <= set(nodes)
