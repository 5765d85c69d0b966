"""FlatSas (streaming, flat buffers) against SasAccumulator (the reference) and the rules."""

import zlib

import numpy as np
import pytest

from fedreid.fl import scatter
from fedreid.fl.codec import MaskMismatch, decode_sparse, encode_sparse, pack_mask
from fedreid.fl.dp import GaussianNoise, NoiseScale, add_noise
from fedreid.fl.flat_sas import FlatSas
from fedreid.fl.mask_store import MaskStore
from fedreid.fl.sas import SasAccumulator
from fedreid.fl.weight_rules import FixedWeights, KlpwaWeights, ScoreWeights, weight_rule

F32 = np.float32
SHAPES = {"conv": (7, 3, 3, 3), "big": (3000,), "empty": (0, 3), "f64": (9,), "half": (5,),
          "bn.weight": (7,), "bn.running_mean": (7,)}
MASKED = ("conv", "big", "empty", "f64", "half")


def global_state(rng):
    g = {k: rng.standard_normal(s).astype(F32) for k, s in SHAPES.items()}
    g["f64"] = g["f64"].astype(np.float64)
    g["half"] = g["half"].astype(np.float16)
    g["nbt"] = np.array(3, np.int64)
    return g


def sites(rng, g, n=4):
    """Random sites with the awkward cases: an all-pruned tensor at one site, a masked
    tensor sent dense (kept all) by another, zero-size tensors, float64/float16 tensors."""
    out = []
    for k in range(n):
        masks = {name: rng.random(SHAPES[name]) < 0.4 for name in MASKED}
        if k == 1:
            masks["conv"][...] = False
        state = {name: rng.standard_normal(s).astype(g[name].dtype) for name, s in SHAPES.items()}
        for name, m in masks.items():
            state[name] = (state[name] * m).astype(g[name].dtype)
        state["nbt"] = np.array(10 * k + 1, np.int64)
        if k == 0:
            del masks["big"]
        metrics = {"kl_divergence": float(rng.random()), "prune_ratio": float(rng.random()),
                   "num-examples": float(rng.integers(1, 100)), "cosine_distance": float(rng.random())}
        out.append((state, masks, metrics))
    return out


def reference(g, site_list, weights, value_dtype, mask_aware=True, int_rule="mean", noise=None):
    acc = SasAccumulator(g, mask_aware=mask_aware, int_rule=int_rule)
    scale = NoiseScale(g, mask_aware)
    for (state, masks, _), w in zip(site_list, weights, strict=True):
        got = acc.add_encoded(encode_sparse(state, masks, value_dtype=value_dtype), float(w))
        scale.add(float(w), got)
    out = acc.result()
    if noise is not None:
        out, _ = add_noise(out, scale.scales(), noise.noise_multiplier, noise.clipping_norm, noise.rng)
    return out


def assert_close(got, want):
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        tol = 1e-3 if v.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(got[k].astype(np.float64), v.astype(np.float64), rtol=tol, atol=tol,
                                   err_msg=k)


RULES = {
    "klpwa-convex": KlpwaWeights(),
    "klpwa-product": KlpwaWeights(combine="product"),
    "klpwa-less-density": KlpwaWeights("less_divergence_more_weight", "density", beta=0.3),
    "samples": ScoreWeights("num-examples"),
    "cdw": ScoreWeights("cosine_distance"),
    "uniform": ScoreWeights(None),
}


@pytest.mark.parametrize("value_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_equals_sas_accumulator(rule_name, value_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{rule_name}/{value_dtype}".encode()))
    g = global_state(rng)
    site_list = sites(rng, g)
    rule = RULES[rule_name]
    want = reference(g, site_list, rule.reference([m for *_, m in site_list]), value_dtype)
    flat = FlatSas(g, rule)
    for i, (state, masks, metrics) in enumerate(site_list):
        flat.fold(f"s{i}", encode_sparse(state, masks, value_dtype=value_dtype), metrics)
    assert_close(flat.result(), want)
    np.testing.assert_allclose(list(flat.summary.weights.values()),
                               rule.reference([m for *_, m in site_list]), rtol=1e-12)


BACKENDS = ["torch"] + (["numba"] if scatter.BACKEND == "numba" else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_kernels(backend, dtype):
    rng = np.random.default_rng(7)
    pos = np.flatnonzero(rng.random(1000) < 0.4).astype(np.int32)
    values = rng.standard_normal(pos.size).astype(dtype)
    targets = [rng.standard_normal(1000).astype(dtype) for _ in range(3)]
    want = [t.copy() for t in targets]
    for t, w in zip(want, (0.5, 2.0, -1.0), strict=True):
        t[pos] += dtype(w) * values
    scatter.fold(targets, pos, values, [0.5, 2.0, -1.0], backend)
    for t, w in zip(targets, want, strict=True):
        np.testing.assert_allclose(t, w, rtol=1e-6, atol=1e-6)
    t = np.zeros(1000, dtype)
    scatter.add_at(t, pos, 0.25, backend)
    scatter.fill_at(t, pos[:10], 3.0, backend)
    expected = np.zeros(1000, dtype)
    expected[pos] = 0.25
    expected[pos[:10]] = 3.0
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_array_equal(scatter.take(targets[0], pos, backend), targets[0][pos])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_divide_or_keep_divides_where_kept_and_keeps_the_previous_value_elsewhere(backend, dtype):
    rng = np.random.default_rng(8)
    den = rng.random(1000).astype(dtype) + dtype(0.5)
    den[rng.random(1000) < 0.3] = 0
    num = np.where(den != 0, rng.standard_normal(1000), 0).astype(dtype)  # nobody kept: 0
    previous = rng.standard_normal(1000).astype(dtype)
    want = np.where(den != 0, num / np.where(den != 0, den, 1), previous)
    got_den = den.copy()
    scatter.divide_or_keep(num, got_den, previous, np.empty(1000, np.bool_), backend)
    np.testing.assert_array_equal(num, want)  # the same float division, bit for bit
    np.testing.assert_array_equal(got_den, np.where(den != 0, den, 1))  # DP divides by it next


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [0, 1, 511, 512, 1537])
def test_quantise_rounds_each_block_by_its_own_scale_alike_on_every_backend(backend, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    x[512:1024] = 0  # an all-zero block: scale 0, q 0
    q, scale = scatter.quantise(x, 512, backend)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.size == -(-n // 512)
    ref_q, ref_scale = scatter.quantise(x, 512, "torch")
    np.testing.assert_array_equal(scale, ref_scale)
    np.testing.assert_array_equal(q, ref_q)
    blocks = np.repeat(scale, 512)[:n]
    assert np.all(np.abs(q * blocks - x) <= blocks / 2 + 1e-12) and np.abs(q).max(initial=0) <= 127
    bad = x.copy() if n else np.zeros(1, np.float32)
    bad[-1] = np.nan
    assert scatter.quantise(bad, 512, backend) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_towards_moves_the_view_as_a_receiver_adds_the_step(backend):
    from fedreid.fl.codec import dequantise_int8

    rng = np.random.default_rng(9)
    view = rng.standard_normal(1300).astype(np.float32)
    target = (view + 1e-3 * rng.standard_normal(1300)).astype(np.float32)
    moved = view.copy()
    q, scale = scatter.step_towards(moved, target, 512, backend)
    np.testing.assert_array_equal(moved, view + dequantise_int8(q, scale))  # bit for bit
    assert np.abs(moved - target).max() <= scale.max() / 2 + 1e-7
    bad = target.copy()
    bad[-1] = np.inf
    untouched = view.copy()
    assert scatter.step_towards(untouched, bad, 512, backend) is None
    np.testing.assert_array_equal(untouched, view)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_aware", [True, False])
@pytest.mark.parametrize("int_rule", ["mean", "max"])
def test_fixed_weights_modes_and_dp(mask_aware, int_rule, backend):
    rng = np.random.default_rng(3)
    g = global_state(rng)
    site_list = sites(rng, g)
    weights = [0.5, 0.0, 2.0, 1.0]  # a zero-weight site does not count as keeping anything
    want = reference(g, site_list, weights, "float32", mask_aware, int_rule,
                     GaussianNoise(1.5, 0.2, np.random.default_rng(9)))
    flat = FlatSas(g, FixedWeights(), mask_aware=mask_aware, int_rule=int_rule,
                   noise=GaussianNoise(1.5, 0.2, np.random.default_rng(9)), backend=backend)
    for i, ((state, masks, _), w) in enumerate(zip(site_list, weights, strict=True)):
        flat.fold(f"s{i}", encode_sparse(state, masks), w)
    assert_close(flat.result(), want)
    assert flat.summary.noise_std_max > 0


def test_hand_computed_and_previous_value_where_nobody_kept():
    g = {"w": np.array([9, 9, 9, 9], F32), "nbt": np.array(7, np.int64)}
    flat = FlatSas(g)
    flat.fold("a", encode_sparse({"w": np.array([1, 2, 0, 0], F32), "nbt": np.array(10)},
                                 {"w": np.array([1, 1, 0, 0], bool)}), 0.25)
    flat.fold("b", encode_sparse({"w": np.array([3, 0, 5, 0], F32), "nbt": np.array(20)},
                                 {"w": np.array([1, 0, 1, 0], bool)}), 0.75)
    out = flat.result()
    np.testing.assert_array_equal(out["w"], np.array([2.5, 2.0, 5.0, 9.0], F32))
    assert out["nbt"].dtype == np.int64 and int(out["nbt"]) == 18


def test_rule_weights_are_proportional_to_the_reference_including_zero_columns():
    rng = np.random.default_rng(4)
    cases = []
    for _ in range(40):
        n = int(rng.integers(1, 6))
        kl = rng.random(n) * (rng.random(n) < 0.6) * (rng.random() < 0.8)
        ratio = rng.random(n) * (rng.random(n) < 0.6) * (rng.random() < 0.8)
        cases.append([{"kl_divergence": a, "prune_ratio": b, "num-examples": 1.0 + a,
                       "cosine_distance": b} for a, b in zip(kl, ratio, strict=True)])
    rules = [*RULES.values(), KlpwaWeights(beta=0.0), KlpwaWeights(beta=1.0),
             KlpwaWeights(combine="product", praw_form="density")]
    for signals in cases:
        for rule in rules:
            scores = np.array([rule.scores(s) for s in signals])
            a = rule.weights(scores)
            np.testing.assert_allclose(a / a.sum(), rule.reference(signals), rtol=1e-12, atol=1e-15)


def test_dead_numerators_are_dropped():
    """Convex KLPWA: the uniform-fallback numerator is never built once both columns have a
    positive total; product KLPWA keeps one numerator."""
    g = {"w": np.zeros(4, F32)}
    rep = encode_sparse({"w": np.ones(4, F32)}, {"w": np.ones(4, bool)})
    convex = FlatSas(g, KlpwaWeights(), one_pass=False)
    convex.fold("a", rep, {"kl_divergence": 0.0, "prune_ratio": 0.5})  # KL column still 0
    assert convex.live_numerators == 2  # ratio + uniform fallback
    convex.fold("b", rep, {"kl_divergence": 0.2, "prune_ratio": 0.5})
    assert convex.live_numerators == 2  # KL + ratio; the fallback is dead
    product = FlatSas(g, KlpwaWeights(combine="product"), one_pass=False)
    for i in range(3):
        product.fold(f"s{i}", rep, {"kl_divergence": 0.1 * (i + 1), "prune_ratio": 0.5})
    assert product.live_numerators == 1


def test_rounds_with_held_masks_and_downloads():
    rng = np.random.default_rng(5)
    g = global_state(rng)
    site_list = sites(rng, g, n=3)
    flat = FlatSas(g, KlpwaWeights(), store=MaskStore(cache_bytes=2000))  # partly cached
    for i, (state, masks, metrics) in enumerate(site_list):
        flat.fold(f"s{i}", encode_sparse(state, masks), metrics)
    new = flat.result()
    # Downloads: values of global ⊙ mask, a digest instead of the bitmap, the rest dense.
    for i, (_, masks, _) in enumerate(site_list):
        down = flat.download_for(f"s{i}", value_dtype="float32")
        assert not any(k.endswith("::bits") for k in down)
        assert {k[: -len("::digest")] for k in down if k.endswith("::digest")} == set(masks)
        state, got_masks = decode_sparse(down, known_masks=masks)
        for name, m in masks.items():
            np.testing.assert_array_equal(got_masks[name], m)
            want = (new[name].astype(np.float32) * m)
            np.testing.assert_array_equal(state[name], want)
        with pytest.raises(MaskMismatch):
            decode_sparse(down)  # a receiver without the mask cannot place the values
    # Round 2: each site refers to its held mask by digest; same result as sending bits.
    replies = []
    for i, (state, masks, _) in enumerate(site_list):
        held = {k: m.digest for k, m in flat.known_masks(f"s{i}").items()}
        rep = encode_sparse(state, masks, receiver_digests=held)
        assert not any(k.endswith("::bits") for k in rep)
        replies.append(rep)
    for i, rep in enumerate(replies):
        flat.fold(f"s{i}", rep, site_list[i][2])
    second = flat.result()
    ref = FlatSas(new, KlpwaWeights())
    for i, (state, masks, metrics) in enumerate(site_list):
        ref.fold(f"s{i}", encode_sparse(state, masks), metrics)
    assert_close(second, ref.result())


def test_mask_mismatch_is_detected_and_forget_repairs():
    g = {"w": np.arange(8, dtype=F32)}
    flat = FlatSas(g)
    m1 = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    flat.fold("a", encode_sparse({"w": g["w"] * m1}, {"w": m1}), 1.0)
    flat.result()
    m2 = m1.copy()
    m2[0] = False
    stale = encode_sparse({"w": g["w"] * m2}, {"w": m2})
    stale = {k: v for k, v in stale.items() if not k.endswith("::bits")}
    stale["w::digest"] = np.frombuffer(pack_mask(m2).digest, np.uint8)
    with pytest.raises(MaskMismatch, match="site a") as err:
        flat.fold("a", stale, 1.0)
    assert err.value.names == ("w",)
    flat.forget("a")
    assert set(flat.download_for("a")) == {"w::dense"}  # the repair: full model, no digest
    flat.fold("a", encode_sparse({"w": g["w"] * m2}, {"w": m2}), 1.0)  # bits sent again
    np.testing.assert_array_equal(flat.site_masks("a")["w"], m2)


def test_errors_leave_the_round_clean():
    g = {"w": np.zeros(4, F32), "n": np.array(0, np.int64)}
    flat = FlatSas(g, KlpwaWeights())
    good = encode_sparse({"w": np.ones(4, F32), "n": np.array(1)}, {"w": np.ones(4, bool)})
    metrics = {"kl_divergence": 0.1, "prune_ratio": 0.0}
    with pytest.raises(ValueError, match="no site"):
        flat.result()
    with pytest.raises(ValueError, match="site x: keys missing"):
        flat.fold("x", {k: v for k, v in good.items() if not k.startswith("n::")}, metrics)
    int_masked = {k: v for k, v in good.items() if k != "n::dense"}
    int_masked.update({"n::bits": np.packbits([True]), "n::values": np.ones(1, F32),
                       "n::shape": np.zeros(0, np.int64)})
    with pytest.raises(ValueError, match="site x: mask on non-float"):
        flat.fold("x", int_masked, metrics)
    with pytest.raises(ValueError, match="kl_divergence"):
        flat.fold("x", good, {"kl_divergence": -1.0, "prune_ratio": 0.0})
    flat.fold("a", good, metrics)
    with pytest.raises(ValueError, match="already folded"):
        flat.fold("a", good, metrics)
    np.testing.assert_array_equal(flat.result()["w"], np.ones(4, F32))
    zero = FlatSas(g)
    zero.fold("a", good, 0.0)
    with pytest.raises(ValueError, match="sum to 0"):
        zero.result()


def test_result_views_survive_the_next_round():
    g = {"w": np.zeros(3, F32)}
    flat = FlatSas(g)
    flat.fold("a", {"w::dense": np.ones(3, F32)}, 1.0)
    first = flat.result()
    flat.fold("a", {"w::dense": np.full(3, 2.0, F32)}, 1.0)
    flat.result()
    np.testing.assert_array_equal(first["w"], np.ones(3, F32))


def test_weight_rule_names():
    assert isinstance(weight_rule("klpwa", combine="product"), KlpwaWeights)
    assert weight_rule("samples").metric == "num-examples"
    assert weight_rule("cdw").metric == "cosine_distance"
    with pytest.raises(ValueError, match="weighting"):
        weight_rule("median")
    with pytest.raises(ValueError, match="beta"):
        KlpwaWeights(beta=2.0)


def test_small_tensors_sent_dense_fold_in_one_block():
    """BN-like tensors (1-D, a float16 one among them) sent dense take the batched path."""
    rng = np.random.default_rng(6)
    g = {"conv": rng.standard_normal((6, 2, 3, 3)).astype(F32), "bn.weight": np.ones(6, F32),
         "bn.bias": np.zeros(6, F32), "bn.scale16": np.ones(3, np.float16),
         "fc": rng.standard_normal((4, 6)).astype(F32), "nbt": np.array(1, np.int64)}
    site_list = []
    for k in range(3):
        state = {n: (v + rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v
                 for n, v in g.items()}
        mask = rng.random((6, 2, 3, 3)) < 0.5
        state["conv"] = state["conv"] * mask
        site_list.append((state, {"conv": mask}, {"kl_divergence": 0.1 * (k + 1), "prune_ratio": 0.5}))
    rule = KlpwaWeights()
    want = reference(g, site_list, rule.reference([m for *_, m in site_list]), "float16")
    flat = FlatSas(g, rule)
    for i, (state, masks, metrics) in enumerate(site_list):
        flat.fold(f"s{i}", encode_sparse(state, masks, value_dtype="float16"), metrics)
    assert_close(flat.result(), want)


def test_mask_store_caches_within_budget_and_drops_changed_masks():
    rng = np.random.default_rng(8)
    m1, m2 = (rng.random(1000) < 0.5 for _ in range(2))
    store = MaskStore(cache_bytes=int(m1.sum()) * 4)  # room for exactly one int32 position list
    store.set_bool("a", {"w": m1})
    store.set_bool("b", {"w": m2})
    np.testing.assert_array_equal(store.positions("a", "w"), np.flatnonzero(m1))
    np.testing.assert_array_equal(store.positions("b", "w"), np.flatnonzero(m2))  # not cached
    assert store.cached_bytes == m1.sum() * 4
    assert store.positions("a", "w") is store.positions("a", "w")
    store.set_bool("a", {"w": m1})  # unchanged mask: the cached positions stay
    assert store.cached_bytes == m1.sum() * 4
    store.set_bool("a", {"w": ~m1})  # changed: dropped, recomputed on use
    assert store.cached_bytes == 0
    np.testing.assert_array_equal(store.positions("a", "w"), np.flatnonzero(~m1))
    store.forget("a")
    assert store.get("a") == {} and store.mask("a", "w") is None and store.sites() == ["b"]
    with pytest.raises(ValueError, match="cache_bytes"):
        MaskStore(cache_bytes=-1)


@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_replies_sent_as_differences_fold_like_values(value_dtype):
    """A reply of differences from its download is folded onto the global the round started
    from: in float32 the same global as plain values (and SasAccumulator agrees)."""
    rng = np.random.default_rng(5)
    g = global_state(rng)
    site_list = sites(rng, g)
    for state, _, _ in site_list:  # a round's update is small: the download plus a step
        for k in MASKED:
            state[k] = np.where(state[k] != 0, g[k] + 0.01 * state[k], 0).astype(g[k].dtype)
    plain, delta = FlatSas(g), FlatSas(g)
    acc = SasAccumulator(g)
    for i, (state, masks, _) in enumerate(site_list):
        plain.fold(f"s{i}", encode_sparse(state, masks, value_dtype=value_dtype), 1.0 + i)
        arrays = encode_sparse(state, masks, value_dtype=value_dtype, reference=g)
        assert any(k.endswith("::delta") for k in arrays)
        delta.fold(f"s{i}", arrays, 1.0 + i)
        acc.add_encoded(arrays, 1.0 + i)
    got, want = delta.result(), plain.result()
    if value_dtype == "float32":
        assert_close(got, want)
    assert_close(acc.result(), got)


def test_int8_differences_fold_to_the_float32_differences_global_within_their_rounding():
    rng = np.random.default_rng(7)
    g = global_state(rng)
    site_list = sites(rng, g)
    for state, _, _ in site_list:
        for k in MASKED:
            state[k] = np.where(state[k] != 0, g[k] + 0.01 * state[k], 0).astype(g[k].dtype)
    exact, int8 = FlatSas(g), FlatSas(g)
    for i, (state, masks, _) in enumerate(site_list):
        exact.fold(f"s{i}", encode_sparse(state, masks, reference=g), 1.0 + i)
        arrays = encode_sparse(state, masks, reference=g, int8_differences=True)
        assert any(k.endswith("::scale") for k in arrays)
        int8.fold(f"s{i}", arrays, 1.0 + i)
    got, want = int8.result(), exact.result()
    for k in MASKED:
        step = max(np.abs(s[k] - g[k] * (s[k] != 0)).max(initial=0) for s, _, _ in site_list) / 254
        assert np.abs(got[k] - want[k]).max(initial=0) <= step + 1e-6, k


def test_differences_keep_updates_a_half_precision_download_rounds_away():
    """Sites download global ⊙ mask in float16 and add an update far below its rounding; with
    differences the coordinator's float32 global moves by the update, with values it does not."""
    rng = np.random.default_rng(6)
    g = {"w": rng.uniform(0.5, 1.0, 4000).astype(F32)}
    masks = {"w": rng.random(4000) < 0.5}
    update = np.float32(2e-5)
    results = {}
    for upload in ("values", "differences"):
        flat = FlatSas(g)
        flat.store.set_bool("s0", masks)
        download, _ = decode_sparse(flat.download_for("s0", "float16"), known_masks=masks)
        trained = {"w": np.where(masks["w"], download["w"] + update, 0).astype(F32)}
        reference = download if upload == "differences" else None
        flat.fold("s0", encode_sparse(trained, masks, value_dtype="float16", reference=reference))
        results[upload] = flat.result()["w"][masks["w"]] - g["w"][masks["w"]]
    np.testing.assert_allclose(results["differences"], update, rtol=0.01)
    assert np.abs(results["values"] - update).mean() > 3 * update  # rounding error swamps it


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("numerators", [1, 2])
def test_finish_coded_equals_the_scattered_denominator_bit_for_bit(backend, numerators):
    rng = np.random.default_rng(11)
    n, weights = 5000, [0.5, 0.0, 1.25]  # the zero-weight site adds nothing to any denominator
    kept = [np.flatnonzero(rng.random(n) < 0.4).astype(np.int32) for _ in weights]
    a, b = (rng.standard_normal(n).astype(F32) for _ in range(2))
    previous = rng.standard_normal(n).astype(F32)
    code = np.zeros(n, np.uint8)
    den = np.zeros(n, F32)
    for k, (pos, w) in enumerate(zip(kept, weights, strict=True)):
        scatter.mark(code, pos, 1 << k, backend)
        if w:
            scatter.add_at(den, pos, w, backend)
    a[den == 0], b[den == 0] = 0, 0  # nobody with positive weight folded a value there
    want = a * F32(0.3)
    if numerators == 2:
        want += b * F32(0.7)
    scatter.divide_or_keep(want, den, previous, np.empty(n, np.bool_), backend)
    got = a.copy()
    scatter.finish_coded(got, b if numerators == 2 else None, 0.3, 0.7, code,
                         scatter.member_lut(weights, np.dtype(F32)), previous, backend)
    np.testing.assert_array_equal(got, want)


def test_membership_codes_follow_the_sites_and_masks_of_each_round():
    """The coded finish across rounds: the same sites and masks reuse the codes, a changed
    mask or another set of sites rebuilds them; each round equals a fresh aggregator's."""
    rng = np.random.default_rng(13)
    g = global_state(rng)
    site_list = sites(rng, g, n=3)
    flat = FlatSas(g, KlpwaWeights())
    current = g
    for rnd, chosen in enumerate([(0, 1, 2), (0, 1, 2), (2, 0), (0, 1, 2)]):
        if rnd == 3:  # site 1 pruned further: its bitmap is sent and the codes are rebuilt
            state, masks, metrics = site_list[1]
            masks = {k: m & (rng.random(m.shape) < 0.7) for k, m in masks.items()}
            site_list[1] = ({k: (v * masks[k]).astype(v.dtype) if k in masks else v
                             for k, v in state.items()}, masks, metrics)
        ref = FlatSas(current, KlpwaWeights())
        for i in chosen:
            state, masks, metrics = site_list[i]
            flat.fold(f"s{i}", encode_sparse(state, masks), metrics)
            ref.fold(f"s{i}", encode_sparse(state, masks), metrics)
        codes_before = flat._codes_for
        current = flat.result()
        assert_close(current, ref.result())
        assert (flat._codes_for == codes_before) == (rnd == 1)  # round 1 repeats round 0


def test_more_sites_than_membership_codes_hold_finish_by_scattering():
    rng = np.random.default_rng(14)
    g = global_state(rng)
    site_list = sites(rng, g, n=17)  # MAX_CODED_SITES + 1
    rule = KlpwaWeights()
    want = reference(g, site_list, rule.reference([m for *_, m in site_list]), "float32")
    flat = FlatSas(g, rule)
    for i, (state, masks, metrics) in enumerate(site_list):
        flat.fold(f"s{i}", encode_sparse(state, masks), metrics)
    assert_close(flat.result(), want)
    assert flat._codes_for is None


@pytest.mark.skipif(scatter.BACKEND != "numba", reason="the compiled check only")
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, "bfloat16"])
def test_all_finite_finds_any_nan_or_infinity(dtype):
    x = np.random.default_rng(15).standard_normal(1000).astype(np.float32) * 1e3

    def encoded(a):
        return (a.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else a.astype(dtype)

    assert scatter.all_finite(encoded(x)) is True
    assert scatter.all_finite(encoded(x[:0])) is True
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[617] = bad
        assert scatter.all_finite(encoded(y)) is False
    assert scatter.all_finite(encoded(x)[::2]) is None  # not contiguous: checked elsewhere


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_numerator_reusing_a_retired_buffer_starts_from_zero(backend):
    """Numerators reuse retired model-sized buffers: poisoned with NaN, the next round must
    still equal a fresh aggregator's."""
    rng = np.random.default_rng(16)
    g = global_state(rng)
    site_list = sites(rng, g)
    flat = FlatSas(g, KlpwaWeights(), backend=backend)
    for i, (state, masks, metrics) in enumerate(site_list):
        flat.fold(f"s{i}", encode_sparse(state, masks), metrics)
    first = flat.result()
    assert flat._pool
    for buf in flat._pool:
        buf[:] = np.nan
    ref = FlatSas(first, KlpwaWeights(), backend=backend)
    for i, (state, masks, metrics) in enumerate(site_list):
        flat.fold(f"s{i}", encode_sparse(state, masks), metrics)
        ref.fold(f"s{i}", encode_sparse(state, masks), metrics)
    got = flat.result()
    assert all(np.isfinite(v).all() for v in got.values())
    assert_close(got, ref.result())
