"""What the strategy sends and counts: known masks, desync repair, the seeded start, the
evaluation broadcast, the DP ledger and resuming from a checkpointed state."""

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
from fedreid.fl.codec import (
    INITIAL_KEY,
    INITIAL_MISMATCH,
    decode_sparse,
    encode_sparse,
    mask_digests,
    state_digest,
)
from fedreid.fl.privacy_ledger import dp_epsilon
from server.checkpoint import load_checkpoint, save_checkpoint
from server.strategy import FedReIDStrategy, StrategyState
from wire.records import record_nbytes, record_to_arrays

pytestmark = pytest.mark.usefixtures("task_identity")

RNG = np.random.default_rng(0)
GLOBAL = {
    "conv.weight": RNG.standard_normal((16, 32)).astype(np.float32),
    "bn.weight": np.ones(16, np.float32),
    "bn.num_batches_tracked": np.array(3, np.int64),
}
NODES = {11: "a", 12: "b"}


def make(**over) -> FedReIDStrategy:
    cfg = load_config([*strategy_overrides("fedklpr"), *[f"{k}={v}" for k, v in over.items()]])
    s = FedReIDStrategy(cfg, GLOBAL, num_sites=2, node_wait_s=0.1)
    s.recorder = Mock()
    return s


def grid() -> Mock:
    g = Mock()
    g.get_node_ids.return_value = list(NODES)
    return g


def instruction(node: int) -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


def reply(node: int, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray], kl: float = 0.5) -> Message:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.size for m in masks.values())
    metrics = {"num-examples": 10, "prune_ratio": 1 - kept / total if total else 0.0,
               "kl_divergence": kl, "cosine_distance": 0.1, "loss": 1.0}
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord(metrics), "meta": ConfigRecord({"site": NODES[node]})})
    return Message(content, reply_to=instruction(node))


def site_update(seed: int, mask: dict[str, np.ndarray] | None = None):
    rng = np.random.default_rng(seed)
    m = mask or {"conv.weight": rng.random((16, 32)) < 0.4}
    state = {k: np.array(v) for k, v in GLOBAL.items()}
    state["conv.weight"] = (GLOBAL["conv.weight"] + 0.1 * rng.standard_normal((16, 32))).astype(np.float32)
    state["conv.weight"] *= m["conv.weight"]
    return state, m


def downloads(s: FedReIDStrategy, rnd: int) -> dict[int, dict[str, np.ndarray]]:
    s.state.node_site.update(NODES)
    msgs = s.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid())
    return {m.metadata.dst_node_id: record_to_arrays(m.content["arrays"]) for m in msgs}


def first_round(s: FedReIDStrategy) -> dict[int, tuple[dict, dict]]:
    ups = {node: site_update(node) for node in NODES}
    s.aggregate_train(1, [reply(n, encode_sparse(st, m), m) for n, (st, m) in ups.items()])
    return ups


def test_known_masks_travel_as_digests_both_ways_and_fold_like_bitmaps():
    s, ref = make(), make()
    ups = first_round(s)
    first_round(ref)
    down = downloads(s, 2)
    for node, (_, m) in ups.items():
        assert "conv.weight::bits" not in down[node] and "conv.weight::digest" in down[node]
        state, masks = decode_sparse(down[node], known_masks=m)  # the site cuts it with its mask
        np.testing.assert_array_equal(masks["conv.weight"], m["conv.weight"])
        np.testing.assert_array_equal(state["conv.weight"],
                                      s.state.global_state["conv.weight"] * m["conv.weight"])
    # round 2, masks unchanged: uploads carry digests only and aggregate exactly like bitmaps
    new = {node: site_update(100 + node, ups[node][1]) for node in NODES}
    slim = [reply(n, encode_sparse(st, m, receiver_digests=mask_digests(down[n])), m) for n, (st, m) in new.items()]
    full = [reply(n, encode_sparse(st, m), m) for n, (st, m) in new.items()]
    assert all("conv.weight::bits" not in r.content["arrays"] for r in slim)
    assert record_nbytes(slim[0].content["arrays"]) < record_nbytes(full[0].content["arrays"])
    _, metrics = s.aggregate_train(2, slim)
    ref.aggregate_train(2, full)
    assert metrics["sites"] == 2
    for key in GLOBAL:
        np.testing.assert_array_equal(s.state.global_state[key], ref.state.global_state[key])


def test_out_of_step_mask_is_rejected_then_resent_dense_never_zero_filled():
    s = make()
    ups = first_round(s)
    down = downloads(s, 2)
    other = {"conv.weight": ~ups[11][1]["conv.weight"]}
    state, _ = site_update(7, other)
    # a site out of step: it believes the coordinator holds its new mask and sends its digest
    bad = encode_sparse(state, other, receiver_digests=mask_digests(encode_sparse(state, other)))
    assert "conv.weight::bits" not in bad and "conv.weight::digest" in down[11]
    before = s.state.global_state["conv.weight"].copy()
    _, metrics = s.aggregate_train(2, [reply(11, bad, other), reply(12, encode_sparse(*ups[12]), ups[12][1])])
    failures = s.recorder.log.call_args.kwargs["failures"]
    assert metrics["sites"] == 1 and failures[0]["site"] == "a" and "digest" in failures[0]["reason"]
    assert "a" not in s.flat.store.sites()  # forgotten: the next download is whole
    down3 = downloads(s, 3)
    assert "conv.weight::dense" in down3[11] and "conv.weight::digest" in down3[12]
    assert not np.array_equal(before, s.state.global_state["conv.weight"])  # b still counted


def test_error_reply_and_new_node_id_resynchronise_masks():
    s = make()
    first_round(s)
    err = Message(Error(code=2, reason="boom"), reply_to=instruction(12))
    s.state.node_site.update(NODES)
    s.aggregate_train(2, [err])
    assert s.flat.store.sites() == ["a"]
    downloads(s, 3)  # a on node 11
    s.state.node_site.pop(11)
    s.state.node_site[13] = "a"  # a is back as another node
    g = Mock()
    g.get_node_ids.return_value = [12, 13]
    msgs = list(s.configure_train(4, ArrayRecord(), ConfigRecord(), g))
    arrays = {m.metadata.dst_node_id: m.content["arrays"] for m in msgs}
    assert "conv.weight::dense" in arrays[13]


@pytest.mark.parametrize("kl", [float("nan"), -0.5])
def test_nan_or_negative_signal_is_rejected(kl):
    s = make()
    good, m = site_update(1)
    _, metrics = s.aggregate_train(1, [reply(11, encode_sparse(good, m), m),
                                       reply(12, encode_sparse(good, m), m, kl=kl)])
    assert metrics["sites"] == 1
    assert "kl_divergence" in s.recorder.log.call_args.kwargs["failures"][0]["reason"]


def test_round_one_and_round_zero_evaluation_send_only_the_initial_digest():
    s = make()
    down = downloads(s, 1)
    assert all(set(d) == {INITIAL_KEY} for d in down.values())
    assert bytes(down[11][INITIAL_KEY]).hex() == state_digest(GLOBAL)
    ev = list(s.configure_evaluate(0, ArrayRecord(), ConfigRecord(), grid()))
    assert set(ev[0].content["arrays"]) == {INITIAL_KEY}
    assert record_nbytes(ev[0].content["arrays"]) < 200
    off = make(**{"codec.seeded_start": "false"})
    assert "conv.weight::dense" in downloads(off, 1)[11]
    first_round(s)
    ev = list(s.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid()))
    assert "conv.weight::dense" in ev[0].content["arrays"]  # trained: the model goes out


def test_a_site_that_cannot_rebuild_the_initial_model_gets_it_sent():
    s = make()
    s.state.node_site.update(NODES)
    msgs = list(s.configure_train(1, ArrayRecord(), ConfigRecord(), grid()))
    for m in msgs:
        m.metadata.__dict__["_message_id"] = f"m{m.metadata.dst_node_id}"
    ups = {n: site_update(n) for n in NODES}
    mismatch = Message(Error(code=3, reason=f"ValueError: {INITIAL_MISMATCH}: ..."), reply_to=msgs[0])
    sent_again = []

    def exchange(g, batch, timeout, phase, node_site):
        if not sent_again and batch is msgs:
            sent_again.append(None)
            return [mismatch, reply(12, encode_sparse(*ups[12]), ups[12][1])]
        sent_again.append(batch)
        assert all("conv.weight::dense" in m.content["arrays"] for m in batch)
        return [reply(int(m.metadata.dst_node_id), encode_sparse(*ups[11]), ups[11][1]) for m in batch]

    s.delivery.exchange = exchange
    before = s._train.down
    got = list(s._exchange(grid(), msgs, 1.0, "round 1 train", s._train))
    # the sites that rebuilt it are folded first, then those sent the model (in site order)
    assert [int(r.metadata.src_node_id) for r in got] == [12, 11] and not any(r.has_error() for r in got)
    assert len(sent_again[1]) == 1 and s._train.down > before + s.dense_nbytes / 2


def test_evaluation_bytes_are_counted_and_half_precision_halves_them():
    full, half = make(), make(**{"codec.value_dtype": "float16"})
    for s in (full, half):
        first_round(s)
        s.state.node_site.update(NODES)
        s.delivery.exchange = lambda g, msgs, *a: []
        s._evaluate(grid(), 1, 1.0, Mock())
    fb, hb = full._eval_bytes, half._eval_bytes
    assert fb["bytes_down"] == fb["dense_bytes"] == 2 * full.dense_nbytes and fb["bytes_up"] == 0
    # per site: the conv weights' 2 bytes per value saved, less one small shape array
    assert fb["bytes_down"] - hb["bytes_down"] > 2 * (16 * 32 * 2 - 200)
    logged = full.recorder.log.call_args
    assert logged.args[0] == "evaluate" and logged.kwargs["bytes_down"] == fb["bytes_down"]


def test_dp_round_is_accounted_by_dp_accounting():
    s = make(**{"dp.enabled": "true", "dp.noise_multiplier": 1.5, "dp.clipping_norm": 1.0})
    first_round(s)
    record = s.recorder.log.call_args.kwargs
    assert record["dp_epsilon"] == pytest.approx(dp_epsilon(1.5, 1e-5, [1.0]))
    assert record["dp_noise_std_max"] > 0 and s.state.dp_rates == [1.0]


def test_a_resumed_dp_run_keeps_counting_epsilon_from_the_checkpoint(tmp_path):
    """The ledger's rates travel in the checkpoint: ε after a resume covers the rounds before it."""
    overrides = {"dp.enabled": "true", "dp.noise_multiplier": 1.5, "dp.clipping_norm": 1.0}
    s = make(**overrides)
    first_round(s)
    s._sync_state(1)
    save_checkpoint(tmp_path, s.state, s.rng)
    resumed = make(**overrides)
    resumed.state = load_checkpoint(tmp_path)[0]
    assert resumed.state.dp_rates == [1.0]
    assert resumed.ledger.epsilon(1e-5) == pytest.approx(dp_epsilon(1.5, 1e-5, [1.0]))


def test_adopting_a_checkpointed_state_restores_masks_and_global():
    s = make()
    ups = first_round(s)
    masks = {site: s.flat.site_masks(site) for site in s.flat.store.sites()}
    resumed = make()
    resumed.state = StrategyState(global_state=s.state.global_state, site_masks=masks, last_round=1)
    assert downloads(resumed, 2)[11].keys() == downloads(s, 2)[11].keys()
    for key in ("conv.weight::values", "conv.weight::digest"):
        np.testing.assert_array_equal(downloads(resumed, 2)[11][key], downloads(s, 2)[11][key])
    np.testing.assert_array_equal(masks["a"]["conv.weight"], ups[11][1]["conv.weight"])
