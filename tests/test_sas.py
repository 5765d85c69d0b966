"""SAS against hand-computed toy aggregations."""

import numpy as np
import pytest

from fedreid.fl.sas import SasAccumulator, sas_aggregate

F32 = np.float32


def two_sites():
    g = {
        "w": np.array([9, 9, 9, 9], F32),
        "b": np.array([0, 0], F32),
        "nbt": np.array(7, np.int64),
    }
    s0 = {
        "w": np.array([1, 2, 0, 0], F32),
        "b": np.array([1, 2], F32),
        "nbt": np.array(10, np.int64),
    }
    s1 = {
        "w": np.array([3, 0, 5, 0], F32),
        "b": np.array([3, 6], F32),
        "nbt": np.array(20, np.int64),
    }
    m0 = {"w": np.array([True, True, False, False])}
    m1 = {"w": np.array([True, False, True, False])}
    return g, [s0, s1], [m0, m1]


def test_two_sites_hand_computed():
    g, states, masks = two_sites()
    out = sas_aggregate(g, states, masks, [0.25, 0.75])
    # w0: 0.25*1 + 0.75*3 = 2.5; w1: only site 0 kept it -> 2; w2: only site 1 -> 5;
    # w3: nobody kept it -> previous global 9.
    np.testing.assert_array_equal(out["w"], np.array([2.5, 2.0, 5.0, 9.0], F32))
    np.testing.assert_array_equal(out["b"], np.array([2.5, 5.0], F32))  # plain weighted mean
    # 0.25*10 + 0.75*20 = 17.5 -> rounded half to even = 18, still int64.
    assert out["nbt"].dtype == np.int64 and int(out["nbt"]) == 18
    assert out["w"].dtype == F32 and out["b"].dtype == F32
    assert int(sas_aggregate(g, states, masks, [0.25, 0.75], int_rule="max")["nbt"]) == 20
    np.testing.assert_array_equal(g["w"], np.array([9, 9, 9, 9], F32))  # input untouched


def test_mask_unaware_is_fedavg():
    g, states, masks = two_sites()
    out = sas_aggregate(g, states, masks, [0.25, 0.75], mask_aware=False)
    np.testing.assert_array_equal(out["w"], np.array([2.5, 0.5, 3.75, 0.0], F32))
    np.testing.assert_array_equal(out["b"], np.array([2.5, 5.0], F32))


def three_sites_2d():
    g = {"w": np.full((2, 2), -1, F32)}
    s0 = {"w": np.array([[1, 2], [3, 4]], F32)}
    s1 = {"w": np.array([[5, 6], [7, 8]], F32)}
    s2 = {"w": np.array([[9, 10], [11, 12]], F32)}
    m0 = {"w": np.array([[True, True], [False, False]])}
    m1 = {"w": np.array([[True, False], [True, False]])}
    return g, [s0, s1, s2], [m0, m1, None]  # site 2 sends no mask: it kept everything


# (0,0): (1*1 + 2*5 + 1*9)/4 = 5; (0,1): (1*2 + 1*10)/2 = 6; (1,0): (2*7 + 1*11)/3 = 25/3;
# (1,1): 12/1 = 12.
EXPECTED_3 = np.array([[5, 6], [25 / 3, 12]], F32)


def test_three_sites_unnormalised_weights_and_order():
    g, states, masks = three_sites_2d()
    out = sas_aggregate(g, states, masks, [1, 2, 1])
    np.testing.assert_allclose(out["w"], EXPECTED_3, rtol=1e-6)
    np.testing.assert_allclose(
        sas_aggregate(g, states, masks, [0.25, 0.5, 0.25])["w"], EXPECTED_3, rtol=1e-6
    )
    # The unmasked site first: the mask-aware denominator is created only at site 1.
    order = [2, 0, 1]
    out2 = sas_aggregate(g, [states[i] for i in order], [masks[i] for i in order], [1, 1, 2])
    np.testing.assert_allclose(out2["w"], EXPECTED_3, rtol=1e-6)


def test_zero_weight_site_does_not_count_as_keeping():
    g = {"w": np.array([7, 7], F32)}
    states = [{"w": np.array([1, 0], F32)}, {"w": np.array([3, 4], F32)}]
    masks = [{"w": np.array([True, False])}, {"w": np.array([True, True])}]
    out = sas_aggregate(g, states, masks, [1.0, 0.0])
    np.testing.assert_array_equal(out["w"], np.array([1, 7], F32))


def test_accumulator_matches_list_api_and_is_one_shot():
    g, states, masks = two_sites()
    acc = SasAccumulator(g)
    for s, m, w in zip(states, masks, [1.0, 3.0], strict=True):
        acc.add(s, m, w)
    out = acc.result()
    np.testing.assert_array_equal(out["w"], np.array([2.5, 2.0, 5.0, 9.0], F32))
    with pytest.raises(ValueError, match="already"):
        acc.result()
    with pytest.raises(ValueError, match="no site"):
        SasAccumulator(g).result()
    zero = SasAccumulator(g)
    zero.add(states[0], masks[0], 0.0)
    with pytest.raises(ValueError, match="sum to 0"):
        zero.result()


def test_structural_errors_name_site_and_key():
    g, states, masks = two_sites()
    bad = dict(states[1])
    del bad["b"]
    with pytest.raises(ValueError, match=r"site 1: key 'b' is missing"):
        sas_aggregate(g, [states[0], bad], masks, [1, 1])
    extra = dict(states[0], extra=np.zeros(1, F32))
    with pytest.raises(ValueError, match=r"site 0: unexpected key 'extra'"):
        sas_aggregate(g, [extra, states[1]], masks, [1, 1])
    wrong = dict(states[1], w=np.zeros(5, F32))
    with pytest.raises(ValueError, match=r"site 1: key 'w' has shape"):
        sas_aggregate(g, [states[0], wrong], masks, [1, 1])
    badmask = {"w": np.array([True, False])}
    with pytest.raises(ValueError, match=r"site 0: mask 'w'"):
        sas_aggregate(g, states, [badmask, masks[1]], [1, 1])
    with pytest.raises(ValueError, match=r"site 1: mask on non-float tensor 'nbt'"):
        sas_aggregate(g, states, [masks[0], {"nbt": np.array(True)}], [1, 1])
    as_float = dict(states[0], nbt=np.array(10.0))
    with pytest.raises(ValueError, match=r"site 0: key 'nbt' has dtype"):
        sas_aggregate(g, [as_float, states[1]], masks, [1, 1])
    with pytest.raises(ValueError, match=r"site 1: weight"):
        sas_aggregate(g, states, masks, [1, -1])
    with pytest.raises(ValueError, match="one entry per site"):
        sas_aggregate(g, states, masks, [1])


def test_failed_site_leaves_accumulator_clean():
    g, states, masks = two_sites()
    acc = SasAccumulator(g)
    acc.add(states[0], masks[0], 0.25)
    with pytest.raises(ValueError):
        acc.add(dict(states[1], w=np.zeros(3, F32)), masks[1], 0.75)
    acc.add(states[1], masks[1], 0.75)
    np.testing.assert_array_equal(acc.result()["w"], np.array([2.5, 2.0, 5.0, 9.0], F32))


def test_matches_float64_reference_on_random_data():
    rng = np.random.default_rng(0)
    shape = (6, 5, 3)
    g = {"w": rng.standard_normal(shape).astype(F32)}
    states, masks = [], []
    for _ in range(4):
        m = rng.random(shape) < 0.4
        states.append({"w": (rng.standard_normal(shape) * m).astype(F32)})
        masks.append({"w": m})
    a = rng.random(4)
    out = sas_aggregate(g, states, masks, a)["w"]
    m = np.stack([x["w"] for x in masks]).astype(np.float64)
    t = np.stack([x["w"] for x in states]).astype(np.float64)
    den = np.tensordot(a, m, axes=1)
    ref = np.where(den > 0, np.tensordot(a, m * t, axes=1) / np.where(den > 0, den, 1), g["w"])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ----- add_encoded: folding the wire form must equal decoding and then adding, bit for bit ---


def encoded_sites(value_dtype):
    """Three sites over tensors that span several gather blocks, with the awkward cases: a
    site that sends a masked tensor dense (it kept all), an all-pruned tensor, an empty one,
    a float64 tensor and an integer buffer."""
    from fedreid.fl.codec import encode_sparse
    from fedreid.fl.sas import _GATHER

    rng = np.random.default_rng(5)
    shapes = {"big": (2 * _GATHER + 13,), "conv": (7, 3, 3, 3), "empty": (0, 3), "f64": (9,)}
    g = {k: rng.standard_normal(s).astype(F32) for k, s in shapes.items()}
    g["f64"] = g["f64"].astype(np.float64)
    g["nbt"] = np.array(3, np.int64)
    sites = []
    for k in range(3):
        masks = {name: rng.random(s) < 0.4 for name, s in shapes.items()}
        if k != 1:
            masks["conv"][...] = False  # all pruned at sites 0 and 2
        state = {
            name: (rng.standard_normal(s) * masks[name]).astype(g[name].dtype)
            for name, s in shapes.items()
        }
        state["big"][np.flatnonzero(masks["big"])[:3]] = -0.0  # kept signed zeros
        state["nbt"] = np.array(10 * k, np.int64)
        if k == 0:
            del masks["big"]  # sent dense: the denominator starts at site 1
        sites.append(encode_sparse(state, masks, value_dtype=value_dtype))
    return g, sites


@pytest.mark.parametrize("mask_aware", [True, False])
@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_add_encoded_equals_decode_then_add(mask_aware, value_dtype):
    from fedreid.fl.codec import decode_sparse

    g, sites = encoded_sites(value_dtype)
    decoded, encoded = SasAccumulator(g, mask_aware), SasAccumulator(g, mask_aware)
    for arrays, w in zip(sites, [0.3, 1.7, 0.9], strict=True):
        state, masks = decode_sparse(arrays)
        decoded.add(state, masks, w)
        got = encoded.add_encoded(arrays, w)
        assert set(got) == set(masks)
        for name, m in masks.items():
            assert got[name].dtype == np.bool_ and np.array_equal(got[name], m)
    want, out = decoded.result(), encoded.result()
    for name, v in want.items():
        assert out[name].dtype == v.dtype and out[name].shape == v.shape
        np.testing.assert_array_equal(out[name], v)
        assert np.array_equal(np.signbit(out[name]), np.signbit(v)), name


def test_add_encoded_errors_name_the_site_and_leave_it_clean():
    from fedreid.fl.codec import encode_sparse

    g, states, masks = two_sites()
    good = [encode_sparse(s, m) for s, m in zip(states, masks, strict=True)]
    acc = SasAccumulator(g)
    acc.add_encoded(good[0], 0.25)
    bad_cases = {
        r"site 1: unrecognised wire keys": {**good[1], "junk": np.zeros(1)},
        r"site 1: 'w': bitmap keeps": {**good[1], "w::values": np.zeros(5, F32)},
        r"site 1: key 'b' is missing": {k: v for k, v in good[1].items() if k != "b::dense"},
        r"site 1: key 'w' has shape": encode_sparse(
            {**states[1], "w": np.zeros(8, F32)}, {"w": np.ones(8, bool)}
        ),
        r"site 1: mask on non-float tensor 'nbt'": {
            **{k: v for k, v in good[1].items() if k != "nbt::dense"},
            "nbt::bits": np.packbits([True]),
            "nbt::values": np.ones(1, F32),
            "nbt::shape": np.zeros(0, np.int64),
        },
    }
    for message, arrays in bad_cases.items():
        with pytest.raises(ValueError, match=message):
            acc.add_encoded(arrays, 0.75)
    acc.add_encoded(good[1], 0.75)
    np.testing.assert_array_equal(acc.result()["w"], np.array([2.5, 2.0, 5.0, 9.0], F32))


def test_add_encoded_reads_held_masks_and_bfloat16():
    from fedreid.fl.codec import decode_sparse, encode_sparse, pack_mask

    g, states, masks = two_sites()
    held = [{"w": pack_mask(m["w"])} for m in masks]
    full, known = SasAccumulator(g), SasAccumulator(g)
    for s, m, h, w in zip(states, masks, held, [0.25, 0.75], strict=True):
        arrays = encode_sparse(s, m, value_dtype="bfloat16")
        full.add(*decode_sparse(arrays), w)
        brief = encode_sparse(s, m, value_dtype="bfloat16", receiver_digests={"w": h["w"].digest})
        assert "w::bits" not in brief
        known.add_encoded(brief, w, known_masks=h)
    want, got = full.result(), known.result()
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
