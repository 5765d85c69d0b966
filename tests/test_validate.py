"""check_reply: one typed result for a good reply, every problem for a bad one."""

import numpy as np
import pytest

from fedreid.fl.codec import decode_sparse, encode_sparse, pack_mask
from fedreid.fl.validate import CheckedReply, ReplyRejected, check_reply, update_norm

F32 = np.float32


def setup():
    rng = np.random.default_rng(0)
    g = {"conv": rng.standard_normal((4, 3, 3)).astype(F32), "bn.weight": np.ones(4, F32),
         "bn.running_mean": np.zeros(4, F32), "bn.num_batches_tracked": np.array(2, np.int64)}
    mask = rng.random((4, 3, 3)) < 0.5
    state = {**g, "conv": (g["conv"] + 0.1) * mask, "bn.running_mean": np.full(4, 3.0, F32)}
    metrics = {"num-examples": 10, "prune_ratio": float(1 - mask.mean()), "kl_divergence": 0.2,
               "cosine_distance": 0.05, "loss": 1.5}
    spec = {"shapes": {k: v.shape for k, v in g.items()}, "dtypes": {k: v.dtype for k, v in g.items()}}
    return g, state, {"conv": mask}, metrics, spec


def test_good_reply_is_typed_and_unexpanded():
    g, state, masks, metrics, spec = setup()
    arrays = encode_sparse(state, masks)
    reply = check_reply(arrays, metrics, **spec)
    assert isinstance(reply, CheckedReply)
    assert set(reply.sparse) == {"conv"} and reply.sparse["conv"].values is arrays["conv::values"]
    assert reply.sparsity == pytest.approx(metrics["prune_ratio"])
    assert reply.changed == {"conv"} and reply.metrics["loss"] == 1.5


@pytest.mark.parametrize("key, value, needle", [
    ("kl_divergence", float("nan"), "not finite"),
    ("kl_divergence", -0.1, "must be >= 0"),
    ("cosine_distance", -1e-3, "must be >= 0"),
    ("num-examples", 0, "must be positive"),
    ("prune_ratio", 1.5, "[0, 1]"),
    ("prune_ratio", None, "missing"),
    ("kl_divergence", True, "not a number"),
])
def test_bad_metrics_are_rejected_not_clamped(key, value, needle):
    g, state, masks, metrics, spec = setup()
    bad = dict(metrics)
    if value is None:
        del bad[key]
    else:
        bad[key] = value
    with pytest.raises(ReplyRejected, match=needle.replace("[", r"\[").replace("]", r"\]")):
        check_reply(encode_sparse(state, masks), bad, **spec)


def test_rounding_below_zero_reads_as_zero():
    g, state, masks, metrics, spec = setup()
    reply = check_reply(encode_sparse(state, masks), {**metrics, "cosine_distance": -1e-12}, **spec)
    assert reply.metrics["cosine_distance"] == 0.0


def test_every_problem_is_listed():
    g, state, masks, metrics, spec = setup()
    arrays = encode_sparse(state, masks)
    arrays["conv::values"] = arrays["conv::values"].copy()
    arrays["conv::values"][0] = np.nan
    arrays["bn.weight::dense"] = np.zeros(5, F32)
    with pytest.raises(ReplyRejected) as err:
        check_reply(arrays, {**metrics, "kl_divergence": float("inf")}, **spec)
    text = " | ".join(err.value.problems)
    assert "kl_divergence" in text and "NaN" in text and "dense shape" in text
    assert len(err.value.problems) == 3


def test_declared_sparsity_and_held_masks():
    g, state, masks, metrics, spec = setup()
    with pytest.raises(ReplyRejected, match="declared sparsity"):
        check_reply(encode_sparse(state, masks), {**metrics, "prune_ratio": 0.9}, **spec)
    held = {"conv": pack_mask(masks["conv"])}
    arrays = encode_sparse(state, masks, receiver_digests={"conv": held["conv"].digest})
    assert "conv::bits" not in arrays
    reply = check_reply(arrays, metrics, known_masks=held, **spec)
    assert reply.changed == frozenset() and reply.sparsity == pytest.approx(metrics["prune_ratio"])
    with pytest.raises(ReplyRejected, match="no mask is held"):
        check_reply(arrays, metrics, **spec)
    other = {"conv": pack_mask(~masks["conv"])}
    with pytest.raises(ReplyRejected, match="mask digest"):
        check_reply(arrays, metrics, known_masks=other, **spec)


def test_update_norm_matches_dense_computation_and_limits():
    g, state, masks, metrics, spec = setup()
    arrays = encode_sparse(state, masks)
    decoded, _ = decode_sparse(arrays)
    want = np.sqrt(sum(float(np.sum((decoded[k].astype(np.float64) - g[k]) ** 2))
                       for k in ("conv", "bn.weight")))  # running statistics excluded
    reply = check_reply(arrays, metrics, **spec)
    assert update_norm(reply, g) == pytest.approx(want, rel=1e-9)
    assert check_reply(arrays, metrics, max_update_norm=want * 1.01, global_state=g, **spec)
    with pytest.raises(ReplyRejected, match="update norm"):
        check_reply(arrays, metrics, max_update_norm=want * 0.99, global_state=g, **spec)
    with pytest.raises(ValueError, match="needs global_state"):
        check_reply(arrays, metrics, max_update_norm=1.0, **spec)


def test_update_norm_is_the_same_for_a_reply_sent_as_differences():
    g, state, masks, metrics, spec = setup()
    plain = check_reply(encode_sparse(state, masks), metrics, **spec)
    delta = check_reply(encode_sparse(state, masks, reference=g), metrics, **spec)
    assert delta.sparse["conv"].delta
    assert update_norm(delta, g) == pytest.approx(update_norm(plain, g), rel=1e-6)
