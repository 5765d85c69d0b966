"""The one-pass SAS finish (fedreid.fl.simd) and FlatSas holding replies for it: bit for bit
what folding into numerators, the coded finish and ``take`` give."""

import zlib

import numpy as np
import pytest

from fedreid.fl import scatter, simd
from fedreid.fl.codec import encode_sparse, mask_digests, to_wire_values
from fedreid.fl.flat_sas import MAX_STAGED, FlatSas
from fedreid.fl.weight_rules import FixedWeights, KlpwaWeights, ScoreWeights

F32 = np.float32
needs_simd = pytest.mark.skipif(not simd.AVAILABLE or scatter.BACKEND != "numba",
                                reason="the AVX-512 kernel needs numba and an AVX-512 CPU")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_le_bits_put_element_i_of_each_16_in_bit_i():
    mask = np.zeros(37, bool)
    mask[[0, 3, 15, 16, 36]] = True
    words = simd.le_bits(np.packbits(mask))
    assert words.dtype == np.uint16 and words.size == 3
    assert [int(w) for w in words] == [1 | 1 << 3 | 1 << 15, 1, 1 << 4]


@needs_simd
@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, 4099])
@pytest.mark.parametrize("n_sites", [1, 2, 5, 9])
@pytest.mark.parametrize("numerators", [1, 2])
def test_fused_round_equals_fold_finish_and_take(size, n_sites, numerators):
    """Every site's values folded, the finish with the previous value where nobody kept an
    element, and each download: bit for bit, with an all-pruned site, an all-kept one and a
    zero-weight one among them."""
    rng = np.random.default_rng(zlib.crc32(f"{size}/{n_sites}/{numerators}".encode()))
    masks = [rng.random(size) < 0.4 for _ in range(n_sites)]
    masks[0][:] = False
    if n_sites > 2:
        masks[2][:] = True
    values = [rng.standard_normal(int(m.sum())).astype(F32) for m in masks]
    w0 = rng.random(n_sites).astype(F32)
    w1 = rng.random(n_sites).astype(F32) if numerators == 2 else np.zeros(n_sites, F32)
    wk = (w0 * F32(0.3) + w1 * F32(0.7)).astype(F32)
    if n_sites > 1:
        wk[-1] = 0.0
    c0, c1 = 0.3, (0.7 if numerators == 2 else 0.0)
    previous = rng.standard_normal(size).astype(F32)

    nums = [np.zeros(size, F32) for _ in range(numerators)]
    codes = np.zeros(size, np.uint16)
    for k, (m, v) in enumerate(zip(masks, values, strict=True)):
        pos = np.flatnonzero(m).astype(np.int32)
        scatter.fold(nums, pos, v, [w0[k], w1[k]][:numerators], "numba")
        scatter.mark(codes, pos, 1 << k, "numba")
    want = nums[0]
    scatter.finish_coded(want, nums[1] if numerators == 2 else None, c0, c1, codes,
                         scatter.member_lut(wk, np.dtype(F32)), previous, "numba")

    out = np.full(size, np.nan, F32)
    downloads = [np.full(v.size, np.nan, F32) for v in values]
    if n_sites > 1:
        downloads[1] = None  # a site that gets no download
    simd.fused_round(out, previous, [simd.le_bits(np.packbits(m)) for m in masks], values, downloads,
                     w0, w1, wk, c0, c1)
    assert same_bits(out, want)
    for m, d in zip(masks, downloads, strict=True):
        if d is not None:
            assert same_bits(d, out[m])


@needs_simd
@pytest.mark.parametrize("wire", ["float16", "bfloat16"])
def test_fused_round_widens_half_precision_values_exactly(wire):
    """float16 values and bfloat16 bits (uint16) give what their float32 widening gives."""
    rng = np.random.default_rng(3)
    masks = [rng.random(333) < 0.5 for _ in range(3)]
    values = [rng.standard_normal(int(m.sum())).astype(F32) for m in masks]
    if wire == "float16":
        sent = [v.astype(np.float16) for v in values]
        wide = [s.astype(F32) for s in sent]
    else:
        sent = [(v.view(np.uint32) >> 16).astype(np.uint16) for v in values]
        wide = [(s.astype(np.uint32) << 16).view(F32) for s in sent]
    bits = [simd.le_bits(np.packbits(m)) for m in masks]
    w = rng.random(3).astype(F32)
    outs = []
    for vals in (sent, wide):
        out = np.zeros(333, F32)
        simd.fused_round(out, np.ones(333, F32), bits, vals, [None] * 3, w, w, w, 0.5, 0.5)
        outs.append(out)
    assert same_bits(outs[0], outs[1])
    with pytest.raises(ValueError, match="the kernel reads"):
        simd.fused_round(out, out, bits, [v.astype(np.float64) for v in values], [None] * 3, w, w, w, 1, 0)


@needs_simd
@pytest.mark.parametrize("download_dtype", ["float16", "bfloat16"])
def test_half_precision_downloads_round_as_the_codec_does_and_flag_overflow(download_dtype):
    """Downloads rounded to nearest even exactly as ``to_wire_values``; a value beyond the
    dtype's range flags that site's download."""
    rng = np.random.default_rng(4)
    size = 517
    masks = [rng.random(size) < 0.5, rng.random(size) < 0.5]
    values = [rng.standard_normal(int(m.sum())).astype(F32) * F32(300) for m in masks]
    previous = rng.standard_normal(size).astype(F32)
    wire = np.dtype(np.float16) if download_dtype == "float16" else np.dtype(np.uint16)
    bits = [simd.le_bits(np.packbits(m)) for m in masks]
    w = np.ones(2, F32)
    out = np.zeros(size, F32)
    downloads = [np.zeros(int(m.sum()), wire) for m in masks]
    over = simd.fused_round(out, previous, bits, values, downloads, w, w, w, 0.5, 0.5, download_dtype=download_dtype)
    assert not over.any()
    for m, d in zip(masks, downloads, strict=True):
        assert same_bits(d, to_wire_values(out[m], download_dtype))
    masks[1] = ~masks[0]  # disjoint: site 1's download holds only its own values
    bits = [simd.le_bits(np.packbits(m)) for m in masks]
    huge = F32(70000.0) if download_dtype == "float16" else F32(3.4e38)  # rounds beyond the range
    values = [np.full(int(masks[0].sum()), huge), rng.standard_normal(int(masks[1].sum())).astype(F32)]
    downloads = [np.zeros(v.size, wire) for v in values]
    over = simd.fused_round(out, previous, bits, values, downloads, w, w, w, 0.5, 0.5, download_dtype=download_dtype)
    assert over.tolist() == [True, False]


@needs_simd
def test_a_download_out_of_half_range_is_refused_on_request_as_before():
    rng = np.random.default_rng(14)
    g = float32_model(rng)
    sites = site_list(rng, 2)
    sites[0][0]["conv"] = sites[0][0]["conv"] * F32(1e6)  # kept values beyond float16's range
    flat = FlatSas(g, FixedWeights(), download_dtype="float16")
    for i, (state, masks, _) in enumerate(sites):
        flat.fold(f"s{i}", encode_sparse(state, masks), 1.0)
    flat.result()
    with pytest.raises(ValueError, match="exceed the float16 range"):
        flat.download_for("s0", "float16")


@needs_simd
def test_fused_round_refuses_counts_that_do_not_match_the_mask():
    mask = np.arange(40) % 3 == 0
    bits = [simd.le_bits(np.packbits(mask))]
    ones = np.ones(1, F32)
    with pytest.raises(ValueError, match="keeps 14"):
        simd.fused_round(np.zeros(40, F32), np.zeros(40, F32), bits, [np.ones(13, F32)], [None], ones, ones, ones, 1, 0)
    with pytest.raises(ValueError, match="download values"):
        simd.fused_round(np.zeros(40, F32), np.zeros(40, F32), bits, [np.ones(14, F32)], [np.ones(3, F32)],
                         ones, ones, ones, 1, 0)
    with pytest.raises(ValueError, match="mask words"):  # a mask shorter than the tensor
        simd.fused_round(np.zeros(80, F32), np.zeros(80, F32), bits, [np.ones(14, F32)], [None], ones, ones, ones, 1, 0)


SHAPES = {"conv": (6, 3, 3, 3), "odd": (1001,), "empty": (0, 4), "fc": (5, 4), "bn.weight": (6,),
          "bn.running_mean": (6,)}
MASKED = ("conv", "odd", "empty", "fc")


def float32_model(rng):
    g = {k: rng.standard_normal(s).astype(F32) for k, s in SHAPES.items()}
    g["nbt"] = np.array(3, np.int64)
    return g


def site_list(rng, n):
    """Sites with an all-pruned tensor (site 1) and a masked tensor sent dense (site 0)."""
    out = []
    for k in range(n):
        masks = {name: rng.random(SHAPES[name]) < 0.4 for name in MASKED}
        if k == 1:
            masks["conv"][...] = False
        state = {name: rng.standard_normal(s).astype(F32) for name, s in SHAPES.items()}
        for name, m in masks.items():
            state[name] = state[name] * m
        state["nbt"] = np.array(10 * k + 1, np.int64)
        if k == 0:
            del masks["odd"]
        metrics = {"kl_divergence": float(rng.random()), "prune_ratio": float(rng.random()),
                   "num-examples": float(rng.integers(1, 100))}
        out.append((state, masks, metrics))
    return out


def run_rounds(g, sites, rule, one_pass, value_dtype, download_dtype, rounds=2):
    """Each round every site replies (bitmaps first, then digests of its held masks); the
    globals and every download, per round."""
    flat = FlatSas(g, rule, download_dtype=download_dtype, one_pass=one_pass)
    history = []
    for _ in range(rounds):
        for i, (state, masks, metrics) in enumerate(sites):
            held = {k: m.digest for k, m in flat.known_masks(f"s{i}").items()}
            flat.fold(f"s{i}", encode_sparse(state, masks, value_dtype=value_dtype, receiver_digests=held), metrics)
        if one_pass and simd.AVAILABLE and scatter.BACKEND == "numba" and len(sites) <= MAX_STAGED:
            assert flat.live_numerators == 0  # every reply held for the one-pass finish
        new = {k: v.copy() for k, v in flat.result().items()}
        downs = [flat.download_for(f"s{i}", download_dtype) for i in range(len(sites))]
        history.append((new, [{k: np.array(v) for k, v in d.items()} for d in downs]))
    return history


def assert_same_history(got, want):
    for (g_new, g_downs), (w_new, w_downs) in zip(got, want, strict=True):
        assert set(g_new) == set(w_new)
        for k in w_new:
            assert same_bits(g_new[k], w_new[k]), k
        for gd, wd in zip(g_downs, w_downs, strict=True):
            assert set(gd) == set(wd)
            for k in wd:
                assert same_bits(gd[k], wd[k]), k


RULES = {"klpwa-convex": KlpwaWeights(), "klpwa-product": KlpwaWeights(combine="product"),
         "samples": ScoreWeights("num-examples")}


@pytest.mark.parametrize("value_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_held_replies_give_the_folded_result_and_downloads_bit_for_bit(rule_name, value_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{rule_name}/{value_dtype}".encode()))
    g = float32_model(rng)
    sites = site_list(rng, 4)
    download = value_dtype
    want = run_rounds(g, sites, RULES[rule_name], False, value_dtype, download)
    assert_same_history(run_rounds(g, sites, RULES[rule_name], True, value_dtype, download), want)


def test_more_replies_than_may_be_held_are_folded_and_equal():
    rng = np.random.default_rng(11)
    g = float32_model(rng)
    sites = site_list(rng, MAX_STAGED + 3)
    want = run_rounds(g, sites, KlpwaWeights(), False, "float32", "float32")
    assert_same_history(run_rounds(g, sites, KlpwaWeights(), True, "float32", "float32"), want)


def test_a_reply_of_differences_folds_the_held_ones_first():
    rng = np.random.default_rng(12)
    g = float32_model(rng)
    sites = site_list(rng, 3)
    results = []
    for one_pass in (False, True):
        flat = FlatSas(g, FixedWeights(), download_dtype="float32", one_pass=one_pass)
        for i, (state, masks, _) in enumerate(sites[:2]):
            flat.fold(f"s{i}", encode_sparse(state, masks), 1.0 + i)
        state, masks, _ = sites[2]
        flat.fold("s2", encode_sparse(state, masks, reference=g, reference_masks={}), 3.0)
        assert flat.live_numerators == 1  # the held replies were folded before the differences
        results.append(flat.result())
    for k in results[0]:
        assert same_bits(results[1][k], results[0][k]), k


@needs_simd
def test_a_forgotten_site_gets_the_dense_global_not_the_prepared_download():
    rng = np.random.default_rng(13)
    g = float32_model(rng)
    sites = site_list(rng, 2)
    flat = FlatSas(g, FixedWeights(), download_dtype="float32")
    for i, (state, masks, _) in enumerate(sites):
        flat.fold(f"s{i}", encode_sparse(state, masks), 1.0)
    assert flat.live_numerators == 0  # held, not folded
    new = flat.result()
    flat.forget("s1")
    down = flat.download_for("s1")
    assert set(down) == {f"{k}::dense" for k in new}
    assert set(mask_digests(flat.download_for("s0"))) == set(sites[0][1])
